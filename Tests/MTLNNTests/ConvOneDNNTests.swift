import XCTest
import MTLCore
@testable import MTLNN
import MTLTestSupport

func withBackend<T>(_ backend: ConvBackend, _ body: () throws -> T) rethrows -> T {
    let saved = Conv2d.backend
    Conv2d.backend = backend
    defer { Conv2d.backend = saved }
    return try body()
}

extension ConvTests {
    /// Every configuration of the finite-difference suite, on the oneDNN backend.
    func testGradientsOnTheOneDNNBackend() throws {
        try XCTSkipUnless(OneDNN.available, "oneDNN has no CPU engine here: the oneDNN backend is not tested")
        // Also with the region plan forced on and off and both BLAS dx paths: passes that oneDNN has no
        // JIT kernel for run on the BLAS path after a oneDNN forward.
        let saved = (Conv2d.regionMinSaving, Conv2d.transposedInputGrad)
        defer { (Conv2d.regionMinSaving, Conv2d.transposedInputGrad) = saved }
        withBackend(.onednn) {
            for (i, cfg) in configs.enumerated() {
                for (regions, transposed) in [(2.0, true), (-1.0, true), (-1.0, false), (2.0, false)] {
                    (Conv2d.regionMinSaving, Conv2d.transposedInputGrad) = (regions, transposed)
                    runGradCheck(cfg, seed: UInt64(160 + i))
                }
                let conv = makeConv(cfg, seed: 1)
                var rng = Philox(seed: 2, stream: 1)
                _ = conv.forward(randomTensor([cfg.n, cfg.c, cfg.h, cfg.w], &rng))
                XCTAssertFalse(conv.onednnImplementations.isEmpty, "\(cfg): the forward did not run on oneDNN")
            }
        }
    }
}

