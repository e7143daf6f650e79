import Foundation
import MTLCore

/// LayerNorm over the last axis (channels of tokens [B, L, C], or any [..., C]), as PyTorch's
/// nn.LayerNorm(C): biased variance, ε inside the square root, affine γ (weight) and β (bias).
///
/// Forward per row:  μ = mean x,  σ² = mean (x − μ)²,  r = 1/√(σ² + ε),  x̂ = (x − μ)·r,  y = γ⊙x̂ + β.
/// Backward per row: g = dy⊙γ,  dx = r·(g − mean g − x̂·mean(g⊙x̂));  dγ += Σ_rows dy⊙x̂,  dβ += Σ_rows dy.
/// Row statistics are summed in Double; γ and β gradients are summed per fixed block of rows, then
/// the blocks in order, so the result does not depend on the thread count.
public final class LayerNorm: HasParameters {
    public let name: String
    public let features: Int
    public let eps: Float
    public let weight: Parameter
    public let bias: Parameter
    public var parameters: [Parameter] { [weight, bias] }
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    /// x̂ and r of the last forward (the backward needs nothing else).
    private let normalized = Tensor([0])
    private let inverseStd = Tensor([0])
    /// Per block of rows: partial dγ and dβ, [blocks, 2, C].
    private let partials = DoubleBuffer()
    static let rowsPerBlock = 64

    public init(_ name: String, features: Int, eps: Float = 1e-5) {
        precondition(features > 0, "\(name): LayerNorm needs at least one feature")
        self.name = name
        self.features = features
        self.eps = eps
        weight = Parameter("\(name).weight", Tensor([features], repeating: 1))
        bias = Parameter("\(name).bias", Tensor([features]))
    }

    /// `into`: where to write y (default: the layer's own buffer); the backward does not read y, so
    /// when only the next layer's forward reads it, a shared buffer does (Swin's workspace). Not x.
    /// `forBackward: false` (no backward follows: a frozen encoder) skips storing x̂ and r.
    public func forward(_ x: Tensor, into out: Tensor? = nil, forBackward: Bool = true) -> Tensor {
        precondition(x.rank >= 1 && x.shape.last == features,
                     "\(name): expected input [..., \(features)], got \(shapeString(x.shape))")
        precondition(out !== x, "\(name): the output cannot overwrite the input")
        let c = features, rows = x.count / c
        let output = out ?? self.output
        output.resize(x.shape)
        let src = x.data, y = output.data
        let g = weight.value.data, b = bias.value.data, eps = Double(self.eps)
        guard forBackward else {
            parallelFor(rows, minChunk: 16) { row in
                let xr = src + row * c, yr = y + row * c
                let (mean, r) = Self.statistics(xr, c, eps)
                for i in 0..<c { yr[i] = g[i] * Float((Double(xr[i]) - mean) * r) + b[i] }
            }
            return output
        }
        normalized.resize(x.shape)
        inverseStd.resize([rows])
        let xh = normalized.data, rs = inverseStd.data
        parallelFor(rows, minChunk: 16) { row in
            let xr = src + row * c
            let (mean, r) = Self.statistics(xr, c, eps)
            rs[row] = Float(r)
            let xhr = xh + row * c, yr = y + row * c
            for i in 0..<c {
                let v = Float((Double(xr[i]) - mean) * r)
                xhr[i] = v
                yr[i] = g[i] * v + b[i]
            }
        }
        return output
    }

    /// μ and r = 1/√(σ² + ε) of one row of c values, in Double.
    @inline(__always) static func statistics(_ xr: UnsafePointer<Float>, _ c: Int, _ eps: Double) -> (Double, Double) {
        var mean = 0.0
        for i in 0..<c { mean += Double(xr[i]) }
        mean /= Double(c)
        var variance = 0.0
        for i in 0..<c { let d = Double(xr[i]) - mean; variance += d * d }
        variance /= Double(c)
        return (mean, 1 / (variance + eps).squareRoot())
    }

    /// Accumulates dγ and dβ; returns dx, in `into` when given (not dy: dγ reads dy after dx is
    /// written) else in the layer's own buffer.
    public func backward(_ dy: Tensor, into dxOut: Tensor? = nil) -> Tensor {
        precondition(dy.shape == normalized.shape,
                     "\(name): dy \(shapeString(dy.shape)) does not match the output \(shapeString(normalized.shape))")
        precondition(dxOut !== dy, "\(name): dx cannot overwrite dy")
        let c = features, rows = dy.count / c
        let inputGrad = dxOut ?? self.inputGrad
        inputGrad.resize(dy.shape)
        let gy = dy.data, xh = normalized.data, rs = inverseStd.data, dx = inputGrad.data
        let gamma = weight.value.data
        parallelFor(rows, minChunk: 16) { row in
            let dyr = gy + row * c, xhr = xh + row * c, dxr = dx + row * c
            var meanG = 0.0, meanGX = 0.0
            for i in 0..<c {
                let gi = Double(dyr[i] * gamma[i])
                meanG += gi
                meanGX += gi * Double(xhr[i])
            }
            meanG /= Double(c)
            meanGX /= Double(c)
            let r = Double(rs[row])
            for i in 0..<c {
                let gi = Double(dyr[i] * gamma[i])
                dxr[i] = Float(r * (gi - meanG - Double(xhr[i]) * meanGX))
            }
        }
        let per = LayerNorm.rowsPerBlock, blocks = (rows + per - 1) / per
        partials.resize(blocks * 2 * c)
        let p = partials.data
        parallelFor(blocks) { blk in
            let dg = p + blk * 2 * c, db = dg + c
            dg.update(repeating: 0, count: 2 * c)
            for row in (blk * per)..<min(rows, (blk + 1) * per) {
                let dyr = gy + row * c, xhr = xh + row * c
                for i in 0..<c {
                    dg[i] += Double(dyr[i]) * Double(xhr[i])
                    db[i] += Double(dyr[i])
                }
            }
        }
        let wg = weight.grad.data, bg = bias.grad.data
        for i in 0..<c {
            var sg = 0.0, sb = 0.0
            for blk in 0..<blocks { sg += p[blk * 2 * c + i]; sb += p[blk * 2 * c + c + i] }
            wg[i] += Float(sg)
            bg[i] += Float(sb)
        }
        return inputGrad
    }
}
