import MTLCore
import MTLNN

/// Runs a convolution and, when counting, records 2·N·O·Ho·Wo·I·k·k forward FLOPs.
@inline(__always)
func conv(_ c: Conv2d, _ x: Tensor) -> Tensor {
    let y = c.forward(x)
    if FlopCounter.enabled {
        let w = c.weight.value.shape
        let f = 2.0 * Double(y.count) * Double(w[1] * w[2] * w[3])
        FlopCounter.forwardFlops += f
        // dW always; dX for every conv except the stem (whose input gradient is never computed).
        FlopCounter.backwardFlops += w[1] == 3 ? f : 2 * f
    }
    return y
}

/// A residual block of either kind; the encoder runs a list of them.
protocol ResidualBlock: HasParameters {
    var outChannels: Int { get }
    var bns: [BatchNorm2d] { get }
    func forward(_ x: Tensor) -> Tensor
    func backward(_ dy: Tensor) -> Tensor
}

/// The shortcut projection (1×1 conv + BN) used when shape changes: names `downsample.0`, `downsample.1`.
final class Downsample {
    let conv: Conv2d
    let bn: BatchNorm2d
    init(_ prefix: String, inChannels: Int, outChannels: Int, stride: Int, rng: inout Philox) {
        conv = Conv2d("\(prefix).downsample.0", inChannels: inChannels, outChannels: outChannels,
                      kernel: 1, stride: stride, rng: &rng)
        bn = BatchNorm2d("\(prefix).downsample.1", channels: outChannels)
    }
    func forward(_ x: Tensor) -> Tensor { bn.forward(MTLModels.conv(conv, x)) }
    func backward(_ dy: Tensor) -> Tensor { conv.backward(bn.backward(dy)) }
}

/// torchvision's BasicBlock (ResNet-18/34): conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU.
final class BasicBlock: ResidualBlock {
    let conv1: Conv2d, bn1: BatchNorm2d, relu1 = ReLU()
    let conv2: Conv2d, bn2: BatchNorm2d
    let downsample: Downsample?
    let add = Add(), relu2 = ReLU()
    let outChannels: Int

    init(_ prefix: String, inChannels: Int, planes: Int, stride: Int, dilation1: Int, dilation2: Int, rng: inout Philox) {
        conv1 = Conv2d("\(prefix).conv1", inChannels: inChannels, outChannels: planes, kernel: 3, stride: stride,
                       padding: dilation1, dilation: dilation1, rng: &rng)
        bn1 = BatchNorm2d("\(prefix).bn1", channels: planes)
        conv2 = Conv2d("\(prefix).conv2", inChannels: planes, outChannels: planes, kernel: 3, stride: 1,
                       padding: dilation2, dilation: dilation2, rng: &rng)
        bn2 = BatchNorm2d("\(prefix).bn2", channels: planes)
        downsample = (stride != 1 || inChannels != planes)
            ? Downsample(prefix, inChannels: inChannels, outChannels: planes, stride: stride, rng: &rng) : nil
        outChannels = planes
    }

    var parameters: [Parameter] {
        conv1.parameters + bn1.parameters + conv2.parameters + bn2.parameters
            + (downsample.map { $0.conv.parameters + $0.bn.parameters } ?? [])
    }
    var buffers: [Buffer] { bn1.buffers + bn2.buffers + (downsample?.bn.buffers ?? []) }
    var bns: [BatchNorm2d] { [bn1, bn2] + (downsample.map { [$0.bn] } ?? []) }

    func forward(_ x: Tensor) -> Tensor {
        let y = relu1.forward(bn1.forward(conv(conv1, x)))
        let main = bn2.forward(conv(conv2, y))
        let shortcut = downsample?.forward(x) ?? x
        return relu2.forward(add.forward(main, shortcut))
    }

    /// The gradients between the layers live in the layers' own input-gradient buffers: ReLU and BN
    /// write over the dx of the convolution after them (nothing else reads it), and the shortcut's
    /// gradient is added into conv1's dx, which is the block's dx.
    func backward(_ dy: Tensor) -> Tensor {
        let dsum = relu2.backward(dy)   // flows unchanged into both branches of the add
        let d1 = bn1.backward(relu1.backward(conv2.backward(bn2.backward(dsum)), inPlace: true), inPlace: true)
        let dx = conv1.backward(d1)
        if let ds = downsample { dx.add(ds.backward(dsum)) } else { dx.add(dsum) }
        return dx
    }
}

