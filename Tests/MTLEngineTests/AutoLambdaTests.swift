import Foundation
import XCTest
@testable import MTLCore
@testable import MTLData
@testable import MTLDist
@testable import MTLEngine
@testable import MTLMethods
@testable import MTLModels
@testable import MTLTrain

/// A linear model with squared losses, computed in double precision from the Float parameters:
/// prediction x·w + c, task t's loss L_t = 1/(2n) Σ_i (x_i·w + c − y_{t,i})². Every quantity of the
/// look-ahead can be computed by hand for it. It records θ and the gradient at each call, and its
/// "running statistic" counts forwards (the look-ahead must restore it).
final class LinearNetwork: LookaheadNetwork {
    let w: Parameter, c: Parameter
    let forwards = Tensor([1])
    let T: Int
    var thetas: [[Double]] = []      // θ at each call, in call order
    var gradients: [[Double]] = []   // the gradient each weightedGradient call left
    var lookaheadParameters: [Parameter] { [w, c] }
    var lookaheadBuffers: [Tensor] { [forwards] }

    init(P: Int, T: Int, seed: UInt64) {
        var rng = Philox(seed: seed, stream: 5)
        w = Parameter("w", Tensor([P], (0..<P).map { _ in 0.3 * rng.normal() }))
        c = Parameter("c", Tensor([1], [0.2]))
        self.T = T
    }

    var theta: [Double] { (w.value.array + c.value.array).map(Double.init) }

    static func batch(n: Int, P: Int, targets: (Int, [Double]) -> [Double], seed: UInt64) -> Batch {
        var rng = Philox(seed: seed, stream: 6)
        let b = Batch()
        b.images.resize([n, P, 1, 1])
        for i in 0..<(n * P) { b.images[i] = rng.normal() }
        let x = (0..<n).map { i in (0..<P).map { Double(b.images[i * P + $0]) } }
        for t in 0..<3 { b.targets["t\(t)"] = Tensor([n], (0..<n).map { Float(targets(t, x[$0])[0]) }) }
        return b
    }

    /// Residuals r_i = x_i·θ_w + θ_c − y_{t,i} at θ (double precision).
    static func residuals(_ theta: [Double], _ batch: Batch, task t: Int) -> [Double] {
        let n = batch.images.n, P = batch.images.c
        let y = batch.targets["t\(t)"]!
        return (0..<n).map { i in
            var s = theta[P]
            for j in 0..<P { s += Double(batch.images[i * P + j]) * theta[j] }
            return s - Double(y[i])
        }
    }

    static func loss(_ theta: [Double], _ batch: Batch, task t: Int) -> Double {
        residuals(theta, batch, task: t).reduce(0) { $0 + $1 * $1 } / Double(2 * batch.images.n)
    }

    static func gradient(_ theta: [Double], _ batch: Batch, task t: Int) -> [Double] {
        let n = batch.images.n, P = batch.images.c
        let r = residuals(theta, batch, task: t)
        var g = [Double](repeating: 0, count: P + 1)
        for i in 0..<n {
            for j in 0..<P { g[j] += r[i] * Double(batch.images[i * P + j]) / Double(n) }
            g[P] += r[i] / Double(n)
        }
        return g
    }

    func weightedGradient(batch: Batch, weights: [Double]) throws -> [Double] {
        thetas.append(theta)
        forwards[0] += 1
        var g = [Double](repeating: 0, count: w.value.count + 1)
        for t in 0..<T where weights[t] != 0 {
            let gt = LinearNetwork.gradient(theta, batch, task: t)
            for k in g.indices { g[k] += weights[t] * gt[k] }
        }
        for k in 0..<w.value.count { w.grad[k] = Float(g[k]) }
        c.grad[0] = Float(g[w.value.count])
        gradients.append((w.grad.array + c.grad.array).map(Double.init))
        return (0..<T).map { weights[$0] != 0 ? LinearNetwork.loss(theta, batch, task: $0) : 0 }
    }

