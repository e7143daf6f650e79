import Foundation
import MTLCore
import MTLTestSupport
import XCTest
@testable import MTLData

/// `mtl synth --noise-task`: noisy pseudo-auxiliary tasks.
final class SynthNoiseTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = makeTemporaryDirectory("mtldata-\(name)") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func options(_ tasks: [String], _ noise: [String], samples: Int = 6, val: Int = 2, seed: UInt64 = 3) throws -> SynthOptions {
        var o = SynthOptions()
        o.samples = samples
        o.valSamples = val
        o.height = 32
        o.width = 64
        o.seed = seed
        o.tasks = tasks
        o.noiseTasks = try noise.map(NoiseTaskSpec.parse)
        return o
    }

    func write(_ name: String, _ o: SynthOptions) throws -> H5File {
        let path = dir + "/" + name
        try Synth.write(to: path, options: o)
        return try H5File.open(path)
    }

    /// |k − n·p| within 5 standard deviations of a binomial count.
    func assertBinomial(_ k: Int, n: Int, p: Double, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        let sd = (Double(n) * p * (1 - p)).squareRoot()
        XCTAssertLessThanOrEqual(abs(Double(k) - Double(n) * p), 5 * sd + 1, "\(what): \(k) of \(n), expected ≈ \(Double(n) * p)",
                                 file: file, line: line)
    }

    func testParseAndCanonicalText() throws {
        XCTAssertEqual(try NoiseTaskSpec.parse("parts=seg:replace:0.5"),
                       NoiseTaskSpec(target: "parts", source: "seg", kind: .replace, p: 0.5))
        XCTAssertEqual(try NoiseTaskSpec.parse("saliency=saliency:replace").p, 1)
        XCTAssertEqual(try NoiseTaskSpec.parse("parts=seg:shuffle").kind, .shuffle)
        XCTAssertEqual(try NoiseTaskSpec.parse("parts=seg:replace:0.25").text, "parts=seg:replace:0.25")
        XCTAssertEqual(try NoiseTaskSpec.parse("parts=seg:shuffle").text, "parts=seg:shuffle")
    }

    /// On a buffer: the number of re-drawn labels is a binomial count with probability P, the number
    /// of changed labels one with P·(K−1)/K, and only labels in 0..<K appear.
    func testReplacedFractionIsP() {
        let n = 200_000, K = 6
        for p in [0.1, 0.5, 0.9] {
            var labels = (0..<n).map { Int16($0 % K) }
            let original = labels
            var rng = Philox(seed: 7, stream: RNGStream.synthNoise.rawValue)
            let drawn = labels.withUnsafeMutableBufferPointer {
                LabelNoise.replace($0.baseAddress!, count: n, classes: K, ignore: -1, p: p, rng: &rng)
            }
            assertBinomial(drawn, n: n, p: p, "re-drawn at P=\(p)")
            let changed = zip(labels, original).filter { $0 != $1 }.count
            assertBinomial(changed, n: n, p: p * Double(K - 1) / Double(K), "changed at P=\(p)")
            XCTAssertTrue(labels.allSatisfy { $0 >= 0 && $0 < K })
        }
    }

    /// Ignore pixels (class −1, binary 255, depth 0) stay ignore even at P = 1; every valid one is re-drawn.
    func testIgnorePixelsAreUntouched() {
        var rng = Philox(seed: 1, stream: RNGStream.synthNoise.rawValue)
        var cls: [Int16] = (0..<1000).map { $0 % 3 == 0 ? -1 : 2 }
        let c = cls.withUnsafeMutableBufferPointer { LabelNoise.replace($0.baseAddress!, count: 1000, classes: 4, ignore: -1, p: 1, rng: &rng) }
        XCTAssertEqual(c, 666)
        for i in 0..<1000 where i % 3 == 0 { XCTAssertEqual(cls[i], -1) }
        XCTAssertTrue(cls.allSatisfy { $0 >= -1 && $0 < 4 })

        var bits: [UInt8] = (0..<1000).map { $0 % 4 == 0 ? 255 : 1 }
        let b = bits.withUnsafeMutableBufferPointer { LabelNoise.replace($0.baseAddress!, count: 1000, classes: 2, ignore: 255, p: 1, rng: &rng) }
        XCTAssertEqual(b, 750)
        for i in 0..<1000 { XCTAssertTrue(i % 4 == 0 ? bits[i] == 255 : bits[i] <= 1) }
        assertBinomial(bits.filter { $0 == 0 }.count, n: 750, p: 0.5, "zeros among pure-noise bits")

        var depth: [Float] = (0..<1000).map { $0 % 5 == 0 ? 0 : 3 }
        let d = depth.withUnsafeMutableBufferPointer {
            LabelNoise.replaceDepth($0.baseAddress!, count: 1000, range: 0.64...8.4, p: 1, rng: &rng)
        }
        XCTAssertEqual(d, 800)
        for i in 0..<1000 {
            if i % 5 == 0 { XCTAssertEqual(depth[i], 0) } else { XCTAssertTrue(depth[i] >= 0.64 && depth[i] <= 8.4) }
        }
        XCTAssertLessThan(depth.filter { $0 == 3 }.count, 5, "valid depths were not replaced")
    }

    func testDerangementHasNoFixedPoint() {
        for n in 2...40 {
            for s in 0..<5 {
                var rng = Philox(seed: UInt64(s), stream: 1, index: UInt64(n))
                let p = LabelNoise.derangement(n, rng: &rng)
                XCTAssertEqual(p.sorted(), Array(0..<n))
                XCTAssertFalse(p.indices.contains { p[$0] == $0 }, "\(p)")
            }
        }
    }

    /// File level: parts = seg with P = 0.3 changes ≈ 0.3·5/6 of the pixels; P = 0 is an exact copy; in
    /// place (saliency=saliency) with P = 0 equals the clean file's saliency.
    func testFileReplaceFractionAndExactCopyAtZero() throws {
        let f = try write("r.h5", try options(["seg", "depth"], ["parts=seg:replace:0.3"]))
        defer { f.close() }
        let seg = try f.read("/train/seg", as: Int16.self), parts = try f.read("/train/parts", as: Int16.self)
        assertBinomial(zip(seg, parts).filter { $0 != $1 }.count, n: seg.count, p: 0.3 * 5 / 6, "changed seg → parts")
        XCTAssertEqual(f.intAttribute("/train/parts", "num_classes"), 6)
        XCTAssertEqual(f.stringAttribute("/train/parts", "noise"), "replace")
        XCTAssertEqual(f.stringAttribute("/train/parts", "noise_source"), "seg")
        XCTAssertEqual(f.stringAttribute("/train/parts", "noise_seed"), "3")
        XCTAssertEqual(f.numericAttribute("/train/parts", "noise_p"), [0.3])
        XCTAssertEqual(f.stringAttribute("/", "tasks"), "seg,depth,parts")
        XCTAssertEqual(f.stringAttribute("/", "noise_tasks"), "parts=seg:replace:0.3")
        // The loader takes the noisy slot like any task.
        let ds = try MTDataset(path: dir + "/r.h5", split: "train", tasks: ["seg", "parts"])
        XCTAssertEqual(ds.numClasses("parts"), 6)

        let z = try write("z.h5", try options(["seg", "saliency"], ["parts=seg:replace:0", "saliency=saliency:replace:0"]))
        let clean = try write("c.h5", try options(["seg", "saliency"], []))
        defer { z.close(); clean.close() }
        for split in ["train", "val"] {
            XCTAssertEqual(try z.read("/\(split)/parts", as: Int16.self), try z.read("/\(split)/seg", as: Int16.self))
            XCTAssertEqual(try z.read("/\(split)/saliency", as: UInt8.self), try clean.read("/\(split)/saliency", as: UInt8.self))
        }
        XCTAssertTrue(try DatasetInspector.describe(dir + "/z.h5").contains("NOISY TASK: a copy of /train/seg"))
    }

    /// Shuffle: image i holds the seg labels of image π(i) ≠ i, π a permutation of the split.
    func testShuffleGivesEveryImageAnotherImagesLabels() throws {
        let f = try write("s.h5", try options(["seg"], ["parts=seg:shuffle"], samples: 7, val: 3))
        defer { f.close() }
        let hw = 32 * 64
        for (split, n) in [("train", 7), ("val", 3)] {
            let seg = try f.read("/\(split)/seg", as: Int16.self), parts = try f.read("/\(split)/parts", as: Int16.self)
            var sources: [Int] = []
            for i in 0..<n {
                let mine = Array(parts[(i * hw)..<((i + 1) * hw)])
                let matches = (0..<n).filter { Array(seg[($0 * hw)..<(($0 + 1) * hw)]) == mine }
                XCTAssertEqual(matches.count, 1, "\(split) image \(i): labels match images \(matches)")
                XCTAssertFalse(matches.contains(i), "\(split) image \(i) kept its own labels")
                sources += matches
            }
            XCTAssertEqual(sources.sorted(), Array(0..<n), "\(split): not a permutation")
        }
        XCTAssertEqual(f.stringAttribute("/train/parts", "noise"), "shuffle")
        XCTAssertTrue(try DatasetInspector.describe(dir + "/s.h5").contains("labels of another image"))
    }

    /// Depth replace keeps invalid pixels and draws in the synthetic depth range; binary → class map works.
    func testDepthAndBinaryToClassMap() throws {
        let f = try write("d.h5", try options(["depth", "saliency"], ["depth=depth:replace:1", "parts=saliency:replace:0"]))
        defer { f.close() }
        let depth = try f.read("/train/depth", as: Float.self)
        XCTAssertTrue(depth.allSatisfy { $0 >= 0.64 && $0 <= 8.4 })
        let parts = try f.read("/train/parts", as: Int16.self), sal = try f.read("/train/saliency", as: UInt8.self)
        XCTAssertEqual(parts, sal.map { Int16($0) })
        XCTAssertEqual(f.intAttribute("/train/parts", "num_classes"), 2)
    }

    func testSameFlagsGiveIdenticalBytes() throws {
        let flags = ["parts=seg:replace:0.4", "saliency=saliency:shuffle"]
        try Synth.write(to: dir + "/a.h5", options: try options(["seg", "saliency"], flags))
        try Synth.write(to: dir + "/b.h5", options: try options(["seg", "saliency"], flags))
        try Synth.write(to: dir + "/c.h5", options: try options(["seg", "saliency"], ["parts=seg:replace:0.4", "saliency=saliency:shuffle"], seed: 4))
        let a = try Data(contentsOf: URL(fileURLWithPath: dir + "/a.h5"))
        XCTAssertEqual(a, try Data(contentsOf: URL(fileURLWithPath: dir + "/b.h5")))
        XCTAssertNotEqual(a, try Data(contentsOf: URL(fileURLWithPath: dir + "/c.h5")))
    }

    func testBadValuesAreOneLineErrors() throws {
        for (text, words) in [("parts=seg:blur", ["unknown noise kind 'blur'"]),
                              ("parts=seg:replace:1.5", ["P must be a number in [0, 1]", "1.5"]),
                              ("parts=seg:replace:-0.1", ["P must be a number in [0, 1]"]),
                              ("parts=seg:shuffle:0.5", ["shuffle takes no P"]),
                              ("parts:seg", ["expected TASK=SOURCE:KIND[:P]"])] {
            assertMTLError(words) { _ = try NoiseTaskSpec.parse(text) }
        }
        func fails(_ tasks: [String], _ noise: [String], _ words: [String], samples: Int = 6) throws {
            let o = try options(tasks, noise, samples: samples)
            assertMTLError(words) { try Synth.write(to: dir + "/x.h5", options: o) }
        }
        try fails(["seg"], ["parts=edges:replace:0.5"], ["source task edges is not generated"])
        try fails(["seg", "parts"], ["parts=seg:replace:0.5"], ["target slot parts already holds the clean parts labels"])
        try fails(["seg", "depth"], ["normals=depth:replace"], ["target slot normals cannot hold depth labels"])
        try fails(["depth"], ["seg=depth:replace"], ["target slot seg cannot hold depth labels"])
        try fails(["seg", "normals"], ["parts=normals:shuffle"], ["cannot hold normals labels"])
        try fails(["seg"], ["saliency=seg:replace:0.5"], ["class-count mismatch", "seg has 6 classes", "binary"])
        try fails(["seg"], ["colour=seg:replace"], ["unknown task 'colour'"])
        try fails(["seg"], ["parts=seg:replace", "parts=seg:shuffle"], ["target of two --noise-task"])
        try fails(["seg"], ["parts=seg:shuffle"], ["at least 2 samples"], samples: 1)
        var o = try options(["seg"], [])
        o.noiseTasks = [NoiseTaskSpec(target: "parts", source: "seg", kind: .replace, p: 2)]
        assertMTLError(["P must be in [0, 1]"]) { try Synth.write(to: dir + "/x.h5", options: o) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x.h5"))
    }
}
