import Foundation
import MTLCore

/// One batch in memory, in the layout the network and losses consume (all Float tensors, NCHW):
/// images [B,3,H,W] normalised with the file's mean/std ((x/255 - mean)/std; identity if absent);
/// targets["seg"], ["parts"]: [B,H,W] class index as Float, -1 = ignore;  ["depth"]: [B,1,H,W], 0 = invalid;
/// ["normals"]: [B,3,H,W], zero vector = invalid;  ["edges"], ["saliency"]: [B,1,H,W] in {0,1}, -1 = ignore (from 255).
/// Reuse one Batch step after step: `MTDataset.load` resizes its tensors in place.
public final class Batch {
    public let images: Tensor
    public var targets: [String: Tensor]
    /// Dataset indices of the samples, in batch order.
    public var indices: [Int]

    public init() {
        images = Tensor([0, 3, 0, 0])
        targets = [:]
        indices = []
    }
}

/// A split of a dataset file in the unified schema (DATASETS.md §4), opened read-only.
/// Everything is validated in `init`, so a bad file fails before any training step.
/// Not thread-safe: one MTDataset per reading thread (libhdf5 serialises calls anyway).
public final class MTDataset {
    public let path: String
    public let split: String
    public let tasks: [String]
    public let count: Int
    public let height: Int
    public let width: Int
    /// Root attributes as strings (format, format_version, dataset, variant, tasks, meta_json, ...).
    public var attributes: [String: String]

    private let file: H5File
    private let layouts: [TaskLayout]
    private var classCounts: [String: Int] = [:]
    /// Per-sample label availability (`has_<task>`, uint8 (N,)): 0 means the sample has no
    /// label for the task, and the loader emits the task's ignore/invalid value instead.
    private var hasLabel: [String: [UInt8]] = [:]
    /// images = x * imageScale[c] + imageBias[c] with x the uint8 value: (x/255 - mean)/std folded.
    private var imageScale: [Float] = [1 / 255, 1 / 255, 1 / 255]
    private var imageBias: [Float] = [0, 0, 0]
    public private(set) var imageMean: [Float] = [0, 0, 0]
    public private(set) var imageStd: [Float] = [1, 1, 1]

    /// In-memory copies of the split's datasets (key: dataset path), filled by `init(...cache: true)`.
    private var memory: [String: CachedDataset] = [:]
    /// True when the whole split was read into memory (`load` then never touches the file).
    public var isCached: Bool { !memory.isEmpty }

    // Per-sample read buffers, reused across loads (no allocation after the first batch).
    private var bytes: [UInt8] = []
    private var shorts: [Int16] = []
    private var floats: [Float] = []

