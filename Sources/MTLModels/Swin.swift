import MTLCore
import MTLNN

/// Swin Transformer backbones for dense prediction (Liu et al. 2021), with the parameter names of
/// the official checkpoints (`patch_embed.proj`, `layers.{i}.blocks.{j}.…`, `layers.{i}.downsample`
/// at the end of stages 0–2, `norm{i}` on the four outputs).
public struct SwinVariant: Sendable, Equatable {
    public var embedDim: Int
    public var depths: [Int]
    public var heads: [Int]
    public var window = 7

    public static let tiny = SwinVariant(embedDim: 96, depths: [2, 2, 6, 2], heads: [3, 6, 12, 24])
    public static let small = SwinVariant(embedDim: 96, depths: [2, 2, 18, 2], heads: [3, 6, 12, 24])
    public static let base = SwinVariant(embedDim: 128, depths: [2, 2, 18, 2], heads: [4, 8, 16, 32])

    public static func named(_ name: String) -> SwinVariant? {
        ["swin_t": tiny, "swin_s": small, "swin_b": base][name]
    }
}

/// The options of `model.swin` and `model.drop_path_rate`.
public struct SwinOptions: Sendable, Equatable {
    /// dense: the dense-prediction code (pad then roll, shift in every odd block); classification:
    /// timm's / the official classification code (roll then pad, no shift in a stage whose smaller
    /// side is at most the window — stage 4 at 224²).
    public enum ShiftRule: String, Sendable, CaseIterable { case dense, classification }
    public var window: Int
    public var shiftRule: ShiftRule
    /// Stochastic depth of the last block; block i of n has rate · i / (n − 1) (timm's linspace).
    public var dropPathRate: Float

    public init(window: Int = 7, shiftRule: ShiftRule = .dense, dropPathRate: Float = 0) {
        self.window = window
        self.shiftRule = shiftRule
        self.dropPathRate = dropPathRate
    }

    /// timm: torch.linspace(0, rate, Σdepths) (float32 arithmetic as torch's CPU kernel does it).
    public static func dropPathRates(_ rate: Float, blocks n: Int) -> [Float] {
        guard n > 1 else { return [Float](repeating: 0, count: n) }
        let step = (rate - 0) / Float(n - 1), half = n / 2
        return (0..<n).map { i in i < half ? 0 + step * Float(i) : rate - step * Float(n - 1 - i) }
    }
}

/// PatchEmbed: the image padded with zeros to multiples of 4 (bottom, right), a 4×4 stride-4
/// convolution with bias, tokens, LayerNorm.
public final class PatchEmbed: HasParameters {
    public let proj: Conv2d
    public let norm: LayerNorm
    private let toTokens = ToTokens()
    private let padded = Tensor([0]), empty = Tensor([0])
    public var parameters: [Parameter] { proj.parameters + norm.parameters }
    private(set) var outputHeight = 0, outputWidth = 0

    public init(_ name: String, channels: Int, rng: inout Philox) {
        proj = Conv2d("\(name).proj", inChannels: 3, outChannels: channels, kernel: 4, stride: 4, bias: true, rng: &rng)
        norm = LayerNorm("\(name).norm", features: channels)
    }

    /// image [B, 3, H, W] → tokens [B, ⌈H/4⌉·⌈W/4⌉, C].
    public func forward(_ x: Tensor) -> Tensor {
        let (b, c, h, w) = (x.n, x.c, x.h, x.w)
        let hp = (h + 3) / 4 * 4, wp = (w + 3) / 4 * 4
        imageSize = (h, w)
        var input = x
        if hp != h || wp != w {
            padded.resize([b, c, hp, wp])
            padded.zero()
            for q in 0..<(b * c) {
                for y in 0..<h { (padded.data + (q * hp + y) * wp).update(from: x.data + (q * h + y) * w, count: w) }
            }
            input = padded
        }
        outputHeight = hp / 4
        outputWidth = wp / 4
        return norm.forward(toTokens.forward(proj.forward(input)))
    }

    private var imageSize = (0, 0)
    private let imageGrad = Tensor([0])

