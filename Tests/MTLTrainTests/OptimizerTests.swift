import Foundation
import MTLCore
import XCTest
@testable import MTLTrain

/// Expected values come from torch 2.x (float32) with this script:
///
///     grads = [[[0.1, -0.2, 0.3], [0.05, -0.5]], [[-0.4, 0.5, 0.6], [0.2, 0.1]], [[0.3, 0.3, -0.1], [-0.3, 0.25]]]
///     lrs = [0.1, 0.05, 0.025]
///     p0 = torch.tensor([0.5, -1.0, 2.0], requires_grad=True); p1 = torch.tensor([0.1, 0.2], requires_grad=True)
///     opt = torch.optim.SGD([p0, p1], lr=0.1, momentum=0.9, weight_decay=0.01)    # etc., see each test
///     for s in range(3):
///         for g in opt.param_groups: g['lr'] = lrs[s]
///         p0.grad = torch.tensor(grads[s][0]); p1.grad = torch.tensor(grads[s][1]); opt.step()
///
/// The first step of each is also checked against the formula worked out by hand.
final class OptimizerTests: XCTestCase {
    let grads: [[[Float]]] = [[[0.1, -0.2, 0.3], [0.05, -0.5]],
                              [[-0.4, 0.5, 0.6], [0.2, 0.1]],
                              [[0.3, 0.3, -0.1], [-0.3, 0.25]]]
    let lrs: [Float] = [0.1, 0.05, 0.025]

    func makeParams() -> [Parameter] {
        [Parameter("w", Tensor([3], [0.5, -1.0, 2.0])), Parameter("b", Tensor([2], [0.1, 0.2]))]
    }

    func setGrads(_ ps: [Parameter], step s: Int) {
        for (i, p) in ps.enumerated() { p.grad.copy(from: Tensor([grads[s][i].count], grads[s][i])) }
    }

    /// Runs `steps` steps and returns the parameter values.
    func run(_ make: ([Parameter]) -> Optimizer, steps: Int = 3) -> [[Float]] {
        let ps = makeParams()
        let opt = make(ps)
        for s in 0..<steps {
            setGrads(ps, step: s)
            opt.step(lr: lrs[s])
        }
        return ps.map { $0.value.array }
    }

    func assertClose(_ got: [[Float]], _ want: [[Float]], tol: Float = 2e-7, file: StaticString = #filePath, line: UInt = #line) {
        for (g, w) in zip(got, want) {
            XCTAssertEqual(g.count, w.count, file: file, line: line)
            for (a, b) in zip(g, w) {
                XCTAssertEqual(a, b, accuracy: tol * max(1, abs(b)), "got \(got), want \(want)", file: file, line: line)
            }
        }
    }

    /// SGD is bitwise torch (same fused multiply-adds).
    func testSGDMomentumWeightDecay() {
        let make = { (ps: [Parameter]) -> Optimizer in SGD(ps, momentum: 0.9, nesterov: false, weightDecay: 0.01) }
        // step 1 by hand: d = g + 0.01·p; buf = d; p −= 0.1·d  →  w0: d = 0.1 + 0.005 = 0.105, p = 0.5 − 0.0105
        assertClose(run(make, steps: 1), [[0.4895, -0.979, 1.968], [0.0949, 0.2498]], tol: 1e-6)
        assertClose(run(make), [[0.5036677, -1.0080892, 1.9042126], [0.08448281, 0.26854664]], tol: 0)
    }

    func testSGDNesterov() {
        let make = { (ps: [Parameter]) -> Optimizer in SGD(ps, momentum: 0.9, nesterov: true, weightDecay: 0) }
        // step 1 by hand: buf = g, d = g + 0.9·g = 1.9·g; w0 = 0.5 − 0.1·0.19 = 0.481
        assertClose(run(make, steps: 1), [[0.481, -0.962, 1.943], [0.0905, 0.295]], tol: 1e-6)
        assertClose(run(make), [[0.50697756, -1.02213, 1.8609825], [0.07876375, 0.3009625]], tol: 0)
    }

    func testSGDPlainWeightDecay() {
        let make = { (ps: [Parameter]) -> Optimizer in SGD(ps, momentum: 0, nesterov: false, weightDecay: 0.1) }
        assertClose(run(make), [[0.49381855, -0.9951746, 1.9079745], [0.09082118, 0.2349056]], tol: 0)
    }

