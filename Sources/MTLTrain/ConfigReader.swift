import Foundation
import MTLCore
import MTLMethods
import Yams

/// A YAML document reduced to what a config needs: null, scalar text, ordered mappings,
/// lists. Overrides are applied to this tree before it is read into typed sections, so
/// file values and command-line values go through the same checks.
indirect enum YValue {
    case null
    case scalar(String)
    case map([(key: String, value: YValue)])
    case seq([YValue])

    /// How the value reads in an error message ("found ...").
    var kind: String {
        switch self {
        case .null: return "an empty value"
        case .scalar(let s): return "'\(s)'"
        case .map: return "a mapping"
        case .seq: return "a list"
        }
    }

    static func compose(_ text: String, source: String) throws -> YValue {
        let node: Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch let e as YamlError {
            throw MTLError("\(source): invalid YAML: \(oneLine(e))")
        }
        guard let node else { return .null }
        return try YValue(node, source: source, path: [])
    }

    private static func oneLine(_ e: YamlError) -> String {
        switch e {
        case let .scanner(context, problem, mark, _), let .parser(context, problem, mark, _),
             let .composer(context, problem, mark, _):
            let ctx = context.map { " (\($0.text) at line \($0.mark.line))" } ?? ""
            return "\(problem) at line \(mark.line), column \(mark.column)\(ctx)"
        case let .reader(problem, offset, _, _):
            return "\(problem) at offset \(offset ?? -1)"
        default:
            return "\(e)".split(separator: "\n").first.map(String.init) ?? "unreadable"
        }
    }

    private static let nullWords: Set<String> = ["", "~", "null", "Null", "NULL"]

    private init(_ node: Node, source: String, path: [String]) throws {
        switch node {
        case .scalar(let s):
            if s.style == .plain || s.style == .any, YValue.nullWords.contains(s.string) {
                self = .null
            } else {
                self = .scalar(s.string)
            }
        case .sequence(let seq):
            self = .seq(try seq.map { try YValue($0, source: source, path: path) })
        case .mapping(let m):
            var entries: [(key: String, value: YValue)] = []
            for (k, v) in m {
                guard case .scalar(let ks) = k else {
                    throw MTLError("\(source): \(path.isEmpty ? "top level" : path.joined(separator: ".")): mapping keys must be plain words, found a \(k.mapping != nil ? "mapping" : "list")")
                }
                let key = ks.string
                if entries.contains(where: { $0.key == key }) {
                    throw MTLError("\(source): duplicate key '\((path + [key]).joined(separator: "."))'")
                }
                entries.append((key, try YValue(v, source: source, path: path + [key])))
            }
            self = .map(entries)
        }
    }

    /// Replaces the value at `path`, creating mappings on the way (a null counts as an empty mapping).
    mutating func set(_ path: [String], _ value: YValue, origin: String, done: [String] = []) throws {
        guard let head = path.first else { self = value; return }
        var entries: [(key: String, value: YValue)]
        switch self {
        case .map(let e): entries = e
        case .null: entries = []
        default:
            throw MTLError("\(origin): '\(done.joined(separator: "."))' is \(kind), not a mapping, so it has no key '\(head)'")
        }
        let rest = Array(path.dropFirst())
        if let i = entries.firstIndex(where: { $0.key == head }) {
            try entries[i].value.set(rest, value, origin: origin, done: done + [head])
        } else {
            var v = YValue.null
            try v.set(rest, value, origin: origin, done: done + [head])
            entries.append((head, v))
        }
        self = .map(entries)
    }
}

/// Reads the YAML tree into a Config, checking every key, type, enum and range.
struct Reader {
    let source: String
    /// Dotted keys set by overrides → "override '...'", so errors name where the value came from.
    let origins: [String: String]

    typealias Entries = [(key: String, value: YValue)]

    private func origin(_ key: String) -> String {
        var parts = key.split(separator: ".").map(String.init)
        while !parts.isEmpty {
            if let o = origins[parts.joined(separator: ".")] { return o }
            parts.removeLast()
        }
        return source
    }

    func fail(_ key: String, _ message: String) -> MTLError {
        MTLError("\(origin(key)): \(key): \(message)")
    }

    func entries(_ v: YValue, _ key: String) throws -> Entries {
        switch v {
        case .map(let e): return e
        case .null: return []
        default: throw fail(key, "expected a mapping, found \(v.kind)")
        }
    }

