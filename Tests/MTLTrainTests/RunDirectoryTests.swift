import Foundation
@testable import MTLCore
import XCTest
@testable import MTLTrain

/// The run directory's lock, its append-only logs and the config comparison used in resume errors.
final class RunDirectoryTests: XCTestCase {
    var dir = ""

    override func setUp() {
        dir = NSTemporaryDirectory() + "mtl-rundir-\(UUID().uuidString)"
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// flock is per open file: a second acquire (as a second job would) fails naming the owner; once
    /// the owner lets go, the lock is free again whatever the file says.
    func testLockIsExclusiveAndReleasedWithItsOwner() throws {
        var first = try RunDirectoryLock.acquire(directory: dir)
        XCTAssertNotNil(first)
        do {
            _ = try RunDirectoryLock.acquire(directory: dir)
            XCTFail("a second owner got the lock")
        } catch let e as MTLError {
            XCTAssertTrue(e.message.hasPrefix("run directory \(dir) is in use by PID \(getpid()) on "), e.message)
            XCTAssertTrue(e.message.contains(" since 20"), e.message)
        }
        first = nil   // what the kernel does when the owner dies
        let again = try RunDirectoryLock.acquire(directory: dir)
        XCTAssertNotNil(again)
        let text = try String(contentsOfFile: dir + "/.lock", encoding: .utf8)
        XCTAssertTrue(text.hasPrefix("PID \(getpid()) on "), text)
        XCTAssertEqual(text.split(separator: "\n").count, 1, "the owner line is replaced, not appended")
    }

    /// Appends that fail (injected EIO after two lines) lose whole lines only, and once writing works
    /// again the file says how many are missing.
    func testAppendOnlyFileLosesWholeLinesAndSaysSo() throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = dir + "/metrics.jsonl"
        let file = try AppendOnlyFile(path: path)
        WriteFaultInjection.lock.lock()
        WriteFaultInjection.rules = WriteFaultInjection.parse(path + ":EIO:2")
        WriteFaultInjection.passed = [0]
        WriteFaultInjection.lock.unlock()
        defer {
            WriteFaultInjection.lock.lock()
            WriteFaultInjection.rules = []
            WriteFaultInjection.passed = []
            WriteFaultInjection.lock.unlock()
        }
        XCTAssertTrue(file.append("{\"step\":1}\n"))
        XCTAssertTrue(file.append("{\"step\":2}\n"))
        XCTAssertFalse(file.append("{\"step\":3}\n"))
        XCTAssertFalse(file.append("{\"step\":4}\n"))
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "{\"step\":1}\n{\"step\":2}\n")
        WriteFaultInjection.lock.lock()
        WriteFaultInjection.rules = []
        WriteFaultInjection.passed = []
        WriteFaultInjection.lock.unlock()
        XCTAssertTrue(file.append("{\"step\":5}\n"))
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8),
                       "{\"step\":1}\n{\"step\":2}\n(2 line(s) could not be written here and are missing)\n{\"step\":5}\n")
    }

    /// The keys that differ between a checkpoint's stored config and the current one, tasks included.
    func testConfigDifferences() throws {
        let stored = try Config.parse(yaml: "model: {width: 8}\ntasks: {seg: {role: primary}, depth: {}}", source: "a")
        let current = try Config.parse(yaml: "model: {width: 16}\ntasks: {seg: {role: primary}, normals: {}}", source: "b")
        let diffs = current.differences(fromStored: stored.yaml())
        let keys = diffs.map { $0.key }
        XCTAssertTrue(keys.contains("model.width"), "\(keys)")
        XCTAssertTrue(keys.contains("tasks.normals"), "\(keys)")
        XCTAssertTrue(keys.contains("tasks.depth"), "\(keys)")
        let width = diffs.first { $0.key == "model.width" }!
        XCTAssertEqual([width.stored, width.current], ["8", "16"])
        XCTAssertEqual(diffs.first { $0.key == "tasks.depth" }?.current, "absent")
        XCTAssertEqual(current.differences(fromStored: current.yaml()).count, 0)
    }
}
