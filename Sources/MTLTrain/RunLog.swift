import Foundation
import MTLCore
#if canImport(Glibc)
import Glibc
#endif

/// The run directory's text outputs (rank 0 only; the caller decides who creates one):
/// `config.yaml` (the resolved config), `train.log` (timestamped human lines) and
/// `metrics.jsonl` (one JSON object per line, keys sorted). Both logs are opened for
/// appending, so a resumed run continues them; every line is flushed as it is written.
public final class RunLog {
    public let directory: String
    public let echo: Bool
    private let logFile: UnsafeMutablePointer<FILE>
    private let metricsFile: UnsafeMutablePointer<FILE>
    private let timestamp: DateFormatter

    public init(directory: String, echo: Bool) throws {
        self.directory = directory
        self.echo = echo
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw MTLError("\(directory): cannot create the run directory (\(error.localizedDescription))")
        }
        guard let log = fopen(directory + "/train.log", "a") else {
            throw MTLError("\(directory)/train.log: cannot open for writing (errno \(errno))")
        }
        guard let metrics = fopen(directory + "/metrics.jsonl", "a") else {
            fclose(log)
            throw MTLError("\(directory)/metrics.jsonl: cannot open for writing (errno \(errno))")
        }
        logFile = log
        metricsFile = metrics
        timestamp = DateFormatter()
        timestamp.locale = Locale(identifier: "en_US_POSIX")
        timestamp.dateFormat = "yyyy-MM-dd HH:mm:ss"
    }

    deinit {
        fclose(logFile)
        fclose(metricsFile)
    }

    /// Writes `config.yaml` (atomically: a reader never sees half a file).
    public func writeConfig(_ yaml: String) throws {
        try writeAtomically(directory + "/config.yaml", yaml.hasSuffix("\n") ? yaml : yaml + "\n")
    }

    /// Appends "yyyy-MM-dd HH:mm:ss <s>" to train.log; echoes `s` to stdout when `echo`.
    public func line(_ s: String) {
        fputs("\(timestamp.string(from: Date())) \(s)\n", logFile)
        fflush(logFile)
        if echo {
            print(s)
            fflush(stdout)
        }
    }

    /// Appends one JSON object to metrics.jsonl. Values: String, Bool, integers, Float/Double
    /// (non-finite ones become null, which JSON has no other way to say), arrays, nested
    /// dictionaries, nil/NSNull.
    public func record(_ json: [String: Any]) {
        fputs(jsonText(json) + "\n", metricsFile)
        fflush(metricsFile)
    }
}

// MARK: - JSON

/// Compact JSON with sorted keys and shortest round-trip numbers.
public func jsonText(_ value: Any?) -> String {
    var out = ""
    appendJSON(value, to: &out)
    return out
}

private func appendJSON(_ value: Any?, to out: inout String) {
    switch value {
    case nil, is NSNull: out += "null"
    case let b as Bool: out += b ? "true" : "false"
    case let i as Int: out += String(i)
    case let i as Int64: out += String(i)
    case let i as Int32: out += String(i)
    case let u as UInt64: out += String(u)
    case let u as UInt32: out += String(u)
    case let d as Double: out += d.isFinite ? jsonNumber("\(d)") : "null"
    case let f as Float: out += f.isFinite ? jsonNumber("\(f)") : "null"
    case let s as String: appendJSONString(s, to: &out)
    case let s as Substring: appendJSONString(String(s), to: &out)
    case let d as [String: Any]:
        out += "{"
        for (i, k) in d.keys.sorted().enumerated() {
            if i > 0 { out += "," }
            appendJSONString(k, to: &out)
            out += ":"
            appendJSON(d[k]!, to: &out)
        }
        out += "}"
    case let d as [String: Any?]:
        appendJSON(d.mapValues { $0 ?? NSNull() } as [String: Any], to: &out)
    case let a as [Any]:
        out += "["
        for (i, v) in a.enumerated() {
            if i > 0 { out += "," }
            appendJSON(v, to: &out)
        }
        out += "]"
    case let a as [Any?]:
        appendJSON(a.map { $0 ?? NSNull() } as [Any], to: &out)
    case let n as NSNumber: out += jsonNumber(n.stringValue)
    default: appendJSONString("\(value!)", to: &out)
    }
}

/// Swift prints 1e-05 and 1.0 — both valid JSON numbers; nothing to change but keep one place.
private func jsonNumber(_ s: String) -> String { s }

private func appendJSONString(_ s: String, to out: inout String) {
    out += "\""
    for ch in s.unicodeScalars {
        switch ch {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if ch.value < 0x20 { out += String(format: "\\u%04x", ch.value) } else { out.unicodeScalars.append(ch) }
        }
    }
    out += "\""
}

// MARK: - progress line

/// "step 120/1000 | seg 1.234 depth 0.456 | lr 1.0e-04 | 35.2 samples/s | ETA 4m10s"
public func formatProgress(step: Int, total: Int, losses: [(String, Double)], lr: Double,
                           samplesPerSecond: Double, etaSeconds: Double) -> String {
    var parts = ["step \(step)/\(total)"]
    if !losses.isEmpty { parts.append(losses.map { "\($0.0) \(formatLoss($0.1))" }.joined(separator: " ")) }
    parts.append("lr " + String(format: "%.1e", lr))
    parts.append(String(format: "%.1f samples/s", samplesPerSecond))
    parts.append("ETA " + formatDuration(etaSeconds))
    return parts.joined(separator: " | ")
}

/// Three decimals in the usual range, scientific notation for tiny or huge values.
func formatLoss(_ x: Double) -> String {
    if !x.isFinite { return "\(x)" }
    let a = abs(x)
    return a == 0 || (a >= 0.001 && a < 1e5) ? String(format: "%.3f", x) : String(format: "%.3e", x)
}

/// 42s, 4m10s, 2h05m, 3d04h; "?" when unknown.
func formatDuration(_ seconds: Double) -> String {
    guard seconds.isFinite, seconds >= 0 else { return "?" }
    let s = Int(seconds.rounded())
    if s < 60 { return "\(s)s" }
    if s < 3600 { return "\(s / 60)m\(String(format: "%02d", s % 60))s" }
    if s < 86400 { return "\(s / 3600)h\(String(format: "%02d", s % 3600 / 60))m" }
    return "\(s / 86400)d\(String(format: "%02d", s % 86400 / 3600))h"
}
