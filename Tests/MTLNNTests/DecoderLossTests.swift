import Foundation
import XCTest
import MTLCore
import MTLTestSupport
@testable import MTLNN

/// The decoder papers' losses (ATRC normals L1, class-balanced BCE, ATRC saliency CE, MT-CP's code normals MSE):
/// finite differences of sum, invalid-pixel handling, thread-count independence, and the
/// PyTorch formulas of the ATRC code base in float64.
final class DecoderLossTests: XCTestCase {
    /// Unit normals, with pixel `i` invalid when i % 7 == 3 (255 in one channel) or i % 7 == 5 (zero vector).
    func normalTargets(_ shape: [Int], _ rng: inout Philox) -> Tensor {
        let t = Tensor(shape), hw = shape[2] * shape[3]
        for s in 0..<shape[0] {
            for i in 0..<hw {
                let v = (0..<3).map { _ in rng.normal() }
                let norm = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).squareRoot()
                for ch in 0..<3 {
                    var value = v[ch] / norm
                    if i % 7 == 3 && ch == 1 { value = 255 }
                    if i % 7 == 5 { value = 0 }
                    t[(s * 3 + ch) * hw + i] = value
                }
            }
        }
        return t
    }

    /// Binary targets with ~30% positives and every 9th element 255 (ignored).
    func binaryTargets(_ count: Int, _ rng: inout Philox) -> [Float] {
        (0..<count).map { i in i % 9 == 4 ? 255 : (rng.uniform() < 0.3 ? 1 : 0) }
    }

    func testNormalL1Loss() {
        var rng = Philox(seed: 51, stream: 1)
        let loss = NormalL1Loss()
        let pred = randomTensor([2, 3, 4, 5], &rng), target = normalTargets([2, 3, 4, 5], &rng)
        let result = loss.forward(pred, target)
        let invalid = (0..<20).filter { $0 % 7 == 3 || $0 % 7 == 5 }.count
        XCTAssertEqual(result.count, 2 * (20 - invalid), "valid pixels, not elements")
        let dx = loss.backward(scale: 1).array
        for i in 0..<20 where i % 7 == 3 || i % 7 == 5 {
            XCTAssertEqual([dx[i], dx[20 + i], dx[40 + i]], [0, 0, 0], "invalid pixel \(i)")
        }
        checkGradient("normal L1 dpred", x: pred, analytic: dx, eps: 1e-3, tolerance: 1e-3) { loss.forward(pred, target).sum }
        // Scale invariance of the prediction: 3·pred gives the same loss.
        let tripled = pred.clone()
        tripled.scale(3)
        XCTAssertEqual(loss.forward(tripled, target).sum, result.sum, accuracy: 1e-5)
    }

    /// MT-CP's code normals loss: Σ (p − t)² over the valid ELEMENTS (255 masks that element only, as the
    /// code's per-element mask; a zero-vector pixel masks all three), count = valid elements, gradient
    /// 2(p − t) there and 0 elsewhere; the raw prediction, so scaling it changes the loss.
    func testNormalMSELoss() {
        var rng = Philox(seed: 56, stream: 1)
        let loss = NormalMSELoss()
        let pred = randomTensor([2, 3, 4, 5], &rng), target = normalTargets([2, 3, 4, 5], &rng)
        let result = loss.forward(pred, target)
        let zeroPixels = (0..<20).filter { $0 % 7 == 5 }.count, ignored = (0..<20).filter { $0 % 7 == 3 }.count
        XCTAssertEqual(result.count, 2 * (3 * (20 - zeroPixels) - ignored), "valid elements, not pixels")
        var want = 0.0
        for s in 0..<2 {
            for c in 0..<3 {
                for i in 0..<20 where i % 7 != 5 && !(i % 7 == 3 && c == 1) {
                    let k = (s * 3 + c) * 20 + i
                    want += Double(pred[k] - target[k]) * Double(pred[k] - target[k])
                }
            }
        }
        XCTAssertEqual(result.sum, want, accuracy: 1e-5 * want)
        let dx = loss.backward(scale: 1).array
        for s in 0..<2 {
            for i in 0..<20 {
                for c in 0..<3 {
                    let k = (s * 3 + c) * 20 + i
                    if i % 7 == 5 || (i % 7 == 3 && c == 1) {
                        XCTAssertEqual(dx[k], 0, "invalid element \(k)")
                    } else {
                        XCTAssertEqual(dx[k], 2 * (pred[k] - target[k]), accuracy: 1e-6, "element \(k)")
                    }
                }
            }
        }
        // The other channels of a pixel with one 255 channel stay valid (the code's mask is per element).
        XCTAssertNotEqual(dx[3], 0)
        XCTAssertEqual(loss.backward(scale: 0.25).array, dx.map { 0.25 * $0 })
        checkGradient("normal MSE dpred", x: pred, analytic: dx, eps: 1e-3, tolerance: 1e-3) { loss.forward(pred, target).sum }
        // Not normalised: 3·pred gives another loss.
        let tripled = pred.clone()
        tripled.scale(3)
        XCTAssertGreaterThan(abs(loss.forward(tripled, target).sum - result.sum), 1)
        // Nothing valid: sum and count 0 (the trainer's loss 0 and no gradient; the code's 0 / max(0, 1e-6)).
        let none = loss.forward(pred, Tensor([2, 3, 4, 5]))
        XCTAssertEqual(none, LossSum(sum: 0, count: 0))
        XCTAssertTrue(loss.backward(scale: 1).array.allSatisfy { $0 == 0 })
    }

    /// The code's NormalsLoss equation in float64 torch: masked_select by (label != 255) — with mtl's zero
    /// vectors as the code's AddIgnoreRegions turns them into 255 — mse_loss(reduction='sum') / n_valid.
    static let mseScript = #"""
