import Foundation
import MTLCore
import XCTest
@testable import MTLMethods

final class IALTests: XCTestCase {
    /// Primary seg (norm ~1), auxiliaries with very different norms (×10, ×0.01).
    let v = Vectors.random(T: 3, P: 64, seed: 5, conflict: 0.3, scales: [1, 10, 0.01])

    func testPrimaryExactlyOneAndAuxRescaledToPrimaryNorm() throws {
        let m = try make("ial", T: 3)
        let K = v.gram()
        let r = try m.apply(context(T: 3, losses: [2, 0.5, 1], gram: K))
        XCTAssertEqual(r.alpha[0], 1)  // exactly
        // s = 0: w = f(0) = 1/(1+1) = 0.5 and α_k = 0.5·‖h_p‖/(‖h_k‖ + 1e-8).
        let np = norm(v.double(0))
        for k in 1..<3 {
            let nk = norm(v.double(k))
            XCTAssertEqual(r.alpha[k], 0.5 * np / (nk + 1e-8), accuracy: 1e-12 * r.alpha[k])
            // ‖α_k h_k‖ = w_k ‖h_p‖: the auxiliary gradient is rescaled to the primary's norm.
            XCTAssertEqual(norm(v.double(k).map { $0 * r.alpha[k] }), 0.5 * np, accuracy: 1e-6 * np)
            XCTAssertEqual(logValue(r, "w.\(names(3)[k])")!, 0.5)
        }
        XCTAssertNil(logValue(r, "w.seg"))  // the primary has no w
        XCTAssertEqual(r.decoderWeights, [0.5, 0.5, 0.5])  // UW weights 0.5 e^{-s}, s = 0
        XCTAssertEqual(logValue(r, "sigma.depth")!, 1)
    }

    func testDecoderUncertaintyStepByHand() throws {
        let m = try make("ial", T: 3)
        _ = try m.apply(context(T: 3, losses: [2, 0.5, 1], gram: v.gram()))
        // ∂/∂s = 0.5 − 0.5 L at s = 0: (−0.5, 0.25, 0). Adam's first step is lr·g/(|g| + 1e-8).
        let s = m.stateValues()["s"]!
        XCTAssertEqual(s[0], 0.025 * 0.5 / (0.5 + 1e-8), accuracy: 1e-15)
        XCTAssertEqual(s[1], -0.025 * 0.25 / (0.25 + 1e-8), accuracy: 1e-15)
        XCTAssertEqual(s[2], 0)
        let r = try m.apply(context(step: 1, T: 3, losses: [2, 0.5, 1], gram: v.gram()))
        assertClose(r.decoderWeights, s.map { 0.5 * exp(-$0) }, 1e-15)
        XCTAssertEqual(logValue(r, "sigma.seg")!, exp(0.5 * s[0]), accuracy: 1e-15)
        // Auxiliary weights follow their own uncertainty: w_depth = 1/(1 + e^{s_depth}) > 0.5.
        XCTAssertEqual(logValue(r, "w.depth")!, 1 / (1 + exp(s[1])), accuracy: 1e-15)
        XCTAssertEqual(r.alpha[0], 1)
    }

    func testMappingsAtZeroAndRangeAndMonotone() {
        let atZero = ["sigmoid": 0.5, "tanh": tanh(0.5), "exp": exp(-1.0), "expsigma": exp(-1.0), "inv": 0.5, "expw": 1 - exp(-0.5)]
        for f in IAL.mappings {
            XCTAssertEqual(IAL.map(f, logVariance: 0), atZero[f]!, accuracy: 1e-15, f)
            var previous = 2.0
            for s in stride(from: -800.0, through: 800.0, by: 7.3) {
                let w = IAL.map(f, logVariance: s)
                XCTAssertTrue(w >= 0 && w < 1, "\(f)(\(s)) = \(w)")
                XCTAssertLessThanOrEqual(w, previous, "\(f) must decrease in sigma")
                previous = w
            }
            XCTAssertLessThan(IAL.map(f, logVariance: -.infinity), 1)
        }
    }

