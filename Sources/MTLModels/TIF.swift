import MTLCore
import MTLNN

/// The switches of TIF-R (docs/ARCHITECTURES.md §1.3, the paper's ablation Tables 6 and 9, and the
/// alternative readings of §1.4). Defaults are the reference's: the full model, paper readings.
public struct TIFOptions: Sendable, Equatable {
    public var saff = true             // SAFF on every scale; off: BN(Conv1×1) stand-ins (Table 9 "W/O SAFF")
    public var sfd = true              // SFD on scales 2, 3; off also turns LTHD off (no affinities)
    public var lthd = true             // LTHD on scales 0, 1 (Table 6 row 3 without it)
    public var sfdScale = false        // A = QKᵀ/√d (design reading of eq. 8); the paper writes QKᵀ
    public var kvSingle = false        // one K/V matrix instead of N (eq. 6; functionally equal)
    public var lthdTranspose = false   // softmax_rows(A0)ᵀ in eq. 12 (literal channel-first reading)
    public var fuseReLU = false        // ReLU after the final FeatureFuse (design reading of eq. 14)
    public var ffnRatio = 4
    public var widthCap = 128          // d_i = min(C_i, widthCap)
    public init() {}
}

/// Backbone + the shared SAFF neck, as one FeatureEncoder: its Features are the four SAFF outputs
/// X̂_0..X̂_3, the z whose per-task gradients the methods' Gram combines (SEED-ARCHITECTURES.md §5.1).
/// SAFF's parameters keep the reference's names `decoder.saff.*` although they sit on the shared side.
public final class TIFEncoder: FeatureEncoder {
    public let backbone: any FeatureEncoder
    public let saff: SAFF

    public init(backbone: any FeatureEncoder, options: TIFOptions = TIFOptions(), prefix: String = "decoder.saff",
                rng: inout Philox) {
        precondition(backbone.featureChannels.count == 4,
                     "TIF needs a four-scale backbone, \(type(of: backbone)) gives \(backbone.featureChannels.count)")
        self.backbone = backbone
        let widths = backbone.featureChannels.map { min($0, options.widthCap) }
        saff = SAFF(prefix, channels: backbone.featureChannels, widths: widths,
                    scales: options.saff ? [0, 1, 2, 3] : [], rng: &rng)
    }

    public var featureChannels: [Int] { saff.widths }
    public var featureStrides: [Int] { backbone.featureStrides }
    public var parameters: [Parameter] { backbone.parameters + saff.parameters }
    public var batchNorms: [BatchNorm2d] { backbone.batchNorms + saff.batchNorms }
    public var buffers: [Buffer] { backbone.buffers + saff.buffers }
    /// SAFF's gradients are final first, then the backbone's groups.
    public var parameterGroupsInBackwardOrder: [[Parameter]] { [saff.parameters] + backbone.parameterGroupsInBackwardOrder }

    public func forward(_ x: Tensor) -> Features { saff.forward(backbone.forward(x)) }

    public func backward(_ dFeatures: Features, groupDone: ((Int) -> Void)?) {
        let d = saff.backward(dFeatures)
        groupDone?(0)
        backbone.backward(d, groupDone: groupDone.map { done in { done($0 + 1) } })
    }
}

/// Final FeatureFuse (eq. 14, names `<p>.conv`, `<p>.bn`): FX = BN(Conv3×3([RX0; Up RX1; Up RX2; Up RX3] → d_0))
/// (+ ReLU with `relu`), bilinear align_corners=False.
final class TIFFuse {
    let resizes = [Upsample(), Upsample(), Upsample()], concat = Concat()
    let conv3: Conv2d, bn: BatchNorm2d, relu: ReLU?
    init(_ p: String, widths: [Int], relu: Bool, rng: inout Philox) {
        conv3 = Conv2d("\(p).conv", inChannels: widths.reduce(0, +), outChannels: widths[0], kernel: 3, padding: 1, rng: &rng)
        bn = BatchNorm2d("\(p).bn", channels: widths[0])
        self.relu = relu ? ReLU() : nil
    }
    var parameters: [Parameter] { conv3.parameters + bn.parameters }
    func forward(_ rx: [Tensor]) -> Tensor {
        let f = rx[0]
        let parts = [f] + (1..<4).map { resizes[$0 - 1].forward(rx[$0], height: f.h, width: f.w) }
        let y = bn.forward(conv(conv3, concat.forward(parts)))
        return relu?.forward(y) ?? y
    }
    func backward(_ dy: Tensor) -> [Tensor] {
        let parts = concat.backward(conv3.backward(bn.backward(relu?.backward(dy) ?? dy)))
        return [parts[0]] + (1..<4).map { resizes[$0 - 1].backward(parts[$0]) }
    }
}

