import Foundation
import MTLCore
import MTLTestSupport
import XCTest
@testable import MTLData

/// A 16×16 file, N=2: seg in {-1, 0, 2, 5}; depth 3.0 on valid pixels with an invalid (0) block
/// at rows/cols 4..<12 and scattered invalid pixels; normals unit (varying direction) and zero
/// exactly where depth is invalid.
private func writeMaskFile(_ path: String) throws {
    let n = 2, h = 16, w = 16, hw = h * w
    let f = try H5File.create(path)
    defer { f.close() }
    try f.setAttribute("/", "format", "mtdp-hdf5")
    try f.setAttribute("/", "format_version", 1)
    try f.createGroup("/train")
    try f.setAttribute("/train", "num_samples", n)
    var images: [UInt8] = [], seg: [Int16] = [], depth: [Float] = [], normals: [Float] = []
    for i in 0..<n {
        for p in 0..<hw {
            let y = p / w, x = p % w
            for c in 0..<3 { images.append(UInt8((i * 31 + y * 13 + x * 7 + c * 50) % 256)) }
            seg.append([-1, 0, 2, 5][(x / 3 + y / 5 + i) % 4])
            let invalid = (y >= 4 && y < 12 && x >= 4 && x < 12) || (x * 5 + y * 3 + i) % 11 == 0
            depth.append(invalid ? 0 : 3)
            if invalid {
                normals += [0, 0, 0]
            } else {
                let v: [Float] = [Float(x) - 8, Float(y) - 8, 10]
                let norm = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).squareRoot()
                normals += v.map { $0 / norm }
            }
        }
    }
    try f.write("/train/images", images, shape: [n, h, w, 3])
    try f.write("/train/seg", seg, shape: [n, h, w])
    try f.setAttribute("/train/seg", "num_classes", 6)
    try f.write("/train/depth", depth, shape: [n, h, w])
    try f.write("/train/normals", normals, shape: [n, h, w, 3])
}

