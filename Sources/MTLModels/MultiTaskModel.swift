import MTLCore
import MTLNN

/// What to build: an encoder, a neck and a decoder by their registry names (ModelRegistry), with
/// the settings they read.
public struct ModelSpec: Sendable, Equatable {
    public var encoder: String            // ModelRegistry.encoders: resnet18 … resnet101 | bench | hrnet18s | hrnet18 | swin_t | swin_s | swin_b
    public var neck: String               // ModelRegistry.necks: none | saff (TIF-R's SAFF)
    public var decoder: String            // ModelRegistry.decoders: deeplab | bench (one scale) | multiscale | tif | kem
    public var width: Int                 // ResNet base width (64 = torchvision); HRNets have their official widths
    public var outputStride: Int          // 8 | 16 (ResNet)
    public var headChannels: Int          // ASPP channels (deeplab), branch channels (bench), hidden width (multiscale)
    public var fuseUpsample: FuseUpsample // HRNet fuse: bilinear (mmseg) | nearest (timm)
    public var tasks: [(name: String, channels: Int)]
    public var swin = SwinOptions()       // model.swin.*, model.drop_path_rate (Swin encoders)
    public var tif = TIFOptions()         // model.tif.* (neck saff, decoder tif)
    public var kem: KEMOptions            // model.kem.* (decoder kem)
    public var mtcp = MTCPOptions()       // model.mtcp.* (neck fpn, decoder mtcp)

    /// `neck` nil: the decoder's own neck (saff for tif), else none.
    public init(encoder: String, width: Int, outputStride: Int, decoder: String, neck: String? = nil, headChannels: Int,
                fuseUpsample: FuseUpsample = .bilinear, tasks: [(name: String, channels: Int)],
                tif: TIFOptions = TIFOptions(), kem: KEMOptions = KEMOptions()) {
        self.encoder = encoder
        self.neck = neck ?? ModelRegistry.defaultNeck(decoder: decoder)
        self.decoder = decoder
        self.width = width
        self.outputStride = outputStride
        self.headChannels = headChannels
        self.fuseUpsample = fuseUpsample
        self.tasks = tasks
        self.tif = tif
        self.kem = kem
    }

    public static func == (a: ModelSpec, b: ModelSpec) -> Bool {
        a.encoder == b.encoder && a.neck == b.neck && a.decoder == b.decoder && a.width == b.width
            && a.outputStride == b.outputStride && a.headChannels == b.headChannels && a.fuseUpsample == b.fuseUpsample
            && a.swin == b.swin && a.tasks.map { $0.name } == b.tasks.map { $0.name }
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

    /// The encoder, neck and decoder named in `spec`, built from the registry.
    public init(_ spec: ModelSpec, seed: UInt64) throws {
        self.spec = spec
        var rng = Philox(seed: seed, stream: RNGStream.initialization.rawValue)
        let built = try ModelRegistry.build(spec, rng: &rng)
        encoder = built.encoder
        decoder = built.decoder
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
        for p in encoder.parameters { p.freezeWithoutGradient() }
        for bn in encoder.batchNorms { bn.training = false }
        (encoder as? StochasticEncoder)?.training = false
        (encoder as? ForwardOnlyEncoder)?.forwardOnly = true
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
