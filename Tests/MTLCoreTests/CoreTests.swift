import XCTest
@testable import MTLCore

final class PhiloxTests: XCTestCase {
    /// Known-answer test from the Random123 distribution (kat_vectors: philox4x32 10 rounds).
    func testPhiloxKnownAnswers() {
        let zero = Philox.block(key: (0, 0), counter: (0, 0, 0, 0))
        XCTAssertEqual([zero.0, zero.1, zero.2, zero.3], [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8])
        let ones = Philox.block(key: (0xffff_ffff, 0xffff_ffff), counter: (0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff))
        XCTAssertEqual([ones.0, ones.1, ones.2, ones.3], [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd])
        let pi = Philox.block(key: (0xa409_3822, 0x299f_31d0), counter: (0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344))
        XCTAssertEqual([pi.0, pi.1, pi.2, pi.3], [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1])
    }

    func testStreamsAreReproducibleAndDistinct() {
        var a = Philox(seed: 7, stream: RNGStream.method.rawValue, index: 3)
        var b = Philox(seed: 7, stream: RNGStream.method.rawValue, index: 3)
        var c = Philox(seed: 7, stream: RNGStream.method.rawValue, index: 4)
        let xa = (0..<10).map { _ in a.nextUInt32() }
        XCTAssertEqual(xa, (0..<10).map { _ in b.nextUInt32() })
        XCTAssertNotEqual(xa, (0..<10).map { _ in c.nextUInt32() })
        var u = Philox(seed: 1, stream: 2)
        let xs = (0..<20000).map { _ in Double(u.uniform()) }
        XCTAssertEqual(xs.reduce(0, +) / 20000, 0.5, accuracy: 0.01)
        XCTAssertTrue(xs.allSatisfy { $0 >= 0 && $0 < 1 })
        var p = Philox(seed: 1, stream: 9)
        XCTAssertEqual(p.permutation(50).sorted(), Array(0..<50))
    }
}

final class HDF5Tests: XCTestCase {
    func testRoundTripDatasetsAttributesStrings() throws {
        let path = NSTemporaryDirectory() + "mtl-h5-\(UUID().uuidString).h5"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let f = try H5File.create(path)
        try f.write("/train/seg", [Int16](arrayLiteral: -1, 0, 5, 12, 3, 2), shape: [1, 2, 3], chunks: [1, 2, 3], deflate: 4)
        try f.write("/train/depth", [Float](arrayLiteral: 0.5, 1.5, 2.5, 3.5), shape: [2, 2])
        try f.writeStrings("/train/ids", ["a", "bb", "ccc"])
        try f.setAttribute("/", "format", "mtdp-hdf5")
        try f.setAttribute("/train", "num_samples", 1)
        try f.setAttribute("/train/depth", "scale", 2.5)
        f.close()
        let g = try H5File.open(path)
        defer { g.close() }
        XCTAssertEqual(try g.shape("/train/seg"), [1, 2, 3])
        XCTAssertEqual(try g.typeClass("/train/seg"), .int16)
        XCTAssertEqual(try g.read("/train/seg", as: Float.self), [-1, 0, 5, 12, 3, 2])
        XCTAssertEqual(try g.read("/train/depth", as: Float.self), [0.5, 1.5, 2.5, 3.5])
        XCTAssertEqual(try g.readStrings("/train/ids"), ["a", "bb", "ccc"])
        XCTAssertEqual(g.stringAttribute("/", "format"), "mtdp-hdf5")
        XCTAssertEqual(g.intAttribute("/train", "num_samples"), 1)
        XCTAssertEqual(g.doubleAttribute("/train/depth", "scale"), 2.5)
        XCTAssertEqual(try g.children("/"), ["train"])
        XCTAssertEqual(try g.children("/train"), ["depth", "ids", "seg"])
        var row = [Float](repeating: 0, count: 2)
        try row.withUnsafeMutableBufferPointer { try g.readSlab("/train/depth", start: [1, 0], count: [1, 2], into: $0.baseAddress!) }
        XCTAssertEqual(row, [2.5, 3.5])
        XCTAssertThrowsError(try g.shape("/train/normals")) { err in
            XCTAssertTrue("\(err)".contains("missing dataset /train/normals"))
        }
    }

    func testNonHDF5FileIsAOneLineError() throws {
        let path = NSTemporaryDirectory() + "mtl-bad-\(UUID().uuidString).h5"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Data("not hdf5 at all".utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try H5File.open(path)) { err in
            XCTAssertTrue("\(err)".contains("not an HDF5 file"))
        }
        XCTAssertThrowsError(try H5File.open(path + ".missing")) { err in
            XCTAssertTrue("\(err)".contains("file not found"))
        }
    }
}

final class PhiloxStreamTests: XCTestCase {
    /// Consecutive indices must not share draws (the block counter has its own word).
    func testConsecutiveIndicesDoNotOverlap() {
        var a = Philox(seed: 3, stream: 2, index: 10)
        var b = Philox(seed: 3, stream: 2, index: 11)
        let xa = Set((0..<4000).map { _ in a.nextUInt32() })
        let xb = (0..<4000).map { _ in b.nextUInt32() }
        XCTAssertLessThan(xb.filter { xa.contains($0) }.count, 5)
    }
}
