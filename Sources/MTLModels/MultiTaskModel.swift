import MTLCore
import MTLNN

/// What to build: a shared encoder and one head per task.
public struct ModelSpec: Sendable, Equatable {
    public var encoder: String            // resnet18 | resnet34 | resnet50 | resnet101 | bench | hrnet18s | hrnet18 | swin_t | swin_s | swin_b
    public var width: Int                 // ResNet base width (64 = torchvision); HRNets have their official widths
    public var outputStride: Int          // 8 | 16 (ResNet)
    public var head: String               // deeplab | bench (one scale) | multiscale | tif (four scales) | kem (joint, 4 scales)
    public var headChannels: Int          // ASPP channels (deeplab), branch channels (bench), hidden width (multiscale)
    public var fuseUpsample: FuseUpsample // HRNet fuse: bilinear (mmseg) | nearest (timm)
    public var tasks: [(name: String, channels: Int)]
    public var swin = SwinOptions()         // model.swin.*, model.drop_path_rate (Swin encoders)
    /// TIF-R's switches (head tif only).
    public var tif = TIFOptions()
    public var kem: KEMOptions            // model.head kem: the KEM decoder's settings
    public var mtcp = MTCPOptions()       // model.head mtcp: the MT-CP decoder's settings

    public static let encoders = ["resnet18", "resnet34", "resnet50", "resnet101", "bench", "hrnet18s", "hrnet18",
                                  "swin_t", "swin_s", "swin_b"]
    public static let heads = ["deeplab", "bench", "multiscale", "tif", "kem", "mtcp"]

    public init(encoder: String, width: Int, outputStride: Int, head: String, headChannels: Int,
                fuseUpsample: FuseUpsample = .bilinear, tasks: [(name: String, channels: Int)],
                tif: TIFOptions = TIFOptions(), kem: KEMOptions = KEMOptions()) {
        self.encoder = encoder
        self.width = width
        self.outputStride = outputStride
        self.head = head
        self.headChannels = headChannels
        self.fuseUpsample = fuseUpsample
        self.tasks = tasks
        self.tif = tif
        self.kem = kem
    }

    public static func == (a: ModelSpec, b: ModelSpec) -> Bool {
        a.encoder == b.encoder && a.width == b.width && a.outputStride == b.outputStride && a.head == b.head
            && a.headChannels == b.headChannels && a.fuseUpsample == b.fuseUpsample && a.swin == b.swin
            && a.tasks.map { $0.name } == b.tasks.map { $0.name }
            && a.tasks.map { $0.channels } == b.tasks.map { $0.channels } && a.tif == b.tif && a.kem == b.kem && a.mtcp == b.mtcp
    }
}

/// Shared encoder + decoder (per-task heads or a joint decoder). Parameters are named `encoder.*`
/// and `heads.<task>.*` (per-task heads) or `decoder.*`. The trainer drives the pieces separately
/// (MTLEngine's TaskPass: encoder forward, decoder forward, per-task losses and backwards, one
/// encoder backward with the combined ∂L/∂Features), which is where multi-task methods plug in.
public final class MultiTaskModel: HasParameters {
    public let spec: ModelSpec
    public let encoder: any FeatureEncoder
    public let decoder: any Decoder
    public let taskNames: [String]

    /// The per-task heads of a separable decoder (empty for a joint decoder).
    public var heads: [TaskHead] { (decoder as? PerTaskHeads)?.heads ?? [] }

    /// A model from already built components (joint decoders, tests).
    public init(spec: ModelSpec, encoder: any FeatureEncoder, decoder: any Decoder) {
        precondition(decoder.taskCount == spec.tasks.count, "MultiTaskModel: decoder has \(decoder.taskCount) tasks, spec \(spec.tasks.count)")
        self.spec = spec
        self.encoder = encoder
        self.decoder = decoder
        taskNames = spec.tasks.map { $0.name }
    }

