import MTLCore

/// Aligned-MTL (METHODS.md §12), PARAM ('amtl') or REP ('amtlub') depending on the Gram given.
/// K = V diag(λ) Vᵀ (Jacobi); keep λ > λ_max · T · ε_float32, sorted descending (rank r);
/// B = √λ_scale · V_r diag(λ_r^{-1/2}) V_rᵀ with λ_scale = the smallest kept (`scale` min,
/// default), the lower median (median, as torch.median) or the mean (rmse). The aligned task
/// gradients B·[g_t] have Gram λ_scale·V_r V_rᵀ (orthogonal, equal norms when full rank); the
/// shared gradient is their sum, i.e. α = B·1. Shared-override: decoders weight 1, or α with
/// `scale_decoder` = true. Eigenvector signs cancel in B. All-zero Gram → α = 0.
final class Aligned: MultiTaskMethod {
    let name = "aligned"
    let needsGram = true
    let needsGradients = false
    let tasks: TaskSet
    let scaleMode: String
    let scaleDecoder: Bool

    init(_ tasks: TaskSet, _ p: inout MethodParams) throws {
        self.tasks = tasks
        scaleMode = try p.choice("scale", "min", ["min", "median", "rmse"])
        scaleDecoder = try p.bool("scale_decoder", false)
    }

    static func weights(_ K: [Double], _ T: Int, scaleMode: String) -> (alpha: [Double], rank: Int) {
        let (lam, V) = Dense.symmetricEigen(K, T)
        let lmax = lam.max() ?? 0
        let tol = lmax * Double(T) * Double(Float.ulpOfOne)
        // Descending, ties broken by index so the order is deterministic.
        let kept = (0..<T).filter { lam[$0] > tol && lam[$0] > 0 }.sorted { lam[$0] != lam[$1] ? lam[$0] > lam[$1] : $0 < $1 }
        let r = kept.count
        guard r > 0 else { return ([Double](repeating: 0, count: T), 0) }
        let scale: Double
        switch scaleMode {
        case "median": scale = lam[kept[r - 1 - (r - 1) / 2]]  // lower median of the kept values
        case "rmse": scale = kept.reduce(0) { $0 + lam[$1] } / Double(r)
        default: scale = lam[kept[r - 1]]
        }
        var alpha = [Double](repeating: 0, count: T)
        for k in kept {
            var colSum = 0.0
            for j in 0..<T { colSum += V[j * T + k] }
            let f = (scale / lam[k]).squareRoot() * colSum
            for i in 0..<T { alpha[i] += f * V[i * T + k] }
        }
        return (alpha, r)
    }

    func apply(_ ctx: MethodContext) throws -> MethodResult {
        try check(ctx, name, tasks, gram: true)
        let T = tasks.count
        let (alpha, rank) = Aligned.weights(ctx.gram!, T, scaleMode: scaleMode)
        return MethodResult(scaleDecoder ? .lossWeights(alpha) : .coefficients(shared: alpha, decoder: [Double](repeating: 1, count: T)),
                            logs: taskLogs("w", alpha, tasks.names) + [("aligned.rank", Double(rank))])
    }

    func stateValues() -> [String: [Double]] { [:] }
    func loadState(_ state: [String: [Double]]) throws { try checkStateKeys(state, name, []) }
}
