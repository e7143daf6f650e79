import MTLCore

/// MGDA (min-norm point, METHODS.md §6); MGDA-UB when the trainer gives the representation Gram.
/// α = argmin_{α∈Δ} αᵀ K̂ α, K̂_st = K_st / (n_s n_t), n_t by `normalizer`:
/// none (default) → 1, l2 → ‖g_t‖, loss → L_t, loss+ → L_t ‖g_t‖. Solved by the reference's
/// Frank–Wolfe (MinNorm.frankWolfe). As in the original, α weights the RAW losses (decoders
/// included); `times_tasks` (false) multiplies α by T as nash-mtl does.
/// A zero normaliser (zero gradient or zero loss) is replaced by 1, so that ĝ_t stays finite.
final class MGDA: MultiTaskMethod {
    let name = "mgda"
    let needsGram = true
    let needsGradients = false
    let tasks: TaskSet
    let normalizer: String
    let timesTasks: Bool

    init(_ tasks: TaskSet, _ p: inout MethodParams) throws {
        self.tasks = tasks
        normalizer = try p.choice("normalizer", "none", ["none", "l2", "loss", "loss+"])
        timesTasks = try p.bool("times_tasks", false)
    }

    func apply(_ ctx: MethodContext) throws -> MethodResult {
        try check(ctx, name, tasks, gram: true)
        let T = tasks.count, K = ctx.gram!
        let n: [Double] = (0..<T).map { t in
            let norm = K[t * T + t].squareRoot(), loss = ctx.losses[t]
            let v: Double
            switch normalizer {
            case "l2": v = norm
            case "loss": v = loss
            case "loss+": v = loss * norm
            default: v = 1
            }
            return v > 0 && v.isFinite ? v : 1
        }
        var Kn = K
        for s in 0..<T { for t in 0..<T { Kn[s * T + t] = K[s * T + t] / (n[s] * n[t]) } }
        var alpha = MinNorm.frankWolfe(Kn, T)
        if timesTasks { alpha = alpha.map { $0 * Double(T) } }
        return MethodResult(.lossWeights(alpha),
                            logs: taskLogs("w", alpha, tasks.names))
    }

    func stateValues() -> [String: [Double]] { [:] }
    func loadState(_ state: [String: [Double]]) throws { try checkStateKeys(state, name, []) }
}
