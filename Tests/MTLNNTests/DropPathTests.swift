import XCTest
import MTLCore
@testable import MTLNN
import MTLTestSupport

final class DropPathTests: XCTestCase {
    /// Per-image draws keyed by the GLOBAL sample index: the same sample gets the same k_b in any
    /// batch composition (two ranks' halves, another order); steps and layers draw independently;
    /// the kept fraction is 1 − p.
    func testDrawsAreKeyedBySampleStepAndLayer() {
        let p: Float = 0.3
        let whole = DropPath(rate: p, layerID: 5), part = DropPath(rate: p, layerID: 5)
        whole.prepare(seed: 9, step: 17, sampleIndices: Array(0..<64))
        part.prepare(seed: 9, step: 17, sampleIndices: [40, 3, 63])
        XCTAssertEqual(part.scales, [whole.scales[40], whole.scales[3], whole.scales[63]])
        let other = DropPath(rate: p, layerID: 6), later = DropPath(rate: p, layerID: 5)
        other.prepare(seed: 9, step: 17, sampleIndices: Array(0..<64))
        later.prepare(seed: 9, step: 18, sampleIndices: Array(0..<64))
        XCTAssertNotEqual(other.scales, whole.scales)
        XCTAssertNotEqual(later.scales, whole.scales)
        XCTAssertEqual(Set(whole.scales), [0, 1 / (1 - p)])
        var kept = 0, n = 0
        for step in 0..<50 { for s in 0..<200 {
            if DropPath.keeps(seed: 1, step: step, sample: s, layerID: 3, rate: p) { kept += 1 }
            n += 1
        } }
        XCTAssertEqual(Double(kept) / Double(n), 0.7, accuracy: 0.015)
    }

    func testForwardBackwardAndEvalIdentity() {
        var rng = Philox(seed: 3, stream: 1)
        let d = DropPath(rate: 0.5, layerID: 0)
        let idx = [0, 1, 2, 3, 4, 5, 6, 7]
        d.prepare(seed: 4, step: 0, sampleIndices: idx)
        XCTAssertTrue(d.scales.contains(0) && d.scales.contains(2), "both outcomes occur: \(d.scales)")
        let x = randomTensor([8, 6, 5], &rng)
        let y = d.forward(x).array
        for b in 0..<8 { for i in 0..<30 { XCTAssertEqual(y[b * 30 + i], x[b * 30 + i] * d.scales[b]) } }
        let r = randomTensor(x.shape, &rng)
        _ = d.forward(x)
        let dx = d.backward(r).array
        checkGradient("DropPath dx", x: x, analytic: dx) { functional(d.forward(x), r) }
        d.training = false
        XCTAssertEqual(d.forward(x).array, x.array)
        XCTAssertEqual(d.backward(r).array, r.array)
    }

    /// A Swin block with both branches' DropPath active (and a dropped image): gradients by finite
    /// differences.
    func testSwinBlockGradientsWithDropPath() {
        var rng = Philox(seed: 22, stream: 1), initRng = Philox(seed: 23, stream: 1)
        let block = SwinBlock("b", dim: 8, heads: 2, window: 3, shift: 1, mlpRatio: 2, dropPath: 0.5, blockID: 4, rng: &initRng)
        let samples = [11, 12, 13, 14]
        block.prepareDropPath(seed: 5, step: 2, sampleIndices: samples)
        let s1 = block.dropPath1.scales, s2 = block.dropPath2.scales
        XCTAssertTrue(s1.contains(0) || s2.contains(0), "some branch dropped: \(s1) \(s2)")
        XCTAssertTrue(s1.contains(2) || s2.contains(2), "some branch kept: \(s1) \(s2)")
        let x = randomTensor([4, 20, 8], &rng)
        let y = block.forward(x, height: 4, width: 5)
        let r = randomTensor(y.shape, &rng)
        block.zeroGrad()
        let dx = block.backward(r).array
        let f = { functional(block.forward(x, height: 4, width: 5), r) }
        checkGradient("Swin block + DropPath dx", x: x, analytic: dx, f)
        checkGradient("Swin block + DropPath dW_qkv", x: block.attn.qkv.weight.value, analytic: block.attn.qkv.weight.grad.array, f)
        checkGradient("Swin block + DropPath dW_fc2", x: block.fc2.weight.value, analytic: block.fc2.weight.grad.array, f)
        // An image whose both branches are dropped passes through unchanged.
        for b in 0..<4 where s1[b] == 0 && s2[b] == 0 {
            let yb = Array(block.forward(x, height: 4, width: 5).array[(b * 160)..<((b + 1) * 160)])
            XCTAssertEqual(yb, Array(x.array[(b * 160)..<((b + 1) * 160)]))
        }
    }
}
