import Foundation
import MTLCore
#if canImport(Glibc)
import Glibc
#endif

/// The run directory's text outputs (rank 0 only; the caller decides who creates one):
/// `config.yaml` (the resolved config), `train.log` (timestamped human lines) and
/// `metrics.jsonl` (one JSON object per line, keys sorted). Both logs are opened for
/// appending, so a resumed run continues them; every line is written as it comes.
///
/// A log line that cannot be written (disk full, I/O error) is lost with a warning on stderr and
/// training continues: the checkpoints are what a run cannot do without, and their writer stops the
/// run when they fail. A line is never left half-written (see `AppendOnlyFile`).
public final class RunLog {
    public let directory: String
    public let echo: Bool
    private let logFile: AppendOnlyFile
    private let metricsFile: AppendOnlyFile
    private let timestamp: DateFormatter
    private let console = ConsoleEcho()

    public init(directory: String, echo: Bool) throws {
        self.directory = directory
        self.echo = echo
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw MTLError("\(directory): cannot create the run directory (\(error.localizedDescription))")
        }
        logFile = try AppendOnlyFile(path: directory + "/train.log")
        metricsFile = try AppendOnlyFile(path: directory + "/metrics.jsonl")
        timestamp = DateFormatter()
        timestamp.locale = Locale(identifier: "en_US_POSIX")
        timestamp.dateFormat = "yyyy-MM-dd HH:mm:ss"
    }

    /// Writes `config.yaml` (atomically: a reader never sees half a file).
    public func writeConfig(_ yaml: String) throws {
        try writeAtomically(directory + "/config.yaml", yaml.hasSuffix("\n") ? yaml : yaml + "\n")
    }

    /// Appends "yyyy-MM-dd HH:mm:ss <s>" to train.log; echoes `s` to stdout when `echo` (the
    /// log's and the call's: a warning already printed on stderr is not repeated).
    public func line(_ s: String, echo echoThis: Bool = true) {
        logFile.append("\(timestamp.string(from: Date())) \(s)\n")
        if echo && echoThis { console.echo(s) }
    }

    /// Appends one JSON object to metrics.jsonl. Values: String, Bool, integers, Float/Double
    /// (non-finite ones become null, which JSON has no other way to say), arrays, nested
    /// dictionaries, nil/NSNull.
    public func record(_ json: [String: Any]) {
        metricsFile.append(jsonText(json) + "\n")
    }
}

/// Rank 0's echo of the log on stdout, which never stalls training. Under mpirun stdout is a pty (or
/// pipe) to Open MPI's daemon, and mpirun stops reading it while it handles a signal (measured: a writer
/// blocked after 27.9 KB, until the teardown's SIGKILL). A blocking write there held the step loop
/// past the 1 s grace Open MPI gives before SIGKILL, and the checkpoint the signal asked for was lost.
/// So a line goes out only if stdout can take it now (poll with no wait; a pipe or pty that polls writable
/// has room for a line). Otherwise it is dropped (train.log has it) and counted, and the count is printed
/// once stdout drains.
final class ConsoleEcho {
    private var dropped = 0

    func echo(_ s: String) {
        var p = pollfd(fd: STDOUT_FILENO, events: Int16(POLLOUT), revents: 0)
        guard poll(&p, 1, 0) == 1, p.revents & Int16(POLLOUT) != 0 else {
            dropped += 1
            return
        }
        fflush(stdout)  // whatever print() buffered goes first, in order
        var text = s + "\n"
        if dropped > 0 {
            text = "(\(dropped) console line(s) dropped while nobody read stdout; train.log has every line)\n" + text
            dropped = 0
        }
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let n = bytes.withUnsafeBytes { Glibc.write(STDOUT_FILENO, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }  // stdout closed or broken: the console is best-effort
            bytes = bytes.dropFirst(n)
        }
    }
}

/// A log file that only grows by whole lines. Each line is one write(2) at the end (O_APPEND); a
/// write that fails part-way is cut back off, so readers (mtl report, `tail -f`) never see a torn
/// line. Failures warn once on stderr, count the lost lines, and say so when writing works again.
public final class AppendOnlyFile {
    public let path: String
    private let fd: Int32
    private var lostLines = 0
    private let lock = NSLock()

    public init(path: String) throws {
        self.path = path
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        if fd < 0 { throw MTLError("\(path): cannot open for writing (\(osReason(errno)))") }
    }

    deinit { close(fd) }

    /// Appends `text` (normally one line ending in "\n"); returns false if it was lost.
    @discardableResult
    public func append(_ text: String) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if lostLines > 0 {
            let note = "(\(lostLines) line(s) could not be written here and are missing)\n"
            guard write(note) else {
                lostLines += 1
                return false
            }
            FileHandle.standardError.write(Data("warning: \(path): writing works again; \(lostLines) line(s) were lost\n".utf8))
            lostLines = 0
        }
        if write(text) { return true }
        lostLines += 1
        return false
    }

    private func write(_ text: String) -> Bool {
        let end = lseek(fd, 0, SEEK_END)
        let code = Array(text.utf8).withUnsafeBytes { writeAll(fd, $0, path: path) }
        if code == 0 { return true }
        if end >= 0 { _ = ftruncate(fd, end) }   // drop a partly written line
        if lostLines == 0 {
            FileHandle.standardError.write(Data("warning: \(path): cannot write (\(osReason(code))); log lines are lost until it works again, training continues (checkpoint failures stop the run)\n".utf8))
        }
        return false
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
