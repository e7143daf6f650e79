import Foundation
import MTLCore

/// The NYUD-MT release (`NYUD_MT/`) of ASTMT / MTI-Net / ATRC (docs/DATASETS.md "NYUD-MT"):
/// gt_sets/{train,val}.txt list ids; per id images/<id>.jpg, segmentation/<id>.png (0 = void,
/// 1..40 = classes), depth/<id>.npy (metres, 0 = invalid), normals/<id>.npy (H×W×3, zero = invalid),
/// edge/<id>.npy (0/1). Frame size is taken from the first train image (MTI-Net resizes to 480×640,
/// ATRC crops/pads to 425×560) and every file must match it. Per file, the formats of ASTMT's original
/// loader are accepted when the .npy/.png is absent: segmentation/<id>.mat ('segmentation'),
/// depth/<id>.mat ('depth'), normals/<id>.jpg (2v/255 − 1), edge/<id>.png (v/255).
enum NYUDMTConverter {
    static let folders = ["images", "segmentation", "depth", "normals", "edge", "gt_sets"]
    static let layout = "images/<id>.jpg, segmentation/<id>.png, {depth,normals,edge}/<id>.npy, gt_sets/{train,val}.txt"

    /// `src` is the NYUD_MT folder itself, or a folder holding `NYUD_MT/` (ATRC's `data_dir`).
    static func root(_ src: String) -> String {
        if !isDirectory("\(src)/gt_sets") && isDirectory("\(src)/NYUD_MT/gt_sets") { return "\(src)/NYUD_MT" }
        return src
    }

    /// Ids of one split file, one per line (blank lines skipped, surrounding whitespace trimmed).
    static func readSplit(_ path: String) throws -> [String] {
        guard FileManager.default.fileExists(atPath: path) else {
            throw MTLError("\(path): split file not found (expected one image id per line, as gt_sets/train.txt and gt_sets/val.txt of NYUD_MT)")
        }
        let ids = String(decoding: try readFileBytes(path), as: UTF8.self).split(whereSeparator: \.isNewline)
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        if ids.isEmpty { throw MTLError("\(path): empty split file (expected one image id per line)") }
        var seen = Set<String>()
        for id in ids where !seen.insert(id).inserted {
            throw MTLError("\(path): id '\(id)' listed twice (expected each image id once)")
        }
        return ids
    }

    static func run(src srcArg: String, out: String, options: ConvertOptions, progress: (String) -> Void) throws -> String {
        if let c = options.classes, c != 40 {
            throw MTLError("nyud-mt: --classes \(c): the NYUD-MT segmentation has 40 classes (expected 40)")
        }
        let src = root(srcArg)
        for d in folders where !isDirectory("\(src)/\(d)") {
            throw MTLError("\(src)/\(d): folder not found (expected the NYUD_MT layout \(layout))")
        }
        var splits: [(String, [String])] = []
        for split in ["train", "val"] { splits.append((split, try readSplit("\(src)/gt_sets/\(split).txt"))) }
        if let dup = Set(splits[0].1).intersection(splits[1].1).sorted().first {
            throw MTLError("\(src)/gt_sets/val.txt: id '\(dup)' is also in gt_sets/train.txt (expected disjoint splits)")
        }
        // Frame size from the first train image; every image and label must have it.
        let firstPath = "\(src)/images/\(splits[0].1[0]).jpg"
        try requireFile(firstPath, "image listed in gt_sets/train.txt")
        let first = try JPEG.readRGB8(firstPath)
        let H0 = first.height, W0 = first.width
        let H = options.height ?? H0, W = options.width ?? W0
        let root = Converter.rootAttrs(dataset: "nyuv2", variant: "nyud-mt-\(H)x\(W)-40", tasks: ["seg", "depth", "normals", "edges"],
                                       source: "NYUD_MT release (ASTMT / MTI-Net / ATRC layout: \(layout)): \(src)")
        return try Converter.withWriter(out: out, root: root) { w in
            var lines: [String] = []
            for (split, ids) in splits {
                let specs = [
                    DatasetSpec(name: "images", type: .u8, sampleShape: [H, W, 3], deflate: nil,
                                attrs: [("mean", imagenetMean), ("std", imagenetStd), ("units", "RGB 0..255; mean/std for pixels/255 (ImageNet, as MTI-Net/ATRC)")]),
                    DatasetSpec(name: "seg", type: .i16, sampleShape: [H, W], deflate: 4,
                                attrs: [("num_classes", 40), ("class_names", NYUv2Converter.names40), ("ignore_value", -1),
                                        ("mapping", "segmentation png (or ASTMT .mat 'segmentation') 1..40 -> 0..39, 0 (void) -> -1 (MTI-Net/ATRC: 0 -> 255 ignore, others -1)")]),
                    DatasetSpec(name: "depth", type: .f32, sampleShape: [H, W], deflate: nil,
                                attrs: [("units", "m"), ("depth_kind", "metric_m"), ("invalid_value", 0.0),
                                        ("mapping", "depth npy (or ASTMT .mat 'depth') as stored (0 = invalid, as MTI-Net/ATRC AddIgnoreRegions)")]),
                    DatasetSpec(name: "normals", type: .f32, sampleShape: [H, W, 3], deflate: nil,
                                attrs: [("invalid_value", 0.0),
                                        ("units", "unit vector (x, y, z) as stored in normals npy (x = image right: h-flip negates it); renormalised"),
                                        ("mapping", "normals npy renormalised, |n| < 1e-3 -> 0 (invalid; MTI-Net/ATRC: zero norm -> 255 ignore); ASTMT normals jpg: 2v/255-1, |n| < 0.5 -> 0")]),
                    DatasetSpec(name: "edges", type: .u8, sampleShape: [H, W], deflate: 4,
                                attrs: [("ignore_value", 255), ("num_classes", 2),
                                        ("mapping", "edge npy (or ASTMT edge png / 255) >= 0.5 -> 1 else 0 (the threshold of MTI-Net's BalancedCrossEntropyLoss)")]),
                ]
                let r = try convertSplit(w, split: split, count: ids.count, height: H, width: W,
                                         splitSource: "gt_sets/\(split).txt", datasets: specs, progress: progress, fetch: { ids[$0] }) { id, _ in
                    try sample(src: src, split: split, id: id, H0: H0, W0: W0, H: H, W: W)
                }
                lines.append("\(split) \(ids.count) images in \(String(format: "%.1f", r.seconds)) s")
            }
            return "nyud-mt: wrote \(out) (\(H)x\(W)\(H != H0 || W != W0 ? " resized from \(H0)x\(W0)" : ""), 40 classes, seg/depth/normals/edges): "
                + lines.joined(separator: ", ") + "."
        }
    }

