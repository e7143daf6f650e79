import Foundation
import MTLCore
import MTLModels
import MTLNN
import MTLData
import MTLDist
import MTLMethods
import MTLTrain

/// `mtl bench`: the network and batch of ../shared/bench/torch_ref.py, timed per training step.
public struct BenchOptions {
    public var width = 32, batch = 4, height = 128, wide = 256, threads = 2, steps = 8, warmup = 2
    public var method = "ew"
    /// bench (ResNet-18-style encoder + bench heads) | resnet50-deeplab (dilated ResNet-50 + DeepLabV3 heads)
    /// | hrnet18s-baseline (HRNetV2-W18-Small-v2 + multiscale heads, hidden width 270; tools/bench_hrnet_torch.py)
    /// | swin_t-baseline (dense Swin-T + multiscale heads, hidden width --head-channels; tools/bench_swin_torch.py).
    /// | tif-hrnet18 (TIF-R on HRNetV2-W18-Small-v2: SAFF + per-task SFD / LTHD / fusion / heads).
    public var model = "bench"
    public var headChannels = 256
    public var convBackend = "auto"
    /// Time every convolution pass of the timed steps (ConvProfile) and report them.
    public var profile = false
    /// kem-swin_s: the mixer between the task encoders and decoders (the paper's Table 6 rows).
    public var kemMixer = "memory"
    /// mtcp-swin_t: the CFM's stride (4: the paper; 8: the pooled affinity).
    public var cfmStride = 4
    public init() {}
    public static let models = ["bench", "resnet50-deeplab", "hrnet18s-baseline", "swin_t-baseline", "tif-hrnet18", "kem-swin_s",
                                "mtcp-swin_t"]
    /// memory (KEM) | skem (sKEM, ETF over the tasks) | cross_attention (KEM w/ CA) | none (MTFormer-T)
    public static let kemMixers = ["memory", "skem", "cross_attention", "none"]
}

public struct BenchResult {
    public var options: BenchOptions
    public var msPerStepMedian: Double
    public var msPerStepMin: Double
    public var gflopPerStep: Double
    public var gflops: Double
    public var sgemmPeakGflops: Double
    public var peakFraction: Double
    public var peakRSSMB: Double
    /// Parameters of the network (torch_ref's `sum(p.numel())` for the same flags).
    public var parameters = 0
    /// The parameters the optimizer updates (all but a frozen encoder's).
    public var trainableParameters = 0
    /// The per-layer convolution times of the timed steps (`profile`), else nil.
    public var convProfile: String?
    /// The last step's task losses and gradient norm, and an FNV-1a hash of every parameter's bits
    /// after the last update: two builds that must compute the same (a change of memory use only)
    /// print the same three.
    public var lastLosses: [Double] = []
    public var lastGradNorm = 0.0
    public var parameterHash: UInt64 = 0

    public var json: String {
        String(format: "{\"method\": \"%@\", \"width\": %d, \"batch\": %d, \"height\": %d, \"width_px\": %d, \"threads\": %d, \"ms_per_step_median\": %.2f, \"ms_per_step_min\": %.2f, \"gflop_per_step\": %.3f, \"gflops\": %.2f, \"sgemm_peak_gflops\": %.2f, \"peak_fraction\": %.3f, \"peak_rss_mb\": %.1f, \"parameters\": %d, \"trainable_parameters\": %d, \"model\": \"%@\", \"conv_backend\": \"%@\", \"last_losses\": [%@], \"last_grad_norm\": %.17g, \"parameter_hash\": \"%016llx\"}",
               options.method, options.width, options.batch, options.height, options.wide, options.threads,
               msPerStepMedian, msPerStepMin, gflopPerStep, gflops, sgemmPeakGflops, peakFraction, peakRSSMB,
               parameters, trainableParameters, options.model, Conv2d.backend.rawValue,
               lastLosses.map { String(format: "%.17g", $0) }.joined(separator: ", "), lastGradNorm, parameterHash)
    }

    public var text: String {
        String(format: """
        bench: %@, width %d, batch %d, %dx%d, method %@, %d thread(s), %d parameters, conv backend %@
          %.2f ms/step (median of %d; min %.2f)
          %.3f GFLOP/step, %.2f GFLOP/s = %.1f%% of the measured sgemm peak (%.2f GFLOP/s)
          peak RSS %.1f MB
        """, options.model, options.width, options.batch, options.height, options.wide, options.method, options.threads,
               parameters, Conv2d.backend.rawValue,
               msPerStepMedian, options.steps, msPerStepMin, gflopPerStep, gflops, peakFraction * 100,
               sgemmPeakGflops, peakRSSMB)
    }
}

