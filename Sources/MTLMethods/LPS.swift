import Foundation
import MTLCore

/// LPS, loss prioritisation from MT-CP (METHODS.md §17; SEED-ARCHITECTURES.md §2.4; [A] items
/// reconstructed). Two modes (`method.lps.mode`):
///
/// `paper` (default), the scheme as the paper defines it:
///   log projection (eq. 3)  L̃_t = log(1 + L_t + η), η = 1e-6; the training loss Σ_t w_t L̃_t is realised
///                           as coefficients on the raw losses, ∂(w_t L̃_t)/∂L_t = w_t / (1 + L_t + η);
///   epoch means             L̄_t(e) = mean over the steps of epoch e of L̃_t (the GLOBAL, all-reduced
///                           per-step losses, so the same on every rank), ρ_t(e) = L̄_t(e) / Σ_u L̄_u(e);
///   priorities (eq. 4)      after epoch e, with history K (`history`):
///                           e ≥ K: w_t = ρ_t(e) / ρ_t(e−K), then the spread (eqs. 5-6)
///                                  w ← w̄ + α (w − w̄), α = `spread` (2.5), clamped below at `floor` (1e-3);
///                           e < K: w_t = 1/ρ_t(e) (`warmup` inverse, the default: the released code's
///                                  first-epoch weights, no spread), or 1 (`warmup` ones);
///                           during epoch 0: w = 1. The weights of epoch e+1 are those formed after epoch e.
/// `code`, what the released code trains (losses/loss_schemes.py `MultiTaskLoss.forward` forms the
///   weighted sum and then overwrites it with the unweighted one; the log is commented out): every
///   coefficient is 1, exactly EW. The code's weights are still computed, from the RAW epoch means
///   (no log, no floor, main_CL_nyud.py's arithmetic), and logged as `w.<task>` — they have no effect.
///
/// Keys: mode (paper|code), history (1), spread (2.5; the code's NYUD run uses 7.5), floor (1e-3,
/// paper mode only), warmup (inverse|ones). State: the epoch sums / counts / last K+1 means, and the mode.
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
    static let eta = 1e-6
    static let stateKeys = EpochMeans.keys + ["lps.mode"]

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
        for t in 0..<tasks.count where ctx.losses[t] < 0 {
            throw MTLError("method lps: needs non-negative losses, task \(tasks.names[t]) has \(ctx.losses[t])")
        }
        means.advance(ctx)
        let w = priorities()
        let coefficients: [Double]
        if isPaper {
            coefficients = (0..<tasks.count).map { w[$0] / (1 + ctx.losses[$0] + LPS.eta) }
            means.add(ctx.losses.map { log(1 + $0 + LPS.eta) })
        } else {
            coefficients = [Double](repeating: 1, count: tasks.count)
            means.add(ctx.losses)
        }
        return MethodResult(.lossWeights(coefficients),
                            logs: taskLogs("w", w, tasks.names))
    }

    func stateValues() -> [String: [Double]] {
        var s = means.state
        s["lps.mode"] = [isPaper ? 0 : 1]
        return s
    }

    func loadState(_ state: [String: [Double]]) throws {
        try checkStateKeys(state, name, LPS.stateKeys)
        // Checkpoints written before the mode existed have no "lps.mode": they are paper mode.
        if let m = state["lps.mode"], m != [isPaper ? 0 : 1] {
            throw MTLError("method lps state: saved with mode \(m == [1] ? "code" : "paper"), but method.lps.mode is \(mode)")
        }
        var rest = state
        rest["lps.mode"] = nil
        try means.load(rest, method: name)
    }
}
