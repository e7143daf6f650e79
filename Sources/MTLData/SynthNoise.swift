import Foundation
import MTLCore

/// `mtl synth --noise-task TASK=SOURCE:KIND[:P]`: a noisy pseudo-auxiliary task (issue 6). The
/// schema's task names are fixed, so the noisy task occupies one of the slots (TASK) and holds a
/// corrupted copy of another task's labels (SOURCE):
///   - `replace:P`: each valid pixel is, with probability P, replaced by a uniform random label
///     (a random class of the source's classes, a random bit, or for depth a value drawn
///     uniformly in `Synth.depthRange`). The replacement may equal the original label, so the
///     fraction of CHANGED pixels is P·(K−1)/K for K classes. P defaults to 1 (pure noise).
///   - `shuffle`: image i gets the (clean) source labels of image π(i), with π a fixed random
///     derangement of the split (no image keeps its own): consistent, learnable-looking labels
///     that are unrelated to the input — the harmful case, like pseudo-labels from another domain.
/// Ignore pixels (class −1, binary 255, depth 0) stay ignore. Every draw comes from
/// Philox(seed, .synthNoise, ...) keyed by (split, sample, target slot), so the file is a pure
/// function of the arguments. The target dataset carries the attributes noise (kind),
/// noise_source, noise_p, noise_seed and noise_spec; the root carries noise_tasks.
public struct NoiseTaskSpec: Equatable, Sendable {
    public enum Kind: String, Sendable { case replace, shuffle }
    public var target: String
    public var source: String
    public var kind: Kind
    /// Replacement probability (replace); 1 for shuffle (every image is swapped).
    public var p: Double

    public init(target: String, source: String, kind: Kind, p: Double = 1) {
        self.target = target
        self.source = source
        self.kind = kind
        self.p = p
    }

    /// `parts=seg:replace:0.5`, `parts=seg:shuffle`, `saliency=saliency:replace` (P = 1).
    public static func parse(_ text: String) throws -> NoiseTaskSpec {
        let prefix = "synth: --noise-task \(text)"
        let usage = "expected TASK=SOURCE:KIND[:P], e.g. parts=seg:replace:0.5 or parts=seg:shuffle"
        let sides = text.split(separator: "=", omittingEmptySubsequences: false).map(String.init)
        guard sides.count == 2 else { throw MTLError("\(prefix): \(usage)") }
        let fields = sides[1].split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard fields.count == 2 || fields.count == 3, !sides[0].isEmpty, !fields[0].isEmpty else {
            throw MTLError("\(prefix): \(usage)")
        }
        guard let kind = Kind(rawValue: fields[1].lowercased()) else {
            throw MTLError("\(prefix): unknown noise kind '\(fields[1])': expected replace or shuffle")
        }
        var p = 1.0
        if fields.count == 3 {
            guard kind == .replace else {
                throw MTLError("\(prefix): shuffle takes no P (every image gets another image's labels), found ':\(fields[2])'")
            }
            guard let v = Double(fields[2]), v >= 0, v <= 1 else {
                throw MTLError("\(prefix): P must be a number in [0, 1], found '\(fields[2])'")
            }
            p = v
        }
        return NoiseTaskSpec(target: sides[0], source: fields[0], kind: kind, p: p)
    }

    /// The canonical text, as written into the file's attributes.
    public var text: String { "\(target)=\(source):\(kind.rawValue)" + (kind == .replace ? ":\(p)" : "") }
}

/// How a task's labels are stored, as far as noise is concerned.
enum LabelKind {
    case classMap   // Int16, ignore −1, num_classes
    case binary     // UInt8 0/1, ignore 255
    case depth      // Float metres, invalid 0
    case normals    // not supported as a noisy task

    static func of(_ task: String) -> LabelKind {
        switch task {
        case "seg", "parts": return .classMap
        case "edges", "saliency": return .binary
        case "depth": return .depth
        default: return .normals
        }
    }
}

