import MTLCore

/// GCS, gradient cosine similarity for auxiliary tasks (METHODS.md §13).
/// Shared gradient g_p + Σ_k c_k g_k with c_k = 1[cos(g_p, g_k) > 0] (default, the "hard"
/// version used by IAL and AuxiLearn) or c_k = max(0, cos) with `weighted` = true.
/// Decoders: every task's own loss with weight 1. A zero-norm gradient has cosine 0.
final class GCS: MultiTaskMethod {
    let name = "gcs"
    let needsGram = true
    let needsGradients = false
    let tasks: TaskSet
    let weighted: Bool
    let primary: Int

    init(_ tasks: TaskSet, _ p: inout MethodParams) throws {
        self.tasks = tasks
        weighted = try p.bool("weighted", false)
        primary = try tasks.singlePrimary("gcs")
    }

    func apply(_ ctx: MethodContext) throws -> MethodResult {
        try check(ctx, name, tasks, gram: true)
        let T = tasks.count, K = ctx.gram!, p = primary
        var alpha = [Double](repeating: 0, count: T)
        var cosines = [Double](repeating: 1, count: T)
        alpha[p] = 1
        for k in 0..<T where k != p {
            let d = (K[p * T + p] * K[k * T + k]).squareRoot()
            let cos = d > 0 ? K[p * T + k] / d : 0
            cosines[k] = cos
            alpha[k] = weighted ? max(0, cos) : (cos > 0 ? 1 : 0)
        }
        let aux = tasks.auxiliaries
        return MethodResult(.coefficients(shared: alpha, decoder: [Double](repeating: 1, count: T)),
                            logs: taskLogs("cos", cosines, tasks.names, only: aux) + taskLogs("w", alpha, tasks.names, only: aux))
    }

    func stateValues() -> [String: [Double]] { [:] }
    func loadState(_ state: [String: [Double]]) throws { try checkStateKeys(state, name, []) }
}
