import Foundation
import MTLCore
@testable import MTLConvert
import MTLData
import XCTest
import MTLTestSupport

/// `mtl convert nyud-mt` on a fixture written in the NYUD_MT layout that MTI-Net's and ATRC's
/// data/nyud.py read (docs/DATASETS.md "NYUD-MT"), read back through MTDataset and compared
/// element by element with what the fixture wrote.
final class NYUDMTConvertTests: XCTestCase {
    static let H = 12, W = 16
    static let trainIds = ["0003", "0010", "0021"]
    static let valIds = ["0001", "0009"]

    // What the fixture writes for sample number i (0-based over train then val), at flat pixel k.
    static func rgb(_ i: Int, _ k: Int, _ c: Int) -> UInt8 {
        let y = k / W, x = k % W
        return UInt8(20 + 6 * x + 3 * y + 30 * c + 5 * i)  // smooth (max 223), so the JPEG stays close
    }
    static func segRaw(_ i: Int, _ k: Int) -> Int { (k + 7 * i) % 41 }  // 0 (void) … 40
    static func depth(_ i: Int, _ k: Int) -> Float { k % 5 == 0 ? 0 : 0.5 + Float(k) * 0.01 + Float(i) }
    static func normalRaw(_ i: Int, _ k: Int) -> [Float] {
        if k % 7 == 0 { return [0, 0, 0] }  // invalid
        let a = Float(k % W) / Float(W) - 0.5, b = Float(k / W) / Float(H) - 0.5
        return [2 * a, 2 * b, -2 + 0.1 * Float(i)]  // not unit length: the converter renormalises
    }
    static func edge(_ i: Int, _ k: Int) -> UInt8 { (k + i) % 3 == 0 ? 1 : 0 }

    /// Writes NYUD_MT/ under `dir` and returns its path.
    @discardableResult
    static func writeFixture(_ dir: String) throws -> String {
        let src = dir + "/NYUD_MT"
        for d in ["images", "segmentation", "depth", "normals", "edge", "gt_sets"] { mkdirs("\(src)/\(d)") }
        writeText("\(src)/gt_sets/train.txt", trainIds.joined(separator: "\n") + "\n\n")  // trailing blank line
        writeText("\(src)/gt_sets/val.txt", valIds.joined(separator: "\r\n"))           // CRLF, no final newline
        var palette = [UInt8](repeating: 0, count: 256 * 3)
        for p in 0..<256 { palette[3 * p] = UInt8(p); palette[3 * p + 1] = UInt8(255 - p) }
        let n = H * W
        for (i, id) in (trainIds + valIds).enumerated() {
            try JPEG.writeRGB8("\(src)/images/\(id).jpg", width: W, height: H, (0..<(n * 3)).map { rgb(i, $0 / 3, $0 % 3) })
            let seg = (0..<n).map { UInt8(segRaw(i, $0)) }
            if i == 1 { try PNG.writePalette("\(src)/segmentation/\(id).png", width: W, height: H, seg, palette: palette) }
            else { try PNG.writeGray8("\(src)/segmentation/\(id).png", width: W, height: H, seg) }
            // depth: float32 (H, W) for some samples, float64 (H, W, 1) for others
            let d = (0..<n).map { depth(i, $0) }
            if i % 2 == 0 { try Npy.write("\(src)/depth/\(id).npy", floats: d, shape: [H, W]) }
            else { try Npy.write("\(src)/depth/\(id).npy", doubles: d.map { Double($0) }, shape: [H, W, 1]) }
            let nr = (0..<n).flatMap { normalRaw(i, $0) }
            if i == 2 { try Npy.write("\(src)/normals/\(id).npy", doubles: nr.map { Double($0) }, shape: [H, W, 3]) }
            else { try Npy.write("\(src)/normals/\(id).npy", floats: nr, shape: [H, W, 3]) }
            // edge: bool, uint8 and float32 files (the release's dtype is not documented; all are accepted)
            let e = (0..<n).map { edge(i, $0) }
            switch i % 3 {
            case 0: try Npy.write("\(src)/edge/\(id).npy", dtype: .b1, shape: [H, W], bytes: e)
            case 1: try Npy.write("\(src)/edge/\(id).npy", dtype: .u1, shape: [H, W], bytes: e)
            default: try Npy.write("\(src)/edge/\(id).npy", floats: e.map { Float($0) }, shape: [H, W])
            }
        }
        return src
    }