    func localLossSums(batch: Batch) throws -> (sums: [Double], counts: [Double]) {
        thetas.append(theta)
        forwards[0] += 1
        let n = Double(batch.images.n)
        return ((0..<T).map { LinearNetwork.loss(theta, batch, task: $0) * n }, [Double](repeating: n, count: T))
    }
}

func dot(_ a: [Double], _ b: [Double]) -> Double { zip(a, b).reduce(0) { $0 + $1.0 * $1.1 } }

final class AutoLambdaTests: XCTestCase {
    func autol(_ T: Int = 3, lr: Double = 1e-4) throws -> AutoLambda {
        try XCTUnwrap(try makeMethod(name: "autol", taskNames: ["t0", "t1", "t2"], roles: [.primary, .auxiliary, .auxiliary],
                                     params: ["lr": "\(lr)"]) as? AutoLambda)
    }

    /// Every stage of the look-ahead against the closed form of a linear model: θ' with SGD's momentum
    /// buffer and weight decay, d, ε = 0.01/‖d‖, θ ± ε·d, the central difference (exact for a quadratic:
    /// ∇L_t(θ)·d), the meta-gradient −α·∇L_t(θ)·d, Adam's first step on λ; θ, the buffer and the
    /// optimizer state are exactly as before.
    func testLookaheadOnALinearModelMatchesTheClosedForm() throws {
        let P = 4
        let net = LinearNetwork(P: P, T: 3, seed: 1)
        let a = (0..<P).map { Double($0) - 1.5 }
        let targets: (Int, [Double]) -> [Double] = { t, x in [dot(x, a) * [1, 0.5, -0.7][t] + Double(t)] }
        let train = LinearNetwork.batch(n: 8, P: P, targets: targets, seed: 2)
        let val = LinearNetwork.batch(n: 8, P: P, targets: targets, seed: 3)
        let sgd = SGD(net.lookaheadParameters, momentum: 0.9, nesterov: false, weightDecay: 0.01)
        // One real step first, so that the momentum buffer is not zero.
        _ = try net.weightedGradient(batch: train, weights: [1, 1, 1])
        sgd.step(lr: 0.05)
        let buffer = sgd.stateTensors().filter { $0.0.hasPrefix("optim.momentum_buffer.") }.flatMap { $0.1.array }.map(Double.init)
        XCTAssertGreaterThan(buffer.map(abs).max()!, 0.01)
        let stateBefore = sgd.stateTensors().map { $0.1.array }
        net.thetas = []
        net.gradients = []

        let method = try autol(lr: 1e-3)
        let step = AutoLambdaStep(method: method, network: net, optimizer: sgd, comm: SingleProcessCommunicator())
        let theta = net.theta, forwards = net.forwards[0]
        let alpha = 0.05
        try step.updateWeights(batch: train, valBatch: val, lr: Float(alpha))

        // θ and the "running statistic" restored bit for bit, the optimizer state untouched.
        XCTAssertEqual(net.theta, theta)
        XCTAssertEqual(net.forwards[0], forwards)
        XCTAssertEqual(sgd.stateTensors().map { $0.1.array }, stateBefore)
        XCTAssertEqual(method.valPosition, 1)
        XCTAssertEqual(net.thetas.count, 4)   // virtual gradient, val gradient, θ+, θ−

        // 1–2. θ' = θ − α(Σλ_t ∇L_t + μ·buf + wd·θ).
        XCTAssertEqual(net.thetas[0], theta)
        var g = [Double](repeating: 0, count: P + 1)
        for t in 0..<3 { for (k, v) in LinearNetwork.gradient(theta, train, task: t).enumerated() { g[k] += 0.1 * v } }
        let thetaPrime = (0..<(P + 1)).map { theta[$0] - alpha * (g[$0] + 0.9 * buffer[$0] + 0.01 * theta[$0]) }
        for k in 0...P { XCTAssertEqual(net.thetas[1][k], thetaPrime[k], accuracy: 1e-6 * max(1, abs(thetaPrime[k]))) }

        // 3. d = ∇L_primary(θ'; val).
        let d = LinearNetwork.gradient(net.thetas[1], val, task: 0)
        for k in 0...P { XCTAssertEqual(net.gradients[1][k], d[k], accuracy: 1e-6 * max(1, abs(d[k]))) }
        let norm = dot(d, d).squareRoot()
        XCTAssertEqual(method.lastDirectionNorm, dot(net.gradients[1], net.gradients[1]).squareRoot(), accuracy: 1e-12)

        // 4. θ± = θ ± ε·d with ε = 0.01/‖d‖.
        let eps = 0.01 / norm
        for k in 0...P {
            XCTAssertEqual(net.thetas[2][k], theta[k] + eps * d[k], accuracy: 1e-6)
            XCTAssertEqual(net.thetas[3][k], theta[k] - eps * d[k], accuracy: 1e-6)
        }
        let epsApplied = Double(Float(0.01 / method.lastDirectionNorm)), alphaApplied = Double(Float(alpha))
        for t in 0..<3 {
            // The meta-gradient is the central difference at the θ± really used ...
            let fd = (LinearNetwork.loss(net.thetas[2], train, task: t) - LinearNetwork.loss(net.thetas[3], train, task: t)) / (2 * epsApplied)
            XCTAssertEqual(method.lastMetaGradient[t], -alphaApplied * fd, accuracy: 1e-12 * max(1, abs(alpha * fd)))
            // ... which for a quadratic is the directional derivative: −α·∇L_t(θ)·d.
            let exact = -alpha * dot(LinearNetwork.gradient(theta, train, task: t), d)
            XCTAssertEqual(method.lastMetaGradient[t], exact, accuracy: 1e-3 * abs(exact) + 1e-7, "task \(t)")
        }

        // 5. Adam's first step: λ_t = 0.1 − lr·m̂/(√v̂ + 1e-8) with m̂ = g, v̂ = g².
        for t in 0..<3 {
            let mg = method.lastMetaGradient[t]
            XCTAssertEqual(method.lambda[t], 0.1 - 1e-3 * mg / (abs(mg) + 1e-8), accuracy: 1e-15)
            XCTAssertNotEqual(method.lambda[t], 0.1)
        }
    }