    /// A `.npy` of shape (H0, W0) or (H0, W0, 1) (or (H0, W0, 3) for normals), finite, as Floats.
    static func loadNpy(_ path: String, task: String, channels: Int, H0: Int, W0: Int, split: String) throws -> [Float] {
        try requireFile(path, "\(task) file listed in gt_sets/\(split).txt")
        let a = try Npy.read(path)
        let ok = channels == 3 ? [[H0, W0, 3]] : [[H0, W0], [H0, W0, 1]]
        guard ok.contains(a.shape) else {
            throw MTLError("\(path): \(task): expected shape \(ok.map { "(" + $0.map(String.init).joined(separator: ", ") + ")" }.joined(separator: " or ")) (the size of its image), found \(a.shape)")
        }
        let v = a.floats()
        if let bad = v.firstIndex(where: { !$0.isFinite }) {
            throw MTLError("\(path): \(task): non-finite value \(v[bad]) at (y \(bad / channels / W0), x \(bad / channels % W0)): expected finite values")
        }
        return v
    }

    /// A 2-D numeric MAT v5 variable (ASTMT's segmentation/depth .mat files), row-major.
    static func loadMat(_ path: String, variable: String, task: String, H0: Int, W0: Int) throws -> [Float] {
        guard let v = try MatV5.read(path)[variable] else {
            throw MTLError("\(path): \(task): no variable '\(variable)' (expected ASTMT's NYUD_MT .mat with '\(variable)')")
        }
        guard let nums = v.numbers, v.dims == [H0, W0] else {
            throw MTLError("\(path): \(task): '\(variable)': expected a numeric \(H0)x\(W0) array (the size of its image), found \(v.numbers == nil ? "a non-numeric value" : "dims \(v.dims)")")
        }
        var out = [Float](repeating: 0, count: H0 * W0)
        for x in 0..<W0 { for y in 0..<H0 { out[y * W0 + x] = Float(nums[x * H0 + y]) } }
        if let bad = out.firstIndex(where: { !$0.isFinite }) {
            throw MTLError("\(path): \(task): non-finite value \(out[bad]) at (y \(bad / W0), x \(bad % W0)): expected finite values")
        }
        return out
    }

    static func exists(_ p: String) -> Bool { FileManager.default.fileExists(atPath: p) }

