import Foundation
import MTLCore

/// Official NYU Depth V2 labeled subset (DATASETS.md §1.1–1.3).
enum NYUv2Converter {
    static let H = 480, W = 640
    /// NYU camera intrinsics (colour camera, 640×480), from the NYU toolbox camera_params.m.
    static let fx: Float = 518.8579, fy: Float = 519.4696, cx: Float = 325.5824, cy: Float = 253.7362
    /// class13Mapping.mat `labels13` (1-based 13-class id for 40-classes 1..40), DATASETS.md §1.2.
    static let labels13: [Int] = [12, 5, 6, 1, 4, 9, 10, 12, 13, 6, 8, 6, 13, 10, 6, 13, 6, 7, 7, 5, 7, 3, 2, 6, 11, 7, 7, 7, 7, 7,
                                  7, 6, 7, 7, 7, 7, 7, 7, 6, 7]
    static let names13 = MTANConverter.classNames13
    static let names40 = ["wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
                          "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
                          "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
                          "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
                          "otherprop"]

    struct Raw { var frame: Int; var image: [UInt8]; var depth: [Float]; var labels: [UInt16] }

    static func run(src: String, out: String, options: ConvertOptions, progress: (String) -> Void) throws -> String {
        let classes = options.classes ?? 13
        guard classes == 13 || classes == 40 else { throw MTLError("nyuv2: --classes \(classes): expected 13 or 40") }
        let matPath = isDirectory(src) ? "\(src)/nyu_depth_v2_labeled.mat" : src
        let dir = (matPath as NSString).deletingLastPathComponent
        let splitsPath = options.splitsFile ?? "\(dir.isEmpty ? "." : dir)/splits.mat"
        let mapPath = options.classMapFile ?? "\(dir.isEmpty ? "." : dir)/classMapping40.mat"
        try requireFile(matPath, "nyu_depth_v2_labeled.mat")
        try requireFile(splitsPath, "splits.mat (pass --splits)")
        try requireFile(mapPath, "classMapping40.mat with mapClass (894 -> 40), pass --class-map")

        // 894 → 40 → classes, with raw 0 (unlabeled) → −1.
        let maps = try MatV5.read(mapPath)
        guard let mapClass = maps["mapClass"]?.numbers else {
            throw MTLError("\(mapPath): no numeric variable 'mapClass' (expected classMapping40.mat, found \(maps.keys.sorted()))")
        }
        guard mapClass.count >= 894, mapClass.allSatisfy({ $0 >= 1 && $0 <= 40 }) else {
            throw MTLError("\(mapPath): mapClass: expected 894 values in 1..40, found \(mapClass.count) values in \(mapClass.min() ?? 0)..\(mapClass.max() ?? 0)")
        }
        var lut = [Int16](repeating: -1, count: 65536)
        for raw in 1...mapClass.count {
            let c40 = Int(mapClass[raw - 1])
            lut[raw] = Int16(classes == 40 ? c40 - 1 : labels13[c40 - 1] - 1)
        }

        let splits = try MatV5.read(splitsPath)
        guard let train = splits["trainNdxs"]?.numbers, let test = splits["testNdxs"]?.numbers else {
            throw MTLError("\(splitsPath): expected variables trainNdxs and testNdxs, found \(splits.keys.sorted())")
        }

        let f = try H5File.open(matPath)
        defer { f.close() }
        for name in ["images", "depths", "labels"] where !f.exists(name) {
            throw MTLError("\(matPath): no dataset '\(name)' (expected the official nyu_depth_v2_labeled.mat)")
        }
        let si = try f.shape("images"), sd = try f.shape("depths"), sl = try f.shape("labels")
        let N = si.first ?? 0
        guard si == [N, 3, W, H] else { throw MTLError("\(matPath): images: expected shape (N, 3, 640, 480) (MATLAB 480x640x3xN), found \(si)") }
        guard sd == [N, W, H] else { throw MTLError("\(matPath): depths: expected shape (\(N), 640, 480), found \(sd)") }
        guard sl == [N, W, H] else { throw MTLError("\(matPath): labels: expected shape (\(N), 640, 480), found \(sl)") }
        for (name, idx) in [("trainNdxs", train), ("testNdxs", test)] {
            if let bad = idx.first(where: { $0 < 1 || $0 > Double(N) || $0 != $0.rounded() }) {
                throw MTLError("\(splitsPath): \(name) holds \(bad): expected 1-based frame indices in 1..\(N)")
            }
        }
        if let nd = options.normalsDir, !isDirectory(nd) { throw MTLError("\(nd): normals folder not found") }

        let oH = options.height ?? H, oW = options.width ?? W
        let variant = "official-\(oH)x\(oW)-\(classes)"
        let root = Converter.rootAttrs(dataset: "nyuv2", variant: variant, tasks: ["seg", "depth", "normals"],
                                       source: "nyu_depth_v2_labeled.mat + splits.mat + classMapping40.mat: \(matPath)")
        var imgBuf = [UInt8](repeating: 0, count: 3 * W * H)
        var depBuf = [Float](repeating: 0, count: W * H)
        var labBuf = [UInt16](repeating: 0, count: W * H)
        // Serial HDF5 reads, transposed from MATLAB's column-major layout: element (c, x, y) of a frame.
        func fetch(_ frame: Int) throws -> Raw {
            let i = frame - 1
            try imgBuf.withUnsafeMutableBufferPointer { try f.readSlab("images", start: [i, 0, 0, 0], count: [1, 3, W, H], into: $0.baseAddress!) }
            try depBuf.withUnsafeMutableBufferPointer { try f.readSlab("depths", start: [i, 0, 0], count: [1, W, H], into: $0.baseAddress!) }
            try labBuf.withUnsafeMutableBufferPointer { try f.readSlab("labels", start: [i, 0, 0], count: [1, W, H], into: $0.baseAddress!) }
            return Raw(frame: frame, image: imgBuf, depth: depBuf, labels: labBuf)
        }
        let normalsDir = options.normalsDir
        return try Converter.withWriter(out: out, root: root) { w in
            var lines: [String] = []
            for (split, name, idx) in [("train", "trainNdxs", train), ("val", "testNdxs", test)] {
                let frames = idx.map { Int($0) }
                let specs = [
                    DatasetSpec(name: "images", type: .u8, sampleShape: [oH, oW, 3], deflate: nil,
                                attrs: [("mean", imagenetMean), ("std", imagenetStd), ("units", "RGB 0..255; mean/std for pixels/255 (ImageNet)")]),
                    DatasetSpec(name: "seg", type: .i16, sampleShape: [oH, oW], deflate: 4,
                                attrs: [("num_classes", classes), ("class_names", classes == 13 ? names13 : names40), ("ignore_value", -1),
                                        ("mapping", classes == 13 ? "classMapping40.mat mapClass (894->40), class13Mapping labels13 (40->13), minus 1; raw 0 -> -1"
                                                                   : "classMapping40.mat mapClass (894->40) minus 1; raw 0 -> -1")]),
                    DatasetSpec(name: "depth", type: .f32, sampleShape: [oH, oW], deflate: nil,
                                attrs: [("units", "m"), ("depth_kind", "metric_m"), ("invalid_value", 0.0), ("mapping", "depths (in-painted), transposed")]),
                    DatasetSpec(name: "normals", type: .f32, sampleShape: [oH, oW, 3], deflate: nil,
                                attrs: [("invalid_value", 0.0),
                                        ("units", "unit vector in camera coordinates (x right, y down, z forward), facing the camera"),
                                        ("mapping", normalsDir != nil ? "read from \(normalsDir!)" :
                                            "from depth: back-projection with fx=518.8579 fy=519.4696 cx=325.5824 cy=253.7362, cross product of central differences, oriented toward the camera, 0 at borders/invalid depth/discontinuities (>5% relative jump)")]),
                ]
                let r = try convertSplit(w, split: split, count: frames.count, height: oH, width: oW,
                                         splitSource: "splits.mat:\(name)", datasets: specs, progress: progress,
                                         fetch: { try fetch(frames[$0]) }) { raw, _ in
                    try sample(raw, lut: lut, oH: oH, oW: oW, normalsDir: normalsDir, matPath: matPath)
                }
                lines.append("\(split) \(frames.count) frames in \(String(format: "%.1f", r.seconds)) s")
            }
            return "nyuv2: wrote \(out) (\(oH)x\(oW), \(classes) classes, seg/depth/normals\(normalsDir == nil ? " (normals computed from depth)" : "")): " + lines.joined(separator: ", ") + "."
        }
    }

