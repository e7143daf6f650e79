import XCTest
import MTLCore
@testable import MTLNN
import MTLTestSupport

final class LayerTests: XCTestCase {
    func testReLU() {
        var rng = Philox(seed: 1, stream: 1)
        let x = randomTensor([2, 3, 5, 3], &rng)
        // Keep every value at least 0.05 away from the kink so that ±eps never crosses it.
        for i in 0..<x.count { x.data[i] += x.data[i] >= 0 ? 0.05 : -0.05 }
        let relu = ReLU()
        let y = relu.forward(x)
        for i in 0..<x.count { XCTAssertEqual(y[i], max(x[i], 0)) }
        let r = randomTensor(y.shape, &rng)
        let dx = relu.backward(r).array
        checkGradient("relu dx", x: x, analytic: dx) { functional(relu.forward(x), r) }
        // In place: the same gradient, written over dy.
        let dyCopy = Tensor(r.shape, r.array)
        let inPlace = relu.backward(dyCopy, inPlace: true)
        XCTAssertTrue(inPlace === dyCopy)
        XCTAssertEqual(inPlace.array, dx)
        // NaN propagates forward like torch.relu.
        let nan = relu.forward(Tensor([1], [Float.nan]))
        XCTAssertTrue(nan[0].isNaN)
    }

    func testMaxPoolHandCase() {
        // 4×4 input, kernel 3, stride 2, padding 1 (the ResNet stem pool); torch gives
        // values [[5, 8], [9, 9]] at flat indices [[1, 6], [9, 9]].
        let x = Tensor([1, 1, 4, 4], [1, 5, 2, 7,
                                      3, 0, 8, 6,
                                      4, 9, 2, 5,
                                      1, 3, 7, 2])
        let pool = MaxPool2d(kernel: 3, stride: 2, padding: 1)
        let y = pool.forward(x)
        XCTAssertEqual(y.shape, [1, 1, 2, 2])
        XCTAssertEqual(y.array, [5, 8, 9, 9])
        let dx = pool.backward(Tensor([1, 1, 2, 2], [1, 2, 3, 4])).array
        var expected = [Float](repeating: 0, count: 16)
        expected[1] = 1; expected[6] = 2; expected[9] = 3 + 4   // overlapping windows add up
        XCTAssertEqual(dx, expected)
        // Padding is −inf, not 0: an all-negative input keeps negative maxima
        // (windows {0,1,4,5}, {1,2,3,5,6,7}, {4,5,8,9,12,13}, {5,...,15} of −1, −2, ..., −16).
        let neg = pool.forward(Tensor([1, 1, 4, 4], (0..<16).map { -Float($0) - 1 }))
        XCTAssertEqual(neg.array, [-1, -2, -5, -6])
    }

    func testMaxPoolGradient() {
        var rng = Philox(seed: 2, stream: 1)
        for (k, s, p, h, w) in [(3, 2, 1, 7, 6), (2, 2, 0, 6, 5), (3, 1, 1, 5, 5)] {
            // Distinct values 0.1 apart: the argmax cannot change under a ±0.01 perturbation.
            let count = 2 * 2 * h * w
            let perm = rng.permutation(count)
            let x = Tensor([2, 2, h, w], perm.map { Float($0) * 0.1 })
            let pool = MaxPool2d(kernel: k, stride: s, padding: p)
            let y = pool.forward(x)
            XCTAssertEqual(y.shape, [2, 2, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1])
            let r = randomTensor(y.shape, &rng)
            let dx = pool.backward(r).array
            checkGradient("maxpool k\(k) s\(s) p\(p)", x: x, analytic: dx) { functional(pool.forward(x), r) }
        }
    }

    func testUpsampleHandValues() {
        let up = Upsample()
        // 2×2 → 4×4 (align_corners=False; rows/cols at source 0, 0.25, 0.75, 1 after the clamp at 0)
        let y = up.forward(Tensor([1, 1, 2, 2], [1, 2, 3, 4]), height: 4, width: 4)
        assertClose(y.array, [1.00, 1.25, 1.75, 2.00,
                              1.50, 1.75, 2.25, 2.50,
                              2.50, 2.75, 3.25, 3.50,
                              3.00, 3.25, 3.75, 4.00], tol: 1e-6, "2x2→4x4")
        // 3×5 → 7×4: rows at source max(3/7·(i+0.5) − 0.5, 0), cols at 5/4·(j+0.5) − 0.5
        // (values from the formula; torch.nn.functional.interpolate agrees to 1e-6).
        let x = Tensor([1, 1, 3, 5], [3, 1, 4, 1, 5,
                                      9, 2, 6, 5, 3,
                                      5, 8, 9, 7, 9])
        let y2 = up.forward(x, height: 7, width: 4)
        XCTAssertEqual(y2.shape, [1, 1, 7, 4])
        assertClose(y2.array, [2.750000, 2.125000, 2.125000, 4.500000,
                               3.517857, 2.321429, 2.589286, 4.321429,
                               5.821429, 2.910714, 3.982143, 3.785714,
                               8.125000, 3.500000, 5.375000, 3.250000,
                               6.946429, 5.589286, 6.392857, 5.607143,
                               5.767857, 7.678571, 7.410714, 7.964286,
                               5.375000, 8.375000, 7.750000, 8.750000], tol: 2e-6, "3x5→7x4")
        // Same size is the identity.
        XCTAssertEqual(up.forward(x, height: 3, width: 5).array, x.array)
    }

