import Foundation
import XCTest
import MTLCore
import MTLTestSupport
@testable import MTLNN

/// Distinct values (spacing 2/count) in a random order, so that max pooling has no near-ties
/// that a finite-difference step could cross.
func distinctTensor(_ shape: [Int], _ rng: inout Philox) -> Tensor {
    let t = Tensor(shape)
    let perm = rng.permutation(t.count)
    for i in 0..<t.count { t.data[i] = 2 * Float(perm[i]) / Float(t.count) - 1 }
    return t
}

/// The dense decoder primitives (CBAM gates and pools, align_corners=True resize, depthwise
/// convolution, average pooling, L2 normalisation, affinity upsampling): finite differences,
/// thread-count independence, PyTorch in float64.
final class DecoderPrimitiveTests: XCTestCase {
    func testSigmoidGradientsAndExtremes() {
        var rng = Philox(seed: 21, stream: 1)
        let sg = Sigmoid()
        let x = randomTensor([2, 3, 4, 5], &rng, scale: 4)
        let r = randomTensor(x.shape, &rng)
        _ = sg.forward(x)
        let dx = sg.backward(r).array
        checkGradient("sigmoid dx", x: x, analytic: dx, eps: 1e-3, tolerance: 1e-3) { functional(sg.forward(x), r) }
        let y = sg.forward(Tensor([3], [-100, 0, 100])).array
        XCTAssertLessThan(y[0], 1e-40)
        XCTAssertEqual(y[1], 0.5)
        XCTAssertEqual(y[2], 1)
    }

    func testBroadcastMultiplyGradients() {
        var rng = Philox(seed: 22, stream: 1)
        for gateShape in [[2, 5, 1, 1], [2, 1, 3, 4]] {
            let bm = BroadcastMultiply()
            let x = randomTensor([2, 5, 3, 4], &rng), a = randomTensor(gateShape, &rng)
            let y = bm.forward(x, a)
            // One spot value: y[1, 2, 1, 3] = x · a at the broadcast index.
            let gi = gateShape[1] == 1 ? 1 * 12 + 1 * 4 + 3 : 1 * 5 + 2
            XCTAssertEqual(y[((1 * 5 + 2) * 3 + 1) * 4 + 3], x[((1 * 5 + 2) * 3 + 1) * 4 + 3] * a[gi])
            let r = randomTensor(y.shape, &rng)
            let (dx, da) = bm.backward(r)
            let (dxa, daa) = (dx.array, da.array)
            let f = { functional(bm.forward(x, a), r) }
            checkGradient("bmul dx \(gateShape)", x: x, analytic: dxa, tolerance: 1e-3, f)
            checkGradient("bmul da \(gateShape)", x: a, analytic: daa, tolerance: 1e-3, f)
        }
    }

    func testCBAMPoolGradients() {
        var rng = Philox(seed: 23, stream: 1)
        let x = distinctTensor([2, 6, 4, 5], &rng)
        let gmp = GlobalMaxPool()
        let y = gmp.forward(x)
        XCTAssertEqual(y.shape, [2, 6, 1, 1])
        XCTAssertEqual(y[7], (0..<20).map { x[7 * 20 + $0] }.max())
        let r = randomTensor(y.shape, &rng)
        let dx = gmp.backward(r).array
        checkGradient("global max pool dx", x: x, analytic: dx, eps: 1e-3, tolerance: 1e-3) { functional(gmp.forward(x), r) }

        let cmm = ChannelMaxMeanPool()
        let z = cmm.forward(x)
        XCTAssertEqual(z.shape, [2, 2, 4, 5])
        let px = 13, column = (0..<6).map { x[(1 * 6 + $0) * 20 + px] }
        XCTAssertEqual(z[(1 * 2 + 0) * 20 + px], column.max())
        XCTAssertEqual(z[(1 * 2 + 1) * 20 + px], column.reduce(0, +) / 6, accuracy: 1e-6)
        let r2 = randomTensor(z.shape, &rng)
        let dz = cmm.backward(r2).array
        checkGradient("channel max/mean dx", x: x, analytic: dz, eps: 1e-3, tolerance: 1e-3) { functional(cmm.forward(x), r2) }

        // Ties: the first maximum gets the whole gradient.
        let tie = Tensor([1, 3, 1, 2], [1, 0, 1, 2, 1, 2])
        _ = cmm.forward(tie)
        let g = cmm.backward(Tensor([1, 2, 1, 2], [1, 1, 0, 0])).array
        XCTAssertEqual(g, [1, 0, 0, 1, 0, 0])
        _ = gmp.forward(Tensor([1, 1, 2, 2], [3, 1, 3, 3]))
        XCTAssertEqual(gmp.backward(Tensor([1, 1, 1, 1], [5])).array, [5, 0, 0, 0])
    }

