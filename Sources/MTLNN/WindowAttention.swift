import Foundation
import MTLCore

/// Multi-head self-attention inside windows of N = ws² tokens with Swin's relative-position bias
/// (timm's / the official `WindowAttention`; parameter names `qkv`, `proj`,
/// `relative_position_bias_table`). Input [B·nW, N, C]: the windows of B images, window index
/// fastest, as the window partition makes them. Head j uses channels [j·d, (j+1)·d), d = C/heads.
///
/// Forward, per window w and head h (α = d^−½, B_h[i, j] = T[idx(i, j), h], M the optional mask
/// of window w mod nW, 0 or −100):
///     [Q K V] = x W_qkvᵀ + b_qkv,   S = α Q Kᵀ + B_h + M,   P = softmax_rows(S),   O = P V,   y = [O_1 … O_H] W_projᵀ + b_proj
/// Backward: dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ⊙ (dP − rowsum(dP ⊙ P)),  dQ = α dS K,  dK = α dSᵀ Q,
///     dT[idx(i, j), h] += Σ_w dS[w, h, i, j] (summed over windows in order: thread-count independent).
///
/// Two entry points. `forward(_:)` takes windows, as timm's module does. `forward(tokens:windows:)`
/// takes the tokens [B, H·W, C] of a Swin block and its partition, and does the same computation
/// without the padding slots' linear work: a padding slot's input is zero, so its Q K V row is
/// b_qkv (copied, not computed), and proj runs per token, so it commutes with the crop of the
/// reverse and runs on the H·W real tokens only (exact: a padding slot's output is discarded).
/// At 8×16 with 7×7 windows (Swin's stride-16 stage at 128×256) the windows hold 2.3× the tokens.
/// The padding slots still attend and are attended to, as in timm and the official code. The
/// skipped work is booked in `FlopCounter` as executed: GFLOP/step counts the dense module.
public final class WindowAttention: HasParameters {
    /// Temporaries of one forward or backward call — the token path's Q K V tokens and O windows;
    /// the backward's dO, d[Q K V] and dP then dS [B·nW, heads, N, N] — dead once it returns:
    /// attentions whose calls never overlap (the blocks of a Swin encoder) share one set.
    public final class Scratch {
        let attendedGrad = Tensor([0]), qkvGrad = Tensor([0]), scoreGrad = Tensor([0])
        let qkvTokens = Tensor([0]), attendedWindows = Tensor([0])
        public init() {}
    }

    public let name: String
    public let dim: Int, heads: Int, window: Int
    public let qkv: Linear
    public let proj: Linear
    public let biasTable: Parameter
    public var parameters: [Parameter] { qkv.parameters + [biasTable] + proj.parameters }
    /// idx(i, j) for token pairs of a window: (Δy + ws − 1)·(2ws − 1) + (Δx + ws − 1).
    public let relativeIndex: [Int32]
    var tokens: Int { window * window }
    var headDim: Int { dim / heads }

    private var windows = 0
    /// P of the last forward, [B·nW, heads, N, N] (the backward needs it).
    private let probabilities = Tensor([0])
    /// O: heads concatenated, before proj — windows [B·nW, N, C] (proj's input on the window path),
    /// tokens [B, H·W, C] on the token path.
    private let attended = Tensor([0])
    /// Q K V windows of the token path (the qkv layer's own output on the window path).
    private let qkvWindows = Tensor([0])
    private let ownScratch = Scratch()
    private let tableGrad = Tensor([0])      // [heads, N, N]: dS summed over the windows
    private var qkvOut: Tensor?
    /// The partition of the last token-path forward; nil after a window-path forward.
    private var partition: WindowPartition?
    private var mask: Tensor?
    private var masksPerImage = 1

    public init(_ name: String, dim: Int, heads: Int, window: Int, qkvBias: Bool = true, rng: inout Philox) {
        precondition(dim % heads == 0, "\(name): dim \(dim) is not a multiple of heads \(heads)")
        self.name = name
        self.dim = dim
        self.heads = heads
        self.window = window
        qkv = Linear("\(name).qkv", inFeatures: dim, outFeatures: 3 * dim, bias: qkvBias, rng: &rng)
        proj = Linear("\(name).proj", inFeatures: dim, outFeatures: dim, rng: &rng)
        // timm: trunc_normal_(std=0.02); drawn here as a normal with std 0.02 clipped to ±2σ.
        let side = 2 * window - 1
        let table = Tensor([side * side, heads])
        for i in 0..<table.count { table[i] = max(-0.04, min(0.04, 0.02 * rng.normal())) }
        biasTable = Parameter("\(name).relative_position_bias_table", table)
        var index: [Int32] = []
        for i in 0..<(window * window) {
            for j in 0..<(window * window) {
                let dy = i / window - j / window + window - 1, dx = i % window - j % window + window - 1
                index.append(Int32(dy * side + dx))
            }
        }
        relativeIndex = index
    }

