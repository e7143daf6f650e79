import Foundation
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
        let r = try run(commcheck(), ["--expect-size", "1"], timeout: 60)
        assertAllOK(r, size: 1)
        XCTAssertTrue(r.stdout.contains("SingleProcessCommunicator"), r.stdout)
    }

    func testMpirun1() throws {
        let r = try mpirun(1, ["--expect-size", "1"])
        assertAllOK(r, size: 1)
        XCTAssertTrue(r.stdout.contains("MPICommunicator"), r.stdout)
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
        XCTAssertTrue(r.stderr.contains("rank 1 exits(3)"), r.stderr)
    }

    func testKilledRankEndsJob() throws {
        let r = try mpirun(2, ["--kill-rank", "1", "--no-timeout-check"])
        assertEndedWithFailure(r)
    }

    func testAbortRankEndsJobWithReason() throws {
        let r = try mpirun(2, ["--abort-rank", "1", "--no-timeout-check"])
        assertEndedWithFailure(r)
        XCTAssertTrue(r.stderr.contains("error: rank 1: mtl-commcheck: abort requested by --abort-rank 1"), r.stderr)
    }

    func testAbortWithoutMpirun() throws {
        let r = try run(commcheck(), ["--abort-rank", "0"], timeout: 30)
        XCTAssertEqual(r.status, 4, r.stderr)
        XCTAssertTrue(r.stderr.contains("error: rank 0: mtl-commcheck: abort requested by --abort-rank 0"), r.stderr)
    }

    // MARK: the launch scripts, with mtl-commcheck in place of mtl

    func testLaunchMtlMpirunWithClusterConfig() throws {
        let r = try run("/bin/bash", [packageRoot().appendingPathComponent("launch/mtl-mpirun").path,
                                      "-n", "2", "--cluster", "local", "--bin", try commcheck(),
                                      "--", "--expect-size", "2"], timeout: 90)
        assertAllOK(r, size: 2)
        // Two ranks on ≥ 2 cores are bound one core each; the local config's flags are passed.
        if ProcessInfo.processInfo.activeProcessorCount >= 2 {
            XCTAssertTrue(r.stderr.contains("--map-by ppr:2:node:pe=1 --bind-to core"), r.stderr)
        }
        XCTAssertTrue(r.stderr.contains("--mca btl self\\,vader\\,tcp"), r.stderr)
    }

    func testLaunchDebugLocalKeepsPerRankOutput() throws {
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("mtl-debug-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: output) }
        var env = ["MTL_BIN": try commcheck()]
        env["PATH"] = ProcessInfo.processInfo.environment["PATH"]
        let r = try run("/bin/bash", [packageRoot().appendingPathComponent("launch/debug-local").path,
                                      "-n", "3", "--output", output.path, "--", "--expect-size", "3",
                                      "--no-timeout-check"], timeout: 90, extraEnvironment: env)
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("commcheck: 15 checks, 0 failed, world size 3"), r.stdout)
        for rank in 0..<3 {  // Open MPI's --output-filename layout
            let path = output.appendingPathComponent("1/rank.\(rank)/stdout").path
            XCTAssertTrue(FileManager.default.fileExists(atPath: path), path)
        }
    }

    func packageRoot() -> URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    // MARK: assertions

    func assertAllOK(_ r: RunResult, size: Int, file: StaticString = #filePath, line: UInt = #line) {
        let context = "\(r.command)\n--- stdout\n\(r.stdout)\n--- stderr\n\(r.stderr)"
        XCTAssertFalse(r.timedOut, "timed out: " + context, file: file, line: line)
        XCTAssertEqual(r.status, 0, context, file: file, line: line)
        let lines = r.stdout.split(separator: "\n").map(String.init)
        XCTAssertFalse(lines.contains { $0.hasPrefix("FAIL") }, context, file: file, line: line)
        let expected = MPIRunTests.checks + (size > 1 ? ["barrier_timeout"] : [])
        for name in expected {
            let count = lines.filter { $0 == "ok \(name)" || $0.hasPrefix("ok \(name) (") }.count
            XCTAssertEqual(count, 1, "`ok \(name)` printed \(count) times; " + context, file: file, line: line)
        }
        XCTAssertTrue(lines.contains("commcheck: \(expected.count) checks, 0 failed, world size \(size)"), context,
                      file: file, line: line)
    }

    func assertEndedWithFailure(_ r: RunResult, file: StaticString = #filePath, line: UInt = #line) {
        let context = "\(r.command) took \(r.seconds) s\n--- stdout\n\(r.stdout)\n--- stderr\n\(r.stderr)"
        XCTAssertFalse(r.timedOut, "the job hung: " + context, file: file, line: line)
        XCTAssertNotEqual(r.status, 0, context, file: file, line: line)
        XCTAssertLessThan(r.seconds, 30, context, file: file, line: line)
        // The world check ran before the failure: the job really started on 2 ranks.
        XCTAssertTrue(r.stdout.contains("ok world (size 2"), context, file: file, line: line)
    }

    // MARK: processes

    struct RunResult {
        var command: String
        var status: Int32
        var stdout: String
        var stderr: String
        var seconds: Double
        var timedOut: Bool
    }

    /// mtl-commcheck from the products folder this test bundle was built into, else the
    /// package's .build/{debug,release}; MTL_COMMCHECK overrides.
    func commcheck() throws -> String {
        let fm = FileManager.default
        if let path = ProcessInfo.processInfo.environment["MTL_COMMCHECK"] { return path }
        var folders: [URL] = []
        if let exe = try? fm.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            folders.append(URL(fileURLWithPath: exe).deletingLastPathComponent())
        }
        let bundle = Bundle(for: MPIRunTests.self).bundleURL
        folders += [bundle.deletingLastPathComponent(), bundle]
        let package = packageRoot()
        folders += [package.appendingPathComponent(".build/debug"), package.appendingPathComponent(".build/release")]
        for folder in folders {
            let path = folder.appendingPathComponent("mtl-commcheck").path
            if fm.isExecutableFile(atPath: path) { return path }
        }
        throw XCTSkip("no mtl-commcheck next to the tests (looked in \(folders.map(\.path))): "
            + "build it first with `swift build --product mtl-commcheck` (launch/test does)")
    }

    func mpirun(_ n: Int, _ args: [String], oversubscribe: Bool = false) throws -> RunResult {
        guard let mpirun = which("mpirun") else {
            XCTFail("mpirun not found in PATH: install openmpi-bin (launch/test does)")
            throw XCTSkip("no mpirun")
        }
        var flags = ["-n", String(n)]
        if oversubscribe || n > ProcessInfo.processInfo.activeProcessorCount { flags.append("--oversubscribe") }
        return try run(mpirun, flags + [try commcheck()] + args, timeout: 90)
    }

    func which(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for dir in path.split(separator: ":") {
            let candidate = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Runs a command with stdout/stderr in files (no pipe to fill up), killing it after
    /// `timeout` seconds: SIGTERM (mpirun then kills its ranks), SIGKILL 5 s later.
    func run(_ executable: String, _ args: [String], timeout: Double,
             extraEnvironment: [String: String] = [:]) throws -> RunResult {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mtl-dist-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let outURL = dir.appendingPathComponent("stdout"), errURL = dir.appendingPathComponent("stderr")
        FileManager.default.createFile(atPath: outURL.path, contents: nil)
        FileManager.default.createFile(atPath: errURL.path, contents: nil)
        let out = try FileHandle(forWritingTo: outURL), err = try FileHandle(forWritingTo: errURL)

        var env = ProcessInfo.processInfo.environment
        // A launcher's variables in the test's own environment would mislead the child.
        for key in env.keys where key.hasPrefix("OMPI_") || key.hasPrefix("PMIX_") || key.hasPrefix("PMI_")
            || key == "MTL_FORCE_SINGLE" || key == "MTL_FORCE_MPI" { env[key] = nil }
        if getuid() == 0 {
            env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
            env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        }
        env["OMP_NUM_THREADS"] = "1"
        env["OPENBLAS_NUM_THREADS"] = "1"
        env.merge(extraEnvironment) { _, new in new }

        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = args
        process.environment = env
        process.standardOutput = out
        process.standardError = err
        let start = Date()
        try process.run()
        var timedOut = false
        while process.isRunning {
            if Date().timeIntervalSince(start) > timeout {
                timedOut = true
                process.terminate()
                let termAt = Date()
                while process.isRunning && Date().timeIntervalSince(termAt) < 5 { usleep(20_000) }
                if process.isRunning { kill(process.processIdentifier, SIGKILL) }
                break
            }
            usleep(20_000)
        }
        process.waitUntilExit()
        let seconds = Date().timeIntervalSince(start)
        try out.close()
        try err.close()
        return RunResult(command: ([executable] + args).joined(separator: " "),
                         status: process.terminationStatus,
                         stdout: (try? String(contentsOf: outURL, encoding: .utf8)) ?? "",
                         stderr: (try? String(contentsOf: errURL, encoding: .utf8)) ?? "",
                         seconds: seconds, timedOut: timedOut)
    }
}
