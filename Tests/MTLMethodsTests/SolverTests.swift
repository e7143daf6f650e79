import Foundation
import MTLCore
import XCTest
@testable import MTLMethods

final class SolverTests: XCTestCase {
    func testJacobiKnownMatrices() {
        // [[2,1],[1,2]]: eigenvalues 3 and 1, vectors (1,1)/√2 and (1,−1)/√2.
        let (l2, v2) = Dense.symmetricEigen([2, 1, 1, 2], 2)
        let order = l2[0] > l2[1] ? [0, 1] : [1, 0]
        XCTAssertEqual(l2[order[0]], 3, accuracy: 1e-14)
        XCTAssertEqual(l2[order[1]], 1, accuracy: 1e-14)
        XCTAssertEqual(abs(v2[0 * 2 + order[0]]), 1 / 2.0.squareRoot(), accuracy: 1e-14)
        XCTAssertEqual(v2[0 * 2 + order[0]] * v2[1 * 2 + order[0]], 0.5, accuracy: 1e-14)   // same sign
        XCTAssertEqual(v2[0 * 2 + order[1]] * v2[1 * 2 + order[1]], -0.5, accuracy: 1e-14)  // opposite
        // Tridiagonal [2,−1;−1,2,−1;−1,2]: 2−√2, 2, 2+√2.
        let (l3, _) = Dense.symmetricEigen([2, -1, 0, -1, 2, -1, 0, -1, 2], 3)
        assertClose(l3.sorted(), [2 - 2.0.squareRoot(), 2, 2 + 2.0.squareRoot()], 1e-14)
        // Repeated eigenvalue (identity·3) and a diagonal matrix are returned as is.
        let (li, vi) = Dense.symmetricEigen([3, 0, 0, 0, 3, 0, 0, 0, 3], 3)
        XCTAssertEqual(li, [3, 3, 3])
        XCTAssertEqual(vi, [1, 0, 0, 0, 1, 0, 0, 0, 1])
    }

    func testJacobiReconstructsRandomGram() {
        for (T, seed) in [(4, 1), (6, 2), (5, 3)] {
            let K = Vectors.random(T: T, P: 7, seed: UInt64(seed)).gram()
            let (lam, V) = Dense.symmetricEigen(K, T)
            let scale = K.map(abs).max()!
            for i in 0..<T {
                for j in 0..<T {
                    var a = 0.0, vv = 0.0
                    for k in 0..<T { a += V[i * T + k] * lam[k] * V[j * T + k]; vv += V[k * T + i] * V[k * T + j] }
                    XCTAssertEqual(a, K[i * T + j], accuracy: 1e-12 * scale)   // V Λ Vᵀ = K
                    XCTAssertEqual(vv, i == j ? 1 : 0, accuracy: 1e-13)      // VᵀV = I
                }
            }
        }
    }

    func testSimplexProjection() {
        assertClose(Simplex.project([0.2, 0.3, 0.5]), [0.2, 0.3, 0.5], 1e-15)  // already inside
        assertClose(Simplex.project([1, 1]), [0.5, 0.5], 1e-15)
        assertClose(Simplex.project([2, 0, -1]), [1, 0, 0], 1e-15)
        // (0.5, 0.4, −0.3): θ = (0.9 − 1)/2 = −0.05 → (0.55, 0.45, 0).
        assertClose(Simplex.project([0.5, 0.4, -0.3]), [0.55, 0.45, 0], 1e-15)
    }

    func testDenseSolve() {
        // [[0,2],[3,1]] x = [4,5] needs a pivot swap: x = (1, 2).
        assertClose(Dense.solve([0, 2, 3, 1], [4, 5])!, [1, 2], 1e-15)
        XCTAssertNil(Dense.solve([1, 2, 2, 4], [1, 2]))
    }

    func testMinNormTwoAndThreeVectors() {
        // g1 = (2,0), g2 = (0,1): γ = (1 − 0)/(4 + 1) = 0.2 → α = (0.2, 0.8), point (0.4, 0.8).
        assertClose(MinNorm.frankWolfe([4, 0, 0, 1], 2), [0.2, 0.8], 1e-15)
        // g2 = 2 g1: the hull's closest point is g1; the reference clamps γ to 0.999.
        assertClose(MinNorm.frankWolfe([1, 2, 2, 4], 2), [0.999, 0.001], 1e-15)
        // Orthogonal with squared norms (1, 4, 4): α ∝ 1/K_tt = (2/3, 1/6, 1/6).
        assertClose(MinNorm.frankWolfe([1, 0, 0, 0, 4, 0, 0, 0, 4], 3), [2 / 3, 1 / 6, 1 / 6], 1e-12)
    }

    func testMinNormKKTOnRandomGram() {
        for seed in 0..<4 {
            let T = 3 + seed % 3
            let K = Vectors.random(T: T, P: 12, seed: UInt64(100 + seed), conflict: 0.4).gram()
            let a = MinNorm.frankWolfe(K, T)
            XCTAssertEqual(a.reduce(0, +), 1, accuracy: 1e-12)
            XCTAssertTrue(a.allSatisfy { $0 >= 0 })
            // KKT of min αᵀKα on Δ: (Kα)_t ≥ αᵀKα, equal on the support (FW stops at 1e-5 change).
            let Ka = Dense.matVec(K, a), v = Dense.dot(a, Ka)
            let scale = K.map(abs).max()!
            for t in 0..<T {
                XCTAssertGreaterThan(Ka[t], v - 1e-3 * scale)
                if a[t] > 1e-3 { XCTAssertEqual(Ka[t], v, accuracy: 1e-3 * scale) }
            }
        }
    }

    func testSimplexMinimizeQuadraticWithKnownOptimum() {
        // min ‖x − c‖² on the simplex = projection of c.
        let c = [0.9, 0.6, -0.4, 0.1]
        let (x, res) = Simplex.minimize(
            n: 4, start: [0.25, 0.25, 0.25, 0.25],
            value: { x in zip(x, c).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) } },
            gradient: { x in zip(x, c).map { 2 * ($0 - $1) } },
            hessian: { _ in (0..<16).map { $0 % 5 == 0 ? 2 : 0 } })
        assertClose(x, Simplex.project(c), 1e-12)
        XCTAssertLessThan(res, 1e-12)
    }
}
