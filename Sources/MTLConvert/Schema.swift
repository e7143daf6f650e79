import Foundation
import MTLCore

/// One converted sample: the arrays of every task the dataset has, row-major H×W[×C].
struct Sample {
    var id: String = ""
    var image: [UInt8] = []          // H·W·3 RGB
    var seg: [Int16]? = nil          // −1 = ignore
    var depth: [Float]? = nil        // 0 = invalid
    var normals: [Float]? = nil      // H·W·3, all-zero = invalid
    var parts: [Int16]? = nil        // −1 = ignore
    var edges: [UInt8]? = nil        // 255 = ignore
    var saliency: [UInt8]? = nil     // 255 = ignore
    var size: (Int32, Int32)? = nil  // original (h, w) before padding
    var has: [String: UInt8] = [:]   // has_<task>
}

enum ElementType { case u8, i16, f32 }

/// A per-sample dataset of a split: `name` (N, sampleShape...) with its attributes.
struct DatasetSpec {
    var name: String
    var type: ElementType
    var sampleShape: [Int]
    var deflate: Int?
    var attrs: [(String, Any)]
}

/// Writes the mtdp-hdf5 schema (DATASETS.md §4) to `<out>.tmp`, sample by sample, then renames it.
/// Every per-sample dataset is chunked one sample per chunk and hashed (SHA-256 of its uncompressed
/// C-order little-endian bytes) as it is written, so memory stays bounded by one block of samples.
final class SchemaWriter {
    let out: String
    let tmp: String
    let file: H5File
    private var meta: [String: Any] = [:]
    private var rootAttrs: [(String, Any)]
    private var hashers: [String: SHA256] = [:]
    private var specs: [DatasetSpec] = []
    private var split = ""

    init(out: String, rootAttrs: [(String, Any)]) throws {
        self.out = out
        self.tmp = out + ".tmp"
        let dir = (out as NSString).deletingLastPathComponent
        if !dir.isEmpty, !FileManager.default.fileExists(atPath: dir) {
            throw MTLError("\(out): output directory \(dir) does not exist")
        }
        try? FileManager.default.removeItem(atPath: tmp)
        file = try H5File.create(tmp)
        self.rootAttrs = rootAttrs
        for (k, v) in rootAttrs { try setAttr("/", k, v); meta[k] = v }
    }

    func setAttr(_ path: String, _ name: String, _ v: Any) throws {
        switch v {
        case let s as String: try file.setAttribute(path, name, s)
        case let i as Int: try file.setAttribute(path, name, i)
        case let d as Double: try file.setAttribute(path, name, d)
        case let a as [Double]: try file.setAttribute(path, name, a)
        case let a as [Int]: try file.setAttribute(path, name, a.map { Int64($0) })
        case let a as [String]:  // string lists are stored as one JSON string (readable without vlen arrays)
            let data = try JSONSerialization.data(withJSONObject: a)
            try file.setAttribute(path, name, String(decoding: data, as: UTF8.self))
        default: fatalError("attribute type \(type(of: v))")
        }
    }

    func beginSplit(_ name: String, count: Int, height: Int, width: Int, splitSource: String, datasets: [DatasetSpec]) throws {
        split = name
        specs = datasets
        try file.createGroup("/" + name)
        var gm: [String: Any] = ["num_samples": count, "height": height, "width": width, "split_source": splitSource]
        for (k, v) in gm { try setAttr("/" + name, k, v) }
        for s in datasets {
            let path = "/\(name)/\(s.name)"
            let shape = [count] + s.sampleShape
            let chunks = [1] + s.sampleShape
            switch s.type {
            case .u8: try file.createDataset(path, type: UInt8.self, shape: shape, chunks: chunks, deflate: s.deflate)
            case .i16: try file.createDataset(path, type: Int16.self, shape: shape, chunks: chunks, deflate: s.deflate)
            case .f32: try file.createDataset(path, type: Float.self, shape: shape, chunks: chunks, deflate: s.deflate)
            }
            var dm: [String: Any] = [:]
            for (k, v) in s.attrs { try setAttr(path, k, v); dm[k] = v }
            gm[s.name] = dm
            hashers[s.name] = SHA256()
        }
        meta[name] = gm
    }

    func put<T: H5Scalar>(_ dataset: String, index: Int, _ values: [T]) throws {
        guard let s = specs.first(where: { $0.name == dataset }) else { fatalError("no dataset \(dataset)") }
        precondition(values.count == s.sampleShape.reduce(1, *), "\(dataset): \(values.count) values for \(s.sampleShape)")
        try values.withUnsafeBufferPointer { p in
            try file.writeSlab("/\(split)/\(dataset)", start: [index] + s.sampleShape.map { _ in 0 },
                               count: [1] + s.sampleShape, from: p.baseAddress!)
            hashers[dataset]!.update(UnsafeRawBufferPointer(p))
        }
    }

