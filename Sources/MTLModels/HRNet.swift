import MTLCore
import MTLNN

/// How an HRNet fuse brings a coarser branch up to a finer one.
public enum FuseUpsample: String, Sendable, CaseIterable {
    /// mmseg / ATRC / HRNet-Semantic-Segmentation: bilinear, align_corners=False.
    case bilinear
    /// timm / HRNet-Image-Classification: nearest.
    case nearest
}

/// conv (no bias) → BN (→ ReLU), named `<prefix>.0` (conv) and `<prefix>.1` (BN) as the
/// nn.Sequential blocks of the HRNet checkpoints.
final class ConvBN {
    let conv: Conv2d, bn: BatchNorm2d
    let relu: ReLU?
    init(_ prefix: String, inChannels: Int, outChannels: Int, kernel: Int, stride: Int, relu: Bool, rng: inout Philox) {
        conv = Conv2d("\(prefix).0", inChannels: inChannels, outChannels: outChannels, kernel: kernel, stride: stride,
                      padding: kernel / 2, rng: &rng)
        bn = BatchNorm2d("\(prefix).1", channels: outChannels)
        self.relu = relu ? ReLU() : nil
    }
    var parameters: [Parameter] { conv.parameters + bn.parameters }
    func forward(_ x: Tensor) -> Tensor {
        let y = bn.forward(MTLModels.conv(conv, x))
        return relu?.forward(y) ?? y
    }
    func backward(_ dy: Tensor) -> Tensor { conv.backward(bn.backward(relu?.backward(dy) ?? dy)) }
}

/// A chain of ConvBN units (HRNet's strided 3×3 downsamplings), each named `<prefix>.k`.
final class ConvBNChain {
    let units: [ConvBN]
    init(_ units: [ConvBN]) { self.units = units }
    var parameters: [Parameter] { units.flatMap { $0.parameters } }
    var bns: [BatchNorm2d] { units.map { $0.bn } }
    func forward(_ x: Tensor) -> Tensor {
        var y = x
        for u in units { y = u.forward(y) }
        return y
    }
    func backward(_ dy: Tensor) -> Tensor {
        var d = dy
        for u in units.reversed() { d = u.backward(d) }
        return d
    }
}

/// The resize of a fuse path j > i to branch i's size.
/// Bilinear follows mmseg/ATRC exactly: nn.Upsample(scale_factor=2^(j−i)) and then, only when that
/// size differs from branch i's (inputs not divisible by 32), F.interpolate to branch i's size.
/// Nearest resizes to branch i's size in one step (timm's nn.Upsample(scale_factor) gives the same
/// wherever timm runs; where the sizes disagree timm's addition fails).
final class FuseResize {
    let mode: FuseUpsample
    let factor: Int
    let bilinear = Upsample(), bilinearToSize = Upsample()
    let nearest = NearestUpsample()
    private var secondResize = false

    init(mode: FuseUpsample, factor: Int) {
        self.mode = mode
        self.factor = factor
    }

    func forward(_ x: Tensor, height: Int, width: Int) -> Tensor {
        switch mode {
        case .nearest:
            return nearest.forward(x, height: height, width: width)
        case .bilinear:
            let y = bilinear.forward(x, height: x.h * factor, width: x.w * factor)
            secondResize = y.h != height || y.w != width
            return secondResize ? bilinearToSize.forward(y, height: height, width: width) : y
        }
    }

    func backward(_ dy: Tensor) -> Tensor {
        switch mode {
        case .nearest: return nearest.backward(dy)
        case .bilinear: return bilinear.backward(secondResize ? bilinearToSize.backward(dy) : dy)
        }
    }
}

/// One HRNet high-resolution module (`<prefix>` = `stageS.m`): per branch a chain of BasicBlocks
/// (`branches.b.k`), then the fuse y_i = ReLU(Σ_j F_ij(x_j)) with F_ii = identity,
/// F_ij (j > i) = 1×1 conv + BN + resize (`fuse_layers.i.j.{0,1}`), and F_ij (j < i) = i − j strided
/// 3×3 conv + BN units, all but the last with ReLU and C_j channels (`fuse_layers.i.j.k.{0,1}`).
final class HRModule {
    let branches: [[BasicBlock]]
    /// fuseUp[i][j] for j > i, fuseDown[i][j] for j < i (nil elsewhere).
    let fuseUp: [[(ConvBN, FuseResize)?]]
    let fuseDown: [[ConvBNChain?]]
    let fuseReLU: [ReLU]
    private let sums: [Tensor]
    private let branchGrads: [Tensor]

