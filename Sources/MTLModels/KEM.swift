import Foundation
import MTLCore
import MTLNN

/// The `model.kem.*` settings (docs/ARCHITECTURE.md "KEM"; the reference's switches,
/// docs/ARCHITECTURES.md §2.3). Defaults are the paper's: KEM with m = 20 slots, top-k 3 over the
/// tokens (variant A, SGW's masked softmax), λ = 1, d = 256, MTFormer-T's 2-block Swin stages.
public struct KEMOptions: Sendable, Equatable {
    public var mixer = "memory"          // memory | cross_attention | none (plain MTFormer-T)
    public var dim = 256                 // decoder width d (smaller only for tests)
    public var heads = 4
    public var window = 7
    public var depth = 2                 // Swin blocks per transformer
    public var slots = 20                // m
    public var topk = 3                  // k
    public var topkVariant = "masked"    // masked (A, SGW) | renormalized (B)
    public var topkAxis = "tokens"       // tokens (top-k in Retrieve) | slots (top-k in Write)
    public var stable = false            // sKEM: the ETF scores
    public var etfRole = "tasks"         // tasks (K = T, the paper) | slots (K = m, sKEM-A)
    public var etfProjection = true      // sKEM's additional projection W_p
    public var etfSeed: UInt64 = 0       // the Philox seed of the ETF's Gaussian draw
    public var lambda = 1.0              // broadcast weight λ
    public var unusedPatchEmbed = true   // MTFormer's allocated-but-unused patch embeddings (as-in-code counts)
    public init() {}

    public static let mixers = ["memory", "cross_attention", "none"]
    public static let variants = ["masked", "renormalized"]
    public static let axes = ["tokens", "slots"]
    public static let roles = ["tasks", "slots"]
}

/// KEM-R's decoder on a 4-scale encoder (Swin-S, frozen in the paper), MTFormer-T skeleton:
///   z   = reduce(cat[X1, Bilinear(X2), Bilinear(X3)])      Conv1×1 ΣC → d (+bias), at X1's stride
///   z   = shared(z)                                        2 Swin blocks + LN
///   X_t = task_enc.<t>(z)                                   per task
///   X   = mixer(X_1 … X_T)                                  KEM / sKEM / cross-attention / none
///   Ŷ_t = Bilinear_{→H×W}(head.<t>(task_dec.<t>(X_t)))
/// Joint: `decoder.reduce`, `decoder.shared` and `decoder.kem` are read by every task's loss and are
/// the shared decoder parameters (combined with the method's coefficients like the encoder's); each
/// task owns its task_enc, task_dec, head and (cross-attention) `decoder.cross_attention.<t>`.
/// The encoder's finest scale X0 is not read: its gradient is zero.
/// The uncertainty log-variances of the reference's `decoder.log_vars` are the `uw` method's state here.
public final class KEMDecoder: Decoder {
    public let options: KEMOptions
    public let taskNames: [String]
    public let outChannels: [Int]
    public let reduce: Conv2d
    public let shared: TaskTransformer
    public let taskEncoders: [TaskTransformer], taskDecoders: [TaskTransformer]
    public let memory: KEMMemory?
    public let crossAttention: KEMCrossAttention?
    public let heads: [KEMHead]
    let resizes = [Upsample(), Upsample()]
    let concat = Concat()
    let toTokens = ToTokens()
    let toMaps: [FromTokensResizable]
    let outputs: [Upsample]
    private let zeroFeature = Tensor([0]), dz = Tensor([0])
    private var grid = (0, 0)
    private var inputShapes: [[Int]] = []

    public init(tasks: [(name: String, channels: Int)], inChannels: [Int], options o: KEMOptions, prefix: String = "decoder",
                rng: inout Philox) {
        precondition(inChannels.count == 4, "KEMDecoder reads scales 1–3 of a 4-scale encoder, got \(inChannels.count) scales")
        options = o
        taskNames = tasks.map { $0.name }
        outChannels = tasks.map { $0.channels }
        let d = o.dim, p = prefix
        reduce = Conv2d("\(p).reduce", inChannels: inChannels[1...].reduce(0, +), outChannels: d, kernel: 1, bias: true, rng: &rng)
        func transformer(_ name: String) -> TaskTransformer {
            TaskTransformer(name, dim: d, heads: o.heads, window: o.window, depth: o.depth, allocateUnused: o.unusedPatchEmbed, rng: &rng)
        }
        shared = transformer("\(p).shared")
        taskEncoders = taskNames.map { transformer("\(p).task_enc.\($0)") }
        if o.mixer == "memory" {
            let role = o.stable ? KEMMemory.ETFRole(rawValue: o.etfRole)! : nil
            let kk = role == .tasks ? tasks.count : o.slots
            let e = role.map { _ in ETF.matrix(dimension: d, classes: kk, seed: o.etfSeed) }
            memory = KEMMemory("\(p).kem", dim: d, slots: o.slots, topk: o.topk, tasks: tasks.count, lambda: Float(o.lambda),
                               variant: TopKSoftmax.Variant(rawValue: o.topkVariant)!, axis: KEMMemory.Axis(rawValue: o.topkAxis)!,
                               role: role, projection: o.etfProjection, etfMatrix: e, rng: &rng)
        } else {
            memory = nil
        }
        crossAttention = o.mixer == "cross_attention"
            ? KEMCrossAttention("\(p).cross_attention", dim: d, tasks: taskNames, lambda: Float(o.lambda), rng: &rng) : nil
        taskDecoders = taskNames.map { transformer("\(p).task_dec.\($0)") }
        heads = tasks.map { KEMHead("\(p).head.\($0.name)", kind: KEMHead.kind(task: $0.name), dim: d, outChannels: $0.channels, rng: &rng) }
        toMaps = tasks.map { _ in FromTokensResizable() }
        outputs = tasks.map { _ in Upsample() }
    }

