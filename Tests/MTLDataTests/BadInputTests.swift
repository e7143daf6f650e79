import Foundation
import MTLCore
import MTLTestSupport
import XCTest
@testable import MTLData

/// Every kind of bad dataset file gives one MTLError line naming the file and what is wrong.
final class BadInputTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = makeTemporaryDirectory("mtldata-\(name)") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func tiny() throws -> String { try TinyFile.write(dir + "/tiny.h5") }

    func edit(_ path: String, _ body: (H5File) throws -> Void) throws {
        let f = try H5File.open(path, readOnly: false)
        defer { f.close() }
        try body(f)
    }

    func testMissingFile() {
        assertMTLError([dir + "/nope.h5", "not found"]) {
            _ = try MTDataset(path: dir + "/nope.h5", split: "train", tasks: ["seg"])
        }
    }

    func testNotAnHDF5File() throws {
        let path = dir + "/data.h5"
        try "seg,depth\n1,2\n".write(toFile: path, atomically: true, encoding: .utf8)
        assertMTLError([path, "not an HDF5 file"]) { _ = try MTDataset(path: path, split: "train", tasks: ["seg"]) }
    }

    func testTruncatedFile() throws {
        var o = SynthOptions()
        o.samples = 4
        o.valSamples = 0
        o.height = 32
        o.width = 32
        let path = dir + "/synth.h5"
        try Synth.write(to: path, options: o)
        let size = (try FileManager.default.attributesOfItem(atPath: path)[.size] as! NSNumber).intValue
        let handle = FileHandle(forWritingAtPath: path)!
        try handle.truncate(atOffset: UInt64(size / 2))
        try handle.close()
        assertMTLError([path, "truncated"]) {
            let ds = try MTDataset(path: path, split: "train", tasks: knownTasks.filter { o.tasks.contains($0) })
            try ds.load(Array(0..<ds.count), into: Batch())
        }
        XCTAssertFalse(DatasetInspector.isDataset(path))
        assertMTLError([path]) { _ = try DatasetInspector.describe(path) }
    }

    func testForeignHDF5File() throws {
        let path = dir + "/weights.h5"
        do { let f = try H5File.create(path); try f.write("/conv1.weight", [Float](repeating: 0, count: 4)); f.close() }
        assertMTLError([path, "'format' missing", "mtdp-hdf5"]) { _ = try MTDataset(path: path, split: "train", tasks: []) }
    }

    func testWrongFormatVersion() throws {
        let path = try TinyFile.write(dir + "/v2.h5", formatVersion: 2)
        assertMTLError([path, "format_version", "expected 1", "found 2"]) {
            _ = try MTDataset(path: path, split: "train", tasks: ["seg"])
        }
    }

    func testMissingSplit() throws {
        let path = try tiny()
        assertMTLError([path, "split group /test not found", "[train]"]) {
            _ = try MTDataset(path: path, split: "test", tasks: ["seg"])
        }
    }

    func testMissingTaskDataset() throws {
        let path = dir + "/synth.h5"
        var o = SynthOptions()
        o.samples = 2
        o.valSamples = 0
        o.height = 32
        o.width = 32
        o.tasks = ["seg", "depth"]
        try Synth.write(to: path, options: o)
        assertMTLError([path, "missing dataset /train/normals", "task 'normals'", "float32 (2,32,32,3)"]) {
            _ = try MTDataset(path: path, split: "train", tasks: ["seg", "normals"])
        }
        assertMTLError([path, "unknown task 'colour'"]) { _ = try MTDataset(path: path, split: "train", tasks: ["colour"]) }
    }

    func testShapeMismatch() throws {
        let path = try tiny()
        try edit(path) { f in try f.write("/train/depth", [Float](repeating: 1, count: 4 * 3 * 2), shape: [4, 3, 2]) }
        assertMTLError([path, "/train/depth", "expected float32 (4,2,3)", "found float32 (4,3,2)"]) {
            _ = try MTDataset(path: path, split: "train", tasks: ["depth"])
        }
    }

    func testDim0DiffersFromNumSamples() throws {
        let path = try tiny()
        try edit(path) { f in try f.write("/train/seg", [Int16](repeating: 0, count: 3 * 6), shape: [3, 2, 3]) }
        assertMTLError([path, "/train/seg", "found int16 (3,2,3)", "dim 0 must equal num_samples = 4"]) {
            _ = try MTDataset(path: path, split: "train", tasks: ["seg"])
        }
        try edit(path) { f in try f.setAttribute("/train", "num_samples", 5) }
        assertMTLError([path, "/train/images", "dim 0 must equal num_samples", "expected 5", "found 4"]) {
            _ = try MTDataset(path: path, split: "train", tasks: [])
        }
    }

    func testWrongDtype() throws {
        let path = try tiny()
        try edit(path) { f in try f.write("/train/seg", [Int32](repeating: 0, count: 24), shape: [4, 2, 3]) }
        assertMTLError([path, "/train/seg", "expected int16", "found int32"]) {
            _ = try MTDataset(path: path, split: "train", tasks: ["seg"])
        }
    }

    func testMissingNumClasses() throws {
        let path = try tiny()
        try edit(path) { f in try f.write("/train/seg", [Int16](repeating: 0, count: 24), shape: [4, 2, 3]) }
        assertMTLError([path, "/train/seg", "num_classes"]) { _ = try MTDataset(path: path, split: "train", tasks: ["seg"]) }
    }

    func testSegLabelOutOfRange() throws {
        let path = try tiny()
        try edit(path) { f in
            let bad: [Int16] = [0, 1, 2, 3, 0, 0]  // num_classes = 3, so 3 is out of range
            try bad.withUnsafeBufferPointer { try f.writeSlab("/train/seg", start: [2, 0, 0], count: [1, 2, 3], from: $0.baseAddress!) }
            let worse: [Int16] = [-2, 0, 0, 0, 0, 0]
            try worse.withUnsafeBufferPointer { try f.writeSlab("/train/seg", start: [3, 0, 0], count: [1, 2, 3], from: $0.baseAddress!) }
        }
        let ds = try MTDataset(path: path, split: "train", tasks: ["seg"])
        let batch = Batch()
        try ds.load([0, 1], into: batch)  // good samples still load
        assertMTLError([path, "/train/seg sample 2", "label 3 out of range", "num_classes = 3"]) { try ds.load([1, 2], into: batch) }
        assertMTLError([path, "/train/seg sample 3", "label -2 out of range"]) { try ds.load([3], into: batch) }
    }

    func testNaNInDepthAndNormals() throws {
        let path = try tiny()
        try edit(path) { f in
            let bad: [Float] = [1, 1, 1, 1, .nan, 1]
            try bad.withUnsafeBufferPointer { try f.writeSlab("/train/depth", start: [2, 0, 0], count: [1, 2, 3], from: $0.baseAddress!) }
            var normals = [Float](repeating: 0, count: 18)
            normals[7] = .infinity
            try normals.withUnsafeBufferPointer { try f.writeSlab("/train/normals", start: [1, 0, 0, 0], count: [1, 2, 3, 3], from: $0.baseAddress!) }
        }
        let ds = try MTDataset(path: path, split: "train", tasks: ["depth", "normals"])
        assertMTLError([path, "/train/depth sample 2", "nan", "pixel (1, 1)", "expected finite"]) {
            try ds.load([0, 2], into: Batch())
        }
        assertMTLError([path, "/train/normals sample 1", "inf", "pixel (0, 2)"]) { try ds.load([1], into: Batch()) }
    }

    func testBinaryMapWithBadValue() throws {
        let path = try tiny()
        try edit(path) { f in
            let bad: [UInt8] = [0, 1, 7, 0, 0, 0]
            try bad.withUnsafeBufferPointer { try f.writeSlab("/train/edges", start: [0, 0, 0], count: [1, 2, 3], from: $0.baseAddress!) }
        }
        let ds = try MTDataset(path: path, split: "train", tasks: ["edges"])
        assertMTLError([path, "/train/edges sample 0", "value 7", "expected 0, 1 or 255"]) { try ds.load([0], into: Batch()) }
    }

    func testBadMeanStd() throws {
        let path = try tiny()
        try edit(path) { f in try f.setAttribute("/train/images", "std", [0.2, 0.0, 0.3]) }
        assertMTLError([path, "/train/images@mean/std", "std > 0"]) { _ = try MTDataset(path: path, split: "train", tasks: []) }
    }
}