    init(_ prefix: String, channels: [Int], blocks: Int, fuse: FuseUpsample, rng: inout Philox) {
        let n = channels.count
        branches = (0..<n).map { b in
            (0..<blocks).map { k in
                BasicBlock("\(prefix).branches.\(b).\(k)", inChannels: channels[b], planes: channels[b], stride: 1,
                           dilation1: 1, dilation2: 1, rng: &rng)
            }
        }
        var up: [[(ConvBN, FuseResize)?]] = []
        var down: [[ConvBNChain?]] = []
        for i in 0..<n {
            var upRow: [(ConvBN, FuseResize)?] = [], downRow: [ConvBNChain?] = []
            for j in 0..<n {
                let p = "\(prefix).fuse_layers.\(i).\(j)"
                if j > i {
                    upRow.append((ConvBN(p, inChannels: channels[j], outChannels: channels[i], kernel: 1, stride: 1,
                                         relu: false, rng: &rng),
                                  FuseResize(mode: fuse, factor: 1 << (j - i))))
                    downRow.append(nil)
                } else if j < i {
                    let units = (0..<(i - j)).map { k in
                        let last = k == i - j - 1
                        return ConvBN("\(p).\(k)", inChannels: channels[j], outChannels: last ? channels[i] : channels[j],
                                      kernel: 3, stride: 2, relu: !last, rng: &rng)
                    }
                    upRow.append(nil)
                    downRow.append(ConvBNChain(units))
                } else {
                    upRow.append(nil)
                    downRow.append(nil)
                }
            }
            up.append(upRow)
            down.append(downRow)
        }
        fuseUp = up
        fuseDown = down
        fuseReLU = (0..<n).map { _ in ReLU() }
        sums = (0..<n).map { _ in Tensor([0]) }
        branchGrads = (0..<n).map { _ in Tensor([0]) }
    }

    var parameters: [Parameter] {
        let n = branches.count
        var out = branches.flatMap { $0.flatMap { $0.parameters } }
        for i in 0..<n {
            for j in 0..<n {
                if let (unit, _) = fuseUp[i][j] { out += unit.parameters }
                if let chain = fuseDown[i][j] { out += chain.parameters }
            }
        }
        return out
    }

    var bns: [BatchNorm2d] {
        let n = branches.count
        var out = branches.flatMap { $0.flatMap { $0.bns } }
        for i in 0..<n {
            for j in 0..<n {
                if let (unit, _) = fuseUp[i][j] { out.append(unit.bn) }
                if let chain = fuseDown[i][j] { out += chain.bns }
            }
        }
        return out
    }

    func forward(_ xs: [Tensor]) -> [Tensor] {
        let n = branches.count
        precondition(xs.count == n, "HRModule: \(n) branches, \(xs.count) inputs")
        let ys: [Tensor] = (0..<n).map { b in
            var y = xs[b]
            for block in branches[b] { y = block.forward(y) }
            return y
        }
        return (0..<n).map { i in
            // Σ_j in branch order, as mmseg and timm add them.
            let sum = sums[i]
            for j in 0..<n {
                let term: Tensor
                if let (unit, resize) = fuseUp[i][j] {
                    term = resize.forward(unit.forward(ys[j]), height: ys[i].h, width: ys[i].w)
                } else if let chain = fuseDown[i][j] {
                    term = chain.forward(ys[j])
                } else {
                    term = ys[j]
                }
                if j == 0 { sum.copy(from: term) } else { sum.add(term) }
            }
            return fuseReLU[i].forward(sum)
        }
    }

    /// dOuts: one gradient per output branch; returns one per input branch (tensors the blocks own).
    func backward(_ dOuts: [Tensor]) -> [Tensor] {
        let n = branches.count
        let dSums = (0..<n).map { fuseReLU[$0].backward(dOuts[$0]) }
        // ∂/∂y_j = Σ_i F_ijᵀ(∂/∂sum_i).
        for j in 0..<n {
            let g = branchGrads[j]
            g.copy(from: dSums[j])
            for i in 0..<n where i != j {
                if let (unit, resize) = fuseUp[i][j] {
                    g.add(unit.backward(resize.backward(dSums[i])))
                } else if let chain = fuseDown[i][j] {
                    g.add(chain.backward(dSums[i]))
                }
            }
        }
        return (0..<n).map { b in
            var d = branchGrads[b]
            for block in branches[b].reversed() { d = block.backward(d) }
            return d
        }
    }
}

