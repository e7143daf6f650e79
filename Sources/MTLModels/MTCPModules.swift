import Foundation
import MTLCore
import MTLNN

// The pieces of the MT-CP decoder (docs/ARCHITECTURE.md "MT-CP"; equations docs/ARCHITECTURES.md §4.2,
// reference tools/mtcp_reference.py, whose module and parameter names these follow): CBAM, the
// per-task pyramid transformer, the FPN, the Coherence Fusion Module with the chunked cross-task
// affinity, the Spatial Refinement Module chain and the heads. NCHW maps unless stated; every module
// keeps its buffers, so a step with stable shapes allocates nothing. Backward may run several times
// after one forward (once per task), adding into the parameters' grads.

/// y = a ⊙ b (same shapes), with the inputs kept for the backward (a layer-owned output).
final class ElementwiseProduct {
    private let output = Tensor([0]), gradA = Tensor([0]), gradB = Tensor([0])
    private var a: Tensor?, b: Tensor?

    func forward(_ x: Tensor, _ y: Tensor) -> Tensor {
        precondition(x.shape == y.shape, "ElementwiseProduct: \(x.shape) vs \(y.shape)")
        a = x; b = y
        output.resize(x.shape)
        let p = x.data, q = y.data, o = output.data
        parallelBlocks(x.count) { lo, hi in for i in lo..<hi { o[i] = p[i] * q[i] } }
        return output
    }

    /// (da, db) = (dy ⊙ b, dy ⊙ a).
    func backward(_ dy: Tensor) -> (Tensor, Tensor) {
        let x = a!, y = b!
        gradA.resize(x.shape); gradB.resize(x.shape)
        let g = dy.data, p = x.data, q = y.data, da = gradA.data, db = gradB.data
        parallelBlocks(x.count) { lo, hi in for i in lo..<hi { da[i] = g[i] * q[i]; db[i] = g[i] * p[i] } }
        return (gradA, gradB)
    }
}

/// 2×2 average pooling with PyTorch's ceil_mode=True and no padding (the CFM at stride 8): a window
/// that overhangs an odd edge averages the pixels it holds.
final class CeilAvgPool2 {
    private let output = Tensor([0]), inputGrad = Tensor([0])
    private var inputShape: [Int] = []

    func forward(_ x: Tensor) -> Tensor {
        inputShape = x.shape
        let (h, w) = (x.h, x.w), (ho, wo) = ((x.h + 1) / 2, (x.w + 1) / 2)
        output.resize([x.n, x.c, ho, wo])
        let src = x.data, dst = output.data
        parallelFor(x.n * x.c) { q in
            let plane = src + q * h * w, out = dst + q * ho * wo
            for i in 0..<ho {
                let rows = min(2, h - 2 * i)
                for j in 0..<wo {
                    let cols = min(2, w - 2 * j)
                    var s: Float = 0
                    for a in 0..<rows { for b in 0..<cols { s += plane[(2 * i + a) * w + 2 * j + b] } }
                    out[i * wo + j] = s / Float(rows * cols)
                }
            }
        }
        return output
    }

    func backward(_ dy: Tensor) -> Tensor {
        inputGrad.resize(inputShape)
        let (h, w) = (inputShape[2], inputShape[3]), (ho, wo) = (dy.h, dy.w)
        let g = dy.data, dx = inputGrad.data
        parallelFor(dy.n * dy.c) { q in
            let plane = dx + q * h * w, src = g + q * ho * wo
            for i in 0..<ho {
                let rows = min(2, h - 2 * i)
                for j in 0..<wo {
                    let cols = min(2, w - 2 * j)
                    let v = src[i * wo + j] / Float(rows * cols)
                    for a in 0..<rows { for b in 0..<cols { plane[(2 * i + a) * w + 2 * j + b] = v } }
                }
            }
        }
        return inputGrad
    }
}

