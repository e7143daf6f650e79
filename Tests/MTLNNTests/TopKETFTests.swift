import Foundation
import XCTest
import MTLCore
import MTLTestSupport
@testable import MTLNN

/// Top-k softmax (KEM), the fixed ETF classifier (sKEM) and chunked non-local attention (MT-CP).
final class TopKETFTests: XCTestCase {
    /// Rows whose k largest scores lie in [1, 2] and the rest in [−2, 0.5]: a gap of 0.5, far
    /// more than 100× the finite-difference step, so no step changes the selection.
    func gappedScores(rows: Int, n: Int, k: Int, _ rng: inout Philox) -> Tensor {
        let s = Tensor([rows, n])
        for r in 0..<rows {
            let perm = rng.permutation(n)
            for i in 0..<n {
                s[r * n + perm[i]] = i < k ? 1 + rng.uniform() : -2 + 2.5 * rng.uniform()
            }
        }
        return s
    }

    func testTopKSelectionMatchesRankRule() {
        var rng = Philox(seed: 41, stream: 1)
        // Scores from a handful of levels: many ties, including at the k-th place.
        for (n, k) in [(1, 1), (5, 5), (9, 3), (40, 7), (33, 32), (64, 1)] {
            let s = Tensor([20, n])
            for i in 0..<s.count { s[i] = Float(rng.int(below: 4)) - 1 }
            let topk = TopKSoftmax(k: k, variant: .renormalized)
            let y = topk.forward(s)
            for r in 0..<20 {
                var selected: [Int] = []
                for i in 0..<n where y[r * n + i] > 0 { selected.append(i) }
                // i is selected iff fewer than k scores come before it in (score desc, index asc).
                let expected = (0..<n).filter { i in
                    (0..<n).filter { j in s[r * n + j] > s[r * n + i] || (s[r * n + j] == s[r * n + i] && j < i) }.count < k
                }
                XCTAssertEqual(selected, expected, "n \(n), k \(k), row \(r)")
            }
        }
    }

    func testTopKGradientsAndJacobians() {
        var rng = Philox(seed: 42, stream: 1)
        let (rows, n, k) = (6, 11, 4)
        for variant in [TopKSoftmax.Variant.masked, .renormalized] {
            let topk = TopKSoftmax(k: k, variant: variant)
            let s = gappedScores(rows: rows, n: n, k: k, &rng)
            let y = topk.forward(s).array
            let r = randomTensor(s.shape, &rng)
            let ds = topk.backward(r).array
            checkGradient("top-k \(variant) ds", x: s, analytic: ds, eps: 1e-3, tolerance: 1e-3) { functional(topk.forward(s), r) }
            // Closed-form Jacobians, row 0: A: J_ij = 1_S(i)·p_i(δ_ij − p_j); B: J_ij = y_i(δ_ij − y_j) on S×S.
            var p = [Double](repeating: 0, count: n)
            let m = (0..<n).map { Double(s[$0]) }.max()!
            let z = (0..<n).map { exp(Double(s[$0]) - m) }.reduce(0, +)
            for i in 0..<n { p[i] = exp(Double(s[i]) - m) / z }
            _ = topk.forward(s)
            for j in 0..<n {
                let unit = Tensor([rows, n])
                // Column j of Jᵀ·e: backward of e_i gives row i of J; take all i at once by unit vectors.
                unit[j] = 1
                let row = topk.backward(unit).array   // ds_l = Σ_i e_i J_il = J_jl
                for l in 0..<n {
                    let inS = y[j] > 0
                    let expected: Double
                    switch variant {
                    case .masked: expected = inS ? p[j] * ((j == l ? 1 : 0) - p[l]) : 0
                    case .renormalized: expected = inS && y[l] > 0 ? Double(y[j]) * ((j == l ? 1 : 0) - Double(y[l])) : 0
                    }
                    XCTAssertEqual(Double(row[l]), expected, accuracy: 1e-6, "\(variant) J[\(j), \(l)]")
                }
                for l in n..<(rows * n) { XCTAssertEqual(row[l], 0) }
            }
            // A keeps the full-row probabilities, B renormalises over the selection.
            let sum0 = (0..<n).map { Double(y[$0]) }.reduce(0, +)
            if variant == .masked { XCTAssertLessThan(sum0, 1 - 1e-3) } else { XCTAssertEqual(sum0, 1, accuracy: 1e-6) }
        }
    }

