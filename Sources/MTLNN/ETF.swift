import Foundation
import MTLCore

/// A simplex equiangular tight frame (sKEM's fixed classifier): E ∈ R^{d×K}, d ≥ K,
///   U = Q factor (d×K) of a Philox-seeded standard Gaussian d×K matrix, Householder QR in
///       Double, signs fixed so that diag(R) > 0 (which makes U unique for the matrix);
///   E = √(K/(K−1)) · U (I_K − 1 1ᵀ/K).
/// Its columns have unit norm, pairwise inner products −1/(K−1), and sum to zero.
public enum ETF {
    /// E row-major [d, K] in Double.
    public static func matrix(dimension d: Int, classes K: Int, seed: UInt64) -> [Double] {
        matrix(gaussian: gaussian(dimension: d, classes: K, seed: seed), dimension: d, classes: K)
    }

    /// The Philox-seeded standard Gaussian d×K draw (row-major, Double) the ETF is built from;
    /// exposed so that a reference implementation can be given the same matrix.
    public static func gaussian(dimension d: Int, classes K: Int, seed: UInt64) -> [Double] {
        var rng = Philox(seed: seed, stream: RNGStream.initialization.rawValue, index: 0xE7F)
        var a = [Double](repeating: 0, count: d * K)
        for i in 0..<(d * K) {
            // Box–Muller in Double (Philox.normal rounds to Float).
            var u1 = rng.uniformDouble()
            if u1 < 1e-300 { u1 = 1e-300 }
            a[i] = (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * rng.uniformDouble())
        }
        return a
    }

    /// E from a given d×K matrix (row-major).
    public static func matrix(gaussian a: [Double], dimension d: Int, classes K: Int) -> [Double] {
        precondition(K >= 2 && d >= K && a.count == d * K, "ETF: need K ≥ 2 classes, dimension d ≥ K and a d×K matrix, got d = \(d), K = \(K), \(a.count) values")
        let q = orthonormalColumns(a, rows: d, columns: K)
        let scale = (Double(K) / Double(K - 1)).squareRoot()
        var e = [Double](repeating: 0, count: d * K)
        for r in 0..<d {
            var mean = 0.0
            for j in 0..<K { mean += q[r * K + j] }
            mean /= Double(K)
            for j in 0..<K { e[r * K + j] = scale * (q[r * K + j] - mean) }
        }
        return e
    }

    /// The thin Q (rows × columns, row-major) of A = QR by Householder reflections, with the sign
    /// of each column chosen so that R's diagonal is positive.
    static func orthonormalColumns(_ input: [Double], rows m: Int, columns n: Int) -> [Double] {
        var a = input
        var reflectors = [[Double]]()
        var diagonal = [Double](repeating: 0, count: n)
        for j in 0..<n {
            var norm = 0.0
            for i in j..<m { norm += a[i * n + j] * a[i * n + j] }
            norm = norm.squareRoot()
            // α = −sign(a_jj)·‖x‖ avoids cancellation in v = x − α e₁.
            let alpha = a[j * n + j] >= 0 ? -norm : norm
            var v = [Double](repeating: 0, count: m - j)
            for i in j..<m { v[i - j] = a[i * n + j] }
            v[0] -= alpha
            var vv = 0.0
            for x in v { vv += x * x }
            diagonal[j] = alpha
            if vv > 0 {
                for col in j..<n {
                    var dot = 0.0
                    for i in j..<m { dot += v[i - j] * a[i * n + col] }
                    let f = 2 * dot / vv
                    for i in j..<m { a[i * n + col] -= f * v[i - j] }
                }
            }
            reflectors.append(vv > 0 ? v.map { $0 / vv.squareRoot() } : v)
        }
        // Q = H₀ H₁ … H_{n−1} applied to the first n columns of the identity.
        var q = [Double](repeating: 0, count: m * n)
        for j in 0..<n { q[j * n + j] = 1 }
        for j in stride(from: n - 1, through: 0, by: -1) {
            let v = reflectors[j]
            for col in 0..<n {
                var dot = 0.0
                for i in j..<m { dot += v[i - j] * q[i * n + col] }
                for i in j..<m { q[i * n + col] -= 2 * dot * v[i - j] }
            }
        }
        for j in 0..<n where diagonal[j] < 0 {
            for i in 0..<m { q[i * n + j] = -q[i * n + j] }
        }
        return q
    }
}

/// y = x E with a constant E [d, K] (an ETF, or any fixed matrix): x [..., d] → y [..., K];
/// dx = dy Eᵀ. E is a buffer, not a parameter: it is never trained.
public final class FixedProjection {
    public let inFeatures: Int, outFeatures: Int
    public let matrix: Buffer
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    private var inputShape: [Int] = []

    public init(_ name: String, matrix e: [Double], inFeatures d: Int, outFeatures k: Int) {
        precondition(e.count == d * k, "\(name): matrix has \(e.count) values, expected \(d)×\(k)")
        inFeatures = d
        outFeatures = k
        matrix = Buffer(name, Tensor([d, k], e.map { Float($0) }))
    }

    /// The ETF classifier of sKEM: E = ETF.matrix(d, K, seed).
    public convenience init(etf name: String, dimension d: Int, classes k: Int, seed: UInt64) {
        self.init(name, matrix: ETF.matrix(dimension: d, classes: k, seed: seed), inFeatures: d, outFeatures: k)
    }

    public func forward(_ x: Tensor) -> Tensor {
        precondition(x.rank >= 1 && x.shape.last == inFeatures, "FixedProjection: expected [..., \(inFeatures)], got \(shapeString(x.shape))")
        inputShape = x.shape
        let rows = x.count / inFeatures
        output.resize(Array(x.shape.dropLast()) + [outFeatures])
        sgemm(m: rows, n: outFeatures, k: inFeatures, a: x.data, lda: inFeatures,
              b: matrix.value.data, ldb: outFeatures, c: output.data, ldc: outFeatures)
        return output
    }

    public func backward(_ dy: Tensor) -> Tensor {
        precondition(dy.shape == output.shape, "FixedProjection: dy \(shapeString(dy.shape)) does not match the output \(shapeString(output.shape))")
        let rows = dy.count / outFeatures
        inputGrad.resize(inputShape)
        sgemm(transB: true, m: rows, n: inFeatures, k: outFeatures, a: dy.data, lda: outFeatures,
              b: matrix.value.data, ldb: outFeatures, c: inputGrad.data, ldc: inFeatures)
        return inputGrad
    }
}
