import Foundation
import MTLCore
import MTLModels

// The experiment configuration: one YAML file plus `--set key=value` overrides, resolved
// into typed sections with every default filled in. Every mistake is a one-line MTLError
// that names the file (or the override), the key, what was expected and what was found,
// and for unknown keys the nearest valid key.
//
// Each key is declared once, in the `keys` table of its section (below the section's struct;
// the field's initial value is the default): the reader, the resolved config.yaml, the
// suggestions for unknown keys and `mtl keys` all come from these tables. The model's
// components (ModelRegistry) declare their own `model.<group>.*` keys next to their options.
//
// Enum-like fields (encoder, decoder, loss, optimizer name, ...) are validated Strings, so
// callers compare against the same spelling the YAML uses (`cfg.optim.name == "adamw"`).

public struct DataConfig: Equatable {
    public var path = ""
    public var trainSplit = "train"
    public var valSplit = "val"
    public var cache = false
    public var augment = false
    public var prefetch = 2
    public init() {}

    static let keys: [ConfigKey<DataConfig>] = [
        .string("path", \.path, "the dataset file (mtdp-hdf5 schema, docs/DATASETS.md)"),
        .string("train_split", \.trainSplit, "split trained on"),
        .string("val_split", \.valSplit, "split evaluated on"),
        .bool("cache", \.cache, "hold the decoded split in memory"),
        .bool("augment", \.augment, "random scale 1–1.5 + crop, h-flip (normals' x negated)"),
        .int("prefetch", \.prefetch, min: 0, "batches read ahead by the loader thread (0 = synchronous)"),
    ]
}

public struct ModelConfig: Equatable {
    public var encoder = "resnet18"
    public var neck = "none"
    public var decoder = "deeplab"
    public var width = 64
    public var outputStride = 8
    public var headChannels = 256
    public var fuseUpsample = FuseUpsample.bilinear
    public var pretrained = ""
    public var syncBN = false
    public var convBackend = "auto"
    public var convDx = "transposed"
    public var freezeEncoder = false
    /// model.swin.* and model.drop_path_rate (Swin encoders).
    public var swin = SwinOptions()
    /// model.tif.* (neck saff, decoder tif).
    public var tif = TIFOptions()
    /// model.kem.* (decoder kem).
    public var kem = KEMOptions()
    /// model.mtcp.* (neck fpn, decoder mtcp).
    public var mtcp = MTCPOptions()
    public init() {}

    static let keys: [ConfigKey<ModelConfig>] = [
        .choice("encoder", \.encoder, ModelRegistry.encoders.map { $0.name }, "the shared encoder (ModelRegistry.encoders)"),
        .choice("neck", \.neck, ModelRegistry.necks.map { $0.name },
                "between encoder and decoder, on the shared side; unset: the decoder's own (saff for tif), else none"),
        .choice("decoder", \.decoder, ModelRegistry.decoders.map { $0.name },
                "per-task heads (deeplab, bench: one scale; multiscale) or an architecture's decoder (tif, kem, mtcp)"),
        .int("width", \.width, min: 1, "ResNet base width (64 = torchvision); HRNet and Swin have their official widths"),
        .int("output_stride", \.outputStride, allowed: [8, 16], "ResNet output stride"),
        .int("head_channels", \.headChannels, min: 1, "ASPP channels (deeplab), branch channels (bench), hidden width (multiscale)"),
        .choice("fuse_upsample", \.fuseUpsample, "HRNet fuse: bilinear (mmseg/ATRC) | nearest (timm)"),
        .string("pretrained", \.pretrained, "HDF5 file of encoder tensors (torchvision/mmseg/official names); \"\" = random init"),
        .bool("sync_bn", \.syncBN, "BatchNorm statistics summed over all ranks"),
        .choice("conv_backend", \.convBackend, Config.convBackends, "auto: oneDNN where it has a CPU engine"),
        .choice("conv_dx", \.convDx, Config.convDxs, "stride-1 input gradient: transposed (forward conv of dy) | col2im"),
        .bool("freeze_encoder", \.freezeEncoder, "encoder forward only, in eval mode, never updated (KEM's frozen Swin)"),
        .number("drop_path_rate", \.swin.dropPathRate, .unitHalfOpen, "Swin stochastic depth of the last block (linear from 0)"),
    ]

