import MTLCore

/// Max pooling, PyTorch semantics: padding counts as −inf (a window only sees real pixels),
/// floor output size, dilation 1, the first maximum in row-major order wins ties, NaN wins.
public final class MaxPool2d {
    public let kernel: Int, stride: Int, padding: Int
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    /// Index of the chosen input pixel within its (sample, channel) plane, per output pixel.
    private let argmax = Int32Buffer()
    private var inputShape: [Int] = []

    public init(kernel: Int, stride: Int, padding: Int = 0) {
        precondition(kernel > 0 && stride > 0 && padding >= 0 && 2 * padding <= kernel,
                     "MaxPool2d: padding must be at most half the kernel (PyTorch's rule)")
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
    }

    public func outputSize(height: Int, width: Int) -> (height: Int, width: Int) {
        ((height + 2 * padding - kernel) / stride + 1, (width + 2 * padding - kernel) / stride + 1)
    }

    public func forward(_ x: Tensor) -> Tensor {
        precondition(x.rank == 4, "MaxPool2d: expected [N, C, H, W], got \(shapeString(x.shape))")
        let (h, w) = (x.h, x.w)
        let (ho, wo) = outputSize(height: h, width: w)
        precondition(ho > 0 && wo > 0, "MaxPool2d: input \(h)x\(w) smaller than the kernel")
        inputShape = x.shape
        output.resize([x.n, x.c, ho, wo])
        argmax.resize(output.count)
        let k = kernel, s = stride, pad = padding
        let src = x.data, dst = output.data, am = argmax.data
        parallelFor(x.n * x.c) { q in
            let plane = src + q * h * w, out = dst + q * ho * wo, idx = am + q * ho * wo
            for oh in 0..<ho {
                let h0 = max(oh * s - pad, 0), h1 = min(oh * s - pad + k, h)
                for ow in 0..<wo {
                    let w0 = max(ow * s - pad, 0), w1 = min(ow * s - pad + k, w)
                    var best = -Float.infinity, bestIndex = h0 * w + w0
                    for ih in h0..<h1 {
                        for iw in w0..<w1 {
                            let v = plane[ih * w + iw]
                            if v > best || v.isNaN {
                                best = v
                                bestIndex = ih * w + iw
                                if v.isNaN { break }
                            }
                        }
                        if best.isNaN { break }
                    }
                    out[oh * wo + ow] = best
                    idx[oh * wo + ow] = Int32(bestIndex)
                }
            }
        }
        return output
    }

    /// dx: dy routed to each window's chosen pixel (summed where windows overlap).
    public func backward(_ dy: Tensor) -> Tensor {
        precondition(dy.shape == output.shape, "MaxPool2d: dy \(shapeString(dy.shape)) does not match the output \(shapeString(output.shape))")
        inputGrad.resize(inputShape)
        inputGrad.zero()
        let plane = inputShape[2] * inputShape[3], outPlane = output.h * output.w
        let g = dy.data, dx = inputGrad.data, am = argmax.data
        parallelFor(dy.n * dy.c) { q in
            let d = dx + q * plane, src = g + q * outPlane, idx = am + q * outPlane
            for i in 0..<outPlane { d[Int(idx[i])] += src[i] }
        }
        return inputGrad
    }
}

/// Mean over H×W: [N, C, H, W] → [N, C, 1, 1].
public final class GlobalAvgPool {
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    private var inputShape: [Int] = []
    public init() {}

    public func forward(_ x: Tensor) -> Tensor {
        precondition(x.rank == 4, "GlobalAvgPool: expected [N, C, H, W], got \(shapeString(x.shape))")
        inputShape = x.shape
        output.resize([x.n, x.c, 1, 1])
        let hw = x.h * x.w, src = x.data, dst = output.data
        parallelFor(x.n * x.c) { q in
            dst[q] = Float(sumDouble(src + q * hw, hw) / Double(hw))
        }
        return output
    }

    public func backward(_ dy: Tensor) -> Tensor {
        precondition(dy.count == output.count, "GlobalAvgPool: dy \(shapeString(dy.shape)) does not match the output \(shapeString(output.shape))")
        inputGrad.resize(inputShape)
        let hw = inputShape[2] * inputShape[3], g = dy.data, dx = inputGrad.data
        let inv = 1 / Float(hw)
        parallelFor(dy.count) { q in
            (dx + q * hw).update(repeating: g[q] * inv, count: hw)
        }
        return inputGrad
    }
}

/// Average pooling k×k with stride k and no padding (PyTorch's F.avg_pool2d(x, k) defaults:
/// floor output size; without padding count_include_pad does not matter, every window holds k²
/// real pixels). Rows and columns beyond the last full window are dropped; their gradient is 0.
public final class AvgPool2d {
    public let kernel: Int
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    private var inputShape: [Int] = []

    public init(kernel: Int) {
        precondition(kernel > 0, "AvgPool2d: kernel must be positive")
        self.kernel = kernel
    }

    public func forward(_ x: Tensor) -> Tensor {
        precondition(x.rank == 4, "AvgPool2d: expected [N, C, H, W], got \(shapeString(x.shape))")
        let k = kernel, (h, w) = (x.h, x.w), (ho, wo) = (h / k, w / k)
        precondition(ho > 0 && wo > 0, "AvgPool2d: input \(h)x\(w) smaller than the kernel \(k)")
        inputShape = x.shape
        output.resize([x.n, x.c, ho, wo])
        let src = x.data, dst = output.data, inv = 1 / Double(k * k)
        parallelFor(x.n * x.c) { q in
            let plane = src + q * h * w, out = dst + q * ho * wo
            for oh in 0..<ho {
                for ow in 0..<wo {
                    var s = 0.0
                    for i in 0..<k {
                        let row = plane + (oh * k + i) * w + ow * k
                        for j in 0..<k { s += Double(row[j]) }
                    }
                    out[oh * wo + ow] = Float(s * inv)
                }
            }
        }
        return output
    }

    /// dx = dy/k² over each window.
    public func backward(_ dy: Tensor) -> Tensor {
        precondition(dy.shape == output.shape, "AvgPool2d: dy \(shapeString(dy.shape)) does not match the output \(shapeString(output.shape))")
        inputGrad.resize(inputShape)
        inputGrad.zero()
        let k = kernel, (h, w) = (inputShape[2], inputShape[3]), (ho, wo) = (dy.h, dy.w)
        let g = dy.data, dx = inputGrad.data, inv = 1 / Float(k * k)
        parallelFor(dy.n * dy.c) { q in
            let plane = dx + q * h * w, src = g + q * ho * wo
            for oh in 0..<ho {
                for ow in 0..<wo {
                    let v = src[oh * wo + ow] * inv
                    for i in 0..<k {
                        let row = plane + (oh * k + i) * w + ow * k
                        for j in 0..<k { row[j] = v }
                    }
                }
            }
        }
        return inputGrad
    }
}
