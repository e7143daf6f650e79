import Foundation
import MTLCore
import MTLNN

// The pieces of the KEM decoder (docs/ARCHITECTURE.md "KEM"; equations docs/ARCHITECTURES.md §2.2,
// reference tools/kem_reference.py): the memory mixer (KEM / sKEM), the cross-attention baseline,
// MTFormer's 256-d task transformer and the two head shapes. Token tensors are [B, L, d] in
// row-major (y, x) order; every module keeps its buffers, so a step with stable shapes allocates
// nothing. Backward may run several times after one forward (once per task), adding into grads.

/// c[b] = op(a[b]) · op(b[b]) for `batches` independent products with fixed strides (0 = shared operand).
@inline(__always)
func batchedGEMM(_ batches: Int, transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int, alpha: Float = 1,
                 a: UnsafePointer<Float>, strideA: Int, lda: Int, b: UnsafePointer<Float>, strideB: Int, ldb: Int,
                 beta: Float = 0, c: UnsafeMutablePointer<Float>, strideC: Int, ldc: Int) {
    for i in 0..<batches {
        sgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a + i * strideA, lda: lda,
              b: b + i * strideB, ldb: ldb, beta: beta, c: c + i * strideC, ldc: ldc)
    }
}

/// The per-task token tensors stacked along the token axis: [B, L_t, d] × T ↔ [B, ΣL, d].
final class TokenStack {
    let stacked = Tensor([0])
    private(set) var lengths: [Int] = []
    private var parts: [Tensor] = []

    var total: Int { lengths.reduce(0, +) }
    func offset(_ t: Int) -> Int { lengths[..<t].reduce(0, +) }

    /// xs (nil = zeros of length `lengths[t]`, only after a stack of real tensors) → [B, ΣL, d].
    func stack(_ xs: [Tensor?], batch b: Int, dim d: Int, lengths given: [Int]? = nil) -> Tensor {
        if let given { lengths = given } else { lengths = xs.map { $0!.shape[1] } }
        let tl = total
        stacked.resize([b, tl, d])
        for i in 0..<b {
            var off = 0
            for (t, x) in xs.enumerated() {
                let l = lengths[t], dst = stacked.data + (i * tl + off) * d
                if let x { dst.update(from: x.data + i * l * d, count: l * d) } else { dst.update(repeating: 0, count: l * d) }
                off += l
            }
        }
        return stacked
    }

    /// [B, ΣL, d] → one [B, L_t, d] tensor per task (owned here), with the lengths of `like`.
    func split(_ y: Tensor, like: TokenStack) -> [Tensor] {
        lengths = like.lengths
        return split(y)
    }

    func split(_ y: Tensor) -> [Tensor] {
        let b = y.shape[0], tl = y.shape[1], d = y.shape[2]
        while parts.count < lengths.count { parts.append(Tensor([0])) }
        var off = 0
        for (t, l) in lengths.enumerated() {
            parts[t].resize([b, l, d])
            for i in 0..<b { (parts[t].data + i * l * d).update(from: y.data + (i * tl + off) * d, count: l * d) }
            off += l
        }
        return Array(parts.prefix(lengths.count))
    }
}

