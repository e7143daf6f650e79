import Foundation
import MTLCore

/// An optimizer over named parameters, with torch.optim's update rules in torch's float32
/// operation order. ATen's CPU kernels are compiled with FMA contraction (`a + α·b` is one
/// fused multiply-add), so the same products are fused here (`addingProduct`): SGD then
/// matches torch bit for bit. Adam matches to about one ulp per step: torch's CPU sqrt
/// (vectorised, MKL/Sleef) is not correctly rounded, ours is.
public protocol Optimizer: AnyObject {
    /// Updates every trainable parameter from its `grad`; parameters with `trainable == false`
    /// are skipped and their state is not advanced (as torch skips params whose grad is None).
    func step(lr: Float)
    /// The state for checkpoints: "optim.step" (per-parameter step counts, [P]) and the
    /// per-parameter buffers named "optim.<torch state key>.<parameter name>". The tensors are
    /// the live ones (no copies): write them out before the next step.
    func stateTensors() -> [(String, Tensor)]
    /// Restores the state written by `stateTensors`; an MTLError names a missing or mis-shaped tensor.
    func loadState(_ tensors: [String: Tensor]) throws
    /// Auto-λ's virtual step (METHODS.md §15), in the reference's form (lorenmt/auto-lambda,
    /// auto_lambda.py `virtual_step`): p ← p − lr·(g + μ·momentum_buffer + wd·p) for every trainable
    /// parameter, WITHOUT advancing the optimizer's state. For SGD this is exactly the update the
    /// next real step would make (non-Nesterov). Adam/AdamW: the reference reads `momentum` from the
    /// param group, which Adam has not, so there is no momentum term: p − lr·(g + wd·p) with the
    /// configured weight decay — a plain SGD step, not Adam's m̂/√v̂ step. We do the same.
    func virtualStep(lr: Float)
}

/// p ← p − lr·(g + μ·buf + wd·p) over `params` (buffers optional), the optimizer state untouched.
private func sgdFormVirtualStep(_ params: [Parameter], lr: Float, momentum: Float, buffers: [Tensor], weightDecay wd: Float) {
    for (i, prm) in params.enumerated() where prm.trainable {
        let p = prm.value.data, g = prm.grad.data
        let buf: UnsafeMutablePointer<Float>? = buffers.isEmpty ? nil : buffers[i].data
        parallelBlocks(prm.value.count, block: updateBlock) { lo, hi in
            for j in lo..<hi {
                var d = g[j]
                if let buf { d += momentum * buf[j] }
                if wd != 0 { d += wd * p[j] }
                p[j] -= lr * d
            }
        }
    }
}

/// The optimizers' element-wise updates run in 32K-element blocks (MTLCore's `parallelBlocks`):
/// memory-bound, so a block only needs to be big enough to amortise the dispatch, and a parameter
/// below two blocks is updated on the calling thread. The block size changes no result.
let updateBlock = 1 << 15

/// The double a user meant by a Float hyper-parameter: 0.9 rather than 0.8999999761581421.
/// torch computes bias corrections and step sizes from Python floats (doubles), so this is
/// what makes `1 − β1^t` and `lr / (1 − β1^t)` the same numbers as there.
@inline(__always)
func decimal(_ x: Float) -> Double { Double("\(x)") ?? Double(x) }

/// Shared bookkeeping: per-parameter step counts and the named per-parameter buffers.
private func stepTensor(_ steps: [Int]) -> Tensor {
    Tensor([steps.count], steps.map { Float($0) })
}

private func restore(_ tensors: [String: Tensor], params: [Parameter], steps: inout [Int],
                     buffers: [(String, [Tensor])]) throws {
    guard let s = tensors["optim.step"] else { throw MTLError("checkpoint: missing optimizer tensor 'optim.step'") }
    guard s.shape == [params.count] else {
        throw MTLError("checkpoint: optim.step: expected shape [\(params.count)] (one count per parameter), found \(s.shape)")
    }
    var loaded = [Int](repeating: 0, count: params.count)
    for i in 0..<params.count {
        let v = s[i]
        guard v >= 0, v == v.rounded() else { throw MTLError("checkpoint: optim.step[\(i)]: expected a step count, found \(v)") }
        loaded[i] = Int(v)
    }
    // Check everything before changing anything, so a failed load leaves the optimizer intact.
    for (key, bufs) in buffers {
        for (p, b) in zip(params, bufs) {
            let name = "optim.\(key).\(p.name)"
            guard let t = tensors[name] else { throw MTLError("checkpoint: missing optimizer tensor '\(name)'") }
            guard t.shape == b.shape else {
                throw MTLError("checkpoint: \(name): expected shape \(b.shape), found \(t.shape)")
            }
        }
    }
    for (key, bufs) in buffers {
        for (p, b) in zip(params, bufs) { b.copy(from: tensors["optim.\(key).\(p.name)"]!) }
    }
    steps = loaded
}

