import Foundation
import XCTest

/// Subprocesses with timeouts, and where the built tools and the package are.
struct RunResult {
    var command: String
    var status: Int32
    var stdout: String
    var stderr: String
    var seconds: Double
    var timedOut: Bool
}

extension XCTestCase {
    /// mtl-commcheck's output: exit 0, no FAIL line, each check's `ok` line exactly once.
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

    func packageRoot() -> URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
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
             extraEnvironment: [String: String] = [:], directory: URL? = nil) throws -> RunResult {
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
        if let directory = directory { process.currentDirectoryURL = directory }
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
