import MTLCore

/// DropPath (stochastic depth) on a residual branch of tokens [B, L, C] (or any tensor whose
/// first axis is the image): per image b, k_b ~ Bernoulli(1 − p) and y = x · k_b / (1 − p)
/// (timm's `drop_path` with `scale_by_keep`); identity in eval mode or when p = 0.
/// Backward: dx = dy · k_b / (1 − p).
///
/// The draws are a pure function of (seed, step, GLOBAL sample index, layer id): one Philox
/// block from stream `RNGStream.dropPath` with the layer id in the upper bits of the stream word
/// and (step, sample index) as the counter index, so that a sample is dropped the same way
/// whatever the number of ranks or threads, and a resumed run redraws exactly.
public final class DropPath {
    public let rate: Float
    /// Distinguishes the draws of different DropPath layers (< 2^24).
    public let layerID: Int
    public var training = true
    /// k_b / (1 − p) per image of the prepared step.
    public private(set) var scales: [Float] = []
    private let output = Tensor([0]), inputGrad = Tensor([0])
    private var applied = false

    public init(rate: Float, layerID: Int) {
        precondition(rate >= 0 && rate < 1, "DropPath: rate \(rate) outside [0, 1)")
        precondition(layerID >= 0 && layerID < 1 << 24, "DropPath: layer id \(layerID) outside [0, 2^24)")
        self.rate = rate
        self.layerID = layerID
    }

    /// Whether k_b is 1 for sample `index` of step `step`: uniform < 1 − p.
    public static func keeps(seed: UInt64, step: Int, sample: Int, layerID: Int, rate: Float) -> Bool {
        var rng = Philox(seed: seed, stream: RNGStream.dropPath.rawValue | UInt64(layerID) << 8,
                         index: UInt64(truncatingIfNeeded: step) << 32 | UInt64(UInt32(truncatingIfNeeded: sample)))
        return rng.uniform() < 1 - rate
    }

    /// Draws k_b for the images of the next forward: `sampleIndices` are the dataset (global)
    /// indices of the batch's images, in batch order.
    public func prepare(seed: UInt64, step: Int, sampleIndices: [Int]) {
        guard rate > 0 else { scales = []; return }
        let keep = 1 / (1 - rate)
        scales = sampleIndices.map {
            DropPath.keeps(seed: seed, step: step, sample: $0, layerID: layerID, rate: rate) ? keep : 0
        }
    }

    private func active(_ x: Tensor) -> Bool {
        guard training && rate > 0 else { return false }
        precondition(scales.count == x.shape[0],
                     "DropPath \(layerID): prepared for \(scales.count) images (MultiTaskModel.prepareStep), the forward has \(x.shape[0])")
        return true
    }

    /// `into` (not x): where to write y when the layer is active, instead of its own buffer (a
    /// residual branch's output is read once, by the sum: Swin's shared workspace).
    public func forward(_ x: Tensor, into out: Tensor? = nil) -> Tensor {
        applied = active(x)
        guard applied else { return x }
        precondition(out !== x, "DropPath \(layerID): the output cannot overwrite the input")
        let output = out ?? self.output
        output.resize(x.shape)
        scale(x, into: output)
        return output
    }

    /// `into` (not dy): where to write dx when the layer is active.
    public func backward(_ dy: Tensor, into dxOut: Tensor? = nil) -> Tensor {
        guard applied else { return dy }
        precondition(dxOut !== dy, "DropPath \(layerID): dx cannot overwrite dy")
        let inputGrad = dxOut ?? self.inputGrad
        inputGrad.resize(dy.shape)
        scale(dy, into: inputGrad)
        return inputGrad
    }

    private func scale(_ x: Tensor, into y: Tensor) {
        let per = x.count / x.shape[0], src = x.data, dst = y.data
        scales.withUnsafeBufferPointer { s in
            parallelBlocks(x.count) { lo, hi in for i in lo..<hi { dst[i] = src[i] * s[i / per] } }
        }
    }
}
