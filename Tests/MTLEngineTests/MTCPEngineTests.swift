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

/// MT-CP in the engine: the joint decoder with its intermediate supervision through the step (finite
/// differences of the whole network), PCGrad's per-task combination, the configs, and short mpirun runs
/// (world-size invariance, falling losses).
final class MTCPEngineTests: XCTestCase {
    struct Fixture {
        let model: MultiTaskModel
        let losses: [TaskLoss]
        let roles: [TaskRole]
        let batch: Batch
        let names: [String]
    }

    /// A small Swin (one block per stage, width 8) + the FPN-lite neck (16) + an 8-wide MT-CP decoder, 3 tasks, 32×32.
    func fixture(_ dir: String, stride: Int = 8) throws -> Fixture {
        let data = try makeSynth(dir, samples: 8, height: 32, width: 32)
        let names = ["seg", "depth", "normals"]
        let ds = try MTDataset(path: data, split: "train", tasks: names)
        var rng = Philox(seed: 21, stream: 0)
        var o = MTCPOptions()
        o.dim = 8; o.window = 3; o.reduction = 2; o.depthMid = 4; o.cfmStride = stride; o.queryBlock = 5
        let swin = SwinEncoder(SwinVariant(embedDim: 8, depths: [1, 1, 1, 1], heads: [1, 1, 2, 2]), prefix: "encoder", rng: &rng)
        let encoder = MTCPEncoder(backbone: swin, dim: 8, rng: &rng)
        let channels = [ds.numClasses("seg")!, 1, 3]
        let tasks = zip(names, channels).map { (name: $0, channels: $1) }
        let decoder = MTCPDecoder(tasks: tasks, inChannels: 8, options: o, rng: &rng)
        // BN shifts that keep the ReLUs away from their kinks (finite differences across one are meaningless).
        for bn in decoder.batchNorms + encoder.batchNorms { bn.bias.value.fill(1.5) }
        var spec = ModelSpec(encoder: "test", width: 8, outputStride: 4, decoder: "mtcp", headChannels: 8, tasks: tasks)
        spec.mtcp = o
        let model = MultiTaskModel(spec: spec, encoder: encoder, decoder: decoder)
        let batch = Batch()
        try ds.load([0, 1, 2, 3], into: batch)
        return Fixture(model: model, losses: try ["ce", "l1", "cosine"].map { try TaskLoss(kind: $0) },
                       roles: [.primary, .auxiliary, .auxiliary], batch: batch, names: names)
    }

    func engine(_ f: Fixture, method: String, lossWeights: [Double] = [1, 1, 1]) throws -> StepEngine {
        let m = try makeMethod(name: method, taskNames: f.names, roles: f.roles, params: [:])
        return StepEngine(model: f.model, losses: f.losses, lossWeights: lossWeights, roles: f.roles, method: m,
                          level: .representation, optimizer: SGD(f.model.parameters, momentum: 0, nesterov: false, weightDecay: 0),
                          comm: SingleProcessCommunicator(), seed: 4, skipNonFinite: false)
    }

    func gradients(_ e: StepEngine, _ f: Fixture) throws -> (flat: [Float], stats: StepStats) {
        let stats = try e.gradients(batch: f.batch, stepIndex: 0, epoch: 0, epochEnded: false)
        return (f.model.parameters.flatMap { Array($0.grad.buffer) }, stats)
    }

    /// Σ_t [L_t + ½ Σ_i L_t^(i)] with fresh losses (the intermediate terms on the final's valid count).
    func totalLoss(_ f: Fixture) throws -> Double {
        let preds = f.model.decoder.forward(f.model.encoder.forward(f.batch.images), height: f.batch.images.h, width: f.batch.images.w)
        var s = 0.0
        for t in 0..<3 {
            let target = f.batch.targets[f.names[t]]!
            let loss = try TaskLoss(kind: f.losses[t].kind.rawValue)
            let ls = loss.forward(preds[t], target)
            var sum = ls.sum
            for a in f.model.decoder.auxiliaryPredictions(t) {
                let la = loss.forward(a, target)
                XCTAssertEqual(la.count, ls.count)
                sum += 0.5 * la.sum
            }
            s += sum / Double(ls.count)
        }
        return s
    }

