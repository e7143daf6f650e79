import Foundation
import MTLCore

/// Training-time augmentation of dense multi-task samples, applied to the image and EVERY label
/// with one geometric transform per sample:
///
/// 1. random scale s and crop back to H×W — the crop window is (H/s)×(W/s) at a random offset,
///    resampled to H×W (LibMTL's RandomScaleCrop; s < 1 makes the window larger than the image
///    and pixels outside it are filled with ignore / invalid / the mean colour). Output pixel y
///    reads source row  offsetY + (y + 0.5)/s − 0.5  (half-pixel centres, align_corners=False);
///    - image: bilinear;
///    - depth: mask-aware bilinear (0 = invalid): the validity mask is resampled with the same
///      weights, a pixel is valid when that mask is ≥ 0.5, and its value is the weighted mean of
///      the VALID neighbours only, so invalid pixels never bleed into valid ones. Depth is then
///      divided by s, as LibMTL does: zooming in by s is what moving the camera s times closer
///      would look like, so the scene is s times nearer;
///    - normals: the same mask-aware bilinear on the vectors (zero vector = invalid), renormalised
///      to unit length (no change of direction with scale: a zoom does not rotate surfaces);
///    - seg, parts, edges, saliency: nearest neighbour (labels stay in the label set).
/// 2. horizontal flip with probability `flipProbability` (normals' x component negated).
/// 3. colour jitter on the image only, in [0,1] pixel space (torchvision ColorJitter's
///    definitions, fixed order brightness → contrast → saturation, clamped to [0,1] after each).
///
/// Every draw comes from Philox(seed, .augmentation, (epoch << 32) | datasetIndex): the augmented
/// sample depends only on (seed, epoch, sample), never on the rank, world size, batch position
/// or timing (ARCHITECTURE.md invariant 2). All seven numbers are drawn for every sample whatever
/// the configuration, so turning one augmentation off does not change the others' draws.
public struct Augmentation {
    public var enabled = true
    public var seed: UInt64
    /// The Philox stream of the draws: .augmentation, or Auto-λ's second data stream's own.
    public var stream: UInt64 = RNGStream.augmentation.rawValue
    /// Scale drawn uniformly in [minScale, maxScale] ...
    public var minScale: Float = 1.0
    public var maxScale: Float = 1.5
    /// ... or, when non-empty, uniformly from this list (LibMTL uses [1.0, 1.2, 1.5]).
    public var scaleChoices: [Float] = []
    public var flipProbability: Float = 0.5
    /// ColorJitter amounts: factor uniform in [max(0, 1 − a), 1 + a]; 0 = off.
    public var brightness: Float = 0
    public var contrast: Float = 0
    public var saturation: Float = 0

    public init(seed: UInt64, enabled: Bool = true, minScale: Float = 1.0, maxScale: Float = 1.5,
                scaleChoices: [Float] = [], flipProbability: Float = 0.5,
                brightness: Float = 0, contrast: Float = 0, saturation: Float = 0) {
        self.seed = seed
        self.enabled = enabled
        self.minScale = minScale
        self.maxScale = maxScale
        self.scaleChoices = scaleChoices
        self.flipProbability = flipProbability
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
    }

    /// Throws one line naming the bad setting.
    public func validate() throws {
        let scales = scaleChoices.isEmpty ? [minScale, maxScale] : scaleChoices
        guard scales.allSatisfy({ $0 > 0 && $0.isFinite }), minScale <= maxScale else {
            throw MTLError("augmentation: scales must be finite and > 0 with min <= max, found "
                           + (scaleChoices.isEmpty ? "[\(minScale), \(maxScale)]" : "choices \(scaleChoices)"))
        }
        guard flipProbability >= 0 && flipProbability <= 1 else {
            throw MTLError("augmentation: flip probability must be in [0, 1], found \(flipProbability)")
        }
        for (name, v) in [("brightness", brightness), ("contrast", contrast), ("saturation", saturation)]
        where !(v >= 0 && v.isFinite) {
            throw MTLError("augmentation: \(name) must be a finite amount >= 0, found \(v)")
        }
    }