    func testAlignCornersResize() {
        // in 2 → out 3 keeps the corners and puts the midpoint in between; out = 1 is the first pixel.
        let up = Upsample(alignCorners: true)
        XCTAssertEqual(up.forward(Tensor([1, 1, 1, 2], [2, 4]), height: 1, width: 3).array, [2, 3, 4])
        XCTAssertEqual(up.forward(Tensor([1, 1, 2, 3], [1, 2, 3, 4, 5, 6]), height: 1, width: 1).array, [1])
        XCTAssertEqual(Upsample.outputSize(input: 7, scaleFactor: 2.5), 17)
        XCTAssertEqual(Upsample.outputSize(input: 15, scaleFactor: 0.5), 7)
        var rng = Philox(seed: 24, stream: 1)
        for (hi, wi, ho, wo) in [(3, 4, 7, 9), (7, 6, 3, 4), (5, 5, 1, 6)] {
            let x = randomTensor([2, 3, hi, wi], &rng)
            let y = up.forward(x, height: ho, width: wo)
            let r = randomTensor(y.shape, &rng)
            let dx = up.backward(r).array
            checkGradient("align-corners resize \(hi)x\(wi)→\(ho)x\(wo)", x: x, analytic: dx, tolerance: 1e-3) {
                functional(up.forward(x, height: ho, width: wo), r)
            }
        }
    }

    func testDepthwiseConvGradients() {
        var rng = Philox(seed: 25, stream: 1), initRng = Philox(seed: 26, stream: 1)
        for (k, s, p, d) in [(3, 1, 1, 1), (3, 2, 2, 2), (5, 2, 1, 1)] {
            let conv = DepthwiseConv2d("dw", channels: 4, kernel: k, stride: s, padding: p, dilation: d, rng: &initRng)
            let x = randomTensor([2, 4, 9, 8], &rng)
            let y = conv.forward(x)
            let (ho, wo) = conv.outputSize(height: 9, width: 8)
            XCTAssertEqual(y.shape, [2, 4, ho, wo])
            let r = randomTensor(y.shape, &rng)
            conv.zeroGrad()
            let dx = conv.backward(r).array
            let f = { functional(conv.forward(x), r) }
            let tag = "k\(k) s\(s) p\(p) d\(d)"
            checkGradient("depthwise dx \(tag)", x: x, analytic: dx, tolerance: 1e-3, f)
            checkGradient("depthwise dw \(tag)", x: conv.weight.value, analytic: conv.weight.grad.array, tolerance: 1e-3, f)
            checkGradient("depthwise db \(tag)", x: conv.bias!.value, analytic: conv.bias!.grad.array, tolerance: 1e-3, f)
        }
    }

    func testAvgPoolGradients() {
        var rng = Philox(seed: 27, stream: 1)
        let pool = AvgPool2d(kernel: 2)
        let x = randomTensor([2, 3, 5, 7], &rng)    // odd sizes: the last row and column are dropped
        let y = pool.forward(x)
        XCTAssertEqual(y.shape, [2, 3, 2, 3])
        XCTAssertEqual(y[0], (x[0] + x[1] + x[7] + x[8]) / 4, accuracy: 1e-6)
        let r = randomTensor(y.shape, &rng)
        let dx = pool.backward(r).array
        XCTAssertEqual(dx[4 * 7 + 2], 0, "the dropped row gets no gradient")
        checkGradient("avg pool dx", x: x, analytic: dx, tolerance: 1e-3) { functional(pool.forward(x), r) }
    }

