import Foundation
import XCTest
@testable import MTLCore
@testable import MTLData
@testable import MTLDist
@testable import MTLEngine
@testable import MTLMethods
@testable import MTLModels
@testable import MTLTrain

/// The whole step's gradient (encoder, heads, the three losses, EW) against PyTorch in double precision on
/// the bench network of ../shared/bench/torch_ref.py with the same parameters and batch. Skipped (with a
/// message) where python3 has no torch/h5py or the reference file is absent.
final class TorchCrossCheckTests: XCTestCase {
    func testBenchNetworkGradientsMatchPyTorch() throws {
        let root = DistributedTrainingTests.packageRoot
        let ref = root + "/../shared/bench/torch_ref.py"
        guard FileManager.default.fileExists(atPath: ref) else { throw XCTSkip("no \(ref)") }
        let probe = try DistributedTrainingTests.run(["python3", "-c", "import torch, h5py"], timeout: 120)
        if probe.status != 0 { throw XCTSkip("python3 has no torch/h5py (pip install torch h5py)") }
        Threads.set(1)
        var o = BenchOptions()
        o.width = 8; o.batch = 2; o.height = 64; o.wide = 96
        let model = try MultiTaskModel(ModelSpec(encoder: "bench", width: 8, outputStride: 8, decoder: "bench", headChannels: 64,
                                                 tasks: [("seg", 13), ("depth", 1), ("normals", 3)]), seed: 4)
        let roles: [TaskRole] = [.primary, .auxiliary, .auxiliary]
        let engine = StepEngine(model: model, losses: [try TaskLoss(kind: "ce"), try TaskLoss(kind: "l1"), try TaskLoss(kind: "cosine")],
                                lossWeights: [1, 1, 1], roles: roles,
                                method: try makeMethod(name: "ew", taskNames: ["seg", "depth", "normals"], roles: roles, params: [:]),
                                level: .representation, optimizer: SGD(model.parameters, momentum: 0, nesterov: false, weightDecay: 0),
                                comm: SingleProcessCommunicator(), seed: 0, skipNonFinite: false)
        let batch = Bench.randomBatch(o)
        let stats = try engine.gradients(batch: batch, stepIndex: 0, epoch: 0, epochEnded: false)
        let dir = NSTemporaryDirectory() + "mtl-torch-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let f = try H5File.create(dir + "/x.h5")
        try f.setAttribute("/", "width", 8)
        for p in model.parameters {
            try f.write("params/" + p.name, p.value)
            try f.write("grads/" + p.name, p.grad)
        }
        try f.write("batch/images", batch.images)
        for k in ["seg", "depth", "normals"] { try f.write("batch/" + k, batch.targets[k]!) }
        f.close()
        let r = try DistributedTrainingTests.run(["python3", root + "/tools/torch_crosscheck.py", dir + "/x.h5", ref], timeout: 300)
        guard r.status == 0 else { return XCTFail("torch_crosscheck.py failed: \(r.err)") }
        let obj = try JSONSerialization.jsonObject(with: Data(r.out.split(separator: "\n").last!.utf8)) as! [String: Any]
        let losses = obj["losses"] as! [Double]
        for (a, b) in zip(stats.losses, losses) { XCTAssertEqual(a, b, accuracy: 1e-5 * max(1, abs(b))) }
        let errs = obj["rel_err"] as! [String: Double]
        XCTAssertEqual(errs.count, model.parameters.count)
        for (k, e) in errs.sorted(by: { $0.value > $1.value }).prefix(8) { print("torch cross-check: \(k) relative error \(e)") }
        for (k, e) in errs { XCTAssertLessThan(e, 1e-3, k) }
    }
}
