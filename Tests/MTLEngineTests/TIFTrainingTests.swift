import Foundation
import XCTest
@testable import MTLCore
@testable import MTLTrain

/// TIF-R on HRNet18-S (configs/tif-hrnet18-nyud.yaml) through the real `mtl` binary under mpirun, on
/// synthetic 4-task NYUD-like data (seg, depth, normals, edges) at 64×96: the config trains (ATRC loss
/// weights, normal_l1, balanced_bce), losses are finite and fall, and a Gram method over the four SAFF
/// outputs gives the same step on 1 and 2 ranks.
final class TIFTrainingTests: XCTestCase {
    static let tasks = ["seg", "depth", "normals", "edges"]
    var dir = ""
    var data = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "mtl-tif-train-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        data = dir + "/synth.h5"
        let r = try DistributedTrainingTests.run([try DistributedTrainingTests.mtlBinary(), "synth", "--out", data,
                                                  "--samples", "16", "--val-samples", "4", "--height", "64", "--width", "96",
                                                  "--tasks", Self.tasks.joined(separator: ","), "--seed", "5"])
        XCTAssertEqual(r.status, 0, r.err)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    func train(_ n: Int, run: String, _ extra: [String]) throws -> DistributedTrainingTests.Result {
        let config = DistributedTrainingTests.packageRoot + "/configs/tif-hrnet18-nyud.yaml"
        return try DistributedTrainingTests.mpirun(n, ["train", "--config", config, "--run-dir", dir + "/" + run,
                                                       "--set", "data.path=\(data)", "--set", "model.pretrained=",
                                                       "--set", "tasks.seg.classes=0", "--set", "data.augment=false",
                                                       "--set", "train.threads=1", "--set", "train.eval_every=0",
                                                       "--set", "checkpoint.every=0", "--set", "log.every=1"] + extra,
                                                   timeout: 900)
    }

    func series(_ run: String, _ key: String) throws -> [[Double]] {
        let text = try String(contentsOfFile: dir + "/" + run + "/metrics.jsonl", encoding: .utf8)
        return text.split(separator: "\n").compactMap { line -> [Double]? in
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  o["kind"] as? String == "train" else { return nil }
            return Self.tasks.map { o["\(key).\($0)"] as! Double }
        }
    }

    /// 2 ranks, SGD at a constant lr: every task's loss is finite and the mean of the last 5 steps is
    /// below the first 5 by at least 5 %.
    func testLossesFallOnTwoRanks() throws {
        let steps = 40
        let r = try train(2, run: "fall", ["--set", "train.steps=\(steps)", "--set", "train.batch_size=4",
                                           "--set", "schedule.name=constant", "--set", "optim.lr=0.002"])
        XCTAssertEqual(r.status, 0, r.err)
        let l = try series("fall", "loss")
        XCTAssertEqual(l.count, steps)
        guard l.count == steps else { return }
        XCTAssertTrue(l.joined().allSatisfy { $0.isFinite }, "non-finite loss: \(l)")
        for (t, task) in Self.tasks.enumerated() {
            let first = l.prefix(5).map { $0[t] }.reduce(0, +) / 5, last = l.suffix(5).map { $0[t] }.reduce(0, +) / 5
            print("TIF-R HRNet18-S, \(steps) steps on 2 ranks: \(task) loss \(first) → \(last)")
            XCTAssertLessThan(last, 0.95 * first, "\(task): \(l.map { $0[t] })")
        }
    }

    /// IAL's Gram is the sum over the four SAFF outputs of the local Grams, summed over ranks (SyncBN in
    /// backbone, SAFF and heads): one step gives the same losses and coefficients on 1 and 2 ranks.
    func testIALStepIsWorldSizeInvariant() throws {
        let oneStep = ["--set", "method.name=ial", "--set", "method.level=representation", "--set", "optim.lr=0.00001",
                       "--set", "optim.momentum=0", "--set", "train.steps=1", "--set", "train.batch_size=4"]
        for n in [1, 2] {
            let r = try train(n, run: "ial\(n)", oneStep)
            XCTAssertEqual(r.status, 0, r.err)
        }
        for key in ["loss", "coef"] {
            let a = try series("ial1", key), b = try series("ial2", key)
            XCTAssertEqual(a.count, 1, key)
            XCTAssertEqual(b.count, 1, key)
            for (u, v) in zip(a.joined(), b.joined()) {
                // IAL's α_k = w_k‖g_p‖/(‖g_k‖ + ε) is ill-conditioned when a task's representation
                // gradient is at rounding level (at initialisation the depth head's gradient can be
                // ~1e-7 of the primary's, α ~ 1e7): compare 1/α, whose rounding is absolute.
                let (x, y) = key == "coef" ? (1 / u, 1 / v) : (u, v)
                XCTAssertEqual(x, y, accuracy: 1e-5 * max(1, abs(x)), "\(key): \(a) vs \(b)")
            }
        }
        let c = try series("ial1", "coef")
        XCTAssertTrue(c.joined().contains { abs($0 - c[0][0]) > 1e-3 }, "IAL's coefficients are all equal: \(c)")
    }

    /// PCGrad at parameter level: one encoder (backbone + SAFF) backward per task on 2 ranks; two steps
    /// with finite losses.
    func testParameterLevelPCGradRuns() throws {
        let r = try train(2, run: "pcgrad", ["--set", "method.name=pcgrad", "--set", "method.level=parameters",
                                             "--set", "train.steps=2", "--set", "train.batch_size=4"])
        XCTAssertEqual(r.status, 0, r.err)
        let l = try series("pcgrad", "loss")
        XCTAssertEqual(l.count, 2)
        XCTAssertTrue(l.joined().allSatisfy { $0.isFinite }, "\(l)")
    }
}
