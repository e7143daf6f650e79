import Foundation
import MTLCore
import MTLNN

/// The `model.mtcp.*` settings (docs/ARCHITECTURE.md "MT-CP"; the paper-vs-code switches of
/// docs/ARCHITECTURES.md §4.3). Defaults are the paper's decoder: d = 256, depths 1-2-1, heads 2-2-2,
/// window 7, the CFM at stride 4, the released code's plain FPN.
public struct MTCPOptions: Sendable, Equatable {
    public var variant = "code"          // code | paper: the FPN's dynamic weights (the losses are the tasks' and the method's)
    public var cfmStride = 4             // 4 (the paper) | 8 ([OURS]: the CFM on 2×2-pooled maps)
    public var dim = 256                 // d (smaller only for tests)
    public var depths = [1, 2, 1]
    public var heads = [2, 2, 2]
    public var window = 7
    public var reduction = 16            // CBAM's MLP reduction
    public var depthMid = 32             // the depth head's middle width
    public var headLayout = "nyud"       // nyud | pascal: the code's two head sets (up-sampling factors, intermediate convs)
    public var queryBlock = 256          // query pixels per block of the CFM affinity (memory block·N, not N²)
    public var interWeight = 0.5         // each intermediate term's weight in its task's loss (the code's ½ Σ_s)
    public init() {}

    public static let variants = ["code", "paper"]
    public static let layouts = ["nyud", "pascal"]
}

/// How one task's heads are built (the reference's SPECS): intermediate convs before the BN, final head
/// kind and its align_corners=True up-sampling factor.
public struct MTCPTaskHeads: Sendable, Equatable {
    public var interConvs: Int
    public var kind: MTCPFinalHead.Kind
    public var up: Int

    /// The code's heads by task name: NYUD semseg ×2, depth ×2 (depth head), normals plain; PASCAL semseg and
    /// human parts ×4, parts and saliency with one intermediate conv; other tasks (edges) like NYUD normals.
    public static func of(task: String, layout: String) -> MTCPTaskHeads {
        let pascal = layout == "pascal"
        switch task {
        case "seg", "semseg": return MTCPTaskHeads(interConvs: 2, kind: .seg, up: pascal ? 4 : 2)
        case "depth": return MTCPTaskHeads(interConvs: 2, kind: .depth, up: 2)
        case "parts", "human_parts": return MTCPTaskHeads(interConvs: pascal ? 1 : 2, kind: .seg, up: pascal ? 4 : 2)
        case "sal", "saliency": return MTCPTaskHeads(interConvs: pascal ? 1 : 2, kind: .plain, up: 1)
        default: return MTCPTaskHeads(interConvs: 2, kind: .plain, up: 1)
        }
    }
}

/// Backbone + the FPN-lite neck (SEED-ARCHITECTURES.md §2.7, standing in for Mask2Former's modulated mask
/// features), as one FeatureEncoder whose single output is MT-CP's shared representation z (SEED §5.1):
///   l_k = Conv1×1(X_k) + b → D;  f_3 = l_3;  f_k = Nearest×2(f_{k+1}) + l_k;  z = Conv1×1(ReLU(BN(Conv3×3(f_0)))) + b
/// (3×3 without bias). Names `neck.lateral.<k>`, `neck.conv`, `neck.bn`, `neck.out`.
public final class MTCPEncoder: FeatureEncoder, StochasticEncoder {
    public let backbone: any FeatureEncoder
    public let lateral: [Conv2d]
    public let conv3: Conv2d, bn: BatchNorm2d, out: Conv2d
    let ups: [NearestUpsample], relu = ReLU()
    private let sums: [Tensor], dDown: [Tensor]
    private var laterals: [Tensor] = []

    public init(backbone: any FeatureEncoder, dim d: Int = 256, prefix: String = "neck", rng: inout Philox) {
        let cs = backbone.featureChannels
        precondition(cs.count >= 2, "MTCPEncoder: the FPN-lite neck needs a multi-scale backbone, got \(cs.count) scale(s)")
        self.backbone = backbone
        lateral = cs.indices.map { Conv2d("\(prefix).lateral.\($0)", inChannels: cs[$0], outChannels: d, kernel: 1, bias: true, rng: &rng) }
        conv3 = Conv2d("\(prefix).conv", inChannels: d, outChannels: d, kernel: 3, padding: 1, bias: false, rng: &rng)
        bn = BatchNorm2d("\(prefix).bn", channels: d)
        out = Conv2d("\(prefix).out", inChannels: d, outChannels: d, kernel: 1, bias: true, rng: &rng)
        ups = (1..<cs.count).map { _ in NearestUpsample() }
        sums = (1..<cs.count).map { _ in Tensor([0]) }
        dDown = cs.map { _ in Tensor([0]) }
    }

