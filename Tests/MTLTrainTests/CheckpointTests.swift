import Foundation
import MTLCore
import XCTest
@testable import MTLTrain

final class CheckpointTests: XCTestCase {
    var dir = ""

    override func setUp() {
        dir = NSTemporaryDirectory() + "mtl-ckpt-\(UUID().uuidString)"
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: dir)
    }

    func files() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir + "/checkpoints")) ?? []).sorted()
    }

    func sampleTensors(_ k: Float = 1) -> [(String, Tensor)] {
        [("encoder.layer1.0.conv1.weight", Tensor([2, 1, 3, 3], (0..<18).map { Float($0) * k - 4.5 })),
         ("encoder.bn1.num_batches_tracked", Tensor([], [7])),
         ("optim.step", Tensor([2], [3, 3])),
         ("heads.seg.bias", Tensor([3], [0.25, -1e-20, .greatestFiniteMagnitude]))]
    }

    func testRoundTrip() throws {
        let store = CheckpointStore(directory: dir + "/checkpoints")
        XCTAssertNil(store.latest())
        let meta = ["rng_key": "18446744073709551615", "epoch": "2"]
        let path = try store.save(step: 1234, tensors: sampleTensors(), meta: meta, keep: 3)
        XCTAssertEqual(path, dir + "/checkpoints/step-00001234.h5")
        XCTAssertEqual(store.latest(), path)
        let (tensors, loadedMeta) = try CheckpointStore.load(path)
        XCTAssertEqual(Set(tensors.keys), Set(sampleTensors().map { $0.0 }))
        for (name, t) in sampleTensors() {
            XCTAssertEqual(tensors[name]?.shape, t.shape, name)
            XCTAssertEqual(tensors[name]?.array, t.array, name)
        }
        XCTAssertEqual(loadedMeta, ["rng_key": "18446744073709551615", "epoch": "2", "step": "1234"])
        XCTAssertEqual(UInt64(loadedMeta["rng_key"]!), UInt64.max)
        // flat layout: every tensor is a root dataset named as given
        let f = try H5File.open(path)
        defer { f.close() }
        XCTAssertEqual(try f.children("/"), sampleTensors().map { $0.0 }.sorted())
        XCTAssertEqual(try f.typeClass("encoder.layer1.0.conv1.weight"), .float32)
        XCTAssertEqual(f.stringAttribute("/", "format"), "mtl-checkpoint")
    }

    func testKeepPrunesOldestAndLatestFollows() throws {
        let store = CheckpointStore(directory: dir + "/checkpoints")
        for step in [10, 20, 30, 40, 50] {
            try store.save(step: step, tensors: sampleTensors(Float(step)), meta: [:], keep: 2)
            XCTAssertEqual(store.latest(), dir + "/checkpoints/" + CheckpointStore.fileName(step: step))
        }
        XCTAssertEqual(files(), ["latest", "step-00000040.h5", "step-00000050.h5"])
        XCTAssertEqual(store.list().map { $0.step }, [40, 50])
        let (t, meta) = try CheckpointStore.load(store.latest()!)
        XCTAssertEqual(meta["step"], "50")
        XCTAssertEqual(t["encoder.layer1.0.conv1.weight"]?.array, sampleTensors(50)[0].1.array)
        // keep 0 keeps everything
        let all = CheckpointStore(directory: dir + "/all")
        for step in 1...4 { try all.save(step: step, tensors: sampleTensors(), meta: [:], keep: 0) }
        XCTAssertEqual(all.list().count, 4)
        // a `latest` naming a file that is gone gives nil, not a dangling path
        try FileManager.default.removeItem(atPath: dir + "/checkpoints/step-00000050.h5")
        XCTAssertNil(store.latest())
    }

    func testNoTmpRemainsEvenWhenSavingFails() throws {
        let store = CheckpointStore(directory: dir + "/checkpoints")
        try store.save(step: 1, tensors: sampleTensors(), meta: [:], keep: 3)
        // a crash during an earlier save left a .tmp behind: the next save removes it
        FileManager.default.createFile(atPath: dir + "/checkpoints/step-00000002.h5.tmp", contents: Data([1, 2, 3]))
        try store.save(step: 3, tensors: sampleTensors(), meta: [:], keep: 3)
        XCTAssertFalse(files().contains { $0.hasSuffix(".tmp") }, "\(files())")
        // the rename fails (a non-empty directory sits at the target name): error, no .tmp, latest unchanged
        try FileManager.default.createDirectory(atPath: dir + "/checkpoints/step-00000007.h5/x", withIntermediateDirectories: true)
        XCTAssertThrowsError(try store.save(step: 7, tensors: sampleTensors(), meta: [:], keep: 3)) { e in
            XCTAssertTrue(e is MTLError, "\(e)")
        }
        XCTAssertFalse(files().contains { $0.hasSuffix(".tmp") }, "\(files())")
        XCTAssertEqual(store.latest(), dir + "/checkpoints/step-00000003.h5")
        // invalid names are refused before anything is written
        XCTAssertThrowsError(try store.save(step: 8, tensors: [("a/b", Tensor([1]))], meta: [:], keep: 3))
        XCTAssertThrowsError(try store.save(step: 8, tensors: [("a", Tensor([1])), ("a", Tensor([1]))], meta: [:], keep: 3))
        XCTAssertFalse(files().contains { $0.contains("00000008") })
    }

    func testTruncatedCorruptAndMissingFilesGiveOneLineErrors() throws {
        let store = CheckpointStore(directory: dir + "/checkpoints")
        var big = sampleTensors()
        big.append(("encoder.fc.weight", Tensor([64, 64], repeating: 0.5)))
        let path = try store.save(step: 5, tensors: big, meta: [:], keep: 3)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let truncated = dir + "/truncated.h5"
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: truncated))
        let garbage = dir + "/garbage.h5"
        try Data(repeating: 0x42, count: 4096).write(to: URL(fileURLWithPath: garbage))
        for bad in [truncated, garbage, dir + "/missing.h5"] {
            XCTAssertThrowsError(try CheckpointStore.load(bad), bad) { e in
                guard let m = e as? MTLError else { return XCTFail("\(e)") }
                XCTAssertTrue(m.message.hasPrefix(bad + ": "), m.message)
                XCTAssertFalse(m.message.contains("\n"), m.message)
            }
        }
    }
}

