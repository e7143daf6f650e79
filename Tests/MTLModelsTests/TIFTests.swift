import XCTest
import MTLCore
import MTLNN
import MTLTestSupport
@testable import MTLModels

/// Non-trivial BN / LN affine parameters (the defaults 1 and 0 would hide a swapped γ/β gradient).
func tifPerturbNorms(_ params: [Parameter], _ rng: inout Philox) {
    for p in params where p.name.hasSuffix("bn.weight") || p.name.hasSuffix("norm.weight") {
        for i in 0..<p.value.count { p.value[i] = 0.6 + 0.8 * rng.uniform() }
    }
    for p in params where p.name.hasSuffix("bn.bias") || p.name.hasSuffix("norm.bias") {
        for i in 0..<p.value.count { p.value[i] = 0.4 * rng.uniform() - 0.2 }
    }
}

/// The tiny four-scale pyramid of the tests: batch 2, scale 3 on a 2×3 grid, each finer scale twice as large.
let tifChannels = [5, 6, 7, 9], tifWidthCap = 8   // widths (5, 6, 7, 8): the cap is exercised at scale 3
func tifFeatures(_ rng: inout Philox, channels: [Int] = tifChannels, batch: Int = 2, grid: (Int, Int) = (2, 3)) -> [Tensor] {
    (0..<4).map { i in randomTensor([batch, channels[i], grid.0 << (3 - i), grid.1 << (3 - i)], &rng) }
}

final class TIFTests: XCTestCase {
    static let nyud: [(name: String, channels: Int)] = [("seg", 40), ("depth", 1), ("normals", 3), ("edges", 1)]
    static let pascal: [(name: String, channels: Int)] = [("seg", 21), ("parts", 7), ("saliency", 1), ("normals", 3), ("edges", 1)]

    func model(_ encoder: String, _ tasks: [(name: String, channels: Int)], _ edit: (inout TIFOptions) -> Void = { _ in }) throws -> MultiTaskModel {
        var o = TIFOptions()
        edit(&o)
        return try MultiTaskModel(ModelSpec(encoder: encoder, width: 64, outputStride: 8, decoder: "tif", headChannels: 0,
                                            tasks: tasks, tif: o), seed: 1)
    }

    /// The exact totals of docs/ARCHITECTURES.md §1.5 (= tools/tif_reference.py --count).
    func testParameterCountsMatchTheReference() throws {
        let full = try model("hrnet18s", Self.nyud)
        XCTAssertEqual(full.parameterCount, 5_398_137)
        XCTAssertEqual(full.encoder.parameterCount, 3_860_720 + 165_650, "backbone + SAFF")
        XCTAssertEqual((full.encoder as! TIFEncoder).saff.parameterCount, 165_650)
        let head = full.heads[0] as! TIFHead
        XCTAssertEqual(head.sfd.reduce(0) { $0 + $1.parameters.reduce(0) { $0 + $1.value.count } }, 283_184)
        XCTAssertEqual(head.lthd.reduce(0) { $0 + $1.parameters.reduce(0) { $0 + $1.value.count } }, 18_360)
        XCTAssertEqual(head.fuse.parameters.reduce(0) { $0 + $1.value.count }, 41_184)
        XCTAssertEqual(try model("hrnet18s", Self.nyud) { $0.lthd = false }.parameterCount, 5_324_697)
        XCTAssertEqual(try model("hrnet18s", Self.nyud) { $0.sfd = false }.parameterCount, 4_191_961)
        XCTAssertEqual(try model("hrnet18s", Self.nyud) { $0.saff = false }.parameterCount, 5_258_231)
        XCTAssertEqual(try model("hrnet18s", Self.nyud) { $0.kvSingle = true }.parameterCount, 5_136_921)
        XCTAssertEqual(try model("hrnet18s", Self.pascal).parameterCount, 5_849_477)
        // Within 3 % of the paper's 5.27 M (Table 3).
        XCTAssertLessThan(abs(Double(full.parameterCount) / 5.27e6 - 1), 0.03)
    }

    func testSwinTCount() throws {
        let m = try model("swin_t", Self.nyud)
        XCTAssertEqual(m.parameterCount, 32_971_175)
        XCTAssertLessThan(abs(Double(m.parameterCount) / 32.91e6 - 1), 0.03)
        XCTAssertEqual(try model("swin_t", Self.nyud) { $0.lthd = false }.parameterCount, 31_835_815)
        // The same decoder on Swin's four norm outputs (widths 96/128/128/128), forward and backward.
        Threads.set(2)
        var rng = Philox(seed: 4, stream: 1)
        let z = m.encoder.forward(randomTensor([1, 3, 64, 96], &rng))
        XCTAssertEqual(z.map { $0.shape }, [[1, 96, 16, 24], [1, 128, 8, 12], [1, 128, 4, 6], [1, 128, 2, 3]])
        let ys = m.decoder.forward(z, height: 64, width: 96)
        XCTAssertEqual(ys.map { $0.c }, [40, 1, 3, 1])
        let dz = m.decoder.backward(ys.map { Optional($0.clone()) })
        XCTAssertEqual(dz.map { $0.shape }, z.map { $0.shape })
        XCTAssertTrue(dz.allSatisfy { $0.array.allSatisfy { $0.isFinite } } && dz[3].sumOfSquares() > 0)
    }

