import Foundation
import MTLCore

/// `mtl inspect --verify`: reads every dataset of every split of a dataset file, block by block
/// (bounded memory), and
/// - recomputes the SHA-256 of the uncompressed C-order bytes (little-endian, the dataset's own
///   element type) wherever a `sha256` attribute exists — the converters write it — and stops at
///   the first mismatch with one line naming the dataset and both hashes;
/// - checks value ranges per task: seg/parts in -1..<num_classes, depth finite and >= 0,
///   normals finite and of unit norm (±1e-2) or all-zero, edges/saliency in {0, 1, 255},
///   has_<task> in {0, 1};
/// - returns a report with per-task statistics (class histogram, depth range, normal norms,
///   positive fractions, image channel means).
/// A read failure (truncated or corrupt chunk) surfaces as H5File's one-line error.
public enum DatasetVerifier {
    public static func verify(_ path: String) throws -> String {
        let file = try H5File.open(path, readOnly: true)
        defer { file.close() }
        let format = file.stringAttribute("/", "format")
        guard format == "mtdp-hdf5" else {
            throw MTLError("\(path): root attribute 'format': expected \"mtdp-hdf5\", found "
                           + (format.map { "\"\($0)\"" } ?? "none"))
        }
        var lines = ["\(path): mtdp-hdf5 v\(file.stringAttribute("/", "format_version") ?? file.intAttribute("/", "format_version").map(String.init) ?? "?")"]
        var datasets = 0, checksums = 0
        let splits = try file.children("/").filter { file.isGroup("/" + $0) }
        guard !splits.isEmpty else { throw MTLError("\(path): no split groups: expected at least one (e.g. /train)") }
        for split in splits {
            let group = "/" + split
            lines.append("split \(group): \(file.intAttribute(group, "num_samples").map(String.init) ?? "?") samples")
            for name in try file.children(group) where !file.isGroup(group + "/" + name) {
                let dpath = group + "/" + name
                let result = try verifyDataset(file, path: path, dpath: dpath, name: name)
                datasets += 1
                var line = "  " + name.padding(toLength: 10, withPad: " ", startingAt: 0) + " " + result.summary
                if let expected = result.expectedHash {
                    guard let found = result.foundHash else {
                        lines.append(line + "  sha256 not checked (string dataset)")
                        continue
                    }
                    guard expected.lowercased() == found else {
                        throw MTLError("\(path): \(dpath): sha256 mismatch: expected \(expected) (stored attribute), "
                                       + "found \(found) (recomputed from the data): the file is corrupt")
                    }
                    checksums += 1
                    line += "  sha256 ok"
                }
                lines.append(line)
            }
        }
        lines.append("verified: \(datasets) datasets read in full, \(checksums) sha256 checksums match, all values in range")
        return lines.joined(separator: "\n")
    }

    struct Result {
        var summary: String
        var expectedHash: String?
        var foundHash: String?
    }

    /// Streams one dataset in blocks of samples (dim 0) through the hash and the range checks.
    private static func scan<T: H5Scalar>(_ file: H5File, _ dpath: String, _ type: T.Type, shape: [Int],
                                          hash: inout SHA256,
                                          _ body: (_ firstSample: Int, _ values: UnsafeBufferPointer<T>) throws -> Void) throws {
        guard let n = shape.first, n > 0 else { return }
        let perSample = shape.dropFirst().reduce(1, *)
        guard perSample > 0 else { return }
        let block = max(1, (16 << 20) / (perSample * MemoryLayout<T>.stride))
        var buffer = [T](unsafeUninitializedCapacity: min(block, n) * perSample) { _, c in c = min(block, n) * perSample }
        var start = 0
        while start < n {
            let k = min(block, n - start)
            try buffer.withUnsafeMutableBufferPointer { b in
                try file.readSlab(dpath, start: [start] + shape.dropFirst().map { _ in 0 },
                                  count: [k] + Array(shape.dropFirst()), into: b.baseAddress!)
                let values = UnsafeBufferPointer(start: b.baseAddress!, count: k * perSample)
                hash.update(UnsafeRawBufferPointer(values))
                try body(start, values)
            }
            start += k
        }
    }