/// KEM's knowledge-extraction memory over the tokens of all tasks (eqs. 1–3), and sKEM.
///
///   X = [X_1; …; X_T]                                     B × TL × d
///   Retrieve: S = (M W_q1)(X W_k1)ᵀ / √d                  B × m × TL
///             M' = TopK_k(S over the tokens of each slot) (X W_v1)            B × m × d
///   Write:    Z_t = softmax((X_t W_q2)(M' W_k2)ᵀ / √d) (M' W_v2)             B × L × d
///   Broadcast: X_t ← X_t + λ Z_t
/// axis .slots: Retrieve uses a plain softmax and Write keeps each token's k best slots.
/// sKEM (fixed ETF E, d × K):
///   role .tasks (K = T, the paper): X' = X W_p + b_p (or X without the projection),
///               S = ((M W_q1) E)((X' W_k1) E)ᵀ / √K
///   role .slots (K = m, the design's sKEM-A): S = Eᵀ X''ᵀ / √d, X'' = X W_p + b_p (or X W_k1)
/// Parameters (under `name`): memory [m, d], retrieve.{q,k,v}, write.{q,k,v}, proj (sKEM with the
/// projection); buffer `etf` [d, K].
public final class KEMMemory: HasParameters {
    public enum Axis: String, Sendable { case tokens, slots }
    public enum ETFRole: String, Sendable { case tasks, slots }
    public let name: String
    public let dim: Int, slots: Int, tasks: Int
    public let lambda: Float
    public let axis: Axis
    public let role: ETFRole?          // nil: KEM (no ETF)
    public let memory: Parameter
    public let rq: Linear, rk: Linear, rv: Linear, wq: Linear, wk: Linear, wv: Linear
    public let proj: Linear?
    public let etf: Buffer?
    let topk: TopKSoftmax
    let softmax = Softmax()
    let stack = TokenStack(), gradStack = TokenStack(), outStack = TokenStack(), dxStack = TokenStack()

    public var parameters: [Parameter] {
        [memory] + [rq, rk, rv, wq, wk, wv].flatMap { $0.parameters } + (proj?.parameters ?? [])
    }
    public var buffers: [Buffer] { etf.map { [$0] } ?? [] }

    // Forward state.
    private var qm: Tensor?, kx: Tensor?, vx: Tensor?, qx: Tensor?, km: Tensor?, vm: Tensor?, xp: Tensor?
    private var p1: Tensor?, p2: Tensor?
    private let qE = Tensor([0]), kE = Tensor([0]), scores = Tensor([0]), mem = Tensor([0])
    private let writeScores = Tensor([0]), output = Tensor([0])
    // Backward scratch.
    private let dA = Tensor([0]), dvm = Tensor([0]), dqx = Tensor([0]), dkm = Tensor([0]), dmem = Tensor([0])
    private let dP = Tensor([0]), dvx = Tensor([0]), dqm = Tensor([0]), dkx = Tensor([0]), dX = Tensor([0])
    private let dqE = Tensor([0]), dkE = Tensor([0])
    private var batch = 0

    /// `etfMatrix`: E row-major [d, K] in Double (ETF.matrix or a given one); required iff `role` is set.
    public init(_ name: String, dim d: Int, slots m: Int, topk k: Int, tasks: Int, lambda: Float = 1,
                variant: TopKSoftmax.Variant = .masked, axis: Axis = .tokens, role: ETFRole? = nil,
                projection: Bool = true, etfMatrix: [Double]? = nil, rng: inout Philox) {
        self.name = name
        dim = d
        slots = m
        self.tasks = tasks
        self.lambda = lambda
        self.axis = axis
        self.role = role
        topk = TopKSoftmax(k: k, variant: variant)
        // The reference's init: N(0, 0.02²) slots.
        memory = Parameter("\(name).memory", Tensor([m, d], (0..<(m * d)).map { _ in 0.02 * rng.normal() }))
        rq = Linear("\(name).retrieve.q", inFeatures: d, outFeatures: d, rng: &rng)
        rk = Linear("\(name).retrieve.k", inFeatures: d, outFeatures: d, rng: &rng)
        rv = Linear("\(name).retrieve.v", inFeatures: d, outFeatures: d, rng: &rng)
        wq = Linear("\(name).write.q", inFeatures: d, outFeatures: d, rng: &rng)
        wk = Linear("\(name).write.k", inFeatures: d, outFeatures: d, rng: &rng)
        wv = Linear("\(name).write.v", inFeatures: d, outFeatures: d, rng: &rng)
        proj = role != nil && projection ? Linear("\(name).proj", inFeatures: d, outFeatures: d, rng: &rng) : nil
        if let role {
            let kk = role == .tasks ? tasks : m
            precondition(etfMatrix?.count == d * kk, "\(name): the ETF must be \(d)×\(kk)")
            etf = Buffer("\(name).etf", Tensor([d, kk], etfMatrix!.map { Float($0) }))
        } else {
            etf = nil
        }
    }

    /// The retrieve and write logits of the last forward (tests check their top-k gaps).
    var scoresForTests: Tensor { scores }
    var writeScoresForTests: Tensor { writeScores }

