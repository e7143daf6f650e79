import Foundation
import MTLTestSupport
import XCTest

/// Real `mpirun` runs of the built `mtl-commcheck` (launch/test builds it before the tests;
/// `swift build --build-tests` and `swift test` build it too). Every subprocess has a
/// timeout, so a hang fails the test instead of hanging CI.
final class MPIRunTests: XCTestCase {
    /// The checks mtl-commcheck prints on every world size; barrier_timeout only when size > 1.
    static let checks = [
        "world", "barrier", "allreduce_sum_float", "allreduce_sum_double", "allreduce_max_double", "sum_reducer",
        "allreduce_empty", "iallreduce_overlap", "iallreduce_two_buckets", "broadcast_float", "broadcast_double",
        "broadcast_bytes", "reduce_scatter_sum", "allgather", "reduce_scatter_allgather_equals_allreduce",
    ]

    // MARK: runs that must pass

    func testWithoutMpirunUsesSingleProcess() throws {
        let r = try runProcess([commcheck(), "--expect-size", "1"], timeout: 60, launcherFree: true)
        assertAllOK(r, size: 1)
        XCTAssertTrue(r.out.contains("SingleProcessCommunicator"), r.out)
    }

    func testMpirun1() throws {
        let r = try mpirun(1, ["--expect-size", "1"])
        assertAllOK(r, size: 1)
        XCTAssertTrue(r.out.contains("MPICommunicator"), r.out)
    }

    func testMpirun2() throws {
        assertAllOK(try mpirun(2, ["--expect-size", "2"]), size: 2)
    }

    func testMpirun3Oversubscribed() throws {
        assertAllOK(try mpirun(3, ["--expect-size", "3"], oversubscribe: true), size: 3)
    }

    // MARK: a failing rank ends the job, within 30 s

    func testFailRankEndsJob() throws {
        let r = try mpirun(2, ["--fail-rank", "1", "--no-timeout-check"])
        assertEndedWithFailure(r)
        XCTAssertTrue(r.err.contains("rank 1 exits(3)"), r.err)
    }

    func testKilledRankEndsJob() throws {
        let r = try mpirun(2, ["--kill-rank", "1", "--no-timeout-check"])
        assertEndedWithFailure(r)
    }

    func testAbortRankEndsJobWithReason() throws {
        let r = try mpirun(2, ["--abort-rank", "1", "--no-timeout-check"])
        assertEndedWithFailure(r)
        XCTAssertTrue(r.err.contains("error: rank 1: mtl-commcheck: abort requested by --abort-rank 1"), r.err)
    }

    func testAbortWithoutMpirun() throws {
        let r = try runProcess([commcheck(), "--abort-rank", "0"], timeout: 30, launcherFree: true)
        XCTAssertEqual(r.status, 4, r.err)
        XCTAssertTrue(r.err.contains("error: rank 0: mtl-commcheck: abort requested by --abort-rank 0"), r.err)
    }

    // MARK: the launch scripts, with mtl-commcheck in place of mtl

    func testLaunchMtlMpirunWithClusterConfig() throws {
        let r = try runProcess(["/bin/bash", packageRoot + "/launch/mtl-mpirun", "-n", "2", "--cluster", "local",
                                "--bin", try commcheck(), "--", "--expect-size", "2"], timeout: 90, launcherFree: true)
        assertAllOK(r, size: 2)
        // Two ranks on ≥ 2 cores are bound one core each; the local config's flags are passed.
        if ProcessInfo.processInfo.activeProcessorCount >= 2 {
            XCTAssertTrue(r.err.contains("--map-by ppr:2:node:pe=1 --bind-to core"), r.err)
        }
        XCTAssertTrue(r.err.contains("--mca btl self\\,vader\\,tcp"), r.err)
    }

    func testLaunchDebugLocalKeepsPerRankOutput() throws {
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("mtl-debug-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: output) }
        var env = ["MTL_BIN": try commcheck()]
        env["PATH"] = ProcessInfo.processInfo.environment["PATH"]
        let r = try runProcess(["/bin/bash", packageRoot + "/launch/debug-local", "-n", "3", "--output", output.path,
                                "--", "--expect-size", "3", "--no-timeout-check"],
                               timeout: 90, environment: env, launcherFree: true)
        XCTAssertEqual(r.status, 0, r.out + r.err)
        XCTAssertTrue(r.out.contains("commcheck: 15 checks, 0 failed, world size 3"), r.out)
        for rank in 0..<3 {  // Open MPI's --output-filename layout
            let path = output.appendingPathComponent("1/rank.\(rank)/stdout").path
            XCTAssertTrue(FileManager.default.fileExists(atPath: path), path)
        }
    }

    // MARK: assertions

    func assertEndedWithFailure(_ r: ProcessResult, file: StaticString = #filePath, line: UInt = #line) {
        let context = "\(r.command) took \(r.seconds) s\n--- stdout\n\(r.out)\n--- stderr\n\(r.err)"
        XCTAssertFalse(r.timedOut, "the job hung: " + context, file: file, line: line)
        XCTAssertNotEqual(r.status, 0, context, file: file, line: line)
        XCTAssertLessThan(r.seconds, 30, context, file: file, line: line)
        // The world check ran before the failure: the job really started on 2 ranks.
        XCTAssertTrue(r.out.contains("ok world (size 2"), context, file: file, line: line)
    }
}