/// CBAM (names `<p>.mlp.fc1`, `<p>.mlp.fc2`, `<p>.spatial.conv`, `<p>.spatial.bn`):
///   a_c = σ(MLP(mean_hw x) + MLP(max_hw x)),  MLP = fc2(ReLU(fc1 ·)) shared by both pools;  x' = x ⊙ a_c
///   a_s = σ(BN(Conv7×7_{2→1, pad 3, no bias}([max_c x'; mean_c x'])));  CBAM(x) = x' ⊙ a_s
/// The two pooled vectors go through the MLP as one [2B, C] batch.
public final class CBAM: HasParameters {
    let fc1: Linear, fc2: Linear
    let spatialConv: Conv2d
    let spatialBN: BatchNorm2d
    let avg = GlobalAvgPool(), max = GlobalMaxPool(), relu = ReLU(), channelGate = Sigmoid()
    let channelMul = BroadcastMultiply(), pool = ChannelMaxMeanPool(), spatialGate = Sigmoid(), spatialMul = BroadcastMultiply()
    private let pooled = Tensor([0]), logits = Tensor([0]), dLogits = Tensor([0]), dScaled = Tensor([0]), inputGrad = Tensor([0])
    private let avgGrad = Tensor([0]), maxGrad = Tensor([0])
    public var parameters: [Parameter] { fc1.parameters + fc2.parameters + spatialConv.parameters + spatialBN.parameters }
    var batchNorms: [BatchNorm2d] { [spatialBN] }

    public init(_ p: String, channels c: Int, reduction: Int = 16, rng: inout Philox) {
        let r = Swift.max(c / reduction, 1)
        fc1 = Linear("\(p).mlp.fc1", inFeatures: c, outFeatures: r, rng: &rng)
        fc2 = Linear("\(p).mlp.fc2", inFeatures: r, outFeatures: c, rng: &rng)
        spatialConv = Conv2d("\(p).spatial.conv", inChannels: 2, outChannels: 1, kernel: 7, padding: 3, bias: false, rng: &rng)
        spatialBN = BatchNorm2d("\(p).spatial.bn", channels: 1)
    }

    public func forward(_ x: Tensor) -> Tensor {
        let b = x.n, c = x.c
        pooled.resize([2 * b, c])
        pooled.data.update(from: avg.forward(x).data, count: b * c)
        (pooled.data + b * c).update(from: max.forward(x).data, count: b * c)
        let m = fc2.forward(relu.forward(fc1.forward(pooled)))
        logits.resize([b, c, 1, 1])
        for i in 0..<(b * c) { logits.data[i] = m.data[i] + m.data[b * c + i] }
        let scaled = channelMul.forward(x, channelGate.forward(logits))
        let a = spatialGate.forward(spatialBN.forward(conv(spatialConv, pool.forward(scaled))))
        return spatialMul.forward(scaled, a)
    }

    public func backward(_ dy: Tensor) -> Tensor {
        let (dScaledOut, dSpatial) = spatialMul.backward(dy)
        dScaled.copy(from: dScaledOut)
        dScaled.add(pool.backward(spatialConv.backward(spatialBN.backward(spatialGate.backward(dSpatial)))))
        let (dx, dGate) = channelMul.backward(dScaled)
        inputGrad.copy(from: dx)
        let dl = channelGate.backward(dGate)
        let b = dl.n, c = dl.c
        dLogits.resize([2 * b, c])
        dLogits.data.update(from: dl.data, count: b * c)
        (dLogits.data + b * c).update(from: dl.data, count: b * c)
        let dp = fc1.backward(relu.backward(fc2.backward(dLogits)))
        avgGrad.resize([b, c, 1, 1]); maxGrad.resize([b, c, 1, 1])
        avgGrad.data.update(from: dp.data, count: b * c)
        maxGrad.data.update(from: dp.data + b * c, count: b * c)
        inputGrad.add(avg.backward(avgGrad))
        inputGrad.add(max.backward(maxGrad))
        return inputGrad
    }
}

