import Foundation
import MTLCore

/// PASCAL-Context multi-task (PASCAL-MT, ASTMT / MTI-Net layout, DATASETS.md §3).
enum PascalConverter {
    static let size = 512
    static let vocNames = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    static let partNames = ["background", "head", "torso", "upper arm", "lower arm", "upper leg", "lower leg"]
    /// MTI-Net HUMAN_PART[6]: PASCAL-Part person part name → group.
    static let humanPart6: [String: Int16] = [
        "hair": 1, "head": 1, "lear": 1, "lebrow": 1, "leye": 1, "lfoot": 6, "lhand": 4, "llarm": 4, "llleg": 6, "luarm": 3,
        "luleg": 5, "mouth": 1, "neck": 2, "nose": 1, "rear": 1, "rebrow": 1, "reye": 1, "rfoot": 6, "rhand": 4, "rlarm": 4,
        "rlleg": 6, "ruarm": 3, "ruleg": 5, "torso": 2]
    /// Context LabelMap ids (1..459) whose class name also exists in NYU (+ tvmonitor): the pixels where the
    /// distilled normals are kept. Derived from MTI-Net's data/db_info/{nyu,context}_classes.json exactly as its
    /// loader does (names in both, minus 'unknown', plus 'tvmonitor').
    static let normalsValidContext: Set<Int> = [
        3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49, 50, 51, 53, 55, 56, 59, 61,
        62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101, 104, 105, 107, 111, 113, 115, 122, 124, 135, 141, 142,
        143, 146, 150, 154, 157, 158, 159, 165, 172, 174, 181, 183, 184, 191, 193, 195, 197, 199, 202, 213, 215, 216, 219, 220,
        223, 225, 228, 230, 232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255, 260, 261, 263, 269, 272, 273, 275, 281, 283,
        284, 285, 286, 287, 288, 290, 291, 292, 293, 295, 304, 307, 309, 310, 314, 315, 319, 323, 329, 330, 331, 336, 342, 345,
        349, 350, 351, 352, 355, 357, 368, 370, 371, 374, 379, 380, 383, 384, 397, 401, 403, 405, 407, 408, 411, 412, 413, 414,
        417, 419, 421, 423, 427, 429, 430, 432, 440, 441, 442, 443, 444, 446, 454, 457]