    static func sample(_ raw: Raw, lut: [Int16], oH: Int, oW: Int, normalsDir: String?, matPath: String) throws -> Sample {
        var s = Sample()
        s.id = String(raw.frame)
        let plane = W * H
        var image = [UInt8](repeating: 0, count: 3 * plane)
        var depth = [Float](repeating: 0, count: plane)
        var seg = [Int16](repeating: -1, count: plane)
        for y in 0..<H {
            for x in 0..<W {
                let src = x * H + y, dst = y * W + x
                for c in 0..<3 { image[3 * dst + c] = raw.image[c * plane + src] }
                let d = raw.depth[src]
                if !d.isFinite { throw MTLError("\(matPath): depths[\(raw.frame)]: non-finite depth at (y \(y), x \(x))") }
                depth[dst] = max(0, d)
                let l = Int(raw.labels[src])
                if l > 894 { throw MTLError("\(matPath): labels[\(raw.frame)]: label \(l) at (y \(y), x \(x)): expected 0..894") }
                seg[dst] = lut[l]
            }
        }
        var normals: [Float]
        if let nd = normalsDir {
            normals = try readNormals(dir: nd, frame: raw.frame)
        } else {
            normals = normalsFromDepth(depth, width: W, height: H, fx: fx, fy: fy, cx: cx, cy: cy)
        }
        s.image = resizeBilinearU8(image, w: W, h: H, c: 3, toW: oW, toH: oH)
        s.seg = resizeNearest(seg, w: W, h: H, toW: oW, toH: oH)
        s.depth = resizeNearest(depth, w: W, h: H, toW: oW, toH: oH)
        s.normals = resizeNormals(normals, w: W, h: H, toW: oW, toH: oH)
        return s
    }

