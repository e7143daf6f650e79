import Foundation
import XCTest
@testable import MTLCore
@testable import MTLData
@testable import MTLDist
@testable import MTLEngine
@testable import MTLMethods
@testable import MTLModels
@testable import MTLTrain

/// A temporary directory removed at the end of the test.
func temporaryDirectory() -> String {
    let d = NSTemporaryDirectory() + "mtl-engine-\(UUID().uuidString)"
    try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

/// The YAML of a tiny run on `data`.
func tinyConfigYAML(data: String, steps: Int, checkpointEvery: Int = 0, method: String = "ew",
                    extra: String = "") -> String {
    """
    data: {path: \(data)}
    model: {encoder: resnet18, width: 4, output_stride: 8, head: deeplab, head_channels: 8}
    tasks:
      seg: {role: primary, loss: ce}
      depth: {role: auxiliary, loss: l1}
      normals: {role: auxiliary, loss: cosine}
    train: {steps: \(steps), batch_size: 4, seed: 3, eval_every: 0, threads: 1}
    optim: {name: adam, lr: 0.001}
    schedule: {name: cosine, warmup_steps: 2}
    log: {every: 1}
    checkpoint: {every: \(checkpointEvery), keep: 5}
    method: {name: \(method)}
    \(extra)
    """
}

func makeSynth(_ dir: String, samples: Int = 16, height: Int = 32, width: Int = 32) throws -> String {
    var o = SynthOptions()
    o.samples = samples
    o.valSamples = 4
    o.height = height
    o.width = width
    o.seed = 11
    let path = dir + "/synth.h5"
    try Synth.write(to: path, options: o)
    return path
}

final class EngineTests: XCTestCase {
    /// The gradient the whole step computes (encoder + heads + losses, EW) equals finite differences of the
    /// total loss along random directions in parameter space.
    func testWholeNetworkGradientMatchesFiniteDifferences() throws {
        Threads.set(1)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = try makeSynth(dir)
        // The bench head: DeepLab's image-pooling BatchNorm normalises over only N values per channel,
        // which makes finite differences of a 3-sample batch too non-linear to be a sharp check (the
        // DeepLab head is checked layer by layer in MTLNNTests and against PyTorch in TorchCrossCheckTests).
        let cfg = try Config.parse(yaml: tinyConfigYAML(data: data, steps: 1), source: "test",
                                   overrides: ["model.head=bench", "model.width=8"])
        let ds = try MTDataset(path: data, split: "train", tasks: ["seg", "depth", "normals"])
        let setup = try RunSetup(config: cfg, dataset: ds)
        let model = setup.model
        let method = try makeMethod(name: "ew", taskNames: setup.taskNames, roles: setup.roles, params: [:])
        let engine = StepEngine(model: model, losses: try setup.lossKinds.map { try TaskLoss(kind: $0) },
                                lossWeights: [1, 1, 1], roles: setup.roles, method: method, level: .representation,
                                optimizer: makeOptimizer(cfg.optim, model.parameters), comm: SingleProcessCommunicator(),
                                seed: 0, skipNonFinite: false)
        let batch = Batch()
        try ds.load([0, 1, 2, 3], into: batch)
        _ = try engine.gradients(batch: batch, stepIndex: 0, epoch: 0, epochEnded: false)
        let params = model.parameters
        let grads = params.map { $0.grad.clone() }

        func totalLoss() -> Double {
            let z = model.encoder.forward(batch.images)
            var total = 0.0
            for t in 0..<3 {
                let pred = model.heads[t].forward(z, height: batch.images.h, width: batch.images.w)
                let ls = engine.losses[t].forward(pred, batch.targets[setup.taskNames[t]]!)
                total += ls.count > 0 ? ls.sum / Double(ls.count) : 0
            }
            return total
        }
        var rng = Philox(seed: 5, stream: 1)
        var largest = 0.0
        for trial in 0..<3 {
            // A random unit direction over all parameters (a per-element step of ~1e-5 keeps the
            // second-order terms far below the first-order change).
            // Half along the backward's own gradient (so the derivative is large), half random.
            let dirs = params.map { p in Tensor(p.value.shape, (0..<p.value.count).map { _ in rng.normal() }) }
            let norm = dirs.reduce(0.0) { $0 + $1.sumOfSquares() }.squareRoot()
            let gnorm = grads.reduce(0.0) { $0 + $1.sumOfSquares() }.squareRoot()
            for (d, g) in zip(dirs, grads) {
                d.scale(Float(1 / norm))
                d.add(g, alpha: Float(Double(trial) / 2 / gnorm))   // trial 0: purely random
            }
            let dnorm = dirs.reduce(0.0) { $0 + $1.sumOfSquares() }.squareRoot()
            for d in dirs { d.scale(Float(1 / dnorm)) }
            var analytic = 0.0
            for (g, d) in zip(grads, dirs) { analytic += g.dot(d) }
            let eps: Float = 3e-3
            for (p, d) in zip(params, dirs) { p.value.add(d, alpha: eps) }
            let plus = totalLoss()
            for (p, d) in zip(params, dirs) { p.value.add(d, alpha: -2 * eps) }
            let minus = totalLoss()
            for (p, d) in zip(params, dirs) { p.value.add(d, alpha: eps) }
            let numeric = (plus - minus) / (2 * Double(eps))
            // 2% relative, plus the Float32 noise floor of a central difference of a loss of ~6 (≈1e-4).
            XCTAssertLessThan(abs(numeric - analytic), 0.02 * max(abs(numeric), abs(analytic)) + 5e-4,
                              "direction \(trial): finite difference \(numeric) vs backward \(analytic)")
            largest = max(largest, abs(analytic))
        }
        XCTAssertGreaterThan(largest, 0.5, "the directions must probe a non-trivial derivative")
    }

    /// Stop at step k, resume from the checkpoint, and steps k+1..n are bit-identical to an uninterrupted run,
    /// on both convolution backends.
    func testResumeIsBitIdentical() throws {
        for backend in ["onednn", "blas"] { try resumeIsBitIdentical(convBackend: backend) }
    }

    func resumeIsBitIdentical(convBackend: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = try makeSynth(dir)
        let cfg = try Config.parse(yaml: tinyConfigYAML(data: data, steps: 6, checkpointEvery: 3, method: "ial"),
                                   source: "test", overrides: ["model.conv_backend=\(convBackend)"])
        let comm = SingleProcessCommunicator()
        let full = try Trainer(config: cfg, runDir: dir + "/a", comm: comm, resume: nil)
        let fullSummary = try full.run()
        let midpoint = dir + "/a/checkpoints/step-00000003.h5"
        XCTAssertTrue(FileManager.default.fileExists(atPath: midpoint))
        let resumed = try Trainer(config: cfg, runDir: dir + "/b", comm: comm, resume: midpoint)
        XCTAssertEqual(resumed.startStep, 3)
        let resumedSummary = try resumed.run()
        let a = try CheckpointStore.load(fullSummary.checkpoint!).tensors
        let b = try CheckpointStore.load(resumedSummary.checkpoint!).tensors
        XCTAssertEqual(a.keys.sorted(), b.keys.sorted())
        var compared = 0
        for (k, ta) in a {
            let tb = b[k]!
            XCTAssertEqual(ta.shape, tb.shape, k)
            XCTAssertTrue(ta.array == tb.array, "\(k) differs after resume (\(convBackend))")
            compared += 1
        }
        XCTAssertGreaterThan(compared, 50)
        // And the run really moved: parameters at step 6 differ from those at step 3.
        let mid = try CheckpointStore.load(midpoint).tensors
        XCTAssertNotEqual(mid["model.encoder.conv1.weight"]!.array, a["model.encoder.conv1.weight"]!.array)
    }

    /// A short run on synthetic scenes lowers every task's loss.
    func testTrainingLowersTheLosses() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = try makeSynth(dir, samples: 16)
        let cfg = try Config.parse(yaml: tinyConfigYAML(data: data, steps: 40), source: "test",
                                   overrides: ["optim.lr=0.005", "schedule.name=constant"])
        let trainer = try Trainer(config: cfg, runDir: dir + "/run", comm: SingleProcessCommunicator(), resume: nil)
        _ = try trainer.run()
        let lines = try String(contentsOfFile: dir + "/run/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        let train = lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            .filter { $0["kind"] as? String == "train" }
        XCTAssertEqual(train.count, 40)
        for task in ["seg", "depth", "normals"] {
            let first = train.prefix(5).map { $0["loss.\(task)"] as! Double }.reduce(0, +) / 5
            let last = train.suffix(5).map { $0["loss.\(task)"] as! Double }.reduce(0, +) / 5
            XCTAssertLessThan(last, 0.9 * first, "\(task): \(first) → \(last)")
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/run/config.yaml"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/run/train.log"))
    }

    /// The encoder imports a file of torchvision-named tensors (as tools/torch_to_h5.py writes).
    func testPretrainedImportUsesTorchvisionNames() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let spec = ModelSpec(encoder: "resnet18", width: 4, outputStride: 8, decoder: "bench", headChannels: 4,
                             tasks: [("seg", 3)])
        let source = try MultiTaskModel(spec, seed: 1)
        let f = try H5File.create(dir + "/pre.h5")
        var written = 0
        for (name, t) in source.stateTensors() where name.hasPrefix("encoder.") {
            try f.write(String(name.dropFirst("encoder.".count)), t)   // torchvision names: conv1.weight, layer1.0...
            written += 1
        }
        try f.write("fc.weight", Tensor([10, 32]))
        f.close()
        XCTAssertTrue(try H5File.open(dir + "/pre.h5").exists("/layer4.1.bn2.running_var"))
        let target = try MultiTaskModel(spec, seed: 2)
        XCTAssertNotEqual(target.encoder.parameters[0].value.array, source.encoder.parameters[0].value.array)
        try Pretrained.loadEncoder(model: target, path: dir + "/pre.h5")
        let src = Dictionary(uniqueKeysWithValues: source.stateTensors())
        for (name, t) in target.stateTensors() where name.hasPrefix("encoder.") {
            XCTAssertEqual(t.array, src[name]!.array, name)
        }
        XCTAssertEqual(written, target.stateTensors().filter { $0.0.hasPrefix("encoder.") }.count)
        // A wrong shape is a one-line error naming the tensor.
        let bad = try H5File.create(dir + "/bad.h5")
        for (name, t) in source.stateTensors() where name.hasPrefix("encoder.") {
            try bad.write(String(name.dropFirst(8)), name == "encoder.conv1.weight" ? Tensor([1, 2]) : t)
        }
        bad.close()
        XCTAssertThrowsError(try Pretrained.loadEncoder(model: target, path: dir + "/bad.h5")) { e in
            XCTAssertTrue("\(e)".contains("encoder.conv1.weight"), "\(e)")
        }
    }
}
