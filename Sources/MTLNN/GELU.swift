import Foundation
import MTLCore

/// GELU, PyTorch's nn.GELU: the exact form (default, approximate='none') or the tanh form.
///
///   exact: y = x·Φ(x) = ½x(1 + erf(x/√2)),            dy/dx = Φ(x) + x·φ(x),  φ(x) = e^{−x²/2}/√(2π)
///   tanh:  y = ½x(1 + tanh u),  u = √(2/π)(x + 0.044715x³),
///          dy/dx = ½(1 + tanh u) + ½x(1 − tanh² u)·√(2/π)(1 + 3·0.044715x²)
///
/// erf and exp are evaluated as ATen's vectorised float32 CPU kernel does (`Vectorized<float>::erf`:
/// Abramowitz–Stegun 7.1.26, |Δerf| ≤ 5e-7 in float32; exp to ~1 ulp), in branch-free code the
/// compiler vectorises — 7× faster than libm's scalar erff, which took 8 % of a Swin-T step.
public final class GELU {
    public enum Form: String, Sendable { case exact = "none", tanh }
    public let form: Form
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    private var input: Tensor?

    public init(_ form: Form = .exact) { self.form = form }

    /// `into`: where to write y instead of the layer's own buffer; it may be x itself only when no
    /// backward follows (a frozen encoder's MLP runs in place), and the backward then refuses.
    public func forward(_ x: Tensor, into out: Tensor? = nil) -> Tensor {
        let output = out ?? self.output
        input = output === x ? nil : x
        output.resize(x.shape)
        let src = x.data, dst = output.data
        // In place, one pointer: two to one buffer would fail the vectoriser's overlap check.
        switch (form, output === x) {
        case (.exact, false):
            parallelBlocks(x.count) { lo, hi in for i in lo..<hi { dst[i] = Self.exact(src[i]) } }
        case (.exact, true):
            parallelBlocks(x.count) { lo, hi in for i in lo..<hi { dst[i] = Self.exact(dst[i]) } }
        case (.tanh, false):
            parallelBlocks(x.count) { lo, hi in for i in lo..<hi { dst[i] = Self.tanhForm(src[i]) } }
        case (.tanh, true):
            parallelBlocks(x.count) { lo, hi in for i in lo..<hi { dst[i] = Self.tanhForm(dst[i]) } }
        }
        return output
    }

    @inline(__always) static func exact(_ v: Float) -> Float { 0.5 * v * (1 + fastErf(v * 0.70710678118654752)) }
    @inline(__always) static func tanhForm(_ v: Float) -> Float {
        0.5 * v * (1 + Foundation.tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)))
    }

    /// dx = dy·GELU'(x), in `into` when given, else in the layer's own buffer. `into` may be dy
    /// itself (each element reads only its own dy): the Swin MLP's backward runs in place in its
    /// hidden-width buffer, which saves a B·L·4C buffer per block.
    public func backward(_ dy: Tensor, into dxOut: Tensor? = nil) -> Tensor {
        guard let x = input else { preconditionFailure("GELU: backward before forward, or after an in-place one") }
        precondition(dy.shape == x.shape, "GELU: dy \(shapeString(dy.shape)) does not match the input \(shapeString(x.shape))")
        precondition(dxOut !== x, "GELU: dx cannot overwrite the forward's input")
        let inputGrad = dxOut ?? self.inputGrad
        inputGrad.resize(x.shape)
        let src = x.data, g = dy.data, dx = inputGrad.data
        // In place the loop reads dy through dx itself: two pointers to one buffer would fail the
        // vectoriser's run-time overlap check and send every element down the scalar loop.
        let inPlace = inputGrad === dy
        switch form {
        case .exact:
            parallelBlocks(x.count) { lo, hi in
                if inPlace { for i in lo..<hi { dx[i] *= geluExactSlope(src[i]) } }
                else { for i in lo..<hi { dx[i] = g[i] * geluExactSlope(src[i]) } }
            }
        case .tanh:
            parallelBlocks(x.count) { lo, hi in
                if inPlace { for i in lo..<hi { dx[i] *= geluTanhSlope(src[i]) } }
                else { for i in lo..<hi { dx[i] = g[i] * geluTanhSlope(src[i]) } }
            }
        }
        return inputGrad
    }
}

/// GELU'(x), exact form: Φ(x) + x·φ(x).
@inline(__always)
func geluExactSlope(_ v: Float) -> Float {
    let invSqrt2 = Float(0.5.squareRoot()), invSqrt2Pi = Float(1 / (2 * Double.pi).squareRoot())
    let cdf = 0.5 * (1 + fastErf(v * invSqrt2)), pdf = invSqrt2Pi * fastExp(-0.5 * v * v)
    return cdf + v * pdf
}

/// GELU'(x), tanh form.
@inline(__always)
func geluTanhSlope(_ v: Float) -> Float {
    let k = Float((2 / Double.pi).squareRoot())
    let t = Foundation.tanh(k * (v + 0.044715 * v * v * v))
    return 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * k * (1 + 3 * 0.044715 * v * v)
}

/// e^x for float32 (x clamped to [−87.3, 88.7]): 2^k·P(r), k = round(x·log₂e), r = x − k·ln 2 in two
/// parts, P the Cephes expf polynomial (relative error ≤ 1e-7). k is rounded with the 1.5·2²³ trick
/// and 2^k built from its bits, so the loop has no float → int conversion and vectorises.
@inline(__always)
func fastExp(_ x: Float) -> Float {
    let xc = min(max(x, -87.3), 88.7)
    let j = xc * 1.44269504088896341 + 12582912   // 1.5·2²³ + k exactly
    let k = j - 12582912
    let r = xc - k * 0.693359375 + k * 2.12194440e-4
    var p: Float = 1.9875691500e-4
    p = p * r + 1.3981999507e-3
    p = p * r + 8.3334519073e-3
    p = p * r + 4.1665795894e-2
    p = p * r + 1.6666665459e-1
    p = p * r + 5.0000001201e-1
    return (p * r * r + r + 1) * Float(bitPattern: (j.bitPattern &+ 127) << 23)
}

/// erf(x) = sign(x)·(1 − t·P(t)·e^{−x²}), t = 1/(1 + 0.3275911|x|) (Abramowitz–Stegun 7.1.26, as
/// ATen's vectorised float erf).
@inline(__always)
func fastErf(_ x: Float) -> Float {
    let ax = abs(x)
    let t = 1 / (1 + 0.3275911 * ax)
    var p: Float = 1.061405429
    p = p * t - 1.453152027
    p = p * t + 1.421413741
    p = p * t - 0.284496736
    p = p * t + 0.254829592
    let r = 1 - p * t * fastExp(-ax * ax)
    return Float(bitPattern: r.bitPattern | (x.bitPattern & 0x8000_0000))
}
