import Foundation
import MTLCore

// The experiment configuration: one YAML file plus `--set key=value` overrides, resolved
// into typed sections with every default filled in. Every mistake is a one-line MTLError
// that names the file (or the override), the key, what was expected and what was found,
// and for unknown keys the nearest valid key.
//
// Enum-like fields (encoder, head, loss, optimizer name, ...) are validated Strings, so
// callers compare against the same spelling the YAML uses (`cfg.optim.name == "adamw"`).

public struct DataConfig: Equatable {
    public var path = ""
    public var trainSplit = "train"
    public var valSplit = "val"
    public var cache = false
    public var augment = false              // random scale 1–1.5 + crop, h-flip (normals x negated)
    public var prefetch = 2                 // batches read ahead by the loader thread (0 = synchronous)
    public init() {}
}

public struct ModelConfig: Equatable {
    public var encoder = "resnet18"        // resnet18|resnet34|resnet50|resnet101|bench|hrnet18s|hrnet18
    public var width = 64                  // ResNet base width (64 = torchvision); the HRNets have their official widths
    public var outputStride = 8            // 8|16 (ResNet; the HRNets give strides 4, 8, 16, 32)
    public var head = "deeplab"            // deeplab|bench (one feature scale) | multiscale (MTI-Net's HRNet baseline head) | tif (TIF-R) | kem (KEM-R's joint decoder, model.kem.*)
    public var headChannels = 256
    public var fuseUpsample = "bilinear"   // HRNet fuse: bilinear (mmseg/ATRC) | nearest (timm)
    public var pretrained = ""             // HDF5 file of torchvision-named tensors, "" = random init
    public var syncBN = false
    public var convBackend = "auto"         // auto|onednn|blas (auto: oneDNN where it has a CPU engine)
    public var convDx = "transposed"       // stride-1 input gradient: transposed (forward conv of dy) | col2im
    public var freezeEncoder = false        // encoder forward only, in eval mode, never updated (KEM's frozen Swin)
    public var dropPathRate = 0.0          // Swin stochastic depth of the last block (linear from 0), in [0, 1)
    public var swinWindow = 7              // model.swin.window
    public var swinShiftRule = "dense"     // model.swin.shift_rule: dense | classification (timm at 224²)
    public var tif = TIFConfig()            // model.tif.*, only with head tif
    public var kem = KEMConfig()            // model.kem.* (model.head: kem)
    public var mtcp = MTCPConfig()          // model.mtcp.* (model.head: mtcp; MTCPConfig.swift)
    public init() {}
}

/// TIF-R's switches (`model.tif.*`; docs/ARCHITECTURES.md §1.3–1.4): the paper's ablations (SAFF, SFD,
/// LTHD; SFD off turns LTHD off) and the alternative readings of eqs. 6, 8, 12 and 14.
public struct TIFConfig: Equatable {
    public var saff = true
    public var sfd = true
    public var lthd = true
    public var sfdScale = false             // A = QKᵀ/√d instead of the paper's QKᵀ
    public var kvSingle = false             // one K/V matrix instead of N
    public var lthdTranspose = false        // softmax_rows(A0)ᵀ in eq. 12
    public var fuseReLU = false             // ReLU after the final FeatureFuse
    public init() {}
    static let keys = ["saff", "sfd", "lthd", "sfd_scale", "kv_single", "lthd_transpose", "fuse_relu"]
    var values: [Bool] { [saff, sfd, lthd, sfdScale, kvSingle, lthdTranspose, fuseReLU] }
}