/// The oneDNN backend of Conv2d against its definition (finite differences, like the BLAS path)
/// and against the BLAS path, which stays the oracle.
final class ConvOneDNNTests: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipUnless(OneDNN.available, "oneDNN has no CPU engine here: the oneDNN backend is not tested")
    }

    struct Shape {
        var n, c, h, w, o, k, stride, pad, dil: Int
        var bias: Bool
    }

    /// Output and every gradient within 1e-5 (relative to the largest magnitude) of the BLAS path.
    @discardableResult
    func compare(_ s: Shape, seed: UInt64, threads: Int = Threads.count, file: StaticString = #filePath,
                 line: UInt = #line) -> Conv2d {
        var initRng = Philox(seed: seed, stream: RNGStream.initialization.rawValue)
        let conv = Conv2d("c", inChannels: s.c, outChannels: s.o, kernel: s.k, stride: s.stride, padding: s.pad,
                          dilation: s.dil, bias: s.bias, rng: &initRng)
        var rng = Philox(seed: seed, stream: 7)
        let x = randomTensor([s.n, s.c, s.h, s.w], &rng)
        func run(_ backend: ConvBackend) -> (y: [Float], dx: [Float], dw: [Float], db: [Float]) {
            withBackend(backend) {
                let y = conv.forward(x).array
                let (ho, wo) = conv.outputSize(height: s.h, width: s.w)
                var r = Philox(seed: seed, stream: 8)
                let dy = randomTensor([s.n, s.o, ho, wo], &r)
                conv.zeroGrad()
                // Gradients accumulate: a non-zero starting gradient must be added to, not overwritten.
                conv.weight.grad.data.update(repeating: 0.5, count: conv.weight.grad.count)
                conv.bias?.grad.data.update(repeating: -0.25, count: s.o)
                let dx = conv.backward(dy).array
                return (y, dx, conv.weight.grad.array, conv.bias?.grad.array ?? [])
            }
        }
        let blas = run(.blas), fast = run(.onednn)
        XCTAssertFalse(conv.onednnImplementations.isEmpty, "\(s): oneDNN was not used", file: file, line: line)
        for (name, a, b) in [("y", fast.y, blas.y), ("dx", fast.dx, blas.dx), ("dW", fast.dw, blas.dw), ("db", fast.db, blas.db)] {
            XCTAssertEqual(a.count, b.count, "\(name) \(s)", file: file, line: line)
            let scale = max(1e-30, b.map { abs($0) }.max() ?? 0)
            let err = zip(a, b).map { abs($0 - $1) }.max() ?? 0
            XCTAssertLessThanOrEqual(err / scale, 1e-5, "\(name) \(s): max |oneDNN − BLAS| = \(err), scale \(scale)", file: file, line: line)
        }
        return conv
    }

    /// A padding wider than oneDNN's blocked JIT kernels take (rate 12 on a 16×32 map, as in the bench
    /// heads): with AVX-512 the forward and the dx twin's forward run on its brgemm kernel in NHWC
    /// (`OneDNNConvolution.Plan`), and every result matches the BLAS path; without AVX-512 oneDNN offers
    /// only im2col + GEMM and the BLAS path runs them.
    func testLargePaddingForwardOnBrgemm() {
        let before = OneDNN.implementationCounts
        let conv = compare(Shape(n: 2, c: 64, h: 16, w: 32, o: 32, k: 3, stride: 1, pad: 12, dil: 12, bias: true), seed: 510)
        let line = conv.onednnImplementations.first ?? ""
        let brgemm = "fwd brgconv:avx512_core"
        guard OneDNN.isa.hasPrefix("avx512_core") else {
            XCTAssertFalse(line.contains("brgconv"), line)
            print("oneDNN ISA \(OneDNN.isa): no brgemm kernels, the BLAS path runs the rate-12 forward (\(line))")
            return
        }
        XCTAssertTrue(line.contains(brgemm), line)
        // The layer's forward and its dx twin's (64 → 32 and 32 → 64, both padding 12).
        XCTAssertEqual((OneDNN.implementationCounts[brgemm] ?? 0) - (before[brgemm] ?? 0), 2,
                       "\(OneDNN.implementationSummary)")
    }

    func testMatchesBlasOnNetworkShapes() {
        let shapes: [Shape] = [
            Shape(n: 2, c: 3, h: 33, w: 47, o: 16, k: 7, stride: 2, pad: 3, dil: 1, bias: false),   // stem, odd sizes
            Shape(n: 3, c: 16, h: 17, w: 13, o: 24, k: 3, stride: 1, pad: 1, dil: 1, bias: true),
            Shape(n: 2, c: 16, h: 16, w: 24, o: 32, k: 3, stride: 2, pad: 1, dil: 1, bias: false),  // stride 2
            Shape(n: 2, c: 24, h: 9, w: 11, o: 40, k: 1, stride: 1, pad: 0, dil: 1, bias: true),    // 1×1
            Shape(n: 2, c: 24, h: 16, w: 16, o: 48, k: 1, stride: 2, pad: 0, dil: 1, bias: false),  // 1×1/2 on even: negative right pad
            Shape(n: 2, c: 32, h: 8, w: 16, o: 16, k: 3, stride: 1, pad: 12, dil: 12, bias: true),  // ASPP rate 12 on a small map
            Shape(n: 1, c: 8, h: 5, w: 7, o: 8, k: 3, stride: 1, pad: 2, dil: 2, bias: false),      // dilation 2, N = 1
            Shape(n: 2, c: 5, h: 10, w: 9, o: 7, k: 3, stride: 3, pad: 2, dil: 2, bias: true),      // stride 3 with dilation
        ]
        for (i, s) in shapes.enumerated() { compare(s, seed: UInt64(300 + i)) }
    }

    /// Random shapes (odd sizes, strides 1–2, dilations 1–3, 1×1 and 3×3).
    func testMatchesBlasOnRandomShapes() {
        var rng = Philox(seed: 77, stream: 3)
        func pick(_ n: Int) -> Int { Int(rng.nextUInt32() % UInt32(n)) }
        var tested = 0
        while tested < 12 {
            let k = [1, 3, 3, 5][pick(4)], dil = k == 1 ? 1 : 1 + pick(3)
            let s = Shape(n: 1 + pick(3), c: 1 + pick(20), h: 5 + pick(14), w: 5 + pick(14), o: 1 + pick(20), k: k,
                          stride: 1 + pick(2), pad: pick(dil * (k - 1) / 2 + 2), dil: dil, bias: pick(2) == 0)
            let span = dil * (k - 1) + 1
            if min(s.h, s.w) + 2 * s.pad < span { continue }
            compare(s, seed: UInt64(400 + tested))
            tested += 1
        }
    }

    /// Plans are per thread count: 1 and 2 threads give the same results as the BLAS path.
    func testOneAndTwoThreads() {
        let saved = Threads.count
        defer { Threads.set(saved) }
        for t in [1, 2] {
            Threads.set(t)
            compare(Shape(n: 2, c: 16, h: 12, w: 20, o: 24, k: 3, stride: 1, pad: 1, dil: 1, bias: true), seed: 500)
            compare(Shape(n: 2, c: 32, h: 8, w: 16, o: 16, k: 3, stride: 1, pad: 12, dil: 12, bias: false), seed: 501)
        }
    }

    /// No reference implementation on the network's shapes (they would be slower than BLAS).
    func testNoReferenceImplementations() {
        withBackend(.onednn) {
            var initRng = Philox(seed: 1, stream: 1)
            let conv = Conv2d("c", inChannels: 64, outChannels: 64, kernel: 3, padding: 1, rng: &initRng)
            var rng = Philox(seed: 2, stream: 1)
            let y = conv.forward(randomTensor([2, 64, 16, 16], &rng))
            _ = conv.backward(randomTensor(y.shape, &rng))
            let lines = conv.onednnImplementations
            XCTAssertEqual(lines.count, 1)
            XCTAssertFalse(lines[0].contains("ref"), lines[0])
            XCTAssertTrue(lines[0].contains("bwd_data") && lines[0].contains("bwd_weights"), lines[0])
        }
    }
}