    /// x: windows [B·nW, N, C]; `mask`: nil or [nW, N, N] (added to the scores of window w at w mod nW).
    /// `into` (not x): where proj writes y instead of its own buffer — the backward does not read y.
    public func forward(_ x: Tensor, mask: Tensor? = nil, into out: Tensor? = nil) -> Tensor {
        let n = tokens, c = dim
        precondition(x.rank == 3 && x.shape[1] == n && x.shape[2] == c,
                     "\(name): expected windows [B·nW, \(n), \(c)], got \(shapeString(x.shape))")
        partition = nil
        let q3 = qkv.forward(x)
        attend(q3, mask: mask, into: attended, probabilities: probabilities)
        return proj.forward(attended, into: out)
    }

    /// x: tokens [B, H·W, C] of the map `windows` is prepared for; returns tokens [B, H·W, C] (in
    /// `into` when given, not x). `scratch`: a shared set of temporaries instead of the layer's own.
    /// `forBackward: false` (no backward follows: a frozen encoder) keeps Q K V, P and O in the
    /// scratch's backward buffers instead of the layer's, and the backward then refuses.
    public func forward(tokens x: Tensor, windows part: WindowPartition, mask: Tensor? = nil,
                        scratch: Scratch? = nil, into out: Tensor? = nil, forBackward: Bool = true) -> Tensor {
        let scratch = scratch ?? ownScratch
        partition = part
        let q3 = part.partition(qkv.forward(x, into: scratch.qkvTokens), padding: qkv.bias?.value,
                                into: forBackward ? qkvWindows : scratch.qkvGrad)
        attend(q3, mask: mask, into: scratch.attendedWindows, probabilities: forBackward ? probabilities : scratch.scoreGrad)
        let o = part.reverse(scratch.attendedWindows, into: forBackward ? attended : scratch.attendedGrad)
        let y = proj.forward(o, into: out)
        if !forBackward { qkvOut = nil }
        bookSkippedLinearWork(images: x.shape[0], part, passes: 1)
        return y
    }

    /// The qkv and proj GEMM rows of the padding slots, which the token path does not run: one
    /// pass forward, two backward (dW and dx).
    private func bookSkippedLinearWork(images: Int, _ part: WindowPartition, passes: Int) {
        let rows = images * part.paddingSlotsPerImage, c = dim
        FlopCounter.addSkippedGemm(rows, 4 * c, passes * c)
    }

    /// O = softmax(α Q Kᵀ + B + M) V per window and head, from Q K V windows [B·nW, N, 3C].
    private func attend(_ q3: Tensor, mask: Tensor?, into out: Tensor, probabilities: Tensor) {
        let n = tokens, c = dim, h = heads, d = headDim
        if let mask {
            precondition(mask.rank == 3 && mask.shape[1] == n && mask.shape[2] == n && q3.shape[0] % mask.shape[0] == 0,
                         "\(name): mask \(shapeString(mask.shape)) does not fit \(q3.shape[0]) windows of \(n) tokens")
        }
        windows = q3.shape[0]
        self.mask = mask
        masksPerImage = mask?.shape[0] ?? 1
        qkvOut = q3
        probabilities.resize([windows, h, n, n])
        out.resize([windows, n, c])
        let scale = 1 / Float(d).squareRoot()
        let qp = q3.data, pp = probabilities.data, op = out.data
        let table = biasTable.value.data, maskData = mask?.data, nW = masksPerImage
        relativeIndex.withUnsafeBufferPointer { idx in
            parallelFor(windows * h) { q in
                let w = q / h, head = q % h
                let base = qp + w * n * 3 * c
                let qh = base + head * d, kh = base + c + head * d, vh = base + 2 * c + head * d
                let s = pp + q * n * n
                // S = α Q Kᵀ  (rows of Q and K are 3C apart)
                sgemmOnThisThread(transB: true, m: n, n: n, k: d, alpha: scale, a: qh, lda: 3 * c, b: kh, ldb: 3 * c, c: s, ldc: n)
                let m = maskData.map { $0 + (w % nW) * n * n }
                for i in 0..<n {
                    let row = s + i * n
                    for j in 0..<n {
                        row[j] += table[Int(idx[i * n + j]) * h + head] + (m?[i * n + j] ?? 0)
                    }
                    Softmax.forwardRow(row, row, n)
                }
                // O = P V, into columns [head·d, (head+1)·d) of the window's rows
                sgemmOnThisThread(m: n, n: d, k: n, a: s, lda: n, b: vh, ldb: 3 * c, c: op + w * n * c + head * d, ldc: c)
            }
        }
    }

