import MTLCore
import MTLNN

/// A task head: the shared Features → prediction [B, outChannels, H, W] at input resolution.
/// backward returns ∂L/∂Features for this task only, one tensor per scale (tensors the head owns;
/// copy them if you keep them).
public protocol TaskHead: HasParameters {
    var outChannels: Int { get }
    var batchNorms: [BatchNorm2d] { get }
    func forward(_ features: Features, height: Int, width: Int) -> Tensor
    func backward(_ dPred: Tensor) -> Features
}

/// The one tensor of a single-scale encoder's Features (the heads built for the dilated ResNet).
func singleScale(_ features: Features, _ head: String) -> Tensor {
    precondition(features.count == 1, "\(head) reads one feature scale, the encoder gives \(features.count)")
    return features[0]
}

/// conv → BN → ReLU, the unit ASPP is built from (torchvision names `<p>.0`, `<p>.1`).
final class ConvBNReLU {
    let conv: Conv2d, bn: BatchNorm2d, relu = ReLU()
    init(_ prefix: String, inChannels: Int, outChannels: Int, kernel: Int, dilation: Int = 1,
         convIndex: Int = 0, rng: inout Philox) {
        conv = Conv2d("\(prefix).\(convIndex)", inChannels: inChannels, outChannels: outChannels, kernel: kernel,
                      padding: kernel == 3 ? dilation : 0, dilation: dilation, rng: &rng)
        bn = BatchNorm2d("\(prefix).\(convIndex + 1)", channels: outChannels)
    }
    var parameters: [Parameter] { conv.parameters + bn.parameters }
    func forward(_ x: Tensor) -> Tensor { relu.forward(bn.forward(MTLModels.conv(conv, x))) }
    func backward(_ dy: Tensor) -> Tensor { conv.backward(bn.backward(relu.backward(dy))) }
}

/// DeepLabV3 head as in torchvision's `DeepLabHead` (used by LibMTL/MTAN for NYUv2):
/// ASPP(1×1, three atrous 3×3, image pooling) → concat → 1×1 projection → 3×3 conv-BN-ReLU → 1×1 classifier,
/// then bilinear upsampling (align_corners=False) to the input size.
/// Names follow torchvision: `0.convs.{0..4}`, `0.project.{0,1}`, `1`, `2`, `4` under `prefix`.
/// Difference from torchvision: the projection's Dropout(0.5) is not applied (deterministic steps).
public final class DeepLabHead: TaskHead {
    let branches: [ConvBNReLU]              // 1×1 and three atrous 3×3
    let poolGAP = GlobalAvgPool()
    let poolBranch: ConvBNReLU             // names `0.convs.4.1` / `0.convs.4.2` (index 0 is the pooling op)
    let poolUp = Upsample()
    let concat = Concat()
    let project: ConvBNReLU
    let conv3: ConvBNReLU                  // names `1` (conv) and `2` (BN)
    let classifier: Conv2d                 // name `4`
    let upsample = Upsample()
    public let outChannels: Int
    private let dz = Tensor([0])

    public init(_ prefix: String, inChannels: Int, outChannels: Int, channels: Int = 256,
                rates: [Int] = [12, 24, 36], rng: inout Philox) {
        let p = "\(prefix).0"
        var b: [ConvBNReLU] = [ConvBNReLU("\(p).convs.0", inChannels: inChannels, outChannels: channels, kernel: 1, rng: &rng)]
        for (i, r) in rates.enumerated() {
            b.append(ConvBNReLU("\(p).convs.\(i + 1)", inChannels: inChannels, outChannels: channels, kernel: 3,
                                dilation: r, rng: &rng))
        }
        // Each branch's dx is added into dz before the next branch's backward: one buffer for all.
        for branch in b.dropFirst() { branch.conv.shareInputGradientBuffer(with: b[0].conv) }
        branches = b
        poolBranch = ConvBNReLU("\(p).convs.\(rates.count + 1)", inChannels: inChannels, outChannels: channels,
                                kernel: 1, convIndex: 1, rng: &rng)
        project = ConvBNReLU("\(p).project", inChannels: channels * (rates.count + 2), outChannels: channels,
                             kernel: 1, rng: &rng)
        conv3 = ConvBNReLU(prefix, inChannels: channels, outChannels: channels, kernel: 3, convIndex: 1, rng: &rng)
        classifier = Conv2d("\(prefix).4", inChannels: channels, outChannels: outChannels, kernel: 1, bias: true, rng: &rng)
        self.outChannels = outChannels
    }

    public var parameters: [Parameter] {
        branches.flatMap { $0.parameters } + poolBranch.parameters + project.parameters + conv3.parameters
            + classifier.parameters
    }
    public var batchNorms: [BatchNorm2d] { branches.map { $0.bn } + [poolBranch.bn, project.bn, conv3.bn] }
    public var buffers: [Buffer] { batchNorms.flatMap { $0.buffers } }

    public func forward(_ features: Features, height: Int, width: Int) -> Tensor {
        let z = singleScale(features, "DeepLabHead")
        var outs = branches.map { $0.forward(z) }
        let pooled = poolBranch.forward(poolGAP.forward(z))
        outs.append(poolUp.forward(pooled, height: z.h, width: z.w))
        let y = conv3.forward(project.forward(concat.forward(outs)))
        return upsample.forward(conv(classifier, y), height: height, width: width)
    }