    func testAdam() {
        let make = { (ps: [Parameter]) -> Optimizer in
            Adam(ps, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, decoupled: false)
        }
        // step 1 by hand: m̂ = g, v̂ = g², so p −= lr·g/(|g| + ε) ≈ lr·sign(g)
        assertClose(run(make, steps: 1), [[0.4, -0.9, 1.9], [0.0, 0.3]], tol: 1e-6)
        assertClose(run(make), [[0.42731723, -0.93735087, 1.8356488], [-0.040730234, 0.32738066]])
    }

    func testAdamCoupledWeightDecay() {
        let make = { (ps: [Parameter]) -> Optimizer in
            Adam(ps, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1, decoupled: false)
        }
        assertClose(run(make), [[0.41716704, -0.919999, 1.8302006], [-0.04197716, 0.32231346]])
    }

    func testAdamW() {
        let make = { (ps: [Parameter]) -> Optimizer in
            Adam(ps, beta1: 0.8, beta2: 0.99, eps: 1e-6, weightDecay: 0.1, decoupled: true)
        }
        // step 1 by hand: p ← p·(1 − 0.1·0.1) then p −= 0.1·g/(|g| + 1e-6): w0 = 0.495 − 0.1·0.1/0.100001
        assertClose(run(make, steps: 1), [[0.395001, -0.8900005, 1.8800003], [-0.000998, 0.2979998]], tol: 2e-6)
        assertClose(run(make), [[0.42085955, -0.9244882, 1.8019499], [-0.04126013, 0.31856346]])
    }

    /// Adam's update runs eight lanes at a time plus a scalar tail; both must give the bits of
    /// the scalar rule (written out here in the same operation order) for every element, for
    /// the three weight-decay forms. 37 elements = four vectors and a tail of 5.
    func testAdamVectorLanesEqualTheScalarRule() {
        for (wd, decoupled) in [(Float(0), false), (Float(0.1), false), (Float(0.1), true)] {
            let n = 37
            var rng = Philox(seed: 7, stream: 0)
            let p = Parameter("w", Tensor([n], (0..<n).map { _ in rng.normal() }))
            let adam = Adam([p], beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: wd, decoupled: decoupled)
            var want = p.value.array, m = [Float](repeating: 0, count: n), v = m
            for step in 1...3 {
                let g = (0..<n).map { _ in rng.normal() }
                p.grad.copy(from: Tensor([n], g))
                let lr: Float = 0.01 * Float(step)
                adam.step(lr: lr)
                let b1 = 0.9, b2 = 0.999, lrD = decimal(lr)
                let negStepSize = Float(-(lrD / (1 - pow(b1, Double(step)))))
                let bc2 = Float(sqrt(1 - pow(b2, Double(step))))
                let decay = Float(1 - lrD * decimal(wd))
                for j in 0..<n {
                    var grad = g[j]
                    if !decoupled && wd != 0 { grad = grad.addingProduct(wd, want[j]) }
                    if decoupled { want[j] = want[j] * decay }
                    m[j] = m[j].addingProduct(Float(1 - b1), grad - m[j])
                    v[j] = (v[j] * Float(0.999)).addingProduct(Float(1 - b2) * grad, grad)
                    want[j] = want[j] + negStepSize * m[j] / (v[j].squareRoot() / bc2 + 1e-8)
                }
                XCTAssertEqual(p.value.array, want, "wd \(wd) decoupled \(decoupled) step \(step)")
            }
        }
    }

    /// Auto-λ's virtual step: for SGD with momentum it is the update the next real step makes (same
    /// numbers up to FMA rounding), for Adam p − lr·(g + wd·p); neither advances the optimizer state.
    func testVirtualStep() {
        let ps = makeParams(), twin = makeParams()
        let sgd = SGD(ps, momentum: 0.9, nesterov: false, weightDecay: 0.01)
        let real = SGD(twin, momentum: 0.9, nesterov: false, weightDecay: 0.01)
        setGrads(ps, step: 0); sgd.step(lr: 0.1)
        setGrads(twin, step: 0); real.step(lr: 0.1)
        setGrads(ps, step: 1); setGrads(twin, step: 1)
        let state = sgd.stateTensors().map { $0.1.array }
        sgd.virtualStep(lr: 0.05)
        real.step(lr: 0.05)
        XCTAssertEqual(sgd.stateTensors().map { $0.1.array }, state)
        for (p, q) in zip(ps, twin) { for i in 0..<p.value.count { XCTAssertEqual(p.value[i], q.value[i], accuracy: 1e-6) } }

        let qs = makeParams()
        let adam = Adam(qs, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1, decoupled: false)
        setGrads(qs, step: 0)
        adam.virtualStep(lr: 0.5)
        XCTAssertEqual(qs[0].value[0], 0.5 - 0.5 * (0.1 + 0.1 * 0.5), accuracy: 1e-7)
        XCTAssertEqual(qs[1].value[1], 0.2 - 0.5 * (-0.5 + 0.1 * 0.2), accuracy: 1e-7)
        XCTAssertEqual(adam.stateTensors()[0].1.array, [0, 0])
    }