    /// ETF columns K (T for role tasks, m for role slots).
    public var etfColumns: Int { etf?.value.shape[1] ?? 0 }

    public func forward(_ xs: [Tensor]) -> [Tensor] {
        let d = dim, m = slots, b = xs[0].shape[0]
        batch = b
        let x = stack.stack(xs, batch: b, dim: d)
        let tl = stack.total
        scores.resize([b, m, tl])
        let q = rq.forward(memory.value)
        qm = q
        switch role {
        case nil:
            let k = rk.forward(x)
            kx = k
            batchedGEMM(b, transB: true, m: m, n: tl, k: d, alpha: 1 / Float(d).squareRoot(), a: q.data, strideA: 0, lda: d,
                        b: k.data, strideB: tl * d, ldb: d, c: scores.data, strideC: m * tl, ldc: tl)
        case .tasks:
            let kk = etfColumns, e = etf!.value.data
            let input = proj?.forward(x) ?? x
            let k = rk.forward(input)
            kx = k
            qE.resize([m, kk])
            sgemm(m: m, n: kk, k: d, a: q.data, lda: d, b: e, ldb: kk, c: qE.data, ldc: kk)
            kE.resize([b, tl, kk])
            sgemm(m: b * tl, n: kk, k: d, a: k.data, lda: d, b: e, ldb: kk, c: kE.data, ldc: kk)
            batchedGEMM(b, transB: true, m: m, n: tl, k: kk, alpha: 1 / Float(kk).squareRoot(), a: qE.data, strideA: 0,
                        lda: kk, b: kE.data, strideB: tl * kk, ldb: kk, c: scores.data, strideC: m * tl, ldc: tl)
        case .slots:
            // M and W_q1 do not enter the scores in this reading (their gradient is zero).
            let p = proj?.forward(x) ?? rk.forward(x)
            xp = p
            batchedGEMM(b, transA: true, transB: true, m: m, n: tl, k: d, alpha: 1 / Float(d).squareRoot(),
                        a: etf!.value.data, strideA: 0, lda: m, b: p.data, strideB: tl * d, ldb: d,
                        c: scores.data, strideC: m * tl, ldc: tl)
        }
        let p1 = axis == .tokens ? topk.forward(scores) : softmax.forward(scores)
        self.p1 = p1
        let v = rv.forward(x)
        vx = v
        mem.resize([b, m, d])
        batchedGEMM(b, m: m, n: d, k: tl, a: p1.data, strideA: m * tl, lda: tl, b: v.data, strideB: tl * d, ldb: d,
                    c: mem.data, strideC: m * d, ldc: d)
        let k2 = wk.forward(mem), v2 = wv.forward(mem)
        km = k2
        vm = v2
        let q2 = wq.forward(x)
        qx = q2
        writeScores.resize([b, tl, m])
        batchedGEMM(b, transB: true, m: tl, n: m, k: d, alpha: 1 / Float(d).squareRoot(), a: q2.data, strideA: tl * d,
                    lda: d, b: k2.data, strideB: m * d, ldb: d, c: writeScores.data, strideC: tl * m, ldc: m)
        let p2 = axis == .slots ? topk.forward(writeScores) : softmax.forward(writeScores)
        self.p2 = p2
        output.copy(from: x)
        batchedGEMM(b, m: tl, n: d, k: m, alpha: lambda, a: p2.data, strideA: tl * m, lda: m, b: v2.data, strideB: m * d,
                    ldb: d, beta: 1, c: output.data, strideC: tl * d, ldc: d)
        return outStack.split(output, like: stack)
    }

