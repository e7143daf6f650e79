import Foundation
import XCTest
@testable import MTLEngine
import MTLNN
import MTLTrain

/// The environment mtl sets for the numerical libraries, the convolution backend choice, and
/// the report of what runs (`mtl doctor`, train.log).
final class RuntimeTests: XCTestCase {
    let sapphireRapids = CPUInfo(model: "Intel(R) Xeon(R) Platinum 8481C", cores: 2,
                                 flags: "fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_bf16 amx_tile amx_bf16")
    let zen3 = CPUInfo(model: "AMD EPYC", cores: 2, flags: "fpu sse sse2 avx avx2 fma")
    let oldXeon = CPUInfo(model: "Intel(R) Xeon(R) CPU E5-2680 0", cores: 2, flags: "fpu sse sse2 avx")

    func testGenericOpenBLASCoreIsReplacedByTheCPUsBest() {
        let w = Runtime.wantedEnvironment([:], cpu: sapphireRapids, blasCore: "Prescott")
        XCTAssertEqual(w.map { "\($0.0)=\($0.1)" }, ["OPENBLAS_CORETYPE=SkylakeX", "OMP_WAIT_POLICY=passive"])
        let h = Runtime.wantedEnvironment([:], cpu: zen3, blasCore: "Nehalem")
        XCTAssertEqual(h.map { "\($0.0)=\($0.1)" }, ["OPENBLAS_CORETYPE=Haswell", "OMP_WAIT_POLICY=passive"])
    }

    func testAGoodCoreOrAnOldCPUOrAUserValueIsLeftAlone() {
        XCTAssertEqual(Runtime.wantedEnvironment([:], cpu: zen3, blasCore: "Zen").map { $0.0 }, ["OMP_WAIT_POLICY"])
        XCTAssertEqual(Runtime.wantedEnvironment([:], cpu: sapphireRapids, blasCore: "SkylakeX").map { $0.0 }, ["OMP_WAIT_POLICY"])
        // No AVX2: nothing better than what OpenBLAS picked.
        XCTAssertEqual(Runtime.wantedEnvironment([:], cpu: oldXeon, blasCore: "Sandybridge").map { $0.0 }, ["OMP_WAIT_POLICY"])
        // What the user set is never overridden.
        let user = ["OPENBLAS_CORETYPE": "Haswell", "OMP_WAIT_POLICY": "active"]
        XCTAssertTrue(Runtime.wantedEnvironment(user, cpu: sapphireRapids, blasCore: "Prescott").isEmpty)
    }

    func testCPUInfoParsesProcCpuinfo() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\nflags\t\t: fpu avx2 fma avx512f amx_tile\n\nprocessor\t: 1\nmodel name\t: other\n"
        let c = CPUInfo.parse(text, cores: 2)
        XCTAssertEqual(c.model, "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz")
        XCTAssertTrue(c.has("amx_tile") && c.has("avx2") && !c.has("avx512bw"))
        XCTAssertEqual(c.isaSummary, "avx512f amx_tile avx2 fma")
        XCTAssertEqual(zen3.isaSummary, "avx2 fma (no avx512)")
    }

    func testConvBackendChoice() throws {
        let saved = Conv2d.backend
        defer { Conv2d.backend = saved }
        XCTAssertEqual(try Runtime.selectConvBackend("blas"), .blas)
        XCTAssertEqual(try Runtime.selectConvBackend("auto"), OneDNN.available ? .onednn : .blas)
        XCTAssertThrowsError(try Runtime.selectConvBackend("cudnn")) { e in
            XCTAssertTrue("\(e)".contains("model.conv_backend"), "\(e)")
        }
        // The config key is checked where it is read, with the allowed values in the message.
        XCTAssertThrowsError(try Config.parse(yaml: "model:\n  conv_backend: mkl\n", source: "t.yaml", overrides: [])) { e in
            XCTAssertTrue("\(e)".contains("model.conv_backend") && "\(e)".contains("onednn"), "\(e)")
        }
        let c = try Config.parse(yaml: "model:\n  conv_backend: blas\n", source: "t.yaml", overrides: [])
        XCTAssertEqual(c.model.convBackend, "blas")
        XCTAssertTrue(c.yaml().contains("conv_backend: blas"), "the resolved config.yaml records the backend")
    }

    /// `mtl doctor` re-executes itself once with OMP_WAIT_POLICY=passive and reports every library,
    /// the oneDNN kernels of the bench network's convolutions included.
    func testDoctorReportsWhatRuns() throws {
        let r = try runWithout(["OMP_WAIT_POLICY", "MTL_ENV_TUNED"], [try DistributedTrainingTests.mtlBinary(), "doctor", "--threads", "1"])
        XCTAssertEqual(r.status, 0, r.err)
        for key in ["cpu: ", "blas: OpenBLAS", "core in use", "onednn: ", "threads per rank: 1", "mpi: ", "hdf5: 1."] {
            XCTAssertTrue(r.out.contains(key), "no '\(key)' in:\n\(r.out)")
        }
        XCTAssertTrue(r.out.contains("[set by mtl: OMP_WAIT_POLICY=passive]"), r.out)
        XCTAssertTrue(r.out.contains("OMP_WAIT_POLICY=passive;"), r.out)
        if OneDNN.available {
            XCTAssertTrue(r.out.contains("fwd jit") || r.out.contains("fwd brg"), r.out)
            XCTAssertFalse(r.out.contains(" ref:"), r.out)
        }
        // A value the user set is kept, and nothing is re-executed for it.
        let kept = try runWithout(["MTL_ENV_TUNED"], ["OMP_WAIT_POLICY=active", try DistributedTrainingTests.mtlBinary(), "doctor", "--threads", "1"])
        XCTAssertEqual(kept.status, 0, kept.err)
        XCTAssertTrue(kept.out.contains("OMP_WAIT_POLICY=active;") && !kept.out.contains("set by mtl"), kept.out)
    }

    func runWithout(_ unset: [String], _ args: [String]) throws -> DistributedTrainingTests.Result {
        try DistributedTrainingTests.run(unset.flatMap { ["-u", $0] } + args)
    }
}