/// `model.kem.*`: the KEM decoder's settings (MTLModels.KEMOptions; docs/ARCHITECTURE.md "KEM").
public struct KEMConfig: Equatable {
    public var mixer = "memory"            // memory (KEM/sKEM) | cross_attention | none (MTFormer-T)
    public var dim = 256                   // decoder width (smaller only for tests)
    public var heads = 4
    public var window = 7
    public var depth = 2                   // Swin blocks per transformer
    public var slots = 20
    public var topk = 3
    public var topkVariant = "masked"      // masked (A, SGW) | renormalized (B)
    public var topkAxis = "tokens"         // tokens (top-k in Retrieve) | slots (in Write)
    public var stable = false              // sKEM
    public var etfRole = "tasks"           // tasks (K = T) | slots (K = m)
    public var etfProjection = true
    public var etfSeed = 0
    public var lambda = 1.0
    public var unusedPatchEmbed = true     // MTFormer's allocated-but-unused patch embeddings (as-in-code counts)
    public init() {}

    static let keys = ["mixer", "dim", "heads", "window", "depth", "slots", "topk", "topk_variant", "topk_axis", "stable",
                       "etf_role", "etf_projection", "etf_seed", "lambda", "unused_patch_embed"]
    static let mixers = ["memory", "cross_attention", "none"]
    static let variants = ["masked", "renormalized"]
    static let axes = ["tokens", "slots"]
    static let roles = ["tasks", "slots"]
}

public struct TaskConfig: Equatable {
    public var name: String
    public var role: TaskRole
    public var loss: String                // ce|l1|cosine|bce|normal_l1|balanced_bce (ATRC's normals / edges)
    public var classes: Int                // 0 = from the dataset
    public var weight: Double
    public var frozen: Bool
    public var posWeight: Double           // bce: PyTorch's pos_weight; balanced_bce: ATRC's w in (0, 1)

    /// A task with the per-task defaults (role auxiliary; loss from the task name).
    public init(name: String, role: TaskRole = .auxiliary, loss: String? = nil, classes: Int = 0,
                weight: Double = 1.0, frozen: Bool = false, posWeight: Double = 1.0) {
        self.name = name
        self.role = role
        self.loss = loss ?? TaskConfig.defaultLoss[name] ?? "l1"
        self.classes = classes
        self.weight = weight
        self.frozen = frozen
        self.posWeight = posWeight
    }

    public static let names = ["seg", "depth", "normals", "edges", "parts", "saliency"]
    public static let defaultLoss = ["seg": "ce", "parts": "ce", "depth": "l1", "normals": "cosine",
                                     "edges": "bce", "saliency": "bce"]
}

public struct TrainConfig: Equatable {
    public var steps = 1000
    public var batchSize = 8               // GLOBAL batch, split over the ranks
    public var seed = 0
    public var evalEvery = 0               // 0 = only at the end
    public var threads = 0                 // 0 = auto
    public var nanPolicy = "stop"          // stop|skip
    public var blasThreads = "mtl"          // mtl: GEMMs split over mtl's threads, OpenBLAS single-threaded | openblas
    public init() {}
}

public struct DistConfig: Equatable {
    public var overlap = true              // overlap the bucketed gradient all-reduce with the encoder backward
    public var bucketMB = 25.0             // bucket size of that all-reduce, MiB
    public init() {}
}

public struct OptimConfig: Equatable {
    public var name = "adam"               // adam|adamw|sgd
    public var lr = 1.0e-4
    public var momentum = 0.9
    public var nesterov = false
    public var weightDecay = 0.0
    public var beta1 = 0.9
    public var beta2 = 0.999
    public var eps = 1.0e-8
    public init() {}
}

public struct ScheduleConfig: Equatable {
    public var name = "constant"           // constant|step|poly|cosine
    public var warmupSteps = 0
    public var warmupFactor = 0.001
    public var stepSize = 1000
    public var gamma = 0.1
    public var power = 0.9
    public var minLR = 0.0
    public init() {}
}

public struct LogConfig: Equatable {
    public var every = 10
    public init() {}
}

public struct CheckpointConfig: Equatable {
    public var every = 0                   // 0 = only at the end
    public var keep = 3                    // 0 = keep all
    public init() {}
}

public struct MethodConfig: Equatable {
    public var name = "ew"
    public var level = "representation"    // representation|parameters
    /// `method.<group>.<key>: scalar` as written (method name → key → raw scalar text);
    /// the methods module validates and converts them.
    public var params: [String: [String: String]] = [:]
    public init() {}
}