    func testL2NormalizeGradients() {
        var rng = Philox(seed: 28, stream: 1)
        let l2 = L2Normalize()
        let x = randomTensor([2, 5, 3, 4], &rng)
        let y = l2.forward(x)
        var norm = 0.0
        for ch in 0..<5 { norm += Double(y[(1 * 5 + ch) * 12 + 7]) * Double(y[(1 * 5 + ch) * 12 + 7]) }
        XCTAssertEqual(norm, 1, accuracy: 1e-6)
        let r = randomTensor(y.shape, &rng)
        let dx = l2.backward(r).array
        checkGradient("L2 normalise dx", x: x, analytic: dx, eps: 1e-3, tolerance: 1e-3) { functional(l2.forward(x), r) }
        // A zero pixel stays zero (x / ε) and its gradient is the linear map's, dn/ε.
        let zero = l2.forward(Tensor([1, 2, 1, 1], [0, 0])).array
        XCTAssertEqual(zero, [0, 0])
        XCTAssertEqual(l2.backward(Tensor([1, 2, 1, 1], [1e-12, -2e-12])).array[1], -2, accuracy: 1e-5)
    }

    func testAffinityUpsampleGradientsAndSeparableForm() {
        var rng = Philox(seed: 29, stream: 1)
        let (h, w, bigH, bigW) = (2, 3, 4, 6)
        for align in [false, true] {
            let au = AffinityUpsample(height: bigH, width: bigW, alignCorners: align)
            let a = randomTensor([2, h * w, h * w], &rng)
            let y = au.forward(a, gridHeight: h, gridWidth: w)
            XCTAssertEqual(y.shape, [2, bigH * bigW, bigH * bigW])
            // Â = K A Kᵀ with K = (Wy ⊗ Wx), the 1-D interpolation matrices from Upsample's tables.
            let (ry0, ry1, wy0, wy1) = Upsample.table(input: h, output: bigH, alignCorners: align)
            let (rx0, rx1, wx0, wx1) = Upsample.table(input: w, output: bigW, alignCorners: align)
            var k = [Double](repeating: 0, count: bigH * bigW * h * w)
            for Y in 0..<bigH { for X in 0..<bigW {
                for (yy, wy) in [(ry0[Y], wy0[Y]), (ry1[Y], wy1[Y])] { for (xx, wx) in [(rx0[X], wx0[X]), (rx1[X], wx1[X])] {
                    k[(Y * bigW + X) * h * w + yy * w + xx] += Double(wy) * Double(wx)
                }}
            }}
            let big = bigH * bigW, small = h * w
            var expected = [Float](repeating: 0, count: 2 * big * big)
            for s in 0..<2 { for q in 0..<big { for kk in 0..<big {
                var acc = 0.0
                for i in 0..<small { for j in 0..<small { acc += k[q * small + i] * Double(a[(s * small + i) * small + j]) * k[kk * small + j] } }
                expected[(s * big + q) * big + kk] = Float(acc)
            }}}
            assertClose(y.array, expected, tol: 1e-5, "affinity upsample = K A Kᵀ (align \(align))")
            let r = randomTensor(y.shape, &rng)
            let da = au.backward(r).array
            checkGradient("affinity upsample dA (align \(align))", x: a, analytic: da, tolerance: 1e-3) {
                functional(au.forward(a, gridHeight: h, gridWidth: w), r)
            }
        }
    }

