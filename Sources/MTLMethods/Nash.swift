import Foundation
import MTLCore

/// Nash-MTL (METHODS.md §11), option (b): the bargaining solution α > 0 with K α = 1/α is the
/// stationary point of the convex f(α) = ½ αᵀK̂α − Σ log α (K̂ = K/‖K‖_F + eps·I), found by
/// damped Newton (∇²f = K̂ + diag(1/α²) is positive definite, so every step is a descent
/// direction; backtracking keeps α > 0), warm-started from the previous step's solution.
/// The reference (CVXPY/ECOS, CCCP) constrains α_i (Kα)_i ≥ 1 with the RAW K (its
/// normalisation factor cancels in the constraint), so we return the raw solution
/// α = α̂ / √‖K‖_F, for which Σα_t g_t has norm √(αᵀKα) = √T. METHODS.md's note reads the
/// reference as solving with K̂ instead (α × √‖K‖_F); after the max_norm clipping both give
/// the same update whenever the unclipped norm exceeds max_norm (always, for T ≥ 2 and
/// max_norm = 1, with the raw solution).
/// Clipping: the reference clips the shared-parameter gradient to `max_norm` (1.0; 0 = off).
/// At the parameter level its norm is √(αᵀKα), so the encoder coefficients are scaled by
/// min(1, max_norm/√(αᵀKα)); decoders are weighted by the unclipped α (Σ α_t L_t).
/// eps = 1e-8 keeps f bounded when K is singular with opposing gradients (no solution without).
/// Keys: max_norm (1.0), update_every (1), max_iter (100), eps (1e-8).
final class Nash: MultiTaskMethod {
    let name = "nash"
    let needsGram = true
    let needsGradients = false
    let tasks: TaskSet
    let maxNorm: Double
    let updateEvery: Int
    let maxIter: Int
    let eps: Double
    /// Normalised-problem solution (warm start) and the last raw α (reused between updates).
    var alphaHat: [Double]? = nil
    var alphaRaw: [Double]? = nil

    init(_ tasks: TaskSet, _ p: inout MethodParams) throws {
        self.tasks = tasks
        maxNorm = try p.double("max_norm", 1.0, min: 0)
        updateEvery = try p.int("update_every", 1, min: 1)
        maxIter = try p.int("max_iter", 100, min: 1)
        eps = try p.double("eps", 1e-8, min: 0)
    }

    /// Damped Newton for K α = 1/α from `start` (> 0). Returns α, ‖Kα − 1/α‖₂ and the iteration count.
    static func solve(_ K: [Double], _ T: Int, start: [Double], maxIter: Int) -> (alpha: [Double], residual: Double, iterations: Int) {
        func f(_ a: [Double]) -> Double {
            var s = 0.5 * Dense.quad(K, a)
            for x in a { s -= log(x) }
            return s
        }
        var alpha = start
        var iterations = 0
        var gradNorm = Double.infinity
        for _ in 0..<maxIter {
            let Ka = Dense.matVec(K, alpha)
            let g = (0..<T).map { Ka[$0] - 1 / alpha[$0] }
            // Scale-free stop: α_i (Kα)_i = 1 to within rounding.
            var worst = 0.0
            for i in 0..<T { worst = max(worst, abs(alpha[i] * Ka[i] - 1)) }
            if worst < 1e-12 { break }
            var H = K
            for i in 0..<T { H[i * T + i] += 1 / (alpha[i] * alpha[i]) }
            guard let d = Dense.solve(H, g.map { -$0 }, relTol: 1e-300) else { break }
            let slope = Dense.dot(g, d)
            // −slope is the squared Newton decrement, ≈ 2(f − f*).
            if !(slope < 0) { break }
            var t = 1.0
            while t > 1e-12, (0..<T).contains(where: { alpha[$0] + t * d[$0] <= 0 }) { t *= 0.5 }
            if -slope > 1e-8 {
                // Damped phase: Armijo backtracking on f.
                let f0 = f(alpha)
                while t > 1e-12 {
                    let trial = (0..<T).map { alpha[$0] + t * d[$0] }
                    if f(trial) <= f0 + 1e-4 * t * slope { break }
                    t *= 0.5
                }
                if t <= 1e-12 { break }
            } else {
                // Quadratic phase: f differences are below rounding, so judge the step by the
                // residual ‖∇f‖ instead and stop once it no longer decreases.
                let gn = g.reduce(0) { $0 + $1 * $1 }
                if gn >= gradNorm { break }
                gradNorm = gn
            }
            alpha = (0..<T).map { alpha[$0] + t * d[$0] }
            iterations += 1
        }
        let Ka = Dense.matVec(K, alpha)
        var r = 0.0
        for i in 0..<T { let e = Ka[i] - 1 / alpha[i]; r += e * e }
        return (alpha, r.squareRoot(), iterations)
    }

    func apply(_ ctx: MethodContext) throws -> MethodResult {
        try check(ctx, name, tasks, gram: true)
        let T = tasks.count, K = ctx.gram!
        var logs: [(String, Double)] = []
        if alphaRaw == nil || ctx.step % updateEvery == 0 {
            var nf = 0.0
            for v in K { nf += v * v }
            nf = nf.squareRoot()
            if nf > 0 {
                var Kh = K.map { $0 / nf }
                for i in 0..<T { Kh[i * T + i] += eps }
                let start = alphaHat ?? [Double](repeating: 1, count: T)
                let (a, residual, iterations) = Nash.solve(Kh, T, start: start, maxIter: maxIter)
                alphaHat = a
                alphaRaw = a.map { $0 / nf.squareRoot() }
                logs += [("nash.residual", residual), ("nash.iterations", Double(iterations))]
            } else if alphaRaw == nil {
                alphaRaw = [Double](repeating: 1, count: T)  // all gradients zero: any α gives 0
            }
        }
        let alpha = alphaRaw!
        let norm = max(Dense.quad(K, alpha), 0).squareRoot()
        let clip = maxNorm > 0 && norm > maxNorm ? maxNorm / norm : 1
        return MethodResult(.coefficients(shared: alpha.map { $0 * clip }, decoder: alpha),
                            logs: taskLogs("w", alpha, tasks.names) + logs + [("nash.clip", clip)])
    }

    func stateValues() -> [String: [Double]] {
        var st: [String: [Double]] = [:]
        if let alphaHat { st["alpha_hat"] = alphaHat }
        if let alphaRaw { st["alpha"] = alphaRaw }
        return st
    }

    func loadState(_ state: [String: [Double]]) throws {
        try checkStateKeys(state, name, ["alpha_hat", "alpha"])
        alphaHat = state["alpha_hat"] == nil ? nil : try stateArray(state, name, "alpha_hat", count: tasks.count)
        alphaRaw = state["alpha"] == nil ? nil : try stateArray(state, name, "alpha", count: tasks.count)
    }
}
