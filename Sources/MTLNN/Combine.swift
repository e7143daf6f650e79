import MTLCore

/// Residual addition a + b (same shapes). Its backward is the identity for BOTH inputs:
/// pass the same dy to each branch (`backward` returns it, for symmetry with other layers).
public final class Add {
    private let output = Tensor([0])
    public init() {}

    public func forward(_ a: Tensor, _ b: Tensor) -> Tensor {
        precondition(a.shape == b.shape, "Add: shapes \(shapeString(a.shape)) and \(shapeString(b.shape)) differ")
        output.resize(a.shape)
        let x = a.data, y = b.data, z = output.data
        parallelBlocks(a.count) { lo, hi in
            for i in lo..<hi { z[i] = x[i] + y[i] }
        }
        return output
    }

    /// d(a + b)/da = d(a + b)/db = identity: both gradients are dy itself (not a copy).
    public func backward(_ dy: Tensor) -> (Tensor, Tensor) { (dy, dy) }
}

/// Concatenation along channels: [N, C₁, H, W], [N, C₂, H, W], ... → [N, ΣCᵢ, H, W].
public final class Concat {
    private let output = Tensor([0])
    private var inputGrads: [Tensor] = []
    private var channelCounts: [Int] = []
    public init() {}

    public func forward(_ xs: [Tensor]) -> Tensor {
        precondition(!xs.isEmpty, "Concat: no inputs")
        let n = xs[0].n, h = xs[0].h, w = xs[0].w
        for x in xs {
            precondition(x.rank == 4 && x.n == n && x.h == h && x.w == w,
                         "Concat: input \(shapeString(x.shape)) does not match [\(n), *, \(h), \(w)]")
        }
        channelCounts = xs.map { $0.c }
        let total = channelCounts.reduce(0, +), hw = h * w
        output.resize([n, total, h, w])
        let dst = output.data
        var offset = 0
        for x in xs {
            let c = x.c, src = x.data, off = offset
            parallelFor(n) { s in
                (dst + (s * total + off) * hw).update(from: src + s * c * hw, count: c * hw)
            }
            offset += c
        }
        return output
    }

    /// The channel slices of dy, one per input (owned by the layer).
    public func backward(_ dy: Tensor) -> [Tensor] {
        let total = channelCounts.reduce(0, +)
        precondition(dy.rank == 4 && dy.c == total, "Concat: dy \(shapeString(dy.shape)) does not match the output \(shapeString(output.shape))")
        if inputGrads.count != channelCounts.count { inputGrads = channelCounts.map { _ in Tensor([0]) } }
        let n = dy.n, hw = dy.h * dy.w, src = dy.data
        var offset = 0
        for (i, c) in channelCounts.enumerated() {
            let g = inputGrads[i], off = offset
            g.resize([n, c, dy.h, dy.w])
            let dst = g.data
            parallelFor(n) { s in
                (dst + s * c * hw).update(from: src + (s * total + off) * hw, count: c * hw)
            }
            offset += c
        }
        return inputGrads
    }
}