/// The label corruptions, on plain buffers (tested directly).
enum LabelNoise {
    /// Each label other than `ignore` is, with probability p, replaced by a uniform draw from
    /// 0..<classes. Returns how many labels were re-drawn (the Bernoulli successes).
    static func replace<T: FixedWidthInteger>(_ labels: UnsafeMutablePointer<T>, count: Int, classes: Int, ignore: T,
                                              p: Double, rng: inout Philox) -> Int {
        var drawn = 0
        for i in 0..<count where labels[i] != ignore {
            if Double(rng.uniform()) < p {
                labels[i] = T(rng.int(below: classes))
                drawn += 1
            }
        }
        return drawn
    }

    /// Each valid depth (finite, > 0) is, with probability p, replaced by a value drawn uniformly in
    /// `range`; invalid pixels (0) stay invalid. Returns how many values were re-drawn.
    static func replaceDepth(_ depth: UnsafeMutablePointer<Float>, count: Int, range: ClosedRange<Float>,
                             p: Double, rng: inout Philox) -> Int {
        var drawn = 0
        for i in 0..<count where depth[i] > 0 && depth[i].isFinite {
            if Double(rng.uniform()) < p {
                depth[i] = range.lowerBound + (range.upperBound - range.lowerBound) * rng.uniform()
                drawn += 1
            }
        }
        return drawn
    }

    /// A uniformly random derangement of 0..<n (n >= 2): uniform permutations are drawn until one
    /// has no fixed point (about e ≈ 2.7 draws on average).
    static func derangement(_ n: Int, rng: inout Philox) -> [Int] {
        precondition(n >= 2, "a derangement needs at least 2 elements")
        while true {
            let p = rng.permutation(n)
            if !p.indices.contains(where: { p[$0] == $0 }) { return p }
        }
    }
}

/// One `--noise-task` while a split is written: the target buffer and, for shuffle, the
/// derangement of the split and a renderer for the other image's labels.
final class NoisyTaskWriter {
    let spec: NoiseTaskSpec
    let sourceKind: LabelKind, targetKind: LabelKind
    let sourceClasses: Int
    let slot: UInt64
    let seed: UInt64
    let count: Int
    let labels16: UnsafeMutablePointer<Int16>
    let labels8: UnsafeMutablePointer<UInt8>
    let depth: UnsafeMutablePointer<Float>
    var derangement: [Int] = []
    let other: SynthRenderer?

    init(_ spec: NoiseTaskSpec, options o: SynthOptions) {
        self.spec = spec
        sourceKind = LabelKind.of(spec.source)
        targetKind = LabelKind.of(spec.target)
        sourceClasses = Synth.classCount(of: spec.source, options: o)
        slot = UInt64(knownTasks.firstIndex(of: spec.target)!)
        seed = o.seed
        count = o.height * o.width
        labels16 = .allocate(capacity: count)
        labels8 = .allocate(capacity: count)
        depth = .allocate(capacity: count)
        other = spec.kind == .shuffle ? SynthRenderer(height: o.height, width: o.width) : nil
    }

    deinit { labels16.deallocate(); labels8.deallocate(); depth.deallocate() }

    /// The derangement of a split of n samples (shuffle only), keyed by (seed, split, slot).
    func beginSplit(splitTag: Int, samples n: Int) {
        guard spec.kind == .shuffle else { return }
        var rng = Philox(seed: seed, stream: RNGStream.synthNoise.rawValue,
                         index: Synth.sampleKey(split: splitTag, sample: 0) | (0x100 + slot))
        derangement = LabelNoise.derangement(n, rng: &rng)
    }