    static func run(src: String, out: String, options: ConvertOptions, progress: (String) -> Void) throws -> String {
        if options.height != nil { throw MTLError("pascal-context: --height/--width: not supported (samples are padded to 512x512)") }
        for d in ["JPEGImages", "ImageSets/Context"] where !isDirectory("\(src)/\(d)") {
            throw MTLError("\(src)/\(d): folder not found (expected the PASCAL_MT layout)")
        }
        let hasLabelMap = isDirectory("\(src)/pascal-context/trainval")
        let hasParts = isDirectory("\(src)/human_parts")
        let hasNormals = isDirectory("\(src)/normals_distill")
        let hasSal = isDirectory("\(src)/sal_distill")
        guard isDirectory("\(src)/semseg/VOC12") || isDirectory("\(src)/semseg/pascal-context") else {
            throw MTLError("\(src)/semseg: folder not found (expected semseg/VOC12 or semseg/pascal-context)")
        }
        var tasks = ["seg", "edges"]
        if hasParts { tasks.append("parts") }
        if hasNormals { tasks.append("normals") }
        if hasSal { tasks.append("saliency") }
        var splits: [(String, [String])] = []
        for split in ["train", "val"] {
            let listPath = "\(src)/ImageSets/Context/\(split).txt"
            try requireFile(listPath, "split list")
            let ids = String(decoding: try readFileBytes(listPath), as: UTF8.self).split(whereSeparator: \.isNewline)
                .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            if ids.isEmpty { throw MTLError("\(listPath): empty split list (expected one image id per line)") }
            splits.append((split, ids))
        }
        let S = size
        let edgeMethod = hasLabelMap ? "cv2.Laplacian(LabelMap) != 0, then skimage-style thinning (Guo-Hall), as MTI-Net/ASTMT"
                                     : "PROXY (no pascal-context/trainval LabelMaps): Laplacian(semseg) != 0, thinned; not the official edge target"
        let root = Converter.rootAttrs(dataset: "pascal_mt", variant: "pascal-mt-512x512-21", tasks: tasks,
                                       source: "PASCAL_MT layout (ASTMT/MTI-Net): \(src)")
        return try Converter.withWriter(out: out, root: root) { w in
            var lines: [String] = []
            for (split, ids) in splits {
                var specs = [
                    DatasetSpec(name: "images", type: .u8, sampleShape: [S, S, 3], deflate: nil,
                                attrs: [("mean", imagenetMean), ("std", imagenetStd), ("units", "RGB 0..255, zero-padded to 512x512 (see sizes)")]),
                    DatasetSpec(name: "seg", type: .i16, sampleShape: [S, S], deflate: 4,
                                attrs: [("num_classes", 21), ("class_names", vocNames), ("ignore_value", -1), ("mapping", "semseg png as stored, 255 -> -1, padding -1")]),
                    DatasetSpec(name: "edges", type: .u8, sampleShape: [S, S], deflate: 4,
                                attrs: [("ignore_value", 255), ("num_classes", 2), ("mapping", edgeMethod)]),
                ]
                if hasParts {
                    specs.append(DatasetSpec(name: "parts", type: .i16, sampleShape: [S, S], deflate: 4,
                                             attrs: [("num_classes", 7), ("class_names", partNames), ("ignore_value", -1),
                                                     ("mapping", "human_parts/<id>.mat anno: person (class_ind 15) parts painted with MTI-Net HUMAN_PART[6]; -1 (and has_parts 0) if no person")]))
                }
                if hasNormals {
                    specs.append(DatasetSpec(name: "normals", type: .f32, sampleShape: [S, S, 3], deflate: nil,
                                             attrs: [("invalid_value", 0.0), ("units", "unit vector, 2v/255-1 from normals_distill png, renormalised"),
                                                     ("mapping", hasLabelMap ? "kept on Context classes also in NYU (+tvmonitor), 0 elsewhere" : "no LabelMaps: not masked by class")]))
                }
                if hasSal {
                    specs.append(DatasetSpec(name: "saliency", type: .u8, sampleShape: [S, S], deflate: 4,
                                             attrs: [("ignore_value", 255), ("num_classes", 2), ("mapping", "sal_distill png / 255 > 0.5")]))
                }
                let r = try convertSplit(w, split: split, count: ids.count, height: S, width: S,
                                         splitSource: "ImageSets/Context/\(split).txt", datasets: specs, progress: progress, fetch: { ids[$0] }) { id, _ in
                    try sample(src: src, id: id, labelMap: hasLabelMap, parts: hasParts, normals: hasNormals, sal: hasSal)
                }
                lines.append("\(split) \(ids.count) images in \(String(format: "%.1f", r.seconds)) s")
            }
            return "pascal-context: wrote \(out) (512x512 padded, tasks \(tasks.joined(separator: "/")); edges: \(hasLabelMap ? "from Context LabelMaps" : "PROXY from semseg boundaries")): " + lines.joined(separator: ", ") + "."
        }
    }

    /// A MATLAB H×W numeric array as row-major Ints.
    static func rowMajor(_ v: MatValue, _ path: String, _ what: String) throws -> (h: Int, w: Int, values: [Int]) {
        guard let nums = v.numbers, v.dims.count == 2 else { throw MTLError("\(path): \(what): expected a 2-D numeric array, found \(v.dims)") }
        let h = v.dims[0], w = v.dims[1]
        var out = [Int](repeating: 0, count: h * w)
        for x in 0..<w { for y in 0..<h { out[y * w + x] = Int(nums[x * h + y]) } }
        return (h, w, out)
    }

