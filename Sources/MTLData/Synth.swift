import Foundation
import MTLCore

/// `mtl synth`: synthetic scenes whose tasks are correlated like real indoor scenes.
public struct SynthOptions {
    public var samples = 64, valSamples = 16, height = 64, width = 96
    public var seed: UInt64 = 0
    public var tasks = ["seg", "depth", "normals"]
    public var numClasses = 6
    /// `--noise-task`: noisy pseudo-auxiliary tasks (SynthNoise.swift).
    public var noiseTasks: [NoiseTaskSpec] = []
    public init() {}

    /// The tasks the file holds: `tasks`, then the noise targets not among them.
    public var fileTasks: [String] { tasks + noiseTasks.map { $0.target }.filter { !tasks.contains($0) } }
}

/// Writes a dataset file in the unified schema (DATASETS.md §4) of rendered rooms: a pinhole
/// camera looks into a box-shaped room (floor, walls, ceiling) with 1–4 boxes standing on the
/// floor. Depth is the exact ray–plane intersection (z-depth, metres, within [0.64, 8.4]);
/// normals are the surfaces' unit normals in the camera frame (x right, y down, z forward),
/// pointing out of the surface towards the camera; seg is the class of the surface hit
/// (0 floor, 1 wall, 2 ceiling, 3..<numClasses objects); parts the face of an object
/// (1 top, 2/3 sides, 0 room); edges where the surface hit changes; saliency the objects.
/// RGB = class colour × class pattern (in surface metres, so its scale shrinks with depth) ×
/// Lambertian shading from a random light × depth fall-off, + white balance and sensor noise.
///
/// Sample i of a split is rendered from Philox(seed, .synth, key) with key = sampleId << 32
/// (sampleId = i for train, 2^31 + i for val), so the output depends only on the arguments.
/// Images' `mean`/`std` attributes are the per-channel statistics of the TRAIN split's
/// pixels in [0,1] (written on both splits' images).
public enum Synth {
    public static func write(to path: String, options o: SynthOptions, progress: ((String) -> Void)? = nil) throws {
        try validate(o)
        let tmp = path + ".tmp"
        let splits = o.valSamples > 0 ? [("train", o.samples), ("val", o.valSamples)] : [("train", o.samples)]
        let file: H5File
        do {
            try H5RawReader.createFile(tmp, groups: splits.map { "/" + $0.0 }, strings: splits.map { name, n in
                ("/\(name)/ids", (0..<n).map { String(format: "synth-%@-%06d", name, $0) })
            })
            file = try H5File.open(tmp, readOnly: false)
        } catch {
            try? FileManager.default.removeItem(atPath: tmp)
            throw error
        }
        var closed = false
        defer {
            if !closed {
                file.close()
                try? FileManager.default.removeItem(atPath: tmp)
            }
        }

        let renderer = SynthRenderer(height: o.height, width: o.width)
        var stats = ImageStats()
        try writeSplit(file, name: "train", samples: o.samples, splitTag: 0, options: o,
                       renderer: renderer, stats: &stats, progress: progress)
        if o.valSamples > 0 {
            var unused = ImageStats()
            try writeSplit(file, name: "val", samples: o.valSamples, splitTag: 1, options: o,
                           renderer: renderer, stats: &unused, progress: progress)
        }
        let (mean, std) = stats.meanStd()
        for split in o.valSamples > 0 ? ["train", "val"] : ["train"] {
            try file.setAttribute("/\(split)/images", "mean", mean)
            try file.setAttribute("/\(split)/images", "std", std)
            try file.setAttribute("/\(split)/images", "mean_std_source", "per-channel statistics of /train/images in [0,1]")
        }
        try writeRootAttributes(file, options: o, mean: mean, std: std)
        file.flush()
        file.close()
        closed = true
        if rename(tmp, path) != 0 {
            try? FileManager.default.removeItem(atPath: tmp)
            throw MTLError("\(path): cannot rename \(tmp) to it (errno \(errno))")
        }
        progress?("wrote \(path): \(o.samples) train + \(o.valSamples) val samples, \(o.height)x\(o.width), tasks \(o.fileTasks.joined(separator: ","))"
                  + (o.noiseTasks.isEmpty ? "" : ", noise \(o.noiseTasks.map { $0.text }.joined(separator: " "))"))
    }

