import MTLCore

// Small helpers shared by the layers: initialisation, the reductions' block size,
// an Int32 side buffer (argmax indices), Double sums that the compiler can vectorise.

/// A tensor of `shape` with values uniform in [-bound, bound), drawn in order from `rng`
/// (PyTorch's kaiming_uniform_(a=sqrt(5)) gives bound = 1/sqrt(fan_in) for conv/linear weights,
/// and its bias init uses the same bound).
func uniformTensor(_ shape: [Int], bound: Float, rng: inout Philox) -> Tensor {
    let t = Tensor(shape)
    for i in 0..<t.count { t.data[i] = (2 * rng.uniform() - 1) * bound }
    return t
}

/// Reductions over elements (the losses' sums) add their partial sums in fixed blocks of this
/// many elements, so that their rounding does not depend on the number of threads. Element-wise
/// loops use MTLCore's `parallelBlocks`, whose block size changes no result.
let elementBlock = 1 << 14

/// acc[j] += Σ_i row(i)[j] for i < rows, j < columns: a bias gradient. Summed in Double with the rows
/// in order (bit-identical for any thread count), 64 columns per task so that the reads of a row are
/// contiguous and vectorise.
func addColumnSums(rows: Int, columns: Int, into acc: UnsafeMutablePointer<Float>, row: (Int) -> UnsafePointer<Float>) {
    let block = 64
    parallelFor((columns + block - 1) / block) { q in
        let lo = q * block, w = min(block, columns - lo)
        var s = [Double](repeating: 0, count: w)
        s.withUnsafeMutableBufferPointer { s in
            for i in 0..<rows {
                let r = row(i) + lo
                for j in 0..<w { s[j] += Double(r[j]) }
            }
            for j in 0..<w { acc[lo + j] += Float(s[j]) }
        }
    }
}

/// Sum of x[0..<n] and of x[i]*y[i] in Double, with four independent accumulators so that
/// the additions are not one long dependency chain.
@inline(__always)
func sumAndDot(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int) -> (Double, Double) {
    var s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    var d0 = 0.0, d1 = 0.0, d2 = 0.0, d3 = 0.0
    var i = 0
    while i + 4 <= n {
        let a0 = Double(x[i]), a1 = Double(x[i + 1]), a2 = Double(x[i + 2]), a3 = Double(x[i + 3])
        s0 += a0; s1 += a1; s2 += a2; s3 += a3
        d0 += a0 * Double(y[i]); d1 += a1 * Double(y[i + 1])
        d2 += a2 * Double(y[i + 2]); d3 += a3 * Double(y[i + 3])
        i += 4
    }
    while i < n { let a = Double(x[i]); s0 += a; d0 += a * Double(y[i]); i += 1 }
    return ((s0 + s1) + (s2 + s3), (d0 + d1) + (d2 + d3))
}

/// Sum of x[0..<n] in Double (four accumulators).
@inline(__always)
func sumDouble(_ x: UnsafePointer<Float>, _ n: Int) -> Double {
    var s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    var i = 0
    while i + 4 <= n {
        s0 += Double(x[i]); s1 += Double(x[i + 1]); s2 += Double(x[i + 2]); s3 += Double(x[i + 3])
        i += 4
    }
    while i < n { s0 += Double(x[i]); i += 1 }
    return (s0 + s1) + (s2 + s3)
}

/// A growable array that keeps its allocation: MaxPool2d's argmax indices (Int32), the losses'
/// and BatchNorm's per-block partial sums (Double).
final class ScratchBuffer<Element: Numeric> {
    private(set) var data: UnsafeMutablePointer<Element>
    private(set) var count = 0
    private var capacity: Int
    init() { capacity = 1; data = .allocate(capacity: 1); data.initialize(to: 0) }
    deinit { data.deallocate() }
    /// Makes room for n elements; keeps the allocation when it is large enough (no allocation
    /// step after step). The contents are unspecified after a resize.
    func resize(_ n: Int) {
        if n > capacity {
            data.deallocate()
            capacity = n
            data = .allocate(capacity: n)
            data.initialize(repeating: 0, count: n)
        }
        count = n
    }
    func zero() { data.update(repeating: 0, count: count) }
    var buffer: UnsafeMutableBufferPointer<Element> { UnsafeMutableBufferPointer(start: data, count: count) }
}
typealias Int32Buffer = ScratchBuffer<Int32>
typealias DoubleBuffer = ScratchBuffer<Double>

/// "[2, 3, 4, 5]" for error messages.
func shapeString(_ s: [Int]) -> String { "[" + s.map(String.init).joined(separator: ", ") + "]" }
