import Foundation

// A configuration key declared once: its YAML name, the typed field it sets, the values it
// accepts and its help. The config reader (with its one-line errors), the resolved config.yaml
// writer and `mtl keys` all derive from the declaration; the field's initial value is the default.
// Components (MTLModels) declare their `model.<group>.*` keys with the same type, next to their
// options structs.

/// A raw value as the config file gave it.
public enum ConfigRaw {
    case text(String)
    /// `key:` with nothing after it (YAML null).
    case empty
    /// A list of values.
    case list([ConfigRaw])
    /// A mapping (the string says so: "a mapping").
    case other(String)

    /// How the value reads after "found" in an error message.
    public var found: String {
        switch self {
        case .text(let s): return "'\(s)'"
        case .empty: return "an empty value"
        case .list: return "a list"
        case .other(let kind): return kind
        }
    }
}

/// An accepted range of a number key, with the words error messages and the listing use.
public struct NumberRange: Sendable {
    public let text: String             // "> 0", "in [0, 1)"; "" = any finite number
    public let contains: @Sendable (Double) -> Bool

    public init(_ text: String, _ contains: @escaping @Sendable (Double) -> Bool) {
        self.text = text
        self.contains = contains
    }

    public static let any = NumberRange("") { _ in true }
    public static let positive = NumberRange("> 0") { $0 > 0 }
    public static let nonNegative = NumberRange(">= 0") { $0 >= 0 }
    public static let unitHalfOpen = NumberRange("in [0, 1)") { $0 >= 0 && $0 < 1 }
    public static let unitClosed = NumberRange("in [0, 1]") { $0 >= 0 && $0 <= 1 }
}

public struct ConfigKey<Root> {
    public let name: String
    public let help: String
    /// What the key accepts, in the words of the error messages: "an integer >= 1", "one of a|b".
    public let expected: String
    /// Sets the field from a raw value; returns the error text ("expected …, found …") or nil.
    let parse: (inout Root, ConfigRaw) -> String?
    /// The field's value as YAML text.
    public let write: (Root) -> String

    /// Sets the key's field in `root`; a bad value throws "expected …, found …" (the caller adds
    /// the file and the dotted key).
    public func read(_ raw: ConfigRaw, into root: inout Root) throws {
        if let message = parse(&root, raw) { throw MTLError(message) }
    }

    /// The same key on a struct that holds `Root` at `path` (a section's key on the whole config).
    public func at<Outer>(_ path: WritableKeyPath<Outer, Root>) -> ConfigKey<Outer> {
        let parse = self.parse, write = self.write
        return ConfigKey<Outer>(name: name, help: help, expected: expected,
                                parse: { outer, raw in parse(&outer[keyPath: path], raw) },
                                write: { outer in write(outer[keyPath: path]) })
    }

    public static func bool(_ name: String, _ field: WritableKeyPath<Root, Bool>, _ help: String) -> ConfigKey {
        ConfigKey(name: name, help: help, expected: "true or false", parse: { root, raw in
            if case .text(let s) = raw {
                switch s.lowercased() {
                case "true", "yes", "on": root[keyPath: field] = true; return nil
                case "false", "no", "off": root[keyPath: field] = false; return nil
                default: break
                }
            }
            return "expected true or false, found \(raw.found)"
        }, write: { "\($0[keyPath: field])" })
    }

    /// An integer, at least `min` or one of `allowed`.
    public static func int<I: FixedWidthInteger>(_ name: String, _ field: WritableKeyPath<Root, I>, min lo: I? = nil,
                                                 allowed: [I]? = nil, _ help: String) -> ConfigKey {
        let expected = allowed.map { "one of " + $0.map { "\($0)" }.joined(separator: "|") }
            ?? (lo.map { "an integer >= \($0)" } ?? "an integer")
        return ConfigKey(name: name, help: help, expected: expected, parse: { root, raw in
            guard case .text(let s) = raw, let x = I(s.trimmingCharacters(in: .whitespaces)) else {
                return "expected an integer, found \(raw.found)"
            }
            if let lo, x < lo { return "expected an integer >= \(lo), found \(x)" }
            if let allowed, !allowed.contains(x) { return "expected \(expected), found \(x)" }
            root[keyPath: field] = x
            return nil
        }, write: { "\($0[keyPath: field])" })
    }

