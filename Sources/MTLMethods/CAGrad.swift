import MTLCore

/// CAGrad, conflict-averse gradient descent (METHODS.md §9).
/// g0 = mean_t g_t, ‖g0‖ = √mean(K). w* = argmin_{w∈Δ} F(w) = wᵀK 1/T + c‖g0‖ √(wᵀKw + 1e-8),
/// g_w = Σ w*_t g_t, λ = c‖g0‖ / (‖g_w‖ + 1e-8), d = g0 + λ g_w, rescaled by 1 (`rescale` 0),
/// 1/(1+c²) (1, default) or 1/(1+c) (2), then × T (`times_tasks`, default true: magnitudes
/// match EW with weight 1, as in the CAGrad/nash-mtl training scripts). As coefficients:
///     α_t = (1/T + λ w*_t) / rescale · T.
/// Scale: F is homogeneous of degree 1 in K except for the reference's absolute epsilons, so we
/// solve with K / mean(diag K). The coefficients are then independent of the loss scale; the
/// reference's 1e-8 act at that unit scale (identical to the reference when mean diag K = 1;
/// representation-level Grams can be 1e-6 and the raw epsilons would dominate there).
/// Solver: accelerated projected gradient with exact simplex projection + Newton polishing on
/// the active face (Simplex.minimize), to a KKT residual of 1e-13. The reference uses SLSQP.
/// Shared-override: decoders weight 1. Keys: c (0.4), rescale (1), times_tasks (true).
final class CAGrad: MultiTaskMethod {
    let name = "cagrad"
    let needsGram = true
    let needsGradients = false
    let tasks: TaskSet
    let c: Double
    let rescale: Int
    let timesTasks: Bool

    init(_ tasks: TaskSet, _ p: inout MethodParams) throws {
        self.tasks = tasks
        c = try p.double("c", 0.4, min: 0)
        rescale = try p.int("rescale", 1, min: 0)
        if rescale > 2 { throw MTLError("method.cagrad.rescale: expected 0, 1 or 2, found \(rescale)") }
        timesTasks = try p.bool("times_tasks", true)
    }

    /// w* and λ for a Gram matrix (already scaled), plus the solver's KKT residual.
    static func solve(_ A: [Double], _ T: Int, c: Double) -> (w: [Double], lambda: Double, residual: Double) {
        var meanA = 0.0
        for v in A { meanA += v }
        meanA /= Double(T * T)
        let g0norm = (max(meanA, 0) + 1e-8).squareRoot()
        let cc = c * g0norm + 1e-8
        let b = [Double](repeating: 1 / Double(T), count: T)
        let Ab = Dense.matVec(A, b)
        let value: ([Double]) -> Double = { w in
            Dense.dot(w, Ab) + cc * (max(Dense.quad(A, w), 0) + 1e-8).squareRoot()
        }
        let gradient: ([Double]) -> [Double] = { w in
            let Aw = Dense.matVec(A, w)
            let q = (max(Dense.dot(w, Aw), 0) + 1e-8).squareRoot()
            return (0..<T).map { Ab[$0] + cc * Aw[$0] / q }
        }
        // ∇²F = cc (A/q − (Aw)(Aw)ᵀ/q³), q = √(wᵀAw + 1e-8).
        let hessian: ([Double]) -> [Double] = { w in
            let Aw = Dense.matVec(A, w)
            let q = (max(Dense.dot(w, Aw), 0) + 1e-8).squareRoot()
            var H = [Double](repeating: 0, count: T * T)
            for i in 0..<T { for j in 0..<T { H[i * T + j] = cc * (A[i * T + j] / q - Aw[i] * Aw[j] / (q * q * q)) } }
            return H
        }
        let (w, residual) = Simplex.minimize(n: T, start: b, value: value, gradient: gradient, hessian: hessian)
        let gw = max(Dense.quad(A, w), 0).squareRoot()
        return (w, cc / (gw + 1e-8), residual)
    }

    func apply(_ ctx: MethodContext) throws -> MethodResult {
        try check(ctx, name, tasks, gram: true)
        let T = tasks.count, K = ctx.gram!
        var scale = 0.0
        for t in 0..<T { scale += K[t * T + t] }
        scale /= Double(T)
        let A = scale > 0 ? K.map { $0 / scale } : K
        let (w, lambda, residual) = CAGrad.solve(A, T, c: c)
        let divisor = rescale == 1 ? 1 + c * c : (rescale == 2 ? 1 + c : 1)
        let factor = timesTasks ? Double(T) : 1
        let alpha = (0..<T).map { (1 / Double(T) + lambda * w[$0]) / divisor * factor }
        return MethodResult(.coefficients(shared: alpha, decoder: [Double](repeating: 1, count: T)),
                            logs: taskLogs("w", w, tasks.names) + [("cagrad.lambda", lambda), ("cagrad.kkt", residual)])
    }

    func stateValues() -> [String: [Double]] { [:] }
    func loadState(_ state: [String: [Double]]) throws { try checkStateKeys(state, name, []) }
}
