import MTLCore
import MTLNN

/// What to build: a shared encoder and one head per task.
public struct ModelSpec: Sendable, Equatable {
    public var encoder: String            // resnet18 | resnet34 | resnet50 | resnet101 | bench
    public var width: Int                 // base width (64 = torchvision)
    public var outputStride: Int          // 8 | 16
    public var head: String               // deeplab | bench
    public var headChannels: Int          // ASPP channels (deeplab) or branch channels (bench)
    public var tasks: [(name: String, channels: Int)]

    public init(encoder: String, width: Int, outputStride: Int, head: String, headChannels: Int,
                tasks: [(name: String, channels: Int)]) {
        self.encoder = encoder
        self.width = width
        self.outputStride = outputStride
        self.head = head
        self.headChannels = headChannels
        self.tasks = tasks
    }

    public static func == (a: ModelSpec, b: ModelSpec) -> Bool {
        a.encoder == b.encoder && a.width == b.width && a.outputStride == b.outputStride && a.head == b.head
            && a.headChannels == b.headChannels && a.tasks.map { $0.name } == b.tasks.map { $0.name }
            && a.tasks.map { $0.channels } == b.tasks.map { $0.channels }
    }
}

/// Shared encoder + per-task heads. Parameters are named `encoder.*` and `heads.<task>.*`.
/// The trainer drives the pieces separately (encoder forward, each head forward/backward,
/// one encoder backward with the combined ∂L/∂z), which is where multi-task methods plug in.
public final class MultiTaskModel: HasParameters {
    public let spec: ModelSpec
    public let encoder: ResNetEncoder
    public let heads: [TaskHead]
    public let taskNames: [String]

    public init(_ spec: ModelSpec, seed: UInt64) throws {
        self.spec = spec
        var rng = Philox(seed: seed, stream: RNGStream.initialization.rawValue)
        let depth: ResNetEncoder.Depth
        var style = DilationStyle.resnetDilated
        switch spec.encoder {
        case "resnet18": depth = .r18
        case "resnet34": depth = .r34
        case "resnet50": depth = .r50
        case "resnet101": depth = .r101
        case "bench": depth = .r18; style = .bench
        default: throw MTLError("model.encoder: expected resnet18|resnet34|resnet50|resnet101|bench, found '\(spec.encoder)'")
        }
        guard spec.outputStride == 8 || spec.outputStride == 16 else {
            throw MTLError("model.output_stride: expected 8 or 16, found \(spec.outputStride)")
        }
        guard spec.width >= 1 else { throw MTLError("model.width: expected >= 1, found \(spec.width)") }
        encoder = ResNetEncoder(depth: depth, width: spec.width, outputStride: spec.outputStride, style: style,
                                prefix: "encoder", rng: &rng)
        var heads: [TaskHead] = []
        for t in spec.tasks {
            let prefix = "heads.\(t.name)"
            switch spec.head {
            case "deeplab":
                let rates = spec.outputStride == 8 ? [12, 24, 36] : [6, 12, 18]
                heads.append(DeepLabHead(prefix, inChannels: encoder.outChannels, outChannels: t.channels,
                                         channels: spec.headChannels, rates: rates, rng: &rng))
            case "bench":
                heads.append(BenchHead(prefix, inChannels: encoder.outChannels, outChannels: t.channels,
                                       channels: spec.headChannels, rng: &rng))
            default: throw MTLError("model.head: expected deeplab|bench, found '\(spec.head)'")
            }
        }
        self.heads = heads
        taskNames = spec.tasks.map { $0.name }
    }

    public var parameters: [Parameter] { encoder.parameters + heads.flatMap { $0.parameters } }
    public var buffers: [Buffer] { encoder.buffers + heads.flatMap { $0.buffers } }
    public var batchNorms: [BatchNorm2d] { encoder.batchNorms + heads.flatMap { $0.batchNorms } }

    /// Train mode (batch statistics) or eval mode (running statistics) for every BatchNorm.
    public func setTraining(_ training: Bool) { for bn in batchNorms { bn.training = training } }

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
