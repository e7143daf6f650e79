import MTLCore

/// PCGrad (gradient surgery, METHODS.md §7), in the exact Gram/coefficient form.
/// v_i = Σ_k C_ik g_k starts at g_i (C = I). For j in a random order of the OTHER tasks:
/// <v_i, g_j> = (row i of C)·K[:, j]; if negative, project v_i off the ORIGINAL g_j:
/// C_ij −= <v_i, g_j> / K_jj. The shared gradient is Σ_i v_i = Σ_k β_k g_k, β = 1ᵀC.
/// Shared-override: decoders keep their unweighted gradients (weight 1).
/// Randomness: one permutation per task i, drawn in task order from methodRNG(seed, step).
/// Projections onto a zero gradient (K_jj = 0) are skipped (the reference's 1e-8 guard).
final class PCGrad: MultiTaskMethod {
    let name = "pcgrad"
    let needsGram = true
    let needsGradients = false
    let tasks: TaskSet

    init(_ tasks: TaskSet) { self.tasks = tasks }

    /// The order in which task i visits the other tasks, for every i (public so that tests and
    /// `mtl balance` cross-checks can replay the explicit vector form).
    static func permutations(seed: UInt64, step: Int, taskCount T: Int) -> [[Int]] {
        var rng = methodRNG(seed: seed, step: step)
        return (0..<T).map { i in rng.permutation(T - 1).map { $0 < i ? $0 : $0 + 1 } }
    }

    /// β = 1ᵀC and the number of projections made.
    static func coefficients(_ K: [Double], _ T: Int, orders: [[Int]]) -> (beta: [Double], projections: Int) {
        var C = [Double](repeating: 0, count: T * T)
        for i in 0..<T { C[i * T + i] = 1 }
        var projections = 0
        for i in 0..<T {
            for j in orders[i] {
                let kjj = K[j * T + j]
                if !(kjj > 0) { continue }
                var dot = 0.0
                for k in 0..<T { dot += C[i * T + k] * K[k * T + j] }
                if dot < 0 {
                    C[i * T + j] -= dot / kjj
                    projections += 1
                }
            }
        }
        var beta = [Double](repeating: 0, count: T)
        for i in 0..<T { for k in 0..<T { beta[k] += C[i * T + k] } }
        return (beta, projections)
    }

    func apply(_ ctx: MethodContext) throws -> MethodResult {
        try check(ctx, name, tasks, gram: true)
        let T = tasks.count
        let orders = PCGrad.permutations(seed: ctx.seed, step: ctx.step, taskCount: T)
        let (beta, projections) = PCGrad.coefficients(ctx.gram!, T, orders: orders)
        return MethodResult(.coefficients(shared: beta, decoder: [Double](repeating: 1, count: T)),
                            logs: [("pcgrad.projections", Double(projections))])
    }

    func stateValues() -> [String: [Double]] { [:] }
    func loadState(_ state: [String: [Double]]) throws { try checkStateKeys(state, name, []) }
}