extension ConvTests {
    /// Branches that share one input-gradient buffer (`shareInputGradientBuffer`) return the same dx
    /// as branches with a buffer each, when each dx is used before the next branch's backward — on
    /// both backends and both BLAS dx paths (the transposed twin writes into the shared buffer too).
    func testBranchesSharingTheInputGradientBuffer() {
        let saved = Conv2d.transposedInputGrad
        defer { Conv2d.transposedInputGrad = saved }
        let backends: [ConvBackend] = OneDNN.available ? [.blas, .onednn] : [.blas]
        for backend in backends {
            for transposed in [true, false] {
                Conv2d.transposedInputGrad = transposed
                func branches(sharing: Bool) -> [Conv2d] {
                    var rng = Philox(seed: 41, stream: RNGStream.initialization.rawValue)
                    let b = [(1, 0, 1), (3, 2, 2), (3, 5, 5)].map { k, pad, dil in
                        Conv2d("b", inChannels: 6, outChannels: 4, kernel: k, padding: pad, dilation: dil, bias: true, rng: &rng)
                    }
                    if sharing { for conv in b.dropFirst() { conv.shareInputGradientBuffer(with: b[0]) } }
                    return b
                }
                var rng = Philox(seed: 42, stream: 7)
                let x = randomTensor([2, 6, 7, 9], &rng), dy = randomTensor([2, 4, 7, 9], &rng)
                func dxSum(_ convs: [Conv2d]) -> [Float] {
                    withBackend(backend) {
                        let sum = Tensor([0])
                        for _ in 0..<2 {   // twice: the second backward reuses the buffers
                            for conv in convs { _ = conv.forward(x) }
                            sum.copy(from: convs[0].backward(dy))
                            for conv in convs.dropFirst() { sum.add(conv.backward(dy)) }
                        }
                        return sum.array
                    }
                }
                let own = dxSum(branches(sharing: false)), shared = dxSum(branches(sharing: true))
                // The buffer really is shared: every branch returns the same tensor.
                withBackend(backend) {
                    let convs = branches(sharing: true)
                    let dxs = convs.map { conv -> Tensor in _ = conv.forward(x); return conv.backward(dy) }
                    XCTAssertTrue(dxs.allSatisfy { $0 === dxs[0] }, "\(backend), transposed dx \(transposed)")
                }
                XCTAssertEqual(own, shared, "\(backend), transposed dx \(transposed)")
                XCTAssertGreaterThan(own.map { abs($0) }.max() ?? 0, 0)
            }
        }
    }
}