    /// Writes the sample's arrays at `index`.
    func put(_ s: Sample, index: Int) throws {
        try put("images", index: index, s.image)
        if let v = s.seg { try put("seg", index: index, v) }
        if let v = s.depth { try put("depth", index: index, v) }
        if let v = s.normals { try put("normals", index: index, v) }
        if let v = s.parts { try put("parts", index: index, v) }
        if let v = s.edges { try put("edges", index: index, v) }
        if let v = s.saliency { try put("saliency", index: index, v) }
    }

    /// Small whole datasets (ids, sizes, has_*), written once per split.
    func putWhole<T: H5Scalar>(_ dataset: String, _ values: [T], shape: [Int], attrs: [(String, Any)] = []) throws {
        let path = "/\(split)/\(dataset)"
        try file.write(path, values, shape: shape)
        var h = SHA256(); values.withUnsafeBytes { h.update($0) }
        try file.setAttribute(path, "sha256", h.finalizeHex())
        for (k, v) in attrs { try setAttr(path, k, v) }
    }

    func endSplit(ids: [String]) throws {
        try file.writeStrings("/\(split)/ids", ids)
        var gm = meta[split] as! [String: Any]
        for s in specs {
            let hex = hashers[s.name]!.finalizeHex()
            try file.setAttribute("/\(split)/\(s.name)", "sha256", hex)
            var dm = gm[s.name] as! [String: Any]
            dm["sha256"] = hex
            gm[s.name] = dm
        }
        meta[split] = gm
        hashers = [:]
    }

    /// meta_json, close, rename over `out` (atomic on one filesystem).
    func finish() throws {
        let data = try JSONSerialization.data(withJSONObject: meta, options: [.sortedKeys])
        try file.setAttribute("/", "meta_json", String(decoding: data, as: UTF8.self))
        file.flush()
        file.close()
        let fd = open(tmp, O_RDONLY)
        if fd >= 0 { fsync(fd); close(fd) }
        if rename(tmp, out) != 0 { throw MTLError("\(out): cannot rename \(tmp) to it (errno \(errno))") }
    }

    func abort() {
        file.close()
        try? FileManager.default.removeItem(atPath: tmp)
    }
}

/// Converts one split: `fetch(i)` runs serially (HDF5 is not thread-safe), `build` runs on all cores
/// for a block of samples at a time, then the block is written in order. Memory: one block.
func convertSplit<Raw>(_ w: SchemaWriter, split: String, count: Int, height: Int, width: Int, splitSource: String,
                       datasets: [DatasetSpec], progress: (String) -> Void,
                       fetch: (Int) throws -> Raw, build: @escaping (Raw, Int) throws -> Sample) throws -> (ids: [String], seconds: Double) {
    try w.beginSplit(split, count: count, height: height, width: width, splitSource: splitSource, datasets: datasets)
    let workers = max(1, ProcessInfo.processInfo.activeProcessorCount)
    let block = 2 * workers
    var ids: [String] = []
    var sizes: [Int32] = []
    var has: [String: [UInt8]] = [:]
    let t0 = Date()
    var lastReport = 0
    let every = max(1, min(100, count / 10))
    for start in stride(from: 0, to: count, by: block) {
        let n = min(block, count - start)
        var raws: [Raw] = []
        for i in 0..<n { raws.append(try fetch(start + i)) }
        var results = [Result<Sample, Error>?](repeating: nil, count: n)
        results.withUnsafeMutableBufferPointer { res in
            let r = res
            DispatchQueue.concurrentPerform(iterations: n) { i in
                r[i] = Result { try build(raws[i], start + i) }
            }
        }
        for i in 0..<n {
            let s = try results[i]!.get()
            try w.put(s, index: start + i)
            ids.append(s.id)
            if let sz = s.size { sizes += [sz.0, sz.1] }
            for (k, v) in s.has { has[k, default: []].append(v) }
        }
        let done = start + n
        if done - lastReport >= every || done == count {
            lastReport = done
            let dt = Date().timeIntervalSince(t0)
            progress(String(format: "%@: %d/%d samples (%.1f samples/s)", split, done, count, Double(done) / max(dt, 1e-9)))
        }
    }
    if !sizes.isEmpty {
        try w.putWhole("sizes", sizes, shape: [count, 2], attrs: [("description", "original (height, width) before padding")])
    }
    for (k, v) in has.sorted(by: { $0.key < $1.key }) {
        try w.putWhole("has_\(k)", v, shape: [count], attrs: [("description", "1 if the sample has labels for \(k)")])
    }
    try w.endSplit(ids: ids)
    return (ids, Date().timeIntervalSince(t0))
}

