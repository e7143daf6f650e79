import Foundation
import MTLCore
import XCTest
@testable import MTLMethods

final class GramMethodTests: XCTestCase {
    /// The explicit vector form of PCGrad (METHODS.md §7) with the same permutations.
    func explicitPCGrad(_ v: Vectors, orders: [[Int]]) -> [Double] {
        var total = [Double](repeating: 0, count: v.P)
        for i in 0..<v.T {
            var vi = v.double(i)
            for j in orders[i] {
                let gj = v.double(j)
                let d = dot(vi, gj), n2 = dot(gj, gj)
                if d < 0 && n2 > 0 { for e in 0..<v.P { vi[e] -= d / n2 * gj[e] } }
            }
            for e in 0..<v.P { total[e] += vi[e] }
        }
        return total
    }

    func testPCGradGramFormEqualsExplicitProjection() throws {
        var projected = 0
        for (T, seed) in [(2, 1), (3, 2), (4, 3), (5, 4), (3, 5)] {
            let v = Vectors.random(T: T, P: 50, seed: UInt64(seed), conflict: 0.6)
            let m = try make("pcgrad", T: T)
            for step in 0..<4 {
                let r = try m.apply(context(step: step, seed: 99, T: T, gram: v.gram()))
                let orders = PCGrad.permutations(seed: 99, step: step, taskCount: T)
                let expected = explicitPCGrad(v, orders: orders)
                let got = v.combine(r.alpha)
                assertClose(got, expected, 1e-10, "T=\(T) step \(step)")
                XCTAssertEqual(r.decoderWeights, [Double](repeating: 1, count: T))
                projected += Int(logValue(r, "pcgrad.projections")!)
            }
        }
        XCTAssertGreaterThan(projected, 10, "the cases must actually conflict")
    }

    func testPCGradHandCase() throws {
        // g1 = (1, 0), g2 = (−1, 1): <g1,g2> = −1. v1 = g1 − (−1/2) g2 = (0.5, 0.5);
        // v2 = g2 − (−1/1) g1 = (0, 1). Sum (0.5, 1.5) = 2 g1 + 1.5 g2 → β = (2, 1.5).
        let r = try make("pcgrad", T: 2).apply(context(T: 2, gram: [1, -1, -1, 2]))
        assertClose(r.alpha, [2, 1.5], 1e-15)
        // No conflict → β = 1.
        let r2 = try make("pcgrad", T: 2).apply(context(T: 2, gram: [1, 0.2, 0.2, 2]))
        XCTAssertEqual(r2.alpha, [1, 1])
    }

    func testPCGradPermutationsExcludeSelfAndDependOnStep() {
        let p = PCGrad.permutations(seed: 3, step: 10, taskCount: 5)
        for i in 0..<5 { XCTAssertEqual(Set(p[i]), Set((0..<5).filter { $0 != i })) }
        var differs = false
        for step in 11..<30 where PCGrad.permutations(seed: 3, step: step, taskCount: 5) != p { differs = true }
        XCTAssertTrue(differs)
        XCTAssertEqual(PCGrad.permutations(seed: 3, step: 10, taskCount: 5), p)
    }

