import Foundation
import XCTest
@testable import MTLCore

/// HRNet18-S + the multiscale baseline heads (configs/nyud-hrnet18-baseline.yaml) through the real
/// `mtl` binary under mpirun, on synthetic 4-task data (seg, depth, normals, edges): world-size
/// invariance with SyncBN and a Gram method on the four-scale representation, and falling losses.
final class HRNetTrainingTests: XCTestCase {
    static let tasks = ["seg", "depth", "normals", "edges"]
    var dir = ""
    var data = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "mtl-hrnet-train-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        data = dir + "/synth.h5"
        let r = try DistributedTrainingTests.run([try DistributedTrainingTests.mtlBinary(), "synth", "--out", data,
                                                  "--samples", "16", "--val-samples", "4", "--height", "32", "--width", "32",
                                                  "--tasks", Self.tasks.joined(separator: ","), "--seed", "5"])
        XCTAssertEqual(r.status, 0, r.err)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    func train(_ n: Int, run: String, _ extra: [String]) throws -> DistributedTrainingTests.Result {
        let config = DistributedTrainingTests.packageRoot + "/configs/nyud-hrnet18-baseline.yaml"
        return try DistributedTrainingTests.mpirun(n, ["train", "--config", config, "--run-dir", dir + "/" + run,
                                                       "--set", "data.path=\(data)", "--set", "model.head_channels=16",
                                                       "--set", "train.threads=1", "--set", "train.eval_every=0",
                                                       "--set", "checkpoint.every=0", "--set", "log.every=1",
                                                       "--set", "schedule.warmup_steps=0"] + extra, timeout: 400)
    }

    /// Per logged train step: the values of `key.<task>` for every task.
    func series(_ run: String, _ key: String) throws -> [[Double]] {
        let text = try String(contentsOfFile: dir + "/" + run + "/metrics.jsonl", encoding: .utf8)
        return text.split(separator: "\n").compactMap { line -> [Double]? in
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  o["kind"] as? String == "train" else { return nil }
            return Self.tasks.map { o["\(key).\($0)"] as! Double }
        }
    }

    /// -n 1 and -n 2 (SyncBN through every HRNet and head BatchNorm, the same global batch) give the same
    /// losses and IAL coefficients (its Gram is the sum of the four scales' local Grams, summed over ranks).
    func testLossesAndGramCoefficientsAreWorldSizeInvariant() throws {
        for n in [1, 2] {
            let r = try train(n, run: "ws\(n)", ["--set", "train.steps=3", "--set", "train.batch_size=4",
                                               "--set", "method.name=ial", "--set", "optim.lr=0.0001"])
            XCTAssertEqual(r.status, 0, r.err)
        }
        let l1 = try series("ws1", "loss"), l2 = try series("ws2", "loss")
        XCTAssertEqual(l1.count, 3)
        XCTAssertEqual(l2.count, 3)
        for (a, b) in zip(l1, l2) { for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: 1e-5 * max(1, abs(x)), "\(l1) vs \(l2)") } }
        let c1 = try series("ws1", "coef"), c2 = try series("ws2", "coef")
        XCTAssertEqual(c1.count, 3)
        // Step 1 sees the same parameters on both runs: its Gram (hence coefficients) agree to float
        // accuracy (measured: identical). Later steps start from parameters that differ at the 1e-7 level,
        // which IAL's solve amplifies (measured 2e-4 at step 3): compared at 1e-3.
        for (k, (a, b)) in zip(c1, c2).enumerated() {
            for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: (k == 0 ? 1e-6 : 1e-3) * max(1, abs(x)), "\(c1) vs \(c2)") }
        }
        // IAL's coefficients come from the Gram: not all equal.
        XCTAssertTrue(c1.joined().contains { abs($0 - c1[0][0]) > 1e-3 }, "\(c1)")
    }

    /// A short run on 2 ranks: every task's loss falls (mean of the last 4 steps at least 5 % below the first 4;
    /// measured seg 1.75 → 1.25, depth 3.78 → 3.39, normals 0.60 → 0.21, edges 0.85 → 0.69).
    func testBaselineTrainingLossesFall() throws {
        let r = try train(2, run: "fall", ["--set", "train.steps=30", "--set", "train.batch_size=8", "--set", "optim.lr=0.002"])
        XCTAssertEqual(r.status, 0, r.err)
        let l = try series("fall", "loss")
        XCTAssertEqual(l.count, 30)
        guard l.count == 30 else { return }
        for (t, task) in Self.tasks.enumerated() {
            let first = l.prefix(4).map { $0[t] }.reduce(0, +) / 4, last = l.suffix(4).map { $0[t] }.reduce(0, +) / 4
            print("HRNet18-S baseline, 30 steps on 2 ranks: \(task) loss \(first) → \(last)")
            XCTAssertLessThan(last, 0.95 * first, "\(task): \(l.map { $0[t] })")
        }
    }
}
