import Foundation
import MTLCore

/// One task of a run as its resolved config.yaml declares it.
public struct RunTask: Equatable {
    public let name: String
    public let role: String      // "primary" | "auxiliary"
    public let frozen: Bool
}

/// What the report needs from one run directory: a few config keys and the metrics.jsonl records.
public struct RunData {
    public let dir: String
    public let method: String
    public let level: String
    public let seed: Int
    public let tasks: [RunTask]
    /// `kind: train` records, in file order (numeric fields only).
    public let train: [[String: Double]]
    /// `kind: eval` records, in file order (numeric fields only); never empty.
    public let evals: [[String: Double]]

    public var lastEval: [String: Double] { evals[evals.count - 1] }
    public var taskNames: [String] { tasks.map { $0.name } }

    /// Reads DIR/config.yaml and DIR/metrics.jsonl; one-line MTLError for anything missing.
    public static func load(_ dir: String) throws -> RunData {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw MTLError("report: run directory \(dir) not found")
        }
        let configPath = (dir as NSString).appendingPathComponent("config.yaml")
        guard let configText = try? String(contentsOfFile: configPath, encoding: .utf8) else {
            throw MTLError("report: \(configPath) not found (a run directory written by mtl train holds config.yaml and metrics.jsonl)")
        }
        let config = try flattenYAML(configText, file: configPath)
        let method = config["method.name"] ?? ""
        guard !method.isEmpty else { throw MTLError("report: \(configPath): key method.name missing") }
        let level = config["method.level"] ?? "representation"
        let seedText = config["train.seed"] ?? "0"
        guard let seed = Int(seedText) else {
            throw MTLError("report: \(configPath): train.seed must be a whole number, found '\(seedText)'")
        }
        // Task names in file order: the keys "tasks.<name>.<field>" (or "tasks.<name>" when empty).
        var names: [String] = []
        for key in config.orderedKeys where key.hasPrefix("tasks.") {
            let name = String(key.dropFirst(6).split(separator: ".", maxSplits: 1)[0])
            if !names.contains(name) { names.append(name) }
        }
        guard !names.isEmpty else { throw MTLError("report: \(configPath): no tasks under tasks:") }
        let tasks = names.map { name in
            RunTask(name: name, role: config["tasks.\(name).role"] ?? "auxiliary",
                    frozen: (config["tasks.\(name).frozen"] ?? "false") == "true")
        }

        let metricsPath = (dir as NSString).appendingPathComponent("metrics.jsonl")
        guard let metricsText = try? String(contentsOfFile: metricsPath, encoding: .utf8) else {
            throw MTLError("report: \(metricsPath) not found")
        }
        var train: [[String: Double]] = [], evals: [[String: Double]] = []
        for (i, line) in metricsText.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            guard let object = try? JSONSerialization.jsonObject(with: Data(trimmed.utf8)) as? [String: Any] else {
                throw MTLError("report: \(metricsPath) line \(i + 1): expected one JSON object, found '\(trimmed.prefix(60))'")
            }
            var record: [String: Double] = [:]
            for (key, value) in object {
                // JSON booleans ("skipped": false) come back as NSNumber of type 'c' (and `is Bool`
                // holds for every NSNumber 0 or 1 on Linux): keep real numbers only.
                if let number = value as? NSNumber, String(cString: number.objCType) != "c" {
                    record[key] = number.doubleValue
                }
            }
            switch object["kind"] as? String {
            case "train": train.append(record)
            case "eval": evals.append(record)
            default: continue
            }
        }
        guard !evals.isEmpty else {
            throw MTLError("report: \(metricsPath) has no eval record (kind \"eval\"): the run ended before its first evaluation (train.eval_every > train.steps?)")
        }
        return RunData(dir: dir, method: method, level: level, seed: seed, tasks: tasks, train: train, evals: evals)
    }
}

/// A YAML document flattened to "a.b.c" → scalar text, keys in file order.
struct FlatYAML {
    var orderedKeys: [String] = []
    var values: [String: String] = [:]
    subscript(key: String) -> String? { values[key] }
    mutating func set(_ key: String, _ value: String) {
        if values[key] == nil { orderedKeys.append(key) }
        values[key] = value
    }
}

