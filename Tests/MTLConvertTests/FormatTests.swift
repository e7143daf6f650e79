import CZlib
import Foundation
import MTLCore
@testable import MTLConvert
import XCTest

final class FormatTests: XCTestCase {
    func testSHA256FIPSVectors() {
        XCTAssertEqual(SHA256.hex([]), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hex(Array("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        // One million 'a', fed in uneven pieces: exercises the partial-block path.
        var h = SHA256()
        let piece = [UInt8](repeating: 0x61, count: 999)
        var fed = 0
        while fed < 1_000_000 { let n = min(999, 1_000_000 - fed); h.update(Array(piece[0..<n])); fed += n }
        XCTAssertEqual(h.finalizeHex(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    func testNpyRoundTripAndErrors() throws {
        let dir = makeTempDir("npy")
        let v: [Float] = [0, 1.5, -2, 3.25, 1e-3, 7]
        try Npy.write("\(dir)/a.npy", floats: v, shape: [2, 3])
        let a = try Npy.read("\(dir)/a.npy")
        XCTAssertEqual(a.shape, [2, 3]); XCTAssertEqual(a.dtype, .f4); XCTAssertEqual(a.floats(), v)
        try Npy.write("\(dir)/b.npy", doubles: [0.25, -1], shape: [2])
        XCTAssertEqual(try Npy.read("\(dir)/b.npy").floats(), [0.25, -1])
        // Header length must make the data start 64-byte aligned (numpy's rule), version 1.0.
        let raw = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/a.npy"))
        XCTAssertEqual((10 + Int(raw[8]) + Int(raw[9]) << 8) % 64, 0)
        // Rejections.
        var bytes = [UInt8](raw)
        let hdr = String(decoding: bytes[10..<(10 + Int(bytes[8]))], as: UTF8.self)
        func rewrite(_ h: String) -> String {
            let p = "\(dir)/bad.npy"
            var b = Array(bytes[0..<10]) + Array(h.utf8); b += Array(bytes[(10 + Int(bytes[8]))...])
            FileManager.default.createFile(atPath: p, contents: Data(b)); return p
        }
        XCTAssertThrowsError(try Npy.read(rewrite(hdr.replacingOccurrences(of: "False", with: "True ")))) {
            XCTAssertTrue("\($0)".contains("fortran_order True"), "\($0)")
        }
        XCTAssertThrowsError(try Npy.read(rewrite(hdr.replacingOccurrences(of: "<f4", with: ">f4")))) {
            XCTAssertTrue("\($0)".contains("big-endian"), "\($0)")
        }
        bytes.removeLast(5)
        FileManager.default.createFile(atPath: "\(dir)/trunc.npy", contents: Data(bytes))
        XCTAssertThrowsError(try Npy.read("\(dir)/trunc.npy")) { XCTAssertTrue("\($0)".contains("truncated"), "\($0)") }
        XCTAssertThrowsError(try Npy.read("\(dir)/missing.npy")) { XCTAssertTrue("\($0)".contains("not found"), "\($0)") }

        guard pythonHas("numpy") else { print("numpy not importable: skipping the numpy-written .npy check"); return }
        try runPython("""
        import numpy as np
        d = '\(dir)'
        np.save(d + '/f8.npy', np.arange(12, dtype=np.float64).reshape(3, 4) / 4)
        np.save(d + '/f4.npy', np.array([[1.5, -2.0]], dtype=np.float32))
        np.save(d + '/i8.npy', np.array([-1, 0, 12], dtype=np.int64))
        np.save(d + '/i4.npy', np.array([-7, 9], dtype=np.int32))
        np.save(d + '/i2.npy', np.array([-300, 300], dtype=np.int16))
        np.save(d + '/u1.npy', np.array([[0, 255]], dtype=np.uint8))
        np.save(d + '/u2.npy', np.array([0, 65535], dtype=np.uint16))
        np.save(d + '/b1.npy', np.array([[True, False], [False, True]]))
        np.save(d + '/fort.npy', np.asfortranarray(np.ones((2, 3), dtype=np.float32)))
        np.save(d + '/big.npy', np.ones(3, dtype='>f4'))
        """)
        XCTAssertEqual(try Npy.read("\(dir)/f8.npy").floats(), (0..<12).map { Float($0) / 4 })
        XCTAssertEqual(try Npy.read("\(dir)/f8.npy").shape, [3, 4])
        XCTAssertEqual(try Npy.read("\(dir)/f4.npy").floats(), [1.5, -2])
        XCTAssertEqual(try Npy.read("\(dir)/i8.npy").floats(), [-1, 0, 12])
        XCTAssertEqual(try Npy.read("\(dir)/i4.npy").floats(), [-7, 9])
        XCTAssertEqual(try Npy.read("\(dir)/i2.npy").floats(), [-300, 300])
        XCTAssertEqual(try Npy.read("\(dir)/u1.npy").floats(), [0, 255])
        XCTAssertEqual(try Npy.read("\(dir)/u2.npy").floats(), [0, 65535])
        XCTAssertEqual(try Npy.read("\(dir)/b1.npy").floats(), [1, 0, 0, 1], "numpy bool (edge maps)")
        XCTAssertEqual(try Npy.read("\(dir)/b1.npy").shape, [2, 2])
        XCTAssertThrowsError(try Npy.read("\(dir)/fort.npy"))
        XCTAssertThrowsError(try Npy.read("\(dir)/big.npy"))
    }

    func testPNGRoundTrips() throws {
        let dir = makeTempDir("png")
        // 16-bit gray: every value 0..65535 survives exactly.
        let all = (0..<65536).map { UInt16($0) }
        try PNG.writeGray16("\(dir)/g16.png", width: 256, height: 256, all)
        let g16 = try PNG.readGray16("\(dir)/g16.png")
        XCTAssertEqual(g16.width, 256); XCTAssertEqual(g16.pixels, all)
        // 8-bit gray labels.
        let g8 = (0..<(31 * 17)).map { UInt8($0 % 256) }
        try PNG.writeGray8("\(dir)/g8.png", width: 31, height: 17, g8)
        XCTAssertEqual(try PNG.readLabels("\(dir)/g8.png").pixels, g8.map { UInt16($0) })
        // RGB.
        let rgb = (0..<(5 * 4 * 3)).map { UInt8(($0 * 37) % 256) }
        try PNG.writeRGB8("\(dir)/rgb.png", width: 5, height: 4, rgb)
        let r = try PNG.readRGB8("\(dir)/rgb.png")
        XCTAssertEqual(r.pixels, rgb); XCTAssertEqual(r.channels, 3)
        // Palette: indices come back, not colours (VOC-style label PNGs).
        var palette = [UInt8](repeating: 0, count: 256 * 3)
        for i in 0..<256 { palette[3 * i] = UInt8((i * 53) % 256); palette[3 * i + 1] = UInt8(i); palette[3 * i + 2] = 7 }
        let idx: [UInt8] = (0..<(16 * 16)).map { (k: Int) -> UInt8 in k % 3 == 0 ? 255 : UInt8(k % 21) }
        try PNG.writePalette("\(dir)/pal.png", width: 16, height: 16, idx, palette: palette)
        XCTAssertEqual(try PNG.readLabels("\(dir)/pal.png").pixels, idx.map { UInt16($0) })
        // A gAMA chunk (gamma 1.0) would make libpng gamma-correct labels: it must be ignored.
        var b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(dir)/g8.png")))
        let gama: [UInt8] = [0, 0, 0, 4] + Array("gAMA".utf8) + [0, 1, 0x86, 0xA0]
        var crc = crc32(0, nil, 0)
        crc = gama[4...].withUnsafeBufferPointer { crc32(crc, $0.baseAddress, UInt32($0.count)) }
        b.insert(contentsOf: gama + (0..<4).map { UInt8(truncatingIfNeeded: crc >> (8 * (3 - $0))) }, at: 33)
        FileManager.default.createFile(atPath: "\(dir)/gama.png", contents: Data(b))
        XCTAssertEqual(try PNG.readLabels("\(dir)/gama.png").pixels, g8.map { UInt16($0) })
        // Unreadable PNGs: one-line errors naming the file.
        let good = [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(dir)/rgb.png")))
        FileManager.default.createFile(atPath: "\(dir)/trunc.png", contents: Data(good[0..<(good.count - 30)]))
        XCTAssertThrowsError(try PNG.readRGB8("\(dir)/trunc.png")) { XCTAssertTrue("\($0)".contains("trunc.png"), "\($0)") }
        FileManager.default.createFile(atPath: "\(dir)/junk.png", contents: Data("hello".utf8))
        XCTAssertThrowsError(try PNG.readRGB8("\(dir)/junk.png")) { XCTAssertTrue("\($0)".contains("not a PNG"), "\($0)") }
        XCTAssertThrowsError(try PNG.readLabels("\(dir)/rgb.png")) { XCTAssertTrue("\($0)".contains("RGB"), "\($0)") }
    }

    func testJPEGRoundTripAndErrors() throws {
        let dir = makeTempDir("jpeg")
        let w = 40, h = 24
        var px = [UInt8](repeating: 0, count: w * h * 3)
        for y in 0..<h { for x in 0..<w { px[(y * w + x) * 3] = UInt8(x * 6); px[(y * w + x) * 3 + 1] = UInt8(y * 10); px[(y * w + x) * 3 + 2] = 128 } }
        try JPEG.writeRGB8("\(dir)/a.jpg", width: w, height: h, px, quality: 98)
        let r = try JPEG.readRGB8("\(dir)/a.jpg")
        XCTAssertEqual(r.width, w); XCTAssertEqual(r.height, h)
        let maxErr = zip(r.pixels, px).map { abs(Int($0) - Int($1)) }.max()!
        XCTAssertLessThan(maxErr, 12, "lossy but close")
        let b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(dir)/a.jpg")))
        FileManager.default.createFile(atPath: "\(dir)/trunc.jpg", contents: Data(b[0..<(b.count / 2)]))
        XCTAssertThrowsError(try JPEG.readRGB8("\(dir)/trunc.jpg")) { XCTAssertTrue("\($0)".contains("truncated JPEG"), "\($0)") }
        FileManager.default.createFile(atPath: "\(dir)/png.jpg", contents: Data([0x89, 0x50, 0x4E, 0x47, 0, 0, 0, 0]))
        XCTAssertThrowsError(try JPEG.readRGB8("\(dir)/png.jpg")) { XCTAssertTrue("\($0)".contains("not a JPEG"), "\($0)") }
    }

    func testMatV5HandWritten() throws {
        let dir = makeTempDir("mat")
        let mask: [UInt8] = [0, 1, 1, 0, 0, 1]  // 2×3 row-major
        let part = MatWriter.structure("", dims: [1, 2], fields: ["part_name", "mask"], elements: [
            [MatWriter.char("", "head"), MatWriter.uint8("", dims: [2, 3], colMajor(mask, h: 2, w: 3))],
            [MatWriter.char("", "ruleg"), MatWriter.uint8("", dims: [2, 3], [1, 0, 0, 0, 0, 0])]])
        let objects = MatWriter.structure("", dims: [1, 1], fields: ["class", "class_ind", "mask", "parts"], elements: [
            [MatWriter.char("", "person"), MatWriter.double("", dims: [1, 1], [15], storeAsUInt8: true),
             MatWriter.uint8("", dims: [2, 3], [1, 1, 1, 1, 1, 1]), part]])
        let anno = MatWriter.structure("anno", dims: [1, 1], fields: ["imname", "objects"],
                                       elements: [[MatWriter.char("", "2008_000001"), objects]])
        MatWriter.file("\(dir)/a.mat", [
            MatWriter.uint16("trainNdxs", dims: [3, 1], [3, 1000, 1440]),
            MatWriter.compressed(MatWriter.double("mapClass", dims: [1, 4], [1.5, 40, -2, 7])),
            MatWriter.compressed(anno),
            MatWriter.cell("names", dims: [1, 2], [MatWriter.char("", "wall"), MatWriter.char("", "floor")]),
        ])
        let m = try MatV5.read("\(dir)/a.mat")
        XCTAssertEqual(m["trainNdxs"]?.numbers, [3, 1000, 1440]); XCTAssertEqual(m["trainNdxs"]?.dims, [3, 1])
        XCTAssertEqual(m["mapClass"]?.numbers, [1.5, 40, -2, 7])
        guard case .cell(_, let names)? = m["names"] else { return XCTFail("cell") }
        XCTAssertEqual(names.map { $0.text }, ["wall", "floor"])
        XCTAssertEqual(m["anno"]?.field("imname")?.text, "2008_000001")
        let parts = try PascalConverter.humanParts("\(dir)/a.mat", h: 2, w: 3)
        // mask row-major [[0,1,1],[0,0,1]] → head (1); ruleg (5) at MATLAB (0,0) = row-major 0, painted last.
        XCTAssertEqual(parts, [5, 1, 1, 0, 0, 1])
        // Truncated file → error naming it.
        let b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(dir)/a.mat")))
        FileManager.default.createFile(atPath: "\(dir)/t.mat", contents: Data(b[0..<200]))
        XCTAssertThrowsError(try MatV5.read("\(dir)/t.mat")) { XCTAssertTrue("\($0)".contains("t.mat"), "\($0)") }
    }

    func testMatV5WrittenByScipy() throws {
        guard pythonHas("scipy.io") else { print("scipy not importable: skipping the scipy-written MAT-file check"); return }
        let dir = makeTempDir("scipy")
        try runPython("""
        import numpy as np, scipy.io as sio
        d = '\(dir)'
        for comp in (False, True):
            sio.savemat(d + '/s%d.mat' % comp, {
                'trainNdxs': np.array([[3], [7], [1440]], dtype=np.uint16),
                'mapClass': np.array([[1, 40, 12]], dtype=np.uint8),
                'LabelMap': np.arange(12, dtype=np.uint16).reshape(3, 4),
                'f': np.array([[0.5, -1.25]]),
                'name': 'bookshelf',
                'classMapping13': {'labels13': np.array([[12, 5, 6]], dtype=np.uint8), 'classNames': np.array(['bed', 'books'], dtype=object)},
            }, do_compression=comp)
        """)
        for comp in [0, 1] {
            let m = try MatV5.read("\(dir)/s\(comp).mat")
            XCTAssertEqual(m["trainNdxs"]?.numbers, [3, 7, 1440])
            XCTAssertEqual(m["mapClass"]?.numbers, [1, 40, 12])
            let (h, w, lm) = try PascalConverter.rowMajor(m["LabelMap"]!, "s", "LabelMap")
            XCTAssertEqual([h, w], [3, 4]); XCTAssertEqual(lm, Array(0..<12))
            XCTAssertEqual(m["f"]?.numbers, [0.5, -1.25])
            XCTAssertEqual(m["name"]?.text, "bookshelf")
            XCTAssertEqual(m["classMapping13"]?.field("labels13")?.numbers, [12, 5, 6])
            guard case .cell(_, let cn)? = m["classMapping13"]?.field("classNames") else { return XCTFail("classNames cell") }
            XCTAssertEqual(cn.map { $0.text }, ["bed", "books"])
        }
    }

    func testLaplacianAndThinning() {
        // A 3-pixel-wide horizontal bar thins to a 1-pixel line; a lone pixel survives.
        let w = 12, h = 7
        var img = [UInt8](repeating: 0, count: w * h)
        for y in 2...4 { for x in 2...9 { img[y * w + x] = 1 } }
        let t = thin(img, w: w, h: h)
        for x in 3...8 { XCTAssertEqual((2...4).map { Int(t[$0 * w + x]) }.reduce(0, +), 1, "column \(x) has one pixel") }
        XCTAssertEqual(t.reduce(0) { $0 + Int($1) } <= 8, true)
        var dot = [UInt8](repeating: 0, count: 9); dot[4] = 1
        XCTAssertEqual(thin(dot, w: 3, h: 3), dot)
        // Laplacian ≠ 0 exactly where cv2's 4-neighbour kernel with reflect-101 border is non-zero.
        let lm = [1, 1, 2,
                  1, 1, 2,
                  1, 1, 2]
        XCTAssertEqual(laplacianNonzero(lm, w: 3, h: 3), [0, 1, 1, 0, 1, 1, 0, 1, 1])
        // 2 between 1 and 3 horizontally with equal vertical neighbours: Laplacian 0 (not "any neighbour differs").
        XCTAssertEqual(laplacianNonzero([1, 2, 3], w: 3, h: 1)[1], 0)
    }

    func testNormalsFromDepthPlanes() {
        let W = 40, H = 30
        let fx: Float = 50, fy: Float = 50, cx: Float = 20, cy: Float = 15
        // Fronto-parallel plane → (0, 0, −1) (facing the camera).
        let n0 = normalsFromDepth([Float](repeating: 2, count: W * H), width: W, height: H, fx: fx, fy: fy, cx: cx, cy: cy)
        let c = 3 * (15 * W + 20)
        XCTAssertEqual(n0[c + 2], -1, accuracy: 1e-5); XCTAssertEqual(n0[c], 0, accuracy: 1e-5)
        XCTAssertEqual(n0[0], 0); XCTAssertEqual(n0[2], 0, "border is invalid")
        // Plane x + z = 3 (tilted about y): n ∝ (1, 0, 1), facing the camera → −(1,0,1)/√2.
        var d = [Float](repeating: 0, count: W * H)
        for v in 0..<H { for u in 0..<W { d[v * W + u] = 3 / (1 + (Float(u) - cx) / fx) } }
        let n1 = normalsFromDepth(d, width: W, height: H, fx: fx, fy: fy, cx: cx, cy: cy, maxRelativeJump: 0.2)
        for (v, u) in [(10, 12), (20, 25)] {
            let o = 3 * (v * W + u)
            XCTAssertEqual(n1[o], -Float(0.5).squareRoot(), accuracy: 1e-3)
            XCTAssertEqual(n1[o + 1], 0, accuracy: 1e-3)
            XCTAssertEqual(n1[o + 2], -Float(0.5).squareRoot(), accuracy: 1e-3)
        }
        // Discontinuity and holes → invalid.
        var d2 = [Float](repeating: 2, count: W * H)
        for v in 0..<H { for u in 20..<W { d2[v * W + u] = 4 } }
        d2[5 * W + 5] = 0
        let n2 = normalsFromDepth(d2, width: W, height: H, fx: fx, fy: fy, cx: cx, cy: cy)
        XCTAssertEqual(n2[3 * (10 * W + 20) + 2], 0); XCTAssertEqual(n2[3 * (10 * W + 19) + 2], 0)
        XCTAssertEqual(n2[3 * (5 * W + 6) + 2], 0); XCTAssertEqual(n2[3 * (10 * W + 10) + 2], -1, accuracy: 1e-5)
    }
}