final class AugmentationTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = makeTemporaryDirectory("mtldata-\(name)") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private func draw(scale: Float = 1, offsetY: Float = 0, offsetX: Float = 0, flip: Bool = false,
                      brightness: Float = 1) -> Augmentation.Draw {
        Augmentation.Draw(scale: scale, offsetY: offsetY, offsetX: offsetX, flip: flip,
                          brightness: brightness, contrast: 1, saturation: 1)
    }

    /// Flip only: every map mirrored, normals' x negated, y and z kept.
    func testFlipMirrorsMapsAndNegatesNormalsX() throws {
        let path = try TinyFile.write(dir + "/tiny.h5")
        let ds = try MTDataset(path: path, split: "train", tasks: knownTasks)
        let original = Batch(), flipped = Batch()
        try ds.load([1, 2], into: original)
        try ds.load([1, 2], into: flipped)
        let augmenter = Augmenter(Augmentation(seed: 0), imageMean: ds.imageMean, imageStd: ds.imageStd)
        for slot in 0..<2 { augmenter.apply(draw(flip: true), to: flipped, slot: slot) }
        let h = 2, w = 3, hw = 6
        for slot in 0..<2 {
            for y in 0..<h {
                for x in 0..<w {
                    let o = y * w + x, m = y * w + (w - 1 - x)
                    for c in 0..<3 {
                        XCTAssertEqual(flipped.images[(slot * 3 + c) * hw + o], original.images[(slot * 3 + c) * hw + m])
                    }
                    for task in ["seg", "parts", "depth", "edges", "saliency"] {
                        XCTAssertEqual(flipped.targets[task]![slot * hw + o], original.targets[task]![slot * hw + m], task)
                    }
                    let nf = flipped.targets["normals"]!, no = original.targets["normals"]!
                    XCTAssertEqual(nf[(slot * 3 + 0) * hw + o], -no[(slot * 3 + 0) * hw + m], accuracy: 1e-6)
                    XCTAssertEqual(nf[(slot * 3 + 1) * hw + o], no[(slot * 3 + 1) * hw + m], accuracy: 1e-6)
                    XCTAssertEqual(nf[(slot * 3 + 2) * hw + o], no[(slot * 3 + 2) * hw + m], accuracy: 1e-6)
                }
            }
        }
        // TinyFile sample 2 has normals with x ≠ 0, so the negation was really tested.
        XCTAssertNotEqual(original.targets["normals"]![(1 * 3) * hw + 1], 0)
    }

    /// Scale 2 at offset 0, by hand: output row/col k reads source (k + 0.5)/2 − 0.5, so output
    /// (1, 1) is the bilinear mix at (0.25, 0.25) and its nearest label is source (0, 0);
    /// depth is divided by 2.
    func testScaleTwoByHand() throws {
        let path = try writeMaskFileAt(dir)
        let ds = try MTDataset(path: path, split: "train", tasks: ["seg", "depth"])
        let original = Batch(), scaled = Batch()
        try ds.load([1, 0], into: original)
        try ds.load([1, 0], into: scaled)
        let augmenter = Augmenter(Augmentation(seed: 0), imageMean: ds.imageMean, imageStd: ds.imageStd)
        augmenter.apply(draw(scale: 2), to: scaled, slot: 0)
        augmenter.apply(draw(scale: 2), to: scaled, slot: 1)
        let w = 16
        let img = original.images
        func px(_ y: Int, _ x: Int) -> Float { img[y * w + x] }  // channel 0
        let expected = 0.75 * (0.75 * px(0, 0) + 0.25 * px(0, 1)) + 0.25 * (0.75 * px(1, 0) + 0.25 * px(1, 1))
        XCTAssertEqual(scaled.images[1 * w + 1], expected, accuracy: 1e-5)
        // Output (3, 5) → source (1.25, 2.25): nearest label (1, 2).
        XCTAssertEqual(scaled.targets["seg"]![3 * w + 5], original.targets["seg"]![1 * w + 2])
        // Output (0, 0) → source (−0.25, −0.25): clamped edge, still inside the image.
        XCTAssertEqual(scaled.images[0], px(0, 0), accuracy: 1e-6)
        // Depth: in sample 1 the taps (0..1, 0..1) are valid 3.0 → 1.5 after dividing by the scale.
        XCTAssertEqual(scaled.targets["depth"]![1 * w + 1], 1.5)
        // In sample 0 the tap (0, 0) of weight 0.5625 is invalid: resampled mask 0.4375 < 0.5 → invalid.
        XCTAssertEqual(original.targets["depth"]![256 + 0], 0)
        XCTAssertEqual(scaled.targets["depth"]![256 + 1 * w + 1], 0)
        // Output (1, 2) → source (0.25, 0.75): tap (0, 0) weighs 0.1875, the valid ones 0.8125 →
        // valid, the mean of the valid taps only (3.0), / 2.
        XCTAssertEqual(scaled.targets["depth"]![256 + 1 * w + 2], 1.5)
    }

    private func writeMaskFileAt(_ dir: String) throws -> String {
        let path = dir + "/mask.h5"
        try writeMaskFile(path)
        return path
    }

    /// Random scale + crop (incl. zoom out) for many draws: labels stay in the label set, depth
    /// is either invalid (0) or exactly 3/s (no bleeding of invalid zeros into valid values),
    /// outputs whose four source taps are all invalid stay invalid, normals are unit or zero.
    func testScaleCropKeepsLabelsAndMasks() throws {
        let path = try writeMaskFileAt(dir)
        let ds = try MTDataset(path: path, split: "train", tasks: ["seg", "depth", "normals"])
        let config = Augmentation(seed: 9, minScale: 0.7, maxScale: 1.8, flipProbability: 0.5)
        let augmenter = Augmenter(config, imageMean: ds.imageMean, imageStd: ds.imageStd)
        let batch = Batch()
        let h = 16, w = 16, hw = h * w
        var sawZoomOut = false, sawValidDepth = 0, sawInvalidBlock = 0
        for epoch in 0..<25 {
            for index in 0..<2 {
                try ds.load([index], into: batch)
                let d = config.draw(epoch: epoch, index: index, height: h, width: w)
                augmenter.apply(d, to: batch, slot: 0)
                if d.scale < 1 { sawZoomOut = true }
                let seg = batch.targets["seg"]!, depth = batch.targets["depth"]!, normals = batch.targets["normals"]!
                for p in 0..<hw {
                    XCTAssertTrue([-1, 0, 2, 5].contains(seg[p]), "seg \(seg[p]) not in the label set")
                    let v = depth[p]
                    if v != 0 {
                        XCTAssertEqual(v, 3 / d.scale, accuracy: 1e-5, "depth bled: \(v) with scale \(d.scale)")
                        sawValidDepth += 1
                    }
                    let n = (normals[p], normals[hw + p], normals[2 * hw + p])
                    let norm = (n.0 * n.0 + n.1 * n.1 + n.2 * n.2).squareRoot()
                    XCTAssertTrue(norm == 0 || abs(norm - 1) < 1e-5, "normal norm \(norm)")
                    XCTAssertEqual(norm == 0, v == 0, "normals and depth validity differ at \(p)")
                }
                // Output pixels whose bilinear taps all fall in the invalid block rows/cols 4..<12.
                for y in 0..<h {
                    let sy = d.offsetY + (Float(y) + 0.5) / d.scale - 0.5
                    guard sy.rounded(.down) >= 4 && sy.rounded(.down) + 1 <= 11 else { continue }
                    for x in 0..<w {
                        let k = d.flip ? w - 1 - x : x
                        let sx = d.offsetX + (Float(k) + 0.5) / d.scale - 0.5
                        guard sx.rounded(.down) >= 4 && sx.rounded(.down) + 1 <= 11 else { continue }
                        XCTAssertEqual(depth[y * w + x], 0, "invalid block became valid at (\(y), \(x))")
                        sawInvalidBlock += 1
                    }
                }
            }
        }
        XCTAssertTrue(sawZoomOut)
        XCTAssertGreaterThan(sawValidDepth, 1000)
        XCTAssertGreaterThan(sawInvalidBlock, 100)
    }

    /// Brightness only, by hand in [0,1] pixel space; labels untouched by colour jitter.
    func testBrightnessByHand() throws {
        let path = try TinyFile.write(dir + "/tiny.h5")
        let ds = try MTDataset(path: path, split: "train", tasks: ["seg"])
        let original = Batch(), jittered = Batch()
        try ds.load([3], into: original)
        try ds.load([3], into: jittered)
        Augmenter(Augmentation(seed: 0), imageMean: ds.imageMean, imageStd: ds.imageStd)
            .apply(draw(brightness: 1.7), to: jittered, slot: 0)
        let hw = 6
        for c in 0..<3 {
            let m = Float(TinyFile.mean[c]), s = Float(TinyFile.std[c])
            for p in 0..<hw {
                let x = Float(TinyFile.image(3, p, c)) / 255
                let expected = (min(x * 1.7, 1) - m) / s
                XCTAssertEqual(jittered.images[c * hw + p], expected, accuracy: 1e-4)
            }
        }
        XCTAssertEqual(jittered.targets["seg"]!.array, original.targets["seg"]!.array)
    }

    /// The augmented sample of (epoch, dataset index) is the same whether rank 0 of 1 or rank 1
    /// of 2 loads it (draws keyed by the sample, not by the batch position or rank).
    func testAugmentationIsIndependentOfWorldSize() throws {
        let path = try makeSynthFile(dir)
        let augment = Augmentation(seed: 21, minScale: 0.8, maxScale: 1.5, brightness: 0.3, contrast: 0.3, saturation: 0.3)
        func samples(rank: Int, world: Int) throws -> [String: [Float]] {
            let sampler = try ShardedSampler(count: 24, globalBatch: 4, rank: rank, worldSize: world, seed: 4)
            let loader = PrefetchLoader(dataset: try MTDataset(path: path, split: "train", tasks: ["seg", "depth", "normals"]),
                                        sampler: sampler, startStep: 0, depth: 2, augment: augment)
            defer { loader.stop() }
            var out: [String: [Float]] = [:]
            for _ in 0..<8 {  // 6 steps per epoch: crosses into epoch 1
                let (step, b) = try loader.next()
                let hw = b.images.shape[2] * b.images.shape[3]
                for (slot, index) in b.indices.enumerated() {
                    var v = Array(b.images.buffer[(slot * 3 * hw)..<((slot + 1) * 3 * hw)])
                    v += Array(b.targets["seg"]!.buffer[(slot * hw)..<((slot + 1) * hw)])
                    v += Array(b.targets["depth"]!.buffer[(slot * hw)..<((slot + 1) * hw)])
                    v += Array(b.targets["normals"]!.buffer[(slot * 3 * hw)..<((slot + 1) * 3 * hw)])
                    out["\(sampler.epoch(ofStep: step))/\(index)"] = v
                }
            }
            return out
        }
        let single = try samples(rank: 0, world: 1)
        let second = try samples(rank: 1, world: 2)
        XCTAssertEqual(second.count, 16)
        for (key, v) in second { XCTAssertEqual(single[key], v, "sample \(key)") }
        // A different epoch of the same sample is augmented differently.
        let ds = try MTDataset(path: path, split: "train", tasks: ["seg"])
        XCTAssertNotEqual(augment.draw(epoch: 0, index: 3, height: ds.height, width: ds.width),
                          augment.draw(epoch: 1, index: 3, height: ds.height, width: ds.width))
    }

    func testInvalidConfigurationIsOneLine() {
        assertMTLError(["scales", "[1.5, 1.0]"]) { try Augmentation(seed: 0, minScale: 1.5, maxScale: 1.0).validate() }
        assertMTLError(["flip probability", "2"]) { try Augmentation(seed: 0, flipProbability: 2).validate() }
        assertMTLError(["brightness", "-1"]) { try Augmentation(seed: 0, brightness: -1).validate() }
    }
}