/// Parses the YAML subset that `mtl train` writes (block mappings indented by spaces, scalars,
/// quoted strings, comments) plus one-line flow mappings `{a: 1, b: {c: 2}}` as hand-written
/// configs use them. Sequences are kept as text (the report reads none).
func flattenYAML(_ text: String, file: String) throws -> FlatYAML {
    var out = FlatYAML()
    var stack: [(indent: Int, key: String)] = []   // open block mappings
    for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
        let line = stripComment(String(raw))
        if line.trimmingCharacters(in: .whitespaces).isEmpty { continue }
        let indent = line.prefix(while: { $0 == " " }).count
        let body = line.dropFirst(indent)
        if body.hasPrefix("- ") || body == "-" {   // a sequence item: kept as text under its key
            continue
        }
        guard let colon = findTopLevelColon(body) else {
            throw MTLError("report: \(file) line \(i + 1): expected 'key: value', found '\(body)'")
        }
        let key = unquote(String(body[..<colon]).trimmingCharacters(in: .whitespaces))
        let value = String(body[body.index(after: colon)...]).trimmingCharacters(in: .whitespaces)
        while let last = stack.last, last.indent >= indent { stack.removeLast() }
        let path = (stack.map { $0.key } + [key]).joined(separator: ".")
        if value.isEmpty {
            stack.append((indent, key))
            out.set(path, "")
        } else if value.hasPrefix("{") {
            try flattenFlow(value, prefix: path, into: &out, file: file, line: i + 1)
        } else {
            out.set(path, unquote(value))
        }
    }
    return out
}

private func stripComment(_ line: String) -> String {
    var quote: Character? = nil
    var previous: Character = " "
    for (offset, c) in line.enumerated() {
        if let q = quote { if c == q { quote = nil } }
        else if c == "\"" || c == "'" { quote = c }
        else if c == "#" && previous == " " { return String(line.prefix(offset)) }
        previous = c
    }
    return line
}

private func findTopLevelColon(_ s: Substring) -> String.Index? {
    var quote: Character? = nil
    var i = s.startIndex
    while i < s.endIndex {
        let c = s[i]
        if let q = quote { if c == q { quote = nil } }
        else if c == "\"" || c == "'" { quote = c }
        else if c == ":" {
            let next = s.index(after: i)
            if next == s.endIndex || s[next] == " " { return i }
        }
        i = s.index(after: i)
    }
    return nil
}

private func unquote(_ s: String) -> String {
    if s.count >= 2, let f = s.first, let l = s.last, (f == "\"" && l == "\"") || (f == "'" && l == "'") {
        return String(s.dropFirst().dropLast())
    }
    return s
}

/// `{a: 1, b: {c: 2}}` → prefix.a = 1, prefix.b.c = 2.
private func flattenFlow(_ text: String, prefix: String, into out: inout FlatYAML, file: String, line: Int) throws {
    let chars = Array(text)
    var pos = 0
    let failure = MTLError("report: \(file) line \(line): cannot read the flow mapping '\(text)'")
    func skipSpaces() { while pos < chars.count && chars[pos] == " " { pos += 1 } }
    func parseMapping(_ path: String) throws {
        guard pos < chars.count, chars[pos] == "{" else { throw failure }
        pos += 1
        out.set(path, "")
        skipSpaces()
        if pos < chars.count && chars[pos] == "}" { pos += 1; return }
        while true {
            skipSpaces()
            var key = ""
            while pos < chars.count && chars[pos] != ":" { key.append(chars[pos]); pos += 1 }
            guard pos < chars.count else { throw failure }
            pos += 1
            skipSpaces()
            let sub = path + "." + unquote(key.trimmingCharacters(in: .whitespaces))
            if pos < chars.count && chars[pos] == "{" {
                try parseMapping(sub)
            } else {
                var value = ""
                while pos < chars.count && chars[pos] != "," && chars[pos] != "}" { value.append(chars[pos]); pos += 1 }
                out.set(sub, unquote(value.trimmingCharacters(in: .whitespaces)))
            }
            skipSpaces()
            guard pos < chars.count else { throw failure }
            if chars[pos] == "," { pos += 1; continue }
            if chars[pos] == "}" { pos += 1; return }
            throw failure
        }
    }
    try parseMapping(prefix)
}