    /// An auxiliary task whose gradient points like the primary's gets λ increased; an opposed one decreased.
    func testAlignedAuxiliaryGainsWeightOpposedLoses() throws {
        let P = 5
        let net = LinearNetwork(P: P, T: 3, seed: 7)
        let a = (0..<P).map { 0.5 * Double($0 + 1) }
        // t1 has the primary's targets (aligned gradients), t2 the negated ones (opposed).
        let targets: (Int, [Double]) -> [Double] = { t, x in [dot(x, a) * [1, 1, -1][t]] }
        let sgd = SGD(net.lookaheadParameters, momentum: 0.9, nesterov: false, weightDecay: 0)
        let method = try autol(lr: 1e-2)
        let step = AutoLambdaStep(method: method, network: net, optimizer: sgd, comm: SingleProcessCommunicator())
        var history = [method.lambda]
        for k in 0..<5 {
            let train = LinearNetwork.batch(n: 16, P: P, targets: targets, seed: UInt64(10 + k))
            let val = LinearNetwork.batch(n: 16, P: P, targets: targets, seed: UInt64(100 + k))
            try step.updateWeights(batch: train, valBatch: val, lr: 0.05)
            XCTAssertLessThan(method.lastMetaGradient[1], 0, "step \(k)")
            XCTAssertGreaterThan(method.lastMetaGradient[2], 0, "step \(k)")
            history.append(method.lambda)
            // The normal step (what the trainer does next), so that θ moves between look-aheads.
            _ = try net.weightedGradient(batch: train, weights: method.lambda)
            sgd.step(lr: 0.05)
        }
        for k in 1..<history.count {
            XCTAssertGreaterThan(history[k][0], history[k - 1][0], "primary λ")
            XCTAssertGreaterThan(history[k][1], history[k - 1][1], "aligned auxiliary λ")
            XCTAssertLessThan(history[k][2], history[k - 1][2], "opposed auxiliary λ")
        }
        XCTAssertEqual(method.valPosition, 5)
    }