/// torchvision's Bottleneck (ResNet-50/101, v1.5: stride on the 3×3): 1×1 → 3×3 → 1×1 (×4), + shortcut.
final class Bottleneck: ResidualBlock {
    let conv1: Conv2d, bn1: BatchNorm2d, relu1 = ReLU()
    let conv2: Conv2d, bn2: BatchNorm2d, relu2 = ReLU()
    let conv3: Conv2d, bn3: BatchNorm2d
    let downsample: Downsample?
    let add = Add(), relu3 = ReLU()
    let outChannels: Int

    init(_ prefix: String, inChannels: Int, planes: Int, stride: Int, dilation: Int, rng: inout Philox) {
        let out = planes * 4
        conv1 = Conv2d("\(prefix).conv1", inChannels: inChannels, outChannels: planes, kernel: 1, rng: &rng)
        bn1 = BatchNorm2d("\(prefix).bn1", channels: planes)
        conv2 = Conv2d("\(prefix).conv2", inChannels: planes, outChannels: planes, kernel: 3, stride: stride,
                       padding: dilation, dilation: dilation, rng: &rng)
        bn2 = BatchNorm2d("\(prefix).bn2", channels: planes)
        conv3 = Conv2d("\(prefix).conv3", inChannels: planes, outChannels: out, kernel: 1, rng: &rng)
        bn3 = BatchNorm2d("\(prefix).bn3", channels: out)
        downsample = (stride != 1 || inChannels != out)
            ? Downsample(prefix, inChannels: inChannels, outChannels: out, stride: stride, rng: &rng) : nil
        outChannels = out
    }

    var parameters: [Parameter] {
        conv1.parameters + bn1.parameters + conv2.parameters + bn2.parameters + conv3.parameters + bn3.parameters
            + (downsample.map { $0.conv.parameters + $0.bn.parameters } ?? [])
    }
    var buffers: [Buffer] { bn1.buffers + bn2.buffers + bn3.buffers + (downsample?.bn.buffers ?? []) }
    var bns: [BatchNorm2d] { [bn1, bn2, bn3] + (downsample.map { [$0.bn] } ?? []) }

    func forward(_ x: Tensor) -> Tensor {
        let y1 = relu1.forward(bn1.forward(conv(conv1, x)))
        let y2 = relu2.forward(bn2.forward(conv(conv2, y1)))
        let main = bn3.forward(conv(conv3, y2))
        let shortcut = downsample?.forward(x) ?? x
        return relu3.forward(add.forward(main, shortcut))
    }

    /// As BasicBlock's: ReLU and BN write over the convolutions' dx, and the block's dx is conv1's.
    func backward(_ dy: Tensor) -> Tensor {
        let dsum = relu3.backward(dy)
        let d2 = bn2.backward(relu2.backward(conv3.backward(bn3.backward(dsum)), inPlace: true), inPlace: true)
        let d1 = bn1.backward(relu1.backward(conv2.backward(d2), inPlace: true), inPlace: true)
        let dx = conv1.backward(d1)
        if let ds = downsample { dx.add(ds.backward(dsum)) } else { dx.add(dsum) }
        return dx
    }
}

/// How layer3/layer4 trade stride for dilation.
public enum DilationStyle: Sendable {
    /// LibMTL/MTAN `resnet_dilated` (= torchvision `replace_stride_with_dilation`): the first block of a
    /// dilated layer keeps the previous dilation on its (formerly strided) conv, later convs use the new one.
    case resnetDilated
    /// `../shared/bench/torch_ref.py`: every 3×3 conv of layer3 uses dilation 2, of layer4 dilation 4.
    case bench
}

/// A dilated ResNet encoder: stem (7×7/2 conv, BN, ReLU, 3×3/2 max-pool) and four layers.
/// Output stride 8 (layer3 dilation 2, layer4 dilation 4) or 16 (layer4 dilation 2).
/// Parameter names are torchvision's (`conv1.weight`, `layer1.0.bn1.running_mean`, ...) under `prefix`.
public final class ResNetEncoder: FeatureEncoder {
    public enum Depth: Int, Sendable { case r18 = 18, r34 = 34, r50 = 50, r101 = 101 }
    let stem: Conv2d, stemBN: BatchNorm2d, stemReLU = ReLU()
    let pool = MaxPool2d(kernel: 3, stride: 2, padding: 1)
    let blocks: [ResidualBlock]
    public let outChannels: Int
    public let outputStride: Int

