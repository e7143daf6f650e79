import MTLCore
import MTLNN

/// The shared representation: one tensor per output scale, finest first (strides 4, 8, 16, 32 for
/// HRNet; a dilated ResNet gives a single tensor at stride 8 or 16). The tensors belong to the
/// encoder's layers and are overwritten by its next forward.
public typealias Features = [Tensor]

/// A shared encoder: image → Features, and the backward from per-scale gradients.
/// Multi-task methods see a task's representation gradient as the tuple of its per-scale
/// gradients, so the Gram over several scales is G_ij = Σ_scales ⟨g_i, g_j⟩.
public protocol FeatureEncoder: HasParameters {
    /// Channels and strides of the forward's outputs, in `Features` order.
    var featureChannels: [Int] { get }
    var featureStrides: [Int] { get }
    var batchNorms: [BatchNorm2d] { get }
    /// The parameters in the order their gradients become final during `backward` (for
    /// starting the gradient all-reduce of each bucket while the backward still runs).
    var parameterGroupsInBackwardOrder: [[Parameter]] { get }
    func forward(_ x: Tensor) -> Features
    /// Backpropagates one gradient per output scale (shapes of the last forward's Features) into
    /// every encoder parameter; the image gradient is not computed. `groupDone(k)` is called when
    /// group k of `parameterGroupsInBackwardOrder` has its final gradient.
    func backward(_ dFeatures: Features, groupDone: ((Int) -> Void)?)
}

/// An encoder that can run its forward without keeping what a backward would read (a frozen
/// encoder: the decoders train on its features, its backward never runs).
public protocol ForwardOnlyEncoder: AnyObject {
    var forwardOnly: Bool { get set }
}

/// An encoder with per-step randomness (DropPath) and a train / eval switch of its own.
public protocol StochasticEncoder: AnyObject {
    var training: Bool { get set }
    /// The draws of the next forward: `sampleIndices` are the batch's dataset (global) indices.
    func prepareStep(seed: UInt64, step: Int, sampleIndices: [Int])
}

extension FeatureEncoder {
    public func backward(_ dFeatures: Features) { backward(dFeatures, groupDone: nil) }
}