    /// Fills the target buffer for sample i; `r` holds sample i rendered, `render` renders a sample.
    func fill(sample i: Int, splitTag: Int, rendered r: SynthRenderer, render: (SynthRenderer, Int) -> Void) {
        var src = r
        if spec.kind == .shuffle, let other {
            render(other, derangement[i])
            src = other
        }
        let n = count
        switch (sourceKind, targetKind) {
        case (.classMap, .classMap):
            labels16.update(from: spec.source == "seg" ? src.seg : src.parts, count: n)
        case (.binary, .classMap):
            let b = spec.source == "edges" ? src.edges : src.saliency
            for p in 0..<n { labels16[p] = b[p] == 255 ? -1 : Int16(b[p]) }
        case (.binary, .binary):
            labels8.update(from: spec.source == "edges" ? src.edges : src.saliency, count: n)
        case (.depth, .depth):
            depth.update(from: src.depth, count: n)
        default:
            preconditionFailure("noise \(spec.text): combination rejected by Synth.validate")
        }
        guard spec.kind == .replace else { return }
        var rng = Philox(seed: seed, stream: RNGStream.synthNoise.rawValue,
                         index: Synth.sampleKey(split: splitTag, sample: i) | slot)
        switch targetKind {
        case .classMap:
            _ = LabelNoise.replace(labels16, count: n, classes: sourceClasses, ignore: -1, p: spec.p, rng: &rng)
        case .binary:
            _ = LabelNoise.replace(labels8, count: n, classes: 2, ignore: 255, p: spec.p, rng: &rng)
        case .depth:
            _ = LabelNoise.replaceDepth(depth, count: n, range: Synth.depthRange, p: spec.p, rng: &rng)
        case .normals:
            preconditionFailure("normals cannot be a noisy task")
        }
    }

    func createDataset(_ file: H5File, group: String, samples n: Int, height h: Int, width w: Int) throws {
        let name = group + "/" + spec.target
        switch targetKind {
        case .classMap: try file.createDataset(name, type: Int16.self, shape: [n, h, w], chunks: [1, h, w], deflate: 4)
        case .binary: try file.createDataset(name, type: UInt8.self, shape: [n, h, w], chunks: [1, h, w], deflate: 4)
        case .depth: try file.createDataset(name, type: Float.self, shape: [n, h, w], chunks: [1, h, w])
        case .normals: preconditionFailure("normals cannot be a noisy task")
        }
    }

    func write(_ file: H5File, group: String, sample i: Int, height h: Int, width w: Int) throws {
        let name = group + "/" + spec.target
        switch targetKind {
        case .classMap: try file.writeSlab(name, start: [i, 0, 0], count: [1, h, w], from: labels16)
        case .binary: try file.writeSlab(name, start: [i, 0, 0], count: [1, h, w], from: labels8)
        case .depth: try file.writeSlab(name, start: [i, 0, 0], count: [1, h, w], from: depth)
        case .normals: preconditionFailure("normals cannot be a noisy task")
        }
    }

    /// The schema attributes of the target slot (those of the source's labels) and the noise's own.
    func writeAttributes(_ file: H5File, group: String, options o: SynthOptions) throws {
        let name = group + "/" + spec.target
        switch targetKind {
        case .classMap:
            try file.setAttribute(name, "num_classes", sourceClasses)
            try file.setAttribute(name, "ignore_value", -1)
            try file.setAttribute(name, "class_names", Synth.jsonString(Synth.classNames(of: spec.source, options: o)))
        case .binary:
            try file.setAttribute(name, "ignore_value", 255)
        case .depth:
            try file.setAttribute(name, "units", "m")
            try file.setAttribute(name, "depth_kind", "metric_m")
            try file.setAttribute(name, "invalid_value", 0)
            if spec.kind == .replace {
                try file.setAttribute(name, "noise_range", [Double(Synth.depthRange.lowerBound), Double(Synth.depthRange.upperBound)])
            }
        case .normals:
            preconditionFailure("normals cannot be a noisy task")
        }
        try file.setAttribute(name, "noise", spec.kind.rawValue)
        try file.setAttribute(name, "noise_source", spec.source)
        try file.setAttribute(name, "noise_p", spec.p)
        try file.setAttribute(name, "noise_seed", String(o.seed))
        try file.setAttribute(name, "noise_spec", spec.text)
    }
}
