import Foundation
import XCTest
@testable import MTLCore
@testable import MTLTrain
import MTLTestSupport

/// Swin-T (tiny 32×32 input: patch grid 8×8, every stage padded to the window) with DropPath 0.3 under
/// real `mpirun`: -n 1 and -n 2 give the same losses (the draws are keyed by the global sample index,
/// not the rank's slot); a run resumed from a checkpoint continues bit-identically; 1 and 2 threads per
/// rank give bit-identical results; and DropPath is really active (the curve differs from rate 0).
final class SwinDistributedTests: XCTestCase {
    var dir = ""
    var config = ""

    override func setUpWithError() throws {
        dir = makeTemporaryDirectory("mtl-swin-dist")
        let data = dir + "/synth.h5"
        try synthesize(data, samples: 16, valSamples: 4, height: 32, width: 32, seed: 4)
        config = dir + "/swin.yaml"
        try """
        data: {path: \(data)}
        model: {encoder: swin_t, head: multiscale, head_channels: 8, sync_bn: true, drop_path_rate: 0.3}
        tasks:
          seg: {role: primary, loss: ce}
          depth: {role: auxiliary, loss: l1}
          normals: {role: auxiliary, loss: cosine}
        train: {steps: 6, batch_size: 4, seed: 3, eval_every: 0, threads: 1}
        optim: {name: sgd, lr: 0.001, momentum: 0.9}
        log: {every: 1}
        checkpoint: {every: 3, keep: 5}
        method: {name: ew}
        """.write(toFile: config, atomically: true, encoding: .utf8)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    func train(_ n: Int, _ run: String, _ extra: [String] = []) throws {
        let r = try mpirunMTL(n, ["train", "--config", config, "--run-dir", dir + "/" + run] + extra, timeout: 600)
        XCTAssertEqual(r.status, 0, "\(run): \(r.err)")
    }

    func losses(_ run: String) throws -> [[Double]] {
        try trainSeries(dir + "/" + run, "loss", tasks: ["seg", "depth", "normals"])
    }

    func tensors(_ run: String, _ file: String) throws -> [String: Tensor] {
        try CheckpointStore.load(dir + "/" + run + "/checkpoints/" + file).tensors
    }

    func testWorldSizeInvarianceResumeAndThreadsWithDropPath() throws {
        try train(1, "n1")
        try train(2, "n2", ["--check-consistency", "1"])
        let l1 = try losses("n1"), l2 = try losses("n2")
        XCTAssertEqual(l1.count, 6)
        XCTAssertEqual(l2.count, 6)
        var worst = 0.0
        for (a, b) in zip(l1, l2) { for (x, y) in zip(a, b) { worst = max(worst, abs(x - y) / max(1, abs(x))) } }
        print("Swin-T + DropPath 0.3, -n 1 vs -n 2: largest relative loss difference over 6 steps \(worst)")
        XCTAssertLessThan(worst, 1e-5)

        // DropPath is active: rate 0 gives another curve from step 1 on.
        try train(1, "nodrop", ["--set", "model.drop_path_rate=0", "--set", "train.steps=2"])
        let l0 = try losses("nodrop")
        XCTAssertGreaterThan(zip(l0[0], l1[0]).map { abs($0 - $1) }.max()!, 1e-4, "drop path changed nothing")

        // Resume from step 3: steps 4–6 and the final state bit-identical.
        try train(1, "resumed", ["--resume", dir + "/n1/checkpoints/step-00000003.h5"])
        let lr = try losses("resumed")
        XCTAssertEqual(lr.count, 3)
        XCTAssertEqual(lr, Array(l1.suffix(3)), "resumed losses")
        let full = try tensors("n1", "step-00000006.h5"), resumed = try tensors("resumed", "step-00000006.h5")
        XCTAssertGreaterThan(full.count, 100)
        for (k, t) in full where k.hasPrefix("model.") { XCTAssertTrue(t.array == resumed[k]?.array, "\(k) differs after resume") }

        // 2 threads per rank: bit-identical.
        try train(1, "t2", ["--set", "train.threads=2"])
        XCTAssertEqual(try losses("t2"), l1, "losses with 2 threads")
        let t2 = try tensors("t2", "step-00000006.h5")
        for (k, t) in full where k.hasPrefix("model.") { XCTAssertTrue(t.array == t2[k]?.array, "\(k) differs with 2 threads") }
    }
}