/// The per-task pyramid transformer (the code's SwinTransformer2.forward2): a dense Swin on the tokens
/// of z without patch embedding; stage s has dim d·2^s, PatchMerging after every stage but the last,
/// r_s = LN_s(stage s output before merging), returned NCHW. Names `<p>.layers.<s>.blocks.<b>.*`,
/// `<p>.layers.<s>.downsample.*`, `<p>.norm<s>.*`.
public final class MTCPTransformer: HasParameters {
    public let blocks: [[SwinBlock]]
    public let merges: [PatchMerging]
    public let norms: [LayerNorm]
    let toTokens = ToTokens()
    let toMaps: [FromTokensResizable]
    private let sums: [Tensor]
    public var parameters: [Parameter] {
        blocks.indices.flatMap { s in blocks[s].flatMap { $0.parameters } + (s < merges.count ? merges[s].parameters : []) }
            + norms.flatMap { $0.parameters }
    }

    public init(_ p: String, dim d: Int, depths: [Int], heads: [Int], window: Int, rng: inout Philox) {
        let n = depths.count
        var blocks: [[SwinBlock]] = [], merges: [PatchMerging] = []
        for s in 0..<n {
            blocks.append((0..<depths[s]).map {
                SwinBlock("\(p).layers.\(s).blocks.\($0)", dim: d << s, heads: heads[s], window: window,
                          shift: $0 % 2 == 1 ? window / 2 : 0, order: .padThenRoll, rng: &rng)
            })
            if s < n - 1 { merges.append(PatchMerging("\(p).layers.\(s).downsample", channels: d << s, rng: &rng)) }
        }
        self.blocks = blocks
        self.merges = merges
        norms = (0..<n).map { LayerNorm("\(p).norm\($0)", features: d << $0) }
        toMaps = (0..<n).map { _ in FromTokensResizable() }
        sums = (0..<n).map { _ in Tensor([0]) }
    }

    public func forward(_ z: Tensor) -> [Tensor] {
        var (h, w) = (z.h, z.w)
        var x = toTokens.forward(z)
        var outs: [Tensor] = []
        for s in blocks.indices {
            for b in blocks[s] { x = b.forward(x, height: h, width: w) }
            outs.append(toMaps[s].forward(norms[s].forward(x), height: h, width: w))
            if s < merges.count {
                x = merges[s].forward(x, height: h, width: w)
                (h, w) = ((h + 1) / 2, (w + 1) / 2)
            }
        }
        return outs
    }

    /// dr: one gradient per output r_s. Returns ∂/∂z.
    public func backward(_ dr: [Tensor]) -> Tensor {
        var g: Tensor? = nil
        for s in blocks.indices.reversed() {
            let gn = norms[s].backward(toMaps[s].backward(dr[s]))
            var acc = gn
            if let g {
                sums[s].copy(from: g)
                sums[s].add(gn)
                acc = sums[s]
            }
            for b in blocks[s].reversed() { acc = b.backward(acc) }
            g = s > 0 ? merges[s - 1].backward(acc) : acc
        }
        return toTokens.backward(g!)
    }
}

/// MT-CP's Pyramid Feature Fusion (names `<p>.lateral.<k>`, `<p>.smooth`, paper: `<p>.dynamic.<k>`):
///   l_k = Conv1×1(r_k) + b;  f_last = l_last;  f_k = a_k0 · Nearest(f_{k+1} → size l_k) + a_k1 · l_k;  e = Conv3×3(f_0) + b
/// code: a_k = (1, 1); paper ([RECON-L] "dynamic" pyramid): (a_k0, a_k1) = softmax(β_k), β_k ∈ R² learned.
public final class MTCPFPN: HasParameters {
    public let lateral: [Conv2d]
    public let smooth: Conv2d
    public let dynamic: [Parameter]       // paper variant only
    let ups: [NearestUpsample]
    private let fused: [Tensor], dLateral: [Tensor], dUp: [Tensor]
    private var upsampled: [Tensor] = [], laterals: [Tensor] = []
    private var weights: [(Float, Float)] = []
    public var parameters: [Parameter] { lateral.flatMap { $0.parameters } + smooth.parameters + dynamic }

