import MTLCore

/// The `method.<name>.<key>` hyperparameters of one method. Each method reads its keys with
/// their defaults (METHODS.md); `finish()` then rejects anything it did not read, naming the
/// valid keys and the nearest one.
struct MethodParams {
    let method: String
    private var values: [String: String] = [:]
    private(set) var validKeys: [String] = []

    /// Keys may be bare ("lr") or prefixed ("method.uw.lr"); the imtl variants share `method.imtl.`.
    /// `method.name` and `method.level` belong to the trainer and are ignored here.
    init(method: String, raw: [String: String]) throws {
        self.method = method
        var prefixes = ["method.\(method)."]
        if method.hasPrefix("imtl") { prefixes.append("method.imtl.") }
        for (k, v) in raw {
            if k == "method.name" || k == "method.level" { continue }
            if let pre = prefixes.first(where: { k.hasPrefix($0) }) {
                values[String(k.dropFirst(pre.count))] = v
            } else if k.hasPrefix("method.") {
                throw MTLError("\(k): a hyperparameter of another method, but method.name is \(method)")
            } else {
                values[k] = v
            }
        }
    }

    private var prefix: String { "method.\(method.hasPrefix("imtl") ? "imtl" : method)" }

    private mutating func raw(_ key: String) -> String? {
        validKeys.append(key)
        return values[key]?.trimmingCharacters(in: .whitespaces)
    }

    mutating func double(_ key: String, _ def: Double, min lo: Double? = nil, max hi: Double? = nil) throws -> Double {
        guard let s = raw(key) else { return def }
        guard let v = Double(s), v.isFinite else { throw MTLError("\(prefix).\(key): expected a number, found '\(s)'") }
        if let lo, v < lo { throw MTLError("\(prefix).\(key): expected a number >= \(lo), found \(s)") }
        if let hi, v > hi { throw MTLError("\(prefix).\(key): expected a number <= \(hi), found \(s)") }
        return v
    }

    mutating func int(_ key: String, _ def: Int, min lo: Int? = nil) throws -> Int {
        guard let s = raw(key) else { return def }
        guard let v = Int(s) else { throw MTLError("\(prefix).\(key): expected an integer, found '\(s)'") }
        if let lo, v < lo { throw MTLError("\(prefix).\(key): expected an integer >= \(lo), found \(s)") }
        return v
    }

    mutating func bool(_ key: String, _ def: Bool) throws -> Bool {
        guard let s = raw(key) else { return def }
        switch s.lowercased() {
        case "true", "yes", "1", "on": return true
        case "false", "no", "0", "off": return false
        default: throw MTLError("\(prefix).\(key): expected true or false, found '\(s)'")
        }
    }

    mutating func choice(_ key: String, _ def: String, _ options: [String]) throws -> String {
        guard let s = raw(key) else { return def }
        let v = s.lowercased()
        guard options.contains(v) else {
            let hint = nearest(v, in: options).map { " (did you mean '\($0)'?)" } ?? ""
            throw MTLError("\(prefix).\(key): expected one of \(options.joined(separator: "|")), found '\(s)'\(hint)")
        }
        return v
    }

    /// Unknown keys → one line listing the valid keys.
    func finish() throws {
        let unknown = values.keys.filter { !validKeys.contains($0) }.sorted()
        guard let first = unknown.first else { return }
        let valid = validKeys.sorted()
        let hint = nearest(first, in: valid).map { " (did you mean '\($0)'?)" } ?? ""
        let list = valid.isEmpty ? "none (this method has no hyperparameters)" : valid.joined(separator: ", ")
        throw MTLError("\(prefix).\(first): unknown key\(hint); valid keys: \(list)")
    }
}

/// The closest string by edit distance, if it is close enough to be a plausible typo.
func nearest(_ s: String, in options: [String]) -> String? {
    func distance(_ a: [Character], _ b: [Character]) -> Int {
        if a.isEmpty { return b.count }
        var prev = Array(0...b.count), cur = prev
        for i in 1...a.count {
            cur[0] = i
            for j in 1...max(b.count, 1) where j <= b.count {
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            prev = cur
        }
        return prev[b.count]
    }
    let a = Array(s)
    var best: (String, Int)? = nil
    for o in options {
        let d = distance(a, Array(o))
        if best == nil || d < best!.1 { best = (o, d) }
    }
    guard let (o, d) = best, d <= max(2, s.count / 3) else { return nil }
    return o
}

import Foundation
