import Foundation
import XCTest
@testable import MTLCore
@testable import MTLTrain
import MTLTestSupport

/// TIF-R through the real `mtl` binary under mpirun, on synthetic 4-task NYUD-like data (seg, depth,
/// normals, edges; ATRC's loss weights, normal_l1, balanced_bce). HRNet18-S (configs/tif-hrnet18-nyud.yaml):
/// 400 steps lower every task's loss by at least 30 %, a Gram method over the four SAFF outputs gives the
/// same step on 1 and 2 ranks, parameter-level PCGrad runs. Swin-T (configs/tif-swin_t-nyud.yaml): a short
/// run lowers every loss, and one step agrees on 1 and 2 ranks.
final class TIFTrainingTests: XCTestCase {
    static let tasks = ["seg", "depth", "normals", "edges"]
    var dir = ""

    override func setUpWithError() throws { dir = makeTemporaryDirectory("mtl-tif-train") }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    /// 16 training and 4 validation scenes at height × width (multiples of 32: SAFF and LTHD pool by exact factors).
    func data(height: Int, width: Int) throws -> String {
        let path = dir + "/synth-\(height)x\(width).h5"
        try synthesize(path, samples: 16, valSamples: 4, height: height, width: width, tasks: Self.tasks, seed: 5)
        return path
    }

    @discardableResult
    func train(_ n: Int, _ config: String, data: String, run: String, _ extra: [String], binary: String? = nil) throws -> ProcessResult {
        let overrides = ["data.path=\(data)", "model.pretrained=", "tasks.seg.classes=0", "data.augment=false",
                         "train.threads=1", "train.eval_every=0", "checkpoint.every=0", "log.every=1"]
        let r = try mpirunMTL(n, ["train", "--config", packageRoot + "/configs/" + config, "--run-dir", dir + "/" + run]
                                 + overrides.flatMap { ["--set", $0] } + extra, binary: binary, timeout: 600)
        XCTAssertEqual(r.status, 0, "\(run): \(r.err)")
        return r
    }

    /// Per task: mean of the first `window` logged losses → mean of the last `window`; asserts every loss is
    /// finite and `last < factor · first`.
    func assertLossesFall(_ run: String, steps: Int, window: Int, factor: Double, _ label: String,
                          file: StaticString = #filePath, line: UInt = #line) throws {
        let l = try trainSeries(dir + "/" + run, "loss", tasks: Self.tasks)
        XCTAssertEqual(l.count, steps, file: file, line: line)
        guard l.count == steps else { return }
        XCTAssertTrue(l.joined().allSatisfy { $0.isFinite }, "non-finite loss: \(l)", file: file, line: line)
        for (t, task) in Self.tasks.enumerated() {
            let first = columnMean(l, 0..<window, column: t), last = columnMean(l, (steps - window)..<steps, column: t)
            print("\(label): \(task) loss \(first) → \(last) (\(Int((100 * (1 - last / first)).rounded())) % lower)")
            XCTAssertLessThan(last, factor * first, "\(task): \(l.map { $0[t] })", file: file, line: line)
        }
    }

    /// The issue's training check (≥ 300 steps), through the release binary: 400 steps on 2 ranks (SGD,
    /// constant lr 0.005, global batch 4, 32×64): each task's mean loss over the last 30 steps is at least
    /// 30 % below the first 30 (measured: seg 80 %, depth 82 %, normals 64 %, edges 43 %). Edges fall
    /// slowest (balanced BCE): after 232 steps they were 29 % lower, hence 400.
    func testEveryLossFallsByAThirdIn400Steps() throws {
        let steps = 400
        let r = try train(2, "tif-hrnet18-nyud.yaml", data: try data(height: 32, width: 64), run: "fall",
                          ["--set", "train.steps=\(steps)", "--set", "train.batch_size=4",
                           "--set", "schedule.name=constant", "--set", "optim.lr=0.005"], binary: try releaseMTLBinary())
        print("TIF-R HRNet18-S, \(steps) steps on 2 ranks at 32×64: \(String(format: "%.1f", r.seconds)) s")
        try assertLossesFall("fall", steps: steps, window: 30, factor: 0.7, "TIF-R HRNet18-S, \(steps) steps on 2 ranks")
    }

    /// Losses and IAL's encoder coefficients of one step on 1 and 2 ranks agree. IAL's α_k =
    /// w_k‖g_p‖/(‖g_k‖ + ε) is ill-conditioned when a task's representation gradient is at rounding level
    /// (at initialisation the depth head's gradient can be ~1e-7 of the primary's, α ~ 1e7): 1/α is
    /// compared, whose rounding is absolute.
    func assertOneIALStepAgrees(_ a: String, _ b: String, file: StaticString = #filePath, line: UInt = #line) throws {
        for key in ["loss", "coef"] {
            let x = try trainSeries(dir + "/" + a, key, tasks: Self.tasks), y = try trainSeries(dir + "/" + b, key, tasks: Self.tasks)
            XCTAssertEqual(x.count, 1, key, file: file, line: line)
            XCTAssertEqual(y.count, 1, key, file: file, line: line)
            for (u, v) in zip(x.joined(), y.joined()) {
                let (s, t) = key == "coef" ? (1 / u, 1 / v) : (u, v)
                XCTAssertEqual(s, t, accuracy: 1e-5 * max(1, abs(s)), "\(key): \(x) vs \(y)", file: file, line: line)
            }
        }
        let c = try trainSeries(dir + "/" + a, "coef", tasks: Self.tasks)
        XCTAssertTrue(c.joined().contains { abs($0 - c[0][0]) > 1e-3 }, "IAL's coefficients are all equal: \(c)", file: file, line: line)
    }