    static func sample(src: String, split: String, id: String, H0: Int, W0: Int, H: Int, W: Int) throws -> Sample {
        var s = Sample()
        s.id = id
        func at(_ k: Int) -> String { "(y \(k / W0), x \(k % W0))" }
        let imgPath = "\(src)/images/\(id).jpg"
        try requireFile(imgPath, "image listed in gt_sets/\(split).txt")
        let img = try JPEG.readRGB8(imgPath)
        guard img.height == H0, img.width == W0 else {
            throw MTLError("\(imgPath): image: expected \(W0)x\(H0) (the size of the first train image), found \(img.width)x\(img.height)")
        }
        s.image = resizeBilinearU8(img.pixels, w: W0, h: H0, c: 3, toW: W, toH: H)

        var segPath = "\(src)/segmentation/\(id).png"
        let segRaw: [Float]
        if !exists(segPath) && exists("\(src)/segmentation/\(id).mat") {
            segPath = "\(src)/segmentation/\(id).mat"
            segRaw = try loadMat(segPath, variable: "segmentation", task: "segmentation", H0: H0, W0: W0)
        } else {
            try requireFile(segPath, "segmentation file listed in gt_sets/\(split).txt")
            let segR = try PNG.readLabels(segPath)
            guard segR.height == H0, segR.width == W0 else {
                throw MTLError("\(segPath): segmentation: expected \(W0)x\(H0) (the size of its image), found \(segR.width)x\(segR.height)")
            }
            segRaw = segR.pixels.map { Float($0) }
        }
        var seg = [Int16](repeating: -1, count: H0 * W0)
        for k in 0..<(H0 * W0) {
            let v = segRaw[k]
            if v < 0 || v > 40 || v != v.rounded() {
                throw MTLError("\(segPath): segmentation: label \(v == v.rounded() ? String(Int(v)) : String(v)) at \(at(k)): expected 0 (void) or 1..40")
            }
            seg[k] = Int16(v) - 1  // 0 (void) → −1
        }
        s.seg = resizeNearest(seg, w: W0, h: H0, toW: W, toH: H)

        var dPath = "\(src)/depth/\(id).npy"
        let depth: [Float]
        if !exists(dPath) && exists("\(src)/depth/\(id).mat") {
            dPath = "\(src)/depth/\(id).mat"
            depth = try loadMat(dPath, variable: "depth", task: "depth", H0: H0, W0: W0)
        } else {
            depth = try loadNpy(dPath, task: "depth", channels: 1, H0: H0, W0: W0, split: split)
        }
        if let k = depth.firstIndex(where: { $0 < 0 }) {
            throw MTLError("\(dPath): depth: \(depth[k]) at \(at(k)): expected metres >= 0 (0 = invalid)")
        }
        s.depth = resizeNearest(depth, w: W0, h: H0, toW: W, toH: H)

        let nPath = "\(src)/normals/\(id).npy", nJpg = "\(src)/normals/\(id).jpg"
        var normals: [Float]
        if !exists(nPath) && exists(nJpg) {
            let r = try JPEG.readRGB8(nJpg)
            guard r.height == H0, r.width == W0 else {
                throw MTLError("\(nJpg): normals: expected \(W0)x\(H0) (the size of its image), found \(r.width)x\(r.height)")
            }
            normals = r.pixels.map { 2 * Float($0) / 255 - 1 }
            renormalize(&normals, minNorm: 0.5)  // 8-bit (and JPEG-coded) unit vectors; near-grey pixels are "no normal"
        } else {
            normals = try loadNpy(nPath, task: "normals", channels: 3, H0: H0, W0: W0, split: split)
            renormalize(&normals)
        }
        s.normals = resizeNormals(normals, w: W0, h: H0, toW: W, toH: H)

        var ePath = "\(src)/edge/\(id).npy"
        let edge: [Float]
        if !exists(ePath) && exists("\(src)/edge/\(id).png") {
            ePath = "\(src)/edge/\(id).png"
            let r = try PNG.readLabels(ePath)
            guard r.height == H0, r.width == W0 else {
                throw MTLError("\(ePath): edge: expected \(W0)x\(H0) (the size of its image), found \(r.width)x\(r.height)")
            }
            let maxV: Float = r.pixels.contains(where: { $0 > 255 }) ? 65535 : 255
            edge = r.pixels.map { Float($0) / maxV }  // ASTMT: png / 255
        } else {
            edge = try loadNpy(ePath, task: "edge", channels: 1, H0: H0, W0: W0, split: split)
        }
        var edges = [UInt8](repeating: 0, count: H0 * W0)
        for k in 0..<(H0 * W0) {
            let v = edge[k]
            if v < 0 || v > 1 { throw MTLError("\(ePath): edge: \(v) at \(at(k)): expected an edge map in [0, 1] (0 = no edge, 1 = edge)") }
            edges[k] = v >= 0.5 ? 1 : 0
        }
        s.edges = resizeNearest(edges, w: W0, h: H0, toW: W, toH: H)
        return s
    }
}
