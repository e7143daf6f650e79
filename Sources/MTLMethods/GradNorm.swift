import Foundation
import MTLCore

/// GradNorm (METHODS.md §4), representation form: ‖∂L_t/∂z‖ = √K_tt from the Gram diagonal.
/// Learned w_t (init 1): G_t = w_t √K_tt, Ḡ = mean G, r_t = (L_t/L_t(0)) / mean_j(L_j/L_j(0)),
/// target C_t = Ḡ r_t^α held constant; ∂/∂w_t Σ|G_t − C_t| = sign(G_t − C_t) √K_tt.
/// The step uses the current w (loss-weighted: decoders and encoder), then w takes one Adam
/// step (own optimizer, `lr` 0.025) and is renormalised to Σw = T (floor 1e-6 before that,
/// so a large step cannot make a weight negative). L(0) = the first step's global losses
/// (original paper; LibMTL uses the epoch-0 mean). Keys: alpha (1.5), lr (0.025).
final class GradNorm: MultiTaskMethod {
    let name = "gradnorm"
    let needsGram = true
    let needsGradients = false
    let tasks: TaskSet
    let alpha: Double
    var w: [Double]
    var adam: ScalarAdam
    var initialLosses: [Double]? = nil

    init(_ tasks: TaskSet, _ p: inout MethodParams) throws {
        self.tasks = tasks
        alpha = try p.double("alpha", 1.5, min: 0)
        let lr = try p.double("lr", 0.025, min: 0)
        w = [Double](repeating: 1, count: tasks.count)
        adam = ScalarAdam(lr: lr, count: tasks.count)
    }

    func apply(_ ctx: MethodContext) throws -> MethodResult {
        try check(ctx, name, tasks, gram: true)
        let T = tasks.count, K = ctx.gram!
        if initialLosses == nil { initialLosses = ctx.losses }
        let L0 = initialLosses!
        let current = w
        let norm = (0..<T).map { K[$0 * T + $0].squareRoot() }
        let G = (0..<T).map { w[$0] * norm[$0] }
        let Gbar = G.reduce(0, +) / Double(T)
        let ratio = (0..<T).map { L0[$0] > 0 ? ctx.losses[$0] / L0[$0] : 1 }
        let meanRatio = ratio.reduce(0, +) / Double(T)
        let grad: [Double] = (0..<T).map { t in
            let r = meanRatio > 0 ? ratio[t] / meanRatio : 1
            let target = Gbar * pow(r, alpha)
            let diff = G[t] - target
            return (diff > 0 ? 1 : (diff < 0 ? -1 : 0)) * norm[t]
        }
        adam.step(&w, grad: grad)
        for t in 0..<T { w[t] = max(w[t], 1e-6) }
        let sum = w.reduce(0, +)
        w = w.map { $0 * Double(T) / sum }
        return MethodResult(.lossWeights(current), logs: taskLogs("w", current, tasks.names))
    }

    func stateValues() -> [String: [Double]] {
        var st = ["w": w].merging(adam.state("adam")) { a, _ in a }
        if let initialLosses { st["loss0"] = initialLosses }
        return st
    }

    func loadState(_ state: [String: [Double]]) throws {
        try checkStateKeys(state, name, ["w", "loss0"] + ScalarAdam.keys("adam"))
        w = try stateArray(state, name, "w", count: tasks.count)
        try adam.load(state, "adam", method: name)
        initialLosses = state["loss0"] == nil ? nil : try stateArray(state, name, "loss0", count: tasks.count)
    }
}
