import Foundation
import MTLCore

/// LPS, loss prioritisation from MT-CP (METHODS.md §17; [A] items reconstructed).
/// Log projection L̂_t = log(1 + L_t + η), η = 1e-6; training loss Σ w_t L̂_t, which the trainer
/// realises as coefficients on the raw losses: ∂(w_t L̂_t)/∂L_t = w_t / (1 + L_t + η).
/// Once per epoch: L̄_t(e) = epoch mean of L̂_t (global), share ρ_t(e) = L̄_t(e)/Σ_j L̄_j(e),
/// w_t = ρ_t(e)/ρ_t(e−H); spread w ← w̄ + β(w − w̄) with β = `spread` (2.5), floored at 1e-3.
/// Until H+1 epoch means exist: w = 1 (`warmup` ones, default) or, once one epoch mean exists,
/// the released code's inverse share L̄_tot/L̄_t (`warmup` inverse). Loss-weighted.
/// Keys: history (1), spread (2.5), floor (1e-3), warmup (ones|inverse).
final class LPS: MultiTaskMethod {
    let name = "lps"
    let needsGram = false
    let needsGradients = false
    let tasks: TaskSet
    let H: Int
    let spread: Double
    let floor: Double
    let warmup: String
    var means: EpochMeans
    static let eta = 1e-6

    init(_ tasks: TaskSet, _ p: inout MethodParams) throws {
        self.tasks = tasks
        H = try p.int("history", 1, min: 1)
        spread = try p.double("spread", 2.5)
        floor = try p.double("floor", 1e-3, min: 0)
        warmup = try p.choice("warmup", "ones", ["ones", "inverse"])
        means = EpochMeans(count: tasks.count, keep: H + 1)
    }

    /// The priority weights from the epoch history.
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
            w = w.map { max(mean + spread * ($0 - mean), floor) }
            return w
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
        let coefficients = (0..<tasks.count).map { w[$0] / (1 + ctx.losses[$0] + LPS.eta) }
        means.add(ctx.losses.map { log(1 + $0 + LPS.eta) })
        return MethodResult(encoderCoefficients: coefficients, decoderWeights: coefficients,
                            logs: taskLogs("w", w, tasks.names))
    }

    func stateValues() -> [String: [Double]] { means.state }
    func loadState(_ state: [String: [Double]]) throws {
        try checkStateKeys(state, name, EpochMeans.keys)
        try means.load(state, method: name)
    }
}