    /// The components' parameter groups `model.<group>.*` (ModelRegistry: which component reads which).
    static let groups: [(name: String, keys: [ConfigKey<ModelConfig>])] = [
        ("swin", SwinOptions.configKeys.map { $0.at(\ModelConfig.swin) }),
        ("tif", TIFOptions.configKeys.map { $0.at(\ModelConfig.tif) }),
        ("kem", KEMOptions.configKeys.map { $0.at(\ModelConfig.kem) }),
        ("mtcp", MTCPOptions.configKeys.map { $0.at(\ModelConfig.mtcp) }),
    ]

    /// The old name of `decoder`, still read (with a note in train.log).
    static let deprecatedHead = "head"

    /// The selected component of a slot ("encoder", "neck", "decoder").
    func selected(_ slot: String) -> String {
        switch slot {
        case "encoder": return encoder
        case "neck": return neck
        default: return decoder
        }
    }

    /// The groups the selected components read, in table order.
    var selectedGroups: [String] {
        Config.ModelGroups.names.filter { g in
            ModelRegistry.users(ofGroup: g).contains { $0.names.contains(selected($0.slot)) }
        }
    }
}

public struct TaskConfig: Equatable {
    public var name: String
    public var role: TaskRole
    public var loss: String
    public var classes: Int                // 0 = from the dataset
    public var weight: Double
    public var frozen: Bool
    public var posWeight: Double           // bce: PyTorch's pos_weight; balanced_bce: ATRC's w in (0, 1)

    /// A task with the per-task defaults (role auxiliary; loss from the task name).
    public init(name: String, role: TaskRole = .auxiliary, loss: String? = nil, classes: Int = 0,
                weight: Double = 1.0, frozen: Bool = false, posWeight: Double = 1.0) {
        self.name = name
        self.role = role
        self.loss = loss ?? TaskKind.named(name)?.defaultLoss ?? "l1"
        self.classes = classes
        self.weight = weight
        self.frozen = frozen
        self.posWeight = posWeight
    }

    /// The task names (MTLCore.TaskKind).
    public static let names = TaskKind.names

    /// `tasks.<name>.*`.
    static let keys: [ConfigKey<TaskConfig>] = [
        .choice("role", \.role, "primary (the task cared about) | auxiliary"),
        .choice("loss", \.loss, LossKind.names, "the task's loss, one of its kind's (TaskKind.losses); default the kind's"),
        .int("classes", \.classes, min: 0, "output classes of a ce task; 0 = the dataset's num_classes"),
        .number("weight", \.weight, .nonNegative, "fixed loss weight (methods reweight on top)"),
        .bool("frozen", \.frozen, "the task's own decoder parameters are not trained"),
        .number("pos_weight", \.posWeight, .positive, "bce: PyTorch's pos_weight; balanced_bce: ATRC's w in (0, 1)"),
    ]
}

public struct TrainConfig: Equatable {
    public var steps = 1000
    public var batchSize = 8
    public var seed = 0
    public var evalEvery = 0
    public var threads = 0
    public var nanPolicy = "stop"
    public var blasThreads = "mtl"
    public init() {}

    static let keys: [ConfigKey<TrainConfig>] = [
        .int("steps", \.steps, min: 1, "optimizer steps"),
        .int("batch_size", \.batchSize, min: 1, "GLOBAL batch, split over the ranks (a multiple of their number)"),
        .int("seed", \.seed, min: 0, "initialisation, sampling, augmentation and method randomness"),
        .int("eval_every", \.evalEvery, min: 0, "steps between evaluations (0 = only at the end)"),
        .int("threads", \.threads, min: 0, "threads per rank (0 = MTL_THREADS / SLURM_CPUS_PER_TASK / OMP_NUM_THREADS / cores ÷ ranks)"),
        .choice("nan_policy", \.nanPolicy, Config.nanPolicies, "a non-finite loss: stop the run | skip the step"),
        .choice("blas_threads", \.blasThreads, Config.blasThreadOwners,
                "mtl: GEMMs split over mtl's threads, OpenBLAS single-threaded | openblas"),
    ]
}

public struct DistConfig: Equatable {
    public var overlap = true
    public var bucketMB = 25.0
    public init() {}

    static let keys: [ConfigKey<DistConfig>] = [
        .bool("overlap", \.overlap, "overlap the bucketed gradient all-reduce with the encoder backward"),
        .number("bucket_mb", \.bucketMB, .positive, "bucket size of that all-reduce, MiB"),
    ]
}

public struct OptimConfig: Equatable {
    public var name = "adam"
    public var lr = 1.0e-4
    public var momentum = 0.9
    public var nesterov = false
    public var weightDecay = 0.0
    public var beta1 = 0.9
    public var beta2 = 0.999
    public var eps = 1.0e-8
    public init() {}

