import Foundation
import XCTest
@testable import MTLEngine
import MTLCore
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
        XCTAssertEqual(w.map { "\($0.0)=\($0.1)" }, ["OPENBLAS_CORETYPE=SkylakeX", "GOMP_SPINCOUNT=20000"])
        let h = Runtime.wantedEnvironment([:], cpu: zen3, blasCore: "Nehalem")
        XCTAssertEqual(h.map { "\($0.0)=\($0.1)" }, ["OPENBLAS_CORETYPE=Haswell", "GOMP_SPINCOUNT=20000"])
    }

    func testAGoodCoreOrAnOldCPUOrAUserValueIsLeftAlone() {
        XCTAssertEqual(Runtime.wantedEnvironment([:], cpu: zen3, blasCore: "Zen").map { $0.0 }, ["GOMP_SPINCOUNT"])
        XCTAssertEqual(Runtime.wantedEnvironment([:], cpu: sapphireRapids, blasCore: "SkylakeX").map { $0.0 }, ["GOMP_SPINCOUNT"])
        // No AVX2: nothing better than what OpenBLAS picked.
        XCTAssertEqual(Runtime.wantedEnvironment([:], cpu: oldXeon, blasCore: "Sandybridge").map { $0.0 }, ["GOMP_SPINCOUNT"])
        // What the user set is never overridden.
        let user = ["OPENBLAS_CORETYPE": "Haswell", "OMP_WAIT_POLICY": "active"]
        XCTAssertTrue(Runtime.wantedEnvironment(user, cpu: sapphireRapids, blasCore: "Prescott").isEmpty)
        // Either of libgomp's two waiting variables, set by the user, keeps mtl's spin count out
        // (GOMP_SPINCOUNT would override the user's OMP_WAIT_POLICY).
        XCTAssertTrue(Runtime.wantedEnvironment(["GOMP_SPINCOUNT": "0"], cpu: zen3, blasCore: "Zen").isEmpty)
        XCTAssertTrue(Runtime.wantedEnvironment(["OMP_WAIT_POLICY": "passive"], cpu: zen3, blasCore: "Zen").isEmpty)
    }

    func testCPUInfoParsesProcCpuinfo() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\nflags\t\t: fpu avx2 fma avx512f amx_tile\n\nprocessor\t: 1\nmodel name\t: other\n"
        let c = CPUInfo.parse(text, cores: 2)
        XCTAssertEqual(c.model, "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz")
        XCTAssertTrue(c.has("amx_tile") && c.has("avx2") && !c.has("avx512bw"))
        XCTAssertEqual(c.isaSummary, "avx512f amx_tile avx2 fma")
        XCTAssertEqual(zen3.isaSummary, "avx2 fma (no avx512)")
    }

    /// Performance switches come from the config; each debugging environment variable overrides
    /// one, with a line for train.log; a malformed value is a one-line error naming the variable.
    func testPerformanceSwitchesFromConfigAndEnvironmentOverrides() throws {
        defer { Conv2d.transposedInputGrad = true; Threads.set(1) }
        var config = Config()
        config.dist.overlap = true
        config.dist.bucketMB = 7
        config.model.convDx = "col2im"
        config.train.blasThreads = "openblas"
        var (sync, notes) = try Runtime.applyPerformanceSwitches(config, threads: 2, environment: [:])
        XCTAssertEqual(sync, SyncOptions(overlap: true, bucketMB: 7))
        XCTAssertTrue(notes.isEmpty)
        XCTAssertFalse(Conv2d.transposedInputGrad)
        XCTAssertFalse(Threads.splitGemms)
        (sync, notes) = try Runtime.applyPerformanceSwitches(
            config, threads: 2, environment: ["MTL_NO_OVERLAP": "1", "MTL_BUCKET_MB": "0.5", "MTL_CONV_DX": "transposed",
                                              "MTL_BLAS_THREADS": "mtl"])
        XCTAssertEqual(sync, SyncOptions(overlap: false, bucketMB: 0.5))
        XCTAssertTrue(Conv2d.transposedInputGrad)
        XCTAssertTrue(Threads.splitGemms)
        XCTAssertEqual(notes, ["environment MTL_NO_OVERLAP=1 overrides dist.overlap: true",
                               "environment MTL_BUCKET_MB=0.5 overrides dist.bucket_mb: 7.0",
                               "environment MTL_CONV_DX=transposed overrides model.conv_dx: col2im",
                               "environment MTL_BLAS_THREADS=mtl overrides train.blas_threads: openblas"])
        XCTAssertThrowsError(try Runtime.applyPerformanceSwitches(config, threads: 1, environment: ["MTL_BUCKET_MB": "lots"])) {
            XCTAssertEqual("\($0)", "environment MTL_BUCKET_MB: expected a number > 0 (MiB), found 'lots'")
        }
        XCTAssertThrowsError(try Config.parse(yaml: "dist: {bucket_mb: 0}", source: "c.yaml"))
        XCTAssertThrowsError(try Config.parse(yaml: "model: {conv_dx: fft}", source: "c.yaml"))
        let resolved = try Config.parse(yaml: config.yaml(), source: "resolved")
        XCTAssertEqual(resolved, config)
    }

    /// The doctor's environment checks: Slurm variables and HDF5 locking as seen, a full or missing
    /// run directory is a failure with the reason.
    func testDoctorChecksTheRunDirectoryAndReportsSlurm() throws {
        let dir = NSTemporaryDirectory() + "mtl-doctor-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let env = ["PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "42", "SLURM_CPUS_PER_TASK": "8", "HDF5_USE_FILE_LOCKING": "FALSE"]
        let ok = Doctor.checks(runDirectory: dir, threadsPerRank: 8, environment: env)
        XCTAssertFalse(ok.contains { $0.failed }, "\(ok)")
        XCTAssertTrue(ok.contains { $0.text == "slurm: SLURM_JOB_ID=42 SLURM_CPUS_PER_TASK=8" }, "\(ok)")
        XCTAssertTrue(ok.contains { $0.text == "hdf5 file locking: HDF5_USE_FILE_LOCKING=FALSE" }, "\(ok)")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [], "the HDF5 probe is removed")
        let full = Doctor.checks(runDirectory: dir, threadsPerRank: 1, minimumFreeGiB: 1e12, environment: env)
        XCTAssertTrue(full.last!.failed && full.last!.text.contains("expected at least"), "\(full)")
        let gone = Doctor.checks(runDirectory: dir + "/missing", threadsPerRank: 1, environment: env)
        XCTAssertEqual(gone.last, Doctor.Line(text: "run directory \(dir)/missing: does not exist (expected a directory to write runs in)", failed: true))
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

    /// `mtl doctor` re-executes itself once with GOMP_SPINCOUNT=20000 and reports every library,
    /// the oneDNN kernels of the bench network's convolutions included.
    func testDoctorReportsWhatRuns() throws {
        let r = try runWithout(["OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MTL_ENV_TUNED"], [try DistributedTrainingTests.mtlBinary(), "doctor", "--threads", "1"])
        XCTAssertEqual(r.status, 0, r.err)
        for key in ["cpu: ", "blas: OpenBLAS", "core in use", "onednn: ", "threads per rank: 1", "mpi: ", "hdf5: 1."] {
            XCTAssertTrue(r.out.contains(key), "no '\(key)' in:\n\(r.out)")
        }
        XCTAssertTrue(r.out.contains("[set by mtl: GOMP_SPINCOUNT=20000]"), r.out)
        XCTAssertTrue(r.out.contains("GOMP_SPINCOUNT=20000, OMP_WAIT_POLICY unset;"), r.out)
        if OneDNN.available {
            XCTAssertTrue(r.out.contains("fwd jit") || r.out.contains("fwd brg"), r.out)
            XCTAssertFalse(r.out.contains(" ref:"), r.out)
        }
        for key in ["launchers: mpirun ", "slurm: ", "threads per rank mtl train would use: 1", "hdf5 file locking: ",
                    "run directory .: writable, HDF5 files can be created"] {
            XCTAssertTrue(r.out.contains(key), "no '\(key)' in:\n\(r.out)")
        }
        // A run directory that cannot be used: non-zero exit, one error line naming it.
        let missing = try runWithout(["MTL_ENV_TUNED"], [try DistributedTrainingTests.mtlBinary(), "doctor", "--threads", "1",
                                                       "--run-dir", "/nonexistent/runs"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.err.contains("run directory /nonexistent/runs: does not exist"), missing.err)
        // A value the user set is kept, and nothing is re-executed for it.
        let kept = try runWithout(["MTL_ENV_TUNED", "GOMP_SPINCOUNT"], ["OMP_WAIT_POLICY=active", try DistributedTrainingTests.mtlBinary(), "doctor", "--threads", "1"])
        XCTAssertEqual(kept.status, 0, kept.err)
        XCTAssertTrue(kept.out.contains("OMP_WAIT_POLICY=active;") && !kept.out.contains("set by mtl"), kept.out)
    }

    /// The instruction sets older cluster CPUs have, emulated with oneDNN's ISA cap (and OpenBLAS's
    /// Haswell kernel): training on them gives the losses of the BLAS backend, and the report names
    /// the capped ISA. On this machine's own ISA the other tests cover the default path.
    func testCappedInstructionSetsGiveTheSameLosses() throws {
        guard OneDNN.available else { throw XCTSkip("oneDNN has no CPU engine here") }
        let mtl = try DistributedTrainingTests.mtlBinary()
        let dir = NSTemporaryDirectory() + "mtl-isa-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = dir + "/synth.h5"
        let s = try DistributedTrainingTests.run([mtl, "synth", "--out", data, "--samples", "8", "--height", "32", "--width", "32", "--seed", "2"])
        XCTAssertEqual(s.status, 0, s.err)
        try tinyConfigYAML(data: data, steps: 3).write(toFile: dir + "/c.yaml", atomically: true, encoding: .utf8)
        func losses(_ name: String, backend: String, env: [String]) throws -> [Double] {
            let r = try DistributedTrainingTests.run(["MTL_ENV_TUNED="] + env + [mtl, "train", "--config", dir + "/c.yaml", "--run-dir", dir + "/" + name,
                                                     "--set", "model.conv_backend=\(backend)", "--set", "model.head=bench", "--set", "model.width=8"])
            XCTAssertEqual(r.status, 0, r.err)
            let log = try String(contentsOfFile: dir + "/" + name + "/train.log", encoding: .utf8)
            if let isa = env.first(where: { $0.hasPrefix("ONEDNN_MAX_CPU_ISA=") })?.split(separator: "=").last {
                XCTAssertTrue(log.contains("ISA \(isa.lowercased())"), "train.log does not name the capped ISA \(isa):\n\(log)")
            }
            let text = try String(contentsOfFile: dir + "/" + name + "/metrics.jsonl", encoding: .utf8)
            return text.split(separator: "\n").compactMap { line -> Double? in
                guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], o["kind"] as? String == "train" else { return nil }
                return ["seg", "depth", "normals"].map { o["loss.\($0)"] as! Double }.reduce(0, +)
            }
        }
        let reference = try losses("blas", backend: "blas", env: [])
        XCTAssertEqual(reference.count, 3)
        for isa in ["AVX2", "SSE41"] {
            let capped = try losses(isa, backend: "onednn", env: ["ONEDNN_MAX_CPU_ISA=\(isa)", "OPENBLAS_CORETYPE=Haswell"])
            XCTAssertEqual(capped.count, 3)
            for (step, (a, b)) in zip(reference, capped).enumerated() {
                XCTAssertEqual(a, b, accuracy: 1e-5 * max(1, abs(a)), "\(isa) step \(step + 1)")
            }
        }
    }

    func runWithout(_ unset: [String], _ args: [String]) throws -> DistributedTrainingTests.Result {
        try DistributedTrainingTests.run(unset.flatMap { ["-u", $0] } + args)
    }
}