    public func backward(_ dPred: Tensor) -> Features {
        let dy = conv3.backward(classifier.backward(upsample.backward(dPred)))
        let parts = concat.backward(project.backward(dy))
        dz.copy(from: branches[0].backward(parts[0]))
        for i in 1..<branches.count { dz.add(branches[i].backward(parts[i])) }
        let dPooled = poolBranch.backward(poolUp.backward(parts[branches.count]))
        dz.add(poolGAP.backward(dPooled))
        return [dz]
    }
}

/// The light head of `../shared/bench/torch_ref.py`: three parallel 3×3 convs (C → 64, dilation 1/6/12,
/// bias, ReLU) summed, a 1×1 conv to the task's channels, bilinear upsampling to the input size.
/// Names: `branches.{0,1,2}.weight/bias`, `out.weight/bias`.
public final class BenchHead: TaskHead {
    let branches: [Conv2d]
    let relus = [ReLU(), ReLU(), ReLU()]
    let out: Conv2d
    let upsample = Upsample()
    public let outChannels: Int
    private let sum = Tensor([0])
    private let dz = Tensor([0])

    public init(_ prefix: String, inChannels: Int, outChannels: Int, channels: Int = 64, rng: inout Philox) {
        branches = [1, 6, 12].enumerated().map { i, d in
            Conv2d("\(prefix).branches.\(i)", inChannels: inChannels, outChannels: channels, kernel: 3,
                   padding: d, dilation: d, bias: true, rng: &rng)
        }
        out = Conv2d("\(prefix).out", inChannels: channels, outChannels: outChannels, kernel: 1, bias: true, rng: &rng)
        // Each branch's dx is added into dz before the next branch's backward: one buffer for all.
        for branch in branches.dropFirst() { branch.shareInputGradientBuffer(with: branches[0]) }
        self.outChannels = outChannels
    }

    public var parameters: [Parameter] { branches.flatMap { $0.parameters } + out.parameters }
    public var batchNorms: [BatchNorm2d] { [] }

    public func forward(_ features: Features, height: Int, width: Int) -> Tensor {
        let z = singleScale(features, "BenchHead")
        sum.copy(from: relus[0].forward(conv(branches[0], z)))
        for i in 1..<3 { sum.add(relus[i].forward(conv(branches[i], z))) }
        return upsample.forward(conv(out, sum), height: height, width: width)
    }

    public func backward(_ dPred: Tensor) -> Features {
        let dsum = out.backward(upsample.backward(dPred))
        dz.copy(from: branches[0].backward(relus[0].backward(dsum)))
        for i in 1..<3 { dz.add(branches[i].backward(relus[i].backward(dsum))) }
        return [dz]
    }
}

/// The multi-scale baseline head of MTI-Net / ATRC ("HRNet baseline", MTI-Net's HighResolutionHead):
/// every coarser scale resized bilinearly (align_corners=False) to the finest scale's size, all
/// scales concatenated, 1×1 conv (bias) → BN → ReLU → 1×1 classifier (bias), then bilinear
/// upsampling to the input size. MTI-Net's hidden width is the concatenation's (270 for HRNet-W18);
/// here it is `channels`. Names as MTI-Net: `last_layer.0` (conv), `last_layer.1` (BN),
/// `last_layer.3` (classifier) under `prefix`.
public final class MultiScaleHead: TaskHead {
    let resizes: [Upsample]               // scales 1..<S to the size of scale 0
    let concat = Concat()
    let conv: Conv2d, bn: BatchNorm2d, relu = ReLU()
    let classifier: Conv2d
    let upsample = Upsample()
    public let outChannels: Int

    public init(_ prefix: String, inChannels: [Int], outChannels: Int, channels: Int, rng: inout Philox) {
        precondition(!inChannels.isEmpty, "MultiScaleHead: no input scales")
        resizes = inChannels.dropFirst().map { _ in Upsample() }
        conv = Conv2d("\(prefix).last_layer.0", inChannels: inChannels.reduce(0, +), outChannels: channels, kernel: 1,
                      bias: true, rng: &rng)
        bn = BatchNorm2d("\(prefix).last_layer.1", channels: channels)
        classifier = Conv2d("\(prefix).last_layer.3", inChannels: channels, outChannels: outChannels, kernel: 1,
                            bias: true, rng: &rng)
        self.outChannels = outChannels
    }

    public var parameters: [Parameter] { conv.parameters + bn.parameters + classifier.parameters }
    public var batchNorms: [BatchNorm2d] { [bn] }
    public var buffers: [Buffer] { bn.buffers }

    public func forward(_ features: Features, height: Int, width: Int) -> Tensor {
        precondition(features.count == resizes.count + 1,
                     "MultiScaleHead: built for \(resizes.count + 1) scales, got \(features.count)")
        let finest = features[0]
        var parts = [finest]
        for s in 1..<features.count {
            parts.append(resizes[s - 1].forward(features[s], height: finest.h, width: finest.w))
        }
        let y = relu.forward(bn.forward(MTLModels.conv(conv, concat.forward(parts))))
        return upsample.forward(MTLModels.conv(classifier, y), height: height, width: width)
    }

    public func backward(_ dPred: Tensor) -> Features {
        let dy = classifier.backward(upsample.backward(dPred))
        let parts = concat.backward(conv.backward(bn.backward(relu.backward(dy))))
        return [parts[0]] + (1..<parts.count).map { resizes[$0 - 1].backward(parts[$0]) }
    }
}