    /// EW's one-backward path through the joint decoder and its intermediate predictions equals finite
    /// differences of Σ_t [L_t + ½ Σ_i L_t^(i)] along random directions over the decoder, the encoder
    /// (Swin + neck) and everything; the logged per-task loss is that sum.
    func testWholeNetworkGradientMatchesFiniteDifferences() throws {
        Threads.set(1)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for stride in [4, 8] {
            let f = try fixture(dir, stride: stride)
            let (g, stats) = try gradients(try engine(f, method: "ew"), f)
            XCTAssertEqual(stats.losses.reduce(0, +), try totalLoss(f), accuracy: 1e-4 * abs(stats.losses.reduce(0, +)))
            let params = f.model.parameters
            let decoderNames = Set(f.model.decoder.parameters.map { $0.name })
            var rng = Philox(seed: 9, stream: 2)
            for (label, include) in [("decoder", { (p: Parameter) in decoderNames.contains(p.name) }),
                                     ("encoder", { (p: Parameter) in !decoderNames.contains(p.name) }),
                                     ("all", { (_: Parameter) in true })] {
                var directions: [Tensor] = []
                for p in params {
                    let d = Tensor(p.value.shape, (0..<p.value.count).map { _ in rng.normal() })
                    if !include(p) { d.zero() }
                    directions.append(d)
                }
                let norm = directions.reduce(0.0) { $0 + $1.sumOfSquares() }.squareRoot()
                for d in directions { d.scale(Float(1 / norm)) }
                var analytic = 0.0, k = 0
                for d in directions { for i in 0..<d.count { analytic += Double(g[k]) * Double(d.data[i]); k += 1 } }
                let eps: Float = 1e-3
                for (p, d) in zip(params, directions) { p.value.add(d, alpha: eps) }
                let plus = try totalLoss(f)
                for (p, d) in zip(params, directions) { p.value.add(d, alpha: -2 * eps) }
                let minus = try totalLoss(f)
                for (p, d) in zip(params, directions) { p.value.add(d, alpha: eps) }
                let numeric = (plus - minus) / (2 * Double(eps))
                print("MT-CP whole network stride \(stride) \(label): finite difference \(numeric), backward \(analytic)")
                XCTAssertLessThan(abs(numeric - analytic), 0.02 * abs(numeric) + 1e-4,
                                  "stride \(stride) \(label): finite difference \(numeric) vs backward \(analytic)")
            }
        }
    }

    /// PCGrad at representation level: the decoder's task parameters get Σ_t ∇L_t (task t's CFM reads the other
    /// tasks' FPNs, so L_t reaches their parameters too), z gets Σ α_t ∂L_t/∂z, with ∇L_t from one-hot loss weights.
    func testPCGradCombinesTheJointDecoderPerTask() throws {
        Threads.set(1)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let f = try fixture(dir)
        let ref = try (0..<3).map { t in
            try gradients(try engine(f, method: "ew", lossWeights: (0..<3).map { $0 == t ? 1.0 : 0.0 }), f).flat.map { Double($0) }
        }
        // L_seg reaches the depth task's transformer (through the seg CFM) but not its heads.
        let names = f.model.parameters.map { $0.name }
        var off = 0, crossTerm = 0.0, headTerm = 0.0
        for (p, n) in zip(f.model.parameters, names) {
            let r = off..<(off + p.value.count)
            if n.hasPrefix("decoder.transformer.depth.") { crossTerm += r.reduce(0.0) { $0 + abs(ref[0][$1]) } }
            if n.hasPrefix("decoder.head.depth.") { headTerm += r.reduce(0.0) { $0 + abs(ref[0][$1]) } }
            off += p.value.count
        }
        XCTAssertGreaterThan(crossTerm, 0, "∇L_seg must reach the depth transformer through the CFM")
        XCTAssertEqual(headTerm, 0, "∇L_seg must not reach the depth head")
        let (g, stats) = try gradients(try engine(f, method: "pcgrad"), f)
        XCTAssertTrue(stats.coefficients.contains { abs($0 - 1) > 1e-3 }, "PCGrad must project something, α = \(stats.coefficients)")
        let decoderNames = Set(f.model.decoder.parameters.map { $0.name })
        off = 0
        var d2 = 0.0, w2 = 0.0
        for p in f.model.parameters {
            if decoderNames.contains(p.name) {
                for i in off..<(off + p.value.count) {
                    let want = ref[0][i] + ref[1][i] + ref[2][i]
                    d2 += (Double(g[i]) - want) * (Double(g[i]) - want); w2 += want * want
                }
            }
            off += p.value.count
        }
        XCTAssertLessThan(d2.squareRoot() / w2.squareRoot(), 1e-4, "decoder task parameters get Σ_t ∇L_t")
    }

