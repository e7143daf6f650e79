import MTLCore
import MTLNN

/// The task-specific part of a multi-task model: the shared Features → one prediction per task.
///
/// Two kinds exist. Per-task heads (`PerTaskHeads`) are *separable*: task t's prediction depends
/// on `taskParameters[t]` only, so a backward of L_t touches no other task's parameters. A joint
/// decoder has cross-task modules: L_t may depend on another task's parameters (MT-CP's fusion
/// reads every task's features) and on `sharedParameters` that belong to no task (KEM's memory).
/// The step engine combines the gradients of shared decoder parameters with the method's
/// coefficients like the encoder's, and those of task parameters with the per-task loss weights
/// (docs/ARCHITECTURE.md, "Which parameters get which combination").
public protocol Decoder: HasParameters {
    var outChannels: [Int] { get }
    /// Task t's prediction depends on no parameter but `taskParameters[t]`.
    var separable: Bool { get }
    /// The parameters owned by each task, in task order.
    var taskParameters: [[Parameter]] { get }
    /// Parameters several tasks' losses depend on and that belong to no task (empty when separable).
    var sharedParameters: [Parameter] { get }
    var batchNorms: [BatchNorm2d] { get }
    /// Predictions [B, outChannels[t], height, width] of the tasks with `active[t]` (nil for the
    /// others; a joint decoder may compute every task whatever `active` says). The tensors belong
    /// to the decoder and are overwritten by its next forward.
    func forward(_ features: Features, height: Int, width: Int, active: [Bool]) -> [Tensor?]
    /// Backpropagates the prediction gradients `dPreds` (nil: that task's loss is not part of this
    /// backward) from the last forward, ADDING into the parameters' grads, and returns ∂/∂Features
    /// (tensors the decoder owns: copy them to keep them). May be called several times after one
    /// forward, e.g. once per task.
    func backward(_ dPreds: [Tensor?]) -> Features
    /// Deep supervision (MT-CP's intermediate predictions): task t's extra predictions of the last
    /// forward, each [B, outChannels[t], height, width], trained with task t's loss and target and
    /// added to task t's loss with weight `auxiliaryWeights(t)[i]`. Empty for most decoders.
    func auxiliaryPredictions(_ t: Int) -> [Tensor]
    func auxiliaryWeights(_ t: Int) -> [Double]
    /// `backward` with the gradients of the auxiliary predictions too (auxiliary[t] nil: none).
    func backward(_ dPreds: [Tensor?], auxiliary: [[Tensor]?]) -> Features
}

extension Decoder {
    public func auxiliaryPredictions(_ t: Int) -> [Tensor] { [] }
    public func auxiliaryWeights(_ t: Int) -> [Double] { [] }
    public func backward(_ dPreds: [Tensor?], auxiliary: [[Tensor]?]) -> Features { backward(dPreds) }
    public var taskCount: Int { outChannels.count }
    public var parameters: [Parameter] { taskParameters.flatMap { $0 } + sharedParameters }
    public var buffers: [Buffer] { batchNorms.flatMap { $0.buffers } }
    public func forward(_ features: Features, height: Int, width: Int) -> [Tensor] {
        forward(features, height: height, width: width, active: outChannels.map { _ in true }).map { $0! }
    }
}

/// One `TaskHead` per task: the separable decoder (DeepLab, bench and multi-scale heads).
public final class PerTaskHeads: Decoder {
    public let heads: [TaskHead]
    /// ∂/∂Features when several tasks are backpropagated together.
    private var sum: [Tensor] = []

    public init(_ heads: [TaskHead]) { self.heads = heads }

    public var outChannels: [Int] { heads.map { $0.outChannels } }
    public var separable: Bool { true }
    public var taskParameters: [[Parameter]] { heads.map { $0.parameters } }
    public var sharedParameters: [Parameter] { [] }
    public var batchNorms: [BatchNorm2d] { heads.flatMap { $0.batchNorms } }
    public var buffers: [Buffer] { heads.flatMap { $0.buffers } }

    public func forward(_ features: Features, height: Int, width: Int, active: [Bool]) -> [Tensor?] {
        precondition(active.count == heads.count, "PerTaskHeads: \(active.count) flags for \(heads.count) tasks")
        return heads.indices.map { active[$0] ? heads[$0].forward(features, height: height, width: width) : nil }
    }

    public func backward(_ dPreds: [Tensor?]) -> Features {
        precondition(dPreds.count == heads.count, "PerTaskHeads: \(dPreds.count) gradients for \(heads.count) tasks")
        let tasks = dPreds.indices.filter { dPreds[$0] != nil }
        precondition(!tasks.isEmpty, "PerTaskHeads.backward: no task gradient")
        if tasks.count == 1 { return heads[tasks[0]].backward(dPreds[tasks[0]]!) }
        var scales = 0
        for (k, t) in tasks.enumerated() {
            let dz = heads[t].backward(dPreds[t]!)
            if k == 0 {
                scales = dz.count
                while sum.count < scales { sum.append(Tensor([0])) }
                for s in 0..<scales { sum[s].copy(from: dz[s]) }
            } else {
                for s in 0..<scales { sum[s].add(dz[s]) }
            }
        }
        return Array(sum.prefix(scales))
    }
}
