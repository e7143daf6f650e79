import MTLCore
import MTLNN

// The modules of TIF-R (Task-Interaction-Free network, ACM MM 2024), reconstructed from the paper
// and SEED-ARCHITECTURES.md §4; the equations, switches and parameter names are those of the
// float64 reference tools/tif_reference.py (docs/ARCHITECTURES.md §1), so that weights copy by
// name. Each module keeps its buffers; backward may run several times after one forward and
// ADDS into the parameters' grads.

/// The scale factor between two grids of the pyramid; TIF's pooling and diffusion need exact
/// multiples (HRNet and Swin inputs that are multiples of 32).
func exactFactor(_ fine: Tensor, _ coarse: (Int, Int), _ what: String) -> Int {
    let f = fine.h / max(coarse.0, 1)
    precondition(f >= 1 && fine.h == f * coarse.0 && fine.w == f * coarse.1,
                 "TIF \(what): a \(fine.h)x\(fine.w) map is not an integer multiple of the \(coarse.0)x\(coarse.1) grid (use input sizes that are multiples of 32)")
    return f
}

/// Pre-norm feed-forward on tokens: fc2(GELU(fc1(LN(x)))), names `<p>.norm`, `<p>.fc1`, `<p>.fc2`.
final class TokenFFN {
    let norm: LayerNorm, fc1: Linear, gelu = GELU(.exact), fc2: Linear
    init(_ p: String, d: Int, ratio: Int, rng: inout Philox) {
        norm = LayerNorm("\(p).norm", features: d)
        fc1 = Linear("\(p).fc1", inFeatures: d, outFeatures: ratio * d, rng: &rng)
        fc2 = Linear("\(p).fc2", inFeatures: ratio * d, outFeatures: d, rng: &rng)
    }
    var parameters: [Parameter] { norm.parameters + fc1.parameters + fc2.parameters }
    func forward(_ x: Tensor) -> Tensor { fc2.forward(gelu.forward(fc1.forward(norm.forward(x)))) }
    func backward(_ dy: Tensor) -> Tensor { norm.backward(fc1.backward(gelu.backward(fc2.backward(dy)))) }
}

/// Batched C[b] = op(A[b])·op(B[b]) (+ C[b] when accumulate) for row-major [B, rows, cols] tensors.
func batchedGemm(_ batch: Int, transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int, alpha: Float = 1,
                 _ a: Tensor, _ b: Tensor, _ c: Tensor, accumulate: Bool = false) {
    let lda = transA ? m : k, ldb = transB ? k : n
    for s in 0..<batch {
        sgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a.data + s * m * k, lda: lda,
              b: b.data + s * k * n, ldb: ldb, beta: accumulate ? 1 : 0, c: c.data + s * m * n, ldc: n)
    }
}

// MARK: SAFF (shared by all tasks), eqs. 2–5

/// SAFF_i for target scale i (names `<p>.xl`, `xl_bn`, `y`, `y_bn`, `sff1`, `sff2`, `dw`, `mix`):
///   XL = BN(Conv1×1(X_i → d)),  Y = BN(Conv1×1(cat_{j≠i, ascending} P_i(X_j) → d))      (eq. 2)
///   P_i: coarser j > i bilinear (align_corners=False) to X_i's size, finer j < i average pool 2^{i−j}
///   SFX = sff2(ReLU(sff1(cat[XL, Y]))) + XL,  SP = ReLU(DWConv3×3(SFX)),  out = mix(SP)   (eqs. 3–5)
final class SAFFScale {
    let i: Int
    let xl: Conv2d, xlBN: BatchNorm2d, y: Conv2d, yBN: BatchNorm2d
    let sff1: Conv2d, relu1 = ReLU(), sff2: Conv2d
    let dw: DepthwiseConv2d, relu2 = ReLU(), mix: Conv2d
    let pools: [AvgPool2d?], resizes: [Upsample?]
    let alignConcat = Concat(), fuseConcat = Concat()
    private let sfx = Tensor([0]), dXL = Tensor([0])
    private var grads: [Tensor] = []