    static func sample(src: String, id: String, labelMap: Bool, parts: Bool, normals: Bool, sal: Bool) throws -> Sample {
        let S = size
        var s = Sample()
        s.id = id
        let imgPath = "\(src)/JPEGImages/\(id).jpg"
        try requireFile(imgPath, "image listed in ImageSets/Context")
        let img = try JPEG.readRGB8(imgPath)
        let h = img.height, w = img.width
        guard h <= S, w <= S else { throw MTLError("\(imgPath): image \(w)x\(h), expected at most 512x512") }
        s.size = (Int32(h), Int32(w))
        func pad<T>(_ v: [T], c: Int = 1, fill: T) -> [T] {
            var o = [T](repeating: fill, count: S * S * c)
            for y in 0..<h { for x in 0..<w { for k in 0..<c { o[(y * S + x) * c + k] = v[(y * w + x) * c + k] } } }
            return o
        }
        s.image = pad(img.pixels, c: 3, fill: 0)
        func checkSize(_ path: String, _ hh: Int, _ ww: Int) throws {
            guard hh == h, ww == w else { throw MTLError("\(path): size \(ww)x\(hh), expected \(w)x\(h) (its image's size)") }
        }
        // semseg
        var segPath = "\(src)/semseg/VOC12/\(id).png"
        if !FileManager.default.fileExists(atPath: segPath) { segPath = "\(src)/semseg/pascal-context/\(id).png" }
        try requireFile(segPath, "semseg label (semseg/VOC12 or semseg/pascal-context)")
        let segR = try PNG.readLabels(segPath)
        try checkSize(segPath, segR.height, segR.width)
        var seg = [Int16](repeating: -1, count: h * w)
        for k in 0..<(h * w) {
            let v = Int(segR.pixels[k])
            if v == 255 { continue }
            if v > 20 { throw MTLError("\(segPath): label \(v) at pixel \(k): expected 0..20 or 255 (ignore)") }
            seg[k] = Int16(v)
        }
        s.seg = pad(seg, fill: -1)
        // Context LabelMap → edges (and normals mask)
        var lmap: [Int]? = nil
        if labelMap {
            let p = "\(src)/pascal-context/trainval/\(id).mat"
            try requireFile(p, "Context LabelMap .mat")
            guard let v = try MatV5.read(p)["LabelMap"] else { throw MTLError("\(p): no variable 'LabelMap'") }
            let (lh, lw, vals) = try rowMajor(v, p, "LabelMap")
            try checkSize(p, lh, lw)
            lmap = vals
        }
        let edgeSource = lmap ?? seg.map { Int($0) }
        let edges = thin(laplacianNonzero(edgeSource, w: w, h: h), w: w, h: h)
        s.edges = pad(edges, fill: 255)
        if parts {
            let p = "\(src)/human_parts/\(id).mat"
            var target: [Int16]? = nil
            if FileManager.default.fileExists(atPath: p) { target = try humanParts(p, h: h, w: w) }
            s.has["parts"] = target == nil ? 0 : 1
            s.parts = pad(target ?? [Int16](repeating: -1, count: h * w), fill: -1)
        }
        if normals {
            let p = "\(src)/normals_distill/\(id).png"
            if FileManager.default.fileExists(atPath: p) {
                let r = try PNG.readRGB8(p)
                try checkSize(p, r.height, r.width)
                var n = r.pixels.map { 2 * Float($0) / 255 - 1 }
                if let lm = lmap {
                    for k in 0..<(h * w) where !normalsValidContext.contains(lm[k]) { n[3 * k] = 0; n[3 * k + 1] = 0; n[3 * k + 2] = 0 }
                }
                renormalize(&n, minNorm: 0.5)  // quantised unit vectors have norm ≈ 1; (127,127,127)-ish means "no normal"
                s.normals = pad(n, c: 3, fill: 0)
                s.has["normals"] = 1
            } else {
                s.normals = [Float](repeating: 0, count: S * S * 3)
                s.has["normals"] = 0
            }
        }
        if sal {
            let p = "\(src)/sal_distill/\(id).png"
            try requireFile(p, "saliency png")
            let r = try PNG.readLabels(p)
            try checkSize(p, r.height, r.width)
            let maxV: UInt16 = r.pixels.contains(where: { $0 > 255 }) ? 65535 : 255
            s.saliency = pad(r.pixels.map { Double($0) / Double(maxV) > 0.5 ? 1 : 0 }, fill: 255)
        }
        return s
    }

