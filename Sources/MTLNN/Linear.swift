import MTLCore

/// y = x·Wᵀ + b, weight [out, in] (PyTorch layout). Input [N, F] or [N, F, 1, 1] → output [N, out];
/// tokens [B, L, F] → [B, L, out] (one GEMM over all B·L rows).
public final class Linear: HasParameters {
    public let name: String
    public let inFeatures: Int, outFeatures: Int
    public let weight: Parameter
    public let bias: Parameter?
    public var parameters: [Parameter] { bias.map { [weight, $0] } ?? [weight] }
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    private let empty = Tensor([0])
    private var input: Tensor?

    /// PyTorch's default init: weight and bias uniform in ±1/sqrt(inFeatures).
    public init(_ name: String, inFeatures: Int, outFeatures: Int, bias: Bool = true, rng: inout Philox) {
        self.name = name
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        let bound = 1 / Float(inFeatures).squareRoot()
        weight = Parameter("\(name).weight", uniformTensor([outFeatures, inFeatures], bound: bound, rng: &rng))
        self.bias = bias ? Parameter("\(name).bias", uniformTensor([outFeatures], bound: bound, rng: &rng)) : nil
    }

    /// Rows of the GEMM: N, or B·L for tokens.
    private func rows(_ x: Tensor) -> Int { x.rank == 3 ? x.shape[0] * x.shape[1] : x.shape[0] }

    /// `into`: where to write y (default: the layer's own buffer), for an output that is only read
    /// until the caller is done with it (Swin's shared workspace); it must not be x.
    public func forward(_ x: Tensor, into out: Tensor? = nil) -> Tensor {
        precondition(x.rank >= 2 && x.count == rows(x) * inFeatures && (x.rank != 3 || x.shape[2] == inFeatures),
                     "\(name): expected input [N, \(inFeatures)], [N, \(inFeatures), 1, 1] or tokens [B, L, \(inFeatures)], got \(shapeString(x.shape))")
        precondition(out !== x, "\(name): the output cannot overwrite the input")
        input = x
        let n = rows(x)
        let output = out ?? self.output
        output.resize(x.rank == 3 ? [x.shape[0], x.shape[1], outFeatures] : [n, outFeatures])
        let y = output.data
        if let b = bias?.value.data {
            for i in 0..<n { (y + i * outFeatures).update(from: b, count: outFeatures) }
        }
        sgemm(transB: true, m: n, n: outFeatures, k: inFeatures, a: x.data, lda: inFeatures,
              b: weight.value.data, ldb: inFeatures, beta: bias == nil ? 0 : 1, c: y, ldc: outFeatures)
        return output
    }

    /// Accumulates dW += dyᵀ·x, db += Σ dy; returns dx = dy·W in the input's shape, in `into` when
    /// given (a buffer shared by layers whose backwards never overlap; not dy) else the layer's own.
    public func backward(_ dy: Tensor, computeInputGrad: Bool = true, into dxOut: Tensor? = nil) -> Tensor {
        guard let x = input else { preconditionFailure("\(name): backward before forward") }
        let n = rows(x)
        precondition(dy.count == n * outFeatures, "\(name): dy \(shapeString(dy.shape)) does not match the output [\(n), \(outFeatures)]")
        sgemm(transA: true, m: outFeatures, n: inFeatures, k: n, a: dy.data, lda: outFeatures,
              b: x.data, ldb: inFeatures, beta: 1, c: weight.grad.data, ldc: inFeatures)
        if let db = bias?.grad.data {
            let g = UnsafePointer(dy.data), m = outFeatures
            addColumnSums(rows: n, columns: m, into: db) { g + $0 * m }
        }
        guard computeInputGrad else { return empty }
        precondition(dxOut !== dy, "\(name): dx cannot overwrite dy")
        let inputGrad = dxOut ?? self.inputGrad
        inputGrad.resize(x.shape)
        sgemm(m: n, n: inFeatures, k: outFeatures, a: dy.data, lda: outFeatures, b: weight.value.data,
              ldb: inFeatures, c: inputGrad.data, ldc: inFeatures)
        return inputGrad
    }
}