    var neckParameters: [Parameter] { lateral.flatMap { $0.parameters } + conv3.parameters + bn.parameters + out.parameters }
    public var featureChannels: [Int] { [out.outChannels] }
    public var featureStrides: [Int] { [backbone.featureStrides[0]] }
    public var parameters: [Parameter] { backbone.parameters + neckParameters }
    public var batchNorms: [BatchNorm2d] { backbone.batchNorms + [bn] }
    public var buffers: [Buffer] { backbone.buffers + bn.buffers }
    public var parameterGroupsInBackwardOrder: [[Parameter]] { [neckParameters] + backbone.parameterGroupsInBackwardOrder }

    public var training: Bool {
        get { (backbone as? StochasticEncoder)?.training ?? true }
        set { (backbone as? StochasticEncoder)?.training = newValue }
    }

    public func prepareStep(seed: UInt64, step: Int, sampleIndices: [Int]) {
        (backbone as? StochasticEncoder)?.prepareStep(seed: seed, step: step, sampleIndices: sampleIndices)
    }

    public func forward(_ x: Tensor) -> Features {
        let xs = backbone.forward(x)
        laterals = xs.indices.map { conv(lateral[$0], xs[$0]) }
        var f = laterals[xs.count - 1]
        for k in stride(from: xs.count - 2, through: 0, by: -1) {
            let l = laterals[k]
            sums[k].copy(from: ups[k].forward(f, height: l.h, width: l.w))
            sums[k].add(l)
            f = sums[k]
        }
        return [conv(out, relu.forward(bn.forward(conv(conv3, f))))]
    }

    public func backward(_ dFeatures: Features, groupDone: ((Int) -> Void)?) {
        var df = conv3.backward(bn.backward(relu.backward(out.backward(dFeatures[0]))))
        let n = lateral.count
        for k in 0..<(n - 1) {
            dDown[k].copy(from: lateral[k].backward(df))
            df = ups[k].backward(df)
        }
        dDown[n - 1].copy(from: lateral[n - 1].backward(df))
        groupDone?(0)
        backbone.backward(dDown, groupDone: groupDone.map { done in { done($0 + 1) } })
    }
}

/// The MT-CP task decoders after z (tools/mtcp_reference.py's MTCPDecoder; names `decoder.transformer.<t>.*`,
/// `decoder.fpn.<t>.*`, `decoder.cfm.<t>.*`, `decoder.srm.<t>.*`, `decoder.inter.<t>.<i>.*`, `decoder.head.<t>.*`):
///   r_t = transformer_t(z)                              3 scales, strides 4, 8, 16 of z's grid
///   e_t = fpn_t(r_t)                                    d × z's grid
///   c_t = cfm_t(e_t, [e_u, u ≠ t])                      cross-task: task t's loss reads every task's fpn and transformer
///   p_t = traceback_t(c_t, r_t)                         p0, p1 → intermediate heads; p2 → final head
///   Ŷ_t = Bilinear_{→H×W}(head_t(p2)),  Ŷ_t^(i) = Bilinear_{→H×W}(inter_t,i(p_i))
/// Joint: no shared parameters, every parameter belongs to its task; the intermediate predictions are the
/// decoder's auxiliary outputs (trained with the task's loss and target, weight `interWeight` each).
public final class MTCPDecoder: Decoder {
    public let options: MTCPOptions
    public let taskNames: [String]
    public let outChannels: [Int]
    public let transformers: [MTCPTransformer]
    public let fpns: [MTCPFPN]
    public let cfms: [MTCPCFM]
    public let traceBacks: [MTCPTraceBack]
    public let interHeads: [[MTCPInterHead]]
    public let heads: [MTCPFinalHead]
    let finalUps: [Upsample], interUps: [[Upsample]]
    private var inters: [[Tensor]] = []
    private var pShapes: [[[Int]]] = []
    private let dE: [Tensor], dR: [[Tensor]], zeroP: [Tensor]
    private let dz = Tensor([0])

