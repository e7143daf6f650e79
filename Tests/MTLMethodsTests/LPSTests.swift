import Foundation
import MTLCore
import XCTest
@testable import MTLMethods

/// LPS against the closed form of SEED-ARCHITECTURES.md §2.4 (paper mode) and the released code's
/// behaviour (code mode = EW), with scripted per-step losses over several epochs.
final class LPSTests: XCTestCase {
    let eta = 1e-6

    /// Scripted GLOBAL per-step losses: epochs[e][step][task]. Three tasks whose shares move apart.
    let epochs: [[[Double]]] = [
        [[2.0, 0.9, 0.50], [1.8, 1.1, 0.40], [2.2, 1.0, 0.45]],
        [[1.4, 0.8, 0.42], [1.2, 0.9, 0.40], [1.3, 0.7, 0.38]],
        [[0.9, 0.7, 0.40], [0.8, 0.75, 0.41], [1.0, 0.65, 0.39]],
        [[0.7, 0.6, 0.36], [0.6, 0.62, 0.37], [0.65, 0.58, 0.35]],
        [[0.5, 0.55, 0.33], [0.45, 0.5, 0.34], [0.55, 0.52, 0.32]],
        [[0.4, 0.5, 0.31], [0.42, 0.48, 0.30], [0.38, 0.49, 0.32]],
    ]

    /// The weights used during every epoch, written directly from the closed form:
    /// epoch 0: 1; after epoch j (used in j+1): j ≥ K: spread(ρ(j)/ρ(j−K)) clamped; j < K: 1/ρ(j).
    func closedForm(K: Int, alpha: Double, floor: Double?, log useLog: Bool) -> [[Double]] {
        let T = epochs[0][0].count
        let means = epochs.map { steps in
            (0..<T).map { t in steps.map { useLog ? Foundation.log(1 + $0[t] + eta) : $0[t] }.reduce(0, +) / Double(steps.count) }
        }
        let rho = means.map { m in m.map { $0 / m.reduce(0, +) } }
        var out: [[Double]] = [[Double](repeating: 1, count: T)]
        for e in 1..<epochs.count {
            let j = e - 1
            if j >= K {
                let w = (0..<T).map { rho[j][$0] / rho[j - K][$0] }
                let mean = w.reduce(0, +) / Double(T)
                out.append(w.map { v in
                    let s = mean + alpha * (v - mean)
                    return floor.map { max(s, $0) } ?? s
                })
            } else {
                out.append(rho[j].map { 1 / $0 })
            }
        }
        return out
    }

    /// Runs the method over the scripted epochs; returns (w logs, coefficients) per step.
    func run(_ m: MultiTaskMethod) throws -> [(epoch: Int, losses: [Double], w: [Double], coef: [Double], dec: [Double])] {
        var res: [(Int, [Double], [Double], [Double], [Double])] = []
        var step = 0
        for (e, steps) in epochs.enumerated() {
            for (i, L) in steps.enumerated() {
                let r = try m.apply(context(step: step, epoch: e, T: 3, losses: L, epochEnded: e > 0 && i == 0))
                XCTAssertEqual(r.logs.map { $0.0 }, ["w.seg", "w.depth", "w.normal"])
                res.append((e, L, r.logs.map { $0.1 }, r.alpha, r.decoderWeights))
                step += 1
            }
        }
        return res
    }

    func checkPaper(K: Int, alpha: Double, params: [String: String]) throws {
        let expected = closedForm(K: K, alpha: alpha, floor: 1e-3, log: true)
        let rows = try run(try make("lps", T: 3, params))
        for r in rows {
            assertClose(r.w, expected[r.epoch], 1e-13, "K=\(K) epoch \(r.epoch) weights")
            assertClose(r.coef, (0..<3).map { expected[r.epoch][$0] / (1 + r.losses[$0] + eta) }, 1e-13, "K=\(K) coefficients")
            XCTAssertEqual(r.dec, r.coef)
        }
        // The scripted shares really move: the history weights are not all 1 and not the warm-up ones.
        let last = expected[expected.count - 1]
        XCTAssertGreaterThan(last.max()! - last.min()!, 0.05, "\(last)")
    }

