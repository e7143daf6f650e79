import MTLCore

/// GradDrop, gradient sign dropout (METHODS.md §8), LibMTL's representation form.
/// Per position j of the per-sample representation (c,h,w):
///   q_t[j] = Σ_b sign(z[b,j]) h_t[b,j]                       (`signCorrectedSum`, summed over ranks)
///   P[j] = ½ (1 + Σ_t q_t[j] / (Σ_t |q_t[j]| + 1e-7)),  U[j] ~ U(0,1)
///   M_t[j] = 1 if (P > U and q_t > 0) or (P < U and q_t < 0), else 0
///   m_t[j] = leak + (1 − leak) M_t[j];  new ∂/∂z[b,j] = Σ_t m_t[j] h_t[b,j]   (`combine`)
/// Not a linear combination, so it needs the vectors (`needsGradients`):
///   level = representation: ctx.grads hold the GLOBAL q_t (length C·H·W); they are overwritten
///     by the multipliers m_t (`MethodOutput.multipliers`); each rank then calls `combine`
///     on its local h_t.
///   level = parameters (and `mtl balance`): the sign-free variant on the vectors themselves
///     (q_t = g_t, as CAGrad/auto-lambda apply it to parameter gradients); the combined
///     Σ_t m_t ⊙ g_t is written into grads[0] (`MethodOutput.combinedGradient`). A rank may pass just
///     its slice of the vectors with `gradsOffset` = the slice's global start.
/// U[j] is lane j%4 of Philox block j/4 of methodRNG(seed, step): the same on every rank and
/// independent of the thread count. Decoders: weight 1. Key: leak (0.0).
public final class GradDrop: MultiTaskMethod {
    public let name = "graddrop"
    public let needsGram = false
    public let needsGradients = true
    let tasks: TaskSet
    let leak: Float

    init(_ tasks: TaskSet, _ p: inout MethodParams) throws {
        self.tasks = tasks
        leak = Float(try p.double("leak", 0.0, min: 0, max: 1))
    }

    /// U for global elements 4b..4b+3: block b of methodRNG(seed, step), i.e. exactly what
    /// sequential `uniform()` draws of that generator return, but computable in any order.
    @inline(__always)
    static func uniforms(key: (UInt32, UInt32), base: (UInt32, UInt32, UInt32, UInt32), block b: Int) -> (Float, Float, Float, Float) {
        let index = UInt64(b) &+ (UInt64(base.0) | UInt64(base.1) << 32)
        let r = Philox.block(key: key, counter: (UInt32(truncatingIfNeeded: index), UInt32(truncatingIfNeeded: index >> 32),
                                                 base.2, base.3))
        let s: Float = 1.0 / 16_777_216.0
        return (Float(r.0 >> 8) * s, Float(r.1 >> 8) * s, Float(r.2 >> 8) * s, Float(r.3 >> 8) * s)
    }

    /// Overwrites q_t with m_t (`combined` = false) or writes Σ_t m_t q_t into q_0 (`combined` = true).
    /// q[t][i] is global element `offset + i`.
    static func drop(_ q: [UnsafeMutableBufferPointer<Float>], leak: Float, seed: UInt64, step: Int, combined: Bool,
                     offset: Int = 0) {
        let T = q.count, P = q[0].count
        let firstBlock = offset / 4
        let blocks = (offset + P + 3) / 4 - firstBlock
        let perChunk = 2048  // blocks of 4 elements per parallel chunk
        let rng = methodRNG(seed: seed, step: step)
        let key = rng.key, base = rng.counter
        parallelFor((blocks + perChunk - 1) / perChunk, minChunk: 2) { c in
            let b0 = c * perChunk, b1 = min(blocks, b0 + perChunk)
            for b in b0..<b1 {
                let u = uniforms(key: key, base: base, block: firstBlock + b)
                for lane in 0..<4 {
                    let j = 4 * (firstBlock + b) + lane - offset  // local index
                    if j < 0 { continue }
                    if j >= P { break }
                    let U = lane == 0 ? u.0 : (lane == 1 ? u.1 : (lane == 2 ? u.2 : u.3))
                    var sum: Float = 0, abs: Float = 0
                    for t in 0..<T { let v = q[t][j]; sum += v; abs += Swift.abs(v) }
                    let purity = 0.5 * (1 + sum / (abs + 1e-7))
                    var out: Float = 0
                    for t in 0..<T {
                        let v = q[t][j]
                        let keep = (purity > U && v > 0) || (purity < U && v < 0)
                        let m = leak + (1 - leak) * (keep ? 1 : 0)
                        if combined { out += m * v } else { q[t][j] = m }
                    }
                    if combined { q[0][j] = out }
                }
            }
        }
    }

    public func apply(_ ctx: MethodContext) throws -> MethodResult {
        try check(ctx, name, tasks, grads: true)
        let combined = ctx.level == .parameters
        GradDrop.drop(ctx.grads!, leak: leak, seed: ctx.seed, step: ctx.step, combined: combined, offset: ctx.gradsOffset)
        let ones = [Double](repeating: 1, count: tasks.count)
        return MethodResult(combined ? .combinedGradient(decoder: ones) : .multipliers(decoder: ones))
    }

    /// One rank's contribution to q_t: out[j] (+)= Σ_b sign(z[b,j]) h[b,j] for a [batch, perSample]
    /// slice (sign(0) = 0, as torch.sign). Sum the results over ranks for the global q_t.
    public static func signCorrectedSum(z: UnsafePointer<Float>, h: UnsafePointer<Float>, batch: Int, perSample: Int,
                                 into out: UnsafeMutablePointer<Float>, accumulate: Bool = false) {
        if !accumulate { out.update(repeating: 0, count: perSample) }
        for b in 0..<batch {
            let zb = z + b * perSample, hb = h + b * perSample
            for j in 0..<perSample {
                let s: Float = zb[j] > 0 ? 1 : (zb[j] < 0 ? -1 : 0)
                out[j] += s * hb[j]
            }
        }
    }

    /// out[b,j] = Σ_t m_t[j] h_t[b,j] for one rank's [batch, perSample] per-task gradients.
    public static func combine(multipliers: [UnsafeBufferPointer<Float>], h: [UnsafePointer<Float>], batch: Int, perSample: Int,
                        into out: UnsafeMutablePointer<Float>) {
        let T = multipliers.count
        for b in 0..<batch {
            let ob = out + b * perSample
            for j in 0..<perSample { ob[j] = multipliers[0][j] * h[0][b * perSample + j] }
            for t in 1..<max(T, 1) {
                let m = multipliers[t], ht = h[t] + b * perSample
                for j in 0..<perSample { ob[j] += m[j] * ht[j] }
            }
        }
    }

    public func stateValues() -> [String: [Double]] { [:] }
    public func loadState(_ state: [String: [Double]]) throws { try checkStateKeys(state, name, []) }
}
