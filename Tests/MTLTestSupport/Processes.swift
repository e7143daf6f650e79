import Foundation
import XCTest

/// A finished subprocess.
public struct ProcessResult {
    /// The arguments, space-separated, for failure messages.
    public var command: String
    public var status: Int32
    public var out: String
    public var err: String
    public var seconds: Double
    /// It was stopped at the timeout (the test has failed already; callers may say more).
    public var timedOut: Bool

    public init(command: String, status: Int32, out: String, err: String, seconds: Double, timedOut: Bool = false) {
        self.command = command
        self.status = status
        self.out = out
        self.err = err
        self.seconds = seconds
        self.timedOut = timedOut
    }
}

/// The first executable `name` on $PATH.
public func which(_ name: String) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for dir in path.split(separator: ":") {
        let candidate = "\(dir)/\(name)"
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    }
    return nil
}

/// Runs `args` through /usr/bin/env (so `args[0]` is a name on PATH or a path) with a hard timeout, so
/// that a hang fails the test instead of hanging CI: at the timeout SIGTERM (mpirun then ends its ranks),
/// SIGKILL to the child and its process group 5 s later. stdout and stderr go to files, so a chatty child
/// cannot fill a pipe and block.
///
/// The child's environment is the test's own with Open MPI allowed to run as root and OpenBLAS
/// single-threaded (the tests' processes share the cores), then
/// - by default `OMPI_MCA_rmaps_base_oversubscribe=1`: the training tests run more ranks than cores;
/// - with `launcherFree`, for the tests of mpirun and of the launch scripts themselves, which must see
///   what a user's shell gives them: without the variables of a launcher this test may run under
///   (OMPI_*, PMIX_*, PMI_*, MTL_FORCE_SINGLE/MPI: they would make the child think it is a rank of
///   that job) and with OMP_NUM_THREADS=1;
/// then `environment` on top. `directory`: the child's working directory (default: the test's).
@discardableResult
public func runProcess(_ args: [String], timeout: Double = 240, environment: [String: String] = [:],
                       launcherFree: Bool = false, directory: URL? = nil,
                       onStart: ((Process) -> Void)? = nil) throws -> ProcessResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = args
    var env = ProcessInfo.processInfo.environment
    if launcherFree {
        for key in env.keys where key.hasPrefix("OMPI_") || key.hasPrefix("PMIX_") || key.hasPrefix("PMI_")
            || key == "MTL_FORCE_SINGLE" || key == "MTL_FORCE_MPI" { env[key] = nil }
        env["OMP_NUM_THREADS"] = "1"
    } else {
        env["OMPI_MCA_rmaps_base_oversubscribe"] = "1"
    }
    if getuid() == 0 {
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    }
    env["OPENBLAS_NUM_THREADS"] = "1"
    env.merge(environment) { _, new in new }
    p.environment = env
    if let directory { p.currentDirectoryURL = directory }
    let outURL = URL(fileURLWithPath: NSTemporaryDirectory() + "mtl-out-\(UUID().uuidString)")
    let errURL = URL(fileURLWithPath: NSTemporaryDirectory() + "mtl-err-\(UUID().uuidString)")
    _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
    _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
    defer { try? FileManager.default.removeItem(at: outURL); try? FileManager.default.removeItem(at: errURL) }
    let out = try FileHandle(forWritingTo: outURL), err = try FileHandle(forWritingTo: errURL)
    p.standardOutput = out
    p.standardError = err
    let command = args.joined(separator: " ")
    let start = Date()
    try p.run()
    onStart?(p)
    var timedOut = false
    while p.isRunning {
        if Date().timeIntervalSince(start) > timeout {
            timedOut = true
            XCTFail("timed out after \(timeout) s: \(command)")
            p.terminate()
            let termAt = Date()
            while p.isRunning && Date().timeIntervalSince(termAt) < 5 { usleep(20_000) }
            if p.isRunning {
                kill(-p.processIdentifier, SIGKILL)
                kill(p.processIdentifier, SIGKILL)
            }
            break
        }
        usleep(20_000)
    }
    p.waitUntilExit()
    let seconds = Date().timeIntervalSince(start)
    try out.close()
    try err.close()
    return ProcessResult(command: command, status: p.terminationStatus,
                         out: (try? String(contentsOf: outURL, encoding: .utf8)) ?? "",
                         err: (try? String(contentsOf: errURL, encoding: .utf8)) ?? "",
                         seconds: seconds, timedOut: timedOut)
}
