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

/// KEM-R in the engine: the joint decoder's shared KEM memory under a gradient method, the configs,
/// and a short mpirun training run with the frozen Swin-S.
final class KEMEngineTests: XCTestCase {
    struct Fixture {
        let model: MultiTaskModel
        let losses: [TaskLoss]
        let roles: [TaskRole]
        let batch: Batch
        let names: [String]
    }

    /// A small Swin (one block per stage, width 8; the real Swin-S is in the training test) frozen, and a
    /// 16-wide KEM decoder with 3 tasks.
    func fixture(_ dir: String) throws -> Fixture {
        let data = try makeSynth(dir, samples: 8, height: 32, width: 32)
        let names = ["seg", "depth", "normals"]
        let ds = try MTDataset(path: data, split: "train", tasks: names)
        var rng = Philox(seed: 21, stream: 0)
        let encoder = SwinEncoder(SwinVariant(embedDim: 8, depths: [1, 1, 1, 1], heads: [1, 1, 2, 2]), prefix: "encoder", rng: &rng)
        let channels = [ds.numClasses("seg")!, 1, 3]
        var o = KEMOptions()
        o.dim = 16; o.slots = 6; o.topk = 3; o.unusedPatchEmbed = false
        let tasks = zip(names, channels).map { (name: $0, channels: $1) }
        let decoder = KEMDecoder(tasks: tasks, inChannels: encoder.featureChannels, options: o, rng: &rng)
        let spec = ModelSpec(encoder: "test", width: 8, outputStride: 4, decoder: "kem", headChannels: 16, tasks: tasks, kem: o)
        let model = MultiTaskModel(spec: spec, encoder: encoder, decoder: decoder)
        model.freezeEncoder()
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

    /// PCGrad at representation level (the frozen encoder's outputs): the KEM memory, the reduction
    /// and the shared stage get Σ α_t ∇L_t with the α PCGrad derives from the Gram of ∂L_t/∂z, the task
    /// parameters Σ_t ∇L_t; ∇L_t from the validated one-backward path with one-hot loss weights. The
    /// frozen encoder has no gradient at all: its buffers are freed.
    func testPCGradCombinesTheSharedKEMMemoryWithTheMethodsCoefficients() throws {
        Threads.set(1)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let f = try fixture(dir)
        let ref = try (0..<3).map { t in
            try gradients(try engine(f, method: "ew", lossWeights: (0..<3).map { $0 == t ? 1.0 : 0.0 }), f).flat.map { Double($0) }
        }
        var enc: [Range<Int>] = [], kem: [Range<Int>] = [], sh: [Range<Int>] = [], task: [Range<Int>] = []
        let encNames = Set(f.model.encoder.parameters.map { $0.name })
        let shNames = Set(f.model.decoder.sharedParameters.map { $0.name })
        var off = 0
        for p in f.model.parameters {
            let r = off..<(off + p.grad.count)
            if encNames.contains(p.name) { enc.append(r); XCTAssertEqual(p.grad.count, 0, "\(p.name): a frozen parameter's gradient buffer") }
            else if shNames.contains(p.name) { sh.append(r); if p.name.hasPrefix("decoder.kem.") { kem.append(r) } }
            else { task.append(r) }
            off += p.grad.count
        }
        XCTAssertEqual(kem.count, 13, "memory + 6 projections (weight, bias)")
        let (g, stats) = try gradients(try engine(f, method: "pcgrad"), f)
        let alpha = stats.coefficients
        XCTAssertTrue(alpha.contains { abs($0 - 1) > 1e-3 }, "PCGrad must project something here, α = \(alpha)")
        let want = (0..<ref[0].count).map { k in (0..<3).reduce(0.0) { $0 + alpha[$1] * ref[$1][k] } }
        let taskWant = (0..<ref[0].count).map { k in (0..<3).reduce(0.0) { $0 + ref[$1][k] } }
        assertClose(g, want, kem, "KEM memory")
        assertClose(g, want, sh, "shared decoder parameters")
        assertClose(g, taskWant, task, "decoder task parameters")
        // And it is not the plain sum (the check can tell α from 1).
        var d2 = 0.0, w2 = 0.0
        for r in kem { for i in r { d2 += (want[i] - taskWant[i]) * (want[i] - taskWant[i]); w2 += want[i] * want[i] } }
        XCTAssertGreaterThan(d2.squareRoot() / w2.squareRoot(), 1e-3, "Σ α_t ∇L_t and Σ ∇L_t must differ on the memory")
        XCTAssertEqual(enc.map { $0.count }.reduce(0, +), 0, "frozen encoder gradients")
    }

    /// Both configs parse, resolve with the paper's settings and round-trip through config.yaml; bad
    /// model.kem values are one-line errors naming key, expectation and value.
    func testConfigsAndBadKeys() throws {
        let root = DistributedTrainingTests.packageRoot
        let nyud = try Config.load(path: root + "/configs/kem-swin_s-nyud.yaml")
        XCTAssertEqual(nyud.model.decoder, "kem")
        XCTAssertEqual(nyud.model.encoder, "swin_s")
        XCTAssertTrue(nyud.model.freezeEncoder)
        XCTAssertEqual(nyud.model.kem, KEMOptions())
        XCTAssertEqual(nyud.method.name, "uw")
        XCTAssertEqual(nyud.method.params["uw"]?["scale"], "10")
        XCTAssertEqual(try Config.parse(yaml: nyud.yaml(), source: "resolved"), nyud)
        let pascal = try Config.load(path: root + "/configs/kem-swin_s-pascal.yaml", overrides: ["model.kem.stable=true",
                                                                                                  "model.kem.etf_role=slots"])
        XCTAssertEqual(pascal.tasks.map { $0.weight }, [1, 2, 30])
        XCTAssertTrue(pascal.model.kem.stable)
        XCTAssertEqual(try Config.parse(yaml: pascal.yaml(), source: "resolved"), pascal)
        func message(_ o: [String]) -> String {
            do { _ = try Config.load(path: root + "/configs/kem-swin_s-nyud.yaml", overrides: o); return "" } catch { return "\(error)" }
        }
        let m1 = message(["model.kem.mixer=mlp"])
        XCTAssertTrue(m1.contains("model.kem.mixer: expected one of memory|cross_attention|none"), m1)
        let m2 = message(["model.kem.slot=4"])
        XCTAssertTrue(m2.contains("unknown key 'model.kem.slot'"), m2)
        let m3 = message(["model.kem.dim=30"])
        XCTAssertTrue(m3.contains("model.kem.dim: expected a multiple of model.kem.heads (4), found 30"), m3)
        let m4 = message(["model.kem.topk_axis=slots", "model.kem.topk=21"])
        XCTAssertTrue(m4.contains("model.kem.topk"), m4)
        for m in [m1, m2, m3, m4] { XCTAssertFalse(m.contains("\n"), m) }
        // A one-scale encoder cannot feed the KEM decoder.
        var spec = ModelSpec(encoder: "resnet18", width: 8, outputStride: 8, decoder: "kem", headChannels: 8, tasks: [("seg", 3), ("depth", 1)])
        spec.kem.dim = 16
        XCTAssertThrowsError(try MultiTaskModel(spec, seed: 0)) { XCTAssertTrue("\($0)".contains("model.decoder: kem reads 4 feature scales, model.encoder resnet18 gives 1"), "\($0)") }
    }

    /// configs/kem-swin_s-nyud.yaml through the real binary under `mpirun -n 2` at 64×96 on synthetic
    /// seg + depth (real Swin-S and the 256-d decoder, lr raised so that a few steps show): every loss
    /// finite and falling, the uw weights moving, and the frozen Swin-S bit-identical to its init.
    func testKEMTrainsUnderMPIWithTheSwinFrozen() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = dir + "/synth.h5"
        try synthesize(data, samples: 8, valSamples: 2, height: 64, width: 96, tasks: ["seg", "depth"], seed: 5)
        let config = packageRoot + "/configs/kem-swin_s-nyud.yaml"
        let overrides = ["data.path=\(data)", "data.augment=false", "train.threads=1", "train.eval_every=0", "train.steps=6",
                         "checkpoint.every=6", "log.every=1", "optim.lr=0.0003", "tasks.seg.classes=0"]
        let r = try mpirunMTL(2, ["train", "--config", config, "--run-dir", dir + "/run"] + overrides.flatMap { ["--set", $0] },
                              timeout: 900)
        XCTAssertEqual(r.status, 0, r.err)
        guard r.status == 0 else { return }
        let steps = try trainRecords(dir + "/run")
        XCTAssertEqual(steps.count, 6)
        for t in ["seg", "depth"] {
            let l = steps.map { ($0["loss.\(t)"] as? Double) ?? .nan }
            XCTAssertTrue(l.allSatisfy { $0.isFinite }, "\(t): \(l)")
            XCTAssertLessThan((l[4] + l[5]) / 2, (l[0] + l[1]) / 2, "\(t) loss must fall: \(l)")
        }
        // The frozen encoder equals a freshly initialised one (same seed) bit for bit.
        let cfg = try Config.load(path: config, overrides: overrides)
        let fresh = try Trainer(config: cfg, runDir: dir + "/fresh", comm: SingleProcessCommunicator(), resume: nil).engine.model
        let store = CheckpointStore(directory: dir + "/run/checkpoints")
        guard let latest = store.latest() else { XCTFail("no checkpoint"); return }
        let saved = try CheckpointStore.load(latest).tensors
        var checked = 0, movedDecoder = 0
        for (name, t) in fresh.stateTensors() {
            guard let s = saved["model." + name] else { XCTFail("\(name) not in the checkpoint"); continue }
            if name.hasPrefix("encoder.") {
                XCTAssertEqual(Array(s.buffer), Array(t.buffer), "\(name) changed")
                checked += 1
            } else if Array(s.buffer) != Array(t.buffer) {
                movedDecoder += 1
            }
        }
        XCTAssertEqual(checked, fresh.encoder.parameters.count)
        XCTAssertGreaterThan(movedDecoder, 100, "the decoder must train")
    }
}