    func testMGDAClosedFormsAndNormalizers() throws {
        // 2 tasks: g1 = (2,0), g2 = (0,1) → α = (0.2, 0.8) on the raw losses (decoders too).
        let r = try make("mgda", T: 2).apply(context(T: 2, gram: [4, 0, 0, 1]))
        assertClose(r.alpha, [0.2, 0.8], 1e-15)
        XCTAssertEqual(r.decoderWeights, r.alpha)
        // l2: normalised orthogonal gradients → equal weights.
        let l2 = try make("mgda", T: 3, ["normalizer": "l2"]).apply(context(T: 3, gram: [1, 0, 0, 0, 4, 0, 0, 0, 9]))
        assertClose(l2.alpha, [1.0 / 3, 1.0 / 3, 1.0 / 3], 1e-12)
        // loss: K̂ = K/(L_s L_t) = diag(1/1, 4/4, 9/9) → equal weights again.
        let lo = try make("mgda", T: 3, ["normalizer": "loss"]).apply(context(T: 3, losses: [1, 2, 3], gram: [1, 0, 0, 0, 4, 0, 0, 0, 9]))
        assertClose(lo.alpha, [1.0 / 3, 1.0 / 3, 1.0 / 3], 1e-12)
        // loss+: K̂_tt = K_tt/(L_t² K_tt) = 1/L_t² = (1, 1/4, 1/9) → α ∝ (1, 4, 9)/14.
        let lp = try make("mgda", T: 3, ["normalizer": "loss+"]).apply(context(T: 3, losses: [1, 2, 3], gram: [1, 0, 0, 0, 4, 0, 0, 0, 9]))
        assertClose(lp.alpha, [1.0 / 14, 4.0 / 14, 9.0 / 14], 1e-12)
        let tt = try make("mgda", T: 2, ["times_tasks": "true"]).apply(context(T: 2, gram: [4, 0, 0, 1]))
        assertClose(tt.alpha, [0.4, 1.6], 1e-15)
    }

    /// Independent gradient of the CAGrad objective (as the reference writes it) for KKT checks.
    func cagradGradient(_ A: [Double], _ T: Int, _ w: [Double], c: Double) -> [Double] {
        let meanA = A.reduce(0, +) / Double(T * T)
        let cc = c * (meanA + 1e-8).squareRoot() + 1e-8
        let Aw = (0..<T).map { i in (0..<T).reduce(0.0) { $0 + A[i * T + $1] * w[$1] } }
        let Ab = (0..<T).map { i in (0..<T).reduce(0.0) { $0 + A[i * T + $1] / Double(T) } }
        let q = (dot(w, Aw) + 1e-8).squareRoot()
        return (0..<T).map { Ab[$0] + cc * Aw[$0] / q }
    }

    func testCAGradSymmetricClosedForm() throws {
        // K = I (T=2): w* = (½, ½) by symmetry, λ ≈ c, α_t = (1+c)/(1+c²) (× T/T).
        let c = 0.4
        let r = try make("cagrad", T: 2).apply(context(T: 2, gram: [1, 0, 0, 1]))
        let expected = (1 + c) / (1 + c * c)
        assertClose(r.alpha, [expected, expected], 1e-7)
        XCTAssertEqual(r.decoderWeights, [1, 1])
        // Scale invariance: the same coefficients for K·1e-6 (representation-level magnitudes).
        let small = try make("cagrad", T: 2).apply(context(T: 2, gram: [1e-6, 0, 0, 1e-6]))
        assertClose(small.alpha, r.alpha, 1e-12)
        // c = 0: plain mean gradient × T = EW.
        let c0 = try make("cagrad", T: 3, ["c": "0"]).apply(context(T: 3, gram: Vectors.random(T: 3, P: 9, seed: 4).gram()))
        assertClose(c0.alpha, [1, 1, 1], 1e-6)  // the reference's 1e-8 terms remain
    }

