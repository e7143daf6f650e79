import Foundation
import MTLTestSupport
import XCTest

// The subprocess runner, `which` and the package root are MTLTestSupport's; what is here is
// mtl-commcheck's.

extension XCTestCase {
    /// mtl-commcheck's output: exit 0, no FAIL line, each check's `ok` line exactly once.
    func assertAllOK(_ r: ProcessResult, size: Int, file: StaticString = #filePath, line: UInt = #line) {
        let context = "\(r.command)\n--- stdout\n\(r.out)\n--- stderr\n\(r.err)"
        XCTAssertFalse(r.timedOut, "timed out: " + context, file: file, line: line)
        XCTAssertEqual(r.status, 0, context, file: file, line: line)
        let lines = r.out.split(separator: "\n").map(String.init)
        XCTAssertFalse(lines.contains { $0.hasPrefix("FAIL") }, context, file: file, line: line)
        let expected = MPIRunTests.checks + (size > 1 ? ["barrier_timeout"] : [])
        for name in expected {
            let count = lines.filter { $0 == "ok \(name)" || $0.hasPrefix("ok \(name) (") }.count
            XCTAssertEqual(count, 1, "`ok \(name)` printed \(count) times; " + context, file: file, line: line)
        }
        XCTAssertTrue(lines.contains("commcheck: \(expected.count) checks, 0 failed, world size \(size)"), context,
                      file: file, line: line)
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
        let package = URL(fileURLWithPath: packageRoot)
        folders += [package.appendingPathComponent(".build/debug"), package.appendingPathComponent(".build/release")]
        for folder in folders {
            let path = folder.appendingPathComponent("mtl-commcheck").path
            if fm.isExecutableFile(atPath: path) { return path }
        }
        throw XCTSkip("no mtl-commcheck next to the tests (looked in \(folders.map(\.path))): "
            + "build it first with `swift build --product mtl-commcheck` (launch/test does)")
    }

    /// `mpirun -n n mtl-commcheck args`, oversubscribed only when asked or when n exceeds the cores (the
    /// tests check the world mpirun builds, so it runs as from a user's shell: `launcherFree`).
    func mpirun(_ n: Int, _ args: [String], oversubscribe: Bool = false) throws -> ProcessResult {
        guard let mpirun = which("mpirun") else {
            XCTFail("mpirun not found in PATH: install openmpi-bin (launch/test does)")
            throw XCTSkip("no mpirun")
        }
        var flags = ["-n", String(n)]
        if oversubscribe || n > ProcessInfo.processInfo.activeProcessorCount { flags.append("--oversubscribe") }
        return try runProcess([mpirun] + flags + [try commcheck()] + args, timeout: 90, launcherFree: true)
    }
}
