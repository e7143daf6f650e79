import Foundation
import XCTest
@testable import MTLConvert
@testable import MTLCore
@testable import MTLData
@testable import MTLDist
@testable import MTLEngine
@testable import MTLTrain

final class PredictTests: XCTestCase {
    /// A short run on 4-task synthetic data, then `mtl predict` on every validation sample: the PNGs
    /// have the right sizes, the segmentation PNG's palette indices are the argmax of the raw model
    /// output and the ground truth's are the labels, and the metrics recomputed in Python from
    /// predictions.h5 and the dataset equal `mtl eval`'s (the evaluator's own numbers).
    func testPredictionImagesAndRawArraysMatchTheEvaluation() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var o = SynthOptions()
        o.samples = 8
        o.valSamples = 3
        o.height = 32
        o.width = 64
        o.seed = 5
        o.tasks = ["seg", "depth", "normals", "edges"]
        let data = dir + "/synth.h5"
        try Synth.write(to: data, options: o)
        let yaml = """
        data: {path: \(data)}
        model: {encoder: resnet18, width: 4, output_stride: 8, head: bench, head_channels: 8}
        tasks:
          seg: {role: primary, loss: ce}
          depth: {loss: l1}
          normals: {loss: cosine}
          edges: {loss: bce}
        train: {steps: 25, batch_size: 4, seed: 3, eval_every: 0, threads: 1}
        optim: {name: adam, lr: 0.01}
        checkpoint: {every: 0, keep: 1}
        """
        try yaml.write(toFile: dir + "/c.yaml", atomically: true, encoding: .utf8)
        let comm = SingleProcessCommunicator()
        let summary = try Trainer(config: try Config.load(path: dir + "/c.yaml"), runDir: dir + "/run", comm: comm,
                                  resume: nil).run()
        let checkpoint = try XCTUnwrap(summary.checkpoint)

        let loaded = try LoadedCheckpoint.load(checkpoint: checkpoint, config: nil, overrides: [], split: "val", comm: comm)
        var options = Predict.Options()
        options.samples = 10   // more than the split has: all 3
        options.raw = true
        let files = try Predict.run(loaded, out: dir + "/pred", options: options, comm: comm)
        XCTAssertEqual(files.count, 3 * (1 + 2 * 4 + 1) + 1)
        let H = 32, W = 64
        for i in 0..<3 {
            let name = String(format: "%@/pred/%05d", dir, i)
            let input = try PNG.readRGB8(name + "_input.png")
            XCTAssertEqual([input.width, input.height], [W, H])
            let depth = try PNG.readRGB8(name + "_depth_pred.png")
            XCTAssertEqual([depth.width, depth.height], [W + 24, H], "depth: image + colour bar")
            let normals = try PNG.readRGB8(name + "_normals_gt.png")
            XCTAssertEqual([normals.width, normals.height], [W, H])
            let grid = try PNG.readRGB8(name + "_grid.png")
            XCTAssertEqual(grid.height, 2 * H + 4)
            XCTAssertEqual(grid.width, 4 * W + (W + 24) + 4 * 4)
        }

        // Palette indices = argmax of the raw output; ground truth = the labels (255 = ignore).
        let raw = try H5File.open(dir + "/pred/predictions.h5")
        let seg: [Float] = try raw.read("seg", as: Float.self)
        let classes = loaded.setup.classes[0]
        XCTAssertEqual(try raw.shape("seg"), [3, classes, H, W])
        XCTAssertEqual(try raw.read("index", as: Float.self), [0, 1, 2])
        let batch = Batch()
        var distinct = Set<Int>()
        for i in 0..<3 {
            let pred = try PNG.readLabels(String(format: "%@/pred/%05d_seg_pred.png", dir, i))
            let gt = try PNG.readLabels(String(format: "%@/pred/%05d_seg_gt.png", dir, i))
            try loaded.dataset.load([i], into: batch)
            let labels = batch.targets["seg"]!
            for p in 0..<(H * W) {
                var best = 0
                for c in 1..<classes where seg[(i * classes + c) * H * W + p] > seg[(i * classes + best) * H * W + p] { best = c }
                XCTAssertEqual(Int(pred.pixels[p]), best)
                distinct.insert(best)
                let l = labels.data[p]
                XCTAssertEqual(Int(gt.pixels[p]), l >= 0 ? Int(l) : 255)
            }
        }
        XCTAssertGreaterThan(distinct.count, 1, "a constant prediction would make the argmax check weak")

        // The evaluator's metrics on the same split, and the same numbers from Python on the raw arrays.
        let metrics = try Evaluator.run(model: loaded.setup.model, dataset: loaded.dataset, losses: loaded.setup.lossKinds,
                                        classes: loaded.setup.classes, comm: comm, batchSize: 2)
        func value(_ task: String, _ key: String) -> Double { metrics.first { $0.task == task }!.values.first { $0.0 == key }!.1 }
        let script = """
        import sys
        try:
            import numpy as np, h5py
        except ImportError as e:
            print(e); sys.exit(77)
        p = h5py.File(sys.argv[1], "r"); d = h5py.File(sys.argv[2], "r")
        seg = p["seg"][...].argmax(1); gt = d["val/seg"][...].astype(np.int64).reshape(seg.shape)
        C = p["seg"].shape[1]; v = (gt >= 0) & (gt < C)
        cm = np.bincount(gt[v] * C + seg[v], minlength=C * C).reshape(C, C).astype(np.float64)
        tp = np.diag(cm); union = cm.sum(0) + cm.sum(1) - tp
        print("miou", (tp[union > 0] / union[union > 0]).mean()); print("pixel_acc", tp.sum() / cm.sum())
        dp = p["depth"][...].reshape(-1); dg = d["val/depth"][...].reshape(-1).astype(np.float64); m = dg > 0
        print("abs_err", np.abs(dp[m] - dg[m]).mean()); print("rel_err", (np.abs(dp[m] - dg[m]) / dg[m]).mean())
        """
        try script.write(toFile: dir + "/metrics.py", atomically: true, encoding: .utf8)
        let r = try shell(["python3", dir + "/metrics.py", dir + "/pred/predictions.h5", data])
        if r.status == 77 { throw XCTSkip("numpy/h5py not importable (\(r.output.trimmingCharacters(in: .whitespacesAndNewlines))): the Python recomputation is skipped") }
        XCTAssertEqual(r.status, 0, r.output)
        var python: [String: Double] = [:]
        for line in r.output.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, let v = Double(parts[1]) { python[String(parts[0])] = v }
        }
        for (task, key) in [("seg", "miou"), ("seg", "pixel_acc"), ("depth", "abs_err"), ("depth", "rel_err")] {
            let a = value(task, key), b = try XCTUnwrap(python[key], r.output)
            XCTAssertEqual(a, b, accuracy: 1e-5 * max(1, abs(b)), "\(task).\(key): mtl eval \(a), Python on predictions.h5 \(b)")
        }
    }

    func shell(_ args: [String]) throws -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        // The test process still has both files open; HDF5's file locks would refuse a second opener.
        p.environment = ProcessInfo.processInfo.environment.merging(["HDF5_USE_FILE_LOCKING": "FALSE"]) { $1 }
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let out = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: out, as: UTF8.self))
    }
}
