import Foundation

extension Config {
    /// The keys whose values differ between a stored resolved config (the `config` a checkpoint
    /// keeps, written by `yaml()`) and this one, in the order of `yaml()`; a key present on one
    /// side only (a task added or removed) has "absent" on the other. Used to say which setting
    /// to change when a checkpoint does not fit the model.
    public func differences(fromStored stored: String) -> [(key: String, stored: String, current: String)] {
        // Re-resolved first when it reads: a config stored by an older writer (model.head for
        // model.decoder, no model.neck, a swin group under every encoder) would otherwise show those
        // spellings as differences and crowd out the setting that does differ. Text that no longer
        // reads is compared as it stands.
        let resolved = (try? Config.parse(yaml: stored, source: "stored config", runConfig: true))?.yaml() ?? stored
        let old = Config.flatten(resolved), new = Config.flatten(yaml())
        let oldValues = Dictionary(old, uniquingKeysWith: { a, _ in a })
        let newValues = Dictionary(new, uniquingKeysWith: { a, _ in a })
        var keys = new.map { $0.0 }
        for (k, _) in old where newValues[k] == nil { keys.append(k) }
        return keys.compactMap { k in
            let a = oldValues[k] ?? "absent", b = newValues[k] ?? "absent"
            return a == b ? nil : (k, a, b)
        }
    }

    /// "section:\n  key: value\n  group:\n    key: value" → [("section.key", "value"), ...].
    static func flatten(_ yaml: String) -> [(String, String)] {
        var stack: [(indent: Int, key: String)] = []
        var out: [(String, String)] = []
        for line in yaml.split(separator: "\n") {
            let indent = line.prefix { $0 == " " }.count
            let body = line.dropFirst(indent)
            if body.isEmpty || body.hasPrefix("#") { continue }
            guard let colon = body.range(of: ":") else { continue }
            let key = String(body[..<colon.lowerBound])
            let value = body[colon.upperBound...].trimmingCharacters(in: .whitespaces)
            while let last = stack.last, last.indent >= indent { stack.removeLast() }
            let dotted = (stack.map { $0.key } + [key]).joined(separator: ".")
            if value.isEmpty {
                stack.append((indent, key))
                out.append((dotted, "present"))   // a group: its presence is compared too
            } else {
                out.append((dotted, value))
            }
        }
        return out
    }
}
