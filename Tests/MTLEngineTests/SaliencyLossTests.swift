import Foundation
import XCTest
import MTLTestSupport
@testable import MTLCore
@testable import MTLEngine
@testable import MTLTrain

/// ATRC's 2-channel saliency cross-entropy as a task loss (`loss: saliency_ce`): on the loader's
/// targets ([N,1,H,W] in {0, 1}, -1 where the file has 255), by finite differences and against
/// PyTorch's F.cross_entropy with the batch's class weights in float64; the task-kind rules around it.
final class SaliencyLossTests: XCTestCase {
    func inputs(_ seed: UInt64) -> (logits: Tensor, target: Tensor) {
        var rng = Philox(seed: seed, stream: 3)
        let z = Tensor([2, 2, 5, 7]), t = Tensor([2, 1, 5, 7])
        for i in 0..<z.count { z.data[i] = 3 * (2 * rng.uniform() - 1) }
        for i in 0..<t.count { t.data[i] = i % 8 == 5 ? -1 : (rng.uniform() < 0.35 ? 1 : 0) }
        return (z, t)
    }

    func testFiniteDifferences() throws {
        let (z, t) = inputs(71)
        let loss = try TaskLoss(kind: "saliency_ce")
        let r = loss.forward(z, t)
        XCTAssertEqual(r.count, (0..<t.count).filter { t.data[$0] >= 0 }.count)
        let dz = loss.backward(scale: 1).array
        // Central differences of the sum in Double; w is a function of the targets only.
        let eps: Float = 1e-2
        var worst = 0.0
        for i in 0..<z.count {
            let saved = z.data[i]
            z.data[i] = saved + eps; let up = loss.forward(z, t).sum
            z.data[i] = saved - eps; let down = loss.forward(z, t).sum
            z.data[i] = saved
            let numeric = (up - down) / Double(2 * eps)
            worst = max(worst, abs(numeric - Double(dz[i])) / max(1e-2, abs(numeric)))
            if t.data[i % 35 + (i / 70) * 35] < 0 { XCTAssertEqual(dz[i], 0, "ignored pixel \(i) has a gradient") }
        }
        XCTAssertLessThan(worst, 2e-2, "saliency_ce gradient vs finite differences")
        XCTAssertEqual(TaskLoss.channels(task: "saliency", loss: "saliency_ce", classes: 0), 2)
    }

    static let script = #"""
z, t = leaf("z"), T["t"].long().squeeze(1)
mask = t != -1
ml = torch.masked_select(t, mask).double()
w_pos = torch.sum(1.0 - ml) / ml.numel()
loss = F.cross_entropy(z, t, weight=torch.stack((1.0 - w_pos, w_pos)), ignore_index=-1, reduction="none").sum() / mask.sum()
(loss * mask.sum()).backward(); out("loss", loss.reshape(1)); out("dz", z.grad)
"""#

    func testAgainstPyTorch() throws {
        let (z, t) = inputs(72)
        let ex = try TorchExchange()
        try ex.put("z", z); try ex.put("t", t)
        let (status, log) = try ex.run(Self.script)
        try XCTSkipIf(status == 77, "torch (or numpy) is not importable by python3 (\(log.trimmingCharacters(in: .whitespacesAndNewlines))): PyTorch comparison skipped")
        XCTAssertEqual(status, 0, "reference script failed:\n\(log)")
        guard status == 0 else { return }
        let loss = try TaskLoss(kind: "saliency_ce")
        let r = loss.forward(z, t)
        XCTAssertEqual(r.mean, Double(try ex.get("loss")[0]), accuracy: 1e-5 * r.mean)
        let dz = loss.backward(scale: 1).array, ref = try ex.get("dz")
        XCTAssertEqual(dz.count, ref.count)
        let err = zip(dz, ref).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(err, 1e-5, "saliency_ce dz vs torch (max abs error \(err))")
    }

    /// The loss belongs to the saliency kind only; evaluation and prediction read its 2 channels as
    /// the one logit z₁ − z₀.
    func testTaskKindRules() throws {
        let c = try Config.parse(yaml: "tasks: {seg: {role: primary}, saliency: {loss: saliency_ce}}", source: "c.yaml")
        XCTAssertEqual(c.task(named: "saliency")?.loss, "saliency_ce")
        XCTAssertThrowsError(try Config.parse(yaml: "tasks: {edges: {loss: saliency_ce}}", source: "c.yaml")) {
            XCTAssertEqual("\($0)", "c.yaml: tasks.edges.loss: expected one of bce|balanced_bce for task edges, found 'saliency_ce'")
        }
        for kind in TaskKind.all {
            XCTAssertTrue(kind.losses.contains(kind.defaultLoss), kind.name)
            for l in kind.losses { XCTAssertNotNil(LossKind.named(l), "\(kind.name): \(l)"); XCTAssertNoThrow(try TaskLoss(kind: l, posWeight: 0.5)) }
        }
        XCTAssertEqual(Set(TaskKind.all.flatMap { $0.losses }), Set(LossKind.names))
        let (z, _) = inputs(73)
        let logit = Evaluator.binaryLogit(z, into: Tensor([0]))
        XCTAssertEqual(logit.shape, [2, 1, 5, 7])
        XCTAssertEqual(logit.data[36], z.data[70 + 35 + 1] - z.data[70 + 1])   // sample 1, pixel 1
    }
}