x, t = leaf("mse_x"), T["mse_t"]
label = t.clone()
label[(t == 0).all(dim=1, keepdim=True).expand_as(t)] = 255.0      # AddIgnoreRegions: norm-0 pixels -> 255
mask = label != 255
n_valid = torch.sum(mask).item()
loss = F.mse_loss(torch.masked_select(x, mask), torch.masked_select(label, mask), reduction="sum")
loss = torch.div(loss, max(n_valid, 1e-6))
(loss * n_valid).backward(); out("mse_loss", loss.reshape(1)); out("mse_dx", x.grad)
"""#

    func testNormalMSEAgainstPyTorch() throws {
        let ex = try TorchExchange()
        var rng = Philox(seed: 57, stream: 1)
        let x = randomTensor([2, 3, 6, 7], &rng), t = normalTargets([2, 3, 6, 7], &rng)
        try ex.put("mse_x", x); try ex.put("mse_t", t)
        let (status, log) = try ex.run(Self.mseScript)
        try XCTSkipIf(status == 77, "torch (or numpy) is not importable by python3 (\(log.trimmingCharacters(in: .whitespacesAndNewlines))): PyTorch comparison skipped")
        XCTAssertEqual(status, 0, "reference script failed:\n\(log)")
        guard status == 0 else { return }
        let loss = NormalMSELoss()
        let r = loss.forward(x, t)
        assertClose([Float(r.mean)], try ex.get("mse_loss"), tol: 1e-5, "normal MSE loss")
        assertClose(loss.backward(scale: 1).array, try ex.get("mse_dx"), tol: 1e-4, "normal MSE dx")
    }

    func testBalancedBCE() {
        var rng = Philox(seed: 52, stream: 1)
        let x = randomTensor([2, 1, 6, 7], &rng, scale: 3)
        let t = Tensor([2, 1, 6, 7], binaryTargets(84, &rng))
        for w in [Float(0.95), nil] {
            let loss = BalancedBCEWithLogitsLoss(positiveWeight: w)
            let result = loss.forward(x, t)
            let valid = (0..<84).filter { t[$0] != 255 }
            XCTAssertEqual(result.count, valid.count)
            let negatives = Float(valid.filter { t[$0] == 0 }.count) / Float(valid.count)
            XCTAssertEqual(loss.weight, w ?? negatives, accuracy: 1e-6)
            let dx = loss.backward(scale: 1).array
            // One positive element against the formula: dℓ/dx = −w(1 − σ(x)).
            let i = valid.first { t[$0] == 1 }!
            XCTAssertEqual(dx[i], -loss.weight * (1 - 1 / (1 + exp(-x[i]))), accuracy: 1e-6)
            for i in 0..<84 where t[i] == 255 { XCTAssertEqual(dx[i], 0) }
            checkGradient("balanced BCE (w \(w.map { "\($0)" } ?? "HED")) dx", x: x, analytic: dx, eps: 1e-3, tolerance: 1e-3) {
                loss.forward(x, t).sum
            }
        }
        // A batch without positives: HED gives w = 1, and the loss is (1 − w)·Σ_neg ℓ = 0.
        let loss = BalancedBCEWithLogitsLoss()
        XCTAssertEqual(loss.forward(Tensor([3], [0.5, -1, 2]), Tensor([3], [0, 0, 0])).sum, 0)
    }

    func testBalancedCrossEntropy() {
        var rng = Philox(seed: 53, stream: 1)
        let z = randomTensor([2, 2, 5, 6], &rng, scale: 3)
        let t = Tensor([2, 5, 6], binaryTargets(60, &rng))
        let loss = BalancedCrossEntropyLoss()
        let result = loss.forward(z, t)
        let valid = (0..<60).filter { t[$0] != 255 }
        XCTAssertEqual(result.count, valid.count)
        // Σ w_k·(−log p_k) with w₀ = 1 − w, w₁ = w, w the fraction of background pixels.
        let w = Double(valid.filter { t[$0] == 0 }.count) / Double(valid.count)
        let expected = valid.reduce(0.0) { acc, i in
            let s = i / 30, px = i % 30, k = Int(t[i])
            let z0 = Double(z[s * 60 + px]), z1 = Double(z[s * 60 + 30 + px])
            let logP = (k == 1 ? z1 : z0) - log(exp(z0) + exp(z1))
            return acc - (k == 1 ? w : 1 - w) * logP
        }
        XCTAssertEqual(result.sum, expected, accuracy: 1e-4 * expected)
        let dz = loss.backward(scale: 1).array
        checkGradient("balanced CE dz", x: z, analytic: dz, eps: 1e-3, tolerance: 1e-3) { loss.forward(z, t).sum }
        // The two logits' gradients at a pixel sum to zero (softmax), and ignored pixels get none.
        for i in 0..<30 {
            XCTAssertEqual(dz[i] + dz[30 + i], 0, accuracy: 1e-6)
            if t[i] == 255 { XCTAssertEqual(dz[i], 0) }
        }
    }

    func testThreadCountIndependent() {
        let saved = Threads.count
        defer { Threads.set(saved) }
        var results: [[Double]] = []
        for threads in [1, 2, 4] {
            Threads.set(threads)
            var rng = Philox(seed: 54, stream: 1)
            var out: [Double] = []
            // Larger than elementBlock, so several blocks are summed.
            let pred = randomTensor([2, 3, 120, 160], &rng), target = normalTargets([2, 3, 120, 160], &rng)
            let nl = NormalL1Loss()
            let r1 = nl.forward(pred, target)
            out += [r1.sum, Double(r1.count)] + nl.backward(scale: 0.5).array.map(Double.init)
            let mse = NormalMSELoss()
            let r4 = mse.forward(pred, target)
            out += [r4.sum, Double(r4.count)] + mse.backward(scale: 0.5).array.map(Double.init)
            let x = randomTensor([2, 1, 150, 130], &rng), t = Tensor([2, 1, 150, 130], binaryTargets(39000, &rng))
            let bce = BalancedBCEWithLogitsLoss()
            let r2 = bce.forward(x, t)
            out += [r2.sum, Double(r2.count), Double(bce.weight)] + bce.backward(scale: 0.5).array.map(Double.init)
            let z = randomTensor([2, 2, 150, 130], &rng), tc = Tensor([2, 150, 130], binaryTargets(39000, &rng))
            let ce = BalancedCrossEntropyLoss()
            let r3 = ce.forward(z, tc)
            out += [r3.sum, Double(r3.count)] + ce.backward(scale: 0.5).array.map(Double.init)
            results.append(out)
        }
        XCTAssertTrue(results[0] == results[1] && results[0] == results[2], "results differ between 1, 2 and 4 threads")
    }

    /// The ATRC code's formulas (mean over the valid elements/pixels), written in torch.
    static let script = #"""
