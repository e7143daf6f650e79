import MTLCore

/// Batch normalisation over (N, H, W) per channel, PyTorch semantics.
///
/// Training: normalise with the batch mean and the BIASED batch variance; update
/// running_mean/running_var with `momentum` using the UNBIASED variance; count
/// num_batches_tracked. Eval: normalise with the running statistics (backward is then
/// the per-channel affine map).
///
/// SyncBN: with a `reducer`, the per-channel sums (Σx, Σx², count) in forward and
/// (Σdy, Σdy·x̂) in backward are summed over ranks before use, so N ranks × b samples
/// give exactly the statistics of 1 rank × N·b. The weight/bias gradients accumulate the
/// LOCAL sums only: the trainer's gradient all-reduce adds the ranks' contributions later
/// (adding the global sums here would count them N times). Every rank must call forward
/// and backward the same number of times (they are collectives).
public final class BatchNorm2d: HasParameters {
    public let name: String
    public let channels: Int
    public let momentum: Float
    public let eps: Float
    public let weight: Parameter, bias: Parameter
    public let runningMean: Buffer, runningVar: Buffer, numBatchesTracked: Buffer
    public var training = true
    public var reducer: SumReducer?
    public var parameters: [Parameter] { [weight, bias] }
    public var buffers: [Buffer] { [runningMean, runningVar, numBatchesTracked] }

    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    private var input: Tensor?
    /// Statistics used by the last forward (batch or running), per channel.
    private var mean: [Float]
    private var invStd: [Float]
    private var forwardWasTraining = true
    /// Number of elements per channel over all ranks in the last training forward.
    private var globalCount = 0.0
    /// Per-channel sums exchanged with the reducer (2·C + 1 values).
    private let sums = DoubleBuffer()

    public init(_ name: String, channels: Int, momentum: Float = 0.1, eps: Float = 1e-5) {
        self.name = name
        self.channels = channels
        self.momentum = momentum
        self.eps = eps
        weight = Parameter("\(name).weight", Tensor([channels], repeating: 1))
        bias = Parameter("\(name).bias", Tensor([channels]))
        runningMean = Buffer("\(name).running_mean", Tensor([channels]))
        runningVar = Buffer("\(name).running_var", Tensor([channels], repeating: 1))
        numBatchesTracked = Buffer("\(name).num_batches_tracked", Tensor([]))
        mean = [Float](repeating: 0, count: channels)
        invStd = [Float](repeating: 1, count: channels)
    }

    public func forward(_ x: Tensor) -> Tensor {
        precondition(x.rank == 4 && x.c == channels,
                     "\(name): expected input [N, \(channels), H, W], got \(shapeString(x.shape))")
        let c = channels, n = x.n, hw = x.h * x.w
        input = x
        forwardWasTraining = training
        output.resize(x.shape)
        let xd = x.data
        if training {
            sums.resize(2 * c + 1)
            let s = sums.data
            parallelFor(c) { ch in
                var sx = 0.0, sxx = 0.0
                for smp in 0..<n {
                    let p = xd + (smp * c + ch) * hw
                    let (a, b) = sumAndDot(p, p, hw)
                    sx += a
                    sxx += b
                }
                s[ch] = sx
                s[c + ch] = sxx
            }
            s[2 * c] = Double(n * hw)
            reducer?.sumInPlace(sums.buffer)
            let count = s[2 * c]
            precondition(count > 0, "\(name): empty batch")
            globalCount = count
            // PyTorch updates running_var with the unbiased variance; with a single value per
            // channel it would raise, we keep the biased one (factor 1) instead of dividing by 0.
            let unbias = count > 1 ? count / (count - 1) : 1
            let m = Double(momentum)
            let rm = runningMean.value.data, rv = runningVar.value.data
            for ch in 0..<c {
                let mu = s[ch] / count
                let variance = max(0, s[c + ch] / count - mu * mu)
                mean[ch] = Float(mu)
                invStd[ch] = Float(1 / (variance + Double(eps)).squareRoot())
                rm[ch] = Float((1 - m) * Double(rm[ch]) + m * mu)
                rv[ch] = Float((1 - m) * Double(rv[ch]) + m * variance * unbias)
            }
            numBatchesTracked.value.data[0] += 1
        } else {
            let rm = runningMean.value.data, rv = runningVar.value.data
            for ch in 0..<c {
                mean[ch] = rm[ch]
                invStd[ch] = 1 / (rv[ch] + eps).squareRoot()
            }
        }
        // y = x·a + b with a = γ/σ, b = β − μ·a.
        let y = output.data, gamma = weight.value.data, beta = bias.value.data
        mean.withUnsafeBufferPointer { mu in
            invStd.withUnsafeBufferPointer { inv in
                parallelFor(n * c) { q in
                    let ch = q % c
                    let a = gamma[ch] * inv[ch], b = beta[ch] - mu[ch] * a
                    let src = xd + q * hw, dst = y + q * hw
                    for i in 0..<hw { dst[i] = src[i] * a + b }
                }
            }
        }
        return output
    }