    public init(_ p: String, inChannels: [Int], dim d: Int, dynamic isDynamic: Bool, rng: inout Philox) {
        lateral = inChannels.indices.map { Conv2d("\(p).lateral.\($0)", inChannels: inChannels[$0], outChannels: d, kernel: 1, bias: true, rng: &rng) }
        smooth = Conv2d("\(p).smooth", inChannels: d, outChannels: d, kernel: 3, padding: 1, bias: true, rng: &rng)
        dynamic = isDynamic ? (0..<(inChannels.count - 1)).map { Parameter("\(p).dynamic.\($0)", Tensor([2])) } : []
        let k = inChannels.count - 1
        ups = (0..<k).map { _ in NearestUpsample() }
        fused = (0..<k).map { _ in Tensor([0]) }
        dLateral = (0..<k).map { _ in Tensor([0]) }
        dUp = (0..<k).map { _ in Tensor([0]) }
    }

    /// softmax(β_k) (paper) or (1, 1).
    private func levelWeights(_ k: Int) -> (Float, Float) {
        guard !dynamic.isEmpty else { return (1, 1) }
        let b0 = Double(dynamic[k].value[0]), b1 = Double(dynamic[k].value[1]), m = Swift.max(b0, b1)
        let e0 = exp(b0 - m), e1 = exp(b1 - m)
        return (Float(e0 / (e0 + e1)), Float(e1 / (e0 + e1)))
    }

    public func forward(_ rs: [Tensor]) -> Tensor {
        let n = rs.count
        laterals = rs.indices.map { conv(lateral[$0], rs[$0]) }
        upsampled = []
        weights = (0..<(n - 1)).map { levelWeights($0) }
        var f = laterals[n - 1]
        for k in stride(from: n - 2, through: 0, by: -1) {
            let l = laterals[k], up = ups[k].forward(f, height: l.h, width: l.w), (a0, a1) = weights[k]
            upsampled.insert(up, at: 0)
            fused[k].resize(l.shape)
            let o = fused[k].data, u = up.data, ld = l.data
            parallelBlocks(l.count) { lo, hi in for i in lo..<hi { o[i] = a0 * u[i] + a1 * ld[i] } }
            f = fused[k]
        }
        return conv(smooth, f)
    }

    /// Returns ∂/∂r_k for every input scale.
    public func backward(_ de: Tensor) -> [Tensor] {
        let n = lateral.count
        var df = smooth.backward(de)
        var dr = [Tensor](repeating: df, count: n)
        for k in 0..<(n - 1) {
            let (a0, a1) = weights[k]
            dLateral[k].resize(df.shape); dUp[k].resize(df.shape)
            let g = df.data, dl = dLateral[k].data, du = dUp[k].data
            parallelBlocks(df.count) { lo, hi in for i in lo..<hi { dl[i] = a1 * g[i]; du[i] = a0 * g[i] } }
            if !dynamic.isEmpty {
                // da_0 = ⟨df, up⟩, da_1 = ⟨df, l⟩;  dβ_i = a_i (da_i − Σ_j a_j da_j)
                let d0 = df.dot(upsampled[k]), d1 = df.dot(laterals[k])
                let mean = Double(a0) * d0 + Double(a1) * d1
                dynamic[k].grad.data[0] += Float(Double(a0) * (d0 - mean))
                dynamic[k].grad.data[1] += Float(Double(a1) * (d1 - mean))
            }
            dr[k] = lateral[k].backward(dLateral[k])
            df = ups[k].backward(dUp[k])
        }
        dr[n - 1] = lateral[n - 1].backward(df)
        return dr
    }
}