    func testThreadCountIndependent() {
        let saved = Threads.count
        defer { Threads.set(saved) }
        var results: [[Float]] = []
        for t in [1, 2, 4] {
            Threads.set(t)
            var rng = Philox(seed: 30, stream: 1), initRng = Philox(seed: 31, stream: 1)
            let x = randomTensor([3, 16, 23, 29], &rng), dy = randomTensor([3, 16, 23, 29], &rng)
            var out: [Float] = []
            let sg = Sigmoid()
            out += sg.forward(x).array + sg.backward(dy).array
            let bm = BroadcastMultiply()
            for a in [randomTensor([3, 16, 1, 1], &rng), randomTensor([3, 1, 23, 29], &rng)] {
                out += bm.forward(x, a).array
                let (dx, da) = bm.backward(dy)
                out += dx.array + da.array
            }
            let gmp = GlobalMaxPool(), cmm = ChannelMaxMeanPool()
            out += gmp.forward(x).array + gmp.backward(randomTensor([3, 16, 1, 1], &rng)).array
            out += cmm.forward(x).array + cmm.backward(randomTensor([3, 2, 23, 29], &rng)).array
            let up = Upsample(alignCorners: true)
            out += up.forward(x, height: 40, width: 17).array + up.backward(randomTensor([3, 16, 40, 17], &rng)).array
            let conv = DepthwiseConv2d("dw", channels: 16, kernel: 3, stride: 2, padding: 2, dilation: 2, rng: &initRng)
            let y = conv.forward(x)
            out += y.array + conv.backward(randomTensor(y.shape, &rng)).array + conv.weight.grad.array + conv.bias!.grad.array
            let pool = AvgPool2d(kernel: 4)
            out += pool.forward(x).array + pool.backward(randomTensor([3, 16, 5, 7], &rng)).array
            let l2 = L2Normalize()
            out += l2.forward(x).array + l2.backward(dy).array
            let au = AffinityUpsample(height: 8, width: 10)
            let a = randomTensor([2, 20, 20], &rng)
            out += au.forward(a, gridHeight: 4, gridWidth: 5).array + au.backward(randomTensor([2, 80, 80], &rng)).array
            results.append(out)
        }
        XCTAssertTrue(results[0] == results[1] && results[0] == results[2], "results differ between 1, 2 and 4 threads")
    }

