import Foundation
import XCTest
@testable import MTLCore
@testable import MTLData
@testable import MTLDist
@testable import MTLEngine
@testable import MTLMethods
@testable import MTLModels
@testable import MTLNN
@testable import MTLTrain
import MTLTestSupport

/// A small joint decoder with both kinds of cross-task dependence the engine must handle:
///   u = ReLU(shared(z))                 (shared decoder parameters: `decoder.shared`)
///   f_t = proj_t(u)                      (task t's parameters)
///   m_t = f_t + ½ Σ_{s≠t} f_s            (task t's loss depends on every task's proj)
///   pred_t = upsample(cls_t(m_t))        (task t's parameters)
/// All convolutions 1×1 with bias.
final class CrossTaskDecoder: Decoder {
    let shared: Conv2d
    let relu = ReLU()
    let proj: [Conv2d]
    let cls: [Conv2d]
    let ups: [Upsample]
    let mixed: [Tensor]
    let dm: [Tensor]
    let df: [Tensor]
    let du = Tensor([0])
    let outChannels: [Int]

    init(inChannels: Int, hidden: Int, outChannels: [Int], rng: inout Philox) {
        shared = Conv2d("decoder.shared", inChannels: inChannels, outChannels: hidden, kernel: 1, bias: true, rng: &rng)
        proj = outChannels.indices.map { Conv2d("decoder.proj.\($0)", inChannels: hidden, outChannels: hidden, kernel: 1, bias: true, rng: &rng) }
        cls = outChannels.indices.map { Conv2d("decoder.cls.\($0)", inChannels: hidden, outChannels: outChannels[$0], kernel: 1, bias: true, rng: &rng) }
        ups = outChannels.map { _ in Upsample() }
        mixed = outChannels.map { _ in Tensor([0]) }
        dm = outChannels.map { _ in Tensor([0]) }
        df = outChannels.map { _ in Tensor([0]) }
        self.outChannels = outChannels
    }

    var separable: Bool { false }
    var taskParameters: [[Parameter]] { proj.indices.map { proj[$0].parameters + cls[$0].parameters } }
    var sharedParameters: [Parameter] { shared.parameters }
    var batchNorms: [BatchNorm2d] { [] }

    func forward(_ features: Features, height: Int, width: Int, active: [Bool]) -> [Tensor?] {
        let u = relu.forward(shared.forward(features[0]))
        let f = proj.map { $0.forward(u) }
        let T = proj.count
        return (0..<T).map { t in
            mixed[t].copy(from: f[t])
            for s in 0..<T where s != t { mixed[t].add(f[s], alpha: 0.5) }
            return ups[t].forward(cls[t].forward(mixed[t]), height: height, width: width)
        }
    }

    func backward(_ dPreds: [Tensor?]) -> Features {
        let T = proj.count
        let active = (0..<T).filter { dPreds[$0] != nil }
        for t in active { dm[t].copy(from: cls[t].backward(ups[t].backward(dPreds[t]!))) }
        for s in 0..<T {
            df[s].resize(dm[active[0]].shape)
            df[s].zero()
            for t in active { df[s].add(dm[t], alpha: s == t ? 1 : 0.5) }
        }
        du.copy(from: proj[0].backward(df[0]))
        for s in 1..<T { du.add(proj[s].backward(df[s])) }
        return [shared.backward(relu.backward(du))]
    }
}

final class JointDecoderTests: XCTestCase {
    struct Fixture {
        let model: MultiTaskModel
        let losses: [TaskLoss]
        let roles: [TaskRole]
        let batch: Batch
        let names: [String]
    }