    /// dOuts[t] nil: task t's output gets no gradient. Returns ∂/∂X_t for every task.
    public func backward(_ dOuts: [Tensor?]) -> [Tensor] {
        let d = dim, m = slots, b = batch, tl = stack.total
        let dy = gradStack.stack(dOuts, batch: b, dim: d, lengths: stack.lengths)
        dX.copy(from: dy)
        let (p1, p2, vm, km, qx, vx) = (self.p1!, self.p2!, self.vm!, self.km!, self.qx!, self.vx!)
        let inv = 1 / Float(d).squareRoot()
        // Write and broadcast.
        dA.resize([b, tl, m])
        batchedGEMM(b, transB: true, m: tl, n: m, k: d, alpha: lambda, a: dy.data, strideA: tl * d, lda: d,
                    b: vm.data, strideB: m * d, ldb: d, c: dA.data, strideC: tl * m, ldc: m)
        dvm.resize([b, m, d])
        batchedGEMM(b, transA: true, m: m, n: d, k: tl, alpha: lambda, a: p2.data, strideA: tl * m, lda: m,
                    b: dy.data, strideB: tl * d, ldb: d, c: dvm.data, strideC: m * d, ldc: d)
        let ds2 = axis == .slots ? topk.backward(dA) : softmax.backward(dA)
        dqx.resize([b, tl, d])
        batchedGEMM(b, m: tl, n: d, k: m, alpha: inv, a: ds2.data, strideA: tl * m, lda: m, b: km.data, strideB: m * d,
                    ldb: d, c: dqx.data, strideC: tl * d, ldc: d)
        dkm.resize([b, m, d])
        batchedGEMM(b, transA: true, m: m, n: d, k: tl, alpha: inv, a: ds2.data, strideA: tl * m, lda: m,
                    b: qx.data, strideB: tl * d, ldb: d, c: dkm.data, strideC: m * d, ldc: d)
        dX.add(wq.backward(dqx))
        dmem.copy(from: wk.backward(dkm))
        dmem.add(wv.backward(dvm))
        // Retrieve.
        dP.resize([b, m, tl])
        batchedGEMM(b, transB: true, m: m, n: tl, k: d, a: dmem.data, strideA: m * d, lda: d, b: vx.data,
                    strideB: tl * d, ldb: d, c: dP.data, strideC: m * tl, ldc: tl)
        dvx.resize([b, tl, d])
        batchedGEMM(b, transA: true, m: tl, n: d, k: m, a: p1.data, strideA: m * tl, lda: tl, b: dmem.data,
                    strideB: m * d, ldb: d, c: dvx.data, strideC: tl * d, ldc: d)
        dX.add(rv.backward(dvx))
        let ds = axis == .tokens ? topk.backward(dP) : softmax.backward(dP)
        switch role {
        case nil:
            let q = qm!, k = kx!
            dqm.resize([m, d])
            // Σ_b dS[b] K[b]: one GEMM with the batch folded into the depth would need a transpose; b is small.
            batchedGEMM(1, m: m, n: d, k: tl, alpha: inv, a: ds.data, strideA: 0, lda: tl, b: k.data, strideB: 0, ldb: d,
                        c: dqm.data, strideC: 0, ldc: d)
            for i in 1..<max(b, 1) {
                sgemm(m: m, n: d, k: tl, alpha: inv, a: ds.data + i * m * tl, lda: tl, b: k.data + i * tl * d, ldb: d,
                      beta: 1, c: dqm.data, ldc: d)
            }
            dkx.resize([b, tl, d])
            batchedGEMM(b, transA: true, m: tl, n: d, k: m, alpha: inv, a: ds.data, strideA: m * tl, lda: tl,
                        b: q.data, strideB: 0, ldb: d, c: dkx.data, strideC: tl * d, ldc: d)
            memory.grad.add(rq.backward(dqm))
            dX.add(rk.backward(dkx))
        case .tasks:
            let kk = etfColumns, e = etf!.value.data, c = 1 / Float(kk).squareRoot()
            dqE.resize([m, kk])
            dqE.zero()
            for i in 0..<b {
                sgemm(m: m, n: kk, k: tl, alpha: c, a: ds.data + i * m * tl, lda: tl, b: kE.data + i * tl * kk, ldb: kk,
                      beta: 1, c: dqE.data, ldc: kk)
            }
            dkE.resize([b, tl, kk])
            batchedGEMM(b, transA: true, m: tl, n: kk, k: m, alpha: c, a: ds.data, strideA: m * tl, lda: tl,
                        b: qE.data, strideB: 0, ldb: kk, c: dkE.data, strideC: tl * kk, ldc: kk)
            dqm.resize([m, d])
            sgemm(transB: true, m: m, n: d, k: kk, a: dqE.data, lda: kk, b: e, ldb: kk, c: dqm.data, ldc: d)
            dkx.resize([b, tl, d])
            sgemm(transB: true, m: b * tl, n: d, k: kk, a: dkE.data, lda: kk, b: e, ldb: kk, c: dkx.data, ldc: d)
            memory.grad.add(rq.backward(dqm))
            let dxp = rk.backward(dkx)
            if let proj { dX.add(proj.backward(dxp)) } else { dX.add(dxp) }
        case .slots:
            dkx.resize([b, tl, d])
            batchedGEMM(b, transA: true, transB: true, m: tl, n: d, k: m, alpha: inv, a: ds.data, strideA: m * tl, lda: tl,
                        b: etf!.value.data, strideB: 0, ldb: m, c: dkx.data, strideC: tl * d, ldc: d)
            dX.add((proj ?? rk).backward(dkx))
        }
        return dxStack.split(dX, like: stack)
    }
}

