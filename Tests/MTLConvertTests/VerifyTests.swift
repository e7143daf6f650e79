import Foundation
import MTLCore
import MTLData
import XCTest
@testable import MTLConvert

/// `DatasetVerifier.verify`: checksums against FIPS 180-2 test vectors (not computed by the code
/// under test), a flipped byte in the file, out-of-range values, and a whole synthetic file.
final class VerifyTests: XCTestCase {
    var dir = ""
    override func setUp() {
        dir = NSTemporaryDirectory() + "mtlverify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    // FIPS 180-2 appendix B.1 and B.2.
    static let abc = Array("abc".utf8)
    static let abcHash = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    static let long = Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)
    static let longHash = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"

    /// N=1, H=W=1: images are the 3 bytes "abc"; an extra uint8 dataset holds the 56-byte vector.
    private func writeVectorFile(seg: Int16 = 1, normal: [Float] = [0, 0.6, 0.8]) throws -> String {
        let path = dir + "/vectors.h5"
        let f = try H5File.create(path)
        try f.setAttribute("/", "format", "mtdp-hdf5")
        try f.setAttribute("/", "format_version", 1)
        try f.createGroup("/train")
        try f.setAttribute("/train", "num_samples", 1)
        try f.write("/train/images", VerifyTests.abc, shape: [1, 1, 1, 3])
        try f.setAttribute("/train/images", "sha256", VerifyTests.abcHash)
        try f.write("/train/blob", VerifyTests.long, shape: [56])
        try f.setAttribute("/train/blob", "sha256", VerifyTests.longHash)
        try f.write("/train/seg", [seg], shape: [1, 1, 1])
        try f.setAttribute("/train/seg", "num_classes", 3)
        try f.write("/train/normals", normal, shape: [1, 1, 1, 3])
        try f.write("/train/depth", [Float(2.5)], shape: [1, 1, 1])
        f.close()
        return path
    }

    private func assertOneLineError(_ words: [String], file: StaticString = #filePath, line: UInt = #line,
                                    _ body: () throws -> Void) {
        do {
            try body()
            XCTFail("expected an error containing \(words)", file: file, line: line)
        } catch let e as MTLError {
            XCTAssertFalse(e.message.contains("\n"), e.message, file: file, line: line)
            for w in words { XCTAssertTrue(e.message.contains(w), "\"\(e.message)\" lacks \"\(w)\"", file: file, line: line) }
        } catch { XCTFail("expected an MTLError, got \(error)", file: file, line: line) }
    }

    func testChecksumsMatchFIPSVectors() throws {
        let report = try DatasetVerifier.verify(try writeVectorFile())
        XCTAssertTrue(report.contains("2 sha256 checksums match"), report)
        XCTAssertTrue(report.contains("1/3 classes present"), report)
        XCTAssertTrue(report.contains("valid min 2.5 max 2.5"), report)
    }

    /// One byte of the 56-byte vector flipped in the file on disk → mismatch naming the dataset
    /// and both hashes.
    func testFlippedByteIsDetected() throws {
        let path = try writeVectorFile()
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let needle = VerifyTests.long
        var hits: [Int] = []
        for i in 0...(bytes.count - needle.count) where bytes[i] == needle[0] && Array(bytes[i..<(i + needle.count)]) == needle {
            hits.append(i)
        }
        XCTAssertEqual(hits.count, 1)
        bytes[hits[0] + 20] ^= 0x04
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        assertOneLineError([path, "/train/blob", "sha256 mismatch", "expected \(VerifyTests.longHash)", "found "]) {
            _ = try DatasetVerifier.verify(path)
        }
    }

    func testRangeChecks() throws {
        assertOneLineError(["/train/seg", "label 3", "out of range", "0..<3"]) {
            _ = try DatasetVerifier.verify(try writeVectorFile(seg: 3))
        }
        assertOneLineError(["/train/normals", "norm 0.5", "unit length"]) {
            _ = try DatasetVerifier.verify(try writeVectorFile(normal: [0, 0.3, 0.4]))
        }
        // Zero normals are the invalid marker, not an error.
        XCTAssertNoThrow(try DatasetVerifier.verify(try writeVectorFile(normal: [0, 0, 0])))
    }

    /// A whole synthetic file, with checksums added by the (FIPS-tested) SHA256 over each
    /// dataset's bytes: verify passes and reports every task.
    func testSynthFileVerifies() throws {
        var o = SynthOptions()
        o.samples = 6; o.valSamples = 2; o.height = 32; o.width = 32
        o.tasks = ["seg", "depth", "normals", "edges"]
        let path = dir + "/synth.h5"
        try Synth.write(to: path, options: o)
        let f = try H5File.open(path, readOnly: false)
        for split in ["train", "val"] {
            for name in ["images", "seg", "depth", "normals", "edges"] {
                let d = "/\(split)/\(name)"
                var h = SHA256()
                switch try f.typeClass(d) {
                case .uint8: try f.read(d, as: UInt8.self).withUnsafeBytes { h.update($0) }
                case .int16: try f.read(d, as: Int16.self).withUnsafeBytes { h.update($0) }
                default: try f.read(d, as: Float.self).withUnsafeBytes { h.update($0) }
                }
                try f.setAttribute(d, "sha256", h.finalizeHex())
            }
        }
        f.close()
        let report = try DatasetVerifier.verify(path)
        XCTAssertTrue(report.contains("10 sha256 checksums match"), report)
        for word in ["split /train", "split /val", "classes present", "norms in", "positive"] {
            XCTAssertTrue(report.contains(word), "report lacks \(word): \(report)")
        }
    }
}
