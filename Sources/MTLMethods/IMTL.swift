import Foundation
import MTLCore

/// IMTL (METHODS.md §10): imtl-l (loss scales), imtl-g (gradient angles), imtl (both).
/// IMTL-L: learned s_t (init 0), scaled loss e^{s_t} L_t − s_t, ∂/∂s_t = e^{s_t} L_t − 1, with
///   its own Adam (`lr` 0.025; LibMTL uses the model optimizer). Loss-weighted by e^{s_t}.
/// IMTL-G: with u_t = g_t/‖g_t‖, D = rows (g_1 − g_t), U = rows (u_1 − u_t), t = 2..T,
///   α_{2..T} = (g_1 Uᵀ)(D Uᵀ)^{-1}, α_1 = 1 − Σ α_{2..T}: the combined gradient has equal
///   projections on every u_t. All entries are Gram entries (see `gradientWeights`). Singular
///   D Uᵀ → + 1e-8·max|DUᵀ|·I (nash-mtl adds 1e-8 I), still singular → equal weights 1/T.
///   Shared-override: decoders weight 1.
/// IMTL: IMTL-G on the gradients of the scaled losses e^{s_t} L_t (Gram D K D, D = diag e^s);
///   the coefficients on the raw gradients are α_t e^{s_t}; decoders weight e^{s_t}.
/// The s used in a step are those before this step's Adam update.
final class IMTL: MultiTaskMethod {
    enum Variant { case loss, gradient, both }
    let name: String
    let variant: Variant
    var needsGram: Bool { variant != .loss }
    let needsGradients = false
    let tasks: TaskSet
    var s: [Double]
    var adam: ScalarAdam

    init(_ tasks: TaskSet, _ p: inout MethodParams, variant: Variant) throws {
        self.tasks = tasks
        self.variant = variant
        name = variant == .loss ? "imtl-l" : (variant == .gradient ? "imtl-g" : "imtl")
        var lr = 0.025, s0 = 0.0
        if variant != .gradient {
            lr = try p.double("lr", 0.025, min: 0)
            s0 = try p.double("init", 0)
        }
        s = [Double](repeating: s0, count: tasks.count)
        adam = ScalarAdam(lr: lr, count: tasks.count)
    }

    /// IMTL-G coefficients from a Gram matrix.
    static func gradientWeights(_ K: [Double], _ T: Int) -> [Double] {
        if T == 1 { return [1] }
        // inv[t] = 1/‖g_t‖ (0 for a zero gradient, i.e. u_t = 0); gu(i, j) = g_i·u_j.
        let inv = (0..<T).map { K[$0 * T + $0] > 0 ? 1 / K[$0 * T + $0].squareRoot() : 0 }
        func gu(_ i: Int, _ j: Int) -> Double { K[i * T + j] * inv[j] }
        let n = T - 1
        var M = [Double](repeating: 0, count: n * n)  // M[i][j] = (g_1 − g_i)·(u_1 − u_j)
        var b = [Double](repeating: 0, count: n)      // b[j] = g_1·(u_1 − u_j)
        for j in 1..<T {
            b[j - 1] = gu(0, 0) - gu(0, j)
            for i in 1..<T { M[(i - 1) * n + (j - 1)] = gu(0, 0) - gu(0, j) - gu(i, 0) + gu(i, j) }
        }
        // a M = b  ⇔  Mᵀ a = b.
        var Mt = M
        for i in 0..<n { for j in 0..<n { Mt[i * n + j] = M[j * n + i] } }
        var a = Dense.solve(Mt, b)
        if a == nil {
            let scale = max(Mt.reduce(0) { max($0, abs($1)) }, 1e-300)
            for i in 0..<n { Mt[i * n + i] += 1e-8 * scale }
            a = Dense.solve(Mt, b)
        }
        guard let a else { return [Double](repeating: 1 / Double(T), count: T) }
        return [1 - a.reduce(0, +)] + a
    }

    func apply(_ ctx: MethodContext) throws -> MethodResult {
        try check(ctx, name, tasks, gram: needsGram)
        let T = tasks.count
        let scale = variant == .gradient ? [Double](repeating: 1, count: T) : s.map { exp($0) }
        var encoder = scale
        if variant != .loss {
            let K = ctx.gram!
            var Ks = K
            for i in 0..<T { for j in 0..<T { Ks[i * T + j] = scale[i] * K[i * T + j] * scale[j] } }
            let alpha = IMTL.gradientWeights(Ks, T)
            encoder = (0..<T).map { alpha[$0] * scale[$0] }
        }
        var logs = taskLogs("w", encoder, tasks.names)
        if variant != .gradient {
            logs += taskLogs("scale", scale, tasks.names)
            let grad = (0..<T).map { scale[$0] * ctx.losses[$0] - 1 }
            adam.step(&s, grad: grad)
        }
        return MethodResult(variant == .loss ? .lossWeights(scale) : .coefficients(shared: encoder, decoder: scale), logs: logs)
    }

    func stateValues() -> [String: [Double]] {
        variant == .gradient ? [:] : ["s": s].merging(adam.state("adam")) { a, _ in a }
    }

    func loadState(_ state: [String: [Double]]) throws {
        if variant == .gradient { return try checkStateKeys(state, name, []) }
        try checkStateKeys(state, name, ["s"] + ScalarAdam.keys("adam"))
        s = try stateArray(state, name, "s", count: tasks.count)
        try adam.load(state, "adam", method: name)
    }
}
