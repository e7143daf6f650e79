import Foundation
import MTLCore
import XCTest
@testable import MTLMethods

final class LossMethodTests: XCTestCase {
    func testEW() throws {
        let r = try make("ew", T: 3).apply(context(T: 3))
        XCTAssertEqual(r.alpha, [1, 1, 1])
        XCTAssertEqual(r.decoderWeights, [1, 1, 1])
    }

    func testUWFirstStepByHandAndConvergesToLossOptimum() throws {
        let m = try make("uw", T: 2)
        let r0 = try m.apply(context(T: 2, losses: [4, 0.25]))
        XCTAssertEqual(r0.alpha, [0.5, 0.5])
        XCTAssertEqual(r0.decoderWeights, [0.5, 0.5])
        // ∂/∂s = 0.5 − 0.5·L = (−1.5, 0.375): Adam's first step moves each s by lr·sign.
        let s1 = m.stateValues()["s"]!
        XCTAssertEqual(s1[0], 0.025 * 1.5 / (1.5 + 1e-8), accuracy: 1e-15)
        XCTAssertEqual(s1[1], -0.025 * 0.375 / (0.375 + 1e-8), accuracy: 1e-15)
        let r1 = try m.apply(context(step: 1, T: 2, losses: [4, 0.25]))
        assertClose(r1.alpha, s1.map { 0.5 * exp(-$0) }, 1e-15)
        for step in 2..<1500 { _ = try m.apply(context(step: step, T: 2, losses: [4, 0.25])) }
        // At fixed L the optimum is e^s = L, i.e. weight 1/(2L).
        let s = m.stateValues()["s"]!
        XCTAssertEqual(s[0], log(4.0), accuracy: 0.03)
        XCTAssertEqual(s[1], log(0.25), accuracy: 0.03)
    }

    func testUWParams() throws {
        let m = try make("uw", T: 2, ["method.uw.lr": "0.1", "init": "-0.5"])
        let r = try m.apply(context(T: 2, losses: [1, 1]))
        XCTAssertEqual(r.alpha[0], 0.5 * exp(0.5), accuracy: 1e-15)
        // ∂/∂s = 0.5 − 0.5 e^{0.5} < 0: s rises by lr = 0.1.
        XCTAssertEqual(m.stateValues()["s"]![0], -0.5 + 0.1, accuracy: 1e-8)
    }

    /// KEM's loss Σ_t (λ_t·10·e^{−s_t}·L_t + s_t) (SEED-ARCHITECTURES §3.3): weights 10 e^{−s}, ∂/∂s =
    /// 1 − 10 e^{−s} L, optimum e^s = 10 L (λ_t is already in the losses the method sees).
    func testUWScaleAndRegularizerGiveTheKEMLoss() throws {
        let m = try make("uw", T: 2, ["method.uw.scale": "10", "method.uw.reg": "1", "init": "0.2"])
        let r0 = try m.apply(context(T: 2, losses: [0.05, 0.3]))
        assertClose(r0.alpha, [10 * exp(-0.2), 10 * exp(-0.2)], 1e-15)
        XCTAssertEqual(r0.decoderWeights, r0.alpha)
        // ∂/∂s = 1 − 10 e^{−0.2}·0.05 > 0 (s falls by lr), 1 − 10 e^{−0.2}·0.3 < 0 (s rises by lr).
        let s1 = m.stateValues()["s"]!
        XCTAssertEqual(s1[0], 0.2 - 0.025, accuracy: 1e-8)
        XCTAssertEqual(s1[1], 0.2 + 0.025, accuracy: 1e-8)
        for step in 1..<2000 { _ = try m.apply(context(step: step, T: 2, losses: [0.05, 0.3])) }
        let s = m.stateValues()["s"]!
        XCTAssertEqual(s[0], log(0.5), accuracy: 0.03)
        XCTAssertEqual(s[1], log(3.0), accuracy: 0.03)
        XCTAssertThrowsError(try make("uw", T: 2, ["method.uw.scale": "0"])) {
            XCTAssertTrue("\($0)".contains("method.uw.scale"), "\($0)")
        }
        XCTAssertThrowsError(try make("uw", T: 2, ["method.uw.reg": "-1"])) {
            XCTAssertTrue("\($0)".contains("method.uw.reg: expected a number >= 0"), "\($0)")
        }
    }

