import XCTest
import MTLCore
@testable import MTLNN
import MTLTestSupport

final class LossTests: XCTestCase {
    func testCrossEntropyHandValues() {
        // One sample, 3 classes, 3 pixels: logits per pixel (1,2,3), (0,0,0), (5,−5,0).
        let logits = Tensor([1, 3, 1, 3], [1, 0, 5,
                                           2, 0, -5,
                                           3, 0, 0])
        let target = Tensor([1, 1, 3], [2, 1, -1])   // last pixel ignored
        let ce = CrossEntropyLoss()
        let l = ce.forward(logits, target)
        XCTAssertEqual(l.count, 2)
        // log(e + e² + e³) − 3 = 0.40760596, log 3 = 1.09861229
        XCTAssertEqual(l.sum, 0.40760596 + 1.09861229, accuracy: 1e-5)
        let g = ce.backward(scale: 1).array
        let p0 = [Float(0.09003057), 0.24472847, 0.66524096]   // softmax(1, 2, 3)
        assertClose(g, [p0[0], 1.0 / 3, 0,
                        p0[1], -2.0 / 3, 0,
                        p0[2] - 1, 1.0 / 3, 0], tol: 1e-6, "CE gradient")
        // backward scales linearly and can be repeated.
        assertClose(ce.backward(scale: 0.25).array, g.map { $0 * 0.25 }, tol: 1e-7, "CE scale")
        // Another ignore index: 255 ignored, −1 would now be a bad label, so use 0.
        let ce255 = CrossEntropyLoss(ignoreIndex: 255)
        let l255 = ce255.forward(logits, Tensor([1, 1, 3], [255, 1, 0]))
        XCTAssertEqual(l255.count, 2)
        XCTAssertEqual(l255.sum, 1.09861229 + (5 + log(1 + exp(-5) + exp(-10)) - 5), accuracy: 1e-5)
    }

    func testCrossEntropyGradientWithIgnoredPixels() {
        var rng = Philox(seed: 1, stream: 1)
        let (n, c, h, w) = (2, 4, 3, 5)
        let logits = randomTensor([n, c, h, w], &rng, scale: 3)
        let target = Tensor([n, h, w], (0..<(n * h * w)).map { _ in Float(rng.int(below: c + 1) - 1) })
        let ignored = target.array.filter { $0 == -1 }.count
        XCTAssertGreaterThan(ignored, 0)
        let ce = CrossEntropyLoss()
        let l = ce.forward(logits, target)
        XCTAssertEqual(l.count, n * h * w - ignored)
        let g = ce.backward(scale: 1).array
        // Ignored pixels get exactly zero gradient in every channel.
        for s in 0..<n { for p in 0..<(h * w) where target[s * h * w + p] == -1 {
            for ch in 0..<c { XCTAssertEqual(g[(s * c + ch) * h * w + p], 0) }
        }}
        checkGradient("CE dlogits", x: logits, analytic: g) { ce.forward(logits, target).sum }
    }

    func testMaskedL1() {
        let l1 = MaskedL1Loss()
        let l = l1.forward(Tensor([1, 1, 1, 4], [1, 2, 3, 4]), Tensor([1, 1, 1, 4], [0, 1, 5, 4]))
        XCTAssertEqual(l.count, 3)
        XCTAssertEqual(l.sum, 3, accuracy: 1e-9)
        XCTAssertEqual(l1.backward(scale: 2).array, [0, 2, -2, 0])

        var rng = Philox(seed: 2, stream: 1)
        let pred = randomTensor([2, 1, 4, 5], &rng)
        let target = Tensor(pred.shape, (0..<pred.count).map { i in
            if i % 4 == 0 { return 0 }                                   // invalid
            let t = rng.uniform() + 0.1
            return abs(t - pred[i]) < 0.05 ? t + 0.2 : t                 // away from the kink
        })
        let lr = l1.forward(pred, target)
        XCTAssertEqual(lr.count, pred.count - pred.count / 4)
        let g = l1.backward(scale: 1).array
        checkGradient("L1 dpred", x: pred, analytic: g) { l1.forward(pred, target).sum }
    }