    /// Per task and loss term (final, intermediate 1, intermediate 2): the term's global mean L_t^k and the
    /// gradient of L_t^k alone over every parameter, from one forward and a decoder + encoder backward of
    /// that single term (the other terms' gradients zero).
    func termGradients(_ f: Fixture) throws -> (losses: [[Double]], grads: [[[Double]]]) {
        let images = f.batch.images
        let z = f.model.encoder.forward(images)
        let preds = f.model.decoder.forward(z, height: images.h, width: images.w, active: [true, true, true])
        var losses: [[Double]] = [], grads: [[[Double]]] = []
        for t in 0..<3 {
            let target = f.batch.targets[f.names[t]]!
            let aux = f.model.decoder.auxiliaryPredictions(t)
            XCTAssertEqual(aux.count, 2)
            let outputs = [preds[t]!] + aux
            var lt: [Double] = [], gt: [[Double]] = []
            for k in outputs.indices {
                let loss = try TaskLoss(kind: f.losses[t].kind.rawValue)
                let ls = loss.forward(outputs[k], target)
                lt.append(ls.sum / Double(ls.count))
                let g = loss.backward(scale: Float(1 / Double(ls.count))).clone()
                var dPreds = [Tensor?](repeating: nil, count: 3)
                var dAux = [[Tensor]?](repeating: nil, count: 3)
                // The decoder backpropagates a task only with a final gradient: zero for an intermediate term.
                dPreds[t] = k == 0 ? g : Tensor(outputs[0].shape)
                if k > 0 { dAux[t] = (1...2).map { $0 == k ? g : Tensor(outputs[$0].shape) } }
                f.model.zeroGrad()
                f.model.encoder.backward(f.model.decoder.backward(dPreds, auxiliary: dAux))
                gt.append(f.model.parameters.flatMap { $0.grad.buffer.map(Double.init) })
            }
            losses.append(lt)
            grads.append(gt)
        }
        f.model.zeroGrad()
        return (losses, grads)
    }