private func checkUniqueNames(_ params: [Parameter]) {
    var seen = Set<String>()
    for p in params { precondition(seen.insert(p.name).inserted, "optimizer: duplicate parameter name \(p.name)") }
}

// MARK: - SGD

/// torch.optim.SGD (dampening 0): d = g + wd·p; buf = d on a parameter's first step, then
/// buf = momentum·buf + d; d = nesterov ? d + momentum·buf : buf; p -= lr·d.
public final class SGD: Optimizer {
    public let params: [Parameter]
    public let momentum: Float, nesterov: Bool, weightDecay: Float
    private var momentumBuffers: [Tensor]
    private var steps: [Int]

    public init(_ params: [Parameter], momentum: Float, nesterov: Bool, weightDecay: Float) {
        precondition(!nesterov || momentum > 0, "SGD: nesterov needs momentum > 0")
        checkUniqueNames(params)
        self.params = params
        self.momentum = momentum
        self.nesterov = nesterov
        self.weightDecay = weightDecay
        self.momentumBuffers = momentum != 0 ? params.map { Tensor($0.value.shape) } : []
        self.steps = [Int](repeating: 0, count: params.count)
    }

    public func step(lr: Float) {
        let momentum = self.momentum, wd = self.weightDecay, nesterov = self.nesterov
        for (i, prm) in params.enumerated() where prm.trainable {
            let p = prm.value.data, g = prm.grad.data
            let first = steps[i] == 0
            steps[i] += 1
            if momentum == 0 {
                parallelBlocks(prm.value.count, block: updateBlock) { lo, hi in
                    for j in lo..<hi {
                        let d = wd != 0 ? g[j].addingProduct(wd, p[j]) : g[j]
                        p[j] = p[j].addingProduct(-lr, d)
                    }
                }
                continue
            }
            let buf = momentumBuffers[i].data
            parallelBlocks(prm.value.count, block: updateBlock) { lo, hi in
                for j in lo..<hi {
                    var d = wd != 0 ? g[j].addingProduct(wd, p[j]) : g[j]
                    let b = first ? d : buf[j] * momentum + d
                    buf[j] = b
                    d = nesterov ? d.addingProduct(momentum, b) : b
                    p[j] = p[j].addingProduct(-lr, d)
                }
            }
        }
    }

    /// The buffer is zero before a parameter's first step (torch: `state.get('momentum_buffer', 0.)`).
    public func virtualStep(lr: Float) {
        sgdFormVirtualStep(params, lr: lr, momentum: momentum, buffers: momentumBuffers, weightDecay: weightDecay)
    }

    public func stateTensors() -> [(String, Tensor)] {
        var out: [(String, Tensor)] = [("optim.step", stepTensor(steps))]
        for (p, b) in zip(params, momentumBuffers) { out.append(("optim.momentum_buffer.\(p.name)", b)) }
        return out
    }

    public func loadState(_ tensors: [String: Tensor]) throws {
        try restore(tensors, params: params, steps: &steps,
                    buffers: momentum != 0 ? [("momentum_buffer", momentumBuffers)] : [])
    }
}

// MARK: - Adam / AdamW

/// torch.optim.Adam (amsgrad off) and, with `decoupled`, torch.optim.AdamW:
///   t += 1;  AdamW: p *= 1 − lr·wd   |  Adam: g += wd·p
///   m = lerp(m, g, 1−β1);  v = β2·v + (1−β2)·g·g
///   p += −(lr / (1−β1^t)) · m / (√v / √(1−β2^t) + ε)
/// Bias corrections are computed in double from the parameter's own step count, as torch does.
public final class Adam: Optimizer {
    public let params: [Parameter]
    public let beta1: Float, beta2: Float, eps: Float, weightDecay: Float, decoupled: Bool
    private let expAvg: [Tensor], expAvgSq: [Tensor]
    private var steps: [Int]

    public init(_ params: [Parameter], beta1: Float, beta2: Float, eps: Float, weightDecay: Float, decoupled: Bool) {
        checkUniqueNames(params)
        self.params = params
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
        self.decoupled = decoupled
        self.expAvg = params.map { Tensor($0.value.shape) }
        self.expAvgSq = params.map { Tensor($0.value.shape) }
        self.steps = [Int](repeating: 0, count: params.count)
    }