    func fixture(_ dir: String) throws -> Fixture {
        let data = try makeSynth(dir, samples: 8, height: 32, width: 32)
        let names = ["seg", "depth", "normals"]
        let ds = try MTDataset(path: data, split: "train", tasks: names)
        var rng = Philox(seed: 21, stream: 0)
        let encoder = ResNetEncoder(depth: .r18, width: 8, outputStride: 8, style: .bench, prefix: "encoder", rng: &rng)
        let channels = [ds.numClasses("seg")!, 1, 3]
        let decoder = CrossTaskDecoder(inChannels: encoder.featureChannels[0], hidden: 6, outChannels: channels, rng: &rng)
        let spec = ModelSpec(encoder: "test", width: 4, outputStride: 8, decoder: "cross-task", headChannels: 6,
                             tasks: zip(names, channels).map { ($0, $1) })
        let model = MultiTaskModel(spec: spec, encoder: encoder, decoder: decoder)
        let batch = Batch()
        try ds.load([0, 1, 2, 3], into: batch)
        return Fixture(model: model, losses: try ["ce", "l1", "cosine"].map { try TaskLoss(kind: $0) },
                       roles: [.primary, .auxiliary, .auxiliary], batch: batch, names: names)
    }

    func engine(_ f: Fixture, method: String, level: GradientLevel, lossWeights: [Double] = [1, 1, 1]) throws -> StepEngine {
        let m = try makeMethod(name: method, taskNames: f.names, roles: f.roles, params: [:])
        return StepEngine(model: f.model, losses: f.losses, lossWeights: lossWeights, roles: f.roles, method: m,
                          level: level, optimizer: SGD(f.model.parameters, momentum: 0, nesterov: false, weightDecay: 0),
                          comm: SingleProcessCommunicator(), seed: 4, skipNonFinite: false)
    }

    /// The gradient of every parameter (flat, model.parameters order) the engine leaves after `gradients`.
    func gradients(_ e: StepEngine, _ f: Fixture) throws -> (flat: [Float], stats: StepStats) {
        let stats = try e.gradients(batch: f.batch, stepIndex: 0, epoch: 0, epochEnded: false)
        return (f.model.parameters.flatMap { Array($0.grad.buffer) }, stats)
    }

    /// The joint decoder's one-backward path (EW) equals finite differences of Σ_t L_t along random
    /// directions over all parameters: the decoder backward with several tasks, its shared and
    /// cross-task terms and the encoder backward are right.
    func testLossWeightingGradientMatchesFiniteDifferences() throws {
        Threads.set(1)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let f = try fixture(dir)
        let e = try engine(f, method: "ew", level: .representation)
        let (g, _) = try gradients(e, f)
        let params = f.model.parameters
        func total() -> Double {
            let preds = f.model.decoder.forward(f.model.encoder.forward(f.batch.images), height: f.batch.images.h,
                                                width: f.batch.images.w)
            var s = 0.0
            for t in 0..<3 {
                let ls = f.losses[t].forward(preds[t], f.batch.targets[f.names[t]]!)
                s += ls.sum / Double(ls.count)
            }
            return s
        }
        let decoderNames = Set(f.model.decoder.parameters.map { $0.name })
        var rng = Philox(seed: 9, stream: 2)
        var largest = 0.0
        // Directions over the decoder alone, the encoder alone, and everything; random, then half
        // along the gradient so that the derivative is large.
        for (label, include) in [("decoder", { (p: Parameter) in decoderNames.contains(p.name) }),
                                 ("encoder", { (p: Parameter) in !decoderNames.contains(p.name) }),
                                 ("all", { (_: Parameter) in true })] {
            for alongGradient in [0.0, 0.5] {
                var k = 0
                var directions: [Tensor] = []
                var gsub = [Float](repeating: 0, count: g.count)
                for p in params {
                    let d = Tensor(p.value.shape, (0..<p.value.count).map { _ in rng.normal() })
                    if !include(p) { d.zero() } else { for i in 0..<d.count { gsub[k + i] = g[k + i] } }
                    k += d.count
                    directions.append(d)
                }
                let rnorm = directions.reduce(0.0) { $0 + $1.sumOfSquares() }.squareRoot()
                let gnorm = gsub.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
                k = 0
                for d in directions {
                    for i in 0..<d.count { d.data[i] = Float(Double(d.data[i]) / rnorm + alongGradient * Double(gsub[k]) / gnorm); k += 1 }
                }
                let norm = directions.reduce(0.0) { $0 + $1.sumOfSquares() }.squareRoot()
                for d in directions { d.scale(Float(1 / norm)) }
                var analytic = 0.0
                k = 0
                for d in directions { for i in 0..<d.count { analytic += Double(g[k]) * Double(d.data[i]); k += 1 } }
                let eps: Float = 3e-4
                for (p, d) in zip(params, directions) { p.value.add(d, alpha: eps) }
                let plus = total()
                for (p, d) in zip(params, directions) { p.value.add(d, alpha: -2 * eps) }
                let minus = total()
                for (p, d) in zip(params, directions) { p.value.add(d, alpha: eps) }
                let numeric = (plus - minus) / (2 * Double(eps))
                XCTAssertLessThan(abs(numeric - analytic), 0.02 * abs(numeric) + 1e-3,
                                  "\(label) direction (along gradient \(alongGradient)): finite difference \(numeric) vs backward \(analytic)")
                largest = max(largest, abs(analytic))
            }
        }
        XCTAssertGreaterThan(largest, 0.1, "the directions must probe a non-trivial derivative")
    }

