import Foundation
import MTLCore

/// LPS, loss prioritisation from MT-CP (METHODS.md §17; SEED-ARCHITECTURES.md §2.4; [A] items
/// reconstructed). Two modes (`method.lps.mode`):
///
/// `paper` (default), the scheme as the paper defines it:
///   log projection (eq. 3)  L̃ = log(1 + L + η), η = 1e-6, on every loss TERM: a task whose decoder has
///                           intermediate predictions (MT-CP) trains w_t [L̃_t + Σ_i a_i L̃_t^(i)] (eq. 7 as
///                           SEED-ARCHITECTURES.md §2.4 reconstructs it, a_i = ½); realised as coefficients on
///                           the raw terms, ∂(w_t L̃)/∂L = w_t / (1 + L + η): the task coefficient is the final
///                           term's, w_t / (1 + L_t + η), and `termScales` carry each intermediate term's
///                           (1 + L_t + η) / (1 + L_t^(i) + η) relative to it (none without intermediates);
///   epoch means             L̄_t(e) = mean over the steps of epoch e of L̃_t of the FINAL term (eq. 4 reads
///                           eq. 3's task loss; the code's epoch means are the final losses too), from the
///                           GLOBAL, all-reduced per-step losses, so the same on every rank; ρ_t(e) = L̄_t(e) / Σ_u L̄_u(e);
///   priorities (eq. 4)      after epoch e, with history K (`history`):
///                           e ≥ K: w_t = ρ_t(e) / ρ_t(e−K), then the spread (eqs. 5-6)
///                                  w ← w̄ + α (w − w̄), α = `spread` (2.5), clamped below at `floor` (1e-3);
///                           e < K: w_t = 1/ρ_t(e) (`warmup` inverse, the default: the released code's
///                                  first-epoch weights, no spread), or 1 (`warmup` ones);
///                           during epoch 0: w = 1. The weights of epoch e+1 are those formed after epoch e.
/// `code`, what the released code trains (losses/loss_schemes.py `MultiTaskLoss.forward` forms the
///   weighted sum and then overwrites it with the unweighted one; the log is commented out): every
///   coefficient is 1, exactly EW. The code's weights are still computed, from the RAW epoch means of
///   the final terms (no log, no floor, main_CL_nyud.py's arithmetic on train_nyud's final-prediction
///   losses), and logged as `w.<task>` — they have no effect.
///
/// Keys: mode (paper|code), history (1), spread (2.5; the code's NYUD run uses 7.5), floor (1e-3,
/// paper mode only), warmup (inverse|ones). State: the epoch sums / counts / last K+1 means, the mode, and
/// `lps.terms` (marks means of the final terms; states without it accumulated the task totals).
final class LPS: MultiTaskMethod {
    let name = "lps"
    let needsGram = false
    let needsGradients = false
    let tasks: TaskSet
    let mode: String
    let H: Int
    let spread: Double
    let floor: Double
    let warmup: String
    var means: EpochMeans
    /// A loaded state from before `lps.terms` (its means are of the task totals final + ½ Σ intermediates):
    /// refused at the first step that shows intermediate terms, where those differ from the final terms.
    var loadedTotals = false
    static let eta = 1e-6
    static let stateKeys = EpochMeans.keys + ["lps.mode", "lps.terms"]

    init(_ tasks: TaskSet, _ p: inout MethodParams) throws {
        self.tasks = tasks
        mode = try p.choice("mode", "paper", ["paper", "code"])
        H = try p.int("history", 1, min: 1)
        spread = try p.double("spread", 2.5)
        floor = try p.double("floor", 1e-3, min: 0)
        warmup = try p.choice("warmup", "inverse", ["inverse", "ones"])
        means = EpochMeans(count: tasks.count, keep: H + 1)
    }

    var isPaper: Bool { mode == "paper" }
    /// Paper mode projects each term; code mode trains EW and scales nothing.
    var scalesLossTerms: Bool { isPaper }

    /// The priority weights from the epoch history (the closed form above).
    func priorities() -> [Double] {
        let T = tasks.count
        let h = means.history
        if h.count >= H + 1 {
            let now = h[h.count - 1], then = h[h.count - 1 - H]
            let sumNow = now.reduce(0, +), sumThen = then.reduce(0, +)
            var w = (0..<T).map { t -> Double in
                let rhoNow = now[t] / sumNow, rhoThen = then[t] / sumThen
                return rhoThen > 0 && rhoNow.isFinite ? rhoNow / rhoThen : 1
            }
            let mean = w.reduce(0, +) / Double(T)
            w = w.map { mean + spread * ($0 - mean) }
            return isPaper ? w.map { max($0, floor) } : w
        }
        if warmup == "inverse", let last = h.last {
            let total = last.reduce(0, +)
            return last.map { $0 > 0 ? total / $0 : 1 }
        }
        return [Double](repeating: 1, count: T)
    }

    func apply(_ ctx: MethodContext) throws -> MethodResult {
        try check(ctx, name, tasks)
        for t in 0..<tasks.count {
            if let bad = ctx.termLosses[t].first(where: { $0 < 0 }) {
                throw MTLError("method lps: needs non-negative losses, task \(tasks.names[t]) has a loss term \(bad)")
            }
        }
        let intermediates = ctx.termLosses.contains { $0.count > 1 }
        if loadedTotals && intermediates && (means.steps > 0 || !means.history.isEmpty) {
            throw MTLError("method lps state: saved before LPS projected each loss term (its epoch means are of the task totals, final + intermediates), and this decoder has intermediate predictions; start a new run")
        }
        loadedTotals = false
        // The final term of every task: eq. 3's L_t, the one the epoch means and the task coefficient read.
        let finals = ctx.termLosses.map { $0[0] }
        means.advance(ctx)
        let w = priorities()
        let coefficients: [Double]
        var termScales: [[Double]]? = nil
        if isPaper {
            coefficients = (0..<tasks.count).map { w[$0] / (1 + finals[$0] + LPS.eta) }
            if intermediates {
                // Term k's coefficient w_t/(1 + L^k + η) = the task coefficient × (1 + L^0 + η)/(1 + L^k + η).
                termScales = ctx.termLosses.map { terms in terms.map { (1 + terms[0] + LPS.eta) / (1 + $0 + LPS.eta) } }
            }
            means.add(finals.map { log(1 + $0 + LPS.eta) })
        } else {
            coefficients = [Double](repeating: 1, count: tasks.count)
            means.add(finals)
        }
        return MethodResult(.lossWeights(coefficients),
                            logs: taskLogs("w", w, tasks.names), termScales: termScales)
    }

    func stateValues() -> [String: [Double]] {
        var s = means.state
        s["lps.mode"] = [isPaper ? 0 : 1]
        s["lps.terms"] = [1]
        return s
    }

    func loadState(_ state: [String: [Double]]) throws {
        try checkStateKeys(state, name, LPS.stateKeys)
        // Checkpoints written before the mode existed have no "lps.mode": they are paper mode.
        if let m = state["lps.mode"], m != [isPaper ? 0 : 1] {
            throw MTLError("method lps state: saved with mode \(m == [1] ? "code" : "paper"), but method.lps.mode is \(mode)")
        }
        if let v = state["lps.terms"], v != [1] {
            throw MTLError("method lps state: 'lps.terms' is \(v), expected [1]")
        }
        var rest = state
        rest["lps.mode"] = nil
        rest["lps.terms"] = nil
        try means.load(rest, method: name)
        loadedTotals = state["lps.terms"] == nil
    }
}