    /// On the real network (ModelLookahead): the meta-gradient equals −α·∇L_t(θ)·d computed by
    /// backpropagation, and the parameters and BatchNorm statistics come back bit for bit.
    func testNetworkLookaheadMatchesBackward() throws {
        Threads.set(1)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = try makeSynth(dir)
        let cfg = try Config.parse(yaml: tinyConfigYAML(data: data, steps: 1, method: "autol"), source: "test",
                                   overrides: ["model.head=bench", "model.width=8", "optim.name=sgd", "optim.momentum=0.9"])
        let ds = try MTDataset(path: data, split: "train", tasks: ["seg", "depth", "normals"])
        let setup = try RunSetup(config: cfg, dataset: ds)
        let model = setup.model
        let method = try XCTUnwrap(try makeMethod(name: "autol", taskNames: setup.taskNames, roles: setup.roles,
                                                  params: ["lr": "0.01"]) as? AutoLambda)
        let optimizer = makeOptimizer(cfg.optim, model.parameters)
        let engine = StepEngine(model: model, losses: try setup.lossKinds.map { try TaskLoss(kind: $0) },
                                lossWeights: [1, 1, 1], roles: setup.roles, method: method, level: .representation,
                                optimizer: optimizer, comm: SingleProcessCommunicator(), seed: 0, skipNonFinite: false)
        let batch = Batch(), val = Batch()
        try ds.load([0, 1, 2, 3], into: batch)
        try ds.load([4, 5, 6, 7], into: val)
        // A normal step first: momentum buffers and running statistics are not at their initial values.
        _ = try engine.step(batch: batch, stepIndex: 0, epoch: 0, epochEnded: false, lr: 0.05)

        final class Recorder: LookaheadNetwork {
            let inner: ModelLookahead
            var calls = 0
            var d: [Float] = []
            init(_ inner: ModelLookahead) { self.inner = inner }
            var lookaheadParameters: [Parameter] { inner.lookaheadParameters }
            var lookaheadBuffers: [Tensor] { inner.lookaheadBuffers }
            func weightedGradient(batch: Batch, weights: [Double]) throws -> [Double] {
                let r = try inner.weightedGradient(batch: batch, weights: weights)
                calls += 1
                if calls == 2 { d = inner.lookaheadParameters.flatMap { $0.grad.array } }
                return r
            }
            func localLossSums(batch: Batch) throws -> (sums: [Double], counts: [Double]) { try inner.localLossSums(batch: batch) }
        }
        let recorder = Recorder(ModelLookahead(engine: engine))
        let step = AutoLambdaStep(method: method, network: recorder, optimizer: optimizer, comm: SingleProcessCommunicator())
        let before = model.stateTensors().map { $0.1.array }
        let alpha: Float = 0.05
        try step.updateWeights(batch: batch, valBatch: val, lr: alpha)
        let after = model.stateTensors().map { $0.1.array }
        XCTAssertTrue(before == after, "parameters or running statistics changed by the look-ahead")
        XCTAssertGreaterThan(method.lastDirectionNorm, 0)

        // −α·∇L_t(θ)·d with ∇L_t(θ) from one backward per task.
        var expected: [Double] = []
        for t in 0..<3 {
            _ = try recorder.inner.weightedGradient(batch: batch, weights: (0..<3).map { $0 == t ? 1 : 0 })
            let g = recorder.inner.lookaheadParameters.flatMap { $0.grad.array }
            expected.append(-Double(alpha) * zip(g, recorder.d).reduce(0) { $0 + Double($1.0) * Double($1.1) })
        }
        // The central difference at θ ± ε'·d, formed here with the network's own forward.
        let params = recorder.inner.lookaheadParameters
        let saved = params.map { $0.value.clone() }
        let dNorm = recorder.d.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
        XCTAssertEqual(method.lastDirectionNorm, dNorm, accuracy: 1e-9 * dNorm)
        func centralDifference(_ size: Double) throws -> [Double] {
            let eps = Float(size / dNorm)
            func losses(_ s: Float) throws -> [Double] {
                var off = 0
                for (p, v) in zip(params, saved) {
                    for i in 0..<p.value.count { p.value[i] = v[i] + s * recorder.d[off + i] }
                    off += p.value.count
                }
                let r = try recorder.inner.localLossSums(batch: batch)
                return (0..<3).map { r.sums[$0] / r.counts[$0] }
            }
            let plus = try losses(eps), minus = try losses(-eps)
            for (p, v) in zip(params, saved) { p.value.copy(from: v) }
            return (0..<3).map { -Double(alpha) * (plus[$0] - minus[$0]) / (2 * Double(eps)) }
        }
        let scale = expected.map(abs).max()!
        XCTAssertGreaterThan(scale, 1e-4)
        // The step used ε = 0.01/‖d‖ (the reference's): its meta-gradient is that central difference, and
        // for the primary task (a large derivative along d, its own gradient) the backward's value.
        let reference = try centralDifference(0.01)
        for t in 0..<3 { XCTAssertEqual(method.lastMetaGradient[t], reference[t], accuracy: 1e-9 * scale, "task \(t)") }
        XCTAssertEqual(method.lastMetaGradient[0], expected[0], accuracy: 0.01 * abs(expected[0]))
        // With a smaller step (less curvature at 0.01 on this tiny net, little float noise yet) every task's
        // difference quotient is −α·∇L_t(θ)·d: d and the per-task losses/gradients are consistent.
        let small = try centralDifference(0.003)
        for t in 0..<3 {
            XCTAssertEqual(small[t], expected[t], accuracy: 0.03 * scale, "task \(t): \(small) vs backward \(expected)")
        }
    }

