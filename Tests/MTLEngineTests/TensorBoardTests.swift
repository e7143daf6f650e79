import Foundation
import XCTest

/// tools/metrics_to_tensorboard.py: the event files it writes, read back with TensorBoard's own
/// reader, hold every numeric field of every record of metrics.jsonl at its step (float32, as
/// TensorBoard stores scalars); two runs become two tagged runs.
final class TensorBoardTests: XCTestCase {
    func testEventsReadBackEqualTheJSONRecords() throws {
        let dir = NSTemporaryDirectory() + "mtl-tb-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var expected: [String: [String: [Int: Double]]] = [:]   // run → tag → step → value
        for (run, scale) in [("a", 1.0), ("b", 2.0)] {
            try FileManager.default.createDirectory(atPath: "\(dir)/runs/\(run)", withIntermediateDirectories: true)
            var lines: [String] = []
            for step in 1...4 {
                let rec: [String: Any] = ["kind": "train", "step": step, "lr": 1e-3 * scale / Double(step),
                                          "loss.seg": 2.5 * scale - 0.1 * Double(step), "coef.depth": 0.3 * Double(step),
                                          "method.w.depth": 0.125 * scale, "skipped": false, "samples_per_s": 31.5]
                lines.append(String(decoding: try JSONSerialization.data(withJSONObject: rec, options: [.sortedKeys]), as: UTF8.self))
                for (k, v) in rec where k != "kind" && k != "step" {
                    expected[run, default: [:]]["train/\(k)", default: [:]][step] = (v as? Bool).map { $0 ? 1 : 0 } ?? (v as! Double)
                }
            }
            let eval: [String: Any] = ["kind": "eval", "step": 4, "split": "val", "seg.miou": 0.42 * scale]
            lines.append(String(decoding: try JSONSerialization.data(withJSONObject: eval, options: [.sortedKeys]), as: UTF8.self))
            expected[run, default: [:]]["eval/seg.miou"] = [4: 0.42 * scale]
            try (lines.joined(separator: "\n") + "\n").write(toFile: "\(dir)/runs/\(run)/metrics.jsonl", atomically: true, encoding: .utf8)
        }
        let root = DistributedTrainingTests.packageRoot
        let convert = try DistributedTrainingTests.run(["python3", root + "/tools/metrics_to_tensorboard.py",
                                                        "\(dir)/runs/a", "\(dir)/runs/b", "--out", "\(dir)/tb"])
        if convert.status == 77 { throw XCTSkip("the tensorboard package is not installed: \(convert.err)") }
        XCTAssertEqual(convert.status, 0, convert.err)
        let read = """
        import json, sys
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        out = {}
        for run in ("a", "b"):
            acc = EventAccumulator(sys.argv[1] + "/" + run); acc.Reload()
            out[run] = {tag: {str(e.step): e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
        print(json.dumps(out))
        """
        try read.write(toFile: dir + "/read.py", atomically: true, encoding: .utf8)
        let r = try DistributedTrainingTests.run(["python3", dir + "/read.py", dir + "/tb"])
        XCTAssertEqual(r.status, 0, r.err)
        let got = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: [String: [String: Double]]])
        for (run, tags) in expected {
            XCTAssertEqual(Set(got[run].map { Array($0.keys) } ?? []), Set(tags.keys), run)
            for (tag, steps) in tags {
                for (step, value) in steps {
                    let v = try XCTUnwrap(got[run]?[tag]?[String(step)], "\(run) \(tag) step \(step)")
                    XCTAssertEqual(v, value, accuracy: 1e-6 * max(1, abs(value)), "\(run) \(tag) step \(step)")
                }
            }
        }
    }
}