    func testDWAByHand() throws {
        let m = try make("dwa", T: 2)
        // Epoch 0: losses (1,2) and (3,2) → means (2, 2). Epoch 1: (1, 2) → means (1, 2).
        var r = try m.apply(context(step: 0, epoch: 0, T: 2, losses: [1, 2]))
        XCTAssertEqual(r.alpha, [1, 1])
        r = try m.apply(context(step: 1, epoch: 0, T: 2, losses: [3, 2]))
        r = try m.apply(context(step: 2, epoch: 1, T: 2, losses: [1, 2], epochEnded: true))
        XCTAssertEqual(r.alpha, [1, 1])  // only one epoch mean so far
        r = try m.apply(context(step: 3, epoch: 2, T: 2, losses: [5, 5], epochEnded: true))
        // r = (1/2, 2/2); w = 2·softmax(r/τ), τ = 2.
        let e0 = exp(0.25), e1 = exp(0.5)
        assertClose(r.alpha, [2 * e0 / (e0 + e1), 2 * e1 / (e0 + e1)], 1e-14)
        XCTAssertEqual(r.decoderWeights, r.alpha)
        // Constant within the epoch.
        let r2 = try m.apply(context(step: 4, epoch: 2, T: 2, losses: [0.1, 9]))
        XCTAssertEqual(r2.alpha, r.alpha)
    }

    func testRLWDistributions() throws {
        for dist in ["normal", "uniform", "dirichlet", "bernoulli", "cbernoulli"] {
            let m = try make("rlw", T: 4, ["dist": dist])
            let a = try m.apply(context(step: 3, seed: 11, T: 4)).alpha
            let b = try m.apply(context(step: 3, seed: 11, T: 4)).alpha
            XCTAssertEqual(a, b, "same (seed, step) → same weights")
            var differs = false
            for step in 4..<20 {
                if try m.apply(context(step: step, seed: 11, T: 4)).alpha != a { differs = true }
            }
            XCTAssertTrue(differs, dist)
            switch dist {
            case "bernoulli":
                XCTAssertTrue(a.allSatisfy { $0 == 0 || $0 == 1 } && a.contains(1))
            case "cbernoulli":
                XCTAssertEqual(a.filter { $0 == 1 }.count, 1)
                XCTAssertEqual(a.reduce(0, +), 1)
            default:
                XCTAssertEqual(a.reduce(0, +), 1, accuracy: 1e-15)
                XCTAssertTrue(a.allSatisfy { $0 > 0 })
            }
        }
        // Normal: softmax of the first T normals of methodRNG(seed, step), by hand.
        var rng = methodRNG(seed: 11, step: 3)
        let z = (0..<4).map { _ in Double(rng.normal()) }
        let e = z.map { exp($0) }
        let expected = e.map { $0 / e.reduce(0, +) }
        assertClose(try make("rlw", T: 4).apply(context(step: 3, seed: 11, T: 4)).alpha, expected, 1e-14)
    }

    func testMethodRNGStepsDoNotOverlap() {
        // Philox(index: step) would give step k+1's first block = step k's second block.
        var a = methodRNG(seed: 1, step: 5), b = methodRNG(seed: 1, step: 6)
        let xa = (0..<8).map { _ in a.nextUInt32() }, xb = (0..<8).map { _ in b.nextUInt32() }
        XCTAssertNotEqual(Array(xa[4..<8]), Array(xb[0..<4]))
        XCTAssertTrue(Set(xa).isDisjoint(with: Set(xb)))
    }