public struct Config: Equatable {
    public var data = DataConfig()
    public var model = ModelConfig()
    /// In file order.
    public var tasks: [TaskConfig] = [TaskConfig(name: "seg", role: .primary),
                                      TaskConfig(name: "depth"), TaskConfig(name: "normals")]
    public var train = TrainConfig()
    public var optim = OptimConfig()
    public var schedule = ScheduleConfig()
    public var log = LogConfig()
    public var checkpoint = CheckpointConfig()
    public var method = MethodConfig()
    public var dist = DistConfig()

    /// All defaults (tasks: seg primary, depth and normals auxiliary).
    public init() {}

    public func task(named name: String) -> TaskConfig? { tasks.first { $0.name == name } }
    public var primaryTask: TaskConfig? { tasks.first { $0.role == .primary } }

    // MARK: schema (the single list of valid keys: used for unknown-key detection and suggestions)

    static let sections: [(String, [String])] = [
        ("data", ["path", "train_split", "val_split", "cache", "augment", "prefetch"]),
        ("model", ["encoder", "width", "output_stride", "head", "head_channels", "fuse_upsample", "pretrained", "sync_bn",
                   "conv_backend", "conv_dx", "freeze_encoder", "drop_path_rate", "swin", "tif", "kem", "mtcp"]),
        ("tasks", []),
        ("train", ["steps", "batch_size", "seed", "eval_every", "threads", "nan_policy", "blas_threads"]),
        ("optim", ["name", "lr", "momentum", "nesterov", "weight_decay", "beta1", "beta2", "eps"]),
        ("schedule", ["name", "warmup_steps", "warmup_factor", "step_size", "gamma", "power", "min_lr"]),
        ("log", ["every"]),
        ("checkpoint", ["every", "keep"]),
        ("method", ["name", "level"]),
        ("dist", ["overlap", "bucket_mb"]),
    ]
    static let taskKeys = ["role", "loss", "classes", "weight", "frozen", "pos_weight"]
    static let encoders = ["resnet18", "resnet34", "resnet50", "resnet101", "bench", "hrnet18s", "hrnet18",
                           "swin_t", "swin_s", "swin_b"]
    static let heads = ["deeplab", "bench", "multiscale", "tif", "kem", "mtcp"]
    static let fuseUpsamples = ["bilinear", "nearest"]
    static let swinKeys = ["window", "shift_rule"]
    static let swinShiftRules = ["dense", "classification"]
    public static let convBackends = ["auto", "onednn", "blas"]
    public static let convDxs = ["transposed", "col2im"]
    public static let blasThreadOwners = ["mtl", "openblas"]
    static let losses = ["ce", "l1", "cosine", "bce", "normal_l1", "balanced_bce"]
    static let optimizers = ["adam", "adamw", "sgd"]
    static let schedules = ["constant", "step", "poly", "cosine"]
    static let nanPolicies = ["stop", "skip"]
    static let levels = ["representation", "parameters"]   // MTLMethods.GradientLevel

    // MARK: loading

    /// Reads `path` and applies `overrides` ("section.key=value", "tasks.depth.role=primary",
    /// "method.ial.lr=0.01", or a whole mapping: "tasks={seg: {role: primary}, depth: {}}").
    public static func load(path: String, overrides: [String] = []) throws -> Config {
        guard FileManager.default.fileExists(atPath: path) else { throw MTLError("\(path): config file not found") }
        guard let data = FileManager.default.contents(atPath: path),
              let text = String(data: data, encoding: .utf8) else {
            throw MTLError("\(path): cannot read the config file as UTF-8 text")
        }
        return try parse(yaml: text, source: path, overrides: overrides)
    }