    /// Parameter gradients; the image gradient [B, 3, H, W] only when `imageGradient` (for the
    /// reference cross-checks; training needs none).
    @discardableResult
    public func backward(_ dy: Tensor, imageGradient: Bool = false) -> Tensor? {
        let dp = proj.backward(toTokens.backward(norm.backward(dy)), computeInputGrad: imageGradient)
        guard imageGradient else { return nil }
        let (h, w) = imageSize, (hp, wp) = (dp.h, dp.w)
        if (h, w) == (hp, wp) { return dp }
        imageGrad.resize([dp.n, dp.c, h, w])
        for q in 0..<(dp.n * dp.c) {
            for y in 0..<h { (imageGrad.data + (q * h + y) * w).update(from: dp.data + (q * hp + y) * wp, count: w) }
        }
        return imageGrad
    }
}

/// PatchMerging: the map padded to even sizes, the 2×2 neighbourhood concatenated in the order
/// (0,0), (1,0), (0,1), (1,1) (row offset first), LayerNorm(4C), Linear(4C → 2C, no bias).
public final class PatchMerging: HasParameters {
    public let norm: LayerNorm
    public let reduction: Linear
    public let channels: Int
    private let merged = Tensor([0]), inputGrad = Tensor([0])
    private var size = (0, 0)
    public var parameters: [Parameter] { norm.parameters + reduction.parameters }

    public init(_ name: String, channels: Int, rng: inout Philox) {
        self.channels = channels
        norm = LayerNorm("\(name).norm", features: 4 * channels)
        reduction = Linear("\(name).reduction", inFeatures: 4 * channels, outFeatures: 2 * channels, bias: false, rng: &rng)
    }

    /// tokens [B, H·W, C] → [B, ⌈H/2⌉·⌈W/2⌉, 2C].
    public func forward(_ x: Tensor, height h: Int, width w: Int) -> Tensor {
        let b = x.shape[0], c = channels, ho = (h + 1) / 2, wo = (w + 1) / 2
        size = (h, w)
        merged.resize([b, ho * wo, 4 * c])
        let src = x.data, dst = merged.data
        parallelFor(b * ho) { q in
            let s = q / ho, i = q % ho
            for j in 0..<wo {
                let out = dst + ((s * ho + i) * wo + j) * 4 * c
                for (k, (dy, dx)) in [(0, 0), (1, 0), (0, 1), (1, 1)].enumerated() {
                    let y = 2 * i + dy, xx = 2 * j + dx
                    if y < h && xx < w { (out + k * c).update(from: src + ((s * h + y) * w + xx) * c, count: c) }
                    else { (out + k * c).update(repeating: 0, count: c) }
                }
            }
        }
        return reduction.forward(norm.forward(merged))
    }

    public func backward(_ dy: Tensor) -> Tensor {
        let dm = norm.backward(reduction.backward(dy))
        let (h, w) = size, b = dy.shape[0], c = channels, ho = (h + 1) / 2, wo = (w + 1) / 2
        inputGrad.resize([b, h * w, c])
        let src = dm.data, dst = inputGrad.data
        parallelFor(b * ho) { q in
            let s = q / ho, i = q % ho
            for j in 0..<wo {
                let from = src + ((s * ho + i) * wo + j) * 4 * c
                for (k, (dy, dx)) in [(0, 0), (1, 0), (0, 1), (1, 1)].enumerated() {
                    let y = 2 * i + dy, xx = 2 * j + dx
                    if y < h && xx < w { (dst + ((s * h + y) * w + xx) * c).update(from: from + k * c, count: c) }
                }
            }
        }
        return inputGrad
    }
}

/// The Swin backbone: PatchEmbed, four stages of Swin blocks (shift ⌊ws/2⌋ in every second block),
/// PatchMerging after stages 0–2, and LayerNorm `norm{i}` on each stage's output, returned as NCHW
/// maps at strides 4, 8, 16, 32 (channels C, 2C, 4C, 8C).
public final class SwinEncoder: FeatureEncoder, StochasticEncoder, ForwardOnlyEncoder {
    public let variant: SwinVariant
    public let options: SwinOptions
    public let patchEmbed: PatchEmbed
    public let blocks: [[SwinBlock]]
    public let downsample: [PatchMerging]
    public let outputNorms: [LayerNorm]
    private let toMaps: [FromTokensResizable]
    private var sizes: [(Int, Int)] = []
    private let stageGrad = Tensor([0])
    /// Cross-checks: `backward` also computes ∂L/∂image into `imageGradient`.
    public var computeImageGradient = false
    public private(set) var imageGradient: Tensor?
    /// The last stage's tokens [B, h·w, 8C] before norm3 (what the classification head reads).
    public private(set) var lastStageTokens: Tensor?

