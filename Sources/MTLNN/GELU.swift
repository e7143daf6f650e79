import Foundation
import MTLCore

/// GELU, PyTorch's nn.GELU: the exact form (default, approximate='none') or the tanh form.
///
///   exact: y = x·Φ(x) = ½x(1 + erf(x/√2)),            dy/dx = Φ(x) + x·φ(x),  φ(x) = e^{−x²/2}/√(2π)
///   tanh:  y = ½x(1 + tanh u),  u = √(2/π)(x + 0.044715x³),
///          dy/dx = ½(1 + tanh u) + ½x(1 − tanh² u)·√(2/π)(1 + 3·0.044715x²)
public final class GELU {
    public enum Form: String, Sendable { case exact = "none", tanh }
    public let form: Form
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    private var input: Tensor?

    public init(_ form: Form = .exact) { self.form = form }

    public func forward(_ x: Tensor) -> Tensor {
        input = x
        output.resize(x.shape)
        let src = x.data, dst = output.data
        switch form {
        case .exact:
            parallelBlocks(x.count) { lo, hi in
                for i in lo..<hi { let v = src[i]; dst[i] = 0.5 * v * (1 + erf(v * Float(0.5.squareRoot()))) }
            }
        case .tanh:
            let k = Float((2 / Double.pi).squareRoot())
            parallelBlocks(x.count) { lo, hi in
                for i in lo..<hi { let v = src[i]; dst[i] = 0.5 * v * (1 + Foundation.tanh(k * (v + 0.044715 * v * v * v))) }
            }
        }
        return output
    }

    public func backward(_ dy: Tensor) -> Tensor {
        guard let x = input else { preconditionFailure("GELU: backward before forward") }
        precondition(dy.shape == x.shape, "GELU: dy \(shapeString(dy.shape)) does not match the input \(shapeString(x.shape))")
        inputGrad.resize(x.shape)
        let src = x.data, g = dy.data, dx = inputGrad.data
        switch form {
        case .exact:
            let invSqrt2 = Float(0.5.squareRoot()), invSqrt2Pi = Float(1 / (2 * Double.pi).squareRoot())
            parallelBlocks(x.count) { lo, hi in
                for i in lo..<hi {
                    let v = src[i]
                    let cdf = 0.5 * (1 + erf(v * invSqrt2)), pdf = invSqrt2Pi * exp(-0.5 * v * v)
                    dx[i] = g[i] * (cdf + v * pdf)
                }
            }
        case .tanh:
            let k = Float((2 / Double.pi).squareRoot())
            parallelBlocks(x.count) { lo, hi in
                for i in lo..<hi {
                    let v = src[i]
                    let t = Foundation.tanh(k * (v + 0.044715 * v * v * v))
                    dx[i] = g[i] * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * k * (1 + 3 * 0.044715 * v * v))
                }
            }
        }
        return inputGrad
    }
}