    init(_ p: String, i: Int, channels: [Int], d: Int, rng: inout Philox) {
        self.i = i
        xl = Conv2d("\(p).xl", inChannels: channels[i], outChannels: d, kernel: 1, rng: &rng)
        xlBN = BatchNorm2d("\(p).xl_bn", channels: d)
        y = Conv2d("\(p).y", inChannels: channels.reduce(0, +) - channels[i], outChannels: d, kernel: 1, rng: &rng)
        yBN = BatchNorm2d("\(p).y_bn", channels: d)
        sff1 = Conv2d("\(p).sff1", inChannels: 2 * d, outChannels: d, kernel: 1, bias: true, rng: &rng)
        sff2 = Conv2d("\(p).sff2", inChannels: d, outChannels: d, kernel: 1, bias: true, rng: &rng)
        dw = DepthwiseConv2d("\(p).dw", channels: d, kernel: 3, padding: 1, rng: &rng)
        mix = Conv2d("\(p).mix", inChannels: d, outChannels: d, kernel: 1, bias: true, rng: &rng)
        pools = channels.indices.map { j in j < i ? AvgPool2d(kernel: 1 << (i - j)) : nil }
        resizes = channels.indices.map { j in j > i ? Upsample() : nil }
    }

    var parameters: [Parameter] {
        xl.parameters + xlBN.parameters + y.parameters + yBN.parameters + sff1.parameters + sff2.parameters
            + dw.parameters + mix.parameters
    }
    var batchNorms: [BatchNorm2d] { [xlBN, yBN] }

    func forward(_ xs: [Tensor]) -> Tensor {
        let target = xs[i]
        var aligned: [Tensor] = []
        for j in xs.indices where j != i {
            if let pool = pools[j] {
                _ = exactFactor(xs[j], (target.h, target.w), "SAFF pooling")
                aligned.append(pool.forward(xs[j]))
            } else {
                aligned.append(resizes[j]!.forward(xs[j], height: target.h, width: target.w))
            }
        }
        let xlOut = xlBN.forward(conv(xl, target))
        let yOut = yBN.forward(conv(y, alignConcat.forward(aligned)))
        sfx.copy(from: conv(sff2, relu1.forward(conv(sff1, fuseConcat.forward([xlOut, yOut])))))
        sfx.add(xlOut)
        return conv(mix, relu2.forward(dw.forward(sfx)))
    }

    /// ∂/∂X_j for every input scale j (tensors owned by this module's layers).
    func backward(_ dOut: Tensor) -> [Tensor] {
        let dSFX = dw.backward(relu2.backward(mix.backward(dOut)))
        let parts = fuseConcat.backward(sff1.backward(relu1.backward(sff2.backward(dSFX))))
        dXL.copy(from: parts[0])
        dXL.add(dSFX)                                          // the residual of eq. 3
        let dAligned = alignConcat.backward(y.backward(yBN.backward(parts[1])))
        var out: [Tensor] = []
        var k = 0
        for j in 0..<pools.count {
            if j == i { out.append(xl.backward(xlBN.backward(dXL))); continue }
            out.append(pools[j]?.backward(dAligned[k]) ?? resizes[j]!.backward(dAligned[k]))
            k += 1
        }
        return out
    }
}

/// The stand-in for a scale without SAFF (the paper's ablation; [OURS] in the reference):
/// BN(Conv1×1(X_i → d_i)), names `<p>.conv`, `<p>.bn`.
final class SAFFReduce {
    let conv1: Conv2d, bn: BatchNorm2d
    init(_ p: String, inChannels: Int, d: Int, rng: inout Philox) {
        conv1 = Conv2d("\(p).conv", inChannels: inChannels, outChannels: d, kernel: 1, rng: &rng)
        bn = BatchNorm2d("\(p).bn", channels: d)
    }
    var parameters: [Parameter] { conv1.parameters + bn.parameters }
    func forward(_ x: Tensor) -> Tensor { bn.forward(conv(conv1, x)) }
    func backward(_ dy: Tensor) -> Tensor { conv1.backward(bn.backward(dy)) }
}