    func testPaperClosedFormK1WithSpread() throws {
        try checkPaper(K: 1, alpha: 2.5, params: [:])   // the defaults: history 1, spread 2.5, warm-up inverse
        let w = closedForm(K: 1, alpha: 2.5, floor: 1e-3, log: true)
        // After epoch 0 the inverse shares (≈ T for balanced log-losses), no spread.
        XCTAssertTrue(w[1].allSatisfy { $0 > 1 }, "\(w[1])")
    }

    func testPaperClosedFormK3WithSpread() throws {
        try checkPaper(K: 3, alpha: 4.0, params: ["history": "3", "spread": "4"])
        let w = closedForm(K: 3, alpha: 4.0, floor: 1e-3, log: true)
        // Epochs 1..3 still use the inverse shares of the latest epoch; epoch 4 is the first ratio over 3 epochs.
        XCTAssertEqual(w[3].count, 3)
        XCTAssertNotEqual(w[4], w[3])
    }

    func testPaperWarmupOnesAndFloor() throws {
        // warm-up ones: w = 1 until K+1 epoch means exist.
        let rows = try run(try make("lps", T: 3, ["warmup": "ones", "history": "2"]))
        let cf = closedForm(K: 2, alpha: 2.5, floor: 1e-3, log: true)
        for r in rows {
            let want = r.epoch <= 2 ? [1.0, 1, 1] : cf[r.epoch]
            assertClose(r.w, want, 1e-13, "epoch \(r.epoch)")
        }
        // A large spread drives a weight below zero: clamped at the floor.
        let big = try run(try make("lps", T: 3, ["spread": "200", "floor": "0.01"]))
        let raw = closedForm(K: 1, alpha: 200, floor: nil, log: true)
        XCTAssertTrue(raw.joined().contains { $0 < 0 }, "the test needs a negative spread weight")
        for r in big { assertClose(r.w, raw[r.epoch].map { max($0, 0.01) }, 1e-12) }
    }

    func testCodeModeIsEWAndLogsTheCodeWeights() throws {
        let ew = try make("ew", T: 3)
        let rows = try run(try make("lps", T: 3, ["mode": "code", "spread": "7.5"]))
        // The code's arithmetic on RAW epoch means: epoch 0 → L_tot/L_t; then
        // (L_t(e)/L_t(e−1)) / (L_tot(e)/L_tot(e−1)), spread 7.5, no clamp.
        let raw = closedForm(K: 1, alpha: 7.5, floor: nil, log: false)
        XCTAssertTrue(raw.joined().contains { $0 < 0 }, "the scripted run should show the code's unclamped negative weights")
        for (i, r) in rows.enumerated() {
            let e = try ew.apply(context(step: i, epoch: r.epoch, T: 3, losses: r.losses))
            XCTAssertEqual(r.coef, e.alpha, "code mode trains EW")
            XCTAssertEqual(r.dec, e.decoderWeights)
            assertClose(r.w, raw[r.epoch], 1e-13, "epoch \(r.epoch) code weights (logged, unused)")
        }
    }