/// The "KEM w/ CA" baseline: per task t, Z_t = softmax((X_t W_q^t)(X W_k^t)ᵀ/√d)(X W_v^t) W_o^t over
/// the tokens X of all tasks, X_t ← X_t + λ Z_t. Parameters `<name>.task.<t>.{q,k,v,o}` (the reference's
/// ModuleDict names) belong to task t
/// (only task t's output reads them), so the cross-attention decoder has no shared mixer parameters.
public final class KEMCrossAttention: HasParameters {
    public let dim: Int
    public let lambda: Float
    public let q: [Linear], k: [Linear], v: [Linear], o: [Linear]
    let softmaxes: [Softmax]
    let stack = TokenStack(), gradStack = TokenStack(), dxStack = TokenStack()
    /// The forward's q_t(X_t), k_t(X), v_t(X) and attention weights (the layers' own output buffers).
    private var qs: [Tensor] = [], ks: [Tensor] = [], vs: [Tensor] = [], ps: [Tensor] = []
    private let attended: [Tensor], outputs: [Tensor], scores: [Tensor]
    private let dZ = Tensor([0]), dP = Tensor([0]), dV = Tensor([0]), dQ = Tensor([0]), dK = Tensor([0]), dX = Tensor([0])
    private var batch = 0

    public var parameters: [Parameter] { (0..<q.count).flatMap { taskParameters($0) } }
    public func taskParameters(_ t: Int) -> [Parameter] { [q[t], k[t], v[t], o[t]].flatMap { $0.parameters } }

    public init(_ name: String, dim d: Int, tasks: [String], lambda: Float = 1, rng: inout Philox) {
        dim = d
        self.lambda = lambda
        var q: [Linear] = [], k: [Linear] = [], v: [Linear] = [], o: [Linear] = []
        for t in tasks {
            q.append(Linear("\(name).task.\(t).q", inFeatures: d, outFeatures: d, rng: &rng))
            k.append(Linear("\(name).task.\(t).k", inFeatures: d, outFeatures: d, rng: &rng))
            v.append(Linear("\(name).task.\(t).v", inFeatures: d, outFeatures: d, rng: &rng))
            o.append(Linear("\(name).task.\(t).o", inFeatures: d, outFeatures: d, rng: &rng))
        }
        (self.q, self.k, self.v, self.o) = (q, k, v, o)
        softmaxes = tasks.map { _ in Softmax() }
        attended = tasks.map { _ in Tensor([0]) }
        outputs = tasks.map { _ in Tensor([0]) }
        scores = tasks.map { _ in Tensor([0]) }
    }