    func testCAGradTwoTasksAgainstGoldenSection() throws {
        let K = [1.0, -0.6, -0.6, 4.0]
        let A = K.map { $0 / 2.5 }  // scaled by mean diag, as the method does
        let (w, lambda, res) = CAGrad.solve(A, 2, c: 0.4)
        XCTAssertLessThan(res, 1e-12)
        // 1-D golden-section search on w_0 ∈ [0, 1].
        func F(_ x: Double) -> Double {
            let ww = [x, 1 - x]
            let meanA = A.reduce(0, +) / 4, cc = 0.4 * (meanA + 1e-8).squareRoot() + 1e-8
            let Aw = [A[0] * ww[0] + A[1] * ww[1], A[2] * ww[0] + A[3] * ww[1]]
            return dot(ww, [(A[0] + A[1]) / 2, (A[2] + A[3]) / 2]) + cc * (dot(ww, Aw) + 1e-8).squareRoot()
        }
        var lo = 0.0, hi = 1.0
        let g = (5.0.squareRoot() - 1) / 2
        for _ in 0..<200 {
            let a = hi - g * (hi - lo), b = lo + g * (hi - lo)
            if F(a) < F(b) { hi = b } else { lo = a }
        }
        XCTAssertEqual(w[0], (lo + hi) / 2, accuracy: 1e-7)  // golden section itself is ~1e-8 in x
        XCTAssertGreaterThan(lambda, 0)
        // The full method on the unscaled K gives the same coefficients as the formula.
        let r = try make("cagrad", T: 2).apply(context(T: 2, gram: K))
        let expected = (0..<2).map { (0.5 + lambda * w[$0]) / 1.16 * 2 }
        assertClose(r.alpha, expected, 1e-12)
    }

    func testCAGradKKTOnRandomConflictingGrams() throws {
        for seed in 0..<6 {
            let T = 3 + seed % 3
            let K = Vectors.random(T: T, P: 20, seed: UInt64(200 + seed), conflict: 0.5, scales: (0..<T).map { Float(1 + $0) }).gram()
            let scale = (0..<T).reduce(0.0) { $0 + K[$1 * T + $1] } / Double(T)
            let A = K.map { $0 / scale }
            let (w, _, res) = CAGrad.solve(A, T, c: 0.4)
            XCTAssertLessThan(res, 1e-12, "seed \(seed)")
            XCTAssertEqual(w.reduce(0, +), 1, accuracy: 1e-14)
            // KKT on the simplex: ∇F_t = μ on the support, ≥ μ off it.
            let g = cagradGradient(A, T, w, c: 0.4)
            let support = (0..<T).filter { w[$0] > 1e-9 }
            let mu = support.map { g[$0] }.min()!
            for t in 0..<T {
                if w[t] > 1e-9 { XCTAssertEqual(g[t], mu, accuracy: 1e-10, "seed \(seed) t \(t)") }
                else { XCTAssertGreaterThanOrEqual(g[t], mu - 1e-10) }
            }
        }
    }

    func testGCSHardAndWeighted() throws {
        // cos(p, 1) = 0.5 > 0, cos(p, 2) = −0.25 < 0.
        let K = [1.0, 1, -0.5, 1, 4, 0, -0.5, 0, 4]
        let hard = try make("gcs", T: 3).apply(context(T: 3, gram: K))
        XCTAssertEqual(hard.alpha, [1, 1, 0])
        XCTAssertEqual(hard.decoderWeights, [1, 1, 1])
        let soft = try make("gcs", T: 3, ["weighted": "true"]).apply(context(T: 3, gram: K))
        assertClose(soft.alpha, [1, 0.5, 0], 1e-15)
        // The primary need not be task 0.
        let p2 = try make("gcs", T: 3, primary: 2).apply(context(T: 3, primary: 2, gram: K))
        XCTAssertEqual(p2.alpha, [0, 0, 1])
    }

    func testIMTLGEqualProjections() throws {
        // Hand case: g1 = (1,0), g2 = (0,2) → α = (2/3, 1/3), combined (2/3, 2/3).
        let r = try make("imtl-g", T: 2).apply(context(T: 2, gram: [1, 0, 0, 4]))
        assertClose(r.alpha, [2.0 / 3, 1.0 / 3], 1e-14)
        XCTAssertEqual(r.decoderWeights, [1, 1])
        for (T, seed) in [(3, 1), (4, 2), (5, 3)] {
            let v = Vectors.random(T: T, P: 30, seed: UInt64(seed), conflict: 0.3, scales: (0..<T).map { Float($0 + 1) })
            let a = try make("imtl-g", T: T).apply(context(T: T, gram: v.gram())).alpha
            XCTAssertEqual(a.reduce(0, +), 1, accuracy: 1e-12)
            let g = v.combine(a)
            let proj = (0..<T).map { dot(g, v.double($0)) / norm(v.double($0)) }
            for t in 1..<T { XCTAssertEqual(proj[t], proj[0], accuracy: 1e-9 * abs(proj[0])) }
        }
    }

