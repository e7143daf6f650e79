import Foundation
import MTLCore

/// `mtl inspect` for dataset files: schema, splits, per-dataset shape/dtype/storage/attributes,
/// and per-task statistics over every sample (read one chunk at a time, bounded memory):
/// seg/parts class histogram incl. ignore and out-of-range labels, depth min/max/mean over valid
/// pixels and the invalid fraction, normal-norm range, binary-map positive/ignore fractions,
/// per-channel image mean/std.
public enum DatasetInspector {
    /// True for an HDF5 file whose root `format` attribute is "mtdp-hdf5".
    public static func isDataset(_ path: String) -> Bool {
        guard FileManager.default.fileExists(atPath: path),
              let raw = try? H5RawReader(path: path) else { return false }
        return raw.attributes("/")["format"]?.text == schemaFormat
    }

    public static func describe(_ path: String) throws -> String {
        let file = try H5File.open(path, readOnly: true)
        defer { file.close() }
        let raw = try H5RawReader(path: path)
        var out: [String] = []
        let size = ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.intValue ?? 0
        let root = raw.attributes("/")
        let format = root["format"]?.text
        let version = root["format_version"]?.text ?? "?"
        if format == schemaFormat {
            out.append("\(path): \(schemaFormat) v\(version), \(byteString(size))")
        } else {
            out.append("\(path): HDF5, \(byteString(size)); not an \(schemaFormat) dataset (root attribute 'format' is \(format.map { "\"\($0)\"" } ?? "missing"))")
        }
        if !root.isEmpty { out.append("attributes:") }
        for key in root.keys.sorted() {
            var text = root[key]!.text
            if text.count > 160 { text = String(text.prefix(157)) + "..." }
            out.append("  \(key) = \(text)")
        }

        let groups = try file.children("/").filter { file.isGroup("/" + $0) }
        for name in groups {
            let group = "/" + name
            let attrs = raw.attributes(group)
            let n = attrs["num_samples"]?.text ?? "?"
            let h = attrs["height"]?.text ?? "?", w = attrs["width"]?.text ?? "?"
            out.append("")
            out.append("split \(group): \(n) samples, \(h)x\(w)" + (attrs["split_source"].map { ", source \($0.text)" } ?? ""))
            for child in try file.children(group) {
                let dpath = group + "/" + child
                if file.isGroup(dpath) { out.append("  \(child)/ (group)"); continue }
                let shape = try file.shape(dpath)
                let type = try file.typeClass(dpath)
                let storage = raw.storage(dpath)
                var line = "  " + child.padding(toLength: 10, withPad: " ", startingAt: 0)
                    + " " + type.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0) + " " + shapeString(shape)
                if let chunks = storage.chunks { line += "  chunks " + shapeString(chunks) }
                if !storage.filters.isEmpty { line += " " + storage.filters.joined(separator: "+") }
                out.append(line)
                let dattrs = raw.attributes(dpath)
                if !dattrs.isEmpty {
                    out.append("      attrs: " + dattrs.keys.sorted().map { "\($0)=\(dattrs[$0]!.text)" }.joined(separator: "  "))
                }
                if let kind = dattrs["noise"]?.text {
                    out.append("      " + noiseDescription(kind: kind, task: child, group: group, attributes: dattrs))
                }
                do {
                    out.append(contentsOf: try statistics(file, dpath, task: child, type: type, shape: shape, attributes: dattrs)
                                .map { "      " + $0 })
                } catch let e as MTLError {
                    out.append("      statistics unavailable: \(e.message)")
                }
            }
        }
        return out.joined(separator: "\n")
    }

    /// One line for a noisy pseudo-auxiliary task (`mtl synth --noise-task`, or tools/noisy_task.py's older attributes).
    static func noiseDescription(kind: String, task: String, group: String, attributes a: [String: H5AttributeValue]) -> String {
        let source = a["noise_source"]?.text ?? task
        let seed = a["noise_seed"]?.text ?? "?"
        switch kind {
        case "replace":
            let p = a["noise_p"]?.text ?? "?"
            return "NOISY TASK: a copy of \(group)/\(source) with each valid pixel replaced by a random label with probability \(p) (seed \(seed))"
        case "shuffle":
            return "NOISY TASK: each image has the \(source) labels of another image of \(group) (a fixed random derangement, seed \(seed))"
        default:
            return "NOISY TASK: noise=\(kind)" + (a["noise_replace"].map { ", replaced fraction \($0.text)" } ?? "") + " (seed \(seed))"
        }
    }

    private static func byteString(_ n: Int) -> String {
        if n >= 1 << 30 { return String(format: "%.2f GiB", Double(n) / Double(1 << 30)) }
        if n >= 1 << 20 { return String(format: "%.2f MiB", Double(n) / Double(1 << 20)) }
        if n >= 1 << 10 { return String(format: "%.1f KiB", Double(n) / Double(1 << 10)) }
        return "\(n) bytes"
    }

    private static func percent(_ k: Int, _ total: Int) -> String {
        String(format: "%.2f%%", total > 0 ? 100 * Double(k) / Double(total) : 0)
    }

    /// Statistics of a known task (or images) stored with the schema's type and a per-sample layout.
    private static func statistics(_ file: H5File, _ dpath: String, task: String, type: H5TypeClass,
                                   shape: [Int], attributes: [String: H5AttributeValue]) throws -> [String] {
        guard shape.count >= 3, shape[0] > 0 else { return [] }
        let n = shape[0]
        let perSample = shape.dropFirst().reduce(1, *)
        let sampleCount = Array(shape.dropFirst())
        let start = [Int](repeating: 0, count: shape.count)
        func slab<T: H5Scalar>(_ i: Int, _ buffer: inout [T]) throws {
            var s = start
            s[0] = i
            try buffer.withUnsafeMutableBufferPointer {
                try file.readSlab(dpath, start: s, count: [1] + sampleCount, into: $0.baseAddress!)
            }
        }

        switch (task, type) {
        case ("images", .uint8) where shape.count == 4 && shape[3] == 3:
            var buf = [UInt8](repeating: 0, count: perSample)
            var stats = ImageStats()
            for i in 0..<n {
                try slab(i, &buf)
                buf.withUnsafeBufferPointer { stats.add($0.baseAddress!, count: perSample / 3) }
            }
            let (mean, std) = stats.meanStd()
            return ["pixels in [0,1]: mean " + mean.map { String(format: "%.4f", $0) }.joined(separator: " ")
                    + ", std " + std.map { String(format: "%.4f", $0) }.joined(separator: " ")]

        case ("seg", .int16), ("parts", .int16):
            var buf = [Int16](repeating: 0, count: perSample)
            var histogram = [Int](repeating: 0, count: 1 << 16)
            for i in 0..<n {
                try slab(i, &buf)
                for v in buf { histogram[Int(v) + 32768] += 1 }
            }
            let total = n * perSample
            let numClasses = attributes["num_classes"]?.number.map { Int($0) }
            let names = attributes["class_names"]?.stringList ?? []
            var lines: [String] = []
            var parts: [String] = []
            var outOfRange = 0
            for v in -32768..<32768 where histogram[v + 32768] > 0 {
                let k = histogram[v + 32768]
                if v == -1 { continue }
                if v < -1 || (numClasses.map { v >= $0 } ?? false) { outOfRange += k; continue }
                let name = v < names.count ? " " + names[v] : ""
                parts.append("\(v)\(name) \(percent(k, total))")
            }
            lines.append("classes: " + parts.joined(separator: ", "))
            var present = 0
            if let numClasses { present = (0..<numClasses).filter { histogram[$0 + 32768] > 0 }.count }
            lines.append("ignore (-1) \(percent(histogram[32767], total))"
                         + (numClasses.map { ", \(present)/\($0) classes present" } ?? ", num_classes attribute missing")
                         + (outOfRange > 0 ? ", OUT OF RANGE: \(outOfRange) pixels" : ""))
            return lines

        case ("depth", .float32):
            var buf = [Float](repeating: 0, count: perSample)
            var lo = Float.infinity, hi = -Float.infinity, sum = 0.0
            var valid = 0, invalid = 0, bad = 0
            for i in 0..<n {
                try slab(i, &buf)
                for v in buf {
                    if !v.isFinite || v < 0 { bad += 1 } else if v == 0 { invalid += 1 } else {
                        valid += 1; sum += Double(v); lo = min(lo, v); hi = max(hi, v)
                    }
                }
            }
            let total = n * perSample
            let units = attributes["units"]?.text ?? ""
            var line = valid > 0
                ? String(format: "valid: min %.4g max %.4g mean %.4g %@", lo, hi, sum / Double(valid), units)
                : "valid: none"
            line += ", invalid (0) \(percent(invalid, total))"
            if bad > 0 { line += ", NON-FINITE OR NEGATIVE: \(bad) pixels" }
            return [line]

        case ("normals", .float32) where shape.count == 4 && shape[3] == 3:
            var buf = [Float](repeating: 0, count: perSample)
            var lo = Float.infinity, hi = -Float.infinity
            var invalid = 0, bad = 0
            for i in 0..<n {
                try slab(i, &buf)
                for p in 0..<(perSample / 3) {
                    let x = buf[3 * p], y = buf[3 * p + 1], z = buf[3 * p + 2]
                    if !(x.isFinite && y.isFinite && z.isFinite) { bad += 1; continue }
                    if x == 0 && y == 0 && z == 0 { invalid += 1; continue }
                    let norm = (x * x + y * y + z * z).squareRoot()
                    lo = min(lo, norm); hi = max(hi, norm)
                }
            }
            let total = n * perSample / 3
            var line = lo <= hi ? String(format: "norm over valid pixels: [%.4f, %.4f]", lo, hi) : "no valid normals"
            line += ", invalid (all-zero) \(percent(invalid, total))"
            if bad > 0 { line += ", NON-FINITE: \(bad) pixels" }
            return [line]

        case ("edges", .uint8), ("saliency", .uint8):
            var buf = [UInt8](repeating: 0, count: perSample)
            var counts = [Int](repeating: 0, count: 256)
            for i in 0..<n {
                try slab(i, &buf)
                for v in buf { counts[Int(v)] += 1 }
            }
            let total = n * perSample
            let other = total - counts[0] - counts[1] - counts[255]
            return ["positive (1) \(percent(counts[1], total)), negative (0) \(percent(counts[0], total)), ignore (255) \(percent(counts[255], total))"
                    + (other > 0 ? ", OTHER VALUES: \(other) pixels" : "")]
        default:
            return []
        }
    }
}