    func checkKeys(_ e: Entries, allowed: [String], prefix: [String]) throws {
        for (k, _) in e where !allowed.contains(k) {
            let path = prefix + [k]
            let dotted = path.joined(separator: ".")
            throw MTLError("\(origin(dotted)): unknown key '\(dotted)' (did you mean '\(Config.suggest(path))'?)")
        }
    }

    func string(_ v: YValue?, _ key: String, _ def: String) throws -> String {
        switch v {
        case nil: return def
        case .null?: return ""
        case .scalar(let s)?: return s
        case let other?: throw fail(key, "expected a string, found \(other.kind)")
        }
    }

    func oneOf(_ v: YValue?, _ key: String, _ def: String, _ allowed: [String]) throws -> String {
        guard let v else { return def }
        guard case .scalar(let s) = v, allowed.contains(s) else {
            throw fail(key, "expected one of \(allowed.joined(separator: "|")), found \(v.kind)")
        }
        return s
    }

    func int(_ v: YValue?, _ key: String, _ def: Int, min lo: Int? = nil, allowed: [Int]? = nil) throws -> Int {
        guard let v else { return def }
        guard case .scalar(let s) = v, let x = Int(s.trimmingCharacters(in: .whitespaces)) else {
            throw fail(key, "expected an integer, found \(v.kind)")
        }
        if let lo, x < lo { throw fail(key, "expected an integer >= \(lo), found \(x)") }
        if let allowed, !allowed.contains(x) {
            throw fail(key, "expected one of \(allowed.map(String.init).joined(separator: "|")), found \(x)")
        }
        return x
    }

    /// `range` describes the accepted values in the message ("> 0", "in [0, 1)").
    func double(_ v: YValue?, _ key: String, _ def: Double, _ range: String? = nil,
                _ ok: (Double) -> Bool = { _ in true }) throws -> Double {
        guard let v else { return def }
        guard case .scalar(let s) = v, let x = Double(s.trimmingCharacters(in: .whitespaces)), x.isFinite else {
            throw fail(key, "expected a number, found \(v.kind)")
        }
        if !ok(x) { throw fail(key, "expected a number \(range ?? "in range"), found \(s)") }
        return x
    }

    func bool(_ v: YValue?, _ key: String, _ def: Bool) throws -> Bool {
        guard let v else { return def }
        if case .scalar(let s) = v {
            switch s.lowercased() {
            case "true", "yes", "on": return true
            case "false", "no", "off": return false
            default: break
            }
        }
        throw fail(key, "expected true or false, found \(v.kind)")
    }

    private func lookup(_ e: Entries, _ k: String) -> YValue? { e.first { $0.key == k }?.value }

    private func section(_ top: Entries, _ name: String) throws -> Entries {
        guard let v = lookup(top, name) else { return [] }
        let e = try entries(v, name)
        try checkKeys(e, allowed: Config.sections.first { $0.0 == name }!.1, prefix: [name])
        return e
    }