    public init(path: String, split: String, tasks: [String]) throws {
        self.path = path
        self.split = split
        self.tasks = tasks
        let file = try H5File.open(path, readOnly: true)
        self.file = file
        var ok = false
        defer { if !ok { file.close() } }

        // Root: format and version come first, so that a foreign HDF5 file says so plainly.
        let raw = try H5RawReader(path: path)
        let rootAttributes = raw.attributes("/")
        attributes = rootAttributes.mapValues { $0.text }
        guard let format = rootAttributes["format"] else {
            throw MTLError("\(path): root attribute 'format' missing: expected \"\(schemaFormat)\" "
                           + "(not a dataset in mtl's schema; write one with `mtl convert` or `mtl synth`)")
        }
        guard format.text == schemaFormat else {
            throw MTLError("\(path): root attribute 'format': expected \"\(schemaFormat)\", found \"\(format.text)\"")
        }
        guard let version = rootAttributes["format_version"]?.number else {
            throw MTLError("\(path): root attribute 'format_version' missing or not a number: expected \(schemaVersion)")
        }
        guard version == Double(schemaVersion) else {
            throw MTLError("\(path): unsupported format_version: expected \(schemaVersion), found \(formatNumber(version))")
        }

        // Split group and its sample count.
        let group = "/" + split
        guard file.isGroup(group) else {
            let splits = ((try? file.children("/")) ?? []).filter { file.isGroup("/" + $0) }
            throw MTLError("\(path): split group \(group) not found: expected one of [\(splits.joined(separator: ", "))]")
        }
        let splitAttributes = raw.attributes(group)
        guard let n = splitAttributes["num_samples"]?.number else {
            throw MTLError("\(path): \(group): attribute 'num_samples' missing: expected the number of samples")
        }
        guard n > 0, n == n.rounded() else {
            throw MTLError("\(path): \(group): num_samples: expected a positive integer, found \(formatNumber(n))")
        }
        count = Int(n)

        // Images fix H and W; the split's height/width attributes, when present, must agree.
        let imagesPath = group + "/images"
        guard file.exists(imagesPath) else {
            throw MTLError("\(path): missing dataset \(imagesPath): expected uint8 (N,H,W,3)")
        }
        let imageShape = try file.shape(imagesPath)
        let imageType = try file.typeClass(imagesPath)
        guard imageType == .uint8, imageShape.count == 4, imageShape[3] == 3 else {
            throw MTLError("\(path): \(imagesPath): expected uint8 (N,H,W,3), found \(imageType.rawValue) \(shapeString(imageShape))")
        }
        guard imageShape[0] == count else {
            throw MTLError("\(path): \(imagesPath): dim 0 must equal num_samples: expected \(count), found \(imageShape[0])")
        }
        guard imageShape[1] > 0, imageShape[2] > 0 else {
            throw MTLError("\(path): \(imagesPath): expected positive H and W, found \(shapeString(imageShape))")
        }
        height = imageShape[1]
        width = imageShape[2]
        for (key, value) in [("height", height), ("width", width)] {
            if let attr = splitAttributes[key]?.number, Int(attr) != value {
                throw MTLError("\(path): \(group)@\(key): expected \(value) (from \(imagesPath)), found \(formatNumber(attr))")
            }
        }
        let imageAttributes = raw.attributes(imagesPath)
        if let mean = imageAttributes["mean"]?.numbers, let std = imageAttributes["std"]?.numbers {
            guard mean.count == 3, std.count == 3, std.allSatisfy({ $0 > 0 && $0.isFinite }), mean.allSatisfy({ $0.isFinite }) else {
                throw MTLError("\(path): \(imagesPath)@mean/std: expected 3 finite values each (std > 0), "
                               + "found mean \(H5AttributeValue.numbers(mean).text) std \(H5AttributeValue.numbers(std).text)")
            }
            imageMean = mean.map { Float($0) }
            imageStd = std.map { Float($0) }
        }
        for c in 0..<3 {
            imageScale[c] = 1 / (255 * imageStd[c])
            imageBias[c] = -imageMean[c] / imageStd[c]
        }

        // Tasks: each requested one must exist with the schema's dtype and shape.
        var layouts: [TaskLayout] = []
        for task in tasks {
            guard let layout = TaskLayout.of(task) else {
                throw MTLError("\(path): unknown task '\(task)': expected one of \(knownTasks.joined(separator: ", "))")
            }
            guard !layouts.contains(where: { $0.name == task }) else {
                throw MTLError("\(path): task '\(task)' requested twice")
            }
            let datasetPath = group + "/" + task
            let expected = layout.fileChannels > 0 ? [count, height, width, layout.fileChannels] : [count, height, width]
            guard file.exists(datasetPath) else {
                throw MTLError("\(path): missing dataset \(datasetPath) for task '\(task)': expected "
                               + "\(layout.fileType.rawValue) \(shapeString(expected))")
            }
            let shape = try file.shape(datasetPath)
            let type = try file.typeClass(datasetPath)
            guard type == layout.fileType, shape == expected else {
                let n = count
                let dim0 = shape.first.map { $0 != n ? " (dim 0 must equal num_samples = \(n))" : "" } ?? ""
                throw MTLError("\(path): \(datasetPath): expected \(layout.fileType.rawValue) \(shapeString(expected)) "
                               + "\(layout.fileShapeDescription), found \(type.rawValue) \(shapeString(shape))\(dim0)")
            }
            if layout.isClassMap {
                guard let k = raw.attributes(datasetPath)["num_classes"]?.number, k >= 1, k == k.rounded() else {
                    throw MTLError("\(path): \(datasetPath): attribute 'num_classes' missing or not a positive integer "
                                   + "(needed to check labels and size the head)")
                }
                guard k <= Double(Int16.max) else {
                    throw MTLError("\(path): \(datasetPath)@num_classes: expected <= \(Int16.max), found \(formatNumber(k))")
                }
                classCounts[task] = Int(k)
            }
            let hasPath = group + "/has_" + task
            if file.exists(hasPath) {
                let hasShape = try file.shape(hasPath)
                guard hasShape == [count] else {
                    throw MTLError("\(path): \(hasPath): expected uint8 (\(count),), found \(shapeString(hasShape))")
                }
                hasLabel[task] = try file.read(hasPath, as: UInt8.self)
            }
            layouts.append(layout)
        }
        self.layouts = layouts
        ok = true
    }

    deinit { file.close() }

    /// Opens the split and, with `cache: true`, reads all of it (images and the requested tasks)
    /// into memory once; `load` then copies from memory and decodes exactly as from disk
    /// (same checks, same values). Refuses with a one-line error when the split needs more than
    /// `cacheLimitBytes` (default 4 GiB), suggesting `cache: false`.
    public convenience init(path: String, split: String, tasks: [String], cache: Bool,
                            cacheLimitBytes: Int = 4 << 30) throws {
        try self.init(path: path, split: split, tasks: tasks)
        if cache { try fillCache(limit: cacheLimitBytes) }
    }

