import MTLCore

/// Non-local (embedded-Gaussian) attention over all N = H·W positions, without the 1/√d scale
/// (MT-CP's cross-task module): with Θ, Φ [B, c, N] and G [B, c_v, N] (channels-first, as the
/// 1×1 convolutions give them), P = softmax_rows(Θᵀ Φ) (N×N, query rows), O = P Gᵀ, returned
/// channels-first as Oᵀ = G Pᵀ, [B, c_v, N] (or [B, c_v, H, W] when G is 4-D).
///
/// P is never stored: query rows are processed in blocks of `queryBlock` (memory O(block·N) per
/// thread), and backward recomputes S and P per block:
///   dP = dO G,  dS = P ⊙ (dP − rowsum(dP ⊙ P)),  dΘ_blk = Φ dSᵀ,  dΦ += Θ_blk dS,  dG += dOᵀ_blk P.
/// Every GEMM runs single-threaded inside a task; the dΦ, dG sums over blocks are taken per fixed
/// group of blocks and the groups added in order, so results do not depend on the thread count.
public final class NonLocalAttention {
    public let queryBlock: Int
    /// Blocks of a sample are split into at most this many groups for the backward sums.
    static let accumulationGroups = 4
    private let output = Tensor([0])
    private let thetaGrad = Tensor([0]), phiGrad = Tensor([0]), valueGrad = Tensor([0])
    /// Per worker: S/P of one block, and dP/dS.
    private let scores = Tensor([0]), scoreGrads = Tensor([0])
    /// Per (sample, group): partial dΦ [c, N] and dG [c_v, N].
    private let phiPartials = Tensor([0]), valuePartials = Tensor([0])
    private var theta: Tensor?, phi: Tensor?, value: Tensor?

    public init(queryBlock: Int = 256) {
        precondition(queryBlock > 0, "NonLocalAttention: the query block must be positive")
        self.queryBlock = queryBlock
    }

    private static func dims(_ t: Tensor) -> (Int, Int, Int) {
        (t.shape[0], t.shape[1], t.shape.dropFirst(2).reduce(1, *))
    }

    public func forward(theta th: Tensor, phi ph: Tensor, value g: Tensor) -> Tensor {
        let (b, c, n) = NonLocalAttention.dims(th), (_, cv, _) = NonLocalAttention.dims(g)
        precondition(th.rank >= 3 && ph.shape == th.shape && g.rank == th.rank && g.shape[0] == b
                     && NonLocalAttention.dims(g).2 == n && n > 0,
                     "NonLocalAttention: Θ \(shapeString(th.shape)), Φ \(shapeString(ph.shape)), G \(shapeString(g.shape)) must be [B, c, N...], [B, c, N...], [B, c_v, N...]")
        theta = th; phi = ph; value = g
        output.resize([b, cv] + Array(g.shape.dropFirst(2)))
        let nb = min(queryBlock, n), blocks = (n + nb - 1) / nb, tasks = b * blocks
        let workers = max(1, min(Threads.count, tasks))
        scores.resize([workers, nb, n])
        let tp = th.data, pp = ph.data, gp = g.data, op = output.data, sp = scores.data
        parallelFor(workers) { worker in
            let s = sp + worker * nb * n
            for task in (tasks * worker / workers)..<(tasks * (worker + 1) / workers) {
                let sample = task / blocks, q0 = (task % blocks) * nb, rows = min(nb, n - q0)
                let t = tp + sample * c * n, f = pp + sample * c * n, v = gp + sample * cv * n
                sgemmOnThisThread(transA: true, m: rows, n: n, k: c, a: t + q0, lda: n, b: f, ldb: n, c: s, ldc: n)
                for r in 0..<rows { Softmax.forwardRow(s + r * n, s + r * n, n) }
                sgemmOnThisThread(transB: true, m: cv, n: rows, k: n, a: v, lda: n, b: s, ldb: n,
                                  c: op + sample * cv * n + q0, ldc: n)
            }
        }
        return output
    }