/// The shared SAFF over the four backbone scales (names `<p>.s<i>.*`): X̂_i = SAFF_i(X_0..X_3), or the
/// stand-in for the scales not in `scales`.
public final class SAFF: HasParameters {
    let full: [SAFFScale?], reduce: [SAFFReduce?]
    public let widths: [Int]
    private let sums: [Tensor]

    public init(_ p: String, channels: [Int], widths: [Int], scales: Set<Int> = [0, 1, 2, 3], rng: inout Philox) {
        precondition(channels.count == 4 && widths.count == 4, "SAFF: four scales expected, got \(channels.count)")
        self.widths = widths
        var f: [SAFFScale?] = [], r: [SAFFReduce?] = []
        for i in 0..<4 {
            if scales.contains(i) {
                f.append(SAFFScale("\(p).s\(i)", i: i, channels: channels, d: widths[i], rng: &rng)); r.append(nil)
            } else {
                f.append(nil); r.append(SAFFReduce("\(p).s\(i)", inChannels: channels[i], d: widths[i], rng: &rng))
            }
        }
        full = f
        reduce = r
        sums = (0..<4).map { _ in Tensor([0]) }
    }

    public var parameters: [Parameter] { (0..<4).flatMap { full[$0]?.parameters ?? reduce[$0]!.parameters } }
    public var batchNorms: [BatchNorm2d] { (0..<4).flatMap { full[$0]?.batchNorms ?? [reduce[$0]!.bn] } }
    public var buffers: [Buffer] { batchNorms.flatMap { $0.buffers } }

    public func forward(_ xs: Features) -> Features {
        precondition(xs.count == 4, "SAFF: expected the backbone's 4 scales, got \(xs.count)")
        return (0..<4).map { i in full[i]?.forward(xs) ?? reduce[i]!.forward(xs[i]) }
    }

    /// ∂/∂X_j = Σ_i ∂X̂_i/∂X_j (own buffers).
    public func backward(_ dOuts: Features) -> Features {
        for s in sums { s.resize([0]) }
        func add(_ j: Int, _ g: Tensor) {
            if sums[j].count == 0 { sums[j].copy(from: g) } else { sums[j].add(g) }
        }
        for i in 0..<4 {
            if let m = full[i] {
                for (j, g) in m.backward(dOuts[i]).enumerated() { add(j, g) }
            } else {
                add(i, reduce[i]!.backward(dOuts[i]))
            }
        }
        return sums
    }
}

// MARK: SFD (scales 2, 3), eqs. 6–10

/// Self-feature distillation of one task at one low scale (names `<p>.norm`, `q`, `kv.<n>`, `ffn.*`):
///   F = flat(X), T = LN(F), Q = T W_q + b, K = V = Σ_n (T W_n + b_n)   (N = tasks; eq. 6)
///   A = Q Kᵀ (· 1/√d with `scale`), RX = softmax_rows(A) V + F, RX = RX + FFN(RX)   (eqs. 8–10)
/// Returns RX as [B, d, h, w] and the logits A [B, L, L] (LTHD diffuses them).
final class SFD {
    let d: Int, alpha: Float
    let toTokens = ToTokens(), norm: LayerNorm, q: Linear, kv: [Linear], ffn: TokenFFN
    let softmax = Softmax()
    var fromTokens = FromTokens(height: 0, width: 0)
    private let kvSum = Tensor([0]), logits = Tensor([0]), mixed = Tensor([0]), out = Tensor([0])
    private let dMixed = Tensor([0]), dP = Tensor([0]), dA = Tensor([0]), dQ = Tensor([0]), dKV = Tensor([0])
    private let dT = Tensor([0]), dF = Tensor([0])
    private var qOut: Tensor?, prob: Tensor?