/// One task's TIF decoder on the shared X̂ (task-specific through its weights only, so TIF is
/// separable): SFD on scales 2, 3; A0 = Up(A3) + A2 (eq. 11); LTHD on scales 0, 1; fusion; a 1×1
/// head with bias, bilinear to the input size. Names `<root>.sfd.<task>.s<i>.*`,
/// `<root>.lthd.<task>.s<h>.*`, `<root>.fuse.<task>.*`, `<root>.head.<task>.*` as the reference's.
public final class TIFHead: TaskHead {
    let sfd: [SFD]                       // scales 2, 3
    let lthd: [LTHD]                     // scales 0, 1
    var affinityUp: AffinityUpsample?
    let fuse: TIFFuse
    let head: Conv2d
    let upsample = Upsample()
    public let outChannels: Int
    private let a0 = Tensor([0]), dA0 = Tensor([0])

    public init(task: String, root: String = "decoder", widths: [Int], tasks: Int, outChannels: Int,
                options: TIFOptions = TIFOptions(), rng: inout Philox) {
        precondition(widths.count == 4, "TIFHead: four scales expected, got \(widths.count)")
        sfd = options.sfd ? [2, 3].map {
            SFD("\(root).sfd.\(task).s\($0)", d: widths[$0], tasks: tasks, ffnRatio: options.ffnRatio,
                scale: options.sfdScale, kvSingle: options.kvSingle, rng: &rng)
        } : []
        lthd = options.sfd && options.lthd ? [0, 1].map {
            LTHD("\(root).lthd.\(task).s\($0)", d: widths[$0], ffnRatio: options.ffnRatio,
                 transpose: options.lthdTranspose, rng: &rng)
        } : []
        fuse = TIFFuse("\(root).fuse.\(task)", widths: widths, relu: options.fuseReLU, rng: &rng)
        head = Conv2d("\(root).head.\(task)", inChannels: widths[0], outChannels: outChannels, kernel: 1, bias: true,
                      rng: &rng)
        self.outChannels = outChannels
    }

    public var parameters: [Parameter] {
        sfd.flatMap { $0.parameters } + lthd.flatMap { $0.parameters } + fuse.parameters + head.parameters
    }
    public var batchNorms: [BatchNorm2d] { lthd.map { $0.fuseBN } + [fuse.bn] }
    public var buffers: [Buffer] { batchNorms.flatMap { $0.buffers } }

    public func forward(_ features: Features, height: Int, width: Int) -> Tensor {
        precondition(features.count == 4, "TIFHead: expected the 4 SAFF outputs, got \(features.count)")
        var rx = features
        if !sfd.isEmpty {
            let (rx2, a2) = sfd[0].forward(features[2])
            let (rx3, a3) = sfd[1].forward(features[3])
            rx[2] = rx2
            rx[3] = rx3
            if !lthd.isEmpty {
                let g2 = (features[2].h, features[2].w), g3 = (features[3].h, features[3].w)
                if affinityUp?.height != g2.0 || affinityUp?.width != g2.1 {
                    affinityUp = AffinityUpsample(height: g2.0, width: g2.1)
                }
                a0.copy(from: affinityUp!.forward(a3, gridHeight: g3.0, gridWidth: g3.1))
                a0.add(a2)                                                        // eq. 11
                rx[0] = lthd[0].forward(features[0], a0: a0, grid: g2)
                rx[1] = lthd[1].forward(features[1], a0: a0, grid: g2)
            }
        }
        return upsample.forward(conv(head, fuse.forward(rx)), height: height, width: width)
    }

    public func backward(_ dPred: Tensor) -> Features {
        var d = fuse.backward(head.backward(upsample.backward(dPred)))
        var dA2: Tensor? = nil, dA3: Tensor? = nil
        if !lthd.isEmpty {
            let (dx0, dA0a) = lthd[0].backward(d[0])
            dA0.copy(from: dA0a)
            let (dx1, dA0b) = lthd[1].backward(d[1])
            dA0.add(dA0b)
            d[0] = dx0
            d[1] = dx1
            dA2 = dA0
            dA3 = affinityUp!.backward(dA0)
        }
        if !sfd.isEmpty {
            d[2] = sfd[0].backward(d[2], dLogits: dA2)
            d[3] = sfd[1].backward(d[3], dLogits: dA3)
        }
        return d
    }
}

/// Per-scale decoder widths d_i = min(C_i, cap).
public func tifWidths(_ channels: [Int], cap: Int = 128) -> [Int] { channels.map { min($0, cap) } }