    func config(_ root: YValue) throws -> Config {
        var c = Config()
        let top = try entries(root, "config")
        try checkKeys(top, allowed: Config.sections.map { $0.0 }, prefix: [])

        let d = try section(top, "data")
        c.data.path = try string(lookup(d, "path"), "data.path", c.data.path)
        c.data.trainSplit = try string(lookup(d, "train_split"), "data.train_split", c.data.trainSplit)
        c.data.valSplit = try string(lookup(d, "val_split"), "data.val_split", c.data.valSplit)
        c.data.cache = try bool(lookup(d, "cache"), "data.cache", c.data.cache)
        c.data.augment = try bool(lookup(d, "augment"), "data.augment", c.data.augment)
        c.data.prefetch = try int(lookup(d, "prefetch"), "data.prefetch", c.data.prefetch, min: 0)

        let m = try section(top, "model")
        c.model.encoder = try oneOf(lookup(m, "encoder"), "model.encoder", c.model.encoder, Config.encoders)
        c.model.width = try int(lookup(m, "width"), "model.width", c.model.width, min: 1)
        c.model.outputStride = try int(lookup(m, "output_stride"), "model.output_stride", c.model.outputStride, allowed: [8, 16])
        c.model.head = try oneOf(lookup(m, "head"), "model.head", c.model.head, Config.heads)
        c.model.headChannels = try int(lookup(m, "head_channels"), "model.head_channels", c.model.headChannels, min: 1)
        c.model.fuseUpsample = try oneOf(lookup(m, "fuse_upsample"), "model.fuse_upsample", c.model.fuseUpsample,
                                         Config.fuseUpsamples)
        c.model.pretrained = try string(lookup(m, "pretrained"), "model.pretrained", c.model.pretrained)
        c.model.syncBN = try bool(lookup(m, "sync_bn"), "model.sync_bn", c.model.syncBN)
        c.model.convBackend = try oneOf(lookup(m, "conv_backend"), "model.conv_backend", c.model.convBackend, Config.convBackends)
        c.model.convDx = try oneOf(lookup(m, "conv_dx"), "model.conv_dx", c.model.convDx, Config.convDxs)
        c.model.freezeEncoder = try bool(lookup(m, "freeze_encoder"), "model.freeze_encoder", c.model.freezeEncoder)
        c.model.dropPathRate = try double(lookup(m, "drop_path_rate"), "model.drop_path_rate", c.model.dropPathRate,
                                          "in [0, 1)") { $0 >= 0 && $0 < 1 }
        if let sv = lookup(m, "swin") {
            let se = try entries(sv, "model.swin")
            try checkKeys(se, allowed: Config.swinKeys, prefix: ["model", "swin"])
            c.model.swinWindow = try int(lookup(se, "window"), "model.swin.window", c.model.swinWindow, min: 2)
            c.model.swinShiftRule = try oneOf(lookup(se, "shift_rule"), "model.swin.shift_rule", c.model.swinShiftRule,
                                              Config.swinShiftRules)
        }
        if let tv = lookup(m, "tif") {
            guard c.model.head == "tif" else {
                throw fail("model.tif", "expected model.head: tif with TIF switches, found model.head \(c.model.head)")
            }
            let te = try entries(tv, "model.tif")
            try checkKeys(te, allowed: TIFConfig.keys, prefix: ["model", "tif"])
            var t = c.model.tif
            t.saff = try bool(lookup(te, "saff"), "model.tif.saff", t.saff)
            t.sfd = try bool(lookup(te, "sfd"), "model.tif.sfd", t.sfd)
            t.lthd = try bool(lookup(te, "lthd"), "model.tif.lthd", t.lthd)
            t.sfdScale = try bool(lookup(te, "sfd_scale"), "model.tif.sfd_scale", t.sfdScale)
            t.kvSingle = try bool(lookup(te, "kv_single"), "model.tif.kv_single", t.kvSingle)
            t.lthdTranspose = try bool(lookup(te, "lthd_transpose"), "model.tif.lthd_transpose", t.lthdTranspose)
            t.fuseReLU = try bool(lookup(te, "fuse_relu"), "model.tif.fuse_relu", t.fuseReLU)
            if !t.sfd && t.lthd && lookup(te, "lthd") != nil {
                throw fail("model.tif.lthd", "expected false with model.tif.sfd false (LTHD diffuses SFD's affinities), found true")
            }
            c.model.tif = t
        }
        if let kv = lookup(m, "kem") {
            let e = try entries(kv, "model.kem")
            try checkKeys(e, allowed: KEMConfig.keys, prefix: ["model", "kem"])
            var k = c.model.kem
            k.mixer = try oneOf(lookup(e, "mixer"), "model.kem.mixer", k.mixer, KEMConfig.mixers)
            k.dim = try int(lookup(e, "dim"), "model.kem.dim", k.dim, min: 1)
            k.heads = try int(lookup(e, "heads"), "model.kem.heads", k.heads, min: 1)
            k.window = try int(lookup(e, "window"), "model.kem.window", k.window, min: 1)
            k.depth = try int(lookup(e, "depth"), "model.kem.depth", k.depth, min: 1)
            k.slots = try int(lookup(e, "slots"), "model.kem.slots", k.slots, min: 1)
            k.topk = try int(lookup(e, "topk"), "model.kem.topk", k.topk, min: 1)
            k.topkVariant = try oneOf(lookup(e, "topk_variant"), "model.kem.topk_variant", k.topkVariant, KEMConfig.variants)
            k.topkAxis = try oneOf(lookup(e, "topk_axis"), "model.kem.topk_axis", k.topkAxis, KEMConfig.axes)
            k.stable = try bool(lookup(e, "stable"), "model.kem.stable", k.stable)
            k.etfRole = try oneOf(lookup(e, "etf_role"), "model.kem.etf_role", k.etfRole, KEMConfig.roles)
            k.etfProjection = try bool(lookup(e, "etf_projection"), "model.kem.etf_projection", k.etfProjection)
            k.etfSeed = try int(lookup(e, "etf_seed"), "model.kem.etf_seed", k.etfSeed, min: 0)
            k.lambda = try double(lookup(e, "lambda"), "model.kem.lambda", k.lambda, ">= 0") { $0 >= 0 }
            k.unusedPatchEmbed = try bool(lookup(e, "unused_patch_embed"), "model.kem.unused_patch_embed", k.unusedPatchEmbed)
            if k.heads > 0 && k.dim % k.heads != 0 {
                throw fail("model.kem.dim", "expected a multiple of model.kem.heads (\(k.heads)), found \(k.dim)")
            }
            if k.topkAxis == "slots" && k.topk > k.slots {
                throw fail("model.kem.topk", "expected <= model.kem.slots (\(k.slots)) with topk_axis slots, found \(k.topk)")
            }
            c.model.kem = k
        }
        if let v = lookup(m, "mtcp") { c.model.mtcp = try mtcp(v, head: c.model.head, c.model.mtcp) }

        if let tv = lookup(top, "tasks") {
            let te = try entries(tv, "tasks")
            try checkKeys(te, allowed: TaskConfig.names, prefix: ["tasks"])
            c.tasks = try te.map { name, v in
                let k = "tasks.\(name)"
                let e = try entries(v, k)
                try checkKeys(e, allowed: Config.taskKeys, prefix: ["tasks", name])
                var t = TaskConfig(name: name)
                t.role = TaskRole(rawValue: try oneOf(lookup(e, "role"), "\(k).role", t.role.rawValue, ["primary", "auxiliary"]))!
                t.loss = try oneOf(lookup(e, "loss"), "\(k).loss", t.loss, Config.losses)
                t.classes = try int(lookup(e, "classes"), "\(k).classes", t.classes, min: 0)
                t.weight = try double(lookup(e, "weight"), "\(k).weight", t.weight, ">= 0") { $0 >= 0 }
                t.frozen = try bool(lookup(e, "frozen"), "\(k).frozen", t.frozen)
                t.posWeight = try double(lookup(e, "pos_weight"), "\(k).pos_weight", t.posWeight, "> 0") { $0 > 0 }
                if t.loss == "balanced_bce", !(t.posWeight > 0 && t.posWeight < 1) {
                    throw fail("\(k).pos_weight", "expected a number in (0, 1) with loss balanced_bce (ATRC: 0.8 NYUD, 0.95 PASCAL), found \(t.posWeight)")
                }
                return t
            }
        }
        if c.tasks.isEmpty {
            throw fail("tasks", "expected at least one task (one of \(TaskConfig.names.joined(separator: "|"))), found none")
        }
        let primaries = c.tasks.filter { $0.role == .primary }.map { $0.name }
        if primaries.count > 1 {
            throw fail("tasks", "expected at most one task with role primary, found \(primaries.count) (\(primaries.joined(separator: ", ")))")
        }

        let t = try section(top, "train")
        c.train.steps = try int(lookup(t, "steps"), "train.steps", c.train.steps, min: 1)
        c.train.batchSize = try int(lookup(t, "batch_size"), "train.batch_size", c.train.batchSize, min: 1)
        c.train.seed = try int(lookup(t, "seed"), "train.seed", c.train.seed, min: 0)
        c.train.evalEvery = try int(lookup(t, "eval_every"), "train.eval_every", c.train.evalEvery, min: 0)
        c.train.threads = try int(lookup(t, "threads"), "train.threads", c.train.threads, min: 0)
        c.train.nanPolicy = try oneOf(lookup(t, "nan_policy"), "train.nan_policy", c.train.nanPolicy, Config.nanPolicies)
        c.train.blasThreads = try oneOf(lookup(t, "blas_threads"), "train.blas_threads", c.train.blasThreads,
                                        Config.blasThreadOwners)

        let ds = try section(top, "dist")
        c.dist.overlap = try bool(lookup(ds, "overlap"), "dist.overlap", c.dist.overlap)
        c.dist.bucketMB = try double(lookup(ds, "bucket_mb"), "dist.bucket_mb", c.dist.bucketMB, "> 0") { $0 > 0 }

        let o = try section(top, "optim")
        c.optim.name = try oneOf(lookup(o, "name"), "optim.name", c.optim.name, Config.optimizers)
        c.optim.lr = try double(lookup(o, "lr"), "optim.lr", c.optim.lr, "> 0") { $0 > 0 }
        c.optim.momentum = try double(lookup(o, "momentum"), "optim.momentum", c.optim.momentum, ">= 0") { $0 >= 0 }
        c.optim.nesterov = try bool(lookup(o, "nesterov"), "optim.nesterov", c.optim.nesterov)
        c.optim.weightDecay = try double(lookup(o, "weight_decay"), "optim.weight_decay", c.optim.weightDecay, ">= 0") { $0 >= 0 }
        c.optim.beta1 = try double(lookup(o, "beta1"), "optim.beta1", c.optim.beta1, "in [0, 1)") { $0 >= 0 && $0 < 1 }
        c.optim.beta2 = try double(lookup(o, "beta2"), "optim.beta2", c.optim.beta2, "in [0, 1)") { $0 >= 0 && $0 < 1 }
        c.optim.eps = try double(lookup(o, "eps"), "optim.eps", c.optim.eps, "> 0") { $0 > 0 }
        if c.optim.name == "sgd", c.optim.nesterov, c.optim.momentum <= 0 {
            throw fail("optim.nesterov", "expected optim.momentum > 0 with nesterov (as torch.optim.SGD), found momentum \(c.optim.momentum)")
        }

        let s = try section(top, "schedule")
        c.schedule.name = try oneOf(lookup(s, "name"), "schedule.name", c.schedule.name, Config.schedules)
        c.schedule.warmupSteps = try int(lookup(s, "warmup_steps"), "schedule.warmup_steps", c.schedule.warmupSteps, min: 0)
        c.schedule.warmupFactor = try double(lookup(s, "warmup_factor"), "schedule.warmup_factor", c.schedule.warmupFactor,
                                             "in [0, 1]") { $0 >= 0 && $0 <= 1 }
        c.schedule.stepSize = try int(lookup(s, "step_size"), "schedule.step_size", c.schedule.stepSize, min: 1)
        c.schedule.gamma = try double(lookup(s, "gamma"), "schedule.gamma", c.schedule.gamma, "> 0") { $0 > 0 }
        c.schedule.power = try double(lookup(s, "power"), "schedule.power", c.schedule.power, ">= 0") { $0 >= 0 }
        c.schedule.minLR = try double(lookup(s, "min_lr"), "schedule.min_lr", c.schedule.minLR, ">= 0") { $0 >= 0 }

        let l = try section(top, "log")
        c.log.every = try int(lookup(l, "every"), "log.every", c.log.every, min: 1)

        let k = try section(top, "checkpoint")
        c.checkpoint.every = try int(lookup(k, "every"), "checkpoint.every", c.checkpoint.every, min: 0)
        c.checkpoint.keep = try int(lookup(k, "keep"), "checkpoint.keep", c.checkpoint.keep, min: 0)

        if let mv = lookup(top, "method") {
            for (key, v) in try entries(mv, "method") {
                switch key {
                case "name":
                    c.method.name = try string(v, "method.name", c.method.name)
                    if c.method.name.isEmpty { throw fail("method.name", "expected a method name, found an empty value") }
                case "level":
                    c.method.level = try oneOf(v, "method.level", c.method.level, Config.levels)
                default:
                    // method.<group>.<key>: scalar — anything else here is a misspelt name/level.
                    if case .scalar = v {
                        throw MTLError("\(origin("method.\(key)")): unknown key 'method.\(key)' (did you mean '\(Config.suggest(["method", key]))'?)")
                    }
                    var group: [String: String] = [:]
                    for (pk, pv) in try entries(v, "method.\(key)") {
                        switch pv {
                        case .scalar(let raw): group[pk] = raw
                        case .null: group[pk] = ""
                        default: throw fail("method.\(key).\(pk)", "expected a scalar, found \(pv.kind)")
                        }
                    }
                    c.method.params[key] = group
                }
            }
        }
        try checkMethod(c)
        return c
    }

    /// Every `method.<group>` belongs to the chosen method, and the method accepts every key in them:
    /// built once here for the config's tasks, as the trainer will, so that the mistake shows before
    /// any data is read or rank is started.
    func checkMethod(_ c: Config) throws {
        for group in c.method.params.keys.sorted() {
            do {
                try checkMethodGroup(group, method: c.method.name)
            } catch let e as MTLError {
                // An override names a key inside the group (method.iall.lr=5): find it by prefix.
                let set = origins.keys.sorted().first { $0.hasPrefix("method.\(group).") }
                throw MTLError("\(set.flatMap { origins[$0] } ?? origin("method.\(group)")): \(e.message)")
            }
        }
        do {
            let params = try methodParameters(name: c.method.name, groups: c.method.params)
            _ = try makeMethod(name: c.method.name, taskNames: c.tasks.map { $0.name }, roles: c.tasks.map { $0.role },
                               params: params)
        } catch let e as MTLError {
            // The messages start with the key ("method.ial.lrr: unknown key ..."): name where it came from.
            throw MTLError("\(origin(String(e.message.prefix { $0 != ":" && $0 != " " }))): \(e.message)")
        }
    }
}
