import Foundation
import MTLCore

/// y = 1/(1 + e^{−x}); dx = dy·y(1 − y). The exponent is always of −|x|, so no overflow.
public final class Sigmoid {
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    public init() {}

    public func forward(_ x: Tensor) -> Tensor {
        output.resize(x.shape)
        let src = x.data, y = output.data
        parallelBlocks(x.count) { lo, hi in
            for i in lo..<hi { y[i] = Sigmoid.value(src[i]) }
        }
        return output
    }

    public func backward(_ dy: Tensor) -> Tensor {
        precondition(dy.shape == output.shape, "Sigmoid: dy \(shapeString(dy.shape)) does not match the output \(shapeString(output.shape))")
        inputGrad.resize(dy.shape)
        let y = output.data, g = dy.data, dx = inputGrad.data
        parallelBlocks(dy.count) { lo, hi in
            for i in lo..<hi { dx[i] = g[i] * y[i] * (1 - y[i]) }
        }
        return inputGrad
    }

    @inline(__always)
    static func value(_ v: Float) -> Float {
        let e = expf(-abs(v))
        return v >= 0 ? 1 / (1 + e) : e / (1 + e)
    }
}

/// y = x ⊙ a with x [N, C, H, W] and a gate broadcast over space, a [N, C, 1, 1] (channel
/// attention), or over channels, a [N, 1, H, W] (spatial attention).
/// Backward: dx = dy ⊙ a, da = Σ over the broadcast axis of dy ⊙ x (in Double, in index order).
public final class BroadcastMultiply {
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    private let gateGrad = Tensor([0])
    private var input: Tensor?
    private var gate: Tensor?
    public init() {}

    public func forward(_ x: Tensor, _ a: Tensor) -> Tensor {
        precondition(x.rank == 4 && a.rank == 4 && a.n == x.n
                     && ((a.c == x.c && a.h == 1 && a.w == 1) || (a.c == 1 && a.h == x.h && a.w == x.w)),
                     "BroadcastMultiply: gate \(shapeString(a.shape)) must be [N, C, 1, 1] or [N, 1, H, W] for x \(shapeString(x.shape))")
        input = x
        gate = a
        output.resize(x.shape)
        let c = x.c, hw = x.h * x.w, src = x.data, g = a.data, y = output.data
        if a.c == c && a.h * a.w == 1 {
            parallelFor(x.n * c) { q in
                let s = g[q], xs = src + q * hw, ys = y + q * hw
                for i in 0..<hw { ys[i] = xs[i] * s }
            }
        } else {
            parallelFor(x.n * c) { q in
                let gs = g + (q / c) * hw, xs = src + q * hw, ys = y + q * hw
                for i in 0..<hw { ys[i] = xs[i] * gs[i] }
            }
        }
        return output
    }

    /// (dx, da).
    public func backward(_ dy: Tensor) -> (Tensor, Tensor) {
        guard let x = input, let a = gate else { preconditionFailure("BroadcastMultiply: backward before forward") }
        precondition(dy.shape == x.shape, "BroadcastMultiply: dy \(shapeString(dy.shape)) does not match x \(shapeString(x.shape))")
        inputGrad.resize(x.shape)
        gateGrad.resize(a.shape)
        let c = x.c, hw = x.h * x.w, src = x.data, g = a.data, gy = dy.data, dx = inputGrad.data, da = gateGrad.data
        if a.c == c && a.h * a.w == 1 {
            parallelFor(x.n * c) { q in
                let s = g[q], xs = src + q * hw, gs = gy + q * hw, dxs = dx + q * hw
                for i in 0..<hw { dxs[i] = gs[i] * s }
                da[q] = Float(sumAndDot(gs, xs, hw).1)
            }
        } else {
            parallelFor(x.n * c) { q in
                let gt = g + (q / c) * hw, gs = gy + q * hw, dxs = dx + q * hw
                for i in 0..<hw { dxs[i] = gs[i] * gt[i] }
            }
            // da[n, p] = Σ_c dy[n, c, p]·x[n, c, p]: per (sample, block of pixels), channels in order.
            let blocks = (hw + 255) / 256
            parallelFor(x.n * blocks) { task in
                let s = task / blocks, lo = (task % blocks) * 256, hi = min(hw, lo + 256)
                let out = da + s * hw
                for p in lo..<hi {
                    var acc = 0.0
                    for ch in 0..<c { let o = (s * c + ch) * hw + p; acc += Double(gy[o]) * Double(src[o]) }
                    out[p] = Float(acc)
                }
            }
        }
        return (inputGrad, gateGrad)
    }
}