    static let keys: [ConfigKey<OptimConfig>] = [
        .choice("name", \.name, Config.optimizers, "adam | adamw (decoupled weight decay) | sgd"),
        .number("lr", \.lr, .positive, "peak learning rate"),
        .number("momentum", \.momentum, .nonNegative, "sgd momentum"),
        .bool("nesterov", \.nesterov, "sgd Nesterov momentum (needs momentum > 0)"),
        .number("weight_decay", \.weightDecay, .nonNegative, "L2 (adam, sgd) or decoupled (adamw) weight decay"),
        .number("beta1", \.beta1, .unitHalfOpen, "Adam β1"),
        .number("beta2", \.beta2, .unitHalfOpen, "Adam β2"),
        .number("eps", \.eps, .positive, "Adam ε"),
    ]
}

public struct ScheduleConfig: Equatable {
    public var name = "constant"
    public var warmupSteps = 0
    public var warmupFactor = 0.001
    public var stepSize = 1000
    public var gamma = 0.1
    public var power = 0.9
    public var minLR = 0.0
    public init() {}

    static let keys: [ConfigKey<ScheduleConfig>] = [
        .choice("name", \.name, Config.schedules, "learning-rate schedule after the warm-up"),
        .int("warmup_steps", \.warmupSteps, min: 0, "linear warm-up steps"),
        .number("warmup_factor", \.warmupFactor, .unitClosed, "lr factor at step 0 of the warm-up"),
        .int("step_size", \.stepSize, min: 1, "step: steps between decays"),
        .number("gamma", \.gamma, .positive, "step: decay factor"),
        .number("power", \.power, .nonNegative, "poly: exponent"),
        .number("min_lr", \.minLR, .nonNegative, "poly and cosine: final learning rate"),
    ]
}

public struct LogConfig: Equatable {
    public var every = 10
    public init() {}

    static let keys: [ConfigKey<LogConfig>] = [
        .int("every", \.every, min: 1, "steps between train.log / metrics.jsonl lines"),
    ]
}

public struct CheckpointConfig: Equatable {
    public var every = 0
    public var keep = 3
    public init() {}

    static let keys: [ConfigKey<CheckpointConfig>] = [
        .int("every", \.every, min: 0, "steps between checkpoints (0 = only at the end)"),
        .int("keep", \.keep, min: 0, "checkpoints kept (0 = all)"),
    ]
}

public struct MethodConfig: Equatable {
    public var name = "ew"
    public var level = "representation"
    /// `method.<group>.<key>: scalar` as written (method name → key → raw scalar text);
    /// the methods module validates and converts them.
    public var params: [String: [String: String]] = [:]
    public init() {}

    static let keys: [ConfigKey<MethodConfig>] = [
        .string("name", \.name, "the multi-task method (MTLMethods.methodNames); hyperparameters as method.<name>.<key>"),
        .choice("level", \.level, Config.levels, "where per-task gradients are taken: representation (z) | parameters (shared)"),
    ]
}

/// Lines about how the file was read (a deprecated key), for train.log. Not part of the
/// configuration's value: two configs that differ only in their notes are equal.
public struct ConfigNotes: Equatable {
    public var lines: [String] = []
    public static func == (a: ConfigNotes, b: ConfigNotes) -> Bool { true }
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
    public var notes = ConfigNotes()

    /// All defaults (tasks: seg primary, depth and normals auxiliary).
    public init() {}

    public func task(named name: String) -> TaskConfig? { tasks.first { $0.name == name } }
    public var primaryTask: TaskConfig? { tasks.first { $0.role == .primary } }

    // MARK: schema (the key tables above, by section, in the order of the resolved config.yaml)

    struct Section {
        let name: String
        let keys: [ConfigKey<Config>]
    }

    static let sections: [Section] = [
        Section(name: "data", keys: DataConfig.keys.map { $0.at(\Config.data) }),
        Section(name: "model", keys: ModelConfig.keys.map { $0.at(\Config.model) }),
        Section(name: "tasks", keys: []),
        Section(name: "train", keys: TrainConfig.keys.map { $0.at(\Config.train) }),
        Section(name: "optim", keys: OptimConfig.keys.map { $0.at(\Config.optim) }),
        Section(name: "schedule", keys: ScheduleConfig.keys.map { $0.at(\Config.schedule) }),
        Section(name: "log", keys: LogConfig.keys.map { $0.at(\Config.log) }),
        Section(name: "checkpoint", keys: CheckpointConfig.keys.map { $0.at(\Config.checkpoint) }),
        Section(name: "dist", keys: DistConfig.keys.map { $0.at(\Config.dist) }),
        Section(name: "method", keys: MethodConfig.keys.map { $0.at(\Config.method) }),
    ]

