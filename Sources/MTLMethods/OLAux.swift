import MTLCore

/// OL-AUX, online learning of auxiliary weights (METHODS.md §14).
/// Loss L_p + Σ_k w_k L_k (decoders and encoder), w_k learned, primary fixed at 1.
/// Each step adds <g_p, g_k> = K_pk to an accumulator; every `every` steps
/// w_k ← w_k + β·η·Σ (the one-step look-ahead estimate of −∂L_p/∂w_k), then the accumulator
/// is reset. η is the model learning rate, which this module does not know: pass it as `eta`.
/// The step uses w before the update. Keys: beta (1.0), eta (0.01), every (5), init (1),
/// clamp (false: optionally keep w_k ≥ 0).
final class OLAux: MultiTaskMethod {
    let name = "olaux"
    let needsGram = true
    let needsGradients = false
    let tasks: TaskSet
    let primary: Int
    let beta: Double
    let eta: Double
    let every: Int
    let clamp: Bool
    var w: [Double]
    var accumulator: [Double]
    var accumulated = 0

    init(_ tasks: TaskSet, _ p: inout MethodParams) throws {
        self.tasks = tasks
        primary = try tasks.singlePrimary("olaux")
        beta = try p.double("beta", 1.0)
        eta = try p.double("eta", 0.01, min: 0)
        every = try p.int("every", 5, min: 1)
        let w0 = try p.double("init", 1.0)
        clamp = try p.bool("clamp", false)
        w = [Double](repeating: w0, count: tasks.count)
        w[primary] = 1
        accumulator = [Double](repeating: 0, count: tasks.count)
    }

    func apply(_ ctx: MethodContext) throws -> MethodResult {
        try check(ctx, name, tasks, gram: true)
        let T = tasks.count, K = ctx.gram!, p = primary
        let current = w
        for k in 0..<T where k != p { accumulator[k] += K[p * T + k] }
        accumulated += 1
        if accumulated == every {
            for k in 0..<T where k != p {
                w[k] += beta * eta * accumulator[k]
                if clamp { w[k] = max(w[k], 0) }
            }
            accumulator = [Double](repeating: 0, count: T)
            accumulated = 0
        }
        return MethodResult(.lossWeights(current),
                            logs: taskLogs("w", current, tasks.names, only: tasks.auxiliaries))
    }

    func stateValues() -> [String: [Double]] {
        ["w": w, "accumulator": accumulator, "accumulated": [Double(accumulated)]]
    }

    func loadState(_ state: [String: [Double]]) throws {
        try checkStateKeys(state, name, ["w", "accumulator", "accumulated"])
        w = try stateArray(state, name, "w", count: tasks.count)
        accumulator = try stateArray(state, name, "accumulator", count: tasks.count)
        accumulated = Int(try stateArray(state, name, "accumulated", count: 1)[0])
    }
}
