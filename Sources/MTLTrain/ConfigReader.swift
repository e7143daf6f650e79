import Foundation
import MTLCore
import MTLMethods
import MTLModels
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

extension YValue {
    /// The value as a config key reads it.
    var raw: ConfigRaw {
        switch self {
        case .null: return .empty
        case .scalar(let s): return .text(s)
        case .seq(let items): return .list(items.map { $0.raw })
        case .map: return .other(kind)
        }
    }

    /// On a model mapping: its `head:` (the old name) becomes `decoder:`. Returns whether it did.
    mutating func renameHead(source: String) throws -> Bool {
        guard case .map(var entries) = self, let i = entries.firstIndex(where: { $0.key == ModelConfig.deprecatedHead }) else {
            return false
        }
        if entries.contains(where: { $0.key == "decoder" }) {
            throw MTLError("\(source): model.head: the old name of model.decoder, and model.decoder is set too; keep model.decoder")
        }
        entries[i].key = "decoder"
        self = .map(entries)
        return true
    }

    /// On the root: model.head → model.decoder.
    mutating func renameModelHead(source: String) throws -> Bool {
        guard case .map(var entries) = self, let i = entries.firstIndex(where: { $0.key == "model" }) else { return false }
        let renamed = try entries[i].value.renameHead(source: source)
        self = .map(entries)
        return renamed
    }
}

/// Reads the YAML tree into a Config: each section's keys through their declarations
/// (Config.swift), then the checks that involve several keys.
struct Reader {
    let source: String
    /// Dotted keys set by overrides → "override '...'", so errors name where the value came from.
    let origins: [String: String]
    /// The text is a resolved config that `mtl train` wrote (a run directory's config.yaml, a
    /// checkpoint's stored config), not a user's file: see `droppableSwinGroup`.
    var runConfig = false

    typealias Entries = [(key: String, value: YValue)]

    private func origin(_ key: String) -> String {
        var parts = key.split(separator: ".").map(String.init)
        while !parts.isEmpty {
            if let o = origins[parts.joined(separator: ".")] { return o }
            parts.removeLast()
        }
        return source
    }