/// The transition before a stage: existing branches whose width changes get a 3×3 conv + BN + ReLU
/// (`transitionS.b.{0,1}`; none in HRNet-W18, only transition1's branch 0), equal widths pass through;
/// each new branch is made from the last old one by strided 3×3 conv + BN + ReLU units
/// (`transitionS.b.k.{0,1}`).
final class Transition {
    let changes: [ConvBN?]            // per old branch
    let newBranches: [ConvBNChain]
    private let lastGrad = Tensor([0])

    init(_ prefix: String, from old: [Int], to new: [Int], rng: inout Philox) {
        changes = old.indices.map { b in
            old[b] == new[b] ? nil
                : ConvBN("\(prefix).\(b)", inChannels: old[b], outChannels: new[b], kernel: 3, stride: 1, relu: true, rng: &rng)
        }
        newBranches = (old.count..<new.count).map { b in
            let steps = b + 1 - old.count
            return ConvBNChain((0..<steps).map { k in
                ConvBN("\(prefix).\(b).\(k)", inChannels: old.last!, outChannels: k == steps - 1 ? new[b] : old.last!,
                       kernel: 3, stride: 2, relu: true, rng: &rng)
            })
        }
    }

    var parameters: [Parameter] { changes.flatMap { $0?.parameters ?? [] } + newBranches.flatMap { $0.parameters } }
    var bns: [BatchNorm2d] { changes.compactMap { $0?.bn } + newBranches.flatMap { $0.bns } }

    func forward(_ xs: [Tensor]) -> [Tensor] {
        let kept = xs.indices.map { b in changes[b]?.forward(xs[b]) ?? xs[b] }
        return kept + newBranches.map { $0.forward(xs.last!) }
    }

    /// One gradient per new branch in, one per old branch out.
    func backward(_ ds: [Tensor]) -> [Tensor] {
        let old = changes.count
        var out = (0..<old).map { b in changes[b]?.backward(ds[b]) ?? ds[b] }
        if !newBranches.isEmpty {
            lastGrad.copy(from: out[old - 1])
            for (k, chain) in newBranches.enumerated() { lastGrad.add(chain.backward(ds[old + k])) }
            out[old - 1] = lastGrad
        }
        return out
    }
}

/// HRNetV2 backbone, as the mmseg / HRNet-Semantic-Segmentation checkpoints (timm's names are the
/// same for the backbone): stem conv1/bn1/conv2/bn2 (two 3×3 stride-2 convs, 64 channels), layer1
/// (Bottlenecks, 64 → 256), transition1, stage2, transition2, stage3, transition3, stage4; outputs the
/// four branches at strides 4/8/16/32 with C, 2C, 4C, 8C channels. No classification head
/// (incre_modules, downsamp_modules, final_layer, classifier are not built).
public final class HRNetEncoder: FeatureEncoder {
    public struct Architecture: Sendable, Equatable {
        public var layer1Blocks: Int
        /// HR modules in stages 2, 3, 4.
        public var modules: [Int]
        /// BasicBlocks per branch in every module.
        public var blocks: Int
        /// Branch widths (stage 4 has all four).
        public var widths: [Int]

        /// HRNetV2-W18-Small-v2 ("HRNet18" of MTI-Net/ATRC; mmseg hrnetv2_w18_small, timm hrnet_w18_small_v2).
        public static let w18Small = Architecture(layer1Blocks: 2, modules: [1, 3, 2], blocks: 2, widths: [18, 36, 72, 144])
        /// HRNetV2-W18 (timm hrnet_w18, mmseg hrnetv2_w18).
        public static let w18 = Architecture(layer1Blocks: 4, modules: [1, 4, 3], blocks: 4, widths: [18, 36, 72, 144])
    }

    let conv1: Conv2d, bn1: BatchNorm2d, relu1 = ReLU()
    let conv2: Conv2d, bn2: BatchNorm2d, relu2 = ReLU()
    let layer1: [Bottleneck]
    /// transitions[s] comes before stages[s] (s = 0, 1, 2 for transition1…3 / stage2…4).
    let transitions: [Transition]
    let stages: [[HRModule]]
    public let featureChannels: [Int]
    public let featureStrides = [4, 8, 16, 32]