    public var featureChannels: [Int] { (0..<4).map { variant.embedDim << $0 } }
    public var featureStrides: [Int] { [4, 8, 16, 32] }
    public var parameters: [Parameter] {
        patchEmbed.parameters + (0..<4).flatMap { i in
            blocks[i].flatMap { $0.parameters } + (i < 3 ? downsample[i].parameters : [])
        } + outputNorms.flatMap { $0.parameters }
    }

    /// `options.shiftRule` .dense: maps that the window does not divide are padded, then rolled, and
    /// every odd block shifts (the dense-prediction code); .classification: timm's roll then pad,
    /// and no shift where one window covers the map. `options.window` replaces `variant.window`.
    /// `prefix` ("encoder" in a MultiTaskModel) goes before every parameter name.
    public convenience init(_ variant: SwinVariant, options: SwinOptions? = nil, prefix: String = "", seed: UInt64 = 0) {
        var rng = Philox(seed: seed, stream: RNGStream.initialization.rawValue)
        self.init(variant, options: options, prefix: prefix, rng: &rng)
    }

    public init(_ variant: SwinVariant, options: SwinOptions? = nil, prefix: String, rng: inout Philox) {
        var variant = variant
        let options = options ?? SwinOptions(window: variant.window)
        variant.window = options.window
        self.variant = variant
        self.options = options
        let p = prefix.isEmpty ? "" : prefix + "."
        let order: WindowPartition.Order = options.shiftRule == .dense ? .padThenRoll : .rollThenPad
        let rates = SwinOptions.dropPathRates(options.dropPathRate, blocks: variant.depths.reduce(0, +))
        patchEmbed = PatchEmbed("\(p)patch_embed", channels: variant.embedDim, rng: &rng)
        var stages: [[SwinBlock]] = [], merges: [PatchMerging] = []
        var blockID = 0
        for i in 0..<4 {
            let dim = variant.embedDim << i
            stages.append((0..<variant.depths[i]).map { j in
                defer { blockID += 1 }
                let block = SwinBlock("\(p)layers.\(i).blocks.\(j)", dim: dim, heads: variant.heads[i], window: variant.window,
                                      shift: j % 2 == 1 ? variant.window / 2 : 0, order: order,
                                      dropPath: rates[blockID], blockID: blockID, rng: &rng)
                block.noShiftWhenOneWindow = options.shiftRule == .classification
                return block
            })
            if i < 3 { merges.append(PatchMerging("\(p)layers.\(i).downsample", channels: dim, rng: &rng)) }
        }
        // The blocks run one at a time, forward and backward: one workspace for all of them (the
        // stage-0 size) instead of one each — see SwinBlockWorkspace.
        let workspace = SwinBlockWorkspace()
        for stage in stages { for block in stage { block.workspace = workspace } }
        blocks = stages
        downsample = merges
        outputNorms = (0..<4).map { LayerNorm("\(p)norm\($0)", features: variant.embedDim << $0) }
        toMaps = (0..<4).map { _ in FromTokensResizable() }
    }

    /// Forward only (a frozen encoder): the blocks keep nothing for a backward, which refuses.
    public var forwardOnly = false {
        didSet { for stage in blocks { for b in stage { b.forwardOnly = forwardOnly } } }
    }

    /// Eval mode (false): DropPath is the identity.
    public var training: Bool {
        get { blocks[0][0].training }
        set { for stage in blocks { for b in stage { b.training = newValue } } }
    }

    /// The DropPath draws of the next forward (see `DropPath`).
    public func prepareStep(seed: UInt64, step: Int, sampleIndices: [Int]) {
        for stage in blocks { for b in stage { b.prepareDropPath(seed: seed, step: step, sampleIndices: sampleIndices) } }
    }

    public func forward(_ x: Tensor) -> [Tensor] {
        var t = patchEmbed.forward(x)
        var (h, w) = (patchEmbed.outputHeight, patchEmbed.outputWidth)
        sizes = []
        var features: [Tensor] = []
        for i in 0..<4 {
            for block in blocks[i] { t = block.forward(t, height: h, width: w) }
            sizes.append((h, w))
            if i == 3 { lastStageTokens = t }
            features.append(toMaps[i].forward(outputNorms[i].forward(t, forBackward: !forwardOnly), height: h, width: w))
            if i < 3 {
                t = downsample[i].forward(t, height: h, width: w)
                (h, w) = ((h + 1) / 2, (w + 1) / 2)
            }
        }
        return features
    }

