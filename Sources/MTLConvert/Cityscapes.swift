import Foundation
import MTLCore

/// Cityscapes official layout (DATASETS.md §2): leftImg8bit/ + gtFine/ (+ disparity/ + camera/).
enum CityscapesConverter {
    /// labelId 0..33 → trainId (255 = ignore), from cityscapesScripts helpers/labels.py.
    static let trainId: [Int] = [255, 255, 255, 255, 255, 255, 255, 0, 1, 255, 255, 2, 3, 4, 255, 255, 255,
                                 5, 255, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 255, 255, 16, 17, 18]
    /// labelId 0..33 → catId (0 = void), same source.
    static let catId: [Int] = [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 5, 6, 6,
                               7, 7, 7, 7, 7, 7, 7, 7]
    static let names19 = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                          "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                          "motorcycle", "bicycle"]
    static let names7 = ["flat", "construction", "object", "nature", "sky", "human", "vehicle"]

    /// The class (0-based) for a Cityscapes labelId, −1 = ignore.
    static func mapLabel(_ id: Int, classes: Int) -> Int16 {
        guard id >= 0, id < 34 else { return -1 }
        if classes == 19 { let t = trainId[id]; return t == 255 ? -1 : Int16(t) }
        let c = catId[id]; return c == 0 ? -1 : Int16(c - 1)
    }

    struct Item { var split: String; var city: String; var stem: String }

    static func run(src: String, out: String, options: ConvertOptions, progress: (String) -> Void) throws -> String {
        let classes = options.classes ?? 19
        guard classes == 19 || classes == 7 else { throw MTLError("cityscapes: --classes \(classes): expected 19 (trainId) or 7 (categories)") }
        let hasDepth = isDirectory("\(src)/disparity")
        if hasDepth, !isDirectory("\(src)/camera") {
            throw MTLError("\(src)/camera: folder not found (needed with disparity/ to convert disparity to metres)")
        }
        var splitItems: [(String, [Item])] = []
        for split in ["train", "val"] {
            let imgDir = "\(src)/leftImg8bit/\(split)"
            let gtDir = "\(src)/gtFine/\(split)"
            guard isDirectory(imgDir) else { throw MTLError("\(imgDir): folder not found (expected leftImg8bit/{train,val}/<city>/*_leftImg8bit.png)") }
            guard isDirectory(gtDir) else { throw MTLError("\(gtDir): folder not found (expected gtFine/{train,val}/<city>/*_gtFine_labelIds.png)") }
            var items: [Item] = []
            var nLabels = 0
            for city in try listDir(imgDir) where isDirectory("\(imgDir)/\(city)") {
                for f in try listDir("\(imgDir)/\(city)") where f.hasSuffix("_leftImg8bit.png") {
                    items.append(Item(split: split, city: city, stem: String(f.dropLast("_leftImg8bit.png".count))))
                }
                if isDirectory("\(gtDir)/\(city)") {
                    nLabels += try listDir("\(gtDir)/\(city)").filter { $0.hasSuffix("_gtFine_labelIds.png") }.count
                }
            }
            if items.isEmpty { throw MTLError("\(imgDir): no *_leftImg8bit.png images") }
            if nLabels != items.count {
                throw MTLError("\(gtDir): \(nLabels) *_gtFine_labelIds.png files, expected \(items.count) (one per image in \(imgDir))")
            }
            splitItems.append((split, items))
        }
        let firstItem = splitItems[0].1[0]
        let first = try PNG.readRGB8("\(src)/leftImg8bit/train/\(firstItem.city)/\(firstItem.stem)_leftImg8bit.png")
        let W0 = first.width, H0 = first.height
        let H = options.height ?? H0, W = options.width ?? W0
        let tasks = hasDepth ? ["seg", "depth"] : ["seg"]
        let root = Converter.rootAttrs(dataset: "cityscapes", variant: "cs-\(H)x\(W)-\(classes)", tasks: tasks,
                                       source: "Cityscapes leftImg8bit/gtFine\(hasDepth ? "/disparity/camera" : ""): \(src)")
        return try Converter.withWriter(out: out, root: root) { w in
            var lines: [String] = []
            for (split, items) in splitItems {
                var specs = [
                    DatasetSpec(name: "images", type: .u8, sampleShape: [H, W, 3], deflate: nil,
                                attrs: [("mean", imagenetMean), ("std", imagenetStd), ("units", "RGB 0..255; mean/std for pixels/255 (ImageNet)")]),
                    DatasetSpec(name: "seg", type: .i16, sampleShape: [H, W], deflate: 4,
                                attrs: [("num_classes", classes), ("class_names", classes == 19 ? names19 : names7), ("ignore_value", -1),
                                        ("mapping", classes == 19 ? "cityscapesScripts labels.py labelId->trainId (255 -> -1)"
                                            : "cityscapesScripts labels.py labelId->catId-1 (void -> -1; ignoreInEval labels kept in their category)")]),
                ]
                if hasDepth {
                    specs.append(DatasetSpec(name: "depth", type: .f32, sampleShape: [H, W], deflate: nil,
                                             attrs: [("units", "m"), ("depth_kind", "metric_m"), ("invalid_value", 0.0),
                                                     ("mapping", "disparity png p>0: d=(p-1)/256; depth = baseline*fx/d (camera json); d=0 -> 0; nearest resize after conversion")]))
                }
                let r = try convertSplit(w, split: split, count: items.count, height: H, width: W,
                                         splitSource: "leftImg8bit/\(split)", datasets: specs, progress: progress, fetch: { items[$0] }) { it, _ in
                    try sample(src: src, it, W0: W0, H0: H0, W: W, H: H, classes: classes, depth: hasDepth)
                }
                lines.append("\(split) \(items.count) samples in \(String(format: "%.1f", r.seconds)) s")
            }
            return "cityscapes: wrote \(out) (\(H)x\(W), \(classes) classes, \(tasks.joined(separator: "/"))): " + lines.joined(separator: ", ") + "."
        }
    }

