import XCTest
import MTLCore
@testable import MTLNN
import MTLTestSupport

/// Direct convolution by its definition (the reference for the im2col/GEMM path).
func naiveConv(_ x: Tensor, _ conv: Conv2d) -> [Float] {
    let (n, c, h, w) = (x.n, x.c, x.h, x.w)
    let (ho, wo) = conv.outputSize(height: h, width: w)
    let o = conv.outChannels, k = conv.kernel
    var y = [Float](repeating: 0, count: n * o * ho * wo)
    for s in 0..<n { for oc in 0..<o { for oh in 0..<ho { for ow in 0..<wo {
        var acc = Double(conv.bias?.value[oc] ?? 0)
        for ci in 0..<c { for ki in 0..<k { for kj in 0..<k {
            let ih = oh * conv.stride - conv.padding + ki * conv.dilation
            let iw = ow * conv.stride - conv.padding + kj * conv.dilation
            if ih < 0 || ih >= h || iw < 0 || iw >= w { continue }
            acc += Double(conv.weight.value[((oc * c + ci) * k + ki) * k + kj]) * Double(x[((s * c + ci) * h + ih) * w + iw])
        }}}
        y[((s * o + oc) * ho + oh) * wo + ow] = Float(acc)
    }}}}
    return y
}

final class ConvTests: XCTestCase {
    /// These tests are of the BLAS backend (a Trainer in another test may have switched the global).
    override func setUp() { Conv2d.backend = .blas }

    struct Config {
        var n, c, h, w, o, k, stride, pad, dil: Int
        var bias: Bool
    }

    let configs: [Config] = [
        Config(n: 2, c: 3, h: 7, w: 6, o: 4, k: 3, stride: 1, pad: 1, dil: 1, bias: true),
        Config(n: 2, c: 3, h: 7, w: 9, o: 5, k: 3, stride: 2, pad: 1, dil: 1, bias: false),   // odd sizes, stride 2
        Config(n: 2, c: 2, h: 9, w: 8, o: 3, k: 3, stride: 1, pad: 2, dil: 2, bias: true),    // dilation 2
        Config(n: 1, c: 3, h: 8, w: 7, o: 2, k: 3, stride: 1, pad: 3, dil: 3, bias: false),   // dilation 3, N = 1
        Config(n: 3, c: 2, h: 11, w: 10, o: 3, k: 7, stride: 2, pad: 3, dil: 1, bias: false), // stem-like 7x7/2
        Config(n: 2, c: 4, h: 5, w: 6, o: 3, k: 1, stride: 1, pad: 0, dil: 1, bias: true),    // 1x1
        Config(n: 2, c: 4, h: 7, w: 5, o: 3, k: 1, stride: 2, pad: 0, dil: 1, bias: false),   // 1x1 stride 2 (downsample)
        Config(n: 2, c: 2, h: 6, w: 6, o: 2, k: 2, stride: 2, pad: 0, dil: 1, bias: true),    // even kernel
        Config(n: 2, c: 2, h: 4, w: 5, o: 3, k: 3, stride: 3, pad: 2, dil: 2, bias: true),    // stride 3, pad ≥ span/2
        Config(n: 2, c: 3, h: 5, w: 9, o: 4, k: 3, stride: 1, pad: 6, dil: 6, bias: true),    // ASPP-like: kernel rows 0 and 2 read only padding
        Config(n: 1, c: 2, h: 4, w: 3, o: 2, k: 3, stride: 1, pad: 5, dil: 5, bias: false),   // only the centre tap is active, N = 1
        Config(n: 2, c: 2, h: 5, w: 4, o: 3, k: 3, stride: 1, pad: 3, dil: 1, bias: false),   // pad > d·(k−1): no transposed dx
        Config(n: 2, c: 3, h: 5, w: 6, o: 2, k: 2, stride: 1, pad: 1, dil: 1, bias: true),    // even kernel, stride 1: asymmetric twin
    ]

    func makeConv(_ cfg: Config, seed: UInt64) -> Conv2d {
        var rng = Philox(seed: seed, stream: RNGStream.initialization.rawValue)
        return Conv2d("conv", inChannels: cfg.c, outChannels: cfg.o, kernel: cfg.k, stride: cfg.stride,
                      padding: cfg.pad, dilation: cfg.dil, bias: cfg.bias, rng: &rng)
    }