    /// Accumulates weight/bias gradients (local sums) and returns dx. Repeatable after one forward.
    /// `inPlace`: dx is written over dy, for a dy that nothing reads afterwards (each element of dy
    /// is read once, by the pass that writes the same element of dx, after the reductions).
    public func backward(_ dy: Tensor, inPlace: Bool = false) -> Tensor {
        guard let x = input else { preconditionFailure("\(name): backward before forward") }
        precondition(dy.shape == x.shape, "\(name): dy \(shapeString(dy.shape)) does not match the input \(shapeString(x.shape))")
        let c = channels, n = x.n, hw = x.h * x.w
        let xd = x.data, g = dy.data
        sums.resize(2 * c)
        let s = sums.data
        let gw = weight.grad.data, gb = bias.grad.data
        mean.withUnsafeBufferPointer { mu in
            invStd.withUnsafeBufferPointer { inv in
                // Σdy and Σdy·x̂ per channel, x̂ = (x − μ)/σ; Σdy·x̂ = (Σdy·x − μ·Σdy)/σ.
                parallelFor(c) { ch in
                    var sdy = 0.0, sdyx = 0.0
                    for smp in 0..<n {
                        let off = (smp * c + ch) * hw
                        let (a, b) = sumAndDot(g + off, xd + off, hw)
                        sdy += a
                        sdyx += b
                    }
                    s[ch] = sdy
                    s[c + ch] = (sdyx - Double(mu[ch]) * sdy) * Double(inv[ch])
                    gb[ch] += Float(s[ch])
                    gw[ch] += Float(s[c + ch])
                }
            }
        }
        let result = inPlace ? dy : inputGrad
        result.resize(x.shape)
        let dx = result.data, gamma = weight.value.data
        if !forwardWasTraining {
            // Running statistics are constants: dx = dy·γ/σ.
            invStd.withUnsafeBufferPointer { inv in
                parallelFor(n * c) { q in
                    let a = gamma[q % c] * inv[q % c]
                    let src = g + q * hw, dst = dx + q * hw
                    for i in 0..<hw { dst[i] = src[i] * a }
                }
            }
            return result
        }
        reducer?.sumInPlace(sums.buffer)
        let count = globalCount
        // dx = γ/σ · (dy − mean(dy) − x̂·mean(dy·x̂)), means over the global batch;
        // expanded to dx = dy·a + x·b + k per channel.
        mean.withUnsafeBufferPointer { mu in
            invStd.withUnsafeBufferPointer { inv in
                parallelFor(n * c) { q in
                    let ch = q % c
                    let a = gamma[ch] * inv[ch]
                    let meanDy = Float(s[ch] / count), meanDyXhat = Float(s[c + ch] / count)
                    let b = -a * meanDyXhat * inv[ch]          // coefficient of x (through x̂)
                    let k = -a * meanDy + a * meanDyXhat * inv[ch] * mu[ch]
                    let src = g + q * hw, xs = xd + q * hw, dst = dx + q * hw
                    for i in 0..<hw { dst[i] = src[i] * a + xs[i] * b + k }
                }
            }
        }
        return result
    }
}