/// The Coherence Fusion Module of task t (the code's GAAF_module2, generalised to T − 1 auxiliary
/// tasks; names `<p>.cbam_s`, `<p>.bn_s`, `<p>.gate.<k>`, `<p>.fuse`, `<p>.cbam_q`, `<p>.bn_q`, `<p>.cbam_k`,
/// `<p>.bn_k`, `<p>.cbam_o`, `<p>.bn_o`):
///   s   = BN_s(CBAM_s(e_t))
///   ã_u = e_u ⊙ σ(Conv1×1_gate_u(e_u))                      one gate per auxiliary task, bias
///   f   = ReLU(Conv1×1_fuse([ã_u …]))                        (T−1)·d → 2d, bias
///   θ   = ReLU(BN_q(CBAM_q(f))),  φ = ReLU(BN_k(CBAM_k(f)))
///   o   = s · softmax_rows(θᵀφ)ᵀ     (no 1/√d; NonLocalAttention: blocks of query pixels, the N×N never stored)
///   c_t = BN_o(CBAM_o(o))
/// stride 8 ([OURS]): e_t and every e_u 2×2-average-pooled (ceil) first, c_t bilinearly resized back.
public final class MTCPCFM: HasParameters {
    public let cbamS: CBAM, bnS: BatchNorm2d
    public let gates: [Conv2d]
    public let fuse: Conv2d
    public let cbamQ: CBAM, bnQ: BatchNorm2d, cbamK: CBAM, bnK: BatchNorm2d, cbamO: CBAM, bnO: BatchNorm2d
    public let pooled: Bool
    let attention: NonLocalAttention
    let gateSigmoids: [Sigmoid], products: [ElementwiseProduct]
    let concat = Concat(), reluF = ReLU(), reluQ = ReLU(), reluK = ReLU()
    let pools: [CeilAvgPool2]
    let upsample = Upsample()
    private var gateValues: [Tensor] = []
    private let dF = Tensor([0])
    private let dAux: [Tensor]
    public var parameters: [Parameter] {
        cbamS.parameters + bnS.parameters + gates.flatMap { $0.parameters } + fuse.parameters + cbamQ.parameters + bnQ.parameters
            + cbamK.parameters + bnK.parameters + cbamO.parameters + bnO.parameters
    }
    public var batchNorms: [BatchNorm2d] {
        cbamS.batchNorms + [bnS] + cbamQ.batchNorms + [bnQ] + cbamK.batchNorms + [bnK] + cbamO.batchNorms + [bnO]
    }

    public init(_ p: String, dim d: Int, tasks: Int, stride: Int, queryBlock: Int, reduction: Int = 16, rng: inout Philox) {
        precondition(tasks >= 2, "MTCPCFM: the coherence fusion needs at least 2 tasks, got \(tasks)")
        precondition(stride == 4 || stride == 8, "MTCPCFM: stride 4 or 8, got \(stride)")
        cbamS = CBAM("\(p).cbam_s", channels: d, reduction: reduction, rng: &rng)
        bnS = BatchNorm2d("\(p).bn_s", channels: d)
        gates = (0..<(tasks - 1)).map { Conv2d("\(p).gate.\($0)", inChannels: d, outChannels: d, kernel: 1, bias: true, rng: &rng) }
        fuse = Conv2d("\(p).fuse", inChannels: (tasks - 1) * d, outChannels: 2 * d, kernel: 1, bias: true, rng: &rng)
        cbamQ = CBAM("\(p).cbam_q", channels: 2 * d, reduction: reduction, rng: &rng)
        bnQ = BatchNorm2d("\(p).bn_q", channels: 2 * d)
        cbamK = CBAM("\(p).cbam_k", channels: 2 * d, reduction: reduction, rng: &rng)
        bnK = BatchNorm2d("\(p).bn_k", channels: 2 * d)
        cbamO = CBAM("\(p).cbam_o", channels: d, reduction: reduction, rng: &rng)
        bnO = BatchNorm2d("\(p).bn_o", channels: d)
        pooled = stride == 8
        attention = NonLocalAttention(queryBlock: queryBlock)
        gateSigmoids = (0..<(tasks - 1)).map { _ in Sigmoid() }
        products = (0..<(tasks - 1)).map { _ in ElementwiseProduct() }
        pools = stride == 8 ? (0..<tasks).map { _ in CeilAvgPool2() } : []
        dAux = (0..<(tasks - 1)).map { _ in Tensor([0]) }
    }