    static func sample(src: String, _ it: Item, W0: Int, H0: Int, W: Int, H: Int, classes: Int, depth: Bool) throws -> Sample {
        let base = "\(it.split)/\(it.city)/\(it.stem)"
        var s = Sample()
        s.id = it.stem
        let imgPath = "\(src)/leftImg8bit/\(base)_leftImg8bit.png"
        let img = try PNG.readRGB8(imgPath)
        guard img.width == W0, img.height == H0 else {
            throw MTLError("\(imgPath): image size \(img.width)x\(img.height), expected \(W0)x\(H0) (the size of the first image)")
        }
        s.image = resizeBilinearU8(img.pixels, w: W0, h: H0, c: 3, toW: W, toH: H)
        let labPath = "\(src)/gtFine/\(base)_gtFine_labelIds.png"
        try requireFile(labPath, "label (one *_gtFine_labelIds.png per image)")
        let lab = try PNG.readLabels(labPath)
        guard lab.width == W0, lab.height == H0 else {
            throw MTLError("\(labPath): label size \(lab.width)x\(lab.height), expected \(W0)x\(H0) (its image's size)")
        }
        var lut = [Int16](repeating: -1, count: 65536)
        for id in 0..<34 { lut[id] = mapLabel(id, classes: classes) }
        let seg = lab.pixels.map { lut[Int($0)] }
        s.seg = resizeNearest(seg, w: W0, h: H0, toW: W, toH: H)
        if depth {
            let dPath = "\(src)/disparity/\(base)_disparity.png"
            try requireFile(dPath, "disparity")
            let disp = try PNG.readGray16(dPath)
            guard disp.width == W0, disp.height == H0 else {
                throw MTLError("\(dPath): disparity size \(disp.width)x\(disp.height), expected \(W0)x\(H0)")
            }
            let camPath = "\(src)/camera/\(base)_camera.json"
            try requireFile(camPath, "camera json")
            let (baseline, fx) = try camera(camPath)
            var d = [Float](repeating: 0, count: W0 * H0)
            let bf = Float(baseline * fx)
            for k in 0..<d.count {
                let p = disp.pixels[k]
                if p > 1 { d[k] = bf / ((Float(p) - 1) / 256) }
            }
            s.depth = resizeNearest(d, w: W0, h: H0, toW: W, toH: H)
        }
        return s
    }

    static func camera(_ path: String) throws -> (Double, Double) {
        let data = try readFileBytes(path)
        guard let obj = try? JSONSerialization.jsonObject(with: Data(data)) as? [String: Any],
              let ext = obj["extrinsic"] as? [String: Any], let intr = obj["intrinsic"] as? [String: Any],
              let b = (ext["baseline"] as? NSNumber)?.doubleValue, let fx = (intr["fx"] as? NSNumber)?.doubleValue else {
            throw MTLError("\(path): expected camera JSON with extrinsic.baseline and intrinsic.fx")
        }
        guard b > 0, fx > 0 else { throw MTLError("\(path): baseline \(b) and fx \(fx): expected positive values") }
        return (b, fx)
    }
}