    static let script = #"""
x = leaf("sg_x"); y = torch.sigmoid(x); y.backward(T["sg_dy"]); out("sg_y", y); out("sg_dx", x.grad)
for tag in ("c", "s"):
    x, a = leaf("bm_x"), leaf("bm_a" + tag); y = x * a; y.backward(T["bm_dy"])
    out("bm_y" + tag, y); out("bm_dx" + tag, x.grad); out("bm_da" + tag, a.grad)
for i, (ho, wo) in enumerate(SIZES):
    x = leaf("up_x"); y = F.interpolate(x, size=(ho, wo), mode="bilinear", align_corners=True)
    y.backward(T["up_dy%d" % i]); out("up_y%d" % i, y); out("up_dx%d" % i, x.grad)
for i, (k, s, p, dil) in enumerate(CONVS):
    x, w, b = leaf("dw_x"), leaf("dw_w%d" % i), leaf("dw_b%d" % i)
    y = F.conv2d(x, w, b, stride=s, padding=p, dilation=dil, groups=x.shape[1]); y.backward(T["dw_dy%d" % i])
    out("dw_y%d" % i, y); out("dw_dx%d" % i, x.grad); out("dw_dw%d" % i, w.grad); out("dw_db%d" % i, b.grad)
x = leaf("tie_x"); y = torch.max(x, dim=1, keepdim=True)[0]; y.backward(T["tie_dmax"]); out("tie_dmax", x.grad)
x = leaf("tie_x"); y = F.adaptive_max_pool2d(x, 1); y.backward(T["tie_dgmp"]); out("tie_dgmp", x.grad)
x = leaf("ap_x"); y = F.avg_pool2d(x, 3); y.backward(T["ap_dy"]); out("ap_y", y); out("ap_dx", x.grad)
x = leaf("l2_x"); y = F.normalize(x, p=2, dim=1, eps=1e-12); y.backward(T["l2_dy"]); out("l2_y", y); out("l2_dx", x.grad)
def interp_matrix(n_in, n_out, align):
    # column c = the resize of the unit vector e_c (width 1 is the identity in either mode)
    e = torch.eye(n_in, dtype=torch.float64).reshape(1, n_in, n_in, 1)
    return F.interpolate(e, size=(n_out, 1), mode="bilinear", align_corners=align)[0, :, :, 0].T
for align in (False, True):
    a = leaf("au_a"); h, w, H, W = AU
    K = torch.kron(interp_matrix(h, H, align), interp_matrix(w, W, align))   # [HW, hw]
    y = K @ a @ K.T; y.backward(T["au_dy"])
    out("au_y%d" % align, y); out("au_da%d" % align, a.grad)
"""#

    func testAgainstPyTorch() throws {
        let ex = try TorchExchange()
        var rng = Philox(seed: 32, stream: 1), initRng = Philox(seed: 33, stream: 1)
        let sgX = randomTensor([2, 3, 5, 7], &rng, scale: 6), sgDy = randomTensor(sgX.shape, &rng)
        try ex.put("sg_x", sgX); try ex.put("sg_dy", sgDy)
        let bmX = randomTensor([2, 4, 5, 6], &rng), bmDy = randomTensor(bmX.shape, &rng)
        let bmA = ["c": randomTensor([2, 4, 1, 1], &rng), "s": randomTensor([2, 1, 5, 6], &rng)]
        try ex.put("bm_x", bmX); try ex.put("bm_dy", bmDy); try ex.put("bm_ac", bmA["c"]!); try ex.put("bm_as", bmA["s"]!)
        let sizes = [(13, 17), (3, 2), (1, 1), (1, 9), (6, 6)]
        let upX = randomTensor([2, 3, 6, 5], &rng)
        try ex.put("up_x", upX)
        var upDy: [Tensor] = []
        for (i, (ho, wo)) in sizes.enumerated() { upDy.append(randomTensor([2, 3, ho, wo], &rng)); try ex.put("up_dy\(i)", upDy[i]) }
        let convs = [(3, 1, 1, 1), (3, 2, 2, 2), (5, 2, 1, 1), (7, 1, 3, 1)]
        let dwX = randomTensor([2, 5, 11, 10], &rng)
        try ex.put("dw_x", dwX)
        var dws: [DepthwiseConv2d] = [], dwDy: [Tensor] = []
        for (i, (k, s, p, d)) in convs.enumerated() {
            let conv = DepthwiseConv2d("dw", channels: 5, kernel: k, stride: s, padding: p, dilation: d, rng: &initRng)
            let (ho, wo) = conv.outputSize(height: 11, width: 10)
            dws.append(conv); dwDy.append(randomTensor([2, 5, ho, wo], &rng))
            try ex.put("dw_w\(i)", conv.weight.value); try ex.put("dw_b\(i)", conv.bias!.value); try ex.put("dw_dy\(i)", dwDy[i])
        }
        // Values from 3 levels: ties in both pools, where the first arg-max must get the gradient.
        let tieX = Tensor([2, 4, 3, 5])
        for i in 0..<tieX.count { tieX[i] = Float(rng.int(below: 3)) }
        let tieDmax = randomTensor([2, 1, 3, 5], &rng), tieDgmp = randomTensor([2, 4, 1, 1], &rng)
        try ex.put("tie_x", tieX); try ex.put("tie_dmax", tieDmax); try ex.put("tie_dgmp", tieDgmp)
        let apX = randomTensor([2, 3, 10, 8], &rng), apDy = randomTensor([2, 3, 3, 2], &rng)
        try ex.put("ap_x", apX); try ex.put("ap_dy", apDy)
        let l2X = randomTensor([2, 7, 4, 5], &rng), l2Dy = randomTensor(l2X.shape, &rng)
        try ex.put("l2_x", l2X); try ex.put("l2_dy", l2Dy)
        let (h, w, bigH, bigW) = (3, 4, 6, 8)
        let auA = randomTensor([2, h * w, h * w], &rng), auDy = randomTensor([2, bigH * bigW, bigH * bigW], &rng)
        try ex.put("au_a", auA); try ex.put("au_dy", auDy)
        let header = "SIZES = \(sizes.map { [$0.0, $0.1] })\nCONVS = \(convs.map { [$0.0, $0.1, $0.2, $0.3] })\nAU = \([h, w, bigH, bigW])\n"
        let (status, log) = try ex.run(header + Self.script)
        try XCTSkipIf(status == 77, "torch (or numpy) is not importable by python3 (\(log.trimmingCharacters(in: .whitespacesAndNewlines))): PyTorch comparison skipped")
        XCTAssertEqual(status, 0, "reference script failed:\n\(log)")
        guard status == 0 else { return }

        let sg = Sigmoid()
        assertClose(sg.forward(sgX).array, try ex.get("sg_y"), tol: 1e-5, "sigmoid y")
        assertClose(sg.backward(sgDy).array, try ex.get("sg_dx"), tol: 1e-4, "sigmoid dx")
        for tag in ["c", "s"] {
            let bm = BroadcastMultiply()
            assertClose(bm.forward(bmX, bmA[tag]!).array, try ex.get("bm_y" + tag), tol: 1e-5, "bmul \(tag) y")
            let (dx, da) = bm.backward(bmDy)
            assertClose(dx.array, try ex.get("bm_dx" + tag), tol: 1e-4, "bmul \(tag) dx")
            assertClose(da.array, try ex.get("bm_da" + tag), tol: 1e-4, "bmul \(tag) da")
        }
        let up = Upsample(alignCorners: true)
        for (i, (ho, wo)) in sizes.enumerated() {
            assertClose(up.forward(upX, height: ho, width: wo).array, try ex.get("up_y\(i)"), tol: 1e-5, "align-corners \(ho)x\(wo) y")
            assertClose(up.backward(upDy[i]).array, try ex.get("up_dx\(i)"), tol: 1e-4, "align-corners \(ho)x\(wo) dx")
        }
        for (i, conv) in dws.enumerated() {
            let tag = "k\(conv.kernel) s\(conv.stride) p\(conv.padding) d\(conv.dilation)"
            assertClose(conv.forward(dwX).array, try ex.get("dw_y\(i)"), tol: 1e-5, "depthwise \(tag) y")
            conv.zeroGrad()
            assertClose(conv.backward(dwDy[i]).array, try ex.get("dw_dx\(i)"), tol: 1e-4, "depthwise \(tag) dx")
            assertClose(conv.weight.grad.array, try ex.get("dw_dw\(i)"), tol: 1e-4, "depthwise \(tag) dw")
            assertClose(conv.bias!.grad.array, try ex.get("dw_db\(i)"), tol: 1e-4, "depthwise \(tag) db")
        }
        let cmm = ChannelMaxMeanPool(), gmp = GlobalMaxPool()
        _ = cmm.forward(tieX)
        let dMaxOnly = Tensor([2, 2, 3, 5])
        for s in 0..<2 { for i in 0..<15 { dMaxOnly[s * 30 + i] = tieDmax[s * 15 + i] } }
        assertClose(cmm.backward(dMaxOnly).array, try ex.get("tie_dmax"), tol: 0, "channel max with ties dx (torch.max)")
        _ = gmp.forward(tieX)
        assertClose(gmp.backward(tieDgmp).array, try ex.get("tie_dgmp"), tol: 0, "global max pool with ties dx (adaptive_max_pool2d)")
        let ap = AvgPool2d(kernel: 3)
        assertClose(ap.forward(apX).array, try ex.get("ap_y"), tol: 1e-5, "avg pool y")
        assertClose(ap.backward(apDy).array, try ex.get("ap_dx"), tol: 1e-4, "avg pool dx")
        let l2 = L2Normalize()
        assertClose(l2.forward(l2X).array, try ex.get("l2_y"), tol: 1e-5, "L2 normalise y")
        assertClose(l2.backward(l2Dy).array, try ex.get("l2_dx"), tol: 1e-4, "L2 normalise dx")
        for align in [false, true] {
            let au = AffinityUpsample(height: bigH, width: bigW, alignCorners: align)
            assertClose(au.forward(auA, gridHeight: h, gridWidth: w).array, try ex.get("au_y\(align ? 1 : 0)"), tol: 1e-5, "affinity upsample (align \(align)) y")
            assertClose(au.backward(auDy).array, try ex.get("au_da\(align ? 1 : 0)"), tol: 1e-4, "affinity upsample (align \(align)) dA")
        }
    }
}
