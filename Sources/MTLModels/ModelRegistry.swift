import MTLCore
import MTLNN

// The model's components by name: `model.encoder`, `model.neck` and `model.decoder` select one
// entry each, and an entry's `group` names its `model.<group>.*` parameters (declared below next
// to the options they set). The config reader accepts a group only when a selected component
// uses it, as it accepts `method.<group>` only for the chosen method.

public struct EncoderEntry {
    public let name: String
    public let group: String?            // model.<group>.* parameters (swin), nil = none
    public let scales: Int               // feature scales it gives (1: dilated ResNet; 4: strides 4–32)
    public let summary: String
    let build: (ModelSpec, inout Philox) throws -> any FeatureEncoder
}

/// A neck sits between the encoder and the decoder and is part of the shared encoder side: its
/// outputs are the Features (the methods' z).
public struct NeckEntry {
    public let name: String
    public let group: String?
    public let scales: Int?              // encoder scales it needs (nil = any)
    public var outputScales: Int? = nil  // scales it gives the decoder (nil = as many as it reads)
    public let summary: String
    let build: (any FeatureEncoder, ModelSpec, inout Philox) throws -> any FeatureEncoder
}

public struct DecoderEntry {
    public let name: String
    public let group: String?
    public let scales: Int?              // feature scales it reads (nil = any)
    public let neck: String?             // the neck it is built on (tif: saff), nil = any
    public let summary: String
    let build: (ModelSpec, _ channels: [Int], inout Philox) throws -> any Decoder
}

public enum ModelRegistry {
    public static let encoders: [EncoderEntry] = {
        func resnet(_ name: String, _ depth: ResNetEncoder.Depth, _ style: DilationStyle, _ summary: String) -> EncoderEntry {
            EncoderEntry(name: name, group: nil, scales: 1, summary: summary) { spec, rng in
                guard spec.outputStride == 8 || spec.outputStride == 16 else {
                    throw MTLError("model.output_stride: expected 8 or 16, found \(spec.outputStride)")
                }
                guard spec.width >= 1 else { throw MTLError("model.width: expected >= 1, found \(spec.width)") }
                return ResNetEncoder(depth: depth, width: spec.width, outputStride: spec.outputStride, style: style,
                                     prefix: "encoder", rng: &rng)
            }
        }
        func hrnet(_ name: String, _ arch: HRNetEncoder.Architecture, _ summary: String) -> EncoderEntry {
            EncoderEntry(name: name, group: nil, scales: 4, summary: summary) { spec, rng in
                HRNetEncoder(arch, fuse: spec.fuseUpsample, prefix: "encoder", rng: &rng)
            }
        }
        func swin(_ name: String, _ variant: SwinVariant, _ summary: String) -> EncoderEntry {
            EncoderEntry(name: name, group: "swin", scales: 4, summary: summary) { spec, rng in
                SwinEncoder(variant, options: spec.swin, prefix: "encoder", rng: &rng)
            }
        }
        return [
            resnet("resnet18", .r18, .resnetDilated, "dilated ResNet-18 (model.width, model.output_stride 8|16)"),
            resnet("resnet34", .r34, .resnetDilated, "dilated ResNet-34"),
            resnet("resnet50", .r50, .resnetDilated, "dilated ResNet-50 (torchvision names)"),
            resnet("resnet101", .r101, .resnetDilated, "dilated ResNet-101"),
            resnet("bench", .r18, .bench, "ResNet-18 with the bench network's dilation (../shared/bench/torch_ref.py)"),
            hrnet("hrnet18s", .w18Small, "HRNetV2-W18-Small-v2, strides 4/8/16/32 (model.fuse_upsample)"),
            hrnet("hrnet18", .w18, "HRNet-W18, strides 4/8/16/32"),
            swin("swin_t", .tiny, "Swin-T, dense-prediction variant, strides 4–32 (model.swin.*)"),
            swin("swin_s", .small, "Swin-S"),
            swin("swin_b", .base, "Swin-B"),
        ]
    }()