    /// PASCAL-Part `anno` → part groups; nil if the image has no person object with an area > 0.
    static func humanParts(_ path: String, h: Int, w: Int) throws -> [Int16]? {
        guard let anno = try MatV5.read(path)["anno"] else { throw MTLError("\(path): no variable 'anno' (expected a PASCAL-Part annotation)") }
        guard let objects = anno.field("objects") else { throw MTLError("\(path): anno has no field 'objects'") }
        var target: [Int16]? = nil
        for k in 0..<objects.count {
            guard let cls = objects.field("class_ind", k)?.numbers?.first, Int(cls) == 15 else { continue }
            if let m = objects.field("mask", k)?.numbers, !m.contains(where: { $0 != 0 }) { continue }  // area 0
            if target == nil { target = [Int16](repeating: 0, count: h * w) }
            guard let partsV = objects.field("parts", k), partsV.count > 0 else { continue }
            for j in 0..<partsV.count {
                guard let name = partsV.field("part_name", j)?.text, let maskV = partsV.field("mask", j) else { continue }
                guard let group = humanPart6[name] else { throw MTLError("\(path): unknown person part '\(name)'") }
                let (mh, mw, mask) = try rowMajor(maskV, path, "part mask \(name)")
                guard mh == h, mw == w else { throw MTLError("\(path): part mask \(name) is \(mw)x\(mh), expected \(w)x\(h)") }
                for i in 0..<(h * w) where mask[i] != 0 { target![i] = group }
            }
        }
        return target
    }
}

/// cv2.Laplacian(ksize=1) ≠ 0 on an integer map: 4-neighbour sum − 4·centre with BORDER_REFLECT_101.
func laplacianNonzero(_ v: [Int], w: Int, h: Int) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: w * h)
    func r(_ i: Int, _ n: Int) -> Int { n == 1 ? 0 : (i < 0 ? -i : (i >= n ? 2 * n - 2 - i : i)) }
    for y in 0..<h {
        for x in 0..<w {
            let c = v[y * w + x]
            let s = v[y * w + r(x - 1, w)] + v[y * w + r(x + 1, w)] + v[r(y - 1, h) * w + x] + v[r(y + 1, h) * w + x]
            if s != 4 * c { out[y * w + x] = 1 }
        }
    }
    return out
}

/// Morphological thinning of a binary map (skimage.morphology.thin: Guo & Hall 1989, two
/// sub-iterations with lookup tables over the 8-neighbourhood, repeated until nothing changes).
func thin(_ img: [UInt8], w: Int, h: Int) -> [UInt8] {
    // Neighbour bit i (mask weights 1..128): right, top-right, top, top-left, left, bottom-left, bottom, bottom-right.
    func bits(_ n: Int) -> [Bool] { (0..<8).map { n >> $0 & 1 == 1 } }
    func g1(_ b: [Bool]) -> Bool {
        var s = 0
        for i in [0, 2, 4, 6] where !b[i] && (b[i + 1] || b[(i + 2) % 8]) { s += 1 }
        return s == 1
    }
    func g2(_ b: [Bool]) -> Bool {
        var n1 = 0, n2 = 0
        for k in [1, 3, 5, 7] {
            if b[k] || b[k - 1] { n1 += 1 }
            if b[k] || b[(k + 1) % 8] { n2 += 1 }
        }
        let m = min(n1, n2)
        return m == 2 || m == 3
    }
    func g3(_ b: [Bool]) -> Bool { !((b[1] || b[2] || !b[7]) && b[0]) }
    func g3p(_ b: [Bool]) -> Bool { !((b[5] || b[6] || !b[3]) && b[4]) }
    let lut1 = (0..<256).map { n -> Bool in let b = bits(n); return g1(b) && g2(b) && g3(b) }
    let lut2 = (0..<256).map { n -> Bool in let b = bits(n); return g1(b) && g2(b) && g3p(b) }
    var sk = img.map { $0 != 0 ? UInt8(1) : 0 }
    func at(_ x: Int, _ y: Int) -> Int { x < 0 || y < 0 || x >= w || y >= h ? 0 : Int(sk[y * w + x]) }
    var changed = true
    var del = [Int]()
    while changed {
        changed = false
        for lut in [lut1, lut2] {
            del.removeAll(keepingCapacity: true)
            for y in 0..<h {
                for x in 0..<w where sk[y * w + x] != 0 {
                    let n = at(x + 1, y) | at(x + 1, y - 1) << 1 | at(x, y - 1) << 2 | at(x - 1, y - 1) << 3
                        | at(x - 1, y) << 4 | at(x - 1, y + 1) << 5 | at(x, y + 1) << 6 | at(x + 1, y + 1) << 7
                    if lut[n] { del.append(y * w + x) }
                }
            }
            for i in del { sk[i] = 0 }
            if !del.isEmpty { changed = true }
        }
    }
    return sk
}
