import Foundation
import MTLCore
import MTLTestSupport
import XCTest
@testable import MTLData

/// The loader against a hand-written file whose every value is known (TinyFile).
final class DatasetTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = makeTemporaryDirectory("mtldata-\(name)") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func testLoadsEveryTaskInTheDocumentedLayout() throws {
        let path = try TinyFile.write(dir + "/tiny.h5")
        let ds = try MTDataset(path: path, split: "train", tasks: knownTasks)
        XCTAssertEqual(ds.count, 4)
        XCTAssertEqual(ds.height, 2)
        XCTAssertEqual(ds.width, 3)
        XCTAssertEqual(ds.numClasses("seg"), 3)
        XCTAssertEqual(ds.numClasses("parts"), 7)
        XCTAssertNil(ds.numClasses("depth"))
        XCTAssertEqual(ds.attributes["format"], "mtdp-hdf5")
        XCTAssertEqual(ds.attributes["format_version"], "1")
        XCTAssertEqual(ds.attributes["dataset"], "tiny")

        let batch = Batch()
        let indices = [3, 0, 3]  // any order, repeats allowed
        try ds.load(indices, into: batch)
        XCTAssertEqual(batch.indices, indices)
        let b = indices.count, h = 2, w = 3, hw = 6
        XCTAssertEqual(batch.images.shape, [b, 3, h, w])
        XCTAssertEqual(batch.targets["seg"]!.shape, [b, h, w])
        XCTAssertEqual(batch.targets["parts"]!.shape, [b, h, w])
        XCTAssertEqual(batch.targets["depth"]!.shape, [b, 1, h, w])
        XCTAssertEqual(batch.targets["normals"]!.shape, [b, 3, h, w])
        XCTAssertEqual(batch.targets["edges"]!.shape, [b, 1, h, w])
        XCTAssertEqual(batch.targets["saliency"]!.shape, [b, 1, h, w])
        for (slot, i) in indices.enumerated() {
            for p in 0..<hw {
                for c in 0..<3 {
                    let expected = (Float(TinyFile.image(i, p, c)) / 255 - Float(TinyFile.mean[c])) / Float(TinyFile.std[c])
                    XCTAssertEqual(batch.images[(slot * 3 + c) * hw + p], expected, accuracy: 1e-5)
                    XCTAssertEqual(batch.targets["normals"]![(slot * 3 + c) * hw + p], TinyFile.normal(i, p)[c])
                }
                XCTAssertEqual(batch.targets["seg"]![slot * hw + p], Float(TinyFile.seg(i, p)))
                XCTAssertEqual(batch.targets["parts"]![slot * hw + p], Float(TinyFile.part(i, p)))
                XCTAssertEqual(batch.targets["depth"]![slot * hw + p], TinyFile.depth(i, p))
                let e = TinyFile.edge(i, p), s = TinyFile.saliency(i, p)
                XCTAssertEqual(batch.targets["edges"]![slot * hw + p], e == 255 ? -1 : Float(e))
                XCTAssertEqual(batch.targets["saliency"]![slot * hw + p], s == 255 ? -1 : Float(s))
            }
        }
        // The tiny file has -1 (ignore) labels and 255 ignores: make sure they were exercised.
        XCTAssertTrue(batch.targets["seg"]!.array.contains(-1))
        XCTAssertTrue(batch.targets["edges"]!.array.contains(-1))
    }

    func testBatchTensorsAreReusedWhenShapesRepeat() throws {
        let path = try TinyFile.write(dir + "/tiny.h5")
        let ds = try MTDataset(path: path, split: "train", tasks: ["seg", "depth"])
        let batch = Batch()
        try ds.load([0, 1], into: batch)
        let images = batch.images.data, seg = batch.targets["seg"]!, segData = seg.data
        try ds.load([2, 3], into: batch)
        XCTAssertEqual(batch.images.data, images, "images reallocated")
        XCTAssertTrue(batch.targets["seg"]! === seg)
        XCTAssertEqual(batch.targets["seg"]!.data, segData, "seg reallocated")
        XCTAssertEqual(batch.targets["depth"]![0], TinyFile.depth(2, 0))
        try ds.load([1], into: batch)  // smaller batch: shape follows, storage kept
        XCTAssertEqual(batch.images.shape, [1, 3, 2, 3])
        XCTAssertEqual(batch.images.data, images)
    }

    func testIdentityNormalisationWithoutMeanStd() throws {
        let path = try TinyFile.write(dir + "/tiny.h5", withMeanStd: false)
        let ds = try MTDataset(path: path, split: "train", tasks: [])
        let batch = Batch()
        try ds.load([2], into: batch)
        for p in 0..<6 {
            for c in 0..<3 {
                XCTAssertEqual(batch.images[c * 6 + p], Float(TinyFile.image(2, p, c)) / 255, accuracy: 1e-6)
            }
        }
    }

    func testIndexOutOfRangeIsAnError() throws {
        let path = try TinyFile.write(dir + "/tiny.h5")
        let ds = try MTDataset(path: path, split: "train", tasks: ["seg"])
        assertMTLError(["sample index 4 out of range 0..<4"]) { try ds.load([1, 4], into: Batch()) }
    }

    func testHasLabelFlagTurnsSampleIntoIgnore() throws {
        let path = try TinyFile.write(dir + "/tiny.h5")
        do {
            let f = try H5File.open(path, readOnly: false)
            try f.write("/train/has_seg", [UInt8(1), 0, 1, 1])
            try f.write("/train/has_depth", [UInt8(1), 1, 0, 1])
            f.close()
        }
        let ds = try MTDataset(path: path, split: "train", tasks: ["seg", "depth"])
        let batch = Batch()
        try ds.load([1, 2], into: batch)
        XCTAssertEqual(Array(batch.targets["seg"]!.array[0..<6]), [Float](repeating: -1, count: 6))
        XCTAssertEqual(batch.targets["seg"]![6], Float(TinyFile.seg(2, 0)))
        XCTAssertEqual(batch.targets["depth"]![0], TinyFile.depth(1, 0))
        XCTAssertEqual(Array(batch.targets["depth"]!.array[6..<12]), [Float](repeating: 0, count: 6))
    }
}