    public static let necks: [NeckEntry] = [
        NeckEntry(name: "none", group: nil, scales: nil, summary: "the encoder's features go to the decoder") { encoder, _, _ in encoder },
        NeckEntry(name: "saff", group: "tif", scales: 4,
                  summary: "TIF-R's SAFF on each of four scales, shared by the tasks (model.tif.saff, model.tif.kv_single)") {
            encoder, spec, rng in TIFEncoder(backbone: encoder, options: spec.tif, rng: &rng)
        },
        NeckEntry(name: "fpn", group: "mtcp", scales: 4, outputScales: 1,
                  summary: "MT-CP's FPN-lite: the four scales fused into one 256 × H/4 × W/4 map (model.mtcp.dim)") {
            encoder, spec, rng in MTCPEncoder(backbone: encoder, dim: spec.mtcp.dim, rng: &rng)
        },
    ]

    public static let decoders: [DecoderEntry] = [
        DecoderEntry(name: "deeplab", group: nil, scales: 1, neck: nil,
                     summary: "per task DeepLab-v3 ASPP head (model.head_channels)") { spec, channels, rng in
            let rates = spec.outputStride == 8 ? [12, 24, 36] : [6, 12, 18]
            return PerTaskHeads(spec.tasks.map { t in
                DeepLabHead("heads.\(t.name)", inChannels: channels[0], outChannels: t.channels,
                            channels: spec.headChannels, rates: rates, rng: &rng)
            })
        },
        DecoderEntry(name: "bench", group: nil, scales: 1, neck: nil,
                     summary: "per task the bench network's head (model.head_channels)") { spec, channels, rng in
            PerTaskHeads(spec.tasks.map { t in
                BenchHead("heads.\(t.name)", inChannels: channels[0], outChannels: t.channels, channels: spec.headChannels, rng: &rng)
            })
        },
        DecoderEntry(name: "multiscale", group: nil, scales: nil, neck: nil,
                     summary: "per task MTI-Net/ATRC's HRNet baseline head: all scales to stride 4, concat, 1×1 conv-BN-ReLU, 1×1") {
            spec, channels, rng in
            PerTaskHeads(spec.tasks.map { t in
                MultiScaleHead("heads.\(t.name)", inChannels: channels, outChannels: t.channels, channels: spec.headChannels, rng: &rng)
            })
        },
        DecoderEntry(name: "tif", group: "tif", scales: 4, neck: "saff",
                     summary: "TIF-R's per-task SFD, LTHD, fusion and heads (model.tif.*)") { spec, channels, rng in
            PerTaskHeads(spec.tasks.map { t in
                TIFHead(task: t.name, widths: channels, tasks: spec.tasks.count, outChannels: t.channels, options: spec.tif, rng: &rng)
            })
        },
        DecoderEntry(name: "kem", group: "kem", scales: 4, neck: nil,
                     summary: "KEM-R's joint decoder on scales 1–3, MTFormer-T skeleton (model.kem.*)") { spec, channels, rng in
            try KEMDecoder.validate(spec.kem, tasks: spec.tasks.count)
            return KEMDecoder(tasks: spec.tasks, inChannels: channels, options: spec.kem, rng: &rng)
        },
        DecoderEntry(name: "mtcp", group: "mtcp", scales: 1, neck: "fpn",
                     summary: "MT-CP's per-task pyramid transformers, coherence fusion, trace-back and heads (model.mtcp.*)") {
            spec, channels, rng in
            try MTCPDecoder.validate(spec.mtcp, tasks: spec.tasks.count)
            return MTCPDecoder(tasks: spec.tasks, inChannels: channels[0], options: spec.mtcp, rng: &rng)
        },
    ]

    public static func encoder(_ name: String) throws -> EncoderEntry {
        guard let e = encoders.first(where: { $0.name == name }) else {
            throw MTLError("model.encoder: expected one of \(encoders.map { $0.name }.joined(separator: "|")), found '\(name)'")
        }
        return e
    }

    public static func neck(_ name: String) throws -> NeckEntry {
        guard let e = necks.first(where: { $0.name == name }) else {
            throw MTLError("model.neck: expected one of \(necks.map { $0.name }.joined(separator: "|")), found '\(name)'")
        }
        return e
    }