    public func forward(_ xs: [Tensor]) -> [Tensor] {
        let d = dim, b = xs[0].shape[0]
        batch = b
        let x = stack.stack(xs, batch: b, dim: d)
        let tl = stack.total
        qs = []; ks = []; vs = []; ps = []
        for t in xs.indices {
            let l = xs[t].shape[1]
            let qt = q[t].forward(xs[t]), kt = k[t].forward(x), vt = v[t].forward(x)
            qs.append(qt); ks.append(kt); vs.append(vt)
            scores[t].resize([b, l, tl])
            batchedGEMM(b, transB: true, m: l, n: tl, k: d, alpha: 1 / Float(d).squareRoot(), a: qt.data, strideA: l * d,
                        lda: d, b: kt.data, strideB: tl * d, ldb: d, c: scores[t].data, strideC: l * tl, ldc: tl)
            let p = softmaxes[t].forward(scores[t])
            ps.append(p)
            attended[t].resize([b, l, d])
            batchedGEMM(b, m: l, n: d, k: tl, a: p.data, strideA: l * tl, lda: tl, b: vt.data, strideB: tl * d, ldb: d,
                        c: attended[t].data, strideC: l * d, ldc: d)
            outputs[t].copy(from: xs[t])
            outputs[t].add(o[t].forward(attended[t]), alpha: lambda)
        }
        return outputs
    }

    public func backward(_ dOuts: [Tensor?]) -> [Tensor] {
        let d = dim, b = batch, tl = stack.total
        // The identity paths.
        let dy = gradStack.stack(dOuts, batch: b, dim: d, lengths: stack.lengths)
        dX.copy(from: dy)
        for t in dOuts.indices {
            guard let g = dOuts[t] else { continue }
            let l = g.shape[1], off = stack.offset(t)
            dZ.copy(from: g)
            dZ.scale(lambda)
            let dO = o[t].backward(dZ)
            let p = ps[t], vt = vs[t], kt = ks[t], qt = qs[t]
            dP.resize([b, l, tl])
            batchedGEMM(b, transB: true, m: l, n: tl, k: d, a: dO.data, strideA: l * d, lda: d, b: vt.data,
                        strideB: tl * d, ldb: d, c: dP.data, strideC: l * tl, ldc: tl)
            dV.resize([b, tl, d])
            batchedGEMM(b, transA: true, m: tl, n: d, k: l, a: p.data, strideA: l * tl, lda: tl, b: dO.data,
                        strideB: l * d, ldb: d, c: dV.data, strideC: tl * d, ldc: d)
            let ds = softmaxes[t].backward(dP)
            let inv = 1 / Float(d).squareRoot()
            dQ.resize([b, l, d])
            batchedGEMM(b, m: l, n: d, k: tl, alpha: inv, a: ds.data, strideA: l * tl, lda: tl, b: kt.data,
                        strideB: tl * d, ldb: d, c: dQ.data, strideC: l * d, ldc: d)
            dK.resize([b, tl, d])
            batchedGEMM(b, transA: true, m: tl, n: d, k: l, alpha: inv, a: ds.data, strideA: l * tl, lda: tl,
                        b: qt.data, strideB: l * d, ldb: d, c: dK.data, strideC: tl * d, ldc: d)
            let dq = q[t].backward(dQ)
            for i in 0..<b {
                let dst = dX.data + (i * tl + off) * d, src = dq.data + i * l * d
                for j in 0..<(l * d) { dst[j] += src[j] }
            }
            dX.add(k[t].backward(dK))
            dX.add(v[t].backward(dV))
        }
        return dxStack.split(dX, like: stack)
    }
}

/// MTFormer's 256-d transformer: `depth` Swin blocks (W-MSA, SW-MSA, …), then LayerNorm `norm`.
/// `patch_embed.{proj,norm}` is allocated but never used, as in MTFormer's code (its counts include
/// it; `allocateUnused: false` drops it). Those parameters get no gradient.
public final class TaskTransformer: HasParameters {
    public let blocks: [SwinBlock]
    public let norm: LayerNorm
    public let unused: [Parameter]
    public var parameters: [Parameter] { unused + blocks.flatMap { $0.parameters } + norm.parameters }