    /// Checks the option values (the config reader validates the spellings; this the combinations).
    public static func validate(_ o: KEMOptions, tasks: Int) throws {
        func check(_ ok: Bool, _ key: String, _ expected: String, _ found: Any) throws {
            if !ok { throw MTLError("model.kem.\(key): expected \(expected), found \(found)") }
        }
        try check(KEMOptions.mixers.contains(o.mixer), "mixer", KEMOptions.mixers.joined(separator: "|"), "'\(o.mixer)'")
        try check(KEMOptions.variants.contains(o.topkVariant), "topk_variant", KEMOptions.variants.joined(separator: "|"), "'\(o.topkVariant)'")
        try check(KEMOptions.axes.contains(o.topkAxis), "topk_axis", KEMOptions.axes.joined(separator: "|"), "'\(o.topkAxis)'")
        try check(KEMOptions.roles.contains(o.etfRole), "etf_role", KEMOptions.roles.joined(separator: "|"), "'\(o.etfRole)'")
        try check(o.dim >= 1 && o.heads >= 1 && o.dim % o.heads == 0, "dim", "a positive multiple of model.kem.heads (\(o.heads))", o.dim)
        try check(o.slots >= 1, "slots", ">= 1", o.slots)
        try check(o.topk >= 1 && o.topk <= (o.topkAxis == "slots" ? o.slots : Int.max), "topk",
                  o.topkAxis == "slots" ? "1...model.kem.slots (\(o.slots))" : ">= 1", o.topk)
        try check(o.window >= 1 && o.depth >= 1, "window", "window and depth >= 1", "\(o.window), \(o.depth)")
        if o.stable && o.mixer == "memory" {
            let kk = o.etfRole == "tasks" ? tasks : o.slots
            try check(kk >= 2 && kk <= o.dim, "etf_role", "an ETF with 2 ≤ K ≤ d (\(o.etfRole): K = \(kk), d = \(o.dim))", o.etfRole)
        }
    }

    public var separable: Bool { false }
    public var sharedParameters: [Parameter] { reduce.parameters + shared.parameters + (memory?.parameters ?? []) }
    public var taskParameters: [[Parameter]] {
        taskNames.indices.map { t in
            taskEncoders[t].parameters + (crossAttention?.taskParameters(t) ?? []) + taskDecoders[t].parameters + heads[t].parameters
        }
    }
    public var batchNorms: [BatchNorm2d] { heads.flatMap { $0.batchNorms } }
    public var buffers: [Buffer] { batchNorms.flatMap { $0.buffers } + (memory?.buffers ?? []) }

    public func forward(_ features: Features, height: Int, width: Int, active: [Bool]) -> [Tensor?] {
        precondition(features.count == 4, "KEMDecoder: expected 4 feature scales, got \(features.count)")
        inputShapes = features.map { $0.shape }
        let x1 = features[1]
        let (h, w) = (x1.h, x1.w)
        grid = (h, w)
        let parts = [x1, resizes[0].forward(features[2], height: h, width: w), resizes[1].forward(features[3], height: h, width: w)]
        let z = shared.forward(toTokens.forward(conv(reduce, concat.forward(parts))), height: h, width: w)
        var xs = taskEncoders.map { $0.forward(z, height: h, width: w) }
        if let memory { xs = memory.forward(xs) } else if let crossAttention { xs = crossAttention.forward(xs) }
        // Every task is computed: a joint decoder's outputs are one computation.
        return taskNames.indices.map { t in
            let y = heads[t].forward(toMaps[t].forward(taskDecoders[t].forward(xs[t], height: h, width: w), height: h, width: w))
            return outputs[t].forward(y, height: height, width: width)
        }
    }

    public func backward(_ dPreds: [Tensor?]) -> Features {
        precondition(dPreds.count == taskNames.count, "KEMDecoder: \(dPreds.count) gradients for \(taskNames.count) tasks")
        let active = dPreds.indices.filter { dPreds[$0] != nil }
        precondition(!active.isEmpty, "KEMDecoder.backward: no task gradient")
        var dxs = [Tensor?](repeating: nil, count: taskNames.count)
        for t in active {
            dxs[t] = taskDecoders[t].backward(toMaps[t].backward(heads[t].backward(outputs[t].backward(dPreds[t]!))))
        }
        // Through the mixer every task's tokens get gradient (none: only the active tasks').
        var dMixed: [Tensor?] = dxs
        if let memory { dMixed = memory.backward(dxs) } else if let crossAttention { dMixed = crossAttention.backward(dxs) }
        var first = true
        for t in taskNames.indices {
            guard let g = dMixed[t] else { continue }
            let dt = taskEncoders[t].backward(g)
            if first { dz.copy(from: dt); first = false } else { dz.add(dt) }
        }
        let parts = concat.backward(reduce.backward(toTokens.backward(shared.backward(dz))))
        zeroFeature.resize(inputShapes[0])
        zeroFeature.zero()
        return [zeroFeature, parts[0], resizes[0].backward(parts[1]), resizes[1].backward(parts[2])]
    }
}