    private static func percent(_ k: Int, _ total: Int) -> String {
        String(format: "%.2f%%", total > 0 ? 100 * Double(k) / Double(total) : 0)
    }

    private static func verifyDataset(_ file: H5File, path: String, dpath: String, name: String) throws -> Result {
        let type = try file.typeClass(dpath)
        let shape = try file.shape(dpath)
        let expected = file.stringAttribute(dpath, "sha256")
        var hash = SHA256()
        let perSample = shape.dropFirst().reduce(1, *)
        let shapeText = "(" + shape.map(String.init).joined(separator: ",") + ")"
        var summary = type.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0) + " " + shapeText
        func sampleOf(_ first: Int, _ i: Int) -> Int { first + i / max(1, perSample) }
        func pixelOf(_ i: Int, channels: Int) -> String {
            guard shape.count >= 3 else { return "" }
            let p = (i % max(1, perSample)) / channels, w = shape[2]
            return " at pixel (\(p / w), \(p % w))"
        }

        let schemaTypes: [String: H5TypeClass] = ["images": .uint8, "seg": .int16, "parts": .int16, "depth": .float32,
                                                  "normals": .float32, "edges": .uint8, "saliency": .uint8]
        if let want = schemaTypes[name], want != type {
            throw MTLError("\(path): \(dpath): expected element type \(want.rawValue), found \(type.rawValue)")
        }
        if (name == "normals" || name == "images") && (shape.count != 4 || shape[3] != 3) {
            throw MTLError("\(path): \(dpath): expected shape (N,H,W,3), found \(shapeText)")
        }
        switch (name, type) {
        case ("seg", .int16), ("parts", .int16):
            guard let k = file.intAttribute(dpath, "num_classes"), k >= 1 else {
                throw MTLError("\(path): \(dpath): attribute 'num_classes' missing or not a positive integer")
            }
            var histogram = [Int](repeating: 0, count: k + 1)  // last bin: ignore (-1)
            try scan(file, dpath, Int16.self, shape: shape, hash: &hash) { first, values in
                for (i, v) in values.enumerated() {
                    guard v >= -1 && Int(v) < k else {
                        throw MTLError("\(path): \(dpath) sample \(sampleOf(first, i)): label \(v)\(pixelOf(i, channels: 1)) "
                                       + "out of range: expected -1 (ignore) or 0..<\(k)")
                    }
                    histogram[v < 0 ? k : Int(v)] += 1
                }
            }
            let total = histogram.reduce(0, +)
            let present = histogram.prefix(k).filter { $0 > 0 }.count
            summary += " | \(present)/\(k) classes present, ignore \(percent(histogram[k], total)); "
                + (0..<k).filter { histogram[$0] > 0 }.map { "\($0): \(percent(histogram[$0], total))" }.joined(separator: " ")

        case ("depth", .float32):
            var lo = Float.infinity, hi = -Float.infinity, sum = 0.0, valid = 0, invalid = 0
            try scan(file, dpath, Float.self, shape: shape, hash: &hash) { first, values in
                for (i, v) in values.enumerated() {
                    guard v.isFinite && v >= 0 else {
                        throw MTLError("\(path): \(dpath) sample \(sampleOf(first, i)): depth \(v)\(pixelOf(i, channels: 1)): "
                                       + "expected finite values >= 0 (0 = invalid)")
                    }
                    if v == 0 { invalid += 1 } else { valid += 1; sum += Double(v); lo = min(lo, v); hi = max(hi, v) }
                }
            }
            summary += valid > 0
                ? String(format: " | valid min %.4g max %.4g mean %.4g", lo, hi, sum / Double(valid))
                : " | no valid depth"
            summary += ", invalid \(percent(invalid, valid + invalid))"

        case ("normals", .float32):
            var lo = Float.infinity, hi = -Float.infinity, zero = 0, total = 0
            try scan(file, dpath, Float.self, shape: shape, hash: &hash) { first, values in
                var i = 0
                while i + 2 < values.count {
                    let x = values[i], y = values[i + 1], z = values[i + 2]
                    total += 1
                    if x == 0 && y == 0 && z == 0 { zero += 1; i += 3; continue }
                    let norm = (x * x + y * y + z * z).squareRoot()
                    guard norm.isFinite && abs(norm - 1) <= 1e-2 else {
                        throw MTLError("\(path): \(dpath) sample \(sampleOf(first, i)): normal (\(x), \(y), \(z))"
                                       + "\(pixelOf(i, channels: 3)) has norm \(norm): expected unit length (±0.01) or all-zero = invalid")
                    }
                    lo = min(lo, norm); hi = max(hi, norm)
                    i += 3
                }
            }
            summary += lo <= hi ? String(format: " | norms in [%.4f, %.4f]", lo, hi) : " | no valid normals"
            summary += ", invalid (zero) \(percent(zero, total))"

        case ("edges", .uint8), ("saliency", .uint8):
            var counts = [Int](repeating: 0, count: 3)
            try scan(file, dpath, UInt8.self, shape: shape, hash: &hash) { first, values in
                for (i, v) in values.enumerated() {
                    switch v {
                    case 0: counts[0] += 1
                    case 1: counts[1] += 1
                    case 255: counts[2] += 1
                    default:
                        throw MTLError("\(path): \(dpath) sample \(sampleOf(first, i)): value \(v)\(pixelOf(i, channels: 1)): "
                                       + "expected 0, 1 or 255 = ignore")
                    }
                }
            }
            let total = counts.reduce(0, +)
            summary += " | positive \(percent(counts[1], total)), ignore \(percent(counts[2], total))"

        case ("images", .uint8):
            var sums = [Double](repeating: 0, count: 3), pixels = 0
            try scan(file, dpath, UInt8.self, shape: shape, hash: &hash) { _, values in
                var i = 0
                while i + 2 < values.count {
                    sums[0] += Double(values[i]); sums[1] += Double(values[i + 1]); sums[2] += Double(values[i + 2])
                    pixels += 1
                    i += 3
                }
            }
            summary += " | channel means " + sums.map { String(format: "%.4f", $0 / Double(max(1, pixels)) / 255) }.joined(separator: " ")

        case (_, .uint8) where name.hasPrefix("has_"):
            var labelled = 0, total = 0
            try scan(file, dpath, UInt8.self, shape: shape, hash: &hash) { first, values in
                for (i, v) in values.enumerated() {
                    guard v <= 1 else {
                        throw MTLError("\(path): \(dpath) sample \(first + i): value \(v): expected 0 or 1")
                    }
                    labelled += Int(v); total += 1
                }
            }
            summary += " | labelled \(labelled)/\(total)"

        case (_, .string):
            return Result(summary: summary, expectedHash: expected, foundHash: nil)

        // Anything else (sizes, extra arrays): hashed when it has a checksum, no range check.
        case (_, .uint8): try scan(file, dpath, UInt8.self, shape: shape, hash: &hash) { _, _ in }
        case (_, .int16): try scan(file, dpath, Int16.self, shape: shape, hash: &hash) { _, _ in }
        case (_, .uint16): try scan(file, dpath, UInt16.self, shape: shape, hash: &hash) { _, _ in }
        case (_, .int32): try scan(file, dpath, Int32.self, shape: shape, hash: &hash) { _, _ in }
        case (_, .int64): try scan(file, dpath, Int64.self, shape: shape, hash: &hash) { _, _ in }
        case (_, .float32): try scan(file, dpath, Float.self, shape: shape, hash: &hash) { _, _ in }
        case (_, .float64): try scan(file, dpath, Double.self, shape: shape, hash: &hash) { _, _ in }
        default:
            return Result(summary: summary + " | not checked (type \(type.rawValue))", expectedHash: expected, foundHash: nil)
        }
        return Result(summary: summary, expectedHash: expected, foundHash: hash.finalizeHex())
    }
}