    public var batchNorms: [BatchNorm2d] { [] }

    /// Stage 3 (with norm3) first, then each lower stage with its norm and PatchMerging, then
    /// stage 0 with the patch embedding: the order in which `backward` finishes them.
    public var parameterGroupsInBackwardOrder: [[Parameter]] {
        (0..<4).reversed().map { i in
            var g = outputNorms[i].parameters + blocks[i].flatMap { $0.parameters }
            if i < 3 { g += downsample[i].parameters }
            if i == 0 { g += patchEmbed.parameters }
            return g
        }
    }

    /// Parameter gradients from one gradient per output map (the image gradient is not computed).
    public func backward(_ dFeatures: Features, groupDone: ((Int) -> Void)?) {
        precondition(dFeatures.count == 4, "Swin: expected 4 feature gradients, got \(dFeatures.count)")
        precondition(!forwardOnly, "Swin: backward of a forward-only (frozen) encoder")
        var dt: Tensor? = nil
        for i in stride(from: 3, through: 0, by: -1) {
            let dOut = outputNorms[i].backward(toMaps[i].backward(dFeatures[i]))
            var g = dOut
            if let dNext = dt {
                // The stage output feeds both norm{i} and the next stage's PatchMerging.
                let fromMerge = downsample[i].backward(dNext)
                stageGrad.resize(dOut.shape)
                let a = dOut.data, b = fromMerge.data, s = stageGrad.data
                for k in 0..<dOut.count { s[k] = a[k] + b[k] }
                g = stageGrad
            }
            for block in blocks[i].reversed() { g = block.backward(g) }
            dt = g
            if i > 0 { groupDone?(3 - i) }
        }
        imageGradient = patchEmbed.backward(dt!, imageGradient: computeImageGradient)
        groupDone?(3)
    }
}

/// tokens [B, H·W, C] → NCHW for a size known only at forward time.
final class FromTokensResizable {
    private let output = Tensor([0]), inputGrad = Tensor([0])
    private var size = (0, 0)

    func forward(_ x: Tensor, height h: Int, width w: Int) -> Tensor {
        size = (h, w)
        let (b, c) = (x.shape[0], x.shape[2])
        output.resize([b, c, h, w])
        tokensToMaps(x.data, output.data, b: b, c: c, pixels: h * w)
        return output
    }

    func backward(_ dy: Tensor) -> Tensor {
        inputGrad.resize([dy.n, size.0 * size.1, dy.c])
        mapsToTokens(dy.data, inputGrad.data, b: dy.n, c: dy.c, pixels: size.0 * size.1)
        return inputGrad
    }
}

/// The classification code's head on the last stage (official `norm`, `head`; timm `norm`,
/// `head.fc`): LayerNorm(8C), the mean over tokens, Linear(8C → classes). Not part of the dense
/// encoder; it exists for the parameter count of the classification model (Swin-T 28,288,354)
/// and the logits cross-check against timm. Forward only.
public final class SwinClassificationHead: HasParameters {
    public let norm: LayerNorm
    public let head: Linear
    private let pooled = Tensor([0])
    public var parameters: [Parameter] { norm.parameters + head.parameters }

    public init(channels: Int, classes: Int = 1000, prefix: String = "", rng: inout Philox) {
        let p = prefix.isEmpty ? "" : prefix + "."
        norm = LayerNorm("\(p)norm", features: channels)
        head = Linear("\(p)head", inFeatures: channels, outFeatures: classes, rng: &rng)
    }

    /// tokens [B, L, C] of the last stage → logits [B, classes].
    public func forward(_ tokens: Tensor) -> Tensor {
        let t = norm.forward(tokens)
        let (b, l, c) = (t.shape[0], t.shape[1], t.shape[2])
        pooled.resize([b, 1, c])
        for s in 0..<b {
            for k in 0..<c {
                var sum = 0.0
                for i in 0..<l { sum += Double(t.data[(s * l + i) * c + k]) }
                pooled.data[s * c + k] = Float(sum / Double(l))
            }
        }
        let y = head.forward(pooled)
        return Tensor([b, y.shape[2]], y.array)
    }
}