    /// LPS (paper mode) through the joint MT-CP decoder: each loss term — final and every intermediate —
    /// enters the step's gradient with its own log-projection weight w_t / (1 + L_t^k + η), times its ½ for
    /// the intermediates. The engine's gradient equals Σ_t Σ_k w_t a_k ∇L_t^k / (1 + L_t^k + η) formed here
    /// from the per-term gradients; the priorities w come from a loaded one-epoch history (warm-up inverse
    /// shares, all different from 1). Projecting the task total instead is measurably different.
    func testLPSWeightsEachLossTermByItsOwnProjection() throws {
        Threads.set(1)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let f = try fixture(dir)
        let e = try engine(f, method: "lps")
        let history = [0.9, 0.5, 0.3]
        try e.method.loadState(["epoch.sums": [0, 0, 0], "epoch.steps": [0], "epoch.last": [0], "epoch.history": history,
                                "lps.mode": [0], "lps.terms": [1]])
        let stats = try e.gradients(batch: f.batch, stepIndex: 5, epoch: 1, epochEnded: true)
        let g = f.model.parameters.flatMap { $0.grad.buffer.map(Double.init) }
        let w = history.map { history.reduce(0, +) / $0 }
        for (logged, want) in zip(stats.methodLogs.map { $0.1 }, w) { XCTAssertEqual(logged, want, accuracy: 1e-12 * want, "warm-up inverse shares") }

        let (L, G) = try termGradients(f)
        let eta = LPS.eta, a = [1.0, 0.5, 0.5]
        for t in 0..<3 {
            // The engine's task loss is the code's sum final + ½ Σ intermediates; its coefficient the final's projection.
            XCTAssertEqual(stats.losses[t], L[t][0] + 0.5 * (L[t][1] + L[t][2]), accuracy: 1e-5 * stats.losses[t])
            XCTAssertEqual(stats.coefficients[t], w[t] / (1 + L[t][0] + eta), accuracy: 1e-5 * stats.coefficients[t])
            XCTAssertGreaterThan(abs(L[t][1] - L[t][0]) + abs(L[t][2] - L[t][0]), 1e-2 * L[t][0], "terms must differ for the test to see them")
        }
        func combination(_ c: (Int, Int) -> Double) -> [Double] {
            var out = [Double](repeating: 0, count: g.count)
            for t in 0..<3 { for k in 0..<3 { let s = c(t, k) * a[k]; for i in out.indices { out[i] += s * G[t][k][i] } } }
            return out
        }
        func relative(_ u: [Double], _ v: [Double]) -> Double {
            zip(u, v).reduce(0.0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) }.squareRoot() / v.reduce(0.0) { $0 + $1 * $1 }.squareRoot()
        }
        let perTerm = combination { t, k in w[t] / (1 + L[t][k] + eta) }
        let total = combination { t, _ in w[t] / (1 + L[t][0] + 0.5 * (L[t][1] + L[t][2]) + eta) }
        let finalOnly = combination { t, _ in w[t] / (1 + L[t][0] + eta) }
        let err = relative(g, perTerm)
        print("MT-CP LPS per-term: engine vs Σ w a ∇L^k/(1+L^k+η) \(err); vs the total's projection \(relative(g, total)), vs the final's for every term \(relative(g, finalOnly))")
        XCTAssertLessThan(err, 1e-4, "engine gradient vs the per-term combination")
        XCTAssertGreaterThan(relative(g, total), 100 * max(err, 1e-6), "the total's projection must be distinguishable")
        XCTAssertGreaterThan(relative(g, finalOnly), 100 * max(err, 1e-6), "the final term's factor on every term must be distinguishable")
    }

    /// Both configs parse with the paper's settings and round-trip through config.yaml; bad model.mtcp values
    /// are one-line errors naming key, expectation and value.
    func testConfigsAndBadKeys() throws {
        let root = DistributedTrainingTests.packageRoot
        let nyud = try Config.load(path: root + "/configs/mtcp-swin_t-nyud.yaml")
        XCTAssertEqual(nyud.model.decoder, "mtcp")
        XCTAssertEqual(nyud.model.neck, "fpn")
        XCTAssertEqual(nyud.model.encoder, "swin_t")
        XCTAssertEqual(nyud.model.mtcp, MTCPOptions())
        XCTAssertEqual(nyud.method.name, "lps")
        XCTAssertEqual(nyud.train.steps, 39_750)
        XCTAssertEqual(try Config.parse(yaml: nyud.yaml(), source: "resolved"), nyud)
        let swinS = try Config.load(path: root + "/configs/mtcp-swin_s-nyud.yaml")
        XCTAssertEqual(swinS.model.encoder, "swin_s")
        var same = swinS
        same.model.encoder = "swin_t"
        XCTAssertEqual(same, nyud, "the Swin-S config differs from the Swin-T one only in the encoder")
        let pascal = try Config.load(path: root + "/configs/mtcp-swin_t-pascal.yaml", overrides: ["model.mtcp.cfm_stride=8", "model.mtcp.variant=paper"])
        XCTAssertEqual(pascal.model.mtcp.headLayout, "pascal")
        XCTAssertEqual(pascal.model.mtcp.cfmStride, 8)
        XCTAssertEqual(try Config.parse(yaml: pascal.yaml(), source: "resolved"), pascal)
        func message(_ o: [String]) -> String {
            do { _ = try Config.load(path: root + "/configs/mtcp-swin_t-nyud.yaml", overrides: o); return "" } catch { return "\(error)" }
        }
        let m1 = message(["model.mtcp.cfm_stride=16"])
        XCTAssertTrue(m1.contains("model.mtcp.cfm_stride: expected one of 4|8, found 16"), m1)
        let m2 = message(["model.mtcp.strde=8"])
        XCTAssertTrue(m2.contains("unknown key 'model.mtcp.strde' (did you mean 'model.mtcp.cfm_stride'?)") || m2.contains("unknown key 'model.mtcp.strde'"), m2)
        let m3 = message(["model.mtcp.variant=dynamic"])
        XCTAssertTrue(m3.contains("model.mtcp.variant: expected one of code|paper"), m3)
        let m4 = message(["model.mtcp.dim=15"])
        XCTAssertTrue(m4.contains("model.mtcp.dim: expected an even width"), m4)
        let m5 = message(["model.decoder=kem"])
        XCTAssertTrue(m5.contains("model.mtcp: parameters of neck fpn and decoder mtcp"), m5)
        for m in [m1, m2, m3, m4, m5] { XCTAssertFalse(m.contains("\n"), m) }
        // A one-scale encoder cannot feed the neck.
        var spec = ModelSpec(encoder: "resnet18", width: 8, outputStride: 8, decoder: "mtcp", headChannels: 8, tasks: [("seg", 3), ("depth", 1)])
        spec.mtcp.dim = 16
        XCTAssertThrowsError(try MultiTaskModel(spec, seed: 0)) { XCTAssertTrue("\($0)".contains("model.neck: fpn needs a 4-scale encoder"), "\($0)") }
    }

    /// The released code's normals loss is a task loss: `tasks.normals.loss=normal_mse` on the MT-CP config
    /// (3 head channels, the MTLNN loss behind TaskLoss); other task kinds refuse it with a one-line error.
    func testCodeNormalsLossInTheConfigs() throws {
        let path = DistributedTrainingTests.packageRoot + "/configs/mtcp-swin_t-nyud.yaml"
        let c = try Config.load(path: path, overrides: ["tasks.normals.loss=normal_mse"])
        XCTAssertEqual(c.task(named: "normals")?.loss, "normal_mse")
        XCTAssertEqual(try Config.parse(yaml: c.yaml(), source: "resolved"), c)
        XCTAssertEqual(TaskLoss.channels(task: "normals", loss: "normal_mse", classes: 0), 3)
        let loss = try TaskLoss(kind: "normal_mse")
        XCTAssertEqual(loss.kind, .normalMSE)
        let r = loss.forward(Tensor([1, 3, 1, 2], [0.5, 1, 0, 0, 0, 0]), Tensor([1, 3, 1, 2], [0, 1, 0, 0, 1, 0]))
        XCTAssertEqual(r, LossSum(sum: 0.25 + 1, count: 6))
        XCTAssertEqual(loss.backward(scale: 0.5).array, [0.5, 0, 0, 0, -1, 0])
        do {
            _ = try Config.load(path: path, overrides: ["tasks.depth.loss=normal_mse"])
            XCTFail("depth accepted normal_mse")
        } catch {
            let m = "\(error)"
            XCTAssertTrue(m.contains("tasks.depth.loss: expected one of l1 for task depth, found 'normal_mse'"), m)
            XCTAssertFalse(m.contains("\n"), m)
        }
    }

    // MARK: mpirun

    static let tasks = ["seg", "depth", "normals"]

    func synth(_ dir: String, height: Int, width: Int) throws -> String {
        let data = dir + "/synth.h5"
        let r = try DistributedTrainingTests.run([try DistributedTrainingTests.mtlBinary(), "synth", "--out", data,
                                                  "--samples", "8", "--val-samples", "2", "--height", "\(height)", "--width", "\(width)",
                                                  "--tasks", Self.tasks.joined(separator: ","), "--seed", "5"])
        XCTAssertEqual(r.status, 0, r.err)
        return data
    }

    /// configs/mtcp-swin_t-nyud.yaml, with `method` in place of its LPS (a method's hyperparameter group must be its own).
    func train(_ n: Int, _ dir: String, run: String, data: String, method: String = "lps", _ extra: [String]) throws
        -> DistributedTrainingTests.Result {
        var config = DistributedTrainingTests.packageRoot + "/configs/mtcp-swin_t-nyud.yaml"
        if method != "lps" {
            let text = try String(contentsOfFile: config, encoding: .utf8)
            let lps = "  name: lps\n  lps: {mode: paper, history: 1, spread: 2.5}\n"
            XCTAssertTrue(text.contains(lps), "the config's method section changed")
            config = dir + "/\(method).yaml"
            try text.replacingOccurrences(of: lps, with: "  name: \(method)\n").write(toFile: config, atomically: true, encoding: .utf8)
        }
        let sets = ["data.path=\(data)", "data.augment=false", "train.threads=1", "train.eval_every=0", "log.every=1",
                    "model.mtcp.dim=16", "model.mtcp.cfm_stride=8", "model.mtcp.query_block=64", "tasks.seg.classes=0",
                    "train.batch_size=4"] + extra
        return try DistributedTrainingTests.mpirun(n, ["train", "--config", config, "--run-dir", dir + "/" + run] + sets.flatMap { ["--set", $0] },
                                                   timeout: 600)
    }

    func series(_ dir: String, _ run: String, _ key: String) throws -> [[Double]] {
        let text = try String(contentsOfFile: dir + "/" + run + "/metrics.jsonl", encoding: .utf8)
        return text.split(separator: "\n").compactMap { line -> [Double]? in
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  o["kind"] as? String == "train" else { return nil }
            return Self.tasks.map { o["\(key).\($0)"] as! Double }
        }
    }

    /// configs/mtcp-swin_t-nyud.yaml (Swin-T, FPN-lite, a 16-wide decoder, CFM stride 8, SyncBN) through the real
    /// binary on 32×64 synthetic seg + depth + normals: one SGD step with LPS and one with PCGrad on 1 and 2
    /// ranks give the same losses, coefficients and parameters to float accuracy.
    func testWorldSizeInvariance() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = try synth(dir, height: 32, width: 64)
        for method in ["lps", "pcgrad"] {
            for n in [1, 2] {
                let r = try train(n, dir, run: "\(method)\(n)", data: data, method: method,
                                  ["optim.name=sgd", "optim.lr=0.0001", "optim.momentum=0", "train.steps=1",
                                   "checkpoint.every=1"])
                XCTAssertEqual(r.status, 0, r.err)
                guard r.status == 0 else { return }
            }
            for key in ["loss", "coef"] {
                let a = try series(dir, "\(method)1", key), b = try series(dir, "\(method)2", key)
                XCTAssertEqual(a.count, 1)
                XCTAssertEqual(b.count, 1)
                for (u, v) in zip(a.joined(), b.joined()) { XCTAssertEqual(u, v, accuracy: 1e-5 * max(1, abs(u)), "\(method) \(key): \(a) vs \(b)") }
            }
            func parameters(_ run: String) throws -> [String: Tensor] {
                let store = CheckpointStore(directory: dir + "/" + run + "/checkpoints")
                guard let latest = store.latest() else { XCTFail("no checkpoint in \(run)"); return [:] }
                return try CheckpointStore.load(latest).tensors.filter { $0.key.hasPrefix("model.") && !$0.key.hasSuffix("num_batches_tracked") }
            }
            let p1 = try parameters("\(method)1"), p2 = try parameters("\(method)2")
            XCTAssertGreaterThan(p1.count, 500)
            // Per tensor max |Δ| / max(max |p|, 1e-3): zero-initialised tensors (BN biases) hold lr·g after the step, and
            // the 1-channel spatial BNs' bias gradient is a sum with cancellation whose 2-rank rounding reaches ~1e-3 of it.
            var worst = (0.0, "")
            for (name, t) in p1 {
                guard let u = p2[name] else { XCTFail("\(name) missing"); continue }
                var diff: Float = 0, scale: Float = 0
                for i in 0..<t.count { diff = max(diff, abs(t[i] - u[i])); scale = max(scale, abs(t[i])) }
                if Double(diff / max(scale, 1e-3)) > worst.0 { worst = (Double(diff / max(scale, 1e-3)), name) }
            }
            print("MT-CP \(method), parameters after one step on 1 vs 2 ranks: worst \(worst.1) \(worst.0)")
            XCTAssertLessThan(worst.0, 1e-5, "\(method): \(worst.1)")
        }
    }

    /// 8 AdamW steps on 2 ranks (8 samples, 2 steps per epoch, LPS as the paper defines it, IAL-free): every task's
    /// loss (final + ½ Σ intermediate) is lower in the last epoch than in the first (epoch means: the two batches of
    /// an epoch differ a lot on 8 synthetic samples). The run is deterministic (seeded data order and init).
    func testLossesFallUnderMPI() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = try synth(dir, height: 32, width: 64)
        let r = try train(2, dir, run: "fall", data: data, ["train.steps=8", "optim.lr=0.001", "checkpoint.every=0"])
        XCTAssertEqual(r.status, 0, r.err)
        guard r.status == 0 else { return }
        let l = try series(dir, "fall", "loss")
        XCTAssertEqual(l.count, 8)
        for (t, name) in Self.tasks.enumerated() {
            let v = l.map { $0[t] }
            XCTAssertTrue(v.allSatisfy { $0.isFinite }, "\(name): \(v)")
            print("MT-CP \(name) loss: \(v.map { String(format: "%.3f", $0) }.joined(separator: " "))")
            XCTAssertLessThan((v[6] + v[7]) / 2, (v[0] + v[1]) / 2, "\(name) loss must fall: \(v)")
        }
    }
}