    func testWeightsStayBelowOneForExtremeUncertainty() throws {
        for f in IAL.mappings {
            let m = try make("ial", T: 3, ["f": f])
            var st = m.stateValues()
            st["s"] = [0, -200, 200]
            try m.loadState(st)
            let r = try m.apply(context(T: 3, losses: [1, 1, 1], gram: v.gram()))
            for k in ["w.depth", "w.normal"] {
                let w = logValue(r, k)!
                XCTAssertTrue(w >= 0 && w < 1, "\(f) \(k) = \(w)")
            }
            XCTAssertEqual(r.alpha[0], 1)
        }
    }

    func testSourcesNoneCosineGradnorm() throws {
        let K = v.gram()
        let np = norm(v.double(0))
        // none: w = 1, pure norm matching.
        let none = try make("ial", T: 3, ["source": "none"]).apply(context(T: 3, gram: K))
        for k in 1..<3 { XCTAssertEqual(none.alpha[k], np / (norm(v.double(k)) + 1e-8), accuracy: 1e-12 * none.alpha[k]) }
        // cosine: w_k = max(0, cos(h_p, h_k)) computed from the vectors.
        let cos = try make("ial", T: 3, ["source": "cosine"]).apply(context(T: 3, gram: K))
        for k in 1..<3 {
            let c = dot(v.double(0), v.double(k)) / (np * norm(v.double(k)))
            XCTAssertEqual(logValue(cos, "w.\(names(3)[k])")!, max(0, c), accuracy: 1e-12)
        }
        // gradnorm: step 0 sets L(0) → r = 1 → w = f(0) = 0.5. Then losses (1, 0.5, 2)·L(0):
        // mean ratio 7/6, r = (6/7, 3/7, 12/7), w_k = 1/(1 + r_k^1.5).
        let gn = try make("ial", T: 3, ["source": "gradnorm"])
        let r0 = try gn.apply(context(T: 3, losses: [2, 2, 2], gram: K))
        XCTAssertEqual(logValue(r0, "w.depth")!, 0.5, accuracy: 1e-15)
        let r1 = try gn.apply(context(step: 1, T: 3, losses: [2, 1, 4], gram: K))
        XCTAssertEqual(logValue(r1, "w.depth")!, 1 / (1 + pow(3.0 / 7, 1.5)), accuracy: 1e-14)
        XCTAssertEqual(logValue(r1, "w.normal")!, 1 / (1 + pow(12.0 / 7, 1.5)), accuracy: 1e-14)
    }

    func testAllPrimaryFallsBackToUWAndRoleErrors() throws {
        let m = try makeMethod(name: "ial", taskNames: names(3), roles: [.primary, .primary, .primary], params: [:])
        let r = try m.apply(MethodContext(step: 0, roles: [.primary, .primary, .primary], losses: [1, 2, 3], gram: v.gram()))
        XCTAssertEqual(r.alpha, [0.5, 0.5, 0.5])
        XCTAssertEqual(r.decoderWeights, [0.5, 0.5, 0.5])
        XCTAssertThrowsError(try makeMethod(name: "ial", taskNames: names(3), roles: [.primary, .primary, .auxiliary], params: [:]))
        XCTAssertThrowsError(try makeMethod(name: "ial", taskNames: names(2), roles: [.auxiliary, .auxiliary], params: [:]))
    }

    func testZeroAuxiliaryGradientGivesZeroCoefficient() throws {
        let K = [4.0, 0, 0, 0]  // auxiliary has no gradient this step (e.g. no valid pixels)
        let r = try make("ial", T: 2).apply(context(T: 2, gram: K))
        XCTAssertEqual(r.alpha, [1, 0.5 * 2 / 1e-8])  // finite; multiplies a zero vector
        XCTAssertTrue(r.alpha.allSatisfy { $0.isFinite })
    }
}