    /// ∇L_t of every parameter, from the validated one-backward path with one-hot loss weights.
    func perTaskGradients(_ f: Fixture) throws -> [[Double]] {
        try (0..<3).map { t in
            let w = (0..<3).map { $0 == t ? 1.0 : 0.0 }
            let (g, _) = try gradients(try engine(f, method: "ew", level: .representation, lossWeights: w), f)
            return g.map { Double($0) }
        }
    }

    /// Which flat indices of `model.parameters` belong to which group.
    func ranges(_ f: Fixture) -> (encoder: [Range<Int>], shared: [Range<Int>], task: [Range<Int>]) {
        var enc: [Range<Int>] = [], sh: [Range<Int>] = [], task: [Range<Int>] = []
        let encNames = Set(f.model.encoder.parameters.map { $0.name })
        let shNames = Set(f.model.decoder.sharedParameters.map { $0.name })
        var off = 0
        for p in f.model.parameters {
            let r = off..<(off + p.value.count)
            if encNames.contains(p.name) { enc.append(r) } else if shNames.contains(p.name) { sh.append(r) } else { task.append(r) }
            off += p.value.count
        }
        return (enc, sh, task)
    }

    /// PCGrad at parameter level on a joint decoder: the shared vector is encoder + shared decoder
    /// parameters. Its Gram is formed here from the per-task gradients, the method applied to it
    /// gives α, and the engine's shared gradients must equal Σ α_t ∇_θ L_t while the decoder's task
    /// parameters get Σ_t w_t ∇L_t (PCGrad: w_t = 1) with their cross-task terms.
    func testPCGradParameterLevelCombinesSharedDecoderLikeTheEncoder() throws {
        Threads.set(1)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let f = try fixture(dir)
        let ref = try perTaskGradients(f)
        let (enc, sh, task) = ranges(f)
        let shared = enc + sh
        var gram = [Double](repeating: 0, count: 9)
        for i in 0..<3 { for j in 0..<3 { for r in shared { for k in r { gram[i * 3 + j] += ref[i][k] * ref[j][k] } } } }
        let method = try makeMethod(name: "pcgrad", taskNames: f.names, roles: f.roles, params: [:])
        var ctx = MethodContext(step: 0, seed: 4, roles: f.roles, losses: [1, 1, 1], gram: gram, level: .parameters)
        ctx.epoch = 0
        let alpha = try XCTUnwrap(method.apply(ctx).output.sharedCoefficients)
        let (g, stats) = try gradients(try engine(f, method: "pcgrad", level: .parameters), f)
        XCTAssertEqual(stats.coefficients.count, 3)
        for t in 0..<3 { XCTAssertEqual(stats.coefficients[t], alpha[t], accuracy: 1e-5 * max(1, abs(alpha[t]))) }
        XCTAssertTrue(alpha.contains { abs($0 - 1) > 1e-3 }, "PCGrad must project something here, α = \(alpha)")
        let want = (0..<ref[0].count).map { k in (0..<3).reduce(0.0) { $0 + alpha[$1] * ref[$1][k] } }
        let taskWant = (0..<ref[0].count).map { k in (0..<3).reduce(0.0) { $0 + ref[$1][k] } }
        assertClose(g, want, sh, "shared decoder parameters")
        assertClose(g, want, enc, "encoder parameters")
        assertClose(g, taskWant, task, "decoder task parameters")
    }