    /// A finite number (Double or Float field) in `range`.
    public static func number<F: BinaryFloatingPoint & LosslessStringConvertible>(
        _ name: String, _ field: WritableKeyPath<Root, F>, _ range: NumberRange = .any, _ help: String) -> ConfigKey {
        let expected = range.text.isEmpty ? "a number" : "a number \(range.text)"
        return ConfigKey(name: name, help: help, expected: expected, parse: { root, raw in
            guard case .text(let s) = raw, let x = F(s.trimmingCharacters(in: .whitespaces)), x.isFinite else {
                return "expected a number, found \(raw.found)"
            }
            if !range.contains(Double(x)) { return "expected \(expected), found \(s)" }
            root[keyPath: field] = x
            return nil
        }, write: { yamlNumber($0[keyPath: field]) })
    }

    /// One of fixed spellings, kept as a String field.
    public static func choice(_ name: String, _ field: WritableKeyPath<Root, String>, _ options: [String],
                              _ help: String) -> ConfigKey {
        let expected = "one of " + options.joined(separator: "|")
        return ConfigKey(name: name, help: help, expected: expected, parse: { root, raw in
            guard case .text(let s) = raw, options.contains(s) else { return "expected \(expected), found \(raw.found)" }
            root[keyPath: field] = s
            return nil
        }, write: { yamlString($0[keyPath: field]) })
    }

    /// One of an enum's raw values.
    public static func choice<E: RawRepresentable & CaseIterable>(_ name: String, _ field: WritableKeyPath<Root, E>,
                                                                  _ help: String) -> ConfigKey where E.RawValue == String {
        let options = E.allCases.map { $0.rawValue }
        let expected = "one of " + options.joined(separator: "|")
        return ConfigKey(name: name, help: help, expected: expected, parse: { root, raw in
            guard case .text(let s) = raw, let e = E(rawValue: s) else { return "expected \(expected), found \(raw.found)" }
            root[keyPath: field] = e
            return nil
        }, write: { yamlString($0[keyPath: field].rawValue) })
    }

    /// A list of `count` integers, each at least `min` (`[1, 2, 1]`).
    public static func ints(_ name: String, _ field: WritableKeyPath<Root, [Int]>, count: Int, min lo: Int,
                            _ help: String) -> ConfigKey {
        let expected = "a list of \(count) integers >= \(lo)"
        return ConfigKey(name: name, help: help, expected: expected, parse: { root, raw in
            guard case .list(let items) = raw, items.count == count else { return "expected \(expected), found \(raw.found)" }
            var values: [Int] = []
            for item in items {
                guard case .text(let s) = item, let x = Int(s.trimmingCharacters(in: .whitespaces)), x >= lo else {
                    return "expected \(expected), found \(item.found) in the list"
                }
                values.append(x)
            }
            root[keyPath: field] = values
            return nil
        }, write: { "[" + $0[keyPath: field].map(String.init).joined(separator: ", ") + "]" })
    }

    /// Any text; an empty value is "".
    public static func string(_ name: String, _ field: WritableKeyPath<Root, String>, _ help: String) -> ConfigKey {
        ConfigKey(name: name, help: help, expected: "a string", parse: { root, raw in
            switch raw {
            case .text(let s): root[keyPath: field] = s
            case .empty: root[keyPath: field] = ""
            case .list, .other: return "expected a string, found \(raw.found)"
            }
            return nil
        }, write: { yamlString($0[keyPath: field]) })
    }
}

// MARK: - YAML scalars out

/// Shortest round-trip form, with a ".0" in the mantissa so YAML 1.1 readers (PyYAML) see a float.
public func yamlNumber<F: BinaryFloatingPoint & LosslessStringConvertible>(_ x: F) -> String {
    var s = x.description
    if let e = s.firstIndex(where: { $0 == "e" || $0 == "E" }), !s[..<e].contains(".") {
        s.insert(contentsOf: ".0", at: e)
    }
    return s
}

private let plainChars = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./+-")
private let yamlSpecialWords: Set<String> = ["null", "~", "true", "false", "yes", "no", "on", "off", "y", "n"]

/// A string field: plain when no YAML reader could take it for a number, bool or null.
public func yamlString(_ s: String) -> String {
    let safe = !s.isEmpty && s.allSatisfy { plainChars.contains($0) } && (s.first!.isLetter || s.first == "/" || s.first == "_")
        && !yamlSpecialWords.contains(s.lowercased())
    return safe ? s : yamlQuoted(s)
}

/// A raw scalar (method parameters): numbers and words stay plain so they keep their YAML type.
public func yamlRaw(_ s: String) -> String {
    let safe = !s.isEmpty && s.allSatisfy { plainChars.contains($0) }
    return safe ? s : yamlQuoted(s)
}

public func yamlQuoted(_ s: String) -> String {
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