    func testUpsampleGradient() {
        var rng = Philox(seed: 3, stream: 1)
        let up = Upsample()
        for (h, w, ho, wo) in [(3, 5, 7, 4), (4, 4, 32, 32), (5, 3, 2, 2), (2, 3, 16, 24)] {
            let x = randomTensor([2, 2, h, w], &rng)
            let y = up.forward(x, height: ho, width: wo)
            let r = randomTensor(y.shape, &rng)
            let dx = up.backward(r).array
            checkGradient("upsample \(h)x\(w)→\(ho)x\(wo)", x: x, analytic: dx) {
                functional(up.forward(x, height: ho, width: wo), r)
            }
        }
    }

    func testGlobalAvgPool() {
        var rng = Philox(seed: 4, stream: 1)
        let x = randomTensor([2, 3, 4, 5], &rng)
        let gap = GlobalAvgPool()
        let y = gap.forward(x)
        XCTAssertEqual(y.shape, [2, 3, 1, 1])
        let mean0 = (0..<20).map { x[$0] }.reduce(0, +) / 20
        XCTAssertEqual(y[0], mean0, accuracy: 1e-6)
        let r = randomTensor(y.shape, &rng)
        let dx = gap.backward(r).array
        checkGradient("gap", x: x, analytic: dx) { functional(gap.forward(x), r) }
    }

    func testLinear() {
        var rng = Philox(seed: 5, stream: 1)
        for (bias, fourD) in [(true, false), (false, true)] {
            var initRng = Philox(seed: 6, stream: RNGStream.initialization.rawValue)
            let fc = Linear("fc", inFeatures: 7, outFeatures: 4, bias: bias, rng: &initRng)
            XCTAssertEqual(fc.weight.value.shape, [4, 7])
            XCTAssertLessThanOrEqual(fc.weight.value.array.map { abs($0) }.max()!, 1 / Float(7).squareRoot())
            let x = randomTensor(fourD ? [3, 7, 1, 1] : [3, 7], &rng)
            let y = fc.forward(x)
            XCTAssertEqual(y.shape, [3, 4])
            // y[1, 2] by hand
            var expected = fc.bias?.value[2] ?? 0
            for j in 0..<7 { expected += x[7 + j] * fc.weight.value[2 * 7 + j] }
            XCTAssertEqual(y[1 * 4 + 2], expected, accuracy: 1e-5)
            let r = randomTensor(y.shape, &rng)
            fc.zeroGrad()
            let dxT = fc.backward(r)
            XCTAssertEqual(dxT.shape, x.shape)
            let dx = dxT.array, dw = fc.weight.grad.array
            let f = { functional(fc.forward(x), r) }
            checkGradient("linear dx", x: x, analytic: dx, f)
            checkGradient("linear dW", x: fc.weight.value, analytic: dw, f)
            if let b = fc.bias { checkGradient("linear db", x: b.value, analytic: b.grad.array, f) }
        }
    }

    func testAddAndConcat() {
        var rng = Philox(seed: 7, stream: 1)
        let a = randomTensor([2, 3, 2, 3], &rng), b = randomTensor([2, 3, 2, 3], &rng)
        let add = Add()
        let s = add.forward(a, b)
        for i in 0..<s.count { XCTAssertEqual(s[i], a[i] + b[i]) }
        let r = randomTensor(s.shape, &rng)
        let (ga, gb) = add.backward(r)
        checkGradient("add a", x: a, analytic: ga.array) { functional(add.forward(a, b), r) }
        checkGradient("add b", x: b, analytic: gb.array) { functional(add.forward(a, b), r) }

        let c = randomTensor([2, 1, 2, 3], &rng), d = randomTensor([2, 4, 2, 3], &rng)
        let cat = Concat()
        let y = cat.forward([a, c, d])
        XCTAssertEqual(y.shape, [2, 8, 2, 3])
        // sample 1, channel 3 is c's only channel; channel 5 is d's channel 1
        XCTAssertEqual(Array(y.array[(1 * 8 + 3) * 6..<(1 * 8 + 4) * 6]), Array(c.array[6..<12]))
        XCTAssertEqual(Array(y.array[(1 * 8 + 5) * 6..<(1 * 8 + 6) * 6]), Array(d.array[(1 * 4 + 1) * 6..<(1 * 4 + 2) * 6]))
        let rc = randomTensor(y.shape, &rng)
        let grads = cat.backward(rc).map { $0.array }
        XCTAssertEqual(grads.count, 3)
        for (t, g) in zip([a, c, d], grads) {
            checkGradient("concat", x: t, analytic: g) { functional(cat.forward([a, c, d]), rc) }
        }
    }
}
