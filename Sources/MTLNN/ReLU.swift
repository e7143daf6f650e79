import MTLCore

/// max(x, 0). NaN passes through (as torch.relu). Backward masks dy with output > 0
/// (gradient 0 at x == 0, as PyTorch's threshold_backward).
public final class ReLU {
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    public init() {}

    /// Called with every forward's output, in call order (nil unless a test sets it): the float64
    /// cross-checks differentiate the reference on mtl's own ReLU decisions, since an input within
    /// float32 rounding of 0 may be decided either way (HRNetTorchTests).
    nonisolated(unsafe) public static var forwardObserver: ((Tensor) -> Void)?

    public func forward(_ x: Tensor) -> Tensor {
        output.resize(x.shape)
        let src = x.data, dst = output.data
        parallelBlocks(x.count) { lo, hi in
            for i in lo..<hi { let v = src[i]; dst[i] = v < 0 ? 0 : v }
        }
        ReLU.forwardObserver?(output)
        return output
    }

    /// `inPlace`: dx is written over dy, for a dy that nothing reads afterwards (the input gradient
    /// of the layer after this one, inside a residual block): one activation-sized buffer less.
    public func backward(_ dy: Tensor, inPlace: Bool = false) -> Tensor {
        precondition(dy.shape == output.shape, "ReLU: dy \(shapeString(dy.shape)) does not match the output \(shapeString(output.shape))")
        let result = inPlace ? dy : inputGrad
        result.resize(dy.shape)
        let y = output.data, g = dy.data, dx = result.data
        parallelBlocks(dy.count) { lo, hi in
            for i in lo..<hi { dx[i] = y[i] > 0 ? g[i] : 0 }
        }
        return result
    }
}