    /// main = e_t, aux = the other tasks' e_u in task order.
    public func forward(_ main: Tensor, _ aux: [Tensor]) -> Tensor {
        precondition(aux.count == gates.count, "MTCPCFM: \(aux.count) auxiliary maps for \(gates.count) gates")
        let m = pooled ? pools[0].forward(main) : main
        let s = bnS.forward(cbamS.forward(m))
        gateValues = []
        var gated: [Tensor] = []
        for (k, e) in aux.enumerated() {
            let a = pooled ? pools[k + 1].forward(e) : e
            let g = gateSigmoids[k].forward(conv(gates[k], a))
            gateValues.append(g)
            gated.append(products[k].forward(a, g))
        }
        let f = reluF.forward(conv(fuse, concat.forward(gated)))
        let theta = reluQ.forward(bnQ.forward(cbamQ.forward(f)))
        let phi = reluK.forward(bnK.forward(cbamK.forward(f)))
        let c = bnO.forward(cbamO.forward(attention.forward(theta: theta, phi: phi, value: s)))
        return pooled ? upsample.forward(c, height: main.h, width: main.w) : c
    }

    /// (∂/∂e_t, ∂/∂e_u per auxiliary task), layer-owned.
    public func backward(_ dc: Tensor) -> (Tensor, [Tensor]) {
        let g = pooled ? upsample.backward(dc) : dc
        let (dTheta, dPhi, ds) = attention.backward(cbamO.backward(bnO.backward(g)))
        dF.copy(from: cbamQ.backward(bnQ.backward(reluQ.backward(dTheta))))
        dF.add(cbamK.backward(bnK.backward(reluK.backward(dPhi))))
        let parts = concat.backward(fuse.backward(reluF.backward(dF)))
        var daux: [Tensor] = []
        for k in gates.indices {
            let (da, dg) = products[k].backward(parts[k])
            dAux[k].copy(from: da)
            dAux[k].add(gates[k].backward(gateSigmoids[k].backward(dg)))
            daux.append(pooled ? pools[k + 1].backward(dAux[k]) : dAux[k])
        }
        let dm = cbamS.backward(bnS.backward(ds))
        return (pooled ? pools[0].backward(dm) : dm, daux)
    }
}

/// The Spatial Refinement Module (the code's SPF; names `<p>.cbam_p`, `<p>.cbam_q`, `<p>.conv_p`, `<p>.bn_p`,
/// `<p>.conv_q`, `<p>.bn_q`):  q' = CBAM_q(q),  u = [Bilinear(CBAM_p(p) → size q'); q'],
/// p_out = ReLU(BN_p(Conv1×1(u) → d)),  q_out = ReLU(BN_q(Conv1×1(u) → back_dim)) (convs with bias; q branch optional).
public final class MTCPSRM: HasParameters {
    public let cbamP: CBAM, cbamQ: CBAM
    public let convP: Conv2d, bnP: BatchNorm2d
    public let convQ: Conv2d?, bnQ: BatchNorm2d?
    let up = Upsample(), concat = Concat(), reluP = ReLU(), reluQ = ReLU()
    private let dU = Tensor([0])
    public var parameters: [Parameter] {
        cbamP.parameters + cbamQ.parameters + convP.parameters + bnP.parameters + (convQ?.parameters ?? []) + (bnQ?.parameters ?? [])
    }
    public var batchNorms: [BatchNorm2d] { cbamP.batchNorms + cbamQ.batchNorms + [bnP] + (bnQ.map { [$0] } ?? []) }

