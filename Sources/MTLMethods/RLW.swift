import Foundation
import MTLCore

/// RLW, random loss weighting (METHODS.md §5). Fresh weights every step from
/// methodRNG(seed, step), identical on every rank:
///   normal (default): softmax(N(0, I))   uniform: softmax(U(0,1)^T)
///   dirichlet: softmax(Dir(1,…,1)) (older LibMTL applies the softmax to all three)
///   bernoulli: each task 1 with probability 0.5, redrawn while all are 0 (not normalised)
///   cbernoulli: one task, chosen uniformly, gets 1.
/// The weights sum to 1 (not T), as in the references. Loss-weighted. Key: dist.
final class RLW: MultiTaskMethod {
    let name = "rlw"
    let needsGram = false
    let needsGradients = false
    let tasks: TaskSet
    let distribution: String

    init(_ tasks: TaskSet, _ p: inout MethodParams) throws {
        self.tasks = tasks
        distribution = try p.choice("dist", "normal", ["normal", "uniform", "dirichlet", "bernoulli", "cbernoulli"])
    }

    static func softmax(_ x: [Double]) -> [Double] {
        let top = x.max()!
        let e = x.map { exp($0 - top) }
        let z = e.reduce(0, +)
        return e.map { $0 / z }
    }

    static func weights(_ distribution: String, taskCount T: Int, seed: UInt64, step: Int) -> [Double] {
        var rng = methodRNG(seed: seed, step: step)
        switch distribution {
        case "uniform":
            return softmax((0..<T).map { _ in rng.uniformDouble() })
        case "dirichlet":
            // Dir(1,…,1) = normalised Exp(1) draws; 1 − u ∈ (0, 1] keeps the log finite.
            let e = (0..<T).map { _ in -log(1 - rng.uniformDouble()) }
            let z = e.reduce(0, +)
            return softmax(e.map { $0 / z })
        case "bernoulli":
            while true {
                let b = (0..<T).map { _ in rng.uniformDouble() < 0.5 ? 1.0 : 0.0 }
                if b.contains(1) { return b }
            }
        case "cbernoulli":
            var w = [Double](repeating: 0, count: T)
            w[rng.int(below: T)] = 1
            return w
        default:
            return softmax((0..<T).map { _ in Double(rng.normal()) })
        }
    }

    func apply(_ ctx: MethodContext) throws -> MethodResult {
        try check(ctx, name, tasks)
        let w = RLW.weights(distribution, taskCount: tasks.count, seed: ctx.seed, step: ctx.step)
        return MethodResult(.lossWeights(w), logs: taskLogs("w", w, tasks.names))
    }

    func stateValues() -> [String: [Double]] { [:] }
    func loadState(_ state: [String: [Double]]) throws { try checkStateKeys(state, name, []) }
}