    /// Parses YAML text; `source` names it in error messages.
    public static func parse(yaml: String, source: String, overrides: [String] = []) throws -> Config {
        var root = try YValue.compose(yaml, source: source)
        if case .null = root { root = .map([]) }
        guard case .map = root else {
            throw MTLError("\(source): expected a mapping of sections (data, model, tasks, ...), found \(root.kind)")
        }
        var origins: [String: String] = [:]  // dotted key → "override '...'" for keys set on the command line
        for o in overrides {
            let origin = "override '\(o)'"
            guard let eq = o.firstIndex(of: "=") else {
                throw MTLError("\(origin): expected key=value (e.g. train.steps=100)")
            }
            let key = o[..<eq].trimmingCharacters(in: .whitespaces)
            let valueText = String(o[o.index(after: eq)...])
            let path = key.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            if key.isEmpty || path.contains(where: { $0.isEmpty }) {
                throw MTLError("\(origin): malformed key '\(key)' (expected section.key, e.g. train.steps)")
            }
            try checkOverrideKey(path, origin: origin)
            let value = try YValue.compose(valueText, source: origin)
            try root.set(path, value, origin: origin)
            origins[key] = origin
        }
        let reader = Reader(source: source, origins: origins)
        return try reader.config(root)
    }

    /// An override's key must exist in the schema (checked before applying, so that the
    /// error names the override rather than the file).
    static func checkOverrideKey(_ path: [String], origin: String) throws {
        let dotted = path.joined(separator: ".")
        func unknown() -> MTLError {
            MTLError("\(origin): unknown key '\(dotted)' (did you mean '\(suggest(path))'?)")
        }
        guard let keys = sections.first(where: { $0.0 == path[0] })?.1 else { throw unknown() }
        if path.count == 1 { return }
        switch path[0] {
        case "tasks":
            guard TaskConfig.names.contains(path[1]), path.count <= 3 else { throw unknown() }
            if path.count == 3, !taskKeys.contains(path[2]) { throw unknown() }
        case "method":
            // method.name / method.level are scalars; anything else is a parameter group (≤ 3 parts).
            if keys.contains(path[1]) ? path.count > 2 : path.count > 3 { throw unknown() }
        case "model" where path[1] == "swin":
            if path.count == 3, !swinKeys.contains(path[2]) { throw unknown() }
            if path.count > 3 { throw unknown() }
        case "model" where path[1] == "tif":
            guard path.count == 2 || (path.count == 3 && TIFConfig.keys.contains(path[2])) else { throw unknown() }
        case "model" where path[1] == "kem" && path.count > 2:
            // model.kem is a mapping of its own (model.kem.slots=...).
            guard path.count == 3, KEMConfig.keys.contains(path[2]) else { throw unknown() }
        case "model" where path[1] == "mtcp" && path.count > 2:
            guard path.count == 3, MTCPConfig.keys.contains(path[2]) else { throw unknown() }
        default:
            guard path.count == 2, keys.contains(path[1]) else { throw unknown() }
        }
    }

    /// The nearest valid key to an unknown dotted key: edit distance between the last
    /// components, plus one when the parent differs (so `train.lr` → `optim.lr`).
    static func suggest(_ path: [String]) -> String {
        // A misspelt task name: suggest the nearest task, keeping a valid task key after it.
        if path.count >= 2, path[0] == "tasks", !TaskConfig.names.contains(path[1]) {
            let best = TaskConfig.names.min { editDistance(path[1], $0) < editDistance(path[1], $1) }!
            let rest = path.count == 3 && taskKeys.contains(path[2]) ? [path[2]] : []
            return (["tasks", best] + rest).joined(separator: ".")
        }
        // Too deep under method: parameters are method.<name>.<key>.
        if path.count > 3, path[0] == "method" { return path.prefix(3).joined(separator: ".") }
        var candidates: [[String]] = []
        for (s, keys) in sections {
            candidates.append([s])
            for k in keys { candidates.append([s, k]) }
        }
        for k in swinKeys { candidates.append(["model", "swin", k]) }
        for t in TaskConfig.names { candidates.append(["tasks", t]) }
        for k in TIFConfig.keys { candidates.append(["model", "tif", k]) }
        for k in KEMConfig.keys { candidates.append(["model", "kem", k]) }
        for k in MTCPConfig.keys { candidates.append(["model", "mtcp", k]) }
        let task = path.count >= 3 && path[0] == "tasks" ? path[1] : "seg"
        for k in taskKeys { candidates.append(["tasks", task, k]) }
        let leaf = path.last!, parent = Array(path.dropLast())
        var best = candidates[0], bestScore = Int.max
        for c in candidates {
            let score = keyDistance(leaf, c.last!) + (Array(c.dropLast()) == parent ? 0 : 1)
            if score < bestScore { best = c; bestScore = score }
        }
        return best.joined(separator: ".")
    }

