import Foundation
import MTLCore

/// DWA, dynamic weight average (METHODS.md §3), per-epoch original.
/// For epoch e ≥ 2: r_t = L̄_t(e−1) / L̄_t(e−2), w_t = T exp(r_t/τ) / Σ_k exp(r_k/τ); w = 1 before.
/// L̄ are epoch means of the GLOBAL losses, accumulated here. Loss-weighted (decoders and encoder).
/// Keys: temperature (2.0).
final class DWA: MultiTaskMethod {
    let name = "dwa"
    let needsGram = false
    let needsGradients = false
    let tasks: TaskSet
    let temperature: Double
    var means: EpochMeans

    init(_ tasks: TaskSet, _ p: inout MethodParams) throws {
        self.tasks = tasks
        temperature = try p.double("temperature", 2.0)
        if !(temperature > 0) { throw MTLError("method.dwa.temperature: expected a number > 0, found \(temperature)") }
        means = EpochMeans(count: tasks.count, keep: 2)
    }

    func apply(_ ctx: MethodContext) throws -> MethodResult {
        try check(ctx, name, tasks)
        let T = tasks.count
        means.advance(ctx)
        var w = [Double](repeating: 1, count: T)
        if means.history.count >= 2 {
            let prev = means.history[means.history.count - 1], prev2 = means.history[means.history.count - 2]
            let r = (0..<T).map { prev2[$0] > 0 ? prev[$0] / prev2[$0] : 1 }
            let top = r.max()!
            let e = r.map { exp(($0 - top) / temperature) }  // shifted: same softmax, no overflow
            let z = e.reduce(0, +)
            w = e.map { Double(T) * $0 / z }
        }
        means.add(ctx.losses)
        return MethodResult(.lossWeights(w), logs: taskLogs("w", w, tasks.names))
    }

    func stateValues() -> [String: [Double]] { means.state }
    func loadState(_ state: [String: [Double]]) throws {
        try checkStateKeys(state, name, EpochMeans.keys)
        try means.load(state, method: name)
    }
}