    func testNormalCosine() {
        let cos = NormalCosineLoss()
        // Pixel 0: pred (2,0,0), target (0.6,0.8,0): cos 0.6 → 0.4. Pixel 1: target 0 → invalid.
        let pred = Tensor([1, 3, 1, 2], [2, 1, 0, 1, 0, 1])
        let target = Tensor([1, 3, 1, 2], [0.6, 0, 0.8, 0, 0, 0])
        let l = cos.forward(pred, target)
        XCTAssertEqual(l.count, 1)
        XCTAssertEqual(l.sum, 0.4, accuracy: 1e-6)
        // d/dp of −⟨p/|p|, t⟩ at p = (2,0,0): −(t − u·0.6)/2 = (0, −0.4, 0); invalid pixel 0.
        assertClose(cos.backward(scale: 1).array, [0, 0, -0.4, 0, 0, 0], tol: 1e-6, "cosine gradient")

        var rng = Philox(seed: 3, stream: 1)
        let p = randomTensor([2, 3, 3, 4], &rng)
        let t = randomTensor([2, 3, 3, 4], &rng)
        let hw = 12
        for s in 0..<2 { for i in 0..<hw {
            let base = s * 3 * hw + i
            if (s * hw + i) % 5 == 0 { for ch in 0..<3 { t.data[base + ch * hw] = 0 }; continue }
            let norm = (0..<3).map { t[base + $0 * hw] * t[base + $0 * hw] }.reduce(0, +).squareRoot()
            for ch in 0..<3 { t.data[base + ch * hw] /= norm }
            for ch in 0..<3 { p.data[base + ch * hw] += ch == 0 ? 1 : 0 }   // keep |p| away from 0
        }}
        let lr = cos.forward(p, t)
        XCTAssertEqual(lr.count, 24 - 5)
        let g = cos.backward(scale: 1).array
        checkGradient("cosine dpred", x: p, analytic: g, eps: 3e-3) { cos.forward(p, t).sum }
    }

    func testBCEWithLogits() {
        let bce = BCEWithLogitsLoss()
        let x = Tensor([1, 1, 1, 4], [0, 2, -1, 7])
        let l = bce.forward(x, Tensor([1, 1, 1, 4], [1, 0, 1, 255]))
        XCTAssertEqual(l.count, 3)
        // log 2 + log(1 + e²) + log(1 + e)
        XCTAssertEqual(l.sum, 0.69314718 + 2.12692801 + 1.31326169, accuracy: 1e-5)
        // σ(x) − t: −0.5, σ(2), σ(−1) − 1, ignored
        assertClose(bce.backward(scale: 1).array, [-0.5, 0.88079708, 0.26894142 - 1, 0], tol: 1e-6, "BCE gradient")

        let weighted = BCEWithLogitsLoss(posWeight: 3)
        let lw = weighted.forward(x, Tensor([1, 1, 1, 4], [1, 0, 1, -1]))
        XCTAssertEqual(lw.sum, 3 * 0.69314718 + 2.12692801 + 3 * 1.31326169, accuracy: 1e-5)
        // Large logits stay finite (stable form).
        let big = bce.forward(Tensor([2], [100, -100]), Tensor([2], [0, 1]))
        XCTAssertEqual(big.sum, 200, accuracy: 1e-3)

        var rng = Philox(seed: 4, stream: 1)
        let logits = randomTensor([2, 1, 4, 5], &rng, scale: 4)
        let target = Tensor(logits.shape, (0..<logits.count).map { _ in Float([0, 1, 1, 0, -1, 255][rng.int(below: 6)]) })
        let pw = BCEWithLogitsLoss(posWeight: 2.5)
        let lr = pw.forward(logits, target)
        XCTAssertEqual(lr.count, target.array.filter { $0 == 0 || $0 == 1 }.count)
        let g = pw.backward(scale: 1).array
        checkGradient("BCE dlogits", x: logits, analytic: g) { pw.forward(logits, target).sum }
    }
}
