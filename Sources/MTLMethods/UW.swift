import Foundation
import MTLCore

/// The learned log-variances s_t = log σ_t² of uncertainty weighting, shared by UW and IAL.
/// Loss Σ_t [a e^{-s_t} L_t + r s_t] (Kendall: a = r = ½; KEM's training, SEED-ARCHITECTURES §3.3:
/// a = 10, r = 1, L_t already carrying the task weight λ_t); ∂/∂s_t = r − a e^{-s_t} L_t depends on
/// task t's own loss only. The s_t are trained here with their own Adam (nash-mtl style, lr 0.025)
/// from the GLOBAL losses, so every rank holds the same s and nothing rides the all-reduce.
struct Uncertainty {
    var s: [Double]
    var adam: ScalarAdam
    /// a and r above.
    let scale: Double, regularizer: Double

    init(count: Int, initial: Double, lr: Double, scale: Double = 0.5, regularizer: Double = 0.5) {
        s = [Double](repeating: initial, count: count)
        adam = ScalarAdam(lr: lr, count: count)
        self.scale = scale
        self.regularizer = regularizer
    }

    /// The effective loss weights a e^{-s_t}.
    var weights: [Double] { s.map { scale * exp(-$0) } }
    /// σ_t = e^{s_t / 2}.
    var sigmas: [Double] { s.map { exp(0.5 * $0) } }

    /// One Adam step on s from this step's losses. Called AFTER the step's weights were taken:
    /// in autograd terms the weights use s_k and the optimizer then moves s_k → s_{k+1}.
    mutating func update(losses: [Double]) {
        let grad = (0..<s.count).map { regularizer - scale * exp(-s[$0]) * losses[$0] }
        adam.step(&s, grad: grad)
    }

    var state: [String: [Double]] { ["s": s].merging(adam.state("adam")) { a, _ in a } }
    static let keys = ["s"] + ScalarAdam.keys("adam")

    mutating func load(_ state: [String: [Double]], method: String) throws {
        s = try stateArray(state, method, "s", count: s.count)
        try adam.load(state, "adam", method: method)
    }
}

/// UW (Kendall et al., METHODS.md §2): loss weights a e^{-s_t} for decoders and encoder.
/// Keys: lr (0.025), init (s_0 = 0), scale (a = 0.5), reg (r = 0.5; the KEM paper's loss is
/// scale 10, reg 1).
final class UW: MultiTaskMethod {
    let name = "uw"
    let needsGram = false
    let needsGradients = false
    let tasks: TaskSet
    var uncertainty: Uncertainty

    init(_ tasks: TaskSet, _ p: inout MethodParams) throws {
        self.tasks = tasks
        let lr = try p.double("lr", 0.025, min: 0)
        let s0 = try p.double("init", 0)
        let a = try p.double("scale", 0.5, min: 0)
        let r = try p.double("reg", 0.5, min: 0)
        if a == 0 { throw MTLError("method.uw.scale: expected a number > 0, found 0") }
        uncertainty = Uncertainty(count: tasks.count, initial: s0, lr: lr, scale: a, regularizer: r)
    }

    func apply(_ ctx: MethodContext) throws -> MethodResult {
        try check(ctx, name, tasks)
        let w = uncertainty.weights
        let logs = taskLogs("w", w, tasks.names) + taskLogs("sigma", uncertainty.sigmas, tasks.names)
        uncertainty.update(losses: ctx.losses)
        return MethodResult(.lossWeights(w), logs: logs)
    }

    func stateValues() -> [String: [Double]] { uncertainty.state }
    func loadState(_ state: [String: [Double]]) throws {
        try checkStateKeys(state, name, Uncertainty.keys)
        try uncertainty.load(state, method: name)
    }
}