    public static func decoder(_ name: String) throws -> DecoderEntry {
        guard let e = decoders.first(where: { $0.name == name }) else {
            throw MTLError("model.decoder: expected one of \(decoders.map { $0.name }.joined(separator: "|")), found '\(name)'")
        }
        return e
    }

    /// The neck a decoder is built on when `model.neck` is not set: its own, else none.
    public static func defaultNeck(decoder: String) -> String {
        decoders.first { $0.name == decoder }?.neck ?? "none"
    }

    /// Whether the three fit together (scales, a decoder's own neck); the builder and the config
    /// reader both call it, so the mistake shows before any data is read.
    public static func checkCombination(encoder: String, neck: String, decoder: String) throws {
        let e = try self.encoder(encoder), n = try self.neck(neck), d = try self.decoder(decoder)
        func names(_ scales: Int) -> String {
            encoders.filter { $0.scales == scales }.map { $0.name }.joined(separator: "|")
        }
        if let need = n.scales, need != e.scales {
            throw MTLError("model.neck: \(neck) needs a \(need)-scale encoder (\(names(need))), found model.encoder \(encoder) with \(e.scales) scale(s)")
        }
        if let own = d.neck, own != neck {
            throw MTLError("model.neck: expected \(own) with model.decoder \(decoder), found \(neck)")
        }
        let given = n.outputScales ?? e.scales
        if let need = d.scales, need != given {
            let fits = need == 1
                ? "use model.decoder: " + decoders.filter { $0.scales != 1 }.map { $0.name }.joined(separator: "|")
                : "use model.encoder: " + names(need)
            let source = n.outputScales == nil ? "model.encoder \(encoder)" : "model.neck \(neck)"
            throw MTLError("model.decoder: \(decoder) reads \(need == 1 ? "one feature scale" : "\(need) feature scales"), \(source) gives \(given) (\(fits))")
        }
    }

    /// Builds the three named components for `spec`.
    static func build(_ spec: ModelSpec, rng: inout Philox) throws -> (encoder: any FeatureEncoder, decoder: any Decoder) {
        try checkCombination(encoder: spec.encoder, neck: spec.neck, decoder: spec.decoder)
        let backbone = try encoder(spec.encoder).build(spec, &rng)
        let features = try neck(spec.neck).build(backbone, spec, &rng)
        let decoder = try self.decoder(spec.decoder).build(spec, features.featureChannels, &rng)
        return (features, decoder)
    }

    /// The components that read `model.<group>.*`, as "decoder tif" / "encoder swin_t|swin_s|swin_b".
    public static func users(ofGroup group: String) -> [(slot: String, names: [String])] {
        let e = encoders.filter { $0.group == group }.map { $0.name }
        let n = necks.filter { $0.group == group }.map { $0.name }
        let d = decoders.filter { $0.group == group }.map { $0.name }
        let all: [(slot: String, names: [String])] = [("encoder", e), ("neck", n), ("decoder", d)]
        return all.filter { !$0.names.isEmpty }
    }
}

// MARK: - the components' parameter groups

extension SwinOptions {
    /// `model.swin.*` (model.drop_path_rate is a model key: the trainer sets it on every encoder that has it).
    public static let configKeys: [ConfigKey<SwinOptions>] = [
        .int("window", \.window, min: 2, "attention window (7 in the papers; the importer resizes the bias tables)"),
        .choice("shift_rule", \.shiftRule,
                "dense: pad then roll, shift in every odd block (dense-prediction code); classification: timm at 224²"),
    ]
}