    func testIMTLHybridUsesScaledGradients() throws {
        let v = Vectors.random(T: 3, P: 30, seed: 8, conflict: 0.2, scales: [1, 3, 0.5])
        let m = try make("imtl", T: 3)
        _ = try m.apply(context(T: 3, losses: [3, 0.2, 1], gram: v.gram()))  // moves s
        let s = m.stateValues()["s"]!
        let r = try m.apply(context(step: 1, T: 3, losses: [3, 0.2, 1], gram: v.gram()))
        assertClose(r.decoderWeights, s.map { exp($0) }, 1e-15)
        // Coefficients on raw g_t = α'(D K D)·e^s; projections on u_t still equal.
        let g = v.combine(r.alpha)
        let proj = (0..<3).map { dot(g, v.double($0)) / norm(v.double($0)) }
        XCTAssertEqual(proj[1], proj[0], accuracy: 1e-9 * abs(proj[0]))
        XCTAssertEqual(proj[2], proj[0], accuracy: 1e-9 * abs(proj[0]))
        let scaled = (0..<3).map { r.alpha[$0] / exp(s[$0]) }
        XCTAssertEqual(scaled.reduce(0, +), 1, accuracy: 1e-12)  // α' sums to 1
    }

    func testAlignedKnownCases() throws {
        // Diagonal K: B = diag(√(λ_min/λ_i)) → α = (1, 1/2, 1/3).
        let d = try make("aligned", T: 3).apply(context(T: 3, gram: [1, 0, 0, 0, 4, 0, 0, 0, 9]))
        assertClose(d.alpha, [1, 0.5, 1.0 / 3], 1e-14)
        XCTAssertEqual(d.decoderWeights, [1, 1, 1])
        // Rank 1: g2 = 2 g1 → K = [[1,2],[2,4]], v = (1,2)/√5, α = v vᵀ 1 = (3/5, 6/5).
        let r1 = try make("aligned", T: 2).apply(context(T: 2, gram: [1, 2, 2, 4]))
        assertClose(r1.alpha, [0.6, 1.2], 1e-13)
        XCTAssertEqual(logValue(r1, "aligned.rank"), 1)
        // Rotated: K = Q diag(4, 1) Qᵀ, Q = rotation by θ: α = Q diag(√(1/4), 1) Qᵀ 1.
        let th = 0.3, c = cos(th), s = sin(th)
        let Q = [c, -s, s, c]
        var K = [Double](repeating: 0, count: 4)
        let lam = [4.0, 1.0]
        for i in 0..<2 { for j in 0..<2 { for k in 0..<2 { K[i * 2 + j] += Q[i * 2 + k] * lam[k] * Q[j * 2 + k] } } }
        var expected = [0.0, 0.0]
        for i in 0..<2 { for k in 0..<2 { expected[i] += Q[i * 2 + k] * (1 / lam[k]).squareRoot() * (Q[0 * 2 + k] + Q[1 * 2 + k]) } }
        let rr = try make("aligned", T: 2).apply(context(T: 2, gram: K))
        assertClose(rr.alpha, expected, 1e-13)
        // Property on random vectors: aligned task gradients B·g are orthogonal with norm √λ_min,
        // so ‖Σ α g‖² = αᵀKα = λ_min·T (full rank).
        let v = Vectors.random(T: 4, P: 40, seed: 9, conflict: 0.3)
        let Kr = v.gram()
        let a = try make("aligned", T: 4).apply(context(T: 4, gram: Kr)).alpha
        let lmin = Dense.symmetricEigen(Kr, 4).values.min()!
        XCTAssertEqual(norm(v.combine(a)) * norm(v.combine(a)), 4 * lmin, accuracy: 1e-9 * lmin)
        // rmse / median scale the same matrix: α_rmse/α_min = √(mean λ / λ_min).
        let rm = try make("aligned", T: 3, ["scale": "rmse"]).apply(context(T: 3, gram: [1, 0, 0, 0, 4, 0, 0, 0, 9]))
        assertClose(rm.alpha, [1, 0.5, 1.0 / 3].map { $0 * (14.0 / 3).squareRoot() }, 1e-13)
        let md = try make("aligned", T: 3, ["scale": "median"]).apply(context(T: 3, gram: [1, 0, 0, 0, 4, 0, 0, 0, 9]))
        assertClose(md.alpha, [2, 1, 2.0 / 3], 1e-13)
    }