x, t = leaf("nl_x"), T["nl_t"]
mask = (t != 255).all(dim=1, keepdim=True) & (t != 0).any(dim=1, keepdim=True)   # + mtl's zero-vector rule
n_valid = mask.sum()
xn = F.normalize(x, p=2, dim=1)
loss = F.l1_loss(torch.masked_select(xn, mask), torch.masked_select(t, mask), reduction="sum") / n_valid
(loss * n_valid).backward(); out("nl_loss", loss.reshape(1)); out("nl_dx", x.grad)
for tag, w in (("fixed", 0.8), ("hed", None)):
    x, t = leaf("bce_x"), T["bce_t"]
    mask = t != 255
    ml, mo = torch.masked_select(t, mask), torch.masked_select(x, mask)
    if w is None: w = torch.sum(1.0 - ml) / ml.numel()
    w = torch.as_tensor(w, dtype=torch.float64)
    factor = 1.0 / (1 - w)
    loss = F.binary_cross_entropy_with_logits(mo, ml, pos_weight=w * factor, reduction="mean") / factor
    (loss * ml.numel()).backward(); out("bce_loss_" + tag, loss.reshape(1)); out("bce_dx_" + tag, x.grad)
z, t = leaf("ce_z"), T["ce_t"].long()
mask = t != 255
ml = torch.masked_select(t, mask)
w_pos = torch.sum(1.0 - ml.double()) / ml.numel()
loss = F.cross_entropy(z, t, weight=torch.stack((1.0 - w_pos, w_pos)), ignore_index=255, reduction="none").sum() / mask.sum()
(loss * mask.sum()).backward(); out("ce_loss", loss.reshape(1)); out("ce_dz", z.grad)
"""#

    func testAgainstPyTorch() throws {
        let ex = try TorchExchange()
        var rng = Philox(seed: 55, stream: 1)
        let nlX = randomTensor([2, 3, 6, 7], &rng), nlT = normalTargets([2, 3, 6, 7], &rng)
        try ex.put("nl_x", nlX); try ex.put("nl_t", nlT)
        let bceX = randomTensor([2, 1, 8, 9], &rng, scale: 4), bceT = Tensor([2, 1, 8, 9], binaryTargets(144, &rng))
        try ex.put("bce_x", bceX); try ex.put("bce_t", bceT)
        let ceZ = randomTensor([2, 2, 7, 8], &rng, scale: 4), ceT = Tensor([2, 7, 8], binaryTargets(112, &rng))
        try ex.put("ce_z", ceZ); try ex.put("ce_t", ceT)
        let (status, log) = try ex.run(Self.script)
        try XCTSkipIf(status == 77, "torch (or numpy) is not importable by python3 (\(log.trimmingCharacters(in: .whitespacesAndNewlines))): PyTorch comparison skipped")
        XCTAssertEqual(status, 0, "reference script failed:\n\(log)")
        guard status == 0 else { return }
        // The mean (sum/count) against torch's mean, and backward(scale: 1) against the gradient of
        // torch's mean × count (the sum: O(1) entries, so that the 1e-4 bound is a relative one).
        let nl = NormalL1Loss()
        let r1 = nl.forward(nlX, nlT)
        assertClose([Float(r1.mean)], try ex.get("nl_loss"), tol: 1e-5, "normal L1 loss")
        assertClose(nl.backward(scale: 1).array, try ex.get("nl_dx"), tol: 1e-4, "normal L1 dx")
        for (tag, w) in [("fixed", Float(0.8)), ("hed", nil)] {
            let bce = BalancedBCEWithLogitsLoss(positiveWeight: w)
            let r = bce.forward(bceX, bceT)
            assertClose([Float(r.mean)], try ex.get("bce_loss_" + tag), tol: 1e-5, "balanced BCE \(tag) loss")
            assertClose(bce.backward(scale: 1).array, try ex.get("bce_dx_" + tag), tol: 1e-4, "balanced BCE \(tag) dx")
        }
        let ce = BalancedCrossEntropyLoss()
        let r3 = ce.forward(ceZ, ceT)
        assertClose([Float(r3.mean)], try ex.get("ce_loss"), tol: 1e-5, "balanced CE loss")
        assertClose(ce.backward(scale: 1).array, try ex.get("ce_dz"), tol: 1e-4, "balanced CE dz")
    }
}