extension TIFOptions {
    /// `model.tif.*`: the paper's ablations and the alternative readings of eqs. 6, 8, 12 and 14
    /// (docs/ARCHITECTURES.md §1.3–1.4). `saff` and `kv_single` are the neck's, the rest the decoder's.
    public static let configKeys: [ConfigKey<TIFOptions>] = [
        .bool("saff", \.saff, "SAFF on every scale; false: BN(Conv1×1) stand-ins (Table 9 \"W/O SAFF\")"),
        .bool("sfd", \.sfd, "SFD on scales 2 and 3; false also turns LTHD off"),
        .bool("lthd", \.lthd, "LTHD on scales 0 and 1 (needs sfd)"),
        .bool("sfd_scale", \.sfdScale, "A = QKᵀ/√d instead of the paper's QKᵀ (eq. 8)"),
        .bool("kv_single", \.kvSingle, "one K/V matrix instead of N (eq. 6; functionally equal)"),
        .bool("lthd_transpose", \.lthdTranspose, "softmax_rows(A0)ᵀ in eq. 12 (literal channel-first reading)"),
        .bool("fuse_relu", \.fuseReLU, "ReLU after the final FeatureFuse (eq. 14)"),
    ]
}

extension KEMOptions {
    /// `model.kem.*` (docs/ARCHITECTURE.md "KEM"; combinations are checked by KEMDecoder.validate).
    public static let configKeys: [ConfigKey<KEMOptions>] = [
        .choice("mixer", \.mixer, mixers, "memory: KEM/sKEM; cross_attention; none: plain MTFormer-T"),
        .int("dim", \.dim, min: 1, "decoder width d (256; a multiple of heads)"),
        .int("heads", \.heads, min: 1, "attention heads of the decoder's Swin blocks"),
        .int("window", \.window, min: 1, "window of the decoder's Swin blocks"),
        .int("depth", \.depth, min: 1, "Swin blocks per transformer"),
        .int("slots", \.slots, min: 1, "memory slots m"),
        .int("topk", \.topk, min: 1, "top-k of the memory's softmax"),
        .choice("topk_variant", \.topkVariant, variants, "masked: A, SGW's masked softmax; renormalized: B"),
        .choice("topk_axis", \.topkAxis, axes, "tokens: top-k in Retrieve; slots: in Write"),
        .bool("stable", \.stable, "sKEM: ETF scores"),
        .choice("etf_role", \.etfRole, roles, "tasks: K = T (the paper); slots: K = m (sKEM-A)"),
        .bool("etf_projection", \.etfProjection, "sKEM's additional projection W_p"),
        .int("etf_seed", \.etfSeed, min: 0, "Philox seed of the ETF's Gaussian draw"),
        .number("lambda", \.lambda, .nonNegative, "broadcast weight λ"),
        .bool("unused_patch_embed", \.unusedPatchEmbed, "MTFormer's allocated-but-unused patch embeddings (as-in-code counts)"),
    ]
}

extension MTCPOptions {
    /// `model.mtcp.*` (docs/ARCHITECTURE.md "MT-CP"; the code-vs-paper switches docs/ARCHITECTURES.md §4.3;
    /// combinations are checked by MTCPDecoder.validate).
    public static let configKeys: [ConfigKey<MTCPOptions>] = [
        .choice("variant", \.variant, variants, "code: plain FPN as released; paper: the FPN's dynamic weights"),
        .int("cfm_stride", \.cfmStride, allowed: [4, 8], "4: the paper; 8: the CFM on 2×2-pooled maps (16× cheaper affinity)"),
        .int("dim", \.dim, min: 2, "decoder width d = the FPN-lite neck's output (256; even, smaller only for tests)"),
        .ints("depths", \.depths, count: 3, min: 1, "Swin blocks per pyramid stage (1-2-1)"),
        .ints("heads", \.heads, count: 3, min: 1, "attention heads per stage (2-2-2; dividing d·2^s)"),
        .int("window", \.window, min: 1, "window of the pyramid transformer's Swin blocks"),
        .int("reduction", \.reduction, min: 1, "CBAM's MLP reduction"),
        .int("depth_mid", \.depthMid, min: 1, "the depth head's middle width"),
        .choice("head_layout", \.headLayout, layouts, "nyud | pascal: the released code's two head sets"),
        .int("query_block", \.queryBlock, min: 1, "query pixels per block of the CFM affinity (memory block·N, not N²)"),
        .number("inter_weight", \.interWeight, .nonNegative, "weight of each intermediate-prediction loss term (the code's ½)"),
    ]
}