    public init(depth: Depth, width: Int = 64, outputStride: Int = 8, style: DilationStyle = .resnetDilated,
                prefix: String = "encoder", rng: inout Philox) {
        precondition(outputStride == 8 || outputStride == 16, "output stride must be 8 or 16")
        let p = prefix.isEmpty ? "" : prefix + "."
        stem = Conv2d("\(p)conv1", inChannels: 3, outChannels: width, kernel: 7, stride: 2, padding: 3, rng: &rng)
        stemBN = BatchNorm2d("\(p)bn1", channels: width)
        let counts: [Int]
        switch depth {
        case .r18: counts = [2, 2, 2, 2]
        case .r34, .r50: counts = [3, 4, 6, 3]
        case .r101: counts = [3, 4, 23, 3]
        }
        let bottleneck = depth == .r50 || depth == .r101
        // Per layer: stride of the first block and the dilation the layer ends up with.
        let strides = [1, 2, outputStride == 8 ? 1 : 2, 1]
        let dilations = [1, 1, outputStride == 8 ? 2 : 1, outputStride == 8 ? 4 : 2]
        var blocks: [ResidualBlock] = []
        var inC = width
        var previousDilation = 1
        for layer in 0..<4 {
            let planes = width << layer
            for b in 0..<counts[layer] {
                let name = "\(p)layer\(layer + 1).\(b)"
                let stride = b == 0 ? strides[layer] : 1
                // resnetDilated: the first block's first dilated conv keeps the previous layer's dilation.
                let firstDilation = (b == 0 && style == .resnetDilated) ? previousDilation : dilations[layer]
                if bottleneck {
                    blocks.append(Bottleneck(name, inChannels: inC, planes: planes, stride: stride,
                                             dilation: firstDilation, rng: &rng))
                } else {
                    blocks.append(BasicBlock(name, inChannels: inC, planes: planes, stride: stride,
                                             dilation1: firstDilation, dilation2: dilations[layer], rng: &rng))
                }
                inC = blocks.last!.outChannels
            }
            previousDilation = dilations[layer]
        }
        self.blocks = blocks
        outChannels = inC
        self.outputStride = outputStride
    }

    public var parameters: [Parameter] { stem.parameters + stemBN.parameters + blocks.flatMap { $0.parameters } }
    public var buffers: [Buffer] { stemBN.buffers + blocks.flatMap { $0.buffers } }
    public var batchNorms: [BatchNorm2d] { [stemBN] + blocks.flatMap { $0.bns } }
    /// One scale: the last layer's output.
    public var featureChannels: [Int] { [outChannels] }
    public var featureStrides: [Int] { [outputStride] }

    public func forward(_ x: Tensor) -> Features {
        var y = pool.forward(stemReLU.forward(stemBN.forward(conv(stem, x))))
        for b in blocks { y = b.forward(y) }
        return [y]
    }

    /// The parameters in the order their gradients become final during `backward`: one group per
    /// residual block from the last to the first, then the stem (for overlapping the all-reduce).
    public var parameterGroupsInBackwardOrder: [[Parameter]] {
        blocks.reversed().map { $0.parameters } + [stem.parameters + stemBN.parameters]
    }

    /// Backpropagates dz (the one scale) to every encoder parameter; the image gradient is not computed.
    /// `groupDone(k)` is called when group k of `parameterGroupsInBackwardOrder` has its final gradient.
    public func backward(_ dFeatures: Features, groupDone: ((Int) -> Void)?) {
        precondition(dFeatures.count == 1, "ResNetEncoder: expected one gradient, got \(dFeatures.count)")
        var d = dFeatures[0]
        for (k, b) in blocks.reversed().enumerated() {
            d = b.backward(d)
            groupDone?(k)
        }
        _ = stem.backward(stemBN.backward(stemReLU.backward(pool.backward(d))), computeInputGrad: false)
        groupDone?(blocks.count)
    }
}