    func convert(_ src: String, _ out: String, _ o: ConvertOptions = ConvertOptions()) throws -> String {
        var lines: [String] = []
        let s = try Converter.run(kind: "nyud-mt", src: src, out: out, options: o) { lines.append($0) }
        XCTAssertFalse(lines.isEmpty, "progress lines")
        return s
    }

    func testConvertAndReadBack() throws {
        let dir = makeTempDir("nyudmt")
        let src = try Self.writeFixture(dir)
        let H = Self.H, W = Self.W, n = H * W
        let out = dir + "/nyud-mt.h5"
        let summary = try convert(src, out)
        XCTAssertTrue(summary.contains("train 3 images") && summary.contains("val 2 images"), summary)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + ".tmp"))

        let f = try H5File.open(out)
        XCTAssertEqual(f.stringAttribute("/", "format"), "mtdp-hdf5")
        XCTAssertEqual(f.stringAttribute("/", "dataset"), "nyuv2")
        XCTAssertEqual(f.stringAttribute("/", "variant"), "nyud-mt-12x16-40")
        XCTAssertEqual(f.stringAttribute("/", "tasks"), "seg,depth,normals,edges")
        XCTAssertEqual(try f.readStrings("/train/ids"), Self.trainIds)
        XCTAssertEqual(try f.readStrings("/val/ids"), Self.valIds, "CRLF split file")
        XCTAssertEqual(f.stringAttribute("/val", "split_source"), "gt_sets/val.txt")
        XCTAssertEqual(f.intAttribute("/train/seg", "num_classes"), 40)
        XCTAssertEqual(f.intAttribute("/train/edges", "ignore_value"), 255)
        XCTAssertEqual(try f.shape("/val/normals"), [2, H, W, 3])
        f.close()

        for (split, ids, offset) in [("train", Self.trainIds, 0), ("val", Self.valIds, Self.trainIds.count)] {
            let ds = try MTDataset(path: out, split: split, tasks: ["seg", "depth", "normals", "edges"])
            XCTAssertEqual(ds.count, ids.count); XCTAssertEqual(ds.height, H); XCTAssertEqual(ds.width, W)
            XCTAssertEqual(ds.numClasses("seg"), 40)
            let order = Array((0..<ids.count).reversed())
            let b = Batch()
            try ds.load(order, into: b)
            let img = b.images.array, seg = b.targets["seg"]!.array, dep = b.targets["depth"]!.array
            let nrm = b.targets["normals"]!.array, edg = b.targets["edges"]!.array
            XCTAssertEqual(b.images.shape, [ids.count, 3, H, W]); XCTAssertEqual(b.targets["normals"]!.shape, [ids.count, 3, H, W])
            XCTAssertEqual(b.targets["seg"]!.shape, [ids.count, H, W]); XCTAssertEqual(b.targets["edges"]!.shape, [ids.count, 1, H, W])
            let mean: [Float] = [0.485, 0.456, 0.406], std: [Float] = [0.229, 0.224, 0.225]
            for (j, s) in order.enumerated() {
                let i = offset + s
                let jpeg = try JPEG.readRGB8("\(src)/images/\(ids[s]).jpg")
                var segMiss = 0, depMiss = 0, nrmMiss = 0, edgMiss = 0, imgMiss = 0
                for k in 0..<n {
                    for c in 0..<3 {
                        let v = img[(j * 3 + c) * n + k]
                        // exactly the decoded JPEG bytes, ImageNet-normalised; close to what was encoded
                        if abs(v - ((Float(jpeg.pixels[3 * k + c]) / 255 - mean[c]) / std[c])) > 1e-5 { imgMiss += 1 }
                        XCTAssertEqual(Double(jpeg.pixels[3 * k + c]), Double(Self.rgb(i, k, c)), accuracy: 12)
                    }
                    let r = Self.segRaw(i, k)
                    if seg[j * n + k] != Float(r == 0 ? -1 : r - 1) { segMiss += 1 }
                    if dep[j * n + k] != Self.depth(i, k) { depMiss += 1 }
                    let raw = Self.normalRaw(i, k)
                    let len = (raw[0] * raw[0] + raw[1] * raw[1] + raw[2] * raw[2]).squareRoot()
                    for c in 0..<3 where abs(nrm[(j * 3 + c) * n + k] - (len == 0 ? 0 : raw[c] / len)) > 1e-6 { nrmMiss += 1 }
                    if edg[j * n + k] != Float(Self.edge(i, k)) { edgMiss += 1 }
                }
                XCTAssertEqual([imgMiss, segMiss, depMiss, nrmMiss, edgMiss], [0, 0, 0, 0, 0],
                               "\(split) sample \(ids[s]): mismatching image/seg/depth/normals/edges elements")
            }
            // The conventions, spelled out on a few pixels of the first loaded sample (order[0]).
            let i0 = offset + order[0]
            let void = (0..<n).first { Self.segRaw(i0, $0) == 0 }!, forty = (0..<n).first { Self.segRaw(i0, $0) == 40 }!
            XCTAssertEqual(seg[void], -1, "void 0 → ignore −1"); XCTAssertEqual(seg[forty], 39, "class 40 → 39")
            XCTAssertEqual(dep[0], 0, "depth 0 stays invalid 0")
            XCTAssertEqual([nrm[0], nrm[n], nrm[2 * n]], [0, 0, 0], "zero normal stays invalid")
        }

        // ATRC's data_dir (the folder holding NYUD_MT/) works too; resize 12×16 → 6×8.
        var o = ConvertOptions(); o.height = 6; o.width = 8
        _ = try convert(dir, dir + "/small.h5", o)
        let g = try H5File.open(dir + "/small.h5")
        XCTAssertEqual(try g.shape("/train/edges"), [3, 6, 8]); XCTAssertEqual(g.stringAttribute("/", "variant"), "nyud-mt-6x8-40")
        let s6 = try g.read("/train/seg", as: Int16.self), e6 = try g.read("/train/edges", as: UInt8.self)
        for (y, x) in [(0, 0), (2, 5), (5, 7)] {  // an exact 2× nearest downscale samples source (2y+1, 2x+1)
            let k = (2 * y + 1) * W + 2 * x + 1
            XCTAssertEqual(Int(s6[y * 8 + x]), Self.segRaw(0, k) == 0 ? -1 : Self.segRaw(0, k) - 1)
            XCTAssertEqual(e6[y * 8 + x], Self.edge(0, k))
        }
        g.close()
    }

    /// Runs a conversion that must fail and returns its error text (one line, no file left behind).
    func failure(_ src: String, _ dir: String, file: StaticString = #filePath, line: UInt = #line) -> String {
        let out = dir + "/bad.h5"
        do {
            _ = try Converter.run(kind: "nyud-mt", src: src, out: out, options: ConvertOptions()) { _ in }
            XCTFail("conversion succeeded", file: file, line: line)
            return ""
        } catch {
            let m = (error as? MTLError)?.message ?? "\(error)"
            XCTAssertFalse(m.contains("\n"), "one line: \(m)", file: file, line: line)
            XCTAssertFalse(FileManager.default.fileExists(atPath: out), file: file, line: line)
            XCTAssertFalse(FileManager.default.fileExists(atPath: out + ".tmp"), file: file, line: line)
            return m
        }
    }

    func testBadInputs() throws {
        let dir = makeTempDir("nyudmt-bad")
        let src = try Self.writeFixture(dir)
        let H = Self.H, W = Self.W
        let fm = FileManager.default

        // Missing directory.
        try fm.moveItem(atPath: src + "/normals", toPath: src + "/normals.off")
        XCTAssertEqual(failure(src, dir), "\(src)/normals: folder not found (expected the NYUD_MT layout images/<id>.jpg, segmentation/<id>.png, {depth,normals,edge}/<id>.npy, gt_sets/{train,val}.txt)")
        try fm.moveItem(atPath: src + "/normals.off", toPath: src + "/normals")

        // Missing split file.
        try fm.moveItem(atPath: src + "/gt_sets/val.txt", toPath: src + "/val.txt.off")
        XCTAssertEqual(failure(src, dir), "\(src)/gt_sets/val.txt: split file not found (expected one image id per line, as gt_sets/train.txt and gt_sets/val.txt of NYUD_MT)")
        try fm.moveItem(atPath: src + "/val.txt.off", toPath: src + "/gt_sets/val.txt")
        // Empty, repeated and overlapping split lists.
        writeText(src + "/gt_sets/val.txt", "\n\n")
        XCTAssertEqual(failure(src, dir), "\(src)/gt_sets/val.txt: empty split file (expected one image id per line)")
        writeText(src + "/gt_sets/val.txt", "0001\n0009\n0001\n")
        XCTAssertEqual(failure(src, dir), "\(src)/gt_sets/val.txt: id '0001' listed twice (expected each image id once)")
        writeText(src + "/gt_sets/val.txt", "0001\n0010\n")
        XCTAssertEqual(failure(src, dir), "\(src)/gt_sets/val.txt: id '0010' is also in gt_sets/train.txt (expected disjoint splits)")
        writeText(src + "/gt_sets/val.txt", Self.valIds.joined(separator: "\n"))

        // Wrong image size (a val image 10 rows high), then a label of the wrong size.
        let img1 = src + "/images/0009.jpg", keep = dir + "/keep.jpg"
        try fm.copyItem(atPath: img1, toPath: keep)
        try JPEG.writeRGB8(img1, width: W, height: 10, [UInt8](repeating: 90, count: W * 10 * 3))
        XCTAssertEqual(failure(src, dir), "\(img1): image: expected 16x12 (the size of the first train image), found 16x10")
        try fm.removeItem(atPath: img1); try fm.moveItem(atPath: keep, toPath: img1)
        let seg1 = src + "/segmentation/0009.png"
        try PNG.writeGray8(seg1, width: 8, height: H, [UInt8](repeating: 1, count: 8 * H))
        XCTAssertEqual(failure(src, dir), "\(seg1): segmentation: expected 16x12 (the size of its image), found 8x12")

        // Label out of range: 41 at (y 2, x 3).
        var seg = [UInt8](repeating: 5, count: H * W); seg[2 * W + 3] = 41
        try PNG.writeGray8(seg1, width: W, height: H, seg)
        XCTAssertEqual(failure(src, dir), "\(seg1): segmentation: label 41 at (y 2, x 3): expected 0 (void) or 1..40")
        seg[2 * W + 3] = 40
        try PNG.writeGray8(seg1, width: W, height: H, seg)

        // Depth of the wrong shape, negative depth, an edge value outside [0, 1], a listed id without its normals.
        let d1 = src + "/depth/0009.npy"
        try Npy.write(d1, floats: [Float](repeating: 1, count: 5 * 5), shape: [5, 5])
        XCTAssertEqual(failure(src, dir), "\(d1): depth: expected shape (12, 16) or (12, 16, 1) (the size of its image), found [5, 5]")
        var dv = [Float](repeating: 1, count: H * W); dv[W + 4] = -0.5
        try Npy.write(d1, floats: dv, shape: [H, W])
        XCTAssertEqual(failure(src, dir), "\(d1): depth: -0.5 at (y 1, x 4): expected metres >= 0 (0 = invalid)")
        dv[W + 4] = 2; try Npy.write(d1, floats: dv, shape: [H, W])
        let e1 = src + "/edge/0009.npy"
        var ev = [Float](repeating: 0, count: H * W); ev[3 * W] = 255
        try Npy.write(e1, floats: ev, shape: [H, W])
        XCTAssertEqual(failure(src, dir), "\(e1): edge: 255.0 at (y 3, x 0): expected an edge map in [0, 1] (0 = no edge, 1 = edge)")
        ev[3 * W] = 1; try Npy.write(e1, floats: ev, shape: [H, W])
        try fm.removeItem(atPath: src + "/normals/0001.npy")
        XCTAssertEqual(failure(src, dir), "\(src)/normals/0001.npy: missing normals file listed in gt_sets/val.txt")

        // Label out of range through the `mtl` binary: one `error:` line on stderr and a non-zero exit.
        try Npy.write(src + "/normals/0001.npy", floats: [Float](repeating: 0, count: H * W * 3), shape: [H, W, 3])
        _ = try convert(src, dir + "/ok.h5")  // repaired: converts again
        seg[0] = 200; try PNG.writeGray8(seg1, width: W, height: H, seg)
        let mtl = try mtlBinary()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: mtl)
        p.arguments = ["convert", "nyud-mt", "--src", src, "--out", dir + "/cli.h5"]
        let err = Pipe(); p.standardError = err; p.standardOutput = FileHandle.nullDevice
        try p.run(); p.waitUntilExit()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertNotEqual(p.terminationStatus, 0)
        XCTAssertEqual(text, "error: \(seg1): segmentation: label 200 at (y 0, x 0): expected 0 (void) or 1..40\n")
        XCTAssertFalse(fm.fileExists(atPath: dir + "/cli.h5"))
    }
}

