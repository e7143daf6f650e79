import MTLCore

/// Max over H×W per channel (CBAM's channel branch): [N, C, H, W] → [N, C, 1, 1].
/// The gradient goes to the first arg-max in row-major order (as PyTorch's adaptive_max_pool2d).
public final class GlobalMaxPool {
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    private let argmax = Int32Buffer()
    private var inputShape: [Int] = []
    public init() {}

    public func forward(_ x: Tensor) -> Tensor {
        precondition(x.rank == 4 && x.h * x.w > 0, "GlobalMaxPool: expected [N, C, H, W], got \(shapeString(x.shape))")
        inputShape = x.shape
        output.resize([x.n, x.c, 1, 1])
        argmax.resize(x.n * x.c)
        let hw = x.h * x.w, src = x.data, y = output.data, am = argmax.data
        parallelFor(x.n * x.c) { q in
            let p = src + q * hw
            var best = p[0], at = 0
            for i in 1..<hw where p[i] > best { best = p[i]; at = i }
            y[q] = best
            am[q] = Int32(at)
        }
        return output
    }

    public func backward(_ dy: Tensor) -> Tensor {
        precondition(dy.count == output.count, "GlobalMaxPool: dy \(shapeString(dy.shape)) does not match the output \(shapeString(output.shape))")
        inputGrad.resize(inputShape)
        inputGrad.zero()
        let hw = inputShape[2] * inputShape[3], g = dy.data, dx = inputGrad.data, am = argmax.data
        parallelFor(dy.count) { q in dx[q * hw + Int(am[q])] = g[q] }
        return inputGrad
    }
}

/// Per pixel, the max and the mean over channels (CBAM's spatial branch):
/// [N, C, H, W] → [N, 2, H, W], channel 0 = max_c x, channel 1 = mean_c x.
/// Backward: the max's gradient to the first arg-max channel, the mean's spread as 1/C.
public final class ChannelMaxMeanPool {
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    private let argmax = Int32Buffer()
    private var inputShape: [Int] = []
    static let pixelsPerTask = 256
    public init() {}

    public func forward(_ x: Tensor) -> Tensor {
        precondition(x.rank == 4 && x.c > 0, "ChannelMaxMeanPool: expected [N, C, H, W], got \(shapeString(x.shape))")
        inputShape = x.shape
        let n = x.n, c = x.c, hw = x.h * x.w
        output.resize([n, 2, x.h, x.w])
        argmax.resize(n * hw)
        let src = x.data, y = output.data, am = argmax.data, per = ChannelMaxMeanPool.pixelsPerTask
        let blocks = (hw + per - 1) / per
        parallelFor(n * blocks) { task in
            let s = task / blocks, lo = (task % blocks) * per, len = min(hw, lo + per) - lo
            let xs = src + s * c * hw + lo, mx = y + s * 2 * hw + lo, mean = mx + hw, idx = am + s * hw + lo
            // Channel rows are contiguous: sweep them in order, keeping the running max and sum.
            mx.update(from: xs, count: len)
            idx.update(repeating: 0, count: len)
            withUnsafeTemporaryAllocation(of: Double.self, capacity: per) { acc in
                for i in 0..<len { acc[i] = Double(xs[i]) }
                for ch in 1..<c {
                    let row = xs + ch * hw
                    for i in 0..<len {
                        acc[i] += Double(row[i])
                        if row[i] > mx[i] { mx[i] = row[i]; idx[i] = Int32(ch) }
                    }
                }
                for i in 0..<len { mean[i] = Float(acc[i] / Double(c)) }
            }
        }
        return output
    }

    public func backward(_ dy: Tensor) -> Tensor {
        precondition(dy.shape == output.shape, "ChannelMaxMeanPool: dy \(shapeString(dy.shape)) does not match the output \(shapeString(output.shape))")
        inputGrad.resize(inputShape)
        let n = inputShape[0], c = inputShape[1], hw = inputShape[2] * inputShape[3]
        let g = dy.data, dx = inputGrad.data, am = argmax.data, inv = 1 / Float(c)
        parallelFor(n * c) { q in
            let s = q / c, ch = Int32(q % c)
            let gmax = g + s * 2 * hw, gmean = gmax + hw, idx = am + s * hw, out = dx + q * hw
            for i in 0..<hw { out[i] = gmean[i] * inv + (idx[i] == ch ? gmax[i] : 0) }
        }
        return inputGrad
    }
}