    func testETFProperties() {
        for (d, k) in [(16, 10), (7, 7), (64, 3)] {
            let e = ETF.matrix(dimension: d, classes: k, seed: 1234)
            var colSum = [Double](repeating: 0, count: d)
            for i in 0..<k {
                for j in i..<k {
                    var dot = 0.0
                    for r in 0..<d { dot += e[r * k + i] * e[r * k + j] }
                    XCTAssertEqual(dot, i == j ? 1 : -1 / Double(k - 1), accuracy: 1e-6, "d \(d), K \(k): ⟨e\(i), e\(j)⟩")
                }
                for r in 0..<d { colSum[r] += e[r * k + i] }
            }
            XCTAssertLessThan(colSum.map { abs($0) }.max()!, 1e-6, "d \(d), K \(k): Σ_j e_j")
            XCTAssertEqual(e, ETF.matrix(dimension: d, classes: k, seed: 1234), "the matrix is a function of the seed")
            XCTAssertNotEqual(e, ETF.matrix(dimension: d, classes: k, seed: 1235))
        }
        // The Q factor itself: orthonormal columns and R = QᵀA upper triangular with a positive diagonal.
        var rng = Philox(seed: 43, stream: 1)
        let (m, n) = (9, 5)
        let a = (0..<(m * n)).map { _ in Double(rng.normal()) }
        let q = ETF.orthonormalColumns(a, rows: m, columns: n)
        for i in 0..<n {
            for j in 0..<n {
                var qq = 0.0, qa = 0.0
                for r in 0..<m { qq += q[r * n + i] * q[r * n + j]; qa += q[r * n + i] * a[r * n + j] }
                XCTAssertEqual(qq, i == j ? 1 : 0, accuracy: 1e-12)
                if i > j { XCTAssertEqual(qa, 0, accuracy: 1e-12, "R[\(i), \(j)]") }
                if i == j { XCTAssertGreaterThan(qa, 0, "R[\(i), \(i)]") }
            }
        }
    }

    func testFixedProjectionGradient() {
        var rng = Philox(seed: 44, stream: 1)
        let proj = FixedProjection(etf: "etf", dimension: 12, classes: 5, seed: 7)
        let x = randomTensor([3, 4, 12], &rng)
        let y = proj.forward(x)
        XCTAssertEqual(y.shape, [3, 4, 5])
        let r = randomTensor(y.shape, &rng)
        let dx = proj.backward(r).array
        checkGradient("ETF projection dx", x: x, analytic: dx, tolerance: 1e-3) { functional(proj.forward(x), r) }
    }

    /// O = G·softmax(ΘᵀΦ)ᵀ and its gradients in Double, with the N×N matrix stored.
    func denseNonLocal(_ th: Tensor, _ ph: Tensor, _ g: Tensor, _ dy: Tensor) -> (y: [Float], dt: [Float], dp: [Float], dg: [Float]) {
        let b = th.shape[0], c = th.shape[1], n = th.count / (b * c), cv = g.shape[1]
        var y = [Float](repeating: 0, count: b * cv * n), dt = [Float](repeating: 0, count: th.count)
        var dp = dt, dg = [Float](repeating: 0, count: g.count)
        for s in 0..<b {
            let t = { (ch: Int, i: Int) in Double(th[(s * c + ch) * n + i]) }
            let f = { (ch: Int, i: Int) in Double(ph[(s * c + ch) * n + i]) }
            let v = { (ch: Int, i: Int) in Double(g[(s * cv + ch) * n + i]) }
            let go = { (ch: Int, i: Int) in Double(dy[(s * cv + ch) * n + i]) }
            var p = [Double](repeating: 0, count: n * n)
            for i in 0..<n {
                var row = (0..<n).map { j in (0..<c).reduce(0.0) { $0 + t($1, i) * f($1, j) } }
                let m = row.max()!
                row = row.map { exp($0 - m) }
                let z = row.reduce(0, +)
                for j in 0..<n { p[i * n + j] = row[j] / z }
            }
            var dS = [Double](repeating: 0, count: n * n)
            for i in 0..<n {
                for ch in 0..<cv { y[(s * cv + ch) * n + i] = Float((0..<n).reduce(0.0) { $0 + p[i * n + $1] * v(ch, $1) }) }
                let dP = (0..<n).map { j in (0..<cv).reduce(0.0) { $0 + go($1, i) * v($1, j) } }
                let dot = (0..<n).reduce(0.0) { $0 + dP[$1] * p[i * n + $1] }
                for j in 0..<n { dS[i * n + j] = p[i * n + j] * (dP[j] - dot) }
            }
            for ch in 0..<c {
                for i in 0..<n {
                    dt[(s * c + ch) * n + i] = Float((0..<n).reduce(0.0) { $0 + dS[i * n + $1] * f(ch, $1) })
                    dp[(s * c + ch) * n + i] = Float((0..<n).reduce(0.0) { $0 + dS[$1 * n + i] * t(ch, $1) })
                }
            }
            for ch in 0..<cv {
                for j in 0..<n { dg[(s * cv + ch) * n + j] = Float((0..<n).reduce(0.0) { $0 + p[$1 * n + j] * go(ch, $1) }) }
            }
        }
        return (y, dt, dp, dg)
    }