    func testStateRoundTripMidEpochAndModeCheck() throws {
        for params in [["history": "3"], ["mode": "code"]] {
            let a = try make("lps", T: 3, params)
            var step = 0
            var flatSteps: [(Int, [Double], Bool)] = []
            for (e, steps) in epochs.enumerated() {
                for (i, L) in steps.enumerated() { flatSteps.append((e, L, e > 0 && i == 0)) }
            }
            for s in flatSteps[0..<8] { _ = try a.apply(context(step: step, epoch: s.0, T: 3, losses: s.1, epochEnded: s.2)); step += 1 }
            let saved = a.stateValues()
            XCTAssertEqual(Set(saved.keys), Set(["epoch.sums", "epoch.steps", "epoch.last", "epoch.history", "lps.mode", "lps.terms"]))
            let b = try make("lps", T: 3, params)
            try b.loadState(saved)
            XCTAssertEqual(b.stateValues(), saved)
            for s in flatSteps[8...] {
                let ra = try a.apply(context(step: step, epoch: s.0, T: 3, losses: s.1, epochEnded: s.2))
                let rb = try b.apply(context(step: step, epoch: s.0, T: 3, losses: s.1, epochEnded: s.2))
                XCTAssertEqual(ra.alpha, rb.alpha)
                XCTAssertEqual(ra.logs.map { $0.1 }, rb.logs.map { $0.1 })
                step += 1
            }
            XCTAssertEqual(a.stateValues(), b.stateValues())
            // The other mode refuses this state; a state without lps.mode (older checkpoints) is paper mode.
            let other = try make("lps", T: 3, params["mode"] == "code" ? ["mode": "paper"] : ["mode": "code", "history": "3"])
            XCTAssertThrowsError(try other.loadState(saved)) { XCTAssertTrue("\($0)".contains("saved with mode"), "\($0)") }
            var old = saved
            old["lps.mode"] = nil
            if params["mode"] != "code" { XCTAssertNoThrow(try b.loadState(old)) }
        }
    }

    // MARK: per-term projection (MT-CP's intermediate predictions)

    /// The two intermediate terms of a step whose final term is `f`: scripted apart from the final (and from
    /// each other), so that means or projections of the task total would not match the closed form.
    func intermediates(_ f: Double, _ t: Int) -> [Double] { [1.6 * f + 0.3 * Double(t + 1), 0.55 * f + 0.05] }

    /// The per-term context: termLosses [final, inter 1, inter 2] per task; losses = the task totals
    /// final + ½ Σ inter (what the engine hands every method).
    func termContext(step: Int, epoch: Int, finals: [Double], epochEnded: Bool) -> MethodContext {
        let terms = finals.indices.map { [finals[$0]] + intermediates(finals[$0], $0) }
        return MethodContext(step: step, epoch: epoch, seed: 7, roles: roles(3), losses: terms.map { $0[0] + 0.5 * ($0[1] + $0[2]) },
                             termLosses: terms, epochEnded: epochEnded)
    }

    /// Paper mode with intermediate terms: the weights are the closed form of the FINAL terms' log epoch
    /// means (history K, spread α, floor), and every term k of task t is trained with w_t / (1 + L_t^k + η)
    /// — the final through the task coefficient, each intermediate through coefficient × termScale.
    func checkPaperTerms(K: Int, alpha: Double, params: [String: String]) throws {
        let expected = closedForm(K: K, alpha: alpha, floor: 1e-3, log: true)
        let m = try make("lps", T: 3, params)
        XCTAssertTrue(m.scalesLossTerms)
        var step = 0
        for (e, steps) in epochs.enumerated() {
            for (i, finals) in steps.enumerated() {
                let ctx = termContext(step: step, epoch: e, finals: finals, epochEnded: e > 0 && i == 0)
                let r = try m.apply(ctx)
                step += 1
                assertClose(r.logs.map { $0.1 }, expected[e], 1e-13, "K=\(K) epoch \(e) weights")
                assertClose(r.alpha, (0..<3).map { expected[e][$0] / (1 + finals[$0] + eta) }, 1e-13, "K=\(K) task coefficients")
                XCTAssertEqual(r.decoderWeights, r.alpha)
                let scales = try XCTUnwrap(r.termScales, "paper mode with intermediate terms returns term scales")
                XCTAssertNoThrow(try r.checkTermScales(ctx, method: "lps"))
                for t in 0..<3 {
                    XCTAssertEqual(scales[t][0], 1, "the final term's factor is in the task coefficient")
                    let effective = scales[t].map { $0 * r.alpha[t] }
                    assertClose(effective, ctx.termLosses[t].map { expected[e][t] / (1 + $0 + eta) }, 1e-13,
                                "K=\(K) epoch \(e) task \(t): each term's own w/(1 + L^k + η)")
                }
            }
        }
        let last = expected[expected.count - 1]
        XCTAssertGreaterThan(last.max()! - last.min()!, 0.05, "\(last)")
    }

