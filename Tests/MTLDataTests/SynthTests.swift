import Foundation
import MTLCore
import MTLTestSupport
import XCTest
@testable import MTLData

final class SynthTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = makeTemporaryDirectory("mtldata-\(name)") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func options(samples: Int = 6, val: Int = 2, h: Int = 32, w: Int = 64, seed: UInt64 = 1,
                 tasks: [String] = knownTasks) -> SynthOptions {
        var o = SynthOptions()
        o.samples = samples
        o.valSamples = val
        o.height = h
        o.width = w
        o.seed = seed
        o.tasks = tasks
        return o
    }

    /// synth -> MTDataset -> batch equals what the file holds, with the file's mean/std applied,
    /// and the mean/std attributes are the statistics of the train images.
    func testRoundTripThroughTheLoader() throws {
        let path = dir + "/synth.h5"
        try Synth.write(to: path, options: options())
        XCTAssertFalse(FileManager.default.fileExists(atPath: path + ".tmp"))
        let ds = try MTDataset(path: path, split: "train", tasks: knownTasks)
        XCTAssertEqual(ds.count, 6)
        XCTAssertEqual(ds.height, 32)
        XCTAssertEqual(ds.width, 64)
        XCTAssertEqual(ds.numClasses("seg"), 6)
        XCTAssertEqual(ds.numClasses("parts"), 4)
        XCTAssertEqual(ds.attributes["format"], "mtdp-hdf5")
        XCTAssertEqual(ds.attributes["dataset"], "synthetic")
        XCTAssertEqual(ds.attributes["tasks"], knownTasks.joined(separator: ","))
        let meta = try JSONSerialization.jsonObject(with: Data(ds.attributes["meta_json"]!.utf8)) as! [String: Any]
        XCTAssertEqual(meta["format"] as? String, "mtdp-hdf5")
        XCTAssertEqual(meta["tasks"] as? [String], knownTasks)
        XCTAssertEqual(try MTDataset(path: path, split: "val", tasks: ["seg"]).count, 2)

        let f = try H5File.open(path)
        defer { f.close() }
        let images = try f.read("/train/images", as: UInt8.self)
        // mean/std attribute = per-channel statistics of all train pixels in [0,1].
        let hw = 32 * 64
        let mean = f.numericAttribute("/train/images", "mean")!, std = f.numericAttribute("/train/images", "std")!
        XCTAssertEqual(f.numericAttribute("/val/images", "mean")!, mean)
        for c in 0..<3 {
            var s = 0.0, q = 0.0
            for p in 0..<(6 * hw) { let x = Double(images[3 * p + c]) / 255; s += x; q += x * x }
            let m = s / Double(6 * hw)
            XCTAssertEqual(mean[c], m, accuracy: 1e-9)
            XCTAssertEqual(std[c], (q / Double(6 * hw) - m * m).squareRoot(), accuracy: 1e-9)
            XCTAssertGreaterThan(std[c], 0.05, "images nearly constant in channel \(c)")
        }
        let seg = try f.read("/train/seg", as: Int16.self)
        let depth = try f.read("/train/depth", as: Float.self)
        let normals = try f.read("/train/normals", as: Float.self)
        let edges = try f.read("/train/edges", as: UInt8.self)
        let parts = try f.read("/train/parts", as: Int16.self)
        let saliency = try f.read("/train/saliency", as: UInt8.self)

        let batch = Batch()
        let indices = [5, 2, 0]
        try ds.load(indices, into: batch)
        for (slot, i) in indices.enumerated() {
            for p in 0..<hw {
                let q = i * hw + p
                for c in 0..<3 {
                    let expected = Float((Double(images[3 * q + c]) / 255 - mean[c]) / std[c])
                    XCTAssertEqual(batch.images[(slot * 3 + c) * hw + p], expected, accuracy: 1e-4)
                    XCTAssertEqual(batch.targets["normals"]![(slot * 3 + c) * hw + p], normals[3 * q + c])
                }
                XCTAssertEqual(batch.targets["seg"]![slot * hw + p], Float(seg[q]))
                XCTAssertEqual(batch.targets["parts"]![slot * hw + p], Float(parts[q]))
                XCTAssertEqual(batch.targets["depth"]![slot * hw + p], depth[q])
                XCTAssertEqual(batch.targets["edges"]![slot * hw + p], Float(edges[q]))
                XCTAssertEqual(batch.targets["saliency"]![slot * hw + p], Float(saliency[q]))
            }
        }
    }

    func testSameSeedGivesIdenticalBytesOtherSeedDoesNot() throws {
        let a = dir + "/a.h5", b = dir + "/b.h5", c = dir + "/c.h5"
        try Synth.write(to: a, options: options(seed: 42))
        Thread.sleep(forTimeInterval: 1.1)  // a different second: catches modification times in the file
        try Synth.write(to: b, options: options(seed: 42))
        try Synth.write(to: c, options: options(seed: 43))
        let fa = try H5File.open(a), fb = try H5File.open(b), fc = try H5File.open(c)
        defer { fa.close(); fb.close(); fc.close() }
        var names: [String] = []
        for split in ["train", "val"] { names += try fa.children("/" + split).map { "/\(split)/\($0)" } }
        XCTAssertEqual(Set(names), Set(["train", "val"].flatMap { s in
            (knownTasks + ["images", "ids", "intrinsics"]).map { "/\(s)/\($0)" } }))
        for name in names {
            XCTAssertEqual(try datasetBytes(fa, name), try datasetBytes(fb, name), "\(name) differs for the same seed")
        }
        for name in ["/train/images", "/train/depth", "/val/seg"] {
            XCTAssertNotEqual(try datasetBytes(fa, name), try datasetBytes(fc, name), "\(name) equal for different seeds")
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: a)), try Data(contentsOf: URL(fileURLWithPath: b)),
                       "whole files differ for the same arguments")
        // Train and val are different scenes, and the samples within a split differ.
        XCTAssertNotEqual(Array(try fa.read("/train/depth", as: Float.self).prefix(32 * 64)),
                          Array(try fa.read("/val/depth", as: Float.self).prefix(32 * 64)))
        let d = try fa.read("/train/depth", as: Float.self)
        XCTAssertNotEqual(Array(d[0..<2048]), Array(d[2048..<4096]))
    }

    /// Geometry: depth in range; normals unit length, facing the camera, and equal to the normal
    /// of the surface obtained by back-projecting the depth map (finite differences).
    /// Labels: seg classes present, saliency = objects, edges at every class boundary.
    func testTasksAreGeometricallyConsistent() throws {
        let path = dir + "/synth.h5"
        let n = 8, h = 64, w = 96, hw = h * w
        try Synth.write(to: path, options: options(samples: n, val: 0, h: h, w: w, seed: 5))
        let f = try H5File.open(path)
        defer { f.close() }
        XCTAssertFalse(f.exists("/val"))
        let seg = try f.read("/train/seg", as: Int16.self)
        let depth = try f.read("/train/depth", as: Float.self)
        let normals = try f.read("/train/normals", as: Float.self)
        let edges = try f.read("/train/edges", as: UInt8.self)
        let saliency = try f.read("/train/saliency", as: UInt8.self)
        let intrinsics = try f.read("/train/intrinsics", as: Float.self)

        XCTAssertGreaterThanOrEqual(depth.min()!, 0.5)
        XCTAssertLessThanOrEqual(depth.max()!, 10)
        var classesPresent = Set<Int16>()
        var checkedPairs = 0, withFloor = 0, withWall = 0
        for i in 0..<n {
            let fx = Double(intrinsics[4 * i]), fy = Double(intrinsics[4 * i + 1])
            let cx = Double(intrinsics[4 * i + 2]), cy = Double(intrinsics[4 * i + 3])
            func point(_ r: Int, _ c: Int) -> (Double, Double, Double) {
                let z = Double(depth[i * hw + r * w + c])
                return ((Double(c) + 0.5 - cx) / fx * z, (Double(r) + 0.5 - cy) / fy * z, z)
            }
            func normal(_ r: Int, _ c: Int) -> (Float, Float, Float) {
                let q = 3 * (i * hw + r * w + c)
                return (normals[q], normals[q + 1], normals[q + 2])
            }
            var sampleClasses = Set<Int16>()
            for r in 0..<h {
                for c in 0..<w {
                    let q = i * hw + r * w + c
                    sampleClasses.insert(seg[q])
                    let nrm = normal(r, c)
                    let len = (nrm.0 * nrm.0 + nrm.1 * nrm.1 + nrm.2 * nrm.2).squareRoot()
                    XCTAssertEqual(len, 1, accuracy: 1e-5)
                    let x = point(r, c)
                    XCTAssertLessThan(Double(nrm.0) * x.0 + Double(nrm.1) * x.1 + Double(nrm.2) * x.2, 0,
                                      "normal does not face the camera")
                    XCTAssertEqual(saliency[q], seg[q] >= 3 ? 1 : 0)
                    if c + 1 < w, seg[q] != seg[q + 1] { XCTAssertEqual(edges[q], 1); XCTAssertEqual(edges[q + 1], 1) }
                    if r + 1 < h, seg[q] != seg[q + w] { XCTAssertEqual(edges[q], 1); XCTAssertEqual(edges[q + w], 1) }
                    // Finite differences on a planar patch: the three pixels share the exact normal
                    // and are not on an edge (so they lie on one plane).
                    guard r + 1 < h, c + 1 < w, edges[q] == 0, edges[q + 1] == 0, edges[q + w] == 0,
                          normal(r, c + 1) == nrm, normal(r + 1, c) == nrm else { continue }
                    let right = point(r, c + 1), down = point(r + 1, c)
                    let a = (right.0 - x.0, right.1 - x.1, right.2 - x.2)
                    let b = (down.0 - x.0, down.1 - x.1, down.2 - x.2)
                    var cross = (a.1 * b.2 - a.2 * b.1, a.2 * b.0 - a.0 * b.2, a.0 * b.1 - a.1 * b.0)
                    let cl = (cross.0 * cross.0 + cross.1 * cross.1 + cross.2 * cross.2).squareRoot()
                    cross = (cross.0 / cl, cross.1 / cl, cross.2 / cl)
                    let agreement = abs(cross.0 * Double(nrm.0) + cross.1 * Double(nrm.1) + cross.2 * Double(nrm.2))
                    if agreement < 0.995 {
                        XCTFail("sample \(i) pixel (\(r),\(c)): normal \(nrm) vs depth-derived \(cross): |cos| = \(agreement)")
                        return
                    }
                    checkedPairs += 1
                }
            }
            // Every scene has objects; floor and walls can be hidden (by boxes, by the view), rarely.
            XCTAssertTrue(sampleClasses.contains { $0 >= 3 }, "sample \(i) has no object")
            if sampleClasses.contains(0) { withFloor += 1 }
            if sampleClasses.contains(1) { withWall += 1 }
            classesPresent.formUnion(sampleClasses)
        }
        XCTAssertGreaterThanOrEqual(withFloor, n / 2)
        XCTAssertGreaterThanOrEqual(withWall, n - 1)
        XCTAssertGreaterThan(checkedPairs, n * hw / 2, "too few planar pixels checked")
        XCTAssertTrue(classesPresent.isSubset(of: Set(0..<6)))
        XCTAssertGreaterThanOrEqual(classesPresent.count, 5, "classes present: \(classesPresent.sorted())")
    }

    /// The image must carry the labels' cues but not trivially: a nearest-class-mean colour
    /// classifier should do clearly better than chance and clearly worse than perfect.
    func testColourIsACueButNotTheAnswer() throws {
        let path = dir + "/synth.h5"
        let n = 8, hw = 32 * 64
        try Synth.write(to: path, options: options(samples: n, val: 0, seed: 9, tasks: ["seg"]))
        let f = try H5File.open(path)
        defer { f.close() }
        let images = try f.read("/train/images", as: UInt8.self)
        let seg = try f.read("/train/seg", as: Int16.self)
        var sums = [[Double]](repeating: [0, 0, 0], count: 6), counts = [Double](repeating: 0, count: 6)
        for q in 0..<(n * hw) {
            for c in 0..<3 { sums[Int(seg[q])][c] += Double(images[3 * q + c]) }
            counts[Int(seg[q])] += 1
        }
        let means = (0..<6).map { k in sums[k].map { $0 / max(counts[k], 1) } }
        var correct = 0
        for q in 0..<(n * hw) {
            var best = 0, bestDistance = Double.infinity
            for k in 0..<6 where counts[k] > 0 {
                let d = (0..<3).reduce(0.0) { $0 + pow(Double(images[3 * q + $1]) - means[k][$1], 2) }
                if d < bestDistance { bestDistance = d; best = k }
            }
            if best == Int(seg[q]) { correct += 1 }
        }
        let accuracy = Double(correct) / Double(n * hw)
        let majority = counts.max()! / Double(n * hw)
        XCTAssertGreaterThan(accuracy, 0.3, "colour carries too little information")
        XCTAssertLessThan(accuracy, 0.97, "colour alone solves segmentation")
        print("nearest-mean colour accuracy \(accuracy), majority class \(majority)")
    }

    func testBadOptionsAreOneLineErrors() {
        var o = options()
        o.height = 50
        assertMTLError(["--height", "multiple of 32", "found 50"]) { try Synth.write(to: dir + "/x.h5", options: o) }
        o = options()
        o.tasks = ["seg", "colour"]
        assertMTLError(["unknown task 'colour'"]) { try Synth.write(to: dir + "/x.h5", options: o) }
        o = options()
        o.numClasses = 3
        assertMTLError(["classes", "found 3"]) { try Synth.write(to: dir + "/x.h5", options: o) }
        o = options()
        o.samples = 0
        assertMTLError(["--samples", "found 0"]) { try Synth.write(to: dir + "/x.h5", options: o) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x.h5"))
        assertMTLError([dir + "/missing/x.h5.tmp", "cannot create"]) {
            try Synth.write(to: dir + "/missing/x.h5", options: options())
        }
    }

    func testInspectorDescribesSchemaAndStatistics() throws {
        let path = dir + "/synth.h5"
        try Synth.write(to: path, options: options(samples: 4, val: 2, tasks: knownTasks))
        XCTAssertTrue(DatasetInspector.isDataset(path))
        let text = try DatasetInspector.describe(path)
        for needle in ["mtdp-hdf5 v1", "split /train: 4 samples, 32x64", "split /val: 2 samples",
                       "seg        int16    (4,32,64)", "chunks (1,32,64)", "deflate(4)",
                       "0 floor", "1 wall", "ignore (-1) 0.00%", "valid: min", "invalid (0) 0.00%",
                       "norm over valid pixels: [1.0000, 1.0000]", "positive (1)", "pixels in [0,1]: mean"] {
            XCTAssertTrue(text.contains(needle), "describe output lacks \"\(needle)\":\n\(text)")
        }
        XCTAssertFalse(text.contains("OUT OF RANGE"))
        // Not a dataset: a plain HDF5 file and a text file.
        let other = dir + "/other.h5"
        do { let f = try H5File.create(other); try f.write("/x", [Float(1), 2]); f.close() }
        XCTAssertFalse(DatasetInspector.isDataset(other))
        XCTAssertTrue(try DatasetInspector.describe(other).contains("not an mtdp-hdf5 dataset"))
        let text2 = dir + "/notes.txt"
        try "hello".write(toFile: text2, atomically: true, encoding: .utf8)
        XCTAssertFalse(DatasetInspector.isDataset(text2))
        assertMTLError(["notes.txt", "not an HDF5 file"]) { _ = try DatasetInspector.describe(text2) }
    }

    /// Inspect reports bad values instead of failing on them.
    func testInspectorFlagsBadLabels() throws {
        let path = try TinyFile.write(dir + "/tiny.h5")
        do {
            let f = try H5File.open(path, readOnly: false)
            var bad: [Int16] = [9, 0, 0, 0, 0, 0]
            try bad.withUnsafeMutableBufferPointer {
                try f.writeSlab("/train/seg", start: [1, 0, 0], count: [1, 2, 3], from: UnsafePointer($0.baseAddress!))
            }
            var nan: [Float] = [.nan, 1, 1, 1, 1, 1]
            try nan.withUnsafeMutableBufferPointer {
                try f.writeSlab("/train/depth", start: [2, 0, 0], count: [1, 2, 3], from: UnsafePointer($0.baseAddress!))
            }
            f.close()
        }
        let text = try DatasetInspector.describe(path)
        XCTAssertTrue(text.contains("OUT OF RANGE: 1 pixels"), text)
        XCTAssertTrue(text.contains("NON-FINITE OR NEGATIVE: 1 pixels"), text)
    }

    /// Speed in this (debug) build is only reported; the release target (< 1 s for 64 + 16
    /// samples of 64×96) is checked by hand with `mtl synth` (see the report).
    func testDefaultSizeSpeed() throws {
        let start = Date()
        var o = SynthOptions()
        o.samples = 16
        o.valSamples = 4
        try Synth.write(to: dir + "/speed.h5", options: o)
        print(String(format: "synth 20 samples 64x96 (debug build): %.3f s", Date().timeIntervalSince(start)))
    }
}