    public init(_ arch: Architecture, fuse: FuseUpsample = .bilinear, prefix: String = "encoder", rng: inout Philox) {
        let p = prefix.isEmpty ? "" : prefix + "."
        conv1 = Conv2d("\(p)conv1", inChannels: 3, outChannels: 64, kernel: 3, stride: 2, padding: 1, rng: &rng)
        bn1 = BatchNorm2d("\(p)bn1", channels: 64)
        conv2 = Conv2d("\(p)conv2", inChannels: 64, outChannels: 64, kernel: 3, stride: 2, padding: 1, rng: &rng)
        bn2 = BatchNorm2d("\(p)bn2", channels: 64)
        layer1 = (0..<arch.layer1Blocks).map { k in
            Bottleneck("\(p)layer1.\(k)", inChannels: k == 0 ? 64 : 256, planes: 64, stride: 1, dilation: 1, rng: &rng)
        }
        var transitions: [Transition] = [], stages: [[HRModule]] = []
        var previous = [256]
        for s in 0..<3 {
            let widths = Array(arch.widths.prefix(s + 2))
            transitions.append(Transition("\(p)transition\(s + 1)", from: previous, to: widths, rng: &rng))
            stages.append((0..<arch.modules[s]).map { m in
                HRModule("\(p)stage\(s + 2).\(m)", channels: widths, blocks: arch.blocks, fuse: fuse, rng: &rng)
            })
            previous = widths
        }
        self.transitions = transitions
        self.stages = stages
        featureChannels = arch.widths
    }

    public var parameters: [Parameter] {
        var out = conv1.parameters + bn1.parameters + conv2.parameters + bn2.parameters + layer1.flatMap { $0.parameters }
        for s in 0..<3 { out += transitions[s].parameters + stages[s].flatMap { $0.parameters } }
        return out
    }
    public var batchNorms: [BatchNorm2d] {
        var out = [bn1, bn2] + layer1.flatMap { $0.bns }
        for s in 0..<3 { out += transitions[s].bns + stages[s].flatMap { $0.bns } }
        return out
    }
    public var buffers: [Buffer] { batchNorms.flatMap { $0.buffers } }

    public func forward(_ x: Tensor) -> Features {
        var y = relu2.forward(bn2.forward(conv(conv2, relu1.forward(bn1.forward(conv(conv1, x))))))
        for block in layer1 { y = block.forward(y) }
        var branches = [y]
        for s in 0..<3 {
            branches = transitions[s].forward(branches)
            for module in stages[s] { branches = module.forward(branches) }
        }
        return branches
    }

    /// Backward order: stage4's modules from the last, transition3, stage3's modules, transition2,
    /// stage2, transition1, layer1's blocks from the last, the stem.
    public var parameterGroupsInBackwardOrder: [[Parameter]] {
        var groups: [[Parameter]] = []
        for s in (0..<3).reversed() {
            groups += stages[s].reversed().map { $0.parameters }
            groups.append(transitions[s].parameters)
        }
        groups += layer1.reversed().map { $0.parameters }
        groups.append(conv1.parameters + bn1.parameters + conv2.parameters + bn2.parameters)
        return groups
    }

    public func backward(_ dFeatures: Features, groupDone: ((Int) -> Void)?) {
        _ = backward(dFeatures, inputGradient: false, groupDone: groupDone)
    }

    /// As `backward`, and with `inputGradient` also ∂L/∂image (for the cross-checks), else nil.
    public func backward(_ dFeatures: Features, inputGradient: Bool, groupDone: ((Int) -> Void)? = nil) -> Tensor? {
        precondition(dFeatures.count == 4, "HRNetEncoder: expected 4 gradients, got \(dFeatures.count)")
        var group = 0
        func done() { groupDone?(group); group += 1 }
        var d = dFeatures
        for s in (0..<3).reversed() {
            for module in stages[s].reversed() { d = module.backward(d); done() }
            d = transitions[s].backward(d)
            done()
        }
        var g = d[0]
        for block in layer1.reversed() { g = block.backward(g); done() }
        let dx = conv1.backward(bn1.backward(relu1.backward(conv2.backward(bn2.backward(relu2.backward(g))))),
                                computeInputGrad: inputGradient)
        done()
        return inputGradient ? dx : nil
    }
}