    static func validate(_ o: SynthOptions) throws {
        for (name, v) in [("height", o.height), ("width", o.width)] where v <= 0 || v % 32 != 0 || v > 8192 {
            throw MTLError("synth: --\(name) must be a positive multiple of 32 (at most 8192), found \(v)")
        }
        guard o.samples >= 1 else { throw MTLError("synth: --samples must be >= 1, found \(o.samples)") }
        guard o.valSamples >= 0 else { throw MTLError("synth: --val-samples must be >= 0, found \(o.valSamples)") }
        guard o.samples < (1 << 31), o.valSamples < (1 << 31) else { throw MTLError("synth: at most 2^31 - 1 samples per split") }
        guard o.numClasses >= 4 && o.numClasses <= 1000 else {
            throw MTLError("synth: number of classes must be in 4...1000 (floor, wall, ceiling + at least one object class), found \(o.numClasses)")
        }
        for t in o.tasks where !knownTasks.contains(t) {
            throw MTLError("synth: unknown task '\(t)': expected some of \(knownTasks.joined(separator: ", "))")
        }
        guard Set(o.tasks).count == o.tasks.count else {
            throw MTLError("synth: task list \(o.tasks.joined(separator: ",")) names a task twice")
        }
        for (k, spec) in o.noiseTasks.enumerated() { try validateNoise(spec, index: k, options: o) }
    }

    /// One `--noise-task` against the other options: names known, source generated, the target slot
    /// free and able to hold the source's labels (class maps seg/parts, binary maps edges/saliency,
    /// depth; a binary slot only takes 2-class labels).
    static func validateNoise(_ spec: NoiseTaskSpec, index k: Int, options o: SynthOptions) throws {
        let prefix = "synth: --noise-task \(spec.text)"
        for t in [spec.target, spec.source] where !knownTasks.contains(t) {
            throw MTLError("\(prefix): unknown task '\(t)': expected one of \(knownTasks.joined(separator: ", "))")
        }
        guard spec.p >= 0 && spec.p <= 1 else { throw MTLError("\(prefix): P must be in [0, 1], found \(spec.p)") }
        guard o.tasks.contains(spec.source) else {
            throw MTLError("\(prefix): source task \(spec.source) is not generated (add it to --tasks, now \(o.tasks.joined(separator: ",")))")
        }
        if spec.target != spec.source && o.tasks.contains(spec.target) {
            throw MTLError("\(prefix): target slot \(spec.target) already holds the clean \(spec.target) labels (drop \(spec.target) from --tasks, or noise it in place with \(spec.target)=\(spec.target):...)")
        }
        for (j, other) in o.noiseTasks.enumerated() where j != k {
            if other.target == spec.target { throw MTLError("\(prefix): slot \(spec.target) is the target of two --noise-task options") }
            if other.target == spec.source && other.source != spec.source {
                throw MTLError("\(prefix): source \(spec.source) is itself a noisy task (\(other.text)); noise a clean task")
            }
        }
        let source = LabelKind.of(spec.source), target = LabelKind.of(spec.target)
        switch (source, target) {
        case (.classMap, .classMap), (.binary, .binary), (.binary, .classMap), (.depth, .depth):
            break
        case (.classMap, .binary):
            throw MTLError("\(prefix): class-count mismatch: \(spec.source) has \(classCount(of: spec.source, options: o)) classes, the \(spec.target) slot holds binary labels (2)")
        default:
            throw MTLError("\(prefix): target slot \(spec.target) cannot hold \(spec.source) labels (allowed: seg/parts from class maps or binary maps, edges/saliency from binary maps, depth from depth; normals cannot be noised)")
        }
        if spec.kind == .shuffle {
            for (split, n) in [("train", o.samples), ("val", o.valSamples)] where n == 1 {
                throw MTLError("\(prefix): shuffle needs at least 2 samples per split, --\(split == "train" ? "samples" : "val-samples") is 1")
            }
        }
    }

    /// The z-depth range of every rendered scene (SynthScene: nearest surface >= 0.64 m, farthest <= 8.4 m);
    /// `replace` noise on depth draws from it.
    static let depthRange: ClosedRange<Float> = 0.64...8.4

    /// Number of classes of a class map or binary task as `mtl synth` writes it.
    static func classCount(of task: String, options o: SynthOptions) -> Int {
        switch task {
        case "seg": return o.numClasses
        case "parts": return partsClassNames.count
        default: return 2
        }
    }

    static func classNames(of task: String, options o: SynthOptions) -> [String] {
        switch task {
        case "seg": return (0..<o.numClasses).map(SynthScene.className)
        case "parts": return partsClassNames
        default: return ["negative", "positive"]
        }
    }

    static let partsClassNames = ["background", "top", "side_x", "side_z"]

    /// The Philox index of a sample: the sample id in the high 32 bits, leaving the low 32 bits
    /// (the part MTLCore's Philox advances per draw) free, so samples' streams never overlap.
    static func sampleKey(split splitTag: Int, sample: Int) -> UInt64 {
        (UInt64(splitTag) << 63) | (UInt64(sample) << 32)
    }