    func testLPSByHand() throws {
        let m = try make("lps", T: 2, ["warmup": "ones"])
        let eta = 1e-6
        // Epoch 0: one step, losses (1, 3). Warm-up weights 1; coefficients 1/(1 + L + η).
        var r = try m.apply(context(step: 0, epoch: 0, T: 2, losses: [1, 3]))
        assertClose(r.alpha, [1 / (2 + eta), 1 / (4 + eta)], 1e-15)
        // Epoch 1: losses (0.5, 3).
        r = try m.apply(context(step: 1, epoch: 1, T: 2, losses: [0.5, 3], epochEnded: true))
        assertClose(r.alpha, [1 / (1.5 + eta), 1 / (4 + eta)], 1e-15)
        // Epoch 2: ρ(e) from epoch 1, ρ(e−1) from epoch 0 (log-losses), w = ρ(e)/ρ(e−1), spread 2.5.
        r = try m.apply(context(step: 2, epoch: 2, T: 2, losses: [1, 1], epochEnded: true))
        let l0 = [log(2 + eta), log(4 + eta)], l1 = [log(1.5 + eta), log(4 + eta)]
        let rho0 = l0.map { $0 / l0.reduce(0, +) }, rho1 = l1.map { $0 / l1.reduce(0, +) }
        var w = [rho1[0] / rho0[0], rho1[1] / rho0[1]]
        let mean = (w[0] + w[1]) / 2
        w = w.map { max(mean + 2.5 * ($0 - mean), 1e-3) }
        assertClose(r.logs.map { $0.1 }, w, 1e-14)
        assertClose(r.alpha, [w[0] / (2 + eta), w[1] / (2 + eta)], 1e-14)
        XCTAssertLessThan(w[0], 1)  // seg improved faster than its share → de-prioritised
        XCTAssertGreaterThan(w[1], 1)
    }

    func testGradNormOneStepByHand() throws {
        let m = try make("gradnorm", T: 2)
        let K = [1.0, 0.3, 0.3, 4.0]  // norms 1 and 2
        let r0 = try m.apply(context(T: 2, losses: [1, 1], gram: K))
        XCTAssertEqual(r0.alpha, [1, 1])
        // G = (1, 2), Ḡ = 1.5, r = 1 → C = 1.5: ∂/∂w = (−1·1, +1·2); Adam moves w by (+lr, −lr),
        // then renormalised to Σw = 2.
        let w = m.stateValues()["w"]!
        let raw = [1 + 0.025 * 1 / (1 + 1e-8), 1 - 0.025 * 2 / (2 + 1e-8)]
        XCTAssertEqual(w[0], raw[0] * 2 / (raw[0] + raw[1]), accuracy: 1e-14)
        XCTAssertEqual(w[1], raw[1] * 2 / (raw[0] + raw[1]), accuracy: 1e-14)
        XCTAssertEqual(w[0], 1.025, accuracy: 1e-9)
        let r1 = try m.apply(context(step: 1, T: 2, losses: [0.5, 1], gram: K))
        assertClose(r1.alpha, w, 1e-15)
        XCTAssertEqual(r1.decoderWeights, r1.alpha)
        XCTAssertEqual(m.stateValues()["w"]!.reduce(0, +), 2, accuracy: 1e-12)
    }

    func testGradNormBalancesNorms() throws {
        // With constant losses (r = 1) the fixed point equalises w_t ‖h_t‖.
        let m = try make("gradnorm", T: 3, ["lr": "0.01"])
        let K = [1.0, 0, 0, 0, 4, 0, 0, 0, 0.25]
        for step in 0..<3000 { _ = try m.apply(context(step: step, T: 3, losses: [1, 1, 1], gram: K)) }
        let w = m.stateValues()["w"]!
        // w ∝ 1/‖h‖ = (1, 0.5, 2), Σw = 3 → (6/7, 3/7, 12/7).
        assertClose(w, [6.0 / 7, 3.0 / 7, 12.0 / 7], 0.03)
    }

    func testIMTLLossScalesByHand() throws {
        let m = try make("imtl-l", T: 2)
        let r0 = try m.apply(context(T: 2, losses: [4, 0.5]))
        XCTAssertEqual(r0.alpha, [1, 1])
        XCTAssertEqual(r0.decoderWeights, [1, 1])
        // ∂/∂s = e^s L − 1 = (3, −0.5) → s = (−lr, +lr).
        let s = m.stateValues()["s"]!
        XCTAssertEqual(s[0], -0.025 * 3 / (3 + 1e-8), accuracy: 1e-14)
        XCTAssertEqual(s[1], 0.025 * 0.5 / (0.5 + 1e-8), accuracy: 1e-14)
        for step in 1..<1500 { _ = try m.apply(context(step: step, T: 2, losses: [4, 0.5])) }
        // e^s L → 1.
        let sc = m.stateValues()["s"]!.map { exp($0) }
        XCTAssertEqual(sc[0] * 4, 1, accuracy: 0.05)
        XCTAssertEqual(sc[1] * 0.5, 1, accuracy: 0.05)
    }
}