    /// Accumulates the gradients of qkv, proj and the bias table; returns dx in the input's form
    /// (windows or tokens), in `into` when given (it may be dy: only proj's backward reads dy,
    /// before dx is written). `scratch`: a shared set of temporaries instead of the layer's own.
    public func backward(_ dy: Tensor, scratch: Scratch? = nil, into dxOut: Tensor? = nil) -> Tensor {
        guard let q3 = qkvOut else { preconditionFailure("\(name): backward before forward, or after a forward-only one") }
        let scratch = scratch ?? ownScratch
        guard let part = partition else {
            attendBackward(proj.backward(dy, into: scratch.attendedGrad), q3: q3, scratch: scratch)
            return qkv.backward(scratch.qkvGrad, into: dxOut)
        }
        let dO = part.reverseBackward(proj.backward(dy, into: scratch.attendedGrad), into: scratch.attendedWindows)
        attendBackward(dO, q3: q3, scratch: scratch)
        if let db = qkv.bias?.grad.data { part.addPaddingRows(of: scratch.qkvGrad, into: db) }
        let dx = qkv.backward(part.partitionBackward(scratch.qkvGrad, into: scratch.qkvTokens), into: dxOut)
        bookSkippedLinearWork(images: dy.shape[0], part, passes: 2)
        return dx
    }

    /// d[Q K V] windows into scratch.qkvGrad from dO windows [B·nW, N, C]; accumulates dT.
    private func attendBackward(_ dO: Tensor, q3: Tensor, scratch: Scratch) {
        let n = tokens, c = dim, h = heads, d = headDim
        let qkvGrad = scratch.qkvGrad, probabilityGrad = scratch.scoreGrad
        qkvGrad.resize([windows, n, 3 * c])
        probabilityGrad.resize([windows, h, n, n])
        let scale = 1 / Float(d).squareRoot()
        let qp = q3.data, pp = probabilities.data, gp = probabilityGrad.data, dop = dO.data, dq = qkvGrad.data
        parallelFor(windows * h) { q in
            let w = q / h, head = q % h
            let base = qp + w * n * 3 * c, gbase = dq + w * n * 3 * c
            let qh = base + head * d, kh = base + c + head * d, vh = base + 2 * c + head * d
            let p = pp + q * n * n, ds = gp + q * n * n
            let dOh = dop + w * n * c + head * d
            // dV = Pᵀ dO;  dP = dO Vᵀ
            sgemmOnThisThread(transA: true, m: n, n: d, k: n, a: p, lda: n, b: dOh, ldb: c, c: gbase + 2 * c + head * d, ldc: 3 * c)
            sgemmOnThisThread(transB: true, m: n, n: n, k: d, a: dOh, lda: c, b: vh, ldb: 3 * c, c: ds, ldc: n)
            for i in 0..<n { Softmax.backwardRow(p + i * n, ds + i * n, ds + i * n, n) }
            // dQ = α dS K;  dK = α dSᵀ Q
            sgemmOnThisThread(m: n, n: d, k: n, alpha: scale, a: ds, lda: n, b: kh, ldb: 3 * c, c: gbase + head * d, ldc: 3 * c)
            sgemmOnThisThread(transA: true, m: n, n: d, k: n, alpha: scale, a: ds, lda: n, b: qh, ldb: 3 * c, c: gbase + c + head * d, ldc: 3 * c)
        }
        // dT[idx(i, j), head] += Σ_w dS[w, head, i, j]: each (head, i) row sums the windows in order.
        let dT = biasTable.grad.data, nn = n * n, count = windows
        tableGrad.resize([h, n, n])
        let rs = tableGrad.data
        parallelFor(h * n) { q in
            let head = q / n, i = q % n
            for j in 0..<n {
                var s = 0.0
                for w in 0..<count { s += Double(gp[(w * h + head) * nn + i * n + j]) }
                rs[(head * n + i) * n + j] = Float(s)
            }
        }
        for head in 0..<h {
            for k in 0..<nn { dT[Int(relativeIndex[k]) * h + head] += rs[head * nn + k] }
        }
    }
}
