import Foundation
import MTLCore
@testable import MTLConvert
import MTLData
import XCTest

final class ConverterTests: XCTestCase {
    func convert(_ kind: String, _ src: String, _ out: String, _ o: ConvertOptions = ConvertOptions()) throws -> String {
        var lines: [String] = []
        let t0 = Date()
        let s = try Converter.run(kind: kind, src: src, out: out, options: o) { lines.append($0) }
        print("[\(kind)] \(String(format: "%.2f", Date().timeIntervalSince(t0))) s: \(s)")
        XCTAssertFalse(lines.isEmpty, "progress lines")
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + ".tmp"))
        return s
    }

    func checkRoot(_ f: H5File, dataset: String) {
        XCTAssertEqual(f.stringAttribute("/", "format"), "mtdp-hdf5")
        XCTAssertEqual(f.intAttribute("/", "format_version"), 1)
        XCTAssertEqual(f.stringAttribute("/", "dataset"), dataset)
        for a in ["variant", "tasks", "converter", "converter_version", "created_utc", "source", "meta_json"] {
            XCTAssertNotNil(f.stringAttribute("/", a), a)
        }
        let meta = try! JSONSerialization.jsonObject(with: f.stringAttribute("/", "meta_json")!.data(using: .utf8)!) as! [String: Any]
        XCTAssertEqual(meta["dataset"] as? String, dataset)
        XCTAssertNotNil((meta["train"] as? [String: Any])?["images"])
    }

    /// The stored sha256 equals a recomputation over the read-back bytes.
    func checkSHA<T: H5Scalar>(_ f: H5File, _ path: String, _ type: T.Type) throws {
        let v = try f.read(path, as: T.self)
        var h = SHA256(); v.withUnsafeBytes { h.update($0) }
        XCTAssertEqual(f.stringAttribute(path, "sha256"), h.finalizeHex(), path)
    }

    // MARK: nyuv2-mtan

    func testMTAN() throws {
        let dir = makeTempDir("mtan"), src = dir + "/nyuv2"
        let H = 12, W = 16
        func write(_ split: String, _ n: Int) throws {
            for t in ["image", "label", "depth", "normal"] { mkdirs("\(src)/\(split)/\(t)") }
            for i in 0..<n {
                let img = (0..<(H * W * 3)).map { Double(($0 + i * 7) % 256) / 255 }
                try Npy.write("\(src)/\(split)/image/\(i).npy", doubles: img, shape: [H, W, 3])
                let lab = (0..<(H * W)).map { Double($0 % 14) - 1 }  // −1..12
                try Npy.write("\(src)/\(split)/label/\(i).npy", doubles: lab, shape: [H, W])
                try Npy.write("\(src)/\(split)/depth/\(i).npy", floats: (0..<(H * W)).map { Float($0 % 5) * 0.5 }, shape: [H, W, 1])
                try Npy.write("\(src)/\(split)/normal/\(i).npy", floats: (0..<(H * W * 3)).map { $0 % 3 == 2 ? 2 : 0 }, shape: [H, W, 3])
            }
        }
        try write("train", 5); try write("val", 3)
        let out = dir + "/mtan.h5"
        _ = try convert("nyuv2-mtan", src, out)
        let f = try H5File.open(out)
        checkRoot(f, dataset: "nyuv2")
        XCTAssertEqual(try f.shape("/train/images"), [5, H, W, 3])
        XCTAssertEqual(try f.shape("/val/normals"), [3, H, W, 3])
        XCTAssertEqual(f.intAttribute("/val", "num_samples"), 3)
        XCTAssertEqual(f.numericAttribute("/train/images", "std"), [1, 1, 1])
        let img = try f.read("/train/images", as: UInt8.self)
        XCTAssertEqual(img[0..<6].map { Int($0) }, [0, 1, 2, 3, 4, 5])
        XCTAssertEqual(img[H * W * 3 + 1], 8, "sample 1 offset by 7")
        let seg = try f.read("/val/seg", as: Int16.self)
        XCTAssertEqual(seg[0..<15].map { Int($0) }, [-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, -1])
        XCTAssertEqual(try f.read("/train/depth", as: Float.self)[0..<3].map { $0 }, [0, 0.5, 1])
        XCTAssertEqual(try f.read("/train/normals", as: Float.self)[0..<3].map { $0 }, [0, 0, 1], "renormalised")
        XCTAssertEqual(try f.readStrings("/val/ids"), ["val/0", "val/1", "val/2"])
        try checkSHA(f, "/train/seg", Int16.self); try checkSHA(f, "/val/normals", Float.self)
        f.close()

        let ds = try MTDataset(path: out, split: "train", tasks: ["seg", "depth", "normals"])
        XCTAssertEqual(ds.count, 5); XCTAssertEqual(ds.height, H); XCTAssertEqual(ds.numClasses("seg"), 13)
        let b = Batch()
        try ds.load([4, 0], into: b)
        XCTAssertEqual(b.targets["seg"]!.array[0..<3].map { $0 }, [-1, 0, 1])
        XCTAssertEqual(b.images.array[1], 31.0 / 255, accuracy: 1e-6, "identity mean/std: x/255; sample 4, red of pixel (0, 1) = (3 + 4*7)/255")

        // Resize to 6×8 and bad inputs.
        var o = ConvertOptions(); o.height = 6; o.width = 8
        _ = try convert("nyuv2-mtan", src, dir + "/small.h5", o)
        XCTAssertEqual(try H5File.open(dir + "/small.h5").shape("/train/seg"), [5, 6, 8])
        try FileManager.default.removeItem(atPath: "\(src)/val/depth/2.npy")
        XCTAssertThrowsError(try convert("nyuv2-mtan", src, dir + "/bad.h5")) {
            XCTAssertTrue("\($0)".contains("val/depth: 2 .npy files, expected 3"), "\($0)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/bad.h5.tmp"))
        try Npy.write("\(src)/val/depth/2.npy", floats: [Float](repeating: 1, count: 5 * 5), shape: [5, 5])
        XCTAssertThrowsError(try convert("nyuv2-mtan", src, dir + "/bad.h5")) {
            XCTAssertTrue("\($0)".contains("val/depth/2.npy: expected shape (12, 16, 1) or (12, 16), found [5, 5]"), "\($0)")
        }
        XCTAssertThrowsError(try convert("nyuv2-mtan", dir + "/nope", dir + "/bad.h5")) { XCTAssertTrue("\($0)".contains("not found"), "\($0)") }
    }

    // MARK: cityscapes

    func makeCityscapes(_ root: String, W: Int, H: Int, counts: [String: Int]) throws {
        for (split, n) in counts {
            for i in 0..<n {
                let city = i % 2 == 0 ? "aachen" : "bremen"
                let stem = "\(city)_\(String(format: "%06d", i))_000019"
                for t in ["leftImg8bit", "gtFine", "disparity", "camera"] { mkdirs("\(root)/\(t)/\(split)/\(city)") }
                let img = (0..<(W * H * 3)).map { UInt8(($0 * 3 + i) % 256) }
                try PNG.writeRGB8("\(root)/leftImg8bit/\(split)/\(city)/\(stem)_leftImg8bit.png", width: W, height: H, img)
                let lab = (0..<(W * H)).map { UInt8($0 % 36) }  // 0..35 (34, 35 are out of the table)
                try PNG.writeGray8("\(root)/gtFine/\(split)/\(city)/\(stem)_gtFine_labelIds.png", width: W, height: H, lab)
                let disp: [UInt16] = (0..<(W * H)).map { (k: Int) -> UInt16 in k % 4 == 0 ? 0 : UInt16(1 + 256 * (1 + k % 7)) }  // 0 invalid, else disparity 1..7 px
                try PNG.writeGray16("\(root)/disparity/\(split)/\(city)/\(stem)_disparity.png", width: W, height: H, disp)
                writeText("\(root)/camera/\(split)/\(city)/\(stem)_camera.json",
                          "{\"extrinsic\": {\"baseline\": 0.209313, \"pitch\": 0.038, \"roll\": 0.0, \"x\": 1.7, \"y\": 0.1, \"yaw\": -0.0195, \"z\": 1.22},"
                          + " \"intrinsic\": {\"fx\": 2262.52, \"fy\": 2265.3017905988554, \"u0\": 1096.98, \"v0\": 513.137}}")
            }
        }
    }

    func testCityscapes() throws {
        let dir = makeTempDir("cs"), src = dir + "/cityscapes"
        let W = 32, H = 16
        try makeCityscapes(src, W: W, H: H, counts: ["train": 3, "val": 2])
        let out = dir + "/cs19.h5"
        _ = try convert("cityscapes", src, out)
        let f = try H5File.open(out)
        checkRoot(f, dataset: "cityscapes")
        XCTAssertEqual(try f.shape("/train/seg"), [3, H, W]); XCTAssertEqual(try f.shape("/val/depth"), [2, H, W])
        let seg = try f.read("/train/seg", as: Int16.self)
        let expected19: [Int16] = [-1, -1, -1, -1, -1, -1, -1, 0, 1, -1, -1, 2, 3, 4, -1, -1, -1, 5, -1, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, -1, -1, 16, 17, 18, -1, -1]
        XCTAssertEqual(Array(seg[0..<36]), expected19)
        let depth = try f.read("/train/depth", as: Float.self)
        XCTAssertEqual(depth[0], 0, "p = 0 is invalid")
        XCTAssertEqual(depth[1], Float(0.209313 * 2262.52 / 2), accuracy: 1e-3)   // disparity 2 px
        XCTAssertEqual(depth[6], Float(0.209313 * 2262.52 / 7), accuracy: 1e-3)
        XCTAssertEqual(f.numericAttribute("/train/images", "mean")!, [0.485, 0.456, 0.406])
        let ids = try f.readStrings("/train/ids")
        XCTAssertEqual(ids.count, 3); XCTAssertTrue(ids.contains("bremen_000001_000019"))
        try checkSHA(f, "/train/depth", Float.self)
        f.close()

        var o = ConvertOptions(); o.classes = 7; o.height = 8; o.width = 16
        _ = try convert("cityscapes", src, dir + "/cs7.h5", o)
        let g = try H5File.open(dir + "/cs7.h5")
        XCTAssertEqual(try g.shape("/val/seg"), [2, 8, 16])
        XCTAssertEqual(g.intAttribute("/val/seg", "num_classes"), 7)
        // Nearest resize by 2: output (0, x) takes source (1, 2x+1) → labelId (W + 2x + 1) % 36.
        let s7 = try g.read("/val/seg", as: Int16.self)
        let catMinus1: [Int16] = [-1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, -1, -1]
        for x in 0..<16 { XCTAssertEqual(s7[x], catMinus1[(W + 2 * x + 1) % 36], "x \(x)") }
        g.close()
        let ds = try MTDataset(path: dir + "/cs7.h5", split: "val", tasks: ["seg", "depth"])
        XCTAssertEqual(ds.count, 2); XCTAssertEqual(ds.width, 16); XCTAssertEqual(ds.numClasses("seg"), 7)
        let b = Batch(); try ds.load([1], into: b)
        XCTAssertEqual(b.targets["depth"]!.shape, [1, 1, 8, 16])

        // Bad inputs: a missing label file, a label of the wrong size, an unreadable PNG.
        let lab0 = "\(src)/gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png"
        try FileManager.default.moveItem(atPath: lab0, toPath: lab0 + ".bak")
        XCTAssertThrowsError(try convert("cityscapes", src, dir + "/bad.h5")) {
            XCTAssertTrue("\($0)".contains("gtFine/val: 1 *_gtFine_labelIds.png files, expected 2"), "\($0)")
        }
        try PNG.writeGray8(lab0, width: 8, height: 8, [UInt8](repeating: 7, count: 64))
        XCTAssertThrowsError(try convert("cityscapes", src, dir + "/bad.h5")) {
            XCTAssertTrue("\($0)".contains("aachen_000000_000019_gtFine_labelIds.png: label size 8x8, expected 32x16"), "\($0)")
        }
        FileManager.default.createFile(atPath: lab0, contents: Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + [UInt8](repeating: 0, count: 40)))
        XCTAssertThrowsError(try convert("cityscapes", src, dir + "/bad.h5")) { XCTAssertTrue("\($0)".contains("gtFine_labelIds.png"), "\($0)") }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/bad.h5"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/bad.h5.tmp"))
        try FileManager.default.removeItem(atPath: "\(src)/leftImg8bit/val")
        XCTAssertThrowsError(try convert("cityscapes", src, dir + "/bad.h5")) { XCTAssertTrue("\($0)".contains("leftImg8bit/val: folder not found"), "\($0)") }
    }

    /// Conversion speed at Cityscapes' real size (2048×1024); run with MTL_CONVERT_BENCH=1 (numbers in docs/DATASETS.md).
    func testBenchCityscapesFullResolution() throws {
        guard ProcessInfo.processInfo.environment["MTL_CONVERT_BENCH"] == "1" else { return }
        let dir = makeTempDir("csbench"), src = dir + "/cityscapes"
        try makeCityscapes(src, W: 2048, H: 1024, counts: ["train": 6, "val": 2])
        _ = try convert("cityscapes", src, dir + "/full.h5")
        var o = ConvertOptions(); o.classes = 7; o.height = 128; o.width = 256
        _ = try convert("cityscapes", src, dir + "/small.h5", o)
        try? FileManager.default.removeItem(atPath: dir)
    }

    // MARK: nyuv2 (official .mat v7.3)

    func testNYUv2Official() throws {
        let dir = makeTempDir("nyu")
        let N = 3, H = 480, W = 640
        // Frames in NYU's row-major (y, x) view, stored in MATLAB's transposed layout (N, C, W, H).
        func rgb(_ i: Int, _ y: Int, _ x: Int, _ c: Int) -> UInt8 { UInt8((x + 2 * y + 50 * c + 17 * i) % 256) }
        func raw(_ i: Int, _ y: Int, _ x: Int) -> UInt16 { UInt16((x / 8 + y / 8 + i) % 895) }   // 0..894
        func dep(_ i: Int, _ y: Int, _ x: Int) -> Float { x < 4 && i == 1 ? 0 : 2 + Float(i) }   // planes, a hole in frame 2
        var images = [UInt8](repeating: 0, count: N * 3 * W * H)
        var depths = [Float](repeating: 0, count: N * W * H)
        var labels = [UInt16](repeating: 0, count: N * W * H)
        for i in 0..<N { for x in 0..<W { for y in 0..<H {
            for c in 0..<3 { images[((i * 3 + c) * W + x) * H + y] = rgb(i, y, x, c) }
            depths[(i * W + x) * H + y] = dep(i, y, x)
            labels[(i * W + x) * H + y] = raw(i, y, x)
        } } }
        let h5 = dir + "/plain.h5"
        let f = try H5File.create(h5)
        try f.write("images", images, shape: [N, 3, W, H], chunks: [1, 3, W, H], deflate: 1)
        try f.write("depths", depths, shape: [N, W, H])
        try f.write("labels", labels, shape: [N, W, H])
        for n in ["images", "depths", "labels"] { try f.setAttribute(n, "MATLAB_class", n == "images" ? "uint8" : n == "depths" ? "single" : "uint16") }
        f.close()
        // MATLAB v7.3: a 512-byte user block with the MAT text header in front of the HDF5 superblock.
        var ub = Array("MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Nov 23 2026 HDF5 schema 1.00 .".utf8)
        ub += [UInt8](repeating: 0x20, count: 116 - ub.count) + [UInt8](repeating: 0, count: 8) + [0x00, 0x02] + Array("IM".utf8)
        ub += [UInt8](repeating: 0, count: 512 - ub.count)
        FileManager.default.createFile(atPath: dir + "/nyu_depth_v2_labeled.mat", contents: Data(ub) + (try Data(contentsOf: URL(fileURLWithPath: h5))))
        try FileManager.default.removeItem(atPath: h5)
        // splits.mat (uint16 column vectors, 1-based) and classMapping40.mat (mapClass 1×894 uint8).
        MatWriter.file(dir + "/splits.mat", [MatWriter.uint16("trainNdxs", dims: [2, 1], [1, 3]),
                                             MatWriter.uint16("testNdxs", dims: [1, 1], [2])])
        let mapClass = (0..<894).map { UInt8($0 % 40 + 1) }
        MatWriter.file(dir + "/classMapping40.mat", [MatWriter.compressed(MatWriter.uint8("mapClass", dims: [1, 894], mapClass))])

        XCTAssertThrowsError(try MatV5.read(dir + "/nyu_depth_v2_labeled.mat")) { XCTAssertTrue("\($0)".contains("v7.3 (HDF5)"), "\($0)") }
        let out = dir + "/nyu.h5"
        _ = try convert("nyuv2", dir + "/nyu_depth_v2_labeled.mat", out)
        let g = try H5File.open(out)
        checkRoot(g, dataset: "nyuv2")
        XCTAssertEqual(try g.shape("/train/images"), [2, H, W, 3]); XCTAssertEqual(try g.shape("/val/seg"), [1, H, W])
        XCTAssertEqual(try g.readStrings("/train/ids"), ["1", "3"]); XCTAssertEqual(try g.readStrings("/val/ids"), ["2"])
        XCTAssertEqual(g.stringAttribute("/val", "split_source"), "splits.mat:testNdxs")
        let img = try g.read("/train/images", as: UInt8.self)
        let seg = try g.read("/train/seg", as: Int16.self)
        let labels13: [Int] = [12, 5, 6, 1, 4, 9, 10, 12, 13, 6, 8, 6, 13, 10, 6, 13, 6, 7, 7, 5, 7, 3, 2, 6, 11, 7, 7, 7, 7, 7, 7, 6, 7, 7, 7, 7, 7, 7, 6, 7]
        for (k, i) in [(0, 0), (1, 2)] {   // output sample k is frame i+1
            for (y, x) in [(0, 0), (5, 9), (479, 639), (100, 333), (240, 17)] {
                for c in 0..<3 { XCTAssertEqual(img[((k * H + y) * W + x) * 3 + c], rgb(i, y, x, c)) }
                let r = Int(raw(i, y, x))
                let want = r == 0 ? -1 : labels13[Int(mapClass[r - 1]) - 1] - 1
                XCTAssertEqual(Int(seg[(k * H + y) * W + x]), want, "frame \(i + 1) (\(y), \(x)) raw \(r)")
            }
        }
        XCTAssertEqual(seg.filter { $0 == -1 }.count > 0, true, "raw 0 → ignore")
        let depth = try g.read("/val/depth", as: Float.self)
        XCTAssertEqual(depth[100 * W + 2], 0); XCTAssertEqual(depth[100 * W + 300], 3)
        let nv = try g.read("/val/normals", as: Float.self)
        var valid = 0
        for p in 0..<(H * W) {
            let l = (nv[3 * p] * nv[3 * p] + nv[3 * p + 1] * nv[3 * p + 1] + nv[3 * p + 2] * nv[3 * p + 2]).squareRoot()
            if l > 0 { valid += 1; XCTAssertEqual(l, 1, accuracy: 1e-4) }
        }
        XCTAssertGreaterThan(valid, (H - 2) * (W - 8) - 10)
        XCTAssertEqual(nv[3 * (200 * W + 300) + 2], -1, accuracy: 1e-4, "plane faces the camera")
        XCTAssertEqual(nv[3 * (200 * W + 4) + 2], 0, "next to the hole: invalid")
        try checkSHA(g, "/train/seg", Int16.self)
        g.close()
        let ds = try MTDataset(path: out, split: "train", tasks: ["seg", "depth", "normals"])
        XCTAssertEqual(ds.count, 2); XCTAssertEqual(ds.height, 480); XCTAssertEqual(ds.width, 640); XCTAssertEqual(ds.numClasses("seg"), 13)

        // 40 classes at 240×320, and bad inputs.
        var o = ConvertOptions(); o.classes = 40; o.height = 240; o.width = 320
        _ = try convert("nyuv2", dir, dir + "/nyu40.h5", o)
        let h40 = try H5File.open(dir + "/nyu40.h5")
        XCTAssertEqual(try h40.shape("/val/normals"), [1, 240, 320, 3]); XCTAssertEqual(h40.intAttribute("/val/seg", "num_classes"), 40)
        let s40 = try h40.read("/val/seg", as: Int16.self)
        let r = Int(raw(1, 1, 1))  // output (0, 0) ← source (1, 1) for an exact 2× nearest downscale
        XCTAssertEqual(Int(s40[0]), r == 0 ? -1 : Int(mapClass[r - 1]) - 1)
        h40.close()
        MatWriter.file(dir + "/splits.mat", [MatWriter.uint16("trainNdxs", dims: [2, 1], [1, 4]), MatWriter.uint16("testNdxs", dims: [1, 1], [2])])
        XCTAssertThrowsError(try convert("nyuv2", dir, dir + "/bad.h5")) { XCTAssertTrue("\($0)".contains("trainNdxs holds 4.0: expected 1-based frame indices in 1..3"), "\($0)") }
        try FileManager.default.removeItem(atPath: dir + "/classMapping40.mat")
        XCTAssertThrowsError(try convert("nyuv2", dir, dir + "/bad.h5")) { XCTAssertTrue("\($0)".contains("classMapping40.mat"), "\($0)") }
    }

    // MARK: pascal-context

    func testPascalContext() throws {
        let dir = makeTempDir("pascal"), src = dir + "/PASCAL_MT"
        for d in ["JPEGImages", "ImageSets/Context", "semseg/VOC12", "semseg/pascal-context", "human_parts", "pascal-context/trainval",
                  "normals_distill", "sal_distill"] { mkdirs("\(src)/\(d)") }
        let sizes = ["2008_000001": (20, 30), "2008_000002": (24, 16), "2008_000003": (10, 12)]
        writeText("\(src)/ImageSets/Context/train.txt", "2008_000001\n2008_000002\n")
        writeText("\(src)/ImageSets/Context/val.txt", "2008_000003\n")
        var palette = [UInt8](repeating: 0, count: 256 * 3)
        for i in 0..<256 { palette[3 * i] = UInt8(i) }
        for (id, (h, w)) in sizes {
            try JPEG.writeRGB8("\(src)/JPEGImages/\(id).jpg", width: w, height: h, [UInt8](repeating: 200, count: w * h * 3))
            // semseg: left half class 15 (person), right half 0, one 255 pixel.
            var seg = (0..<(h * w)).map { UInt8($0 % w < w / 2 ? 15 : 0) }; seg[w + 1] = 255
            if id == "2008_000002" { try PNG.writePalette("\(src)/semseg/pascal-context/\(id).png", width: w, height: h, seg, palette: palette) }
            else { try PNG.writePalette("\(src)/semseg/VOC12/\(id).png", width: w, height: h, seg, palette: palette) }
            // LabelMap: Context 284 (person) left, 18 (bed: NYU class) right-top, 360 (sky: not NYU) right-bottom.
            let lm = (0..<(h * w)).map { Double($0 % w < w / 2 ? 284 : ($0 / w < h / 2 ? 18 : 360)) }
            MatWriter.file("\(src)/pascal-context/trainval/\(id).mat",
                           [MatWriter.compressed(MatWriter.double("LabelMap", dims: [h, w], colMajor(lm, h: h, w: w)))])
            // normals png: (128, 128, 255) ≈ (0, 0, 1); saliency: left half 255, right 0.
            try PNG.writeRGB8("\(src)/normals_distill/\(id).png", width: w, height: h, (0..<(h * w * 3)).map { $0 % 3 == 2 ? 255 : 128 })
            try PNG.writeGray8("\(src)/sal_distill/\(id).png", width: w, height: h, (0..<(h * w)).map { $0 % w < w / 2 ? 255 : 0 })
        }
        // Parts: 2008_000001 has a person with a head (rows 0..4 of the left half) and torso (rows 5..9); 2008_000002 none.
        let (h1, w1) = sizes["2008_000001"]!
        var head = [UInt8](repeating: 0, count: h1 * w1), torso = head
        for y in 0..<5 { for x in 0..<(w1 / 2) { head[y * w1 + x] = 1 } }
        for y in 5..<10 { for x in 0..<(w1 / 2) { torso[y * w1 + x] = 1 } }
        let partsA = MatWriter.structure("", dims: [1, 2], fields: ["part_name", "mask"], elements: [
            [MatWriter.char("", "head"), MatWriter.uint8("", dims: [h1, w1], colMajor(head, h: h1, w: w1))],
            [MatWriter.char("", "torso"), MatWriter.uint8("", dims: [h1, w1], colMajor(torso, h: h1, w: w1))]])
        let objA = MatWriter.structure("", dims: [1, 1], fields: ["class", "class_ind", "mask", "parts"], elements: [
            [MatWriter.char("", "person"), MatWriter.double("", dims: [1, 1], [15]), MatWriter.uint8("", dims: [h1, w1], colMajor(head, h: h1, w: w1)), partsA]])
        MatWriter.file("\(src)/human_parts/2008_000001.mat", [MatWriter.compressed(MatWriter.structure("anno", dims: [1, 1], fields: ["imname", "objects"],
                                                                                                        elements: [[MatWriter.char("", "2008_000001"), objA]]))])
        let out = dir + "/pascal.h5"
        _ = try convert("pascal-context", src, out)
        let f = try H5File.open(out)
        checkRoot(f, dataset: "pascal_mt")
        XCTAssertEqual(try f.shape("/train/images"), [2, 512, 512, 3])
        XCTAssertEqual(try f.read("/train/sizes", as: Int32.self), [20, 30, 24, 16])
        XCTAssertEqual(try f.read("/train/has_parts", as: UInt8.self), [1, 0])
        let S = 512
        let seg = try f.read("/train/seg", as: Int16.self)
        XCTAssertEqual(seg[0], 15); XCTAssertEqual(seg[29], 0); XCTAssertEqual(seg[S + 1], -1, "255 → ignore")
        XCTAssertEqual(seg[30], -1, "padding"); XCTAssertEqual(seg[S * S + 0], 15, "sample 2 from semseg/pascal-context")
        let parts = try f.read("/train/parts", as: Int16.self)
        XCTAssertEqual(parts[2 * S + 3], 1); XCTAssertEqual(parts[7 * S + 3], 2); XCTAssertEqual(parts[15 * S + 3], 0); XCTAssertEqual(parts[15 * S + 20], 0)
        XCTAssertEqual(parts[S * S + 5], -1, "no person → ignore")
        let edges = try f.read("/train/edges", as: UInt8.self)
        XCTAssertEqual(edges[5 * S + 0], 0); XCTAssertEqual(edges[5 * S + 40], 255, "padding")
        XCTAssertEqual((0..<30).map { Int(edges[5 * S + $0]) }.reduce(0, +), 1, "one thin edge pixel across the 284|18 boundary on row 5")
        let nrm = try f.read("/train/normals", as: Float.self)
        XCTAssertEqual(nrm[3 * (2 * S + 3) + 2], 1, accuracy: 0.01, "person is an NYU class")
        XCTAssertEqual(nrm[3 * (2 * S + 20) + 2], 1, accuracy: 0.01, "bed is an NYU class")
        XCTAssertEqual(nrm[3 * (15 * S + 20) + 2], 0, "sky is not: masked")
        let sal = try f.read("/train/saliency", as: UInt8.self)
        XCTAssertEqual([sal[0], sal[29], sal[40]], [1, 0, 255])
        f.close()
        let ds = try MTDataset(path: out, split: "train", tasks: ["seg", "parts", "edges", "normals", "saliency"])
        XCTAssertEqual(ds.count, 2); XCTAssertEqual(ds.numClasses("seg"), 21); XCTAssertEqual(ds.numClasses("parts"), 7)
        let b = Batch(); try ds.load([1, 0], into: b)
        XCTAssertEqual(b.targets["parts"]!.array[5], -1)

        // Bad input: an id listed but its image missing.
        writeText("\(src)/ImageSets/Context/val.txt", "2008_000003\n2008_009999\n")
        XCTAssertThrowsError(try convert("pascal-context", src, dir + "/bad.h5")) {
            XCTAssertTrue("\($0)".contains("JPEGImages/2008_009999.jpg: missing image"), "\($0)")
        }
    }
}