    /// Bytes the in-memory cache of this split takes (images + requested tasks, as stored).
    public var cacheBytes: Int {
        let hw = height * width
        var perSample = hw * 3
        for layout in layouts { perSample += hw * max(1, layout.fileChannels) * layout.fileType.byteSize }
        return perSample * count
    }

    private func fillCache(limit: Int) throws {
        let needed = cacheBytes
        guard needed <= limit else {
            throw MTLError(String(format: "%@: /%@: in-memory cache needs %.2f GiB, above the limit of %.2f GiB: "
                                  + "set cache: false (data.cache) to read samples from disk",
                                  path, split, Double(needed) / Double(1 << 30), Double(limit) / Double(1 << 30)))
        }
        let group = "/" + split
        var entries: [(String, H5TypeClass, [Int])] = [(group + "/images", .uint8, [height, width, 3])]
        for layout in layouts {
            entries.append((group + "/" + layout.name, layout.fileType,
                            layout.fileChannels > 0 ? [height, width, layout.fileChannels] : [height, width]))
        }
        for (datasetPath, type, sampleShape) in entries {
            let perSampleBytes = sampleShape.reduce(1, *) * type.byteSize
            let store = CachedDataset(bytesPerSample: perSampleBytes, count: count)
            // Read in blocks of samples so that libhdf5's temporary buffers stay small.
            let block = max(1, (64 << 20) / max(1, perSampleBytes))
            var start = 0
            while start < count {
                let n = min(block, count - start)
                let dest = store.base + start * perSampleBytes
                let slabStart = [start] + sampleShape.map { _ in 0 }
                let slabCount = [n] + sampleShape
                switch type {
                case .uint8: try file.readSlab(datasetPath, start: slabStart, count: slabCount, into: dest.assumingMemoryBound(to: UInt8.self))
                case .int16: try file.readSlab(datasetPath, start: slabStart, count: slabCount, into: dest.assumingMemoryBound(to: Int16.self))
                case .float32: try file.readSlab(datasetPath, start: slabStart, count: slabCount, into: dest.assumingMemoryBound(to: Float.self))
                default: throw MTLError("\(path): \(datasetPath): cannot cache type \(type.rawValue)")
                }
                start += n
            }
            memory[datasetPath] = store
        }
    }

    /// One sample of a dataset (shape `sampleShape` after the sample axis), from memory when cached.
    private func readSample<T: H5Scalar>(_ datasetPath: String, index: Int, sampleShape: [Int],
                                         into dest: UnsafeMutablePointer<T>) throws {
        if let store = memory[datasetPath] {
            let n = store.bytesPerSample
            UnsafeMutableRawPointer(dest).copyMemory(from: store.base + index * n, byteCount: n)
            return
        }
        try file.readSlab(datasetPath, start: [index] + sampleShape.map { _ in 0 }, count: [1] + sampleShape, into: dest)
    }

    /// `num_classes` of a class-map task (seg, parts) that was requested; nil otherwise.
    public func numClasses(_ task: String) -> Int? { classCounts[task] }

    /// Reads samples `indices` (any order, repeats allowed) into `batch`, resizing its tensors
    /// in place. Rejects out-of-range labels and non-finite depth/normals with one line naming
    /// the file, dataset and sample.
    public func load(_ indices: [Int], into batch: Batch) throws {
        let b = indices.count, hw = height * width
        for i in indices where i < 0 || i >= count {
            throw MTLError("\(path): /\(split): sample index \(i) out of range 0..<\(count)")
        }
        batch.indices = indices
        batch.images.resize([b, 3, height, width])
        if bytes.count < hw * 3 { bytes = [UInt8](repeating: 0, count: hw * 3) }
        let group = "/" + split

        // Images: HWC uint8 -> CHW float with the normalisation folded into one multiply-add.
        let imagesPath = group + "/images"
        for (slot, index) in indices.enumerated() {
            try bytes.withUnsafeMutableBufferPointer { src in
                try readSample(imagesPath, index: index, sampleShape: [height, width, 3], into: src.baseAddress!)
                let out = batch.images.data + slot * 3 * hw
                for c in 0..<3 {
                    let scale = imageScale[c], bias = imageBias[c]
                    let plane = out + c * hw
                    for p in 0..<hw { plane[p] = Float(src[p * 3 + c]) * scale + bias }
                }
            }
        }

        for layout in layouts {
            let task = layout.name
            let target: Tensor
            if let t = batch.targets[task] { target = t } else {
                target = Tensor([0])
                batch.targets[task] = target
            }
            target.resize(layout.targetShape(batch: b, height: height, width: width))
            let datasetPath = group + "/" + task
            let perSample = hw * max(1, layout.targetChannels)
            for (slot, index) in indices.enumerated() {
                let out = target.data + slot * perSample
                if let has = hasLabel[task], has[index] == 0 {
                    // No label for this sample: ignore for classes/binary maps, invalid (0) for regression.
                    out.update(repeating: layout.isClassMap || layout.fileType == .uint8 ? -1 : 0, count: perSample)
                    continue
                }
                switch layout.kind.family {
                case .classMap:
                    try readClassMap(datasetPath, index: index, numClasses: classCounts[task]!, into: out)
                case .depth:
                    try readDepth(datasetPath, index: index, into: out)
                case .normals:
                    try readNormals(datasetPath, index: index, into: out)
                case .binary:
                    try readBinary(datasetPath, index: index, into: out)
                }
            }
        }
    }