    /// `<dir>/<frame>.npy` (480, 640, 3) float in [-1, 1] or `<dir>/<frame>.png` RGB with n = 2v/255 − 1
    /// (frame = 1-based NYU index, optionally zero-padded to 4 digits).
    static func readNormals(dir: String, frame: Int) throws -> [Float] {
        for name in [String(frame), String(format: "%04d", frame)] {
            let npy = "\(dir)/\(name).npy", png = "\(dir)/\(name).png"
            if FileManager.default.fileExists(atPath: npy) {
                let a = try Npy.read(npy)
                guard a.shape == [H, W, 3] else { throw MTLError("\(npy): expected shape (480, 640, 3), found \(a.shape)") }
                var n = a.floats(); renormalize(&n); return n
            }
            if FileManager.default.fileExists(atPath: png) {
                let r = try PNG.readRGB8(png)
                guard r.width == W, r.height == H else { throw MTLError("\(png): expected 640x480, found \(r.width)x\(r.height)") }
                var n = r.pixels.map { 2 * Float($0) / 255 - 1 }; renormalize(&n, minNorm: 0.5); return n
            }
        }
        throw MTLError("\(dir)/\(frame).npy: missing normals for frame \(frame) (expected <frame>.npy or <frame>.png)")
    }
}

/// Surface normals from a depth map (metres, 0 = invalid): back-project every pixel to
/// P = ((u − cx)·z/fx, (v − cy)·z/fy, z), take central differences along x and y, n = dPdx × dPdy,
/// normalised and flipped to face the camera (n·P < 0). Zero (invalid) at the border, where any of
/// the four neighbours has no depth, or across a depth discontinuity (a neighbour differs from the
/// centre by more than 5% of its depth).
public func normalsFromDepth(_ depth: [Float], width W: Int, height H: Int, fx: Float, fy: Float, cx: Float, cy: Float,
                             maxRelativeJump: Float = 0.05) -> [Float] {
    var n = [Float](repeating: 0, count: W * H * 3)
    if W < 3 || H < 3 { return n }
    for y in 1..<(H - 1) {
        for x in 1..<(W - 1) {
            let z = depth[y * W + x]
            let zl = depth[y * W + x - 1], zr = depth[y * W + x + 1], zu = depth[(y - 1) * W + x], zd = depth[(y + 1) * W + x]
            if z <= 0 || zl <= 0 || zr <= 0 || zu <= 0 || zd <= 0 { continue }
            let lim = maxRelativeJump * z
            if abs(zl - z) > lim || abs(zr - z) > lim || abs(zu - z) > lim || abs(zd - z) > lim { continue }
            func p(_ u: Int, _ v: Int, _ zz: Float) -> (Float, Float, Float) { ((Float(u) - cx) * zz / fx, (Float(v) - cy) * zz / fy, zz) }
            let pl = p(x - 1, y, zl), pr = p(x + 1, y, zr), pu = p(x, y - 1, zu), pd = p(x, y + 1, zd)
            let ax = pr.0 - pl.0, ay = pr.1 - pl.1, az = pr.2 - pl.2
            let bx = pd.0 - pu.0, by = pd.1 - pu.1, bz = pd.2 - pu.2
            var nx = ay * bz - az * by, ny = az * bx - ax * bz, nz = ax * by - ay * bx
            let len = (nx * nx + ny * ny + nz * nz).squareRoot()
            if len < 1e-12 { continue }
            let pc = p(x, y, z)
            if nx * pc.0 + ny * pc.1 + nz * pc.2 > 0 { nx = -nx; ny = -ny; nz = -nz }
            let o = 3 * (y * W + x)
            n[o] = nx / len; n[o + 1] = ny / len; n[o + 2] = nz / len
        }
    }
    return n
}