    /// Forward equals the direct formula, and every gradient equals central differences.
    func runGradCheck(_ cfg: Config, seed: UInt64) {
        let conv = makeConv(cfg, seed: seed)
        var rng = Philox(seed: seed, stream: 99)
        let x = randomTensor([cfg.n, cfg.c, cfg.h, cfg.w], &rng)
        let y = conv.forward(x)
        let label = "\(cfg)"
        assertClose(y.array, naiveConv(x, conv), tol: 1e-5, "forward \(label)")
        let r = randomTensor(y.shape, &rng)
        conv.zeroGrad()
        let dx = conv.backward(r).array
        let dw = conv.weight.grad.array, db = conv.bias?.grad.array
        let f = { functional(conv.forward(x), r) }
        // A strided subset of ≤ 200 elements per tensor keeps the debug-build test fast.
        checkGradient("dx \(label)", x: x, analytic: dx, maxChecks: 200, f)
        checkGradient("dW \(label)", x: conv.weight.value, analytic: dw, maxChecks: 200, f)
        if let bias = conv.bias, let db { checkGradient("db \(label)", x: bias.value, analytic: db, f) }
    }

    func testGradientsDenseAndRegionPaths() {
        // Every configuration through the dense im2col and through the padding-aware regions
        // (the default picks one of the two by the work saved).
        // Stride-1 dx both as the transposed forward convolution and as dcols + col2im.
        let saved = Conv2d.regionMinSaving, savedTransposed = Conv2d.transposedInputGrad
        defer { Conv2d.regionMinSaving = saved; Conv2d.transposedInputGrad = savedTransposed }
        for transposed in [true, false] {
            Conv2d.transposedInputGrad = transposed
            for (i, cfg) in configs.enumerated() {
                Conv2d.regionMinSaving = 2       // never regions
                runGradCheck(cfg, seed: UInt64(60 + i))
                Conv2d.regionMinSaving = -1      // always regions
                runGradCheck(cfg, seed: UInt64(60 + i))
            }
        }
    }

    func testRegionWorkFraction() {
        var rng = Philox(seed: 1, stream: 1)
        // DeepLab rate 12 on a 16×32 map: rows see (4·2 + 8·1 + 4·2)/16 of 3 taps, columns
        // (12·2 + 8·3 + 12·2)/32 of 3 → 0.5 · 0.75 of the dense work.
        let aspp = Conv2d("a", inChannels: 1, outChannels: 1, kernel: 3, padding: 12, dilation: 12, rng: &rng)
        XCTAssertEqual(aspp.regionWorkFraction(height: 16, width: 32)!, 0.375, accuracy: 1e-12)
        // Rate 36 on 36×48: only the centre kernel row, columns (12·2 + 24·1 + 12·2)/48 of 3.
        let r36 = Conv2d("b", inChannels: 1, outChannels: 1, kernel: 3, padding: 36, dilation: 36, rng: &rng)
        XCTAssertEqual(r36.regionWorkFraction(height: 36, width: 48)!, 1.0 / 3 * 0.5, accuracy: 1e-12)
        // An ordinary 3×3/1 conv loses only its border: (1·2 + 30·3 + 1·2)/32 · (1·2 + 62·3 + 1·2)/64 / 9.
        let plain = Conv2d("c", inChannels: 1, outChannels: 1, kernel: 3, padding: 1, rng: &rng)
        XCTAssertEqual(plain.regionWorkFraction(height: 32, width: 64)!, (94.0 / 96) * (190.0 / 192), accuracy: 1e-12)
        XCTAssertNil(Conv2d("d", inChannels: 1, outChannels: 1, kernel: 1, rng: &rng).regionWorkFraction(height: 4, width: 4))
    }

    func testPointwisePerSamplePath() {
        // Both 1x1 strategies (per-sample GEMMs and the gathered batch GEMM) must agree.
        let saved = Conv2d.pointwisePerSampleMinPixels
        defer { Conv2d.pointwisePerSampleMinPixels = saved }
        Conv2d.pointwisePerSampleMinPixels = 1
        runGradCheck(configs[5], seed: 30)
        Conv2d.pointwisePerSampleMinPixels = 1 << 30
        runGradCheck(configs[5], seed: 30)
    }

    func testTapsReadingOnlyPaddingGetZeroGradient() {
        // Rows ki = 0, 2 of a dilation-6 kernel never reach a 5-row input: zero weight gradient there.
        let cfg = configs[9]
        let conv = makeConv(cfg, seed: 40)
        var rng = Philox(seed: 41, stream: 1)
        let x = randomTensor([cfg.n, cfg.c, cfg.h, cfg.w], &rng)
        let y = conv.forward(x)
        conv.zeroGrad()
        _ = conv.backward(randomTensor(y.shape, &rng))
        let g = conv.weight.grad.array
        for q in 0..<(cfg.o * cfg.c) {
            for kj in 0..<3 {
                XCTAssertEqual(g[q * 9 + kj], 0)
                XCTAssertEqual(g[q * 9 + 6 + kj], 0)
            }
            XCTAssertNotEqual(g[q * 9 + 4], 0)
        }
        // A strided 1x1 conv with padding on a 1-row map: every tap reads padding, y = bias, dx = 0.
        var initRng = Philox(seed: 42, stream: 1)
        let edge = Conv2d("edge", inChannels: 2, outChannels: 3, kernel: 1, stride: 3, padding: 1, bias: true, rng: &initRng)
        let xe = randomTensor([2, 2, 1, 4], &rng)
        let ye = edge.forward(xe)
        XCTAssertEqual(ye.shape, [2, 3, 1, 2])
        XCTAssertEqual(ye.array, naiveConv(xe, edge))
        edge.zeroGrad()
        let dxe = edge.backward(Tensor(ye.shape, repeating: 1))
        XCTAssertEqual(dxe.array, [Float](repeating: 0, count: xe.count))
        XCTAssertEqual(edge.weight.grad.array, [0, 0, 0, 0, 0, 0])
        XCTAssertEqual(edge.bias!.grad.array, [4, 4, 4])
    }

