import Foundation
import MTLCore
import XCTest

/// The package's root directory.
public let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent().path

/// A fresh directory `<tmp>/<prefix>-<UUID>`; the test removes it. The prefix keeps only letters,
/// digits, `-` and `_`, so a test case's `name` ("-[DatasetTests testX]") can go into it as it is.
public func makeTemporaryDirectory(_ prefix: String) -> String {
    let safe = prefix.filter { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }
    let dir = NSTemporaryDirectory() + "\(safe)-\(UUID().uuidString)"
    try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// The `mtl` binary: $MTL_BIN, else the newest of .build/{release,debug}/mtl (a developer's latest build).
public func mtlBinary() throws -> String {
    if let b = ProcessInfo.processInfo.environment["MTL_BIN"], FileManager.default.isExecutableFile(atPath: b) { return b }
    let candidates = ["release", "debug"].map { packageRoot + "/.build/\($0)/mtl" }
        .filter { FileManager.default.isExecutableFile(atPath: $0) }
    let newest = candidates.max { a, b in modificationDate(a) < modificationDate(b) }
    guard let newest else { throw XCTSkip("mtl binary not built (swift build --product mtl)") }
    return newest
}

/// The release `mtl` ($MTL_BIN, else .build/release/mtl), for tests that train hundreds of steps: a debug
/// binary is several times slower there. Skips when it is not built; warns when a source is newer.
public func releaseMTLBinary() throws -> String {
    if let b = ProcessInfo.processInfo.environment["MTL_BIN"], FileManager.default.isExecutableFile(atPath: b) { return b }
    let path = packageRoot + "/.build/release/mtl"
    guard FileManager.default.isExecutableFile(atPath: path) else {
        throw XCTSkip("release mtl not built (swift build -c release --product mtl; launch/test does)")
    }
    let built = modificationDate(path)
    if let sources = FileManager.default.enumerator(atPath: packageRoot + "/Sources"),
       let newer = sources.compactMap({ $0 as? String }).first(where: { modificationDate(packageRoot + "/Sources/" + $0) > built }) {
        print("warning: Sources/\(newer) is newer than \(path): rebuild it (swift build -c release --product mtl)")
    }
    return path
}

private func modificationDate(_ path: String) -> Date {
    ((try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date) ?? .distantPast
}

/// `mpirun -n n <mtl> mtlArgs` (oversubscribed, unbound: the tests run more ranks than cores).
public func mpirunMTL(_ n: Int, _ mtlArgs: [String], binary: String? = nil, timeout: Double = 240,
                      onStart: ((Process) -> Void)? = nil) throws -> ProcessResult {
    try runProcess(["mpirun", "-n", "\(n)", "--oversubscribe", "--bind-to", "none", try binary ?? mtlBinary()] + mtlArgs,
                   timeout: timeout, onStart: onStart)
}

/// `mtl synth` into `out` (train + val splits); fails the test when it does not exit 0.
public func synthesize(_ out: String, samples: Int, valSamples: Int, height: Int, width: Int, tasks: [String]? = nil,
                       seed: Int, file: StaticString = #filePath, line: UInt = #line) throws {
    var args = [try mtlBinary(), "synth", "--out", out, "--samples", "\(samples)", "--val-samples", "\(valSamples)",
                "--height", "\(height)", "--width", "\(width)", "--seed", "\(seed)"]
    if let tasks { args += ["--tasks", tasks.joined(separator: ",")] }
    let r = try runProcess(args)
    XCTAssertEqual(r.status, 0, r.err, file: file, line: line)
}

/// The records of kind "train" in `runDir`/metrics.jsonl, in order.
public func trainRecords(_ runDir: String) throws -> [[String: Any]] {
    let text = try String(contentsOfFile: runDir + "/metrics.jsonl", encoding: .utf8)
    return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        .filter { $0["kind"] as? String == "train" }
}

/// Per train record, the values of `<key>.<task>` for `tasks` (NaN where one is missing).
public func trainSeries(_ runDir: String, _ key: String, tasks: [String]) throws -> [[Double]] {
    try trainRecords(runDir).map { o in tasks.map { (o["\(key).\($0)"] as? Double) ?? .nan } }
}

/// The mean of column `column` over rows `rows` of `series`.
public func columnMean(_ series: [[Double]], _ rows: Range<Int>, column: Int) -> Double {
    series[rows].map { $0[column] }.reduce(0, +) / Double(rows.count)
}

/// The pids (other than this process) whose command line contains `text`, zombies excluded.
public func processes(mentioning text: String) -> [Int32] {
    let me = getpid()
    return ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { e -> Int32? in
        guard let pid = Int32(e), pid != me,
              let raw = FileManager.default.contents(atPath: "/proc/\(e)/cmdline") else { return nil }
        if let stat = try? String(contentsOfFile: "/proc/\(e)/stat", encoding: .utf8),
           stat.split(separator: ")").last?.split(separator: " ").first == "Z" { return nil }
        return String(decoding: raw.map { $0 == 0 ? 32 : $0 }, as: UTF8.self).contains(text) ? pid : nil
    }
}

/// How far the tensors of `b` are from those of `a`, for the names of `a` that pass `include` (each
/// must be in `b` with the same count), in Double: the worst per-tensor ‖a_k − b_k‖ / ‖a_k‖ and its
/// name, and ‖a − b‖ / ‖a‖ over all of them together (a tensor that is nearly zero, such as a BN bias
/// after a few steps, makes its own ratio measure rounding against nothing).
public func relativeDifference(_ a: [String: Tensor], _ b: [String: Tensor], include: (String) -> Bool = { _ in true },
                               file: StaticString = #filePath, line: UInt = #line)
    -> (worst: Double, worstName: String, global: Double, compared: Int) {
    var worst = (0.0, ""), diff = 0.0, norm = 0.0, compared = 0
    for (name, x) in a.sorted(by: { $0.key < $1.key }) where include(name) {
        guard let y = b[name], y.count == x.count else { XCTFail("\(name) missing or resized", file: file, line: line); continue }
        var d = 0.0, n = 0.0
        for i in 0..<x.count { d += Double(x[i] - y[i]) * Double(x[i] - y[i]); n += Double(x[i]) * Double(x[i]) }
        let r = (d / max(n, 1e-30)).squareRoot()
        if r > worst.0 { worst = (r, name) }
        diff += d
        norm += n
        compared += 1
    }
    return (worst.0, worst.1, (diff / max(norm, 1e-30)).squareRoot(), compared)
}