extension NYUDMTConvertTests {
    /// ASTMT's original per-file formats (fblib/dataloaders/nyud.py): segmentation/<id>.mat, depth/<id>.mat,
    /// normals/<id>.jpg (2v/255 − 1), edge/<id>.png (v/255), used when the .npy/.png of MTI-Net's layout is absent.
    func testASTMTFileFormats() throws {
        let dir = makeTempDir("nyudmt-astmt")
        let src = try Self.writeFixture(dir)
        let H = Self.H, W = Self.W, n = H * W, id = "0009", i = 4
        for f in ["segmentation/\(id).png", "depth/\(id).npy", "normals/\(id).npy", "edge/\(id).npy"] {
            try FileManager.default.removeItem(atPath: "\(src)/\(f)")
        }
        let seg = (0..<n).map { Double(Self.segRaw(i, $0)) }
        MatWriter.file("\(src)/segmentation/\(id).mat", [MatWriter.compressed(MatWriter.double("segmentation", dims: [H, W], colMajor(seg, h: H, w: W), storeAsUInt8: true))])
        let dep = (0..<n).map { Double(Self.depth(i, $0)) }
        MatWriter.file("\(src)/depth/\(id).mat", [MatWriter.double("depth", dims: [H, W], colMajor(dep, h: H, w: W))])
        try PNG.writeGray8("\(src)/edge/\(id).png", width: W, height: H, (0..<n).map { Self.edge(i, $0) * 255 })
        // normals (0.6, 0, 0.8) everywhere → RGB (204, 128, 230)
        try JPEG.writeRGB8("\(src)/normals/\(id).jpg", width: W, height: H, (0..<(3 * n)).map { [204, 128, 230][$0 % 3] })
        let out = dir + "/astmt.h5"
        _ = try convert(src, out)
        let ds = try MTDataset(path: out, split: "val", tasks: ["seg", "depth", "normals", "edges"])
        let b = Batch(); try ds.load([1], into: b)
        let s = b.targets["seg"]!.array, d = b.targets["depth"]!.array, e = b.targets["edges"]!.array, nr = b.targets["normals"]!.array
        for k in 0..<n {
            let r = Self.segRaw(i, k)
            XCTAssertEqual(s[k], Float(r == 0 ? -1 : r - 1), "seg .mat at \(k)")
            XCTAssertEqual(d[k], Self.depth(i, k), "depth .mat at \(k)")
            XCTAssertEqual(e[k], Float(Self.edge(i, k)), "edge png at \(k)")
            for (c, want) in [Float(0.6), 0, 0.8].enumerated() { XCTAssertEqual(nr[c * n + k], want, accuracy: 0.02, "normals jpg at \(k)") }
        }
        // A .mat of the wrong size is one line naming file, variable, expected and found.
        MatWriter.file("\(src)/depth/\(id).mat", [MatWriter.double("depth", dims: [2, 3], [1, 2, 3, 4, 5, 6])])
        XCTAssertEqual(failure(src, dir), "\(src)/depth/\(id).mat: depth: 'depth': expected a numeric 12x16 array (the size of its image), found dims [2, 3]")
    }
}