    /// (dΘ, dΦ, dG) for dy = d(Oᵀ), in the input shapes.
    public func backward(_ dy: Tensor) -> (theta: Tensor, phi: Tensor, value: Tensor) {
        guard let th = theta, let ph = phi, let g = value else { preconditionFailure("NonLocalAttention: backward before forward") }
        precondition(dy.shape == output.shape, "NonLocalAttention: dy \(shapeString(dy.shape)) does not match the output \(shapeString(output.shape))")
        let (b, c, n) = NonLocalAttention.dims(th), cv = g.shape[1]
        let nb = min(queryBlock, n), blocks = (n + nb - 1) / nb
        let groups = min(blocks, NonLocalAttention.accumulationGroups), tasks = b * groups
        let workers = max(1, min(Threads.count, tasks))
        thetaGrad.resize(th.shape); phiGrad.resize(ph.shape); valueGrad.resize(g.shape)
        scores.resize([workers, nb, n]); scoreGrads.resize([workers, nb, n])
        phiPartials.resize([tasks, c, n]); valuePartials.resize([tasks, cv, n])
        let tp = th.data, pp = ph.data, gp = g.data, dop = dy.data
        let sp = scores.data, dsp = scoreGrads.data, dtp = thetaGrad.data
        let php = phiPartials.data, vpp = valuePartials.data
        parallelFor(workers) { worker in
            let s = sp + worker * nb * n, ds = dsp + worker * nb * n
            for task in (tasks * worker / workers)..<(tasks * (worker + 1) / workers) {
                let sample = task / groups, group = task % groups
                let t = tp + sample * c * n, f = pp + sample * c * n, v = gp + sample * cv * n
                let dO = dop + sample * cv * n, dT = dtp + sample * c * n
                let dF = php + task * c * n, dG = vpp + task * cv * n
                let first = blocks * group / groups, last = blocks * (group + 1) / groups
                for blk in first..<last {
                    let q0 = blk * nb, rows = min(nb, n - q0), beta: Float = blk == first ? 0 : 1
                    sgemmOnThisThread(transA: true, m: rows, n: n, k: c, a: t + q0, lda: n, b: f, ldb: n, c: s, ldc: n)
                    for r in 0..<rows { Softmax.forwardRow(s + r * n, s + r * n, n) }
                    sgemmOnThisThread(transA: true, m: rows, n: n, k: cv, a: dO + q0, lda: n, b: v, ldb: n, c: ds, ldc: n)
                    for r in 0..<rows { Softmax.backwardRow(s + r * n, ds + r * n, ds + r * n, n) }
                    sgemmOnThisThread(transB: true, m: c, n: rows, k: n, a: f, lda: n, b: ds, ldb: n, c: dT + q0, ldc: n)
                    sgemmOnThisThread(m: c, n: n, k: rows, a: t + q0, lda: n, b: ds, ldb: n, beta: beta, c: dF, ldc: n)
                    sgemmOnThisThread(m: cv, n: n, k: rows, a: dO + q0, lda: n, b: s, ldb: n, beta: beta, c: dG, ldc: n)
                }
            }
        }
        // Groups of a sample added in order.
        let dfp = phiGrad.data, dgp = valueGrad.data
        parallelFor(b * (c + cv)) { q in
            let sample = q / (c + cv), ch = q % (c + cv)
            let (dst, part, rowsPerTask, row) = ch < c ? (dfp + (sample * c + ch) * n, php, c, ch)
                                                        : (dgp + (sample * cv + ch - c) * n, vpp, cv, ch - c)
            dst.update(from: part + ((sample * groups) * rowsPerTask + row) * n, count: n)
            for grp in 1..<max(groups, 1) {
                let src = part + ((sample * groups + grp) * rowsPerTask + row) * n
                for i in 0..<n { dst[i] += src[i] }
            }
        }
        return (thetaGrad, phiGrad, valueGrad)
    }
}