    public init(_ p: String, predDim: Int, backDim: Int, dim d: Int, withQ: Bool, reduction: Int = 16, rng: inout Philox) {
        cbamP = CBAM("\(p).cbam_p", channels: predDim, reduction: reduction, rng: &rng)
        cbamQ = CBAM("\(p).cbam_q", channels: backDim, reduction: reduction, rng: &rng)
        convP = Conv2d("\(p).conv_p", inChannels: predDim + backDim, outChannels: d, kernel: 1, bias: true, rng: &rng)
        bnP = BatchNorm2d("\(p).bn_p", channels: d)
        convQ = withQ ? Conv2d("\(p).conv_q", inChannels: predDim + backDim, outChannels: backDim, kernel: 1, bias: true, rng: &rng) : nil
        bnQ = withQ ? BatchNorm2d("\(p).bn_q", channels: backDim) : nil
    }

    public func forward(_ p: Tensor, _ q: Tensor) -> (Tensor, Tensor?) {
        let q2 = cbamQ.forward(q)
        let u = concat.forward([up.forward(cbamP.forward(p), height: q2.h, width: q2.w), q2])
        let pOut = reluP.forward(bnP.forward(conv(convP, u)))
        return (pOut, convQ.map { reluQ.forward(bnQ!.forward(conv($0, u))) })
    }

    /// (∂/∂p, ∂/∂q), layer-owned.
    public func backward(_ dp: Tensor, _ dq: Tensor?) -> (Tensor, Tensor) {
        dU.copy(from: convP.backward(bnP.backward(reluP.backward(dp))))
        if let dq, let convQ { dU.add(convQ.backward(bnQ!.backward(reluQ.backward(dq)))) }
        let parts = concat.backward(dU)
        return (cbamP.backward(up.backward(parts[0])), cbamQ.backward(parts[1]))
    }
}

/// Trace-back: (p0, b0) = s0(c_t, r2); (p1, b1) = s1(b0, r1); p2 = s2(b1, r0) — each SRM's q_out feeds the
/// next; p0 (stride 16) and p1 (stride 8) go to the intermediate heads, p2 (stride 4) to the final head.
/// s2 has no q branch (unused in the code). Names `<p>.s0.*`, `<p>.s1.*`, `<p>.s2.*`.
public final class MTCPTraceBack: HasParameters {
    public let srms: [MTCPSRM]
    public var parameters: [Parameter] { srms.flatMap { $0.parameters } }
    public var batchNorms: [BatchNorm2d] { srms.flatMap { $0.batchNorms } }

    public init(_ p: String, dim d: Int, reduction: Int = 16, rng: inout Philox) {
        srms = [MTCPSRM("\(p).s0", predDim: d, backDim: 4 * d, dim: d, withQ: true, reduction: reduction, rng: &rng),
                MTCPSRM("\(p).s1", predDim: 4 * d, backDim: 2 * d, dim: d, withQ: true, reduction: reduction, rng: &rng),
                MTCPSRM("\(p).s2", predDim: 2 * d, backDim: d, dim: d, withQ: false, reduction: reduction, rng: &rng)]
    }

    /// c_t and the task's transformer outputs r0, r1, r2 → [p0, p1, p2].
    public func forward(_ c: Tensor, _ rs: [Tensor]) -> [Tensor] {
        let (p0, b0) = srms[0].forward(c, rs[2])
        let (p1, b1) = srms[1].forward(b0!, rs[1])
        let (p2, _) = srms[2].forward(b1!, rs[0])
        return [p0, p1, p2]
    }

    /// (∂/∂c_t, [∂/∂r0, ∂/∂r1, ∂/∂r2]), layer-owned.
    public func backward(_ dp: [Tensor]) -> (Tensor, [Tensor]) {
        let (db1, dr0) = srms[2].backward(dp[2], nil)
        let (db0, dr1) = srms[1].backward(dp[1], db1)
        let (dc, dr2) = srms[0].backward(dp[0], db0)
        return (dc, [dr0, dr1, dr2])
    }
}

/// The intermediate heads (names `<p>.conv1`, `<p>.conv2`, `<p>.bn`, `<p>.out`): Conv1×1 (no bias) ×`convs`
/// (1 or 2) → BN → ReLU → Conv1×1(→C, bias).
public final class MTCPInterHead: HasParameters {
    let convs: [Conv2d], bn: BatchNorm2d, out: Conv2d
    let relu = ReLU()
    public var parameters: [Parameter] { convs.flatMap { $0.parameters } + bn.parameters + out.parameters }
    public var batchNorms: [BatchNorm2d] { [bn] }