    /// The reference's stable names (docs/ARCHITECTURES.md §1.2), unique, and the feature widths.
    func testNamesAndShapes() throws {
        let m = try model("hrnet18s", [("seg", 4), ("depth", 1)])
        let names = m.parameters.map { $0.name }
        XCTAssertEqual(Set(names).count, names.count, "duplicate parameter names")
        for n in ["decoder.saff.s0.xl.weight", "decoder.saff.s3.y_bn.bias", "decoder.saff.s2.dw.weight", "decoder.saff.s1.mix.bias",
                  "decoder.sfd.seg.s2.kv.1.weight", "decoder.sfd.depth.s3.ffn.fc2.bias", "decoder.lthd.seg.s0.fuse_bn.weight",
                  "decoder.lthd.depth.s1.proj.weight", "decoder.fuse.seg.conv.weight", "decoder.head.depth.bias"] {
            XCTAssertTrue(names.contains(n), "missing \(n)")
        }
        XCTAssertFalse(names.contains("decoder.sfd.seg.s2.kv.2.weight"), "N = 2 tasks → kv.0, kv.1 only")
        XCTAssertEqual(m.encoder.featureChannels, [18, 36, 72, 128])
        Threads.set(2)
        var rng = Philox(seed: 3, stream: 1)
        let x = randomTensor([2, 3, 64, 96], &rng)
        let z = m.encoder.forward(x)
        XCTAssertEqual(z.map { $0.shape }, [[2, 18, 16, 24], [2, 36, 8, 12], [2, 72, 4, 6], [2, 128, 2, 3]])
        let ys = m.decoder.forward(z, height: 64, width: 96)
        XCTAssertEqual(ys.map { $0.shape }, [[2, 4, 64, 96], [2, 1, 64, 96]])
        XCTAssertTrue(ys.allSatisfy { $0.array.allSatisfy { $0.isFinite } })
    }

    func testFourScaleEncoderRequired() {
        XCTAssertThrowsError(try MultiTaskModel(ModelSpec(encoder: "resnet18", width: 8, outputStride: 8, decoder: "tif",
                                                          headChannels: 0, tasks: [("seg", 3)]), seed: 0)) { e in
            XCTAssertTrue("\(e)".contains("model.neck: saff needs a 4-scale encoder (hrnet18s|hrnet18|swin_t|swin_s|swin_b), found model.encoder resnet18 with 1 scale(s)"), "\(e)")
        }
    }

    func testSAFFGradients() {
        Threads.set(1)
        var rng = Philox(seed: 11, stream: 1)
        for scales: Set<Int> in [[0, 1, 2, 3], [2, 3]] {
            let saff = SAFF("decoder.saff", channels: tifChannels, widths: tifWidths(tifChannels, cap: tifWidthCap),
                            scales: scales, rng: &rng)
            tifPerturbNorms(saff.parameters, &rng)
            // Positive pre-activations (large biases before both ReLUs): central differences then cross no
            // kink, while every path still carries gradient (ReLU's mask has its own tests; the full
            // module with batch statistics is checked against PyTorch in TIFTorchTests).
            for p in saff.parameters where p.name.hasSuffix("sff1.bias") || p.name.hasSuffix("dw.bias") {
                for c in 0..<p.value.count { p.value[c] = 4 + rng.uniform() }
            }
            let xs = tifFeatures(&rng)
            let ys = saff.forward(xs).map { $0.clone() }
            XCTAssertEqual(ys.map { $0.c }, [5, 6, 7, 8])
            let rs = ys.map { randomTensor($0.shape, &rng) }
            saff.zeroGrad()
            let dx = saff.backward(rs).map { $0.array }
            let f = { functional(saff.forward(xs), rs) }
            for s in 0..<4 { checkGradient("SAFF\(scales.sorted()) dX\(s)", x: xs[s], analytic: dx[s], maxChecks: 60, skipKinks: true, f) }
            for p in saff.parameters where p.name.contains("s1.") || p.name.contains("s3.") {
                checkGradient(p.name, x: p.value, analytic: p.grad.array, maxChecks: 60, skipKinks: true, f)
            }
        }
    }