    func testMakeOptimizerFollowsConfig() {
        var cfg = OptimConfig()
        cfg.name = "adamw"; cfg.beta1 = 0.8; cfg.beta2 = 0.99; cfg.eps = 1e-6; cfg.weightDecay = 0.1
        assertClose(run { makeOptimizer(cfg, $0) }, [[0.42085955, -0.9244882, 1.8019499], [-0.04126013, 0.31856346]])
        cfg = OptimConfig()
        cfg.name = "sgd"; cfg.momentum = 0.9; cfg.nesterov = true
        XCTAssertTrue(makeOptimizer(cfg, makeParams()) is SGD)
    }

    /// A frozen parameter is not touched and its step count does not advance (torch skips grad=None).
    func testFrozenParametersAreSkipped() {
        let ps = makeParams()
        ps[1].trainable = false
        let opt = Adam(ps, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1, decoupled: true)
        setGrads(ps, step: 0)
        opt.step(lr: 0.1)
        XCTAssertEqual(ps[1].value.array, [0.1, 0.2])
        XCTAssertNotEqual(ps[0].value.array, [0.5, -1.0, 2.0])
        let state = Dictionary(uniqueKeysWithValues: opt.stateTensors())
        XCTAssertEqual(state["optim.step"]?.array, [1, 0])
        XCTAssertEqual(state["optim.exp_avg.b"]?.array, [0, 0])
    }

    /// Two steps, checkpoint the state into a fresh optimizer, one more step: bitwise the same
    /// as three uninterrupted steps (deterministic resume).
    func testStateRoundTripResumesBitwise() throws {
        for make in [{ (ps: [Parameter]) -> Optimizer in Adam(ps, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, decoupled: false) },
                     { (ps: [Parameter]) -> Optimizer in SGD(ps, momentum: 0.9, nesterov: true, weightDecay: 0.01) }] {
            let straight = run(make)
            let ps = makeParams()
            let first = make(ps)
            for s in 0..<2 { setGrads(ps, step: s); first.step(lr: lrs[s]) }
            var saved: [String: Tensor] = [:]
            for (n, t) in first.stateTensors() { saved[n] = t.clone() }
            let resumed = make(ps)
            try resumed.loadState(saved)
            setGrads(ps, step: 2)
            resumed.step(lr: lrs[2])
            XCTAssertEqual(ps.map { $0.value.array }, straight)
        }
    }

    /// Large tensors are updated in chunks on the thread pool: same bits as one thread.
    func testThreadedUpdateMatchesSingleThread() {
        let saved = Threads.count
        defer { Threads.set(saved) }
        var results: [[Float]] = []
        for threads in [1, 2] {
            Threads.set(threads)
            var rng = Philox(seed: 5, stream: 0)
            let n = 100_003
            let p = Parameter("big", Tensor([n], (0..<n).map { _ in rng.normal() }))
            let opt = Adam([p], beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, decoupled: true)
            for _ in 0..<2 {
                for j in 0..<n { p.grad[j] = rng.normal() }
                opt.step(lr: 0.01)
            }
            results.append(p.value.array)
        }
        XCTAssertEqual(results[0], results[1])
    }

    func testLoadStateErrorsNameTheTensor() {
        let opt = Adam(makeParams(), beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, decoupled: false)
        var state: [String: Tensor] = [:]
        for (n, t) in opt.stateTensors() { state[n] = t.clone() }
        var missing = state
        missing["optim.exp_avg_sq.b"] = nil
        XCTAssertThrowsError(try opt.loadState(missing)) {
            XCTAssertEqual(($0 as? MTLError)?.message, "checkpoint: missing optimizer tensor 'optim.exp_avg_sq.b'")
        }
        var misShaped = state
        misShaped["optim.exp_avg.w"] = Tensor([4])
        XCTAssertThrowsError(try opt.loadState(misShaped)) {
            XCTAssertEqual(($0 as? MTLError)?.message, "checkpoint: optim.exp_avg.w: expected shape [3], found [4]")
        }
        let sgd = SGD(makeParams(), momentum: 0.9, nesterov: false, weightDecay: 0)
        XCTAssertThrowsError(try sgd.loadState(state)) {
            XCTAssertEqual(($0 as? MTLError)?.message, "checkpoint: missing optimizer tensor 'optim.momentum_buffer.w'")
        }
    }
}
