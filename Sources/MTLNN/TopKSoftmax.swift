import Foundation
import MTLCore

/// Softmax over the last axis restricted to the k largest scores of each row (KEM's sparse
/// gating). The selection S holds the k largest scores; among equal scores the lower index wins.
///
///   masked (A):       p = softmax(s) over the whole row, y = p ⊙ 1_S (rows sum to less than 1)
///                     ds = p ⊙ (g − ⟨g, p⟩), g = dy ⊙ 1_S (unselected scores still get
///                     gradient through the normaliser)
///   renormalized (B): y_i = e^{s_i} / Σ_{j∈S} e^{s_j} on S, 0 elsewhere
///                     ds = y ⊙ (dy − ⟨dy, y⟩) (0 off S)
///
/// The map is smooth only away from ties between the k-th and (k+1)-th scores: there the
/// selection switches and y jumps, and the gradient above is that of the current selection.
public final class TopKSoftmax {
    public enum Variant: String, Sendable { case masked, renormalized }
    public let k: Int
    public let variant: Variant
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    /// masked: the full-row softmax; renormalized: unused (y itself is what backward needs).
    private let probability = Tensor([0])
    /// 1 on the selection, 0 elsewhere.
    private let selection = Tensor([0])
    /// A copy of each row for the selection of the k-th largest score.
    private let scratch = Tensor([0])

    public init(k: Int, variant: Variant = .masked) {
        precondition(k > 0, "TopKSoftmax: k must be positive")
        self.k = k
        self.variant = variant
    }

    public func forward(_ s: Tensor) -> Tensor {
        precondition(s.rank >= 1 && (s.shape.last ?? 0) >= k, "TopKSoftmax: expected [..., n] with n ≥ k = \(k), got \(shapeString(s.shape))")
        let n = s.shape.last!, rows = s.count / n, k = self.k
        output.resize(s.shape)
        selection.resize(s.shape)
        scratch.resize(s.shape)
        if variant == .masked { probability.resize(s.shape) }
        let src = s.data, y = output.data, mask = selection.data, tmp = scratch.data
        let prob = probability.data, masked = variant == .masked
        parallelFor(rows, minChunk: 16) { r in
            let row = src + r * n, yr = y + r * n, m = mask + r * n
            TopKSoftmax.select(row, n, k, m, tmp + r * n)
            if masked {
                let p = prob + r * n
                Softmax.forwardRow(row, p, n)
                for i in 0..<n { yr[i] = p[i] * m[i] }
            } else {
                var top = -Float.infinity
                for i in 0..<n where m[i] != 0 { top = max(top, row[i]) }
                var sum: Float = 0
                for i in 0..<n { let e = m[i] != 0 ? exp(row[i] - top) : 0; yr[i] = e; sum += e }
                let inv = 1 / sum
                for i in 0..<n { yr[i] *= inv }
            }
        }
        return output
    }

    public func backward(_ dy: Tensor) -> Tensor {
        precondition(dy.shape == output.shape, "TopKSoftmax: dy \(shapeString(dy.shape)) does not match the output \(shapeString(output.shape))")
        let n = dy.shape.last!, rows = dy.count / n
        inputGrad.resize(dy.shape)
        let g = dy.data, ds = inputGrad.data, mask = selection.data, y = output.data, prob = probability.data
        let masked = variant == .masked
        parallelFor(rows, minChunk: 16) { r in
            let gr = g + r * n, dr = ds + r * n, m = mask + r * n
            if masked {
                let p = prob + r * n
                for i in 0..<n { dr[i] = gr[i] * m[i] }
                Softmax.backwardRow(p, dr, dr, n)
            } else {
                Softmax.backwardRow(y + r * n, gr, dr, n)
            }
        }
        return inputGrad
    }

    /// mask[i] = 1 for the k largest of s[0..<n] (ties → lower index), else 0. `tmp` holds n floats.
    static func select(_ s: UnsafePointer<Float>, _ n: Int, _ k: Int, _ mask: UnsafeMutablePointer<Float>,
                       _ tmp: UnsafeMutablePointer<Float>) {
        tmp.update(from: s, count: n)
        let kth = kthLargest(tmp, n, k)
        // All scores above the k-th value are in; the remaining places go to the first equal ones.
        var above = 0
        for i in 0..<n { if s[i] > kth { above += 1 } }
        var equalLeft = k - above
        for i in 0..<n {
            if s[i] > kth { mask[i] = 1 }
            else if s[i] == kth && equalLeft > 0 { mask[i] = 1; equalLeft -= 1 }
            else { mask[i] = 0 }
        }
    }

    /// The k-th largest value of a[0..<n] (k ≥ 1), by quickselect with a median-of-three pivot;
    /// reorders `a`.
    static func kthLargest(_ a: UnsafeMutablePointer<Float>, _ n: Int, _ k: Int) -> Float {
        var lo = 0, hi = n - 1
        let target = k - 1   // position in descending order
        while lo < hi {
            let mid = lo + (hi - lo) / 2
            var x = a[lo], y = a[mid], z = a[hi]
            if x < y { swap(&x, &y) }
            if y < z { swap(&y, &z) }
            if x < y { swap(&x, &y) }
            let pivot = y
            // Hoare partition into [lo, j] ≥ pivot and [j+1, hi] ≤ pivot (descending).
            var i = lo - 1, j = hi + 1
            while true {
                repeat { i += 1 } while a[i] > pivot
                repeat { j -= 1 } while a[j] < pivot
                if i >= j { break }
                let t = a[i]; a[i] = a[j]; a[j] = t
            }
            if target <= j { hi = j } else { lo = j + 1 }
        }
        return a[lo]
    }
}
