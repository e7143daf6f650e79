import Foundation
import MTLCore

/// IAL, impartial auxiliary learning (METHODS.md §16; paper §III-B/C).
///
/// Decoder stage: uncertainty weighting of EVERY task's loss, weight 0.5 e^{-s_t} (primary
/// included); s_t learned from its own loss only (the `Uncertainty` of UW.swift).
/// Encoder stage, from the Gram diagonal (norms of h_t = ∂L_t/∂z of the RAW losses):
///     g_z = h_p + Σ_k w_k · (‖h_p‖ / (‖h_k‖ + eps)) · h_k
/// so α_p = 1 exactly and α_k = w_k √K_pp / (√K_kk + eps): every auxiliary gradient is rescaled
/// to the primary's norm, then shrunk by w_k ∈ [0,1).
///
/// Weight sources (`source`, the paper's Table XI ablation):
///   uncertainty (default)  w_k = f(log σ_k²) with s_k of the decoder stage, detached;
///   gradnorm               w_k = f(α_gn · log r_k), r_k = (L_k/L_k(0)) / mean_j (L_j/L_j(0)),
///                          i.e. GradNorm's expected-norm ratio r_k^α_gn (> 1: task k trains
///                          slower than average) plays the role of σ_k²; L(0) = first step's losses;
///   cosine                 w_k = max(0, cos(h_p, h_k)) from the Gram;
///   none                   w_k = 1 (pure norm matching).
/// f maps a log-variance ℓ (σ² = e^ℓ) to [0,1), decreasing (`f`):
///   sigmoid (default) 1/(1+σ²) · tanh: tanh(0.5/σ²) · exp: e^{-σ²} · expsigma: e^{-σ} ·
///   inv: 1/(1+σ) · expw: 1 − e^{-0.5/σ²}.
/// Every source except `none` is clamped below 1 (1.0.nextDown) so w_k < 1 holds in floating
/// point too (e.g. 1/(1+e^s) rounds to 1 for s < −37).
/// With every task primary (the paper's "Normal" setting) IAL falls back to UW.
/// Keys: lr (0.025), init (0), f, source, eps (1e-8), alpha (1.5, gradnorm source only).
final class IAL: MultiTaskMethod {
    let name = "ial"
    let needsGram = true
    let needsGradients = false
    let tasks: TaskSet
    var uncertainty: Uncertainty
    let f: String
    let source: String
    let eps: Double
    let gradnormAlpha: Double
    /// L_t(0) for the gradnorm source, set at the first step.
    var initialLosses: [Double]? = nil

    static let mappings = ["sigmoid", "tanh", "exp", "expsigma", "inv", "expw"]
    static let sources = ["uncertainty", "gradnorm", "cosine", "none"]

    init(_ tasks: TaskSet, _ p: inout MethodParams) throws {
        self.tasks = tasks
        let lr = try p.double("lr", 0.025, min: 0)
        let s0 = try p.double("init", 0)
        f = try p.choice("f", "sigmoid", IAL.mappings)
        source = try p.choice("source", "uncertainty", IAL.sources)
        eps = try p.double("eps", 1e-8, min: 0)
        gradnormAlpha = try p.double("alpha", 1.5, min: 0)
        uncertainty = Uncertainty(count: tasks.count, initial: s0, lr: lr)
        if tasks.primaries.isEmpty {
            throw MTLError("method ial: needs one primary task (task roles), found none among \(tasks.names)")
        }
        if tasks.primaries.count > 1 && tasks.primaries.count < tasks.count {
            throw MTLError("method ial: defined for ONE primary task, found \(tasks.primaries.count): \(tasks.primaries.map { tasks.names[$0] }) (all primary falls back to UW)")
        }
    }

    /// f(ℓ) with σ² = e^ℓ, in [0,1).
    static func map(_ f: String, logVariance l: Double) -> Double {
        let w: Double
        switch f {
        case "tanh": w = tanh(0.5 * exp(-l))
        case "exp": w = exp(-exp(l))
        case "expsigma": w = exp(-exp(0.5 * l))
        case "inv": w = 1 / (1 + exp(0.5 * l))
        case "expw": w = -expm1(-0.5 * exp(-l))
        default: w = 1 / (1 + exp(l))  // sigmoid(−s) = 1/(1+σ²)
        }
        return min(max(w, 0), (1.0).nextDown)
    }

    func apply(_ ctx: MethodContext) throws -> MethodResult {
        try check(ctx, name, tasks, gram: true)
        let T = tasks.count
        let decoder = uncertainty.weights
        var logs = taskLogs("sigma", uncertainty.sigmas, tasks.names)
        if initialLosses == nil { initialLosses = ctx.losses }
        defer { uncertainty.update(losses: ctx.losses) }  // after the weights were taken

        if tasks.primaries.count == T {  // "Normal" setting: plain UW
            logs += taskLogs("w", decoder, tasks.names)
            return MethodResult(.lossWeights(decoder), logs: logs)
        }
        let p = tasks.primaries[0]
        let K = ctx.gram!
        let norm = (0..<T).map { K[$0 * T + $0].squareRoot() }
        let w = auxiliaryWeights(ctx, K, norm, primary: p)
        var alpha = [Double](repeating: 0, count: T)
        alpha[p] = 1
        for k in 0..<T where k != p { alpha[k] = w[k] * norm[p] / (norm[k] + eps) }
        logs += taskLogs("w", w, tasks.names, only: tasks.auxiliaries)
        return MethodResult(.coefficients(shared: alpha, decoder: decoder), logs: logs)
    }

    /// w_k for every task (the primary's entry is unused).
    func auxiliaryWeights(_ ctx: MethodContext, _ K: [Double], _ norm: [Double], primary p: Int) -> [Double] {
        let T = tasks.count
        switch source {
        case "none":
            return [Double](repeating: 1, count: T)
        case "cosine":
            return (0..<T).map { k in
                let d = norm[p] * norm[k]
                return d > 0 ? min(max(K[p * T + k] / d, 0), (1.0).nextDown) : 0
            }
        case "gradnorm":
            let L0 = initialLosses!
            let ratio = (0..<T).map { L0[$0] > 0 ? ctx.losses[$0] / L0[$0] : 1 }
            let mean = ratio.reduce(0, +) / Double(T)
            return (0..<T).map { k in
                let r = mean > 0 ? ratio[k] / mean : 1
                return IAL.map(f, logVariance: gradnormAlpha * log(r))
            }
        default:
            return uncertainty.s.map { IAL.map(f, logVariance: $0) }
        }
    }

    func stateValues() -> [String: [Double]] {
        var st = uncertainty.state
        if let initialLosses { st["loss0"] = initialLosses }
        return st
    }

    func loadState(_ state: [String: [Double]]) throws {
        try checkStateKeys(state, name, Uncertainty.keys + ["loss0"])
        try uncertainty.load(state, method: name)
        initialLosses = state["loss0"] == nil ? nil : try stateArray(state, name, "loss0", count: tasks.count)
    }
}
