import Foundation
import MTLCore

/// Per-pixel L2 normalisation over channels, F.normalize(x, p=2, dim=1, eps=1e-12):
/// n̂ = x / max(‖x‖, ε) on [N, C, H, W].
/// Backward: dx = (dn̂ − n̂⟨n̂, dn̂⟩)/‖x‖ where ‖x‖ > ε; below ε the map is x/ε, linear: dx = dn̂/ε.
public final class L2Normalize {
    public static let eps: Float = 1e-12
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    /// 1/max(‖x‖, ε) per pixel, negative where the norm was clamped (marks the linear branch).
    private let inverseNorm = Tensor([0])
    static let pixelsPerTask = 256
    public init() {}

    public func forward(_ x: Tensor) -> Tensor {
        precondition(x.rank == 4 && x.c > 0, "L2Normalize: expected [N, C, H, W], got \(shapeString(x.shape))")
        let n = x.n, c = x.c, hw = x.h * x.w, per = L2Normalize.pixelsPerTask
        output.resize(x.shape)
        inverseNorm.resize([n, hw])
        let src = x.data, y = output.data, inv = inverseNorm.data
        let blocks = (hw + per - 1) / per
        parallelFor(n * blocks) { task in
            let s = task / blocks, lo = (task % blocks) * per, len = min(hw, lo + per) - lo
            let xs = src + s * c * hw + lo, ys = y + s * c * hw + lo, r = inv + s * hw + lo
            withUnsafeTemporaryAllocation(of: Double.self, capacity: per) { sq in
                for i in 0..<len { sq[i] = 0 }
                for ch in 0..<c {
                    let row = xs + ch * hw
                    for i in 0..<len { sq[i] += Double(row[i]) * Double(row[i]) }
                }
                for i in 0..<len {
                    let norm = Float(sq[i].squareRoot())
                    r[i] = norm > L2Normalize.eps ? 1 / norm : -1 / L2Normalize.eps
                }
            }
            for ch in 0..<c {
                let row = xs + ch * hw, out = ys + ch * hw
                for i in 0..<len { out[i] = row[i] * abs(r[i]) }
            }
        }
        return output
    }

    public func backward(_ dn: Tensor) -> Tensor {
        precondition(dn.shape == output.shape, "L2Normalize: dy \(shapeString(dn.shape)) does not match the output \(shapeString(output.shape))")
        let n = dn.n, c = dn.c, hw = dn.h * dn.w, per = L2Normalize.pixelsPerTask
        inputGrad.resize(dn.shape)
        let y = output.data, g = dn.data, dx = inputGrad.data, inv = inverseNorm.data
        let blocks = (hw + per - 1) / per
        parallelFor(n * blocks) { task in
            let s = task / blocks, lo = (task % blocks) * per, len = min(hw, lo + per) - lo
            let off = s * c * hw + lo, r = inv + s * hw + lo
            withUnsafeTemporaryAllocation(of: Double.self, capacity: per) { dot in
                for i in 0..<len { dot[i] = 0 }
                for ch in 0..<c {
                    let yr = y + off + ch * hw, gr = g + off + ch * hw
                    for i in 0..<len { dot[i] += Double(yr[i]) * Double(gr[i]) }
                }
                for ch in 0..<c {
                    let yr = y + off + ch * hw, gr = g + off + ch * hw, out = dx + off + ch * hw
                    for i in 0..<len {
                        out[i] = r[i] > 0 ? (gr[i] - yr[i] * Float(dot[i])) * r[i] : -gr[i] * r[i]
                    }
                }
            }
        }
        return inputGrad
    }
}