    /// Checkpoint at step 3 + resume = the uninterrupted run, bit for bit: parameters, optimizer, λ and
    /// its Adam state, and the val stream (with augmentation) continuing at position 3.
    func testResumeIsBitIdentical() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = try makeSynth(dir)
        let cfg = try Config.parse(yaml: tinyConfigYAML(data: data, steps: 6, checkpointEvery: 3, method: "autol"),
                                   source: "test", overrides: ["method.autol.lr=0.01", "data.augment=true", "model.head=bench"])
        let comm = SingleProcessCommunicator()
        let full = try Trainer(config: cfg, runDir: dir + "/a", comm: comm, resume: nil).run()
        let midpoint = dir + "/a/checkpoints/step-00000003.h5"
        let resumed = try Trainer(config: cfg, runDir: dir + "/b", comm: comm, resume: midpoint).run()
        let (a, metaA) = try CheckpointStore.load(full.checkpoint!)
        let (b, metaB) = try CheckpointStore.load(resumed.checkpoint!)
        XCTAssertEqual(a.keys.sorted(), b.keys.sorted())
        for (k, ta) in a { XCTAssertTrue(ta.array == b[k]!.array, "\(k) differs after resume") }
        XCTAssertEqual(metaA["method_state"], metaB["method_state"])
        func state(_ meta: [String: String]) throws -> [String: [String]] {
            try JSONSerialization.jsonObject(with: Data(meta["method_state"]!.utf8)) as! [String: [String]]
        }
        XCTAssertEqual(try state(metaA)["val_position"], ["6.0"])
        XCTAssertEqual(try state(CheckpointStore.load(midpoint).meta)["val_position"], ["3.0"])
        // The logged λ and meta-gradients of steps 4–6 are the same numbers.
        func logs(_ run: String) throws -> [[Double]] {
            try String(contentsOfFile: dir + "/\(run)/metrics.jsonl", encoding: .utf8).split(separator: "\n")
                .compactMap { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                .filter { $0["kind"] as? String == "train" }
                .map { o in ["seg", "depth", "normals"].flatMap { [o["method.lambda.\($0)"] as! Double, o["method.metagrad.\($0)"] as! Double] } }
        }
        let la = try logs("a"), lb = try logs("b")
        XCTAssertEqual(la.count, 6)
        XCTAssertEqual(Array(la.suffix(3)), lb)
        XCTAssertTrue(la.last!.contains { $0 != 0.1 && $0 != 0 }, "λ did not move")
    }
}