    static func section(_ name: String) -> Section? { sections.first { $0.name == name } }

    enum ModelGroups {
        static var names: [String] { ModelConfig.groups.map { $0.name } }
        static func keys(_ group: String) -> [ConfigKey<ModelConfig>]? { ModelConfig.groups.first { $0.name == group }?.keys }
    }

    static let taskKeys = TaskConfig.keys.map { $0.name }
    public static let convBackends = ["auto", "onednn", "blas"]
    public static let convDxs = ["transposed", "col2im"]
    public static let blasThreadOwners = ["mtl", "openblas"]
    static let optimizers = ["adam", "adamw", "sgd"]
    static let schedules = ["constant", "step", "poly", "cosine"]
    static let nanPolicies = ["stop", "skip"]
    static let levels = ["representation", "parameters"]   // MTLMethods.GradientLevel

    // MARK: loading

    /// Reads `path` and applies `overrides` ("section.key=value", "tasks.depth.role=primary",
    /// "method.ial.lr=0.01", or a whole mapping: "tasks={seg: {role: primary}, depth: {}}").
    /// `runConfig`: the file is a resolved config that `mtl train` wrote (`isRunDirectoryConfig`),
    /// read with the allowances for older writers (`Reader.droppableSwinGroup`); user files are not.
    public static func load(path: String, overrides: [String] = [], runConfig: Bool = false) throws -> Config {
        guard FileManager.default.fileExists(atPath: path) else { throw MTLError("\(path): config file not found") }
        guard let data = FileManager.default.contents(atPath: path),
              let text = String(data: data, encoding: .utf8) else {
            throw MTLError("\(path): cannot read the config file as UTF-8 text")
        }
        return try parse(yaml: text, source: path, overrides: overrides, runConfig: runConfig)
    }

    /// Whether `path` is a run directory's config.yaml: so named, with the train.log that the
    /// trainer's RunLog creates before it writes config.yaml. Such a file is rewritten by every
    /// `mtl train` on the directory, so it is the resolved config of a run, not a user's file.
    public static func isRunDirectoryConfig(_ path: String) -> Bool {
        let url = URL(fileURLWithPath: path)
        return url.lastPathComponent == "config.yaml"
            && FileManager.default.fileExists(atPath: url.deletingLastPathComponent().appendingPathComponent("train.log").path)
    }

    /// Parses YAML text; `source` names it in error messages. `runConfig`: as for `load`; a
    /// checkpoint's stored config is one.
    public static func parse(yaml: String, source: String, overrides: [String] = [], runConfig: Bool = false) throws -> Config {
        var root = try YValue.compose(yaml, source: source)
        if case .null = root { root = .map([]) }
        guard case .map = root else {
            throw MTLError("\(source): expected a mapping of sections (data, model, tasks, ...), found \(root.kind)")
        }
        var notes: [String] = []
        if try root.renameModelHead(source: source) {
            notes.append("\(source): model.head is the old name of model.decoder; read as model.decoder")
        }
        var origins: [String: String] = [:]  // dotted key → "override '...'" for keys set on the command line
        for o in overrides {
            let origin = "override '\(o)'"
            guard let eq = o.firstIndex(of: "=") else {
                throw MTLError("\(origin): expected key=value (e.g. train.steps=100)")
            }
            var key = o[..<eq].trimmingCharacters(in: .whitespaces)
            let valueText = String(o[o.index(after: eq)...])
            var path = key.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            if key.isEmpty || path.contains(where: { $0.isEmpty }) {
                throw MTLError("\(origin): malformed key '\(key)' (expected section.key, e.g. train.steps)")
            }
            if path == ["model", ModelConfig.deprecatedHead] {
                path = ["model", "decoder"]
                key = "model.decoder"
                notes.append("\(origin): model.head is the old name of model.decoder; read as model.decoder")
            }
            try checkOverrideKey(path, origin: origin)
            var value = try YValue.compose(valueText, source: origin)
            if path == ["model"], try value.renameHead(source: origin) {
                notes.append("\(origin): model.head is the old name of model.decoder; read as model.decoder")
            }
            try root.set(path, value, origin: origin)
            origins[key] = origin
        }
        let reader = Reader(source: source, origins: origins, runConfig: runConfig)
        var c = try reader.config(root)
        c.notes.lines = notes + c.notes.lines
        return c
    }