    public init(tasks: [(name: String, channels: Int)], inChannels: Int, options o: MTCPOptions, prefix: String = "decoder",
                rng: inout Philox) {
        precondition(tasks.count >= 2, "MTCPDecoder: the coherence fusion needs at least 2 tasks, got \(tasks.count)")
        precondition(inChannels == o.dim, "MTCPDecoder: z has \(inChannels) channels, the decoder width is \(o.dim)")
        options = o
        let names = tasks.map { $0.name }
        taskNames = names
        outChannels = tasks.map { $0.channels }
        let d = o.dim, p = prefix, T = tasks.count
        let ins = o.depths.indices.map { d << $0 }
        transformers = names.map { MTCPTransformer("\(p).transformer.\($0)", dim: d, depths: o.depths, heads: o.heads, window: o.window, rng: &rng) }
        fpns = names.map { MTCPFPN("\(p).fpn.\($0)", inChannels: ins, dim: d, dynamic: o.variant == "paper", rng: &rng) }
        cfms = names.map { MTCPCFM("\(p).cfm.\($0)", dim: d, tasks: T, stride: o.cfmStride, queryBlock: o.queryBlock, reduction: o.reduction, rng: &rng) }
        traceBacks = names.map { MTCPTraceBack("\(p).srm.\($0)", dim: d, reduction: o.reduction, rng: &rng) }
        interHeads = tasks.map { t in
            let spec = MTCPTaskHeads.of(task: t.name, layout: o.headLayout)
            return (0..<2).map { MTCPInterHead("\(p).inter.\(t.name).\($0)", dim: d, outChannels: t.channels, convs: spec.interConvs, rng: &rng) }
        }
        heads = tasks.map { t in
            let spec = MTCPTaskHeads.of(task: t.name, layout: o.headLayout)
            return MTCPFinalHead("\(p).head.\(t.name)", kind: spec.kind, dim: d, outChannels: t.channels, up: spec.up,
                                 depthMid: o.depthMid, rng: &rng)
        }
        finalUps = tasks.map { _ in Upsample() }
        interUps = tasks.map { _ in [Upsample(), Upsample()] }
        dE = tasks.map { _ in Tensor([0]) }
        dR = tasks.map { _ in (0..<3).map { _ in Tensor([0]) } }
        zeroP = (0..<2).map { _ in Tensor([0]) }
    }

    /// Checks the option values (the config reader validates the spellings; this the combinations).
    public static func validate(_ o: MTCPOptions, tasks: Int) throws {
        func check(_ ok: Bool, _ key: String, _ expected: String, _ found: Any) throws {
            if !ok { throw MTLError("model.mtcp.\(key): expected \(expected), found \(found)") }
        }
        try check(tasks >= 2, "tasks", "at least 2 tasks (the coherence fusion reads the other tasks)", tasks)
        try check(MTCPOptions.variants.contains(o.variant), "variant", MTCPOptions.variants.joined(separator: "|"), "'\(o.variant)'")
        try check(MTCPOptions.layouts.contains(o.headLayout), "head_layout", MTCPOptions.layouts.joined(separator: "|"), "'\(o.headLayout)'")
        try check(o.cfmStride == 4 || o.cfmStride == 8, "cfm_stride", "4|8", o.cfmStride)
        try check(o.depths.count == 3 && o.depths.allSatisfy { $0 >= 1 }, "depths", "3 stage depths >= 1 (the trace-back reads 3 scales)", o.depths)
        try check(o.heads.count == 3 && zip(o.heads, o.depths.indices).allSatisfy { h, s in h >= 1 && (o.dim << s) % h == 0 },
                  "heads", "3 head counts dividing dim·2^s", o.heads)
        try check(o.dim >= 2 && o.dim % 2 == 0, "dim", "an even width >= 2", o.dim)
        try check(o.window >= 1, "window", ">= 1", o.window)
        try check(o.reduction >= 1 && o.depthMid >= 1 && o.queryBlock >= 1, "query_block", "reduction, depth_mid, query_block >= 1",
                  "\(o.reduction), \(o.depthMid), \(o.queryBlock)")
        try check(o.interWeight >= 0, "inter_weight", ">= 0", o.interWeight)
    }