    func testNonLocalChunkedEqualsDense() {
        var rng = Philox(seed: 45, stream: 1)
        let th = randomTensor([2, 6, 5, 7], &rng), ph = randomTensor([2, 6, 5, 7], &rng)
        let g = randomTensor([2, 4, 5, 7], &rng), dy = randomTensor([2, 4, 5, 7], &rng)
        let dense = denseNonLocal(th, ph, g, dy)
        for block in [1, 7, 8, 16, 35, 64] {   // N = 35: blocks dividing it, not dividing it, larger
            let att = NonLocalAttention(queryBlock: block)
            let y = att.forward(theta: th, phi: ph, value: g)
            XCTAssertEqual(y.shape, [2, 4, 5, 7])
            assertClose(y.array, dense.y, tol: 1e-5, "non-local y, block \(block)")
            let (dt, dp, dg) = att.backward(dy)
            assertClose(dt.array, dense.dt, tol: 1e-5, "non-local dΘ, block \(block)")
            assertClose(dp.array, dense.dp, tol: 1e-5, "non-local dΦ, block \(block)")
            assertClose(dg.array, dense.dg, tol: 1e-5, "non-local dG, block \(block)")
        }
        // Finite differences on a small case, block 3 over N = 10.
        let t2 = randomTensor([1, 3, 10], &rng), p2 = randomTensor([1, 3, 10], &rng), g2 = randomTensor([1, 2, 10], &rng)
        let att = NonLocalAttention(queryBlock: 3)
        let r = randomTensor(att.forward(theta: t2, phi: p2, value: g2).shape, &rng)
        let (dt, dp, dg) = att.backward(r)
        let (dta, dpa, dga) = (dt.array, dp.array, dg.array)
        let f = { functional(att.forward(theta: t2, phi: p2, value: g2), r) }
        checkGradient("non-local dΘ", x: t2, analytic: dta, eps: 1e-3, tolerance: 1e-3, f)
        checkGradient("non-local dΦ", x: p2, analytic: dpa, eps: 1e-3, tolerance: 1e-3, f)
        checkGradient("non-local dG", x: g2, analytic: dga, eps: 1e-3, tolerance: 1e-3, f)
    }

    func testThreadCountIndependent() {
        let saved = Threads.count
        defer { Threads.set(saved) }
        var results: [[Float]] = []
        for t in [1, 2, 4] {
            Threads.set(t)
            var rng = Philox(seed: 46, stream: 1)
            var out: [Float] = []
            let th = randomTensor([2, 16, 300], &rng), ph = randomTensor([2, 16, 300], &rng)
            let g = randomTensor([2, 8, 300], &rng), dy = randomTensor([2, 8, 300], &rng)
            let att = NonLocalAttention(queryBlock: 37)
            out += att.forward(theta: th, phi: ph, value: g).array
            let (dt, dp, dg) = att.backward(dy)
            out += dt.array + dp.array + dg.array
            let s = randomTensor([70, 49], &rng, scale: 3), ds = randomTensor([70, 49], &rng)
            for variant in [TopKSoftmax.Variant.masked, .renormalized] {
                let topk = TopKSoftmax(k: 12, variant: variant)
                out += topk.forward(s).array + topk.backward(ds).array
            }
            results.append(out)
        }
        XCTAssertTrue(results[0] == results[1] && results[0] == results[2], "results differ between 1, 2 and 4 threads")
    }