    func testPaperPerTermClosedFormK1WithSpread() throws {
        try checkPaperTerms(K: 1, alpha: 2.5, params: [:])
    }

    func testPaperPerTermClosedFormK3WithSpread() throws {
        try checkPaperTerms(K: 3, alpha: 4.0, params: ["history": "3", "spread": "4"])
    }

    /// Code mode with intermediate terms: EW (coefficient 1, no term scales) and the logged code weights from
    /// the RAW final-term epoch means (train_nyud's loss1..3 are the final predictions' losses).
    func testCodeModeWithTermsIsEWOnFinalMeans() throws {
        let m = try make("lps", T: 3, ["mode": "code", "spread": "7.5"])
        XCTAssertFalse(m.scalesLossTerms)
        let raw = closedForm(K: 1, alpha: 7.5, floor: nil, log: false)
        var step = 0
        for (e, steps) in epochs.enumerated() {
            for (i, finals) in steps.enumerated() {
                let r = try m.apply(termContext(step: step, epoch: e, finals: finals, epochEnded: e > 0 && i == 0))
                step += 1
                XCTAssertEqual(r.alpha, [1, 1, 1])
                XCTAssertNil(r.termScales)
                assertClose(r.logs.map { $0.1 }, raw[e], 1e-13, "epoch \(e) code weights")
            }
        }
    }

    /// Without intermediate terms nothing changes: no term scales, the task coefficient w/(1 + L + η).
    /// A state from before `lps.terms` (means of task totals) is refused once intermediate terms show up,
    /// and accepted for decoders without them.
    func testOneTermAndStatesBeforeTerms() throws {
        let m = try make("lps", T: 3)
        let r = try m.apply(context(step: 0, T: 3, losses: [1, 2, 3]))
        XCTAssertNil(r.termScales)
        var old = m.stateValues()
        XCTAssertEqual(old["lps.terms"], [1])
        old["lps.terms"] = nil
        let a = try make("lps", T: 3)
        try a.loadState(old)
        XCTAssertThrowsError(try a.apply(termContext(step: 1, epoch: 0, finals: [1, 2, 3], epochEnded: false))) {
            XCTAssertTrue("\($0)".contains("saved before LPS projected each loss term"), "\($0)")
            XCTAssertFalse("\($0)".contains("\n"))
        }
        let b = try make("lps", T: 3)
        try b.loadState(old)
        XCTAssertNoThrow(try b.apply(context(step: 1, T: 3, losses: [1, 2, 3])))
        XCTAssertEqual(b.stateValues()["lps.terms"], [1])
        var bad = m.stateValues()
        bad["lps.terms"] = [2]
        XCTAssertThrowsError(try make("lps", T: 3).loadState(bad)) { XCTAssertTrue("\($0)".contains("'lps.terms' is [2.0], expected [1]"), "\($0)") }
        // Term scales of the wrong shape are one-line errors naming the method.
        let ctx = termContext(step: 0, epoch: 0, finals: [1, 2, 3], epochEnded: false)
        let wrong = MethodResult(.lossWeights([1, 1, 1]), termScales: [[1, 1], [1, 1, 1], [1, 1, 1]])
        XCTAssertThrowsError(try wrong.checkTermScales(ctx, method: "x")) {
            XCTAssertEqual("\($0)", "method x: returned 2 term scales for task 0, expected 3 (its loss terms)")
        }
    }

    func testParameters() {
        XCTAssertThrowsError(try make("lps", T: 2, ["mode": "papr"])) { XCTAssertTrue("\($0)".contains("did you mean 'paper'"), "\($0)") }
        XCTAssertThrowsError(try make("lps", T: 2, ["history": "0"]))
        XCTAssertThrowsError(try make("lps", T: 2, ["warmup": "zero"]))
    }
}