    private static func writeSplit(_ file: H5File, name: String, samples n: Int, splitTag: Int, options o: SynthOptions,
                                   renderer r: SynthRenderer, stats: inout ImageStats,
                                   progress: ((String) -> Void)?) throws {
        let group = "/" + name
        let h = o.height, w = o.width
        try file.createGroup(group)
        try file.setAttribute(group, "num_samples", n)
        try file.setAttribute(group, "height", h)
        try file.setAttribute(group, "width", w)
        try file.setAttribute(group, "split_source", "procedural: Philox(seed, synth, \(splitTag == 0 ? "" : "2^31 + ")sample << 32)")
        // Clean labels of every task but those replaced in place by their noisy copy.
        let want = Set(o.tasks).subtracting(o.noiseTasks.map { $0.target })
        let noisy = o.noiseTasks.map { NoisyTaskWriter($0, options: o) }

        // One chunk per sample (DATASETS.md §4.2): images raw, labels deflated.
        try file.createDataset(group + "/images", type: UInt8.self, shape: [n, h, w, 3], chunks: [1, h, w, 3])
        if want.contains("seg") { try file.createDataset(group + "/seg", type: Int16.self, shape: [n, h, w], chunks: [1, h, w], deflate: 4) }
        if want.contains("depth") { try file.createDataset(group + "/depth", type: Float.self, shape: [n, h, w], chunks: [1, h, w]) }
        if want.contains("normals") { try file.createDataset(group + "/normals", type: Float.self, shape: [n, h, w, 3], chunks: [1, h, w, 3]) }
        if want.contains("edges") { try file.createDataset(group + "/edges", type: UInt8.self, shape: [n, h, w], chunks: [1, h, w], deflate: 4) }
        if want.contains("parts") { try file.createDataset(group + "/parts", type: Int16.self, shape: [n, h, w], chunks: [1, h, w], deflate: 4) }
        if want.contains("saliency") { try file.createDataset(group + "/saliency", type: UInt8.self, shape: [n, h, w], chunks: [1, h, w], deflate: 4) }
        for writer in noisy {
            try writer.createDataset(file, group: group, samples: n, height: h, width: w)
            writer.beginSplit(splitTag: splitTag, samples: n)
        }

        // Not a task: the pinhole intrinsics (fx, fy, cx, cy in pixels) of each sample, so that depth
        // can be back-projected (the tests check normals against back-projected depth with them).
        try file.createDataset(group + "/intrinsics", type: Float.self, shape: [n, 4])
        try file.setAttribute(group + "/intrinsics", "columns", "fx,fy,cx,cy (pixels; pixel (i,j) centre at (j+0.5, i+0.5))")

        let progressEvery = max(1, n / 4)
        func render(_ renderer: SynthRenderer, _ i: Int) -> SynthScene {
            let key = sampleKey(split: splitTag, sample: i)
            var rng = Philox(seed: o.seed, stream: RNGStream.synth.rawValue, index: key)
            let scene = SynthScene(rng: &rng, height: h, width: w, numClasses: o.numClasses)
            // Rows draw sensor noise from their own counter range (row + 1) << 16 within the sample's key.
            renderer.render(scene) { row in
                Philox(seed: o.seed, stream: RNGStream.synth.rawValue, index: key | (UInt64(row + 1) << 16))
            }
            return scene
        }
        for i in 0..<n {
            let scene = render(r, i)
            stats.add(r.image, count: h * w)
            let intrinsics = [Float(scene.focal), Float(scene.focal), Float(w) / 2, Float(h) / 2]
            try intrinsics.withUnsafeBufferPointer {
                try file.writeSlab(group + "/intrinsics", start: [i, 0], count: [1, 4], from: $0.baseAddress!)
            }

            try file.writeSlab(group + "/images", start: [i, 0, 0, 0], count: [1, h, w, 3], from: r.image)
            if want.contains("seg") { try file.writeSlab(group + "/seg", start: [i, 0, 0], count: [1, h, w], from: r.seg) }
            if want.contains("depth") { try file.writeSlab(group + "/depth", start: [i, 0, 0], count: [1, h, w], from: r.depth) }
            if want.contains("normals") { try file.writeSlab(group + "/normals", start: [i, 0, 0, 0], count: [1, h, w, 3], from: r.normals) }
            if want.contains("edges") { try file.writeSlab(group + "/edges", start: [i, 0, 0], count: [1, h, w], from: r.edges) }
            if want.contains("parts") { try file.writeSlab(group + "/parts", start: [i, 0, 0], count: [1, h, w], from: r.parts) }
            if want.contains("saliency") { try file.writeSlab(group + "/saliency", start: [i, 0, 0], count: [1, h, w], from: r.saliency) }
            for writer in noisy {
                writer.fill(sample: i, splitTag: splitTag, rendered: r) { _ = render($0, $1) }
                try writer.write(file, group: group, sample: i, height: h, width: w)
            }
            if let progress, (i + 1) % progressEvery == 0 || i + 1 == n {
                progress("\(name): \(i + 1)/\(n) samples")
            }
        }

        let classNames = (0..<o.numClasses).map(SynthScene.className)
        if want.contains("seg") {
            try file.setAttribute(group + "/seg", "num_classes", o.numClasses)
            try file.setAttribute(group + "/seg", "ignore_value", -1)
            try file.setAttribute(group + "/seg", "class_names", jsonString(classNames))
        }
        if want.contains("depth") {
            try file.setAttribute(group + "/depth", "units", "m")
            try file.setAttribute(group + "/depth", "depth_kind", "metric_m")
            try file.setAttribute(group + "/depth", "invalid_value", 0)
        }
        if want.contains("normals") {
            try file.setAttribute(group + "/normals", "invalid_value", 0)
            try file.setAttribute(group + "/normals", "frame", "camera: x right, y down, z forward; unit normals pointing towards the camera")
        }
        if want.contains("parts") {
            try file.setAttribute(group + "/parts", "num_classes", 4)
            try file.setAttribute(group + "/parts", "ignore_value", -1)
            try file.setAttribute(group + "/parts", "class_names", jsonString(partsClassNames))
        }
        for task in ["edges", "saliency"] where want.contains(task) {
            try file.setAttribute(group + "/" + task, "ignore_value", 255)
        }
        for writer in noisy { try writer.writeAttributes(file, group: group, options: o) }
    }