    /// Where a group's values came from: an override of a key inside it, else the group's origin.
    private func groupOrigin(_ group: String) -> String {
        origins.keys.sorted().first { $0.hasPrefix(group + ".") }.flatMap { origins[$0] } ?? origin(group)
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

    func unknownKey(_ path: [String]) -> MTLError {
        let dotted = path.joined(separator: ".")
        return MTLError("\(origin(dotted)): unknown key '\(dotted)' (did you mean '\(Config.suggest(path))'?)")
    }

    func checkKeys(_ e: Entries, allowed: [String], prefix: [String]) throws {
        for (k, _) in e where !allowed.contains(k) { throw unknownKey(prefix + [k]) }
    }

    /// Reads the entries of one mapping through the declared keys (every entry must be one of
    /// them or in `others`, which the caller reads).
    func read<Root>(_ e: Entries, _ keys: [ConfigKey<Root>], prefix: [String], into root: inout Root,
                    others: [String] = []) throws {
        try checkKeys(e, allowed: keys.map { $0.name } + others, prefix: prefix)
        for (k, v) in e {
            guard let key = keys.first(where: { $0.name == k }) else { continue }
            let dotted = (prefix + [k]).joined(separator: ".")
            do {
                try key.read(v.raw, into: &root)
            } catch let error as MTLError {
                throw fail(dotted, error.message)
            }
        }
    }

    private func lookup(_ e: Entries, _ k: String) -> YValue? { e.first { $0.key == k }?.value }

    func config(_ root: YValue) throws -> Config {
        var c = Config()
        let top = try entries(root, "config")
        try checkKeys(top, allowed: Config.sections.map { $0.name }, prefix: [])
        for s in Config.sections where s.name != "tasks" && s.name != "method" && s.name != "model" {
            guard let v = lookup(top, s.name) else { continue }
            try read(try entries(v, s.name), s.keys, prefix: [s.name], into: &c)
        }
        if let v = lookup(top, "model") { try model(try entries(v, "model"), into: &c.model, notes: &c.notes.lines) }
        if c.optim.name == "sgd", c.optim.nesterov, c.optim.momentum <= 0 {
            throw fail("optim.nesterov", "expected optim.momentum > 0 with nesterov (as torch.optim.SGD), found momentum \(c.optim.momentum)")
        }

        if let tv = lookup(top, "tasks") {
            let te = try entries(tv, "tasks")
            try checkKeys(te, allowed: TaskConfig.names, prefix: ["tasks"])
            c.tasks = try te.map { name, v in
                let k = "tasks.\(name)"
                var t = TaskConfig(name: name)
                try read(try entries(v, k), TaskConfig.keys, prefix: ["tasks", name], into: &t)
                let kind = TaskKind.named(name)!
                if !kind.losses.contains(t.loss) {
                    throw fail("\(k).loss", "expected one of \(kind.losses.joined(separator: "|")) for task \(name), found '\(t.loss)'")
                }
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

        if let mv = lookup(top, "method") {
            let me = try entries(mv, "method")
            let scalars = Config.section("method")!.keys
            // method.<group>.<key>: scalar — a scalar under another name is a misspelt name/level.
            for (key, v) in me where !scalars.contains(where: { $0.name == key }) {
                if case .scalar = v { throw unknownKey(["method", key]) }
            }
            try read(me.filter { k, _ in scalars.contains { $0.name == k } }, scalars, prefix: ["method"], into: &c)
            if lookup(me, "name") != nil, c.method.name.isEmpty {
                throw fail("method.name", "expected a method name, found an empty value")
            }
            for (key, v) in me where !scalars.contains(where: { $0.name == key }) {
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
        try checkMethod(c)
        return c
    }

    /// The model section: its keys, then the groups of the selected components.
    func model(_ m: Entries, into model: inout ModelConfig, notes: inout [String]) throws {
        let groups = Config.ModelGroups.names
        try read(m, ModelConfig.keys, prefix: ["model"], into: &model, others: groups)
        if lookup(m, "neck") == nil { model.neck = ModelRegistry.defaultNeck(decoder: model.decoder) }
        for (g, v) in m where groups.contains(g) {
            let users = ModelRegistry.users(ofGroup: g)
            if !users.contains(where: { $0.names.contains(model.selected($0.slot)) }) {
                if g == "swin", droppableSwinGroup(v) {
                    notes.append("\(source): model.swin restates Swin's defaults for encoder \(model.encoder) (a config.yaml written before the component registry); dropped")
                    continue
                }
                let of = users.map { "\($0.slot) \($0.names.joined(separator: "|"))" }.joined(separator: " and ")
                let now = users.map { "model.\($0.slot) is \(model.selected($0.slot))" }.joined(separator: ", ")
                let hint = users.last.map { " (did you mean model.\($0.slot)=\($0.names[0])?)" } ?? ""
                throw MTLError("\(groupOrigin("model.\(g)")): model.\(g): parameters of \(of), but \(now)\(hint)")
            }
            let e = try entries(v, "model.\(g)")
            try read(e, Config.ModelGroups.keys(g)!, prefix: ["model", g], into: &model)
            if g == "tif", !model.tif.sfd {
                if lookup(e, "lthd") != nil, model.tif.lthd {
                    throw fail("model.tif.lthd", "expected false with model.tif.sfd false (LTHD diffuses SFD's affinities), found true")
                }
                model.tif.lthd = false
            }
            if g == "kem" {
                let k = model.kem
                if k.dim % k.heads != 0 {
                    throw fail("model.kem.dim", "expected a multiple of model.kem.heads (\(k.heads)), found \(k.dim)")
                }
                if k.topkAxis == "slots" && k.topk > k.slots {
                    throw fail("model.kem.topk", "expected <= model.kem.slots (\(k.slots)) with topk_axis slots, found \(k.topk)")
                }
            }
            if g == "mtcp" {
                let o = model.mtcp
                if o.dim % 2 != 0 {
                    throw fail("model.mtcp.dim", "expected an even width (the depth head halves it), found \(o.dim)")
                }
                for s in 0..<3 where (o.dim << s) % o.heads[s] != 0 {
                    throw fail("model.mtcp.heads", "expected head counts dividing the stage widths model.mtcp.dim·2^s, found \(o.heads) (stage \(s): \(o.dim << s))")
                }
            }
        }
        do {
            try ModelRegistry.checkCombination(encoder: model.encoder, neck: model.neck, decoder: model.decoder)
        } catch let e as MTLError {
            throw MTLError("\(origin(String(e.message.prefix { $0 != ":" }))): \(e.message)")
        }
    }

    /// Whether a `model.swin` group under a non-Swin encoder is the one the resolved config.yaml
    /// of runs written before the component registry (7cb42ee) carries: that writer listed
    /// `swin: {window, shift_rule}` for every encoder, so `mtl train --resume` and `mtl predict`
    /// on those run directories would otherwise stop at the group check. Such a group changes
    /// nothing and is dropped when (and only when)
    /// - the text is a run's resolved config (`runConfig`): in a user's file a swin group under a
    ///   ResNet or HRNet is a mistake worth the error. The broader rule "any unselected group that
    ///   restates its defaults" was tried and reverted: it let MT-CP's default group through under
    ///   `model.decoder: kem`, which MTCPEngineTests.testConfigsAndBadKeys requires to be refused;
    /// - no override touches it (`--set model.swin.window=8` is the user's, and checked as such);
    /// - its values are Swin's defaults. Other values say the run was meant to differ from what the
    ///   model built (the old reader ignored them for non-Swin encoders); that is left to the error
    ///   rather than guessed.
    func droppableSwinGroup(_ v: YValue) -> Bool {
        guard runConfig, groupOrigin("model.swin") == source,
              let e = try? entries(v, "model.swin"), let keys = Config.ModelGroups.keys("swin") else { return false }
        var restated = ModelConfig()
        guard (try? read(e, keys, prefix: ["model", "swin"], into: &restated)) != nil else { return false }
        return restated.swin == SwinOptions()
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