    static let script = #"""
for tag in ("masked", "renormalized"):
    s = leaf("tk_s"); k = K
    idx = torch.topk(s, k, dim=-1).indices
    if tag == "masked":
        y = torch.softmax(s, -1) * torch.zeros_like(s).scatter(-1, idx, 1.0)
    else:
        y = torch.zeros_like(s).scatter(-1, idx, torch.softmax(torch.gather(s, -1, idx), -1))
    y.backward(T["tk_dy"]); out("tk_y_" + tag, y); out("tk_ds_" + tag, s.grad)
th, ph, g = leaf("nl_t"), leaf("nl_p"), leaf("nl_g")
B = th.shape[0]
P = torch.softmax(th.reshape(B, th.shape[1], -1).transpose(1, 2) @ ph.reshape(B, ph.shape[1], -1), -1)   # [B, N, N]
O = (P @ g.reshape(B, g.shape[1], -1).transpose(1, 2)).transpose(1, 2).reshape(g.shape)                  # channels-first
O.backward(T["nl_dy"]); out("nl_y", O); out("nl_dt", th.grad); out("nl_dp", ph.grad); out("nl_dg", g.grad)
A = T["etf_a"]; Q, R = torch.linalg.qr(A); Q = Q * torch.sign(torch.diagonal(R))
Kc = A.shape[1]; out("etf_e", (Kc / (Kc - 1)) ** 0.5 * Q @ (torch.eye(Kc, dtype=A.dtype) - 1.0 / Kc))
"""#

    func testAgainstPyTorch() throws {
        let ex = try TorchExchange()
        var rng = Philox(seed: 47, stream: 1)
        let k = 9
        let s = randomTensor([12, 49], &rng, scale: 4), dy = randomTensor([12, 49], &rng)
        try ex.put("tk_s", s); try ex.put("tk_dy", dy)
        let th = randomTensor([2, 8, 9, 11], &rng), ph = randomTensor([2, 8, 9, 11], &rng)
        let g = randomTensor([2, 5, 9, 11], &rng), nlDy = randomTensor([2, 5, 9, 11], &rng)
        try ex.put("nl_t", th); try ex.put("nl_p", ph); try ex.put("nl_g", g); try ex.put("nl_dy", nlDy)
        // The ETF from the same Gaussian matrix (in Float here: the exchange is float32).
        let (d, kc) = (12, 6)
        let a = (0..<(d * kc)).map { _ in rng.normal() }
        try ex.put("etf_a", Tensor([d, kc], a))
        let (status, log) = try ex.run("K = \(k)\n" + Self.script)
        try XCTSkipIf(status == 77, "torch (or numpy) is not importable by python3 (\(log.trimmingCharacters(in: .whitespacesAndNewlines))): PyTorch comparison skipped")
        XCTAssertEqual(status, 0, "reference script failed:\n\(log)")
        guard status == 0 else { return }
        for variant in [TopKSoftmax.Variant.masked, .renormalized] {
            let topk = TopKSoftmax(k: k, variant: variant)
            assertClose(topk.forward(s).array, try ex.get("tk_y_\(variant)"), tol: 1e-5, "top-k \(variant) y")
            assertClose(topk.backward(dy).array, try ex.get("tk_ds_\(variant)"), tol: 1e-4, "top-k \(variant) ds")
        }
        for block in [10, 64, 99] {
            let att = NonLocalAttention(queryBlock: block)
            assertClose(att.forward(theta: th, phi: ph, value: g).array, try ex.get("nl_y"), tol: 1e-5, "non-local y, block \(block)")
            let (dt, dp, dg) = att.backward(nlDy)
            assertClose(dt.array, try ex.get("nl_dt"), tol: 1e-4, "non-local dΘ, block \(block)")
            assertClose(dp.array, try ex.get("nl_dp"), tol: 1e-4, "non-local dΦ, block \(block)")
            assertClose(dg.array, try ex.get("nl_dg"), tol: 1e-4, "non-local dG, block \(block)")
        }
        let q = ETF.orthonormalColumns(a.map { Double($0) }, rows: d, columns: kc)
        let scale = (Double(kc) / Double(kc - 1)).squareRoot()
        var e = [Float](repeating: 0, count: d * kc)
        for r in 0..<d {
            let mean = (0..<kc).reduce(0.0) { $0 + q[r * kc + $1] } / Double(kc)
            for j in 0..<kc { e[r * kc + j] = Float(scale * (q[r * kc + j] - mean)) }
        }
        assertClose(e, try ex.get("etf_e"), tol: 1e-6, "ETF vs torch.linalg.qr (sign-fixed)")
    }
}