    public init(_ name: String, dim: Int, heads: Int, window: Int, depth: Int, allocateUnused: Bool, rng: inout Philox) {
        if allocateUnused {
            let conv = Conv2d("\(name).patch_embed.proj", inChannels: dim, outChannels: dim, kernel: 4, stride: 4, bias: true, rng: &rng)
            let ln = LayerNorm("\(name).patch_embed.norm", features: dim)
            unused = conv.parameters + ln.parameters
        } else {
            unused = []
        }
        blocks = (0..<depth).map {
            SwinBlock("\(name).blocks.\($0)", dim: dim, heads: heads, window: window, shift: $0 % 2 == 1 ? window / 2 : 0,
                      order: .padThenRoll, rng: &rng)
        }
        norm = LayerNorm("\(name).norm", features: dim)
    }

    public func forward(_ x: Tensor, height h: Int, width w: Int) -> Tensor {
        var t = x
        for b in blocks { t = b.forward(t, height: h, width: w) }
        return norm.forward(t)
    }

    public func backward(_ dy: Tensor) -> Tensor {
        var g = norm.backward(dy)
        for b in blocks.reversed() { g = b.backward(g) }
        return g
    }
}

/// MTFormer's heads on the 256-d map at stride 4 (names `<prefix>.conv1`, …):
///   seg/parts: Conv1×1 d→d (no bias) → BN → ReLU → Conv1×1 d→C, Up×2 (align_corners=True)
///   saliency:  the same without Up×2
///   depth:     Conv1×1 d→128 → Up×2 (align_corners=True) → Conv1×1 128→32 → ReLU → Conv1×1 32→1 → ReLU
public final class KEMHead: HasParameters {
    public enum Kind: Sendable { case segmentation, saliency, depth }
    public let kind: Kind
    let conv1: Conv2d, conv2: Conv2d, conv3: Conv2d?
    let bn1: BatchNorm2d?
    let relu1 = ReLU(), relu2 = ReLU()
    let up = Upsample(alignCorners: true)
    public var parameters: [Parameter] { conv1.parameters + (bn1?.parameters ?? []) + conv2.parameters + (conv3?.parameters ?? []) }
    public var batchNorms: [BatchNorm2d] { bn1.map { [$0] } ?? [] }
    public var buffers: [Buffer] { batchNorms.flatMap { $0.buffers } }

    public static func kind(task: String) -> Kind {
        task == "depth" ? .depth : (task == "saliency" || task == "sal") ? .saliency : .segmentation
    }

    public init(_ prefix: String, kind: Kind, dim d: Int, outChannels c: Int, rng: inout Philox) {
        self.kind = kind
        if kind == .depth {
            conv1 = Conv2d("\(prefix).conv1", inChannels: d, outChannels: 128, kernel: 1, bias: true, rng: &rng)
            conv2 = Conv2d("\(prefix).conv2", inChannels: 128, outChannels: 32, kernel: 1, bias: true, rng: &rng)
            conv3 = Conv2d("\(prefix).conv3", inChannels: 32, outChannels: c, kernel: 1, bias: true, rng: &rng)
            bn1 = nil
        } else {
            conv1 = Conv2d("\(prefix).conv1", inChannels: d, outChannels: d, kernel: 1, bias: false, rng: &rng)
            bn1 = BatchNorm2d("\(prefix).bn1", channels: d)
            conv2 = Conv2d("\(prefix).conv2", inChannels: d, outChannels: c, kernel: 1, bias: true, rng: &rng)
            conv3 = nil
        }
    }

    public func forward(_ x: Tensor) -> Tensor {
        switch kind {
        case .depth:
            let u = conv(conv1, x)
            let y = up.forward(u, height: 2 * u.h, width: 2 * u.w)
            return relu2.forward(conv(conv3!, relu1.forward(conv(conv2, y))))
        case .segmentation, .saliency:
            let y = conv(conv2, relu1.forward(bn1!.forward(conv(conv1, x))))
            return kind == .saliency ? y : up.forward(y, height: 2 * y.h, width: 2 * y.w)
        }
    }

    public func backward(_ dy: Tensor) -> Tensor {
        switch kind {
        case .depth:
            return conv1.backward(up.backward(conv2.backward(relu1.backward(conv3!.backward(relu2.backward(dy))))))
        case .segmentation, .saliency:
            let g = kind == .saliency ? dy : up.backward(dy)
            return conv1.backward(bn1!.backward(relu1.backward(conv2.backward(g))))
        }
    }
}