    static let oneIALStep = ["--set", "method.name=ial", "--set", "method.level=representation", "--set", "optim.lr=0.00001",
                             "--set", "optim.momentum=0", "--set", "train.steps=1", "--set", "train.batch_size=4"]

    /// HRNet18-S: IAL's Gram is the sum over the four SAFF outputs of the local Grams, summed over ranks
    /// (SyncBN in backbone, SAFF and heads).
    func testIALStepIsWorldSizeInvariant() throws {
        let data = try data(height: 64, width: 96)
        for n in [1, 2] { try train(n, "tif-hrnet18-nyud.yaml", data: data, run: "ial\(n)", Self.oneIALStep) }
        try assertOneIALStepAgrees("ial1", "ial2")
    }

    /// PCGrad at parameter level: one encoder (backbone + SAFF) backward per task on 2 ranks; two steps
    /// with finite losses.
    func testParameterLevelPCGradRuns() throws {
        try train(2, "tif-hrnet18-nyud.yaml", data: try data(height: 32, width: 64), run: "pcgrad",
                  ["--set", "method.name=pcgrad", "--set", "method.level=parameters", "--set", "train.steps=2",
                   "--set", "train.batch_size=4"])
        let l = try trainSeries(dir + "/pcgrad", "loss", tasks: Self.tasks)
        XCTAssertEqual(l.count, 2)
        XCTAssertTrue(l.joined().allSatisfy { $0.isFinite }, "\(l)")
    }

    // MARK: Swin-T

    /// The whole Swin-T (27.5 M parameters) at 32×32 with window 4: patch grid 8×8, stage maps 8/4/2/1, the
    /// last two padded to one window, so every block still runs W-MSA / SW-MSA with its mask.
    static let swin = ["--set", "model.swin.window=4"]

    /// 2 ranks, 24 steps at a constant lr: every task's mean loss over the last 4 steps is below the first 4.
    func testSwinTLossesFallOnTwoRanks() throws {
        let steps = 24
        let r = try train(2, "tif-swin_t-nyud.yaml", data: try data(height: 32, width: 32), run: "swin",
                          Self.swin + ["--set", "train.steps=\(steps)", "--set", "train.batch_size=4",
                                       "--set", "schedule.name=constant", "--set", "optim.lr=0.002"])
        print("TIF-R Swin-T, \(steps) steps on 2 ranks at 32×32: \(String(format: "%.1f", r.seconds)) s")
        try assertLossesFall("swin", steps: steps, window: 4, factor: 0.95, "TIF-R Swin-T, \(steps) steps on 2 ranks")
    }

    /// One IAL step of TIF-R Swin-T on 1 and 2 ranks: the same losses and 1/α, and the same update of every
    /// decoder task parameter (IAL's decoder weights are well conditioned, unlike α: the backbone and SAFF
    /// updates carry α·g of the rounding-level task gradient). The update is measured from a run at lr 1e-30
    /// (the initial weights: the config requires lr > 0).
    func testSwinTStepIsWorldSizeInvariant() throws {
        let data = try data(height: 32, width: 32)
        let save = ["--set", "checkpoint.every=1"]
        for n in [1, 2] { try train(n, "tif-swin_t-nyud.yaml", data: data, run: "ial\(n)", Self.swin + Self.oneIALStep + save) }
        try train(1, "tif-swin_t-nyud.yaml", data: data, run: "init", Self.swin + Self.oneIALStep + save + ["--set", "optim.lr=1e-30"])
        try assertOneIALStepAgrees("ial1", "ial2")

        func parameters(_ run: String) throws -> [String: Tensor] {
            let store = CheckpointStore(directory: dir + "/" + run + "/checkpoints")
            guard let latest = store.latest() else { XCTFail("no checkpoint in \(run)"); return [:] }
            return try CheckpointStore.load(latest).tensors
        }
        let p0 = try parameters("init"), p1 = try parameters("ial1"), p2 = try parameters("ial2")
        func update(_ p: [String: Tensor]) -> [String: Tensor] {
            var u: [String: Tensor] = [:]
            for (name, t) in p where name.hasPrefix("model.decoder.") && !name.hasPrefix("model.decoder.saff.")
                && !name.hasSuffix("running_mean") && !name.hasSuffix("running_var") && !name.hasSuffix("num_batches_tracked") {
                guard let t0 = p0[name] else { continue }
                let d = t.clone()
                d.add(t0, alpha: -1)
                u[name] = d
            }
            return u
        }
        let u1 = update(p1), u2 = update(p2)
        let moved = u1.values.filter { t in (0..<t.count).contains { t[$0] != 0 } }.count
        XCTAssertGreaterThan(moved, 100, "the decoder did not move in one step")
        let d = relativeDifference(u1, u2)
        print("TIF-R Swin-T, one IAL step, decoder update on 1 vs 2 ranks: \(d.compared) tensors, "
              + "‖Δ₁ − Δ₂‖/‖Δ₁‖ = \(d.global), worst tensor \(d.worstName) \(d.worst)")
        // Measured 8.3e-5 (loaded machine, 2026-12-02). Per tensor the depth head's update is rounding noise
        // (its gradient is at rounding level at initialisation, see above: worst tensor ~57 relative), so
        // the bound is on all decoder task parameters together; a wrong normalisation would be ~0.5.
        XCTAssertLessThan(d.global, 1e-3)
    }
}