    init(_ p: String, d: Int, tasks: Int, ffnRatio: Int, scale: Bool, kvSingle: Bool, rng: inout Philox) {
        self.d = d
        alpha = scale ? 1 / Float(d).squareRoot() : 1
        norm = LayerNorm("\(p).norm", features: d)
        q = Linear("\(p).q", inFeatures: d, outFeatures: d, rng: &rng)
        kv = (0..<(kvSingle ? 1 : tasks)).map { Linear("\(p).kv.\($0)", inFeatures: d, outFeatures: d, rng: &rng) }
        ffn = TokenFFN("\(p).ffn", d: d, ratio: ffnRatio, rng: &rng)
    }

    var parameters: [Parameter] { norm.parameters + q.parameters + kv.flatMap { $0.parameters } + ffn.parameters }

    func forward(_ x: Tensor) -> (rx: Tensor, logits: Tensor) {
        let (b, l) = (x.n, x.h * x.w)
        if fromTokens.height != x.h || fromTokens.width != x.w { fromTokens = FromTokens(height: x.h, width: x.w) }
        let f = toTokens.forward(x)
        let t = norm.forward(f)
        qOut = q.forward(t)
        kvSum.copy(from: kv[0].forward(t))
        for m in kv.dropFirst() { kvSum.add(m.forward(t)) }
        logits.resize([b, l, l])
        batchedGemm(b, transB: true, m: l, n: l, k: d, alpha: alpha, qOut!, kvSum, logits)
        prob = softmax.forward(logits)
        mixed.resize([b, l, d])
        batchedGemm(b, m: l, n: d, k: l, prob!, kvSum, mixed)
        mixed.add(f)                                           // eq. 9's residual
        out.copy(from: mixed)
        out.add(ffn.forward(mixed))                            // eq. 10
        return (fromTokens.forward(out), logits)
    }

    /// ∂/∂X from ∂/∂RX and, when LTHD used the logits, ∂/∂A.
    func backward(_ dRX: Tensor, dLogits: Tensor?) -> Tensor {
        let (b, l) = (dRX.n, dRX.h * dRX.w)
        let dOut = fromTokens.backward(dRX)
        dMixed.copy(from: dOut)
        dMixed.add(ffn.backward(dOut))
        dF.copy(from: dMixed)
        // mixed = P·V + F:  dP = dMixed·Vᵀ,  dV = Pᵀ·dMixed
        dP.resize([b, l, l]); dKV.resize([b, l, d]); dQ.resize([b, l, d])
        batchedGemm(b, transB: true, m: l, n: l, k: d, dMixed, kvSum, dP)
        batchedGemm(b, transA: true, m: l, n: d, k: l, prob!, dMixed, dKV)
        dA.copy(from: softmax.backward(dP))
        if let dLogits { dA.add(dLogits) }
        // A = α·Q·Kᵀ:  dQ = α·dA·K,  dK += α·dAᵀ·Q
        batchedGemm(b, m: l, n: d, k: l, alpha: alpha, dA, kvSum, dQ)
        batchedGemm(b, transA: true, m: l, n: d, k: l, alpha: alpha, dA, qOut!, dKV, accumulate: true)
        dT.copy(from: q.backward(dQ))
        for m in kv { dT.add(m.backward(dKV)) }
        dF.add(norm.backward(dT))
        return toTokens.backward(dF)
    }
}

// MARK: LTHD (scales 0, 1), eqs. 11–13