public enum Bench {
    /// Best GFLOP/s of one large single-call sgemm with the current thread count: the machine's practical peak.
    public static func sgemmPeak(size n: Int = 1024, repeats: Int = 5) -> Double {
        let a = Tensor([n, n]), b = Tensor([n, n]), c = Tensor([n, n])
        var rng = Philox(seed: 1, stream: 99)
        for i in 0..<(n * n) { a[i] = rng.uniform(); b[i] = rng.uniform() }
        var best = Double.infinity
        for _ in 0..<repeats {
            let t = Date()
            sgemm(m: n, n: n, k: n, a: a.data, lda: n, b: b.data, ldb: n, c: c.data, ldc: n)
            best = min(best, Date().timeIntervalSince(t))
        }
        return 2 * Double(n * n * n) / best / 1e9
    }

    public static func peakRSSMB() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_maxrss) / 1024  // kilobytes on Linux
    }

    /// A batch like torch_ref's: x ~ N(0,1), seg ∈ {-1..12}, depth ~ U(0,1), unit normals.
    static func randomBatch(_ o: BenchOptions, seed: UInt64 = 0) -> Batch {
        let batch = Batch()
        var rng = Philox(seed: seed, stream: 77)
        let B = o.batch, H = o.height, W = o.wide
        batch.images.resize([B, 3, H, W])
        for i in 0..<batch.images.count { batch.images[i] = rng.normal() }
        let seg = Tensor([B, H, W]), depth = Tensor([B, 1, H, W]), normals = Tensor([B, 3, H, W])
        for i in 0..<seg.count { seg[i] = Float(rng.int(below: 14) - 1) }
        for i in 0..<depth.count { depth[i] = rng.uniform() }
        let hw = H * W
        for b in 0..<B {
            for p in 0..<hw {
                let base = b * 3 * hw + p
                let x = rng.normal(), y = rng.normal(), z = rng.normal()
                let n = max((x * x + y * y + z * z).squareRoot(), 1e-12)
                normals[base] = x / n; normals[base + hw] = y / n; normals[base + 2 * hw] = z / n
            }
        }
        batch.targets = ["seg": seg, "depth": depth, "normals": normals]
        batch.indices = Array(0..<B)
        return batch
    }

    public static func run(_ o: BenchOptions) throws -> BenchResult {
        guard BenchOptions.models.contains(o.model) else {
            throw MTLError("--model: expected \(BenchOptions.models.joined(separator: " | ")), found \(o.model)")
        }
        // The config's defaults, with the environment's debugging overrides (MTL_BLAS_THREADS, ...).
        let (syncOptions, _) = try Runtime.applyPerformanceSwitches(Config(), threads: o.threads)
        try Runtime.selectConvBackend(o.convBackend)
        let kem = o.model == "kem-swin_s"
        // KEM-R is the NYUD 2-task model (seg + depth) with the Swin-S frozen.
        let tasks: [(name: String, channels: Int)] = kem ? [("seg", 13), ("depth", 1)] : [("seg", 13), ("depth", 1), ("normals", 3)]
        let spec: ModelSpec
        switch o.model {
        case "kem-swin_s":
            guard BenchOptions.kemMixers.contains(o.kemMixer) else {
                throw MTLError("--kem-mixer: expected \(BenchOptions.kemMixers.joined(separator: " | ")), found \(o.kemMixer)")
            }
            var k = KEMOptions()
            k.mixer = o.kemMixer == "skem" ? "memory" : o.kemMixer
            k.stable = o.kemMixer == "skem"
            spec = ModelSpec(encoder: "swin_s", width: o.width, outputStride: 4, decoder: "kem", headChannels: 256, tasks: tasks, kem: k)
        case "resnet50-deeplab":
            spec = ModelSpec(encoder: "resnet50", width: o.width, outputStride: 8, decoder: "deeplab",
                             headChannels: o.headChannels, tasks: tasks)
        case "hrnet18s-baseline":
            spec = ModelSpec(encoder: "hrnet18s", width: o.width, outputStride: 8, decoder: "multiscale", headChannels: 270,
                             tasks: tasks)
        case "swin_t-baseline":
            spec = ModelSpec(encoder: "swin_t", width: o.width, outputStride: 8, decoder: "multiscale", headChannels: o.headChannels,
                             tasks: tasks)
        case "mtcp-swin_t":
            // Swin-T + FPN-lite + the paper-size MT-CP decoder (d = 256), NYUD's three tasks.
            var m = MTCPOptions()
            m.cfmStride = o.cfmStride
            try MTCPDecoder.validate(m, tasks: tasks.count)
            var s = ModelSpec(encoder: "swin_t", width: o.width, outputStride: 4, decoder: "mtcp", headChannels: 256, tasks: tasks)
            s.mtcp = m
            spec = s
        case "tif-hrnet18":
            spec = ModelSpec(encoder: "hrnet18s", width: o.width, outputStride: 8, decoder: "tif", headChannels: 0, tasks: tasks)
        default:
            spec = ModelSpec(encoder: "bench", width: o.width, outputStride: 8, decoder: "bench", headChannels: 64, tasks: tasks)
        }
        let model = try MultiTaskModel(spec, seed: 0)
        if kem { model.freezeEncoder() }
        let names = tasks.map { $0.name }
        let roles: [TaskRole] = [.primary] + Array(repeating: .auxiliary, count: names.count - 1)
        let method = try makeMethod(name: o.method, taskNames: names, roles: roles, params: [:])
        // torch_ref runs PCGrad on the shared parameters and IAL on the representation.
        let level: GradientLevel = o.method == "pcgrad" && !kem ? .parameters : .representation
        let adam = Adam(model.parameters.filter { $0.trainable }, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, decoupled: false)
        let engine = StepEngine(model: model, losses: try ["ce", "l1", "cosine"].prefix(names.count).map { try TaskLoss(kind: $0) },
                                lossWeights: names.map { _ in 1 }, roles: roles, method: method, level: level,
                                optimizer: adam, comm: SingleProcessCommunicator(), seed: 0, skipNonFinite: true,
                                sync: syncOptions)
        let batch = randomBatch(o)
        // Auto-λ: the look-ahead (virtual step, primary gradient on a second batch, two forwards) before each step.
        let autol = (method as? AutoLambda).map {
            AutoLambdaStep(method: $0, network: ModelLookahead(engine: engine), optimizer: adam, comm: SingleProcessCommunicator())
        }
        let valBatch = autol == nil ? batch : randomBatch(o, seed: 1)
        var last: StepStats?
        func step(_ s: Int) throws {
            try autol?.updateWeights(batch: batch, valBatch: valBatch, lr: 1e-4)
            last = try engine.step(batch: batch, stepIndex: s, epoch: 0, epochEnded: false, lr: 1e-4)
        }
        for s in 0..<o.warmup { try step(s) }
        FlopCounter.reset()
        FlopCounter.enabled = true
        try step(o.warmup)
        FlopCounter.enabled = false
        // Convolutions as counted per layer, and every other GEMM as executed (forward and backward).
        var flops = FlopCounter.forwardFlops + FlopCounter.backwardFlops + FlopCounter.gemmFlops
        if autol != nil {
            // The look-ahead's two loss-only forwards (θ ± ε·d) have no backward, but the convolution
            // counter books one for every forward: take it out.
            let before = FlopCounter.backwardFlops
            FlopCounter.backwardFlops = 0
            FlopCounter.enabled = true
            _ = try ModelLookahead(engine: engine).localLossSums(batch: batch)
            FlopCounter.enabled = false
            flops -= 2 * FlopCounter.backwardFlops
            FlopCounter.backwardFlops = before
        }
        if level == .parameters {
            // The encoder's backward runs once per task: count the extra passes of its convolutions (its
            // other GEMMs were counted as they ran).
            flops += Double(names.count - 1) * FlopCounter.backwardFlops * encoderShare(model, o)
        }
        var times: [Double] = []
        ConvProfile.reset()
        ConvProfile.enabled = o.profile
        defer { ConvProfile.enabled = false }
        for s in 0..<o.steps {
            let t = Date()
            try step(o.warmup + 1 + s)
            times.append(Date().timeIntervalSince(t) * 1000)
        }
        times.sort()
        let median = times.count % 2 == 1 ? times[times.count / 2] : 0.5 * (times[times.count / 2 - 1] + times[times.count / 2])
        let peak = sgemmPeak()
        let gflops = flops / 1e9 / (median / 1000)
        var result = BenchResult(options: o, msPerStepMedian: median, msPerStepMin: times.first ?? 0,
                                 gflopPerStep: flops / 1e9, gflops: gflops, sgemmPeakGflops: peak,
                                 peakFraction: gflops / peak, peakRSSMB: peakRSSMB(),
                                 parameters: model.parameterCount,
                                 trainableParameters: model.parameters.filter { $0.trainable }.reduce(0) { $0 + $1.value.count },
                                 convProfile: o.profile ? ConvProfile.report(steps: o.steps) : nil)
        result.lastLosses = last?.losses ?? []
        result.lastGradNorm = last?.gradNorm ?? 0
        result.parameterHash = parameterHash(model.parameters)
        return result
    }

    /// FNV-1a over the bit patterns of all parameter values, in parameter order.
    static func parameterHash(_ parameters: [Parameter]) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for p in parameters {
            let v = p.value.data
            for i in 0..<p.value.count { h = (h ^ UInt64(v[i].bitPattern)) &* 0x0000_0100_0000_01b3 }
        }
        return h
    }

    /// Fraction of backward FLOPs that belong to the encoder (measured by counting an encoder-only pass).
    static func encoderShare(_ model: MultiTaskModel, _ o: BenchOptions) -> Double {
        let x = Tensor([o.batch, 3, o.height, o.wide])
        let before = FlopCounter.backwardFlops
        FlopCounter.backwardFlops = 0
        FlopCounter.enabled = true
        _ = model.encoder.forward(x)
        FlopCounter.enabled = false
        let enc = FlopCounter.backwardFlops
        FlopCounter.backwardFlops = before
        return before > 0 ? enc / before : 0
    }
}