    /// Representation level (IAL and PCGrad): the method's α come from the Gram of ∂L_t/∂z; the shared
    /// decoder parameters and the encoder get Σ α_t ∇L_t, the task parameters Σ w_t ∇L_t.
    func testRepresentationLevelCombinesSharedDecoderWithTheMethodsCoefficients() throws {
        Threads.set(1)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let f = try fixture(dir)
        let ref = try perTaskGradients(f)
        let (enc, sh, task) = ranges(f)
        for name in ["pcgrad", "ial"] {
            let e = try engine(f, method: name, level: .representation)
            let (g, stats) = try gradients(e, f)
            let alpha = stats.coefficients
            // The decoder weights of a fresh instance's first step (IAL: its uncertainty weights,
            // which do not depend on the Gram).
            let fresh = try makeMethod(name: name, taskNames: f.names, roles: f.roles, params: [:])
            let identity = (0..<9).map { $0 % 4 == 0 ? 1.0 : 0.0 }
            let w = try fresh.apply(MethodContext(step: 0, seed: 4, roles: f.roles, losses: stats.losses,
                                                  gram: identity)).output.decoderWeights
            XCTAssertTrue(alpha.contains { abs($0 - w[0]) > 1e-3 } || name == "pcgrad",
                          "\(name): α = \(alpha) must differ from w = \(w) for the check to tell them apart")
            let want = (0..<ref[0].count).map { k in (0..<3).reduce(0.0) { $0 + alpha[$1] * ref[$1][k] } }
            let taskWant = (0..<ref[0].count).map { k in (0..<3).reduce(0.0) { $0 + w[$1] * ref[$1][k] } }
            assertClose(g, want, sh, "\(name): shared decoder parameters")
            assertClose(g, want, enc, "\(name): encoder parameters")
            assertClose(g, taskWant, task, "\(name): decoder task parameters")
        }
    }
}

final class FrozenEncoderTests: XCTestCase {
    /// model.freeze_encoder: the encoder's parameters and BatchNorm statistics are bit-identical after
    /// training while the heads move and every loss is finite; at parameter level with nothing shared
    /// left the trainer refuses with a one-line error.
    func testFrozenEncoderIsUnchangedAfterTraining() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = try makeSynth(dir)
        let cfg = try Config.parse(yaml: tinyConfigYAML(data: data, steps: 4, method: "pcgrad"), source: "test",
                                   overrides: ["model.freeze_encoder=true"])
        XCTAssertTrue(cfg.yaml().contains("freeze_encoder: true"))
        let trainer = try Trainer(config: cfg, runDir: dir + "/run", comm: SingleProcessCommunicator(), resume: nil)
        let model = trainer.engine.model
        let encoderBefore = (model.encoder.parameters.map { $0.value } + model.encoder.buffers.map { $0.value }).map { $0.clone() }
        let headsBefore = model.decoder.parameters.map { $0.value.clone() }
        let summary = try trainer.run()
        XCTAssertTrue(!summary.lastLosses.isEmpty && summary.lastLosses.allSatisfy { $0.1.isFinite }, "\(summary.lastLosses)")
        let encoderAfter = model.encoder.parameters.map { $0.value } + model.encoder.buffers.map { $0.value }
        XCTAssertFalse(encoderAfter.isEmpty)
        for (a, b) in zip(encoderBefore, encoderAfter) { XCTAssertEqual(Array(a.buffer), Array(b.buffer)) }
        let moved = zip(headsBefore, model.decoder.parameters).contains { Array($0.buffer) != Array($1.value.buffer) }
        XCTAssertTrue(moved, "the heads must train")

        let bad = try Config.parse(yaml: tinyConfigYAML(data: data, steps: 1, method: "pcgrad"), source: "test",
                                   overrides: ["model.freeze_encoder=true", "method.level=parameters"])
        XCTAssertThrowsError(try Trainer(config: bad, runDir: dir + "/bad", comm: SingleProcessCommunicator(), resume: nil)) {
            XCTAssertTrue("\($0)".contains("model.freeze_encoder"), "\($0)")
        }
    }
}