    private static func writeRootAttributes(_ file: H5File, options o: SynthOptions, mean: [Double], std: [Double]) throws {
        let variant = "synth-\(o.height)x\(o.width)-\(o.numClasses)"
        var meta: [String: Any] = [
            "format": schemaFormat, "format_version": schemaVersion, "dataset": "synthetic", "variant": variant,
            "tasks": o.fileTasks, "source": "procedural (mtl synth)", "converter": "mtl synth", "converter_version": "1",
            "seed": String(o.seed), "num_classes": o.numClasses,
            "class_names": (0..<o.numClasses).map(SynthScene.className),
            "splits": ["train": o.samples, "val": o.valSamples], "height": o.height, "width": o.width,
            "image_mean": mean, "image_std": std,
        ]
        if !o.noiseTasks.isEmpty { meta["noise_tasks"] = o.noiseTasks.map { $0.text } }
        // No created_utc: the file must be identical for identical arguments.
        try file.setAttribute("/", "format", schemaFormat)
        try file.setAttribute("/", "format_version", schemaVersion)
        try file.setAttribute("/", "dataset", "synthetic")
        try file.setAttribute("/", "variant", variant)
        try file.setAttribute("/", "tasks", o.fileTasks.joined(separator: ","))
        try file.setAttribute("/", "source", "procedural (mtl synth)")
        try file.setAttribute("/", "converter", "mtl synth")
        try file.setAttribute("/", "converter_version", "1")
        try file.setAttribute("/", "seed", String(o.seed))
        if !o.noiseTasks.isEmpty {
            try file.setAttribute("/", "noise_tasks", o.noiseTasks.map { $0.text }.joined(separator: " "))
        }
        try file.setAttribute("/", "meta_json", jsonString(meta))
    }

    static func jsonString(_ value: Any) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys]) else { return "null" }
        return String(decoding: data, as: UTF8.self)
    }
}

/// Per-channel running sums of pixels in [0,1], in double precision.
struct ImageStats {
    var sum = [Double](repeating: 0, count: 3)
    var sumSquares = [Double](repeating: 0, count: 3)
    var pixels = 0

    mutating func add(_ image: UnsafePointer<UInt8>, count: Int) {
        // Integer sums per sample are exact; convert once.
        var s = (0, 0, 0), q = (0, 0, 0)
        for p in 0..<count {
            let r = Int(image[3 * p]), g = Int(image[3 * p + 1]), b = Int(image[3 * p + 2])
            s.0 += r; s.1 += g; s.2 += b
            q.0 += r * r; q.1 += g * g; q.2 += b * b
        }
        sum[0] += Double(s.0) / 255; sum[1] += Double(s.1) / 255; sum[2] += Double(s.2) / 255
        sumSquares[0] += Double(q.0) / 65025; sumSquares[1] += Double(q.1) / 65025; sumSquares[2] += Double(q.2) / 65025
        pixels += count
    }

    func meanStd() -> ([Double], [Double]) {
        let n = Double(max(pixels, 1))
        let mean = sum.map { $0 / n }
        let std = (0..<3).map { c in max(1e-6, (sumSquares[c] / n - mean[c] * mean[c]).squareRoot()) }
        return (mean, std)
    }
}