    /// The random choices for one sample.
    public struct Draw: Equatable {
        public var scale: Float
        /// Crop window origin in source pixels (may be negative when scale < 1).
        public var offsetY: Float, offsetX: Float
        public var flip: Bool
        public var brightness: Float, contrast: Float, saturation: Float
    }

    public func draw(epoch: Int, index: Int, height: Int, width: Int) -> Draw {
        var rng = Philox(seed: seed, stream: stream,
                         index: UInt64(epoch) << 32 | UInt64(UInt32(truncatingIfNeeded: index)))
        let u = (0..<7).map { _ in rng.uniform() }
        let scale = scaleChoices.isEmpty
            ? minScale + (maxScale - minScale) * u[0]
            : scaleChoices[min(scaleChoices.count - 1, Int(u[0] * Float(scaleChoices.count)))]
        // Window (H/s)×(W/s): its origin is uniform over the positions that keep it inside the
        // image (s ≥ 1) or keep the image inside it (s < 1).
        let slackY = Float(height) - Float(height) / scale, slackX = Float(width) - Float(width) / scale
        func factor(_ amount: Float, _ v: Float) -> Float { max(0, 1 - amount) + (1 + amount - max(0, 1 - amount)) * v }
        return Draw(scale: scale, offsetY: slackY * u[1], offsetX: slackX * u[2], flip: u[3] < flipProbability,
                    brightness: factor(brightness, u[4]), contrast: factor(contrast, u[5]),
                    saturation: factor(saturation, u[6]))
    }
}

/// Applies an `Augmentation` to loaded batches in place, with scratch buffers reused from call
/// to call (no allocation in steady state). One per thread.
public final class Augmenter {
    public let config: Augmentation
    private let imageMean: [Float]
    private let imageStd: [Float]
    private var source: [Float] = []
    // Per-axis resampling tables of the current sample.
    private var rowLo: [Int] = [], rowHi: [Int] = [], rowNear: [Int] = [], rowFrac: [Float] = [], rowInside: [Bool] = []
    private var colLo: [Int] = [], colHi: [Int] = [], colNear: [Int] = [], colFrac: [Float] = [], colInside: [Bool] = []

    /// `imageMean`/`imageStd`: the dataset's normalisation (MTDataset.imageMean/imageStd), so that
    /// colour jitter works on [0,1] pixels.
    public init(_ config: Augmentation, imageMean: [Float], imageStd: [Float]) {
        self.config = config
        self.imageMean = imageMean
        self.imageStd = imageStd
    }

    /// Augments every sample of `batch` (sample k is dataset index batch.indices[k]) for `epoch`.
    public func apply(to batch: Batch, epoch: Int) {
        guard config.enabled else { return }
        let h = batch.images.shape[2], w = batch.images.shape[3]
        for (slot, index) in batch.indices.enumerated() {
            let d = config.draw(epoch: epoch, index: index, height: h, width: w)
            apply(d, to: batch, slot: slot)
        }
    }

    /// Applies one draw to sample `slot` of `batch`.
    public func apply(_ d: Augmentation.Draw, to batch: Batch, slot: Int) {
        let h = batch.images.shape[2], w = batch.images.shape[3], hw = h * w
        let identity = d.scale == 1 && d.offsetY == 0 && d.offsetX == 0 && !d.flip
        if !identity {
            buildTables(d, height: h, width: w)
            if source.count < 3 * hw { source = [Float](repeating: 0, count: 3 * hw) }
            resampleBilinear(batch.images.data + slot * 3 * hw, channels: 3, h: h, w: w)
            for (task, t) in batch.targets {
                switch task {
                case "depth":
                    resampleMasked(t.data + slot * hw, channels: 1, h: h, w: w, normalise: false)
                    let inv = 1 / d.scale
                    let p = t.data + slot * hw
                    for i in 0..<hw { p[i] *= inv }
                case "normals":
                    let p = t.data + slot * 3 * hw
                    resampleMasked(p, channels: 3, h: h, w: w, normalise: true)
                    if d.flip { for i in 0..<hw { p[i] = p[i] == 0 ? 0 : -p[i] } }
                default:  // seg, parts ([B,H,W]), edges, saliency ([B,1,H,W]): one plane per sample
                    resampleNearest(t.data + slot * hw, h: h, w: w)
                }
            }
        }
        jitter(batch.images.data + slot * 3 * hw, hw: hw, d)
    }

