import Foundation
import MTLCore

/// MTAN / LibMTL preprocessed NYUv2: {train,val}/{image,label,depth,normal}/<i>.npy (DATASETS.md §1.4).
enum MTANConverter {
    static let classNames13 = ["bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture",
                               "sofa", "table", "tv", "wall", "window"]

    static func run(src: String, out: String, options: ConvertOptions, progress: (String) -> Void) throws -> String {
        if options.classes != nil && options.classes != 13 {
            throw MTLError("nyuv2-mtan: --classes \(options.classes!): the MTAN files hold 13 classes (expected 13)")
        }
        var splits: [(String, Int)] = []
        for split in ["train", "val"] {
            let dir = "\(src)/\(split)"
            guard isDirectory(dir) else { throw MTLError("\(dir): folder not found (expected the MTAN layout \(split)/{image,label,depth,normal}/<i>.npy)") }
            var counts: [String: Int] = [:]
            for t in ["image", "label", "depth", "normal"] {
                counts[t] = try listDir("\(dir)/\(t)").filter { $0.hasSuffix(".npy") }.count
            }
            for t in ["label", "depth", "normal"] where counts[t] != counts["image"] {
                throw MTLError("\(dir)/\(t): \(counts[t]!) .npy files, expected \(counts["image"]!) (as many as \(dir)/image)")
            }
            if counts["image"] == 0 { throw MTLError("\(dir)/image: no .npy files (expected 0.npy ... N-1.npy)") }
            splits.append((split, counts["image"]!))
        }
        // Size from the first image; every other file must agree.
        let first = try Npy.read("\(src)/train/image/0.npy")
        guard first.shape.count == 3, first.shape[2] == 3 else {
            throw MTLError("\(src)/train/image/0.npy: expected shape (H, W, 3), found \(first.shape)")
        }
        let H0 = first.shape[0], W0 = first.shape[1]
        let H = options.height ?? H0, W = options.width ?? W0
        let root = Converter.rootAttrs(dataset: "nyuv2", variant: "mtan-\(H)x\(W)-13", tasks: ["seg", "depth", "normals"],
                                       source: "MTAN/LibMTL preprocessed nyuv2 (.npy): \(src)")
        return try Converter.withWriter(out: out, root: root) { w in
            var lines: [String] = []
            for (split, n) in splits {
                let specs = [
                    DatasetSpec(name: "images", type: .u8, sampleShape: [H, W, 3], deflate: nil,
                                attrs: [("mean", [0.0, 0.0, 0.0]), ("std", [1.0, 1.0, 1.0]), ("units", "RGB 0..255; [0,1] after /255 (MTAN feeds [0,1]: identity mean/std)")]),
                    DatasetSpec(name: "seg", type: .i16, sampleShape: [H, W], deflate: 4,
                                attrs: [("num_classes", 13), ("class_names", classNames13), ("ignore_value", -1), ("mapping", "MTAN label npy as stored (-1 ignore)")]),
                    DatasetSpec(name: "depth", type: .f32, sampleShape: [H, W], deflate: nil,
                                attrs: [("units", "m"), ("depth_kind", "metric_m"), ("invalid_value", 0.0)]),
                    DatasetSpec(name: "normals", type: .f32, sampleShape: [H, W, 3], deflate: nil,
                                attrs: [("units", "unit vector (x, y, z) as stored by MTAN, renormalised"), ("invalid_value", 0.0)]),
                ]
                let dir = "\(src)/\(split)"
                let r = try convertSplit(w, split: split, count: n, height: H, width: W, splitSource: "\(split)/image/*.npy",
                                         datasets: specs, progress: progress, fetch: { $0 }) { i, _ in
                    try sample(dir: dir, i: i, H0: H0, W0: W0, H: H, W: W)
                }
                lines.append("\(split) \(n) samples in \(String(format: "%.1f", r.seconds)) s")
            }
            return "nyuv2-mtan: wrote \(out) (\(H)x\(W), 13 classes, seg/depth/normals): " + lines.joined(separator: ", ") + "."
        }
    }

    static func load(_ path: String, expect: [[Int]]) throws -> [Float] {
        let a = try Npy.read(path)
        guard expect.contains(a.shape) else {
            throw MTLError("\(path): expected shape \(expect.map { "(" + $0.map(String.init).joined(separator: ", ") + ")" }.joined(separator: " or ")), found \(a.shape)")
        }
        let v = a.floats()
        if let bad = v.firstIndex(where: { !$0.isFinite }) { throw MTLError("\(path): non-finite value \(v[bad]) at flat index \(bad)") }
        return v
    }

    static func sample(dir: String, i: Int, H0: Int, W0: Int, H: Int, W: Int) throws -> Sample {
        var s = Sample()
        s.id = "\(dir.split(separator: "/").last!)/\(i)"
        let imgPath = "\(dir)/image/\(i).npy"
        try requireFile(imgPath, "image")
        let img = try load(imgPath, expect: [[H0, W0, 3]])
        var image = [UInt8](repeating: 0, count: img.count)
        for k in 0..<img.count {
            let v = img[k]
            if v < -0.01 || v > 1.01 { throw MTLError("\(imgPath): pixel value \(v) at flat index \(k): expected float RGB in [0, 1]") }
            image[k] = UInt8(min(255, max(0, (v * 255).rounded())))
        }
        s.image = resizeBilinearU8(image, w: W0, h: H0, c: 3, toW: W, toH: H)
        let labPath = "\(dir)/label/\(i).npy"
        let lab = try load(labPath, expect: [[H0, W0], [H0, W0, 1]])
        var seg = [Int16](repeating: -1, count: lab.count)
        for k in 0..<lab.count {
            let v = lab[k].rounded()
            if v < -1 || v > 12 { throw MTLError("\(labPath): label \(lab[k]) at flat index \(k): expected -1 (ignore) or 0..12") }
            seg[k] = Int16(v)
        }
        s.seg = resizeNearest(seg, w: W0, h: H0, toW: W, toH: H)
        let dPath = "\(dir)/depth/\(i).npy"
        var depth = try load(dPath, expect: [[H0, W0, 1], [H0, W0]])
        for k in 0..<depth.count where depth[k] < 0 { throw MTLError("\(dPath): negative depth \(depth[k]) at flat index \(k) (expected metres, 0 = invalid)") }
        depth = resizeNearest(depth, w: W0, h: H0, toW: W, toH: H)
        s.depth = depth
        var normals = try load("\(dir)/normal/\(i).npy", expect: [[H0, W0, 3]])
        renormalize(&normals)
        s.normals = resizeNormals(normals, w: W0, h: H0, toW: W, toH: H)
        return s
    }
}