    /// An override's key must exist in the schema (checked before applying, so that the
    /// error names the override rather than the file).
    static func checkOverrideKey(_ path: [String], origin: String) throws {
        let dotted = path.joined(separator: ".")
        func unknown() -> MTLError {
            MTLError("\(origin): unknown key '\(dotted)' (did you mean '\(suggest(path))'?)")
        }
        guard let section = Config.section(path[0]) else { throw unknown() }
        if path.count == 1 { return }
        switch path[0] {
        case "tasks":
            guard TaskConfig.names.contains(path[1]), path.count <= 3 else { throw unknown() }
            if path.count == 3, !taskKeys.contains(path[2]) { throw unknown() }
        case "method":
            // method.name / method.level are scalars; anything else is a parameter group (≤ 3 parts).
            if section.keys.contains(where: { $0.name == path[1] }) ? path.count > 2 : path.count > 3 { throw unknown() }
        case "model" where ModelGroups.keys(path[1]) != nil:
            let keys = ModelGroups.keys(path[1])!
            guard path.count == 2 || (path.count == 3 && keys.contains { $0.name == path[2] }) else { throw unknown() }
        default:
            guard path.count == 2, section.keys.contains(where: { $0.name == path[1] }) else { throw unknown() }
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
        for s in sections {
            candidates.append([s.name])
            for k in s.keys { candidates.append([s.name, k.name]) }
        }
        for (g, keys) in ModelConfig.groups {
            candidates.append(["model", g])
            for k in keys { candidates.append(["model", g, k.name]) }
        }
        for t in TaskConfig.names { candidates.append(["tasks", t]) }
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

    /// The fully resolved config (every key of every section and of the selected components'
    /// groups, defaults filled in), re-parsable to an equal Config.
    public func yaml() -> String {
        var out = ""
        for s in Config.sections {
            if s.name == "tasks" {
                out += tasks.isEmpty ? "tasks: {}\n" : "tasks:\n"
                for t in tasks {
                    out += "  \(t.name):\n"
                    for k in TaskConfig.keys { out += "    \(k.name): \(k.write(t))\n" }
                }
                continue
            }
            out += "\(s.name):\n"
            for k in s.keys { out += "  \(k.name): \(k.write(self))\n" }
            if s.name == "model" {
                for g in model.selectedGroups {
                    out += "  \(g):\n"
                    for k in ModelGroups.keys(g)! { out += "    \(k.name): \(k.write(model))\n" }
                }
            }
            if s.name == "method" {
                for group in method.params.keys.sorted() {
                    out += "  \(yamlRaw(group)):\n"
                    for (k, v) in method.params[group]!.sorted(by: { $0.key < $1.key }) {
                        out += "    \(yamlRaw(k)): \(yamlRaw(v))\n"
                    }
                }
            }
        }
        return out
    }

    /// Every key with what it accepts, its default and its help (`mtl keys`).
    public static func keyListing() -> String {
        var rows: [(String, String, String, String)] = []
        let defaults = Config()
        for s in sections {
            if s.name == "tasks" {
                let t = TaskConfig(name: "seg")
                for k in TaskConfig.keys {
                    rows.append(("tasks.<task>.\(k.name)", k.expected, k.name == "loss" ? "(per task)" : k.write(t), k.help))
                }
                continue
            }
            for k in s.keys { rows.append(("\(s.name).\(k.name)", k.expected, k.write(defaults), k.help)) }
            if s.name == "method" {
                rows.append(("method.<name>.<key>", "per method", "", "the chosen method's hyperparameters (docs/METHODS.md)"))
            }
        }
        for (g, keys) in ModelConfig.groups {
            let users = ModelRegistry.users(ofGroup: g).map { "\($0.slot) \($0.names.joined(separator: "|"))" }
            rows.append(("model.\(g).*", "", "", "read with " + users.joined(separator: ", ")))
            for k in keys { rows.append(("model.\(g).\(k.name)", k.expected, k.write(defaults.model), k.help)) }
        }
        let w0 = rows.map { $0.0.count }.max()!, w1 = rows.map { $0.1.count }.max()!, w2 = rows.map { $0.2.count }.max()!
        func pad(_ s: String, _ w: Int) -> String { s + String(repeating: " ", count: max(0, w - s.count)) }
        return rows.map { "\(pad($0.0, w0))  \(pad($0.1, w1))  \(pad($0.2, w2))  \($0.3)" }.joined(separator: "\n") + "\n"
    }
}