    /// Output row y reads source row  offsetY + (y + 0.5)/s − 0.5; columns likewise, with the
    /// flip folded in (output column x takes the crop's column w−1−x).
    private func buildTables(_ d: Augmentation.Draw, height h: Int, width w: Int) {
        func table(_ n: Int, offset: Float, flip: Bool,
                   _ lo: inout [Int], _ hi: inout [Int], _ near: inout [Int], _ frac: inout [Float], _ inside: inout [Bool]) {
            if lo.count != n {
                lo = [Int](repeating: 0, count: n); hi = lo; near = lo
                frac = [Float](repeating: 0, count: n); inside = [Bool](repeating: false, count: n)
            }
            let inv = 1 / d.scale, last = n - 1
            for o in 0..<n {
                let k = flip ? last - o : o
                let src = offset + (Float(k) + 0.5) * inv - 0.5
                inside[o] = src >= -0.5 && src <= Float(n) - 0.5
                let f = src.rounded(.down)
                let i0 = Int(f)
                lo[o] = min(max(i0, 0), last)
                hi[o] = min(max(i0 + 1, 0), last)
                frac[o] = src - f
                near[o] = min(max(Int((src + 0.5).rounded(.down)), 0), last)
            }
        }
        table(h, offset: d.offsetY, flip: false, &rowLo, &rowHi, &rowNear, &rowFrac, &rowInside)
        table(w, offset: d.offsetX, flip: d.flip, &colLo, &colHi, &colNear, &colFrac, &colInside)
    }

    /// Plain bilinear (image); outside the source → 0 (the mean colour after normalisation).
    private func resampleBilinear(_ plane0: UnsafeMutablePointer<Float>, channels: Int, h: Int, w: Int) {
        let hw = h * w
        source.withUnsafeMutableBufferPointer { src in
            src.baseAddress!.update(from: plane0, count: channels * hw)
            for c in 0..<channels {
                let s = src.baseAddress! + c * hw, out = plane0 + c * hw
                for y in 0..<h {
                    let r0 = s + rowLo[y] * w, r1 = s + rowHi[y] * w, fy = rowFrac[y], row = out + y * w
                    if !rowInside[y] { row.update(repeating: 0, count: w); continue }
                    for x in 0..<w {
                        if !colInside[x] { row[x] = 0; continue }
                        let a = colLo[x], b = colHi[x], fx = colFrac[x]
                        let top = r0[a] + fx * (r0[b] - r0[a])
                        let bottom = r1[a] + fx * (r1[b] - r1[a])
                        row[x] = top + fy * (bottom - top)
                    }
                }
            }
        }
    }