    public var separable: Bool { false }
    public var sharedParameters: [Parameter] { [] }
    public var taskParameters: [[Parameter]] {
        taskNames.indices.map { t in
            transformers[t].parameters + fpns[t].parameters + cfms[t].parameters + traceBacks[t].parameters
                + interHeads[t].flatMap { $0.parameters } + heads[t].parameters
        }
    }
    public var batchNorms: [BatchNorm2d] {
        taskNames.indices.flatMap { t in
            cfms[t].batchNorms + traceBacks[t].batchNorms + interHeads[t].flatMap { $0.batchNorms } + heads[t].batchNorms
        }
    }

    /// Every task is computed (the CFMs read every task's features); `active` is not used.
    public func forward(_ features: Features, height: Int, width: Int, active: [Bool]) -> [Tensor?] {
        precondition(features.count == 1, "MTCPDecoder: expected one feature map z, got \(features.count)")
        let z = features[0]
        let T = taskNames.count
        let rs = transformers.map { $0.forward(z) }
        let es = (0..<T).map { fpns[$0].forward(rs[$0]) }
        var finals: [Tensor?] = []
        inters = []
        pShapes = []
        for t in 0..<T {
            let c = cfms[t].forward(es[t], (0..<T).filter { $0 != t }.map { es[$0] })
            let p = traceBacks[t].forward(c, rs[t])
            pShapes.append(p.map { $0.shape })
            inters.append((0..<2).map { interUps[t][$0].forward(interHeads[t][$0].forward(p[$0]), height: height, width: width) })
            finals.append(finalUps[t].forward(heads[t].forward(p[2]), height: height, width: width))
        }
        return finals
    }

    public func auxiliaryPredictions(_ t: Int) -> [Tensor] { inters.isEmpty ? [] : inters[t] }
    public func auxiliaryWeights(_ t: Int) -> [Double] { [options.interWeight, options.interWeight] }

    public func backward(_ dPreds: [Tensor?]) -> Features { backward(dPreds, auxiliary: [[Tensor]?](repeating: nil, count: dPreds.count)) }

    /// dPreds[t] nil: task t's loss is not in this backward; auxiliary[t]: the gradients of its two
    /// intermediate predictions (nil: zero).
    public func backward(_ dPreds: [Tensor?], auxiliary: [[Tensor]?]) -> Features {
        let T = taskNames.count
        precondition(dPreds.count == T && auxiliary.count == T, "MTCPDecoder: \(dPreds.count) gradients for \(T) tasks")
        let active = (0..<T).filter { dPreds[$0] != nil }
        precondition(!active.isEmpty, "MTCPDecoder.backward: no task gradient")
        var reached = [Bool](repeating: false, count: T)
        var fromSRM = [[Tensor]?](repeating: nil, count: T)
        func accumulate(_ u: Int, _ g: Tensor) {
            if reached[u] { dE[u].add(g) } else { dE[u].copy(from: g); reached[u] = true }
        }
        for t in active {
            let dp2 = heads[t].backward(finalUps[t].backward(dPreds[t]!))
            var dps: [Tensor] = []
            for i in 0..<2 {
                if let a = auxiliary[t] {
                    dps.append(interHeads[t][i].backward(interUps[t][i].backward(a[i])))
                } else {
                    zeroP[i].resize(pShapes[t][i])
                    zeroP[i].zero()
                    dps.append(zeroP[i])
                }
            }
            let (dc, drs) = traceBacks[t].backward(dps + [dp2])
            for s in 0..<3 { dR[t][s].copy(from: drs[s]) }
            fromSRM[t] = dR[t]
            let (dMain, dAux) = cfms[t].backward(dc)
            accumulate(t, dMain)
            for (k, u) in (0..<T).filter({ $0 != t }).enumerated() { accumulate(u, dAux[k]) }
        }
        var first = true
        for u in 0..<T where reached[u] {
            var dr = fpns[u].backward(dE[u])
            if let srm = fromSRM[u] {
                for s in 0..<3 { srm[s].add(dr[s]) }
                dr = srm
            }
            let g = transformers[u].backward(dr)
            if first { dz.copy(from: g); first = false } else { dz.add(g) }
        }
        return [dz]
    }
}