/// Low-to-high diffusion of one task at one high scale (names `<p>.proj`, `ffn.*`, `fuse`, `fuse_bn`):
///   P = flat(AvgPool(X → A0's grid)), R = softmax_rows(A0)·(P W + b)  (softmax_rows(A0)ᵀ with `transpose`)
///   RX = BN(Conv1×1([Bilinear_{→H×W}(FFN(R)) ; X] → d))   (eq. 13, FeatureFuse = conv + BN)
final class LTHD {
    let d: Int, transpose: Bool
    var pool: AvgPool2d?
    let toTokens = ToTokens(), proj: Linear, softmax = Softmax(), ffn: TokenFFN
    var fromTokens = FromTokens(height: 0, width: 0)
    let upsample = Upsample(), concat = Concat(), fuse: Conv2d, fuseBN: BatchNorm2d
    private let r = Tensor([0]), dx = Tensor([0]), dS = Tensor([0]), dV = Tensor([0])
    private var v: Tensor?, s: Tensor?

    init(_ p: String, d: Int, ffnRatio: Int, transpose: Bool, rng: inout Philox) {
        self.d = d
        self.transpose = transpose
        proj = Linear("\(p).proj", inFeatures: d, outFeatures: d, rng: &rng)
        ffn = TokenFFN("\(p).ffn", d: d, ratio: ffnRatio, rng: &rng)
        fuse = Conv2d("\(p).fuse", inChannels: 2 * d, outChannels: d, kernel: 1, rng: &rng)
        fuseBN = BatchNorm2d("\(p).fuse_bn", channels: d)
    }

    var parameters: [Parameter] { proj.parameters + ffn.parameters + fuse.parameters + fuseBN.parameters }

    func forward(_ x: Tensor, a0: Tensor, grid: (Int, Int)) -> Tensor {
        let f = exactFactor(x, grid, "LTHD pooling"), (b, l) = (x.n, grid.0 * grid.1)
        precondition(a0.shape == [b, l, l], "LTHD: affinities \(a0.shape) do not match the \(grid.0)x\(grid.1) grid")
        if (pool?.kernel ?? 1) != f { pool = f == 1 ? nil : AvgPool2d(kernel: f) }
        if fromTokens.height != grid.0 || fromTokens.width != grid.1 { fromTokens = FromTokens(height: grid.0, width: grid.1) }
        let pooled = pool?.forward(x) ?? x
        v = proj.forward(toTokens.forward(pooled))
        s = softmax.forward(a0)
        r.resize([b, l, d])
        batchedGemm(b, transA: transpose, m: l, n: d, k: l, s!, v!, r)
        let up = upsample.forward(fromTokens.forward(ffn.forward(r)), height: x.h, width: x.w)
        return fuseBN.forward(conv(fuse, concat.forward([up, x])))
    }

    /// (∂/∂X, ∂/∂A0); both tensors owned by this module.
    func backward(_ dy: Tensor) -> (dx: Tensor, dA0: Tensor) {
        let parts = concat.backward(fuse.backward(fuseBN.backward(dy)))
        dx.copy(from: parts[1])
        let dr = ffn.backward(fromTokens.backward(upsample.backward(parts[0])))
        let (b, l) = (dr.shape[0], dr.shape[1])
        dS.resize([b, l, l]); dV.resize([b, l, d])
        let s = self.s!
        if transpose {
            // r = Sᵀ·V:  dS = V·drᵀ,  dV = S·dr
            batchedGemm(b, transB: true, m: l, n: l, k: d, v!, dr, dS)
            batchedGemm(b, m: l, n: d, k: l, s, dr, dV)
        } else {
            // r = S·V:  dS = dr·Vᵀ,  dV = Sᵀ·dr
            batchedGemm(b, transB: true, m: l, n: l, k: d, dr, v!, dS)
            batchedGemm(b, transA: true, m: l, n: d, k: l, s, dr, dV)
        }
        let dA0 = softmax.backward(dS)
        let dPooled = toTokens.backward(proj.backward(dV))
        dx.add(pool?.backward(dPooled) ?? dPooled)
        return (dx, dA0)
    }
}