    /// Mask-aware bilinear: invalid = all channels 0. Valid when the resampled mask ≥ 0.5; the
    /// value is the weighted mean of the valid neighbours (renormalised to unit length for normals).
    private func resampleMasked(_ plane0: UnsafeMutablePointer<Float>, channels: Int, h: Int, w: Int, normalise: Bool) {
        let hw = h * w
        source.withUnsafeMutableBufferPointer { src in
            let s = src.baseAddress!
            s.update(from: plane0, count: channels * hw)
            @inline(__always) func valid(_ p: Int) -> Bool {
                for c in 0..<channels where s[c * hw + p] != 0 { return true }
                return false
            }
            for y in 0..<h {
                let fy = rowFrac[y], r0 = rowLo[y] * w, r1 = rowHi[y] * w
                for x in 0..<w {
                    let o = y * w + x
                    guard rowInside[y] && colInside[x] else {
                        for c in 0..<channels { plane0[c * hw + o] = 0 }
                        continue
                    }
                    let fx = colFrac[x]
                    let taps = (r0 + colLo[x], r0 + colHi[x], r1 + colLo[x], r1 + colHi[x])
                    var weights = ((1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx)
                    if !valid(taps.0) { weights.0 = 0 }
                    if !valid(taps.1) { weights.1 = 0 }
                    if !valid(taps.2) { weights.2 = 0 }
                    if !valid(taps.3) { weights.3 = 0 }
                    let mask = weights.0 + weights.1 + weights.2 + weights.3
                    if mask < 0.5 {
                        for c in 0..<channels { plane0[c * hw + o] = 0 }
                        continue
                    }
                    var norm2: Float = 0
                    for c in 0..<channels {
                        let p = s + c * hw
                        let v = (weights.0 * p[taps.0] + weights.1 * p[taps.1] + weights.2 * p[taps.2]
                                 + weights.3 * p[taps.3]) / mask
                        plane0[c * hw + o] = v
                        norm2 += v * v
                    }
                    if normalise {
                        // Opposite valid normals can cancel: then the pixel has no direction → invalid.
                        let scale: Float = norm2 > 1e-12 ? 1 / norm2.squareRoot() : 0
                        for c in 0..<channels { plane0[c * hw + o] *= scale }
                    }
                }
            }
        }
    }

    /// Nearest neighbour for label maps; outside the source → -1 (ignore).
    private func resampleNearest(_ plane: UnsafeMutablePointer<Float>, h: Int, w: Int) {
        source.withUnsafeMutableBufferPointer { src in
            let s = src.baseAddress!
            s.update(from: plane, count: h * w)
            for y in 0..<h {
                let row = plane + y * w, srcRow = s + rowNear[y] * w
                if !rowInside[y] { row.update(repeating: -1, count: w); continue }
                for x in 0..<w { row[x] = colInside[x] ? srcRow[colNear[x]] : -1 }
            }
        }
    }

    /// Brightness, contrast, saturation on [0,1] pixels (x = v·std + mean), then renormalised.
    private func jitter(_ image: UnsafeMutablePointer<Float>, hw: Int, _ d: Augmentation.Draw) {
        let b = d.brightness, c = d.contrast, sat = d.saturation
        if b == 1 && c == 1 && sat == 1 { return }
        let r = image, g = image + hw, bl = image + 2 * hw
        let m = imageMean, sd = imageStd
        // To [0,1] and brightness.
        for p in 0..<hw {
            r[p] = min(max((r[p] * sd[0] + m[0]) * b, 0), 1)
            g[p] = min(max((g[p] * sd[1] + m[1]) * b, 0), 1)
            bl[p] = min(max((bl[p] * sd[2] + m[2]) * b, 0), 1)
        }
        if c != 1 {
            // Blend with the mean grey level of the image (ITU-R 601 luma, as torchvision).
            var sum: Double = 0
            for p in 0..<hw { sum += Double(0.299 * r[p] + 0.587 * g[p] + 0.114 * bl[p]) }
            let grey = Float(sum / Double(hw)) * (1 - c)
            for p in 0..<hw {
                r[p] = min(max(r[p] * c + grey, 0), 1)
                g[p] = min(max(g[p] * c + grey, 0), 1)
                bl[p] = min(max(bl[p] * c + grey, 0), 1)
            }
        }
        if sat != 1 {
            for p in 0..<hw {
                let grey = (0.299 * r[p] + 0.587 * g[p] + 0.114 * bl[p]) * (1 - sat)
                r[p] = min(max(r[p] * sat + grey, 0), 1)
                g[p] = min(max(g[p] * sat + grey, 0), 1)
                bl[p] = min(max(bl[p] * sat + grey, 0), 1)
            }
        }
        for p in 0..<hw {
            r[p] = (r[p] - m[0]) / sd[0]
            g[p] = (g[p] - m[1]) / sd[1]
            bl[p] = (bl[p] - m[2]) / sd[2]
        }
    }
}