    func testSFDGradientsIncludingTheLogits() {
        Threads.set(1)
        var rng = Philox(seed: 12, stream: 1)
        for scale in [false, true] {
            let sfd = SFD("decoder.sfd.seg.s2", d: 6, tasks: 3, ffnRatio: 4, scale: scale, kvSingle: false, rng: &rng)
            tifPerturbNorms(sfd.parameters, &rng)
            let x = randomTensor([2, 6, 3, 4], &rng)
            let (rx, a) = sfd.forward(x)
            let r = randomTensor(rx.shape, &rng), ra = randomTensor(a.shape, &rng, scale: 0.3)
            sfd.parameters.forEach { $0.grad.zero() }
            let dx = sfd.backward(r, dLogits: ra).array
            let f = { () -> Double in let (y, l) = sfd.forward(x); return functional([y, l], [r, ra]) }
            checkGradient("SFD dX", x: x, analytic: dx, maxChecks: 60, skipKinks: true, f)
            for p in sfd.parameters { checkGradient("SFD \(p.name)", x: p.value, analytic: p.grad.array, maxChecks: 30, skipKinks: true, f) }
        }
    }

    func testLTHDGradients() {
        Threads.set(1)
        var rng = Philox(seed: 13, stream: 1)
        for transpose in [false, true] {
            let lthd = LTHD("decoder.lthd.seg.s0", d: 5, ffnRatio: 4, transpose: transpose, rng: &rng)
            tifPerturbNorms(lthd.parameters, &rng)
            let x = randomTensor([2, 5, 8, 12], &rng), a0 = randomTensor([2, 6, 6], &rng, scale: 2)
            let y = lthd.forward(x, a0: a0, grid: (2, 3)).clone()
            let r = randomTensor(y.shape, &rng)
            lthd.parameters.forEach { $0.grad.zero() }
            let (dx, da) = lthd.backward(r)
            let dxa = dx.array, daa = da.array
            let f = { functional([lthd.forward(x, a0: a0, grid: (2, 3))], [r]) }
            checkGradient("LTHD dX", x: x, analytic: dxa, maxChecks: 60, skipKinks: true, f)
            checkGradient("LTHD dA0", x: a0, analytic: daa, maxChecks: 60, skipKinks: true, f)
            for p in lthd.parameters {
                // FFN(R)'s last bias is a per-channel constant that the 1×1 fuse maps to a per-channel
                // constant, which the batch-statistics BN removes: its gradient is exactly zero.
                if p.name.hasSuffix("ffn.fc2.bias") {
                    XCTAssertLessThan(p.grad.array.map { abs($0) }.max()!, 1e-4, p.name)
                    continue
                }
                checkGradient("LTHD \(p.name)", x: p.value, analytic: p.grad.array, maxChecks: 30, skipKinks: true, f)
            }
        }
    }

    /// One task's decoder (SFD, A0 = Up(A3) + A2, LTHD, fusion, head) end to end, and with the
    /// switches off.
    func testTaskHeadGradients() {
        Threads.set(1)
        var rng = Philox(seed: 14, stream: 1)
        let widths = tifWidths(tifChannels, cap: tifWidthCap)
        for (label, edit) in [("full", { (_: inout TIFOptions) in }), ("relu+noLTHD", { (o: inout TIFOptions) in o.fuseReLU = true; o.lthd = false })] {
            var o = TIFOptions()
            edit(&o)
            let head = TIFHead(task: "seg", widths: widths, tasks: 2, outChannels: 3, options: o, rng: &rng)
            tifPerturbNorms(head.parameters, &rng)
            let fs = tifFeatures(&rng, channels: widths)
            let y = head.forward(fs, height: 32, width: 48).clone()
            XCTAssertEqual(y.shape, [2, 3, 32, 48])
            let r = randomTensor(y.shape, &rng)
            head.zeroGrad()
            let ds = head.backward(r).map { $0.array }
            let f = { functional([head.forward(fs, height: 32, width: 48)], [r]) }
            for s in 0..<4 { checkGradient("head \(label) dX\(s)", x: fs[s], analytic: ds[s], eps: 2e-3, maxChecks: 60, skipKinks: true, f) }
            for p in head.parameters where p.name.contains("s3.q.") || p.name.contains("s1.proj") || p.name.contains("fuse.seg.bn")
                || p.name.contains("head.seg") {
                checkGradient("head \(label) \(p.name)", x: p.value, analytic: p.grad.array, eps: 2e-3, maxChecks: 60, skipKinks: true, f)
            }
        }
    }

    /// Steps with stable shapes allocate nothing new: the same output storage every time.
    func testOutputStorageIsReused() {
        var rng = Philox(seed: 15, stream: 1)
        let widths = tifWidths(tifChannels, cap: tifWidthCap)
        let head = TIFHead(task: "seg", widths: widths, tasks: 2, outChannels: 3, rng: &rng)
        let fs = tifFeatures(&rng, channels: widths)
        let p1 = head.forward(fs, height: 16, width: 24).data
        let d1 = head.backward(Tensor([2, 3, 16, 24], repeating: 1)).map { $0.data }
        let p2 = head.forward(fs, height: 16, width: 24).data
        let d2 = head.backward(Tensor([2, 3, 16, 24], repeating: 1)).map { $0.data }
        XCTAssertEqual(p1, p2)
        XCTAssertEqual(d1, d2)
    }
}
