import Foundation
import MTLCore

/// Softmax over the last axis, safe for large scores: m = max s, e = exp(s − m), p = e/Σe.
/// Backward: ds = p ⊙ (dp − ⟨dp, p⟩) per row. The row kernels are also what attention uses.
public final class Softmax {
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    public init() {}

    public func forward(_ s: Tensor) -> Tensor {
        precondition(s.rank >= 1 && (s.shape.last ?? 0) > 0, "Softmax: expected [..., n] with n > 0, got \(shapeString(s.shape))")
        let n = s.shape.last!, rows = s.count / n
        output.resize(s.shape)
        let src = s.data, dst = output.data
        parallelFor(rows, minChunk: 16) { r in Softmax.forwardRow(src + r * n, dst + r * n, n) }
        return output
    }

    public func backward(_ dp: Tensor) -> Tensor {
        precondition(dp.shape == output.shape, "Softmax: dp \(shapeString(dp.shape)) does not match the output \(shapeString(output.shape))")
        let n = dp.shape.last!, rows = dp.count / n
        inputGrad.resize(dp.shape)
        let p = output.data, g = dp.data, ds = inputGrad.data
        parallelFor(rows, minChunk: 16) { r in Softmax.backwardRow(p + r * n, g + r * n, ds + r * n, n) }
        return inputGrad
    }

    /// p = softmax(s) of one row (in place allowed: p may equal s).
    @inline(__always)
    static func forwardRow(_ s: UnsafePointer<Float>, _ p: UnsafeMutablePointer<Float>, _ n: Int) {
        var m = -Float.infinity
        for i in 0..<n { m = max(m, s[i]) }
        var sum: Float = 0
        for i in 0..<n { let e = exp(s[i] - m); p[i] = e; sum += e }
        let inv = 1 / sum
        for i in 0..<n { p[i] *= inv }
    }

    /// ds = p ⊙ (dp − ⟨dp, p⟩) of one row (ds may equal dp).
    @inline(__always)
    static func backwardRow(_ p: UnsafePointer<Float>, _ dp: UnsafePointer<Float>, _ ds: UnsafeMutablePointer<Float>, _ n: Int) {
        var dot: Float = 0
        for i in 0..<n { dot += dp[i] * p[i] }
        for i in 0..<n { ds[i] = p[i] * (dp[i] - dot) }
    }
}
