import MTLCore

/// Depthwise Conv2d (PyTorch nn.Conv2d(C, C, k, stride, padding, dilation, groups=C)):
/// y[n,c] = w[c] ⋆ x[n,c] + b[c], weight [C, 1, k, k], zero padding, floor output size.
/// Direct loops: one k×k filter per channel is memory-bound, an im2col GEMM would not help.
/// Backward: dx scatters dy·w back over each window; dw[c] and db[c] are summed over samples
/// and pixels in Double in index order, one channel per task, so no result depends on the
/// thread count.
public final class DepthwiseConv2d: HasParameters {
    public let name: String
    public let channels: Int
    public let kernel: Int, stride: Int, padding: Int, dilation: Int
    public let weight: Parameter
    public let bias: Parameter?
    public var parameters: [Parameter] { bias.map { [weight, $0] } ?? [weight] }
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    private var input: Tensor?

    /// PyTorch's default init: weight and bias uniform in ±1/√(k·k) (fan-in of one group).
    public init(_ name: String, channels: Int, kernel: Int, stride: Int = 1, padding: Int = 0,
                dilation: Int = 1, bias: Bool = true, rng: inout Philox) {
        precondition(channels > 0 && kernel > 0 && stride > 0 && padding >= 0 && dilation > 0,
                     "\(name): invalid depthwise convolution geometry")
        self.name = name
        self.channels = channels
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        let bound = 1 / Float(kernel * kernel).squareRoot()
        weight = Parameter("\(name).weight", uniformTensor([channels, 1, kernel, kernel], bound: bound, rng: &rng))
        self.bias = bias ? Parameter("\(name).bias", uniformTensor([channels], bound: bound, rng: &rng)) : nil
    }

    public func outputSize(height: Int, width: Int) -> (height: Int, width: Int) {
        let span = dilation * (kernel - 1) + 1
        return ((height + 2 * padding - span) / stride + 1, (width + 2 * padding - span) / stride + 1)
    }

    public func forward(_ x: Tensor) -> Tensor {
        precondition(x.rank == 4 && x.c == channels, "\(name): expected [N, \(channels), H, W], got \(shapeString(x.shape))")
        let (h, w) = (x.h, x.w), (ho, wo) = outputSize(height: h, width: w)
        precondition(ho > 0 && wo > 0, "\(name): input \(h)x\(w) is smaller than the dilated kernel")
        input = x
        output.resize([x.n, channels, ho, wo])
        let k = kernel, s = stride, p = padding, d = dilation, c = channels
        let src = x.data, dst = output.data, wt = weight.value.data, b = bias?.value.data
        parallelFor(x.n * c) { q in
            let ch = q % c, plane = src + q * h * w, out = dst + q * ho * wo, f = wt + ch * k * k
            let b0: Float = b.map { $0[ch] } ?? 0
            for oh in 0..<ho {
                for ow in 0..<wo {
                    var acc: Float = 0
                    for i in 0..<k {
                        let ih = oh * s - p + i * d
                        if ih < 0 || ih >= h { continue }
                        let row = plane + ih * w
                        for j in 0..<k {
                            let iw = ow * s - p + j * d
                            if iw >= 0 && iw < w { acc += f[i * k + j] * row[iw] }
                        }
                    }
                    out[oh * wo + ow] = acc + b0
                }
            }
        }
        return output
    }

    /// Accumulates dw and db; returns dx.
    public func backward(_ dy: Tensor) -> Tensor {
        guard let x = input else { preconditionFailure("\(name): backward before forward") }
        precondition(dy.shape == output.shape, "\(name): dy \(shapeString(dy.shape)) does not match the output \(shapeString(output.shape))")
        let (h, w) = (x.h, x.w), (ho, wo) = (dy.h, dy.w), n = x.n
        let k = kernel, s = stride, p = padding, d = dilation, c = channels
        inputGrad.resize(x.shape)
        inputGrad.zero()
        let src = x.data, g = dy.data, dx = inputGrad.data, wt = weight.value.data
        parallelFor(n * c) { q in
            let ch = q % c, plane = dx + q * h * w, gy = g + q * ho * wo, f = wt + ch * k * k
            for oh in 0..<ho {
                for ow in 0..<wo {
                    let v = gy[oh * wo + ow]
                    for i in 0..<k {
                        let ih = oh * s - p + i * d
                        if ih < 0 || ih >= h { continue }
                        let row = plane + ih * w
                        for j in 0..<k {
                            let iw = ow * s - p + j * d
                            if iw >= 0 && iw < w { row[iw] += f[i * k + j] * v }
                        }
                    }
                }
            }
        }
        let wg = weight.grad.data, bg = bias?.grad.data
        parallelFor(c) { ch in
            withUnsafeTemporaryAllocation(of: Double.self, capacity: k * k) { acc in
                acc.initialize(repeating: 0)
                var bsum = 0.0
                for sample in 0..<n {
                    let plane = src + (sample * c + ch) * h * w, gy = g + (sample * c + ch) * ho * wo
                    for oh in 0..<ho {
                        for ow in 0..<wo {
                            let v = Double(gy[oh * wo + ow])
                            bsum += v
                            for i in 0..<k {
                                let ih = oh * s - p + i * d
                                if ih < 0 || ih >= h { continue }
                                let row = plane + ih * w
                                for j in 0..<k {
                                    let iw = ow * s - p + j * d
                                    if iw >= 0 && iw < w { acc[i * k + j] += v * Double(row[iw]) }
                                }
                            }
                        }
                    }
                }
                let f = wg + ch * k * k
                for t in 0..<(k * k) { f[t] += Float(acc[t]) }
                if let bg { bg[ch] += Float(bsum) }
            }
        }
        return inputGrad
    }
}
