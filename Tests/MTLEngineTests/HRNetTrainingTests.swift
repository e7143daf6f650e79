import Foundation
import XCTest
@testable import MTLCore
@testable import MTLTrain
import MTLTestSupport

/// HRNet18-S + the multiscale baseline heads (configs/nyud-hrnet18-baseline.yaml) through the real
/// `mtl` binary under mpirun, on synthetic 4-task data (seg, depth, normals, edges): world-size
/// invariance with SyncBN and a Gram method on the four-scale representation, and falling losses.
final class HRNetTrainingTests: XCTestCase {
    static let tasks = ["seg", "depth", "normals", "edges"]
    var dir = ""
    var data = ""

    override func setUpWithError() throws {
        dir = makeTemporaryDirectory("mtl-hrnet-train")
        data = dir + "/synth.h5"
        try synthesize(data, samples: 16, valSamples: 4, height: 32, width: 32, tasks: Self.tasks, seed: 5)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    func train(_ n: Int, run: String, _ extra: [String]) throws -> ProcessResult {
        let config = packageRoot + "/configs/nyud-hrnet18-baseline.yaml"
        return try mpirunMTL(n, ["train", "--config", config, "--run-dir", dir + "/" + run,
                                 "--set", "data.path=\(data)", "--set", "model.head_channels=16",
                                 "--set", "train.threads=1", "--set", "train.eval_every=0",
                                 "--set", "checkpoint.every=0", "--set", "log.every=1",
                                 "--set", "schedule.warmup_steps=0"] + extra, timeout: 400)
    }

    /// Per logged train step: the values of `key.<task>` for every task.
    func series(_ run: String, _ key: String) throws -> [[Double]] { try trainSeries(dir + "/" + run, key, tasks: Self.tasks) }

    /// The world-size comparisons: one step of plain SGD. The step sees identical parameters on both world
    /// sizes, so losses and coefficients must agree to float accuracy (measured: bit-identical), and so
    /// must the parameters after the update (measured: ≤ 1.7e-7 relative per tensor). Later steps are not
    /// compared: at HRNet's random init on 2-image shards the loss moves by ~2 % per step even at lr 1e-5,
    /// and the ranks' different summation order (1e-7) grows ~100× per step, more in IAL's and PCGrad's
    /// coefficients.
    static let oneStep = ["--set", "optim.name=sgd", "--set", "optim.lr=0.00001", "--set", "optim.momentum=0",
                          "--set", "train.steps=1", "--set", "train.batch_size=4"]

    /// Runs `method` on 1 and 2 ranks and compares the step's losses and coefficients and the parameters after it.
    /// `decisions`: the method makes discrete per-position decisions (GradDrop's masks: keep where
    /// P > U), and a decision within rounding of its threshold may go either way between world sizes.
    /// One such flip removes or restores one position's whole gradient, and everything behind it moves
    /// (measured on AMD Zen5 with AVX-512 kernels: one fuse-layer BN bias 7 % apart, the step's
    /// BN-bias gradients 2.3 % apart over the model, both scaling with 1 − leak; 5e-8 with AVX2
    /// kernels, where no decision flips). So the step's gradient is compared over the whole model, at
    /// a bound that a few flips stay under and a wrong q or a misplaced mask, which move a large part
    /// of the decisions, do not.
    func assertWorldSizeInvariant(method: String, level: String, decisions: Bool = false,
                                  file: StaticString = #filePath, line: UInt = #line) throws {
        for n in [1, 2] {
            let r = try train(n, run: "\(method)\(n)", ["--set", "method.name=\(method)", "--set", "method.level=\(level)",
                                                      "--set", "checkpoint.every=1"] + Self.oneStep)
            XCTAssertEqual(r.status, 0, r.err, file: file, line: line)
        }
        for key in ["loss", "coef"] {
            let a = try series("\(method)1", key), b = try series("\(method)2", key)
            XCTAssertEqual(a.count, 1, "\(method) \(key)", file: file, line: line)
            XCTAssertEqual(b.count, 1, "\(method) \(key)", file: file, line: line)
            for (u, v) in zip(a.joined(), b.joined()) {
                XCTAssertEqual(u, v, accuracy: 1e-6 * max(1, abs(u)), "\(method) \(key): \(a) vs \(b)", file: file, line: line)
            }
        }
        func parameters(_ run: String) throws -> [String: Tensor] {
            let store = CheckpointStore(directory: dir + "/" + run + "/checkpoints")
            guard let latest = store.latest() else { XCTFail("no checkpoint in \(run)", file: file, line: line); return [:] }
            return try CheckpointStore.load(latest).tensors.filter { $0.key.hasPrefix("model.") && !$0.key.hasSuffix("num_batches_tracked") }
        }
        let p1 = try parameters("\(method)1"), p2 = try parameters("\(method)2")
        // 864 backbone + 4 heads × 9 state tensors, without the 148 num_batches_tracked counters.
        XCTAssertEqual(p1.count, 752, file: file, line: line)
        let d = relativeDifference(p1, p2, file: file, line: line)
        print("HRNet18-S \(method) (\(level)), parameters after one step on 1 vs 2 ranks: worst \(d.worstName) \(d.worst)")
        guard decisions else {
            XCTAssertLessThan(d.worst, 1e-5, "\(method): \(d.worstName)", file: file, line: line)
            return
        }
        // BN biases start at 0, so after one SGD step they are −lr·∂L/∂β: the step's gradient, exactly.
        let bnBias = Set(p1.keys.filter { $0.hasSuffix(".running_mean") }.map { String($0.dropLast("running_mean".count)) + "bias" })
        let g = relativeDifference(p1, p2, include: { bnBias.contains($0) }, file: file, line: line)
        print("HRNet18-S \(method): BN-bias gradients of the step on 1 vs 2 ranks differ by \(g.global) over \(g.compared) tensors")
        XCTAssertGreaterThan(g.compared, 100, file: file, line: line)
        XCTAssertLessThan(g.global, 0.1, "\(method): the gradients differ beyond a few flipped decisions", file: file, line: line)
    }

    /// IAL: its Gram is the sum of the four scales' local Grams, summed over ranks (SyncBN everywhere).
    func testIALIsWorldSizeInvariant() throws {
        try assertWorldSizeInvariant(method: "ial", level: "representation")
        let c = try series("ial1", "coef")
        XCTAssertTrue(c.joined().contains { abs($0 - c[0][0]) > 1e-3 }, "IAL's coefficients are all equal: \(c)")
    }

    /// PCGrad at parameter level: one encoder backward per task from its per-scale gradients,
    /// reduce-scatter, partial Gram, all-gather.
    func testParameterLevelPCGradIsWorldSizeInvariant() throws {
        try assertWorldSizeInvariant(method: "pcgrad", level: "parameters")
        XCTAssertTrue(try series("pcgrad1", "coef").joined().contains { abs($0 - 1) > 1e-3 }, "PCGrad projected nothing")
    }

    /// GradDrop at representation level: the per-position vectors of the four scales concatenated, all-reduced.
    func testGradDropIsWorldSizeInvariant() throws {
        try assertWorldSizeInvariant(method: "graddrop", level: "representation", decisions: true)
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