    /// Edit distance, except that a key contained in the other (`warmup` in `warmup_steps`)
    /// counts as one edit away: shortened names are the commonest misspelling.
    static func keyDistance(_ a: String, _ b: String) -> Int {
        let d = editDistance(a, b)
        if (a.count >= 3 && b.contains(a)) || (b.count >= 3 && a.contains(b)) { return min(d, 1) }
        return d
    }

    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var prev = Array(0...b.count), cur = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            cur[0] = i
            for j in 1...b.count {
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            swap(&prev, &cur)
        }
        return prev[b.count]
    }

    // MARK: emitting

    /// The fully resolved config (every default filled in), re-parsable to an equal Config.
    public func yaml() -> String {
        var out = ""
        func section(_ name: String, _ pairs: [(String, String)]) {
            out += "\(name):\n"
            for (k, v) in pairs { out += "  \(k):\(v.hasPrefix("\n") ? "" : " ")\(v)\n" }
        }
        section("data", [("path", yamlString(data.path)), ("train_split", yamlString(data.trainSplit)),
                         ("val_split", yamlString(data.valSplit)), ("cache", "\(data.cache)"),
                         ("augment", "\(data.augment)"), ("prefetch", "\(data.prefetch)")])
        section("model", [("encoder", yamlString(model.encoder)), ("width", "\(model.width)"),
                          ("output_stride", "\(model.outputStride)"), ("head", yamlString(model.head)),
                          ("head_channels", "\(model.headChannels)"), ("fuse_upsample", yamlString(model.fuseUpsample)),
                          ("pretrained", yamlString(model.pretrained)),
                          ("sync_bn", "\(model.syncBN)"), ("conv_backend", yamlString(model.convBackend)),
                          ("conv_dx", yamlString(model.convDx)), ("freeze_encoder", "\(model.freezeEncoder)"),
                          ("drop_path_rate", yamlDouble(model.dropPathRate)),
                          ("swin", "\n    window: \(model.swinWindow)\n    shift_rule: \(yamlString(model.swinShiftRule))")]
                        + (model.head == "kem" || model.kem != KEMConfig() ? [("kem", model.kem.flowYAML)] : [])
                        + (model.head == "mtcp" ? [("mtcp", model.mtcp.flowYAML)] : []))
        if model.head == "tif" {
            out += "  tif:\n"
            for (k, v) in zip(TIFConfig.keys, model.tif.values) { out += "    \(k): \(v)\n" }
        }
        out += tasks.isEmpty ? "tasks: {}\n" : "tasks:\n"
        for t in tasks {
            out += "  \(t.name):\n"
            for (k, v) in [("role", t.role.rawValue), ("loss", yamlString(t.loss)), ("classes", "\(t.classes)"),
                           ("weight", yamlDouble(t.weight)), ("frozen", "\(t.frozen)"),
                           ("pos_weight", yamlDouble(t.posWeight))] {
                out += "    \(k): \(v)\n"
            }
        }
        section("train", [("steps", "\(train.steps)"), ("batch_size", "\(train.batchSize)"), ("seed", "\(train.seed)"),
                          ("eval_every", "\(train.evalEvery)"), ("threads", "\(train.threads)"),
                          ("nan_policy", yamlString(train.nanPolicy)), ("blas_threads", yamlString(train.blasThreads))])
        section("optim", [("name", yamlString(optim.name)), ("lr", yamlDouble(optim.lr)),
                          ("momentum", yamlDouble(optim.momentum)), ("nesterov", "\(optim.nesterov)"),
                          ("weight_decay", yamlDouble(optim.weightDecay)), ("beta1", yamlDouble(optim.beta1)),
                          ("beta2", yamlDouble(optim.beta2)), ("eps", yamlDouble(optim.eps))])
        section("schedule", [("name", yamlString(schedule.name)), ("warmup_steps", "\(schedule.warmupSteps)"),
                             ("warmup_factor", yamlDouble(schedule.warmupFactor)), ("step_size", "\(schedule.stepSize)"),
                             ("gamma", yamlDouble(schedule.gamma)), ("power", yamlDouble(schedule.power)),
                             ("min_lr", yamlDouble(schedule.minLR))])
        section("log", [("every", "\(log.every)")])
        section("checkpoint", [("every", "\(checkpoint.every)"), ("keep", "\(checkpoint.keep)")])
        section("dist", [("overlap", "\(dist.overlap)"), ("bucket_mb", yamlDouble(dist.bucketMB))])
        section("method", [("name", yamlString(method.name)), ("level", yamlString(method.level))])
        for group in method.params.keys.sorted() {
            out += "  \(yamlRaw(group)):\n"
            for (k, v) in method.params[group]!.sorted(by: { $0.key < $1.key }) {
                out += "    \(yamlRaw(k)): \(yamlRaw(v))\n"
            }
        }
        return out
    }
}