    func testNashSolvesKAlphaEqualsInverseAlpha() throws {
        // K = diag(1, 4): α_t² K_tt = 1 → α = (1, ½); ‖Σαg‖ = √2 > 1 → encoder clipped by 1/√2.
        let m = try make("nash", T: 2, ["eps": "0"])
        let r = try m.apply(context(T: 2, gram: [1, 0, 0, 4]))
        assertClose(r.decoderWeights, [1, 0.5], 1e-12)
        assertClose(r.alpha, [1, 0.5].map { $0 / 2.0.squareRoot() }, 1e-12)
        // Random conflicting Gram: check K α = 1/α, α > 0, and the warm start (0 iterations next time).
        let K = Vectors.random(T: 4, P: 30, seed: 12, conflict: 0.3).gram()
        let n = try make("nash", T: 4, ["eps": "0", "max_norm": "0"])
        let a = try n.apply(context(T: 4, gram: K))
        let alpha = a.decoderWeights
        XCTAssertTrue(alpha.allSatisfy { $0 > 0 })
        XCTAssertEqual(a.alpha, alpha)  // no clipping
        let Ka = Dense.matVec(K, alpha)
        for t in 0..<4 { XCTAssertEqual(Ka[t] * alpha[t], 1, accuracy: 1e-10) }
        let again = try n.apply(context(step: 1, T: 4, gram: K))
        XCTAssertEqual(logValue(again, "nash.iterations"), 0)
        // update_every = 3: step 1 and 2 reuse α even if K changes.
        let u = try make("nash", T: 2, ["update_every": "3"])
        let first = try u.apply(context(step: 0, T: 2, gram: [1, 0, 0, 4])).decoderWeights
        let reused = try u.apply(context(step: 1, T: 2, gram: [9, 0, 0, 4])).decoderWeights
        XCTAssertEqual(first, reused)
        let updated = try u.apply(context(step: 3, T: 2, gram: [9, 0, 0, 4])).decoderWeights
        XCTAssertNotEqual(first, updated)
    }

    func testOLAuxByHand() throws {
        let m = try make("olaux", T: 3, ["every": "2", "eta": "0.1", "beta": "1"])
        let K1 = [1.0, 0.5, -1, 0.5, 1, 0, -1, 0, 1]
        let K2 = [1.0, 0.3, -0.2, 0.3, 1, 0, -0.2, 0, 1]
        var r = try m.apply(context(step: 0, T: 3, gram: K1))
        XCTAssertEqual(r.alpha, [1, 1, 1])
        r = try m.apply(context(step: 1, T: 3, gram: K2))
        XCTAssertEqual(r.alpha, [1, 1, 1])  // update happens after this step's weights
        r = try m.apply(context(step: 2, T: 3, gram: K1))
        // w_k = 1 + 0.1·(K1_pk + K2_pk): (1.08, 0.88).
        assertClose(r.alpha, [1, 1.08, 0.88], 1e-15)
        XCTAssertEqual(r.decoderWeights, r.alpha)
    }
}