final class RunLogTests: XCTestCase {
    func testRunDirectoryFiles() throws {
        let dir = NSTemporaryDirectory() + "mtl-run-\(UUID().uuidString)/run"
        defer { try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent) }
        do {
            let log = try RunLog(directory: dir, echo: false)
            try log.writeConfig(Config().yaml())
            log.line("step 1/10 | seg 1.000")
            log.record(["step": 1, "lr": 1e-4, "loss": ["seg": 1.5, "depth": Double.nan], "name": "a\"b", "ok": true])
            log.record(["step": 2, "weights": [0.5, 0.25] as [Double]])
        }
        XCTAssertEqual(try Config.parse(yaml: String(contentsOfFile: dir + "/config.yaml", encoding: .utf8), source: "config.yaml"), Config())
        let logText = try String(contentsOfFile: dir + "/train.log", encoding: .utf8)
        let stamped = try NSRegularExpression(pattern: "^\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d step 1/10 \\| seg 1\\.000\\n$")
        XCTAssertEqual(stamped.numberOfMatches(in: logText, range: NSRange(logText.startIndex..., in: logText)), 1, logText)
        let lines = try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 2)
        XCTAssertEqual(String(lines[0]), "{\"loss\":{\"depth\":null,\"seg\":1.5},\"lr\":0.0001,\"name\":\"a\\\"b\",\"ok\":true,\"step\":1}")
        let obj = try JSONSerialization.jsonObject(with: Data(lines[1].utf8)) as? [String: Any]
        XCTAssertEqual(obj?["weights"] as? [Double], [0.5, 0.25])
        // a resumed run appends
        do {
            let log = try RunLog(directory: dir, echo: false)
            log.record(["step": 3])
        }
        XCTAssertEqual(try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").count, 3)
    }

    func testProgressLine() {
        XCTAssertEqual(formatProgress(step: 120, total: 1000, losses: [("seg", 1.2344), ("depth", 0.456)], lr: 1e-4,
                                      samplesPerSecond: 35.2, etaSeconds: 250),
                       "step 120/1000 | seg 1.234 depth 0.456 | lr 1.0e-04 | 35.2 samples/s | ETA 4m10s")
        XCTAssertEqual(formatDuration(42), "42s")
        XCTAssertEqual(formatDuration(3600 + 5 * 60), "1h05m")
        XCTAssertEqual(formatDuration(2 * 86400 + 3 * 3600), "2d03h")
        XCTAssertEqual(formatDuration(.infinity), "?")
        XCTAssertEqual(formatLoss(0.00001234), "1.234e-05")
        XCTAssertEqual(formatLoss(.nan), "nan")
    }
}