    public init(_ p: String, dim d: Int, outChannels: Int, convs n: Int, rng: inout Philox) {
        convs = (1...n).map { Conv2d("\(p).conv\($0)", inChannels: d, outChannels: d, kernel: 1, bias: false, rng: &rng) }
        bn = BatchNorm2d("\(p).bn", channels: d)
        out = Conv2d("\(p).out", inChannels: d, outChannels: outChannels, kernel: 1, bias: true, rng: &rng)
    }

    public func forward(_ x: Tensor) -> Tensor {
        var y = x
        for c in convs { y = conv(c, y) }
        return conv(out, relu.forward(bn.forward(y)))
    }

    public func backward(_ dy: Tensor) -> Tensor {
        var g = bn.backward(relu.backward(out.backward(dy)))
        for c in convs.reversed() { g = c.backward(g) }
        return g
    }
}

/// The final heads (names `<p>.conv1`, `<p>.bn`, `<p>.conv2`, `<p>.out`):
///   seg:   Conv1×1(no bias) → BN → ReLU → Conv1×1(→C) → Up×up (bilinear, align_corners=True)
///   plain: the same without the Up
///   depth: Conv1×1(d → d/2, bias) → Up×up (align_corners=True) → Conv1×1(d/2 → mid) → ReLU → Conv1×1(mid → C)
public final class MTCPFinalHead: HasParameters {
    public enum Kind: String, Sendable { case seg, plain, depth }
    public let kind: Kind
    public let up: Int
    let conv1: Conv2d, conv2: Conv2d?, out: Conv2d
    let bn: BatchNorm2d?
    let relu = ReLU()
    let upsample = Upsample(alignCorners: true)
    public var parameters: [Parameter] { conv1.parameters + (bn?.parameters ?? []) + (conv2?.parameters ?? []) + out.parameters }
    public var batchNorms: [BatchNorm2d] { bn.map { [$0] } ?? [] }

    public init(_ p: String, kind: Kind, dim d: Int, outChannels c: Int, up: Int, depthMid: Int = 32, rng: inout Philox) {
        self.kind = kind
        self.up = up
        if kind == .depth {
            conv1 = Conv2d("\(p).conv1", inChannels: d, outChannels: d / 2, kernel: 1, bias: true, rng: &rng)
            conv2 = Conv2d("\(p).conv2", inChannels: d / 2, outChannels: depthMid, kernel: 1, bias: true, rng: &rng)
            out = Conv2d("\(p).out", inChannels: depthMid, outChannels: c, kernel: 1, bias: true, rng: &rng)
            bn = nil
        } else {
            conv1 = Conv2d("\(p).conv1", inChannels: d, outChannels: d, kernel: 1, bias: false, rng: &rng)
            bn = BatchNorm2d("\(p).bn", channels: d)
            out = Conv2d("\(p).out", inChannels: d, outChannels: c, kernel: 1, bias: true, rng: &rng)
            conv2 = nil
        }
    }

    public func forward(_ x: Tensor) -> Tensor {
        switch kind {
        case .depth:
            let u = conv(conv1, x)
            return conv(out, relu.forward(conv(conv2!, upsample.forward(u, height: up * u.h, width: up * u.w))))
        case .seg, .plain:
            let y = conv(out, relu.forward(bn!.forward(conv(conv1, x))))
            return kind == .seg && up > 1 ? upsample.forward(y, height: up * y.h, width: up * y.w) : y
        }
    }

    public func backward(_ dy: Tensor) -> Tensor {
        switch kind {
        case .depth:
            return conv1.backward(upsample.backward(conv2!.backward(relu.backward(out.backward(dy)))))
        case .seg, .plain:
            let g = kind == .seg && up > 1 ? upsample.backward(dy) : dy
            return conv1.backward(bn!.backward(relu.backward(out.backward(g))))
        }
    }
}