    func testSampleGroupsUnderColumnBudget() {
        // A tiny column budget forces one GEMM per sample (or per pair of samples): same results.
        let saved = (Conv2d.columnBudget, Conv2d.regionMinSaving)
        defer { (Conv2d.columnBudget, Conv2d.regionMinSaving) = saved }
        Conv2d.columnBudget = 1
        Conv2d.regionMinSaving = 2
        runGradCheck(configs[1], seed: 52)   // dense, N = 2
        Conv2d.regionMinSaving = -1
        runGradCheck(configs[9], seed: 51)   // regions, N = 2
        Conv2d.columnBudget = 2 * 3 * 9 * 16
        Conv2d.regionMinSaving = 2
        runGradCheck(configs[4], seed: 50)   // dense, N = 3 in groups of 2 + 1
    }

    func testBackwardTwiceGivesSameGradients() {
        for cfg in [configs[0], configs[5], configs[9]] {
            let conv = makeConv(cfg, seed: 3)
            var rng = Philox(seed: 4, stream: 1)
            let x = randomTensor([cfg.n, cfg.c, cfg.h, cfg.w], &rng)
            let y = conv.forward(x)
            let r = randomTensor(y.shape, &rng)
            conv.zeroGrad()
            let dx1 = conv.backward(r).array
            let dw1 = conv.weight.grad.array, db1 = conv.bias!.grad.array
            conv.zeroGrad()
            let dx2 = conv.backward(r).array
            XCTAssertEqual(dx1, dx2)
            XCTAssertEqual(dw1, conv.weight.grad.array)
            XCTAssertEqual(db1, conv.bias!.grad.array)
            // Without zeroing, gradients accumulate: twice the single-call value.
            _ = conv.backward(r)
            assertClose(conv.weight.grad.array, dw1.map { 2 * $0 }, tol: 1e-6, "accumulation")
            // computeInputGrad: false gives the same weight gradient and an empty dx.
            conv.zeroGrad()
            let none = conv.backward(r, computeInputGrad: false)
            XCTAssertEqual(none.count, 0)
            XCTAssertEqual(dw1, conv.weight.grad.array)
        }
    }

    func testReusesBuffersAcrossCalls() {
        let conv = makeConv(configs[0], seed: 5)
        var rng = Philox(seed: 6, stream: 1)
        let x = randomTensor([2, 3, 7, 6], &rng)
        let y1 = conv.forward(x)
        let p1 = y1.data
        let y2 = conv.forward(x)
        XCTAssertTrue(y1 === y2)
        XCTAssertEqual(p1, y2.data, "output storage reallocated on the second call")
    }

    func testInitialisationMatchesPyTorchBounds() {
        var rng = Philox(seed: 7, stream: RNGStream.initialization.rawValue)
        let conv = Conv2d("layer1.0.conv1", inChannels: 16, outChannels: 32, kernel: 3, bias: true, rng: &rng)
        XCTAssertEqual(conv.weight.name, "layer1.0.conv1.weight")
        XCTAssertEqual(conv.bias?.name, "layer1.0.conv1.bias")
        XCTAssertEqual(conv.weight.value.shape, [32, 16, 3, 3])
        let bound = 1 / Float(16 * 9).squareRoot()
        let w = conv.weight.value.array
        XCTAssertLessThanOrEqual(w.map { abs($0) }.max()!, bound)
        XCTAssertGreaterThan(w.map { abs($0) }.max()!, 0.95 * bound)
        let mean = w.reduce(0, +) / Float(w.count)
        XCTAssertLessThan(abs(mean), 0.05 * bound)
        // Variance of U(-b, b) is b²/3.
        let variance = w.map { $0 * $0 }.reduce(0, +) / Float(w.count)
        XCTAssertEqual(variance, bound * bound / 3, accuracy: 0.1 * bound * bound / 3)
        XCTAssertLessThanOrEqual(conv.bias!.value.array.map { abs($0) }.max()!, bound)
        // Same seed, same weights.
        var rng2 = Philox(seed: 7, stream: RNGStream.initialization.rawValue)
        let again = Conv2d("x", inChannels: 16, outChannels: 32, kernel: 3, bias: true, rng: &rng2)
        XCTAssertEqual(again.weight.value.array, w)
    }
}