// MARK: - YAML scalars out

/// Shortest round-trip form, with a ".0" in the mantissa so YAML 1.1 readers (PyYAML) see a float.
func yamlDouble(_ x: Double) -> String {
    var s = "\(x)"
    if let e = s.firstIndex(where: { $0 == "e" || $0 == "E" }), !s[..<e].contains(".") {
        s.insert(contentsOf: ".0", at: e)
    }
    return s
}

private let plainChars = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./+-")
private let yamlSpecialWords: Set<String> = ["null", "~", "true", "false", "yes", "no", "on", "off", "y", "n"]

/// A string field: plain when no YAML reader could take it for a number, bool or null.
func yamlString(_ s: String) -> String {
    let safe = !s.isEmpty && s.allSatisfy { plainChars.contains($0) } && (s.first!.isLetter || s.first == "/" || s.first == "_")
        && !yamlSpecialWords.contains(s.lowercased())
    return safe ? s : quoted(s)
}

/// A raw method parameter: numbers and words stay plain so they keep their YAML type.
func yamlRaw(_ s: String) -> String {
    let safe = !s.isEmpty && s.allSatisfy { plainChars.contains($0) }
    return safe ? s : quoted(s)
}

private func quoted(_ s: String) -> String {
    var out = "\""
    for ch in s.unicodeScalars {
        switch ch {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\t": out += "\\t"
        case "\r": out += "\\r"
        default:
            if ch.value < 0x20 { out += String(format: "\\x%02X", ch.value) } else { out.unicodeScalars.append(ch) }
        }
    }
    return out + "\""
}

extension KEMConfig {
    /// `{mixer: memory, dim: 256, …}`: one flow mapping under `model:` in the resolved config.
    var flowYAML: String {
        let pairs: [(String, String)] = [
            ("mixer", yamlString(mixer)), ("dim", "\(dim)"), ("heads", "\(heads)"), ("window", "\(window)"),
            ("depth", "\(depth)"), ("slots", "\(slots)"), ("topk", "\(topk)"), ("topk_variant", yamlString(topkVariant)),
            ("topk_axis", yamlString(topkAxis)), ("stable", "\(stable)"), ("etf_role", yamlString(etfRole)),
            ("etf_projection", "\(etfProjection)"), ("etf_seed", "\(etfSeed)"), ("lambda", yamlDouble(lambda)),
            ("unused_patch_embed", "\(unusedPatchEmbed)")]
        return "{" + pairs.map { "\($0.0): \($0.1)" }.joined(separator: ", ") + "}"
    }
}