func isoNow() -> String {
    let f = ISO8601DateFormatter()
    f.timeZone = TimeZone(identifier: "UTC")
    return f.string(from: Date())
}

// MARK: - resampling (half-pixel centres, like cv2.resize / PIL)

/// Bilinear resize of interleaved 8-bit channels.
func resizeBilinearU8(_ src: [UInt8], w: Int, h: Int, c: Int, toW W: Int, toH H: Int) -> [UInt8] {
    if w == W && h == H { return src }
    var out = [UInt8](repeating: 0, count: W * H * c)
    let sx = Double(w) / Double(W), sy = Double(h) / Double(H)
    for y in 0..<H {
        let fy = max(0, (Double(y) + 0.5) * sy - 0.5)
        let y0 = min(Int(fy), h - 1), y1 = min(y0 + 1, h - 1), ay = fy - Double(y0)
        for x in 0..<W {
            let fx = max(0, (Double(x) + 0.5) * sx - 0.5)
            let x0 = min(Int(fx), w - 1), x1 = min(x0 + 1, w - 1), ax = fx - Double(x0)
            for k in 0..<c {
                let v = (1 - ay) * ((1 - ax) * Double(src[(y0 * w + x0) * c + k]) + ax * Double(src[(y0 * w + x1) * c + k]))
                    + ay * ((1 - ax) * Double(src[(y1 * w + x0) * c + k]) + ax * Double(src[(y1 * w + x1) * c + k]))
                out[(y * W + x) * c + k] = UInt8(min(255, max(0, v.rounded())))
            }
        }
    }
    return out
}

/// Nearest-neighbour resize (labels, depth): source pixel floor((x + 0.5)·w/W).
func resizeNearest<T>(_ src: [T], w: Int, h: Int, c: Int = 1, toW W: Int, toH H: Int) -> [T] {
    if w == W && h == H { return src }
    var out = [T](); out.reserveCapacity(W * H * c)
    for y in 0..<H {
        let sy = min(h - 1, (2 * y + 1) * h / (2 * H))
        for x in 0..<W {
            let sx = min(w - 1, (2 * x + 1) * w / (2 * W))
            for k in 0..<c { out.append(src[(sy * w + sx) * c + k]) }
        }
    }
    return out
}

/// Bilinear resize of a normal map, mask-aware: an output pixel is invalid (0) if any of its
/// four source taps is invalid; valid results are renormalised to unit length.
func resizeNormals(_ src: [Float], w: Int, h: Int, toW W: Int, toH H: Int) -> [Float] {
    if w == W && h == H { return src }
    var out = [Float](repeating: 0, count: W * H * 3)
    let sx = Float(w) / Float(W), sy = Float(h) / Float(H)
    func valid(_ i: Int) -> Bool { src[3 * i] != 0 || src[3 * i + 1] != 0 || src[3 * i + 2] != 0 }
    for y in 0..<H {
        let fy = max(0, (Float(y) + 0.5) * sy - 0.5)
        let y0 = min(Int(fy), h - 1), y1 = min(y0 + 1, h - 1), ay = fy - Float(y0)
        for x in 0..<W {
            let fx = max(0, (Float(x) + 0.5) * sx - 0.5)
            let x0 = min(Int(fx), w - 1), x1 = min(x0 + 1, w - 1), ax = fx - Float(x0)
            let i00 = y0 * w + x0, i01 = y0 * w + x1, i10 = y1 * w + x0, i11 = y1 * w + x1
            guard valid(i00), valid(i01), valid(i10), valid(i11) else { continue }
            var n = [Float](repeating: 0, count: 3)
            for k in 0..<3 {
                n[k] = (1 - ay) * ((1 - ax) * src[3 * i00 + k] + ax * src[3 * i01 + k]) + ay * ((1 - ax) * src[3 * i10 + k] + ax * src[3 * i11 + k])
            }
            let norm = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).squareRoot()
            if norm > 1e-6 { for k in 0..<3 { out[(y * W + x) * 3 + k] = n[k] / norm } }
        }
    }
    return out
}

/// Renormalises non-zero vectors to unit length; vectors shorter than `minNorm` become 0 (invalid).
func renormalize(_ n: inout [Float], minNorm: Float = 1e-3) {
    for i in 0..<(n.count / 3) {
        let l = (n[3 * i] * n[3 * i] + n[3 * i + 1] * n[3 * i + 1] + n[3 * i + 2] * n[3 * i + 2]).squareRoot()
        if l < minNorm { n[3 * i] = 0; n[3 * i + 1] = 0; n[3 * i + 2] = 0 } else { for k in 0..<3 { n[3 * i + k] /= l } }
    }
}

let imagenetMean: [Double] = [0.485, 0.456, 0.406]
let imagenetStd: [Double] = [0.229, 0.224, 0.225]