    public func step(lr: Float) {
        let b1 = decimal(beta1), b2 = decimal(beta2), lrD = decimal(lr)
        // torch passes these as Python floats: 1−β1 goes to lerp, 1−β2 to addcmul.
        let oneMinusBeta1 = Float(1 - b1), oneMinusBeta2 = Float(1 - b2)
        let beta2 = self.beta2, eps = self.eps, wd = self.weightDecay
        let coupledWD = !decoupled && wd != 0
        let decay = Float(1 - lrD * decimal(wd))   // AdamW's p *= 1 − lr·wd
        let applyDecay = decoupled && wd != 0
        for (i, prm) in params.enumerated() where prm.trainable {
            steps[i] += 1
            let t = Double(steps[i])
            let biasCorrection1 = 1 - pow(b1, t)
            let biasCorrection2Sqrt = Float(sqrt(1 - pow(b2, t)))
            let negStepSize = Float(-(lrD / biasCorrection1))
            let p = prm.value.data, g = prm.grad.data
            let m = expAvg[i].data, v = expAvgSq[i].data
            parallelBlocks(prm.value.count, block: updateBlock) { lo, hi in
                // Eight lanes at a time with the scalar loop's operations per lane (bit-identical to it),
                // then the scalar tail.
                var j = lo
                while j + 8 <= hi {
                    var grad = load8(g + j), pj = load8(p + j)
                    let m0 = load8(m + j), v0 = load8(v + j)
                    if coupledWD { grad = grad.addingProduct(wd, pj) }
                    if applyDecay { pj = pj * decay }
                    let mj = m0.addingProduct(oneMinusBeta1, grad - m0)
                    let vj = (v0 * beta2).addingProduct(oneMinusBeta2 * grad, grad)
                    let denom = vj.squareRoot() / biasCorrection2Sqrt + eps
                    pj = pj + negStepSize * mj / denom
                    store8(mj, m + j)
                    store8(vj, v + j)
                    store8(pj, p + j)
                    j += 8
                }
                while j < hi {
                    var grad = g[j]
                    if coupledWD { grad = grad.addingProduct(wd, p[j]) }
                    if applyDecay { p[j] = p[j] * decay }
                    // ATen's lerp (weight < 0.5): fma(w, end − self, self)
                    let mj = m[j].addingProduct(oneMinusBeta1, grad - m[j])
                    // mul_(β2) then addcmul_: fma((1−β2)·g, g, v·β2)
                    let vj = (v[j] * beta2).addingProduct(oneMinusBeta2 * grad, grad)
                    m[j] = mj
                    v[j] = vj
                    let denom = vj.squareRoot() / biasCorrection2Sqrt + eps
                    p[j] = p[j] + negStepSize * mj / denom
                    j += 1
                }
            }
        }
    }

    public func virtualStep(lr: Float) {
        sgdFormVirtualStep(params, lr: lr, momentum: 0, buffers: [], weightDecay: weightDecay)
    }

    public func stateTensors() -> [(String, Tensor)] {
        var out: [(String, Tensor)] = [("optim.step", stepTensor(steps))]
        for (p, m) in zip(params, expAvg) { out.append(("optim.exp_avg.\(p.name)", m)) }
        for (p, v) in zip(params, expAvgSq) { out.append(("optim.exp_avg_sq.\(p.name)", v)) }
        return out
    }

    public func loadState(_ tensors: [String: Tensor]) throws {
        try restore(tensors, params: params, steps: &steps,
                    buffers: [("exp_avg", expAvg), ("exp_avg_sq", expAvgSq)])
    }
}

/// The optimizer named by the config (adam | adamw | sgd).
public func makeOptimizer(_ cfg: OptimConfig, _ params: [Parameter]) -> Optimizer {
    switch cfg.name {
    case "sgd":
        return SGD(params, momentum: Float(cfg.momentum), nesterov: cfg.nesterov, weightDecay: Float(cfg.weightDecay))
    case "adamw":
        return Adam(params, beta1: Float(cfg.beta1), beta2: Float(cfg.beta2), eps: Float(cfg.eps),
                    weightDecay: Float(cfg.weightDecay), decoupled: true)
    default:
        precondition(cfg.name == "adam", "makeOptimizer: unknown optimizer \(cfg.name) (Config validates this)")
        return Adam(params, beta1: Float(cfg.beta1), beta2: Float(cfg.beta2), eps: Float(cfg.eps),
                    weightDecay: Float(cfg.weightDecay), decoupled: false)
    }
}