    private func readClassMap(_ datasetPath: String, index: Int, numClasses: Int,
                              into out: UnsafeMutablePointer<Float>) throws {
        let hw = height * width
        if shorts.count < hw { shorts = [Int16](repeating: 0, count: hw) }
        try shorts.withUnsafeMutableBufferPointer { src in
            try readSample(datasetPath, index: index, sampleShape: [height, width], into: src.baseAddress!)
            let limit = Int16(numClasses)
            var bad: Int16? = nil
            for p in 0..<hw {
                let v = src[p]
                if v < -1 || v >= limit { bad = v }
                out[p] = Float(v)
            }
            if let bad {
                throw MTLError("\(path): \(datasetPath) sample \(index): label \(bad) out of range "
                               + "(expected -1 = ignore or 0..<\(numClasses), num_classes = \(numClasses))")
            }
        }
    }

    private func readDepth(_ datasetPath: String, index: Int, into out: UnsafeMutablePointer<Float>) throws {
        let hw = height * width
        // float32 on disk: read straight into the target.
        try readSample(datasetPath, index: index, sampleShape: [height, width], into: out)
        for p in 0..<hw where !(out[p].isFinite && out[p] >= 0) {
            throw MTLError("\(path): \(datasetPath) sample \(index): depth \(out[p]) at pixel (\(p / width), \(p % width)): "
                           + "expected finite values >= 0 (0 = invalid)")
        }
    }

    private func readNormals(_ datasetPath: String, index: Int, into out: UnsafeMutablePointer<Float>) throws {
        let hw = height * width
        if floats.count < hw * 3 { floats = [Float](repeating: 0, count: hw * 3) }
        try floats.withUnsafeMutableBufferPointer { src in
            try readSample(datasetPath, index: index, sampleShape: [height, width, 3], into: src.baseAddress!)
            for p in 0..<hw {
                let x = src[p * 3], y = src[p * 3 + 1], z = src[p * 3 + 2]
                if !(x.isFinite && y.isFinite && z.isFinite) {
                    throw MTLError("\(path): \(datasetPath) sample \(index): normal (\(x), \(y), \(z)) at pixel "
                                   + "(\(p / width), \(p % width)): expected finite values (all-zero = invalid)")
                }
                out[p] = x
                out[hw + p] = y
                out[2 * hw + p] = z
            }
        }
    }

    private func readBinary(_ datasetPath: String, index: Int, into out: UnsafeMutablePointer<Float>) throws {
        let hw = height * width
        try bytes.withUnsafeMutableBufferPointer { src in
            try readSample(datasetPath, index: index, sampleShape: [height, width], into: src.baseAddress!)
            for p in 0..<hw {
                let v = src[p]
                if v == 255 { out[p] = -1; continue }
                if v > 1 {
                    throw MTLError("\(path): \(datasetPath) sample \(index): value \(v) at pixel (\(p / width), \(p % width)): "
                                   + "expected 0, 1 or 255 = ignore")
                }
                out[p] = Float(v)
            }
        }
    }
}

/// A whole dataset's stored bytes (C order, the file's element type), owned and freed here.
final class CachedDataset {
    let base: UnsafeMutableRawPointer
    let bytesPerSample: Int

    init(bytesPerSample: Int, count: Int) {
        self.bytesPerSample = bytesPerSample
        base = .allocate(byteCount: max(1, bytesPerSample * count), alignment: 64)
    }

    deinit { base.deallocate() }
}

extension H5TypeClass {
    /// Bytes per element of the numeric types the schema uses.
    var byteSize: Int {
        switch self {
        case .int8, .uint8: return 1
        case .int16, .uint16: return 2
        case .float32, .int32, .uint32: return 4
        default: return 8
        }
    }
}