    public init(_ spec: ModelSpec, seed: UInt64) throws {
        self.spec = spec
        var rng = Philox(seed: seed, stream: RNGStream.initialization.rawValue)
        var depth = ResNetEncoder.Depth.r18
        var style = DilationStyle.resnetDilated
        var hrnet: HRNetEncoder.Architecture? = nil
        let swin = SwinVariant.named(spec.encoder)
        switch spec.encoder {
        case "resnet18": depth = .r18
        case "resnet34": depth = .r34
        case "resnet50": depth = .r50
        case "resnet101": depth = .r101
        case "bench": depth = .r18; style = .bench
        case "hrnet18s": hrnet = .w18Small
        case "hrnet18": hrnet = .w18
        case _ where swin != nil: break
        default: throw MTLError("model.encoder: expected \(ModelSpec.encoders.joined(separator: "|")), found '\(spec.encoder)'")
        }
        let built: any FeatureEncoder
        if let hrnet {
            built = HRNetEncoder(hrnet, fuse: spec.fuseUpsample, prefix: "encoder", rng: &rng)
        } else if let swin {
            built = SwinEncoder(swin, options: spec.swin, prefix: "encoder", rng: &rng)
        } else {
            guard spec.outputStride == 8 || spec.outputStride == 16 else {
                throw MTLError("model.output_stride: expected 8 or 16, found \(spec.outputStride)")
            }
            guard spec.width >= 1 else { throw MTLError("model.width: expected >= 1, found \(spec.width)") }
            built = ResNetEncoder(depth: depth, width: spec.width, outputStride: spec.outputStride, style: style,
                                    prefix: "encoder", rng: &rng)
        }
        if spec.head == "tif" {
            // TIF: the shared SAFF neck joins the encoder (its outputs are the methods' z); per-task
            // SFD / LTHD / fusion / heads are separable TaskHeads. Parameters `decoder.*` as the reference.
            guard built.featureChannels.count == 4 else {
                throw MTLError("model.head: tif needs a four-scale encoder (hrnet18s|hrnet18|swin_t|swin_s|swin_b), found model.encoder \(spec.encoder) with \(built.featureChannels.count) scale(s)")
            }
            let tif = TIFEncoder(backbone: built, options: spec.tif, rng: &rng)
            encoder = tif
            decoder = PerTaskHeads(spec.tasks.map { t in
                TIFHead(task: t.name, widths: tif.featureChannels, tasks: spec.tasks.count, outChannels: t.channels,
                        options: spec.tif, rng: &rng)
            })
            taskNames = spec.tasks.map { $0.name }
            return
        }
        if spec.head == "mtcp" {
            // MT-CP: the FPN-lite neck joins the encoder (its output is z, SEED §5.1); the joint decoder follows.
            guard built.featureChannels.count >= 2 else {
                throw MTLError("model.head: mtcp needs a multi-scale encoder for its FPN-lite neck (swin_*|hrnet*), found model.encoder \(spec.encoder) with \(built.featureChannels.count) scale(s)")
            }
            try MTCPDecoder.validate(spec.mtcp, tasks: spec.tasks.count)
            let neck = MTCPEncoder(backbone: built, dim: spec.mtcp.neckDim, rng: &rng)
            encoder = neck
            decoder = MTCPDecoder(tasks: spec.tasks, inChannels: neck.featureChannels[0], options: spec.mtcp, rng: &rng)
            taskNames = spec.tasks.map { $0.name }
            return
        }
        encoder = built
        let channels = built.featureChannels
        if spec.head == "kem" {
            guard channels.count == 4 else {
                throw MTLError("model.head: kem reads scales 1–3 of a 4-scale encoder (swin_*, hrnet*), model.encoder \(spec.encoder) gives \(channels.count)")
            }
            try KEMDecoder.validate(spec.kem, tasks: spec.tasks.count)
            decoder = KEMDecoder(tasks: spec.tasks, inChannels: channels, options: spec.kem, rng: &rng)
            taskNames = spec.tasks.map { $0.name }
            return
        }
        if spec.head != "multiscale" && channels.count != 1 {
            throw MTLError("model.head: \(spec.head) reads one feature scale, model.encoder \(spec.encoder) gives \(channels.count) (use model.head: multiscale)")
        }
        var heads: [TaskHead] = []
        for t in spec.tasks {
            let prefix = "heads.\(t.name)"
            switch spec.head {
            case "deeplab":
                let rates = spec.outputStride == 8 ? [12, 24, 36] : [6, 12, 18]
                heads.append(DeepLabHead(prefix, inChannels: channels[0], outChannels: t.channels,
                                         channels: spec.headChannels, rates: rates, rng: &rng))
            case "bench":
                heads.append(BenchHead(prefix, inChannels: channels[0], outChannels: t.channels,
                                       channels: spec.headChannels, rng: &rng))
            case "multiscale":
                heads.append(MultiScaleHead(prefix, inChannels: channels, outChannels: t.channels,
                                            channels: spec.headChannels, rng: &rng))
            default: throw MTLError("model.head: expected \(ModelSpec.heads.joined(separator: "|")), found '\(spec.head)'")
            }
        }
        decoder = PerTaskHeads(heads)
        taskNames = spec.tasks.map { $0.name }
    }

    public var parameters: [Parameter] { encoder.parameters + decoder.parameters }
    public var buffers: [Buffer] { encoder.buffers + decoder.buffers }
    public var batchNorms: [BatchNorm2d] { encoder.batchNorms + decoder.batchNorms }

    /// A frozen encoder runs forward only, in eval mode, and is never updated: its parameters are
    /// not trainable, the step runs no encoder backward, and methods see only the decoder's
    /// shared parameters at parameter level.
    public private(set) var encoderFrozen = false

    public func freezeEncoder() {
        encoderFrozen = true
        for p in encoder.parameters { p.trainable = false }
        for bn in encoder.batchNorms { bn.training = false }
    }

    /// Train mode (batch statistics) or eval mode (running statistics) for every BatchNorm (a
    /// frozen encoder's stay in eval mode).
    public func setTraining(_ training: Bool) {
        for bn in decoder.batchNorms { bn.training = training }
        for bn in encoder.batchNorms { bn.training = training && !encoderFrozen }
        (encoder as? StochasticEncoder)?.training = training && !encoderFrozen
    }

    /// SyncBN: every BatchNorm sums its statistics across ranks through `reducer` (nil = local BN).
    public func setStatsReducer(_ reducer: SumReducer?) { for bn in batchNorms { bn.reducer = reducer } }

    /// Named state (parameters then buffers) in PyTorch state_dict naming.
    public func stateTensors() -> [(String, Tensor)] {
        parameters.map { ($0.name, $0.value) } + buffers.map { ($0.name, $0.value) }
    }

    /// Loads named tensors; every model tensor must be present with the same shape unless `allowMissing`
    /// names a prefix that may be absent (e.g. heads when importing a pretrained encoder).
    public func load(_ tensors: [String: Tensor], source: String, only prefix: String? = nil) throws {
        for (name, t) in stateTensors() {
            if let prefix, !name.hasPrefix(prefix) { continue }
            guard let src = tensors[name] else { throw MTLError("\(source): missing tensor \(name) (expected shape \(t.shape))") }
            guard src.shape == t.shape || (src.count == t.count && t.shape.count == 0) || (src.count == 1 && t.count == 1) else {
                throw MTLError("\(source): tensor \(name): expected shape \(t.shape), found \(src.shape)")
            }
            t.data.update(from: src.data, count: t.count)
        }
    }
}
