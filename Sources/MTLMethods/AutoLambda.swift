import Foundation
import MTLCore

/// Auto-λ (Liu, Johns, Davison 2022; METHODS.md §15): task weights λ_t for every task (init 0.1),
/// the step's loss is Σ_t λ_t L_t (encoder and decoders alike). λ is learned by a one-step
/// look-ahead: how would the PRIMARY loss on another batch change after a virtual update with λ?
/// That meta step needs extra forwards and backwards of the network, so it runs in the trainer
/// (MTLEngine/AutoLambdaStep.swift), which hands the meta-gradient to `update(metaGradient:)`.
/// `apply` itself only returns the current λ, so the normal step uses the λ just updated.
///
/// Keys: lr (1e-4, NYUv2 in the paper; 3e-5 for Cityscapes), init (0.1).
/// State (checkpointed): lambda, the Adam moments of λ, and val_position — the number of batches
/// drawn from the second ("val") data stream, where a resumed run continues.
public final class AutoLambda: MultiTaskMethod {
    public let name = "autol"
    public let needsGram = false
    public let needsGradients = false
    let tasks: TaskSet
    public private(set) var lambda: [Double]
    var adam: ScalarAdam
    /// Batches consumed from the val stream (one per step).
    public var valPosition = 0
    /// 1 for primary tasks, 0 for auxiliary ones: the look-ahead's target Σ_p L_p.
    public let primaryWeights: [Double]
    /// The last meta step, for the logs: dL_val/dλ estimate and ‖d‖ (0 when the meta step was skipped).
    public private(set) var lastMetaGradient: [Double]
    public private(set) var lastDirectionNorm = 0.0

    init(_ tasks: TaskSet, _ p: inout MethodParams) throws {
        self.tasks = tasks
        let lr = try p.double("lr", 1e-4, min: 0)
        let initial = try p.double("init", 0.1)
        guard !tasks.primaries.isEmpty else {
            throw MTLError("method autol: needs at least one primary task (task roles); the look-ahead minimises the primary loss")
        }
        lambda = [Double](repeating: initial, count: tasks.count)
        adam = ScalarAdam(lr: lr, count: tasks.count)
        primaryWeights = tasks.roles.map { $0 == .primary ? 1 : 0 }
        lastMetaGradient = [Double](repeating: 0, count: tasks.count)
    }

    public func apply(_ ctx: MethodContext) throws -> MethodResult {
        try check(ctx, name, tasks)
        let logs = taskLogs("lambda", lambda, tasks.names) + taskLogs("metagrad", lastMetaGradient, tasks.names)
            + [("d_norm", lastDirectionNorm)]
        return MethodResult(.lossWeights(lambda), logs: logs)
    }

    /// One Adam step on λ with the meta-gradient ∂L_primary(θ'(λ))/∂λ (torch.optim.Adam defaults).
    public func update(metaGradient g: [Double], directionNorm: Double) {
        precondition(g.count == lambda.count)
        adam.step(&lambda, grad: g)
        lastMetaGradient = g
        lastDirectionNorm = directionNorm
    }

    /// A step whose look-ahead could not be formed (non-finite values, d = 0): λ unchanged.
    public func skipUpdate() {
        for t in lastMetaGradient.indices { lastMetaGradient[t] = 0 }
        lastDirectionNorm = 0
    }

    static let stateKeys = ["lambda", "val_position"] + ScalarAdam.keys("adam")

    public func stateValues() -> [String: [Double]] {
        ["lambda": lambda, "val_position": [Double(valPosition)]].merging(adam.state("adam")) { a, _ in a }
    }

    public func loadState(_ state: [String: [Double]]) throws {
        try checkStateKeys(state, name, Self.stateKeys)
        let l = try stateArray(state, name, "lambda", count: lambda.count)
        let v = try stateArray(state, name, "val_position", count: 1)[0]
        guard v >= 0, v == v.rounded() else { throw MTLError("method autol state: val_position must be a count, found \(v)") }
        try adam.load(state, "adam", method: name)
        lambda = l
        valPosition = Int(v)
    }
}
