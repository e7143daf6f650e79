import Foundation
import MTLCore

// Dense-prediction losses. Each forward returns the SUM of the per-element losses over the
// valid elements and their number; the trainer divides by the count over ALL ranks, so
// backward(scale:) returns d(scale · sum)/d(prediction) with scale = 1/globalCount (times a
// task weight). Forward stores what backward needs in a layer-owned tensor, so backward can be
// called several times (per-task / per-method backprops) and the caller's tensors may change.
// Partial sums are taken over fixed blocks and added in order: the result does not depend on
// the number of threads.

/// The sum of per-element losses over the valid elements, and their number.
public struct LossSum: Equatable {
    public var sum: Double
    public var count: Int
    public init(sum: Double, count: Int) { self.sum = sum; self.count = count }
    /// sum / count, 0 when nothing is valid.
    public var mean: Double { count > 0 ? sum / Double(count) : 0 }
}

/// Softmax cross-entropy over channels. logits [N, C, H, W], target [N, H, W] holding class
/// indices as Float; pixels whose target equals `ignoreIndex` contribute nothing.
/// A target outside [0, C) that is not ignoreIndex stops the program (as PyTorch raises):
/// the data loader is where labels are validated with a proper error.
public final class CrossEntropyLoss {
    public let ignoreIndex: Int
    /// softmax(z) per pixel, kept from forward so that backward needs no exp.
    private let probability = Tensor([0])
    /// Per-pixel scratch: max logit and Σ exp; and the target class per pixel (−1 = ignored).
    private let maxLogit = Tensor([0])
    private let sumExp = Tensor([0])
    private let classIndex = Int32Buffer()
    private let inputGrad = Tensor([0])
    private let partials = DoubleBuffer()

    public init(ignoreIndex: Int = -1) { self.ignoreIndex = ignoreIndex }

    public func forward(_ logits: Tensor, _ target: Tensor) -> LossSum {
        precondition(logits.rank == 4, "CrossEntropyLoss: logits must be [N, C, H, W], got \(shapeString(logits.shape))")
        let n = logits.n, c = logits.c, hw = logits.h * logits.w
        precondition(c > 0, "CrossEntropyLoss: logits have no channels")
        precondition(target.count == n * hw && (target.rank == 3 || (target.rank == 4 && target.c == 1)),
                     "CrossEntropyLoss: target \(shapeString(target.shape)) does not match logits \(shapeString(logits.shape)) (expected [N, H, W])")
        probability.resize(logits.shape)
        maxLogit.resize([n, hw])
        sumExp.resize([n, hw])
        classIndex.resize(n * hw)
        let z = logits.data, t = target.data, prob = probability.data, mx = maxLogit.data
        let cls = classIndex.data, se = sumExp.data
        let ignore = ignoreIndex, ignoreValue = Float(ignoreIndex)
        return sumPixelBlocks(partials, samples: n, pixels: hw) { s, lo, hi in
            let len = hi - lo
            let zs = z + s * c * hw + lo, ps = prob + s * c * hw + lo
            let m = mx + s * hw + lo, sum = se + s * hw + lo
            // m = max_c z; e_c = exp(z_c − m) into the probability rows, summed per pixel;
            // loss = m + log Σ e − z_k; then the rows are divided by Σ e (all passes row-wise).
            m.update(from: zs, count: len)
            for ch in 1..<c {
                let row = zs + ch * hw
                for i in 0..<len { m[i] = max(m[i], row[i]) }
            }
            sum.update(repeating: 0, count: len)
            for ch in 0..<c {
                let row = zs + ch * hw, e = ps + ch * hw
                for i in 0..<len { let v = expf(row[i] - m[i]); e[i] = v; sum[i] += v }
            }
            var loss = 0.0, valid = 0
            for i in 0..<len {
                let label = t[s * hw + lo + i]
                if label == ignoreValue {
                    cls[s * hw + lo + i] = -1
                } else {
                    precondition(label >= 0 && label < Float(c) && label.rounded(.down) == label,
                                 "CrossEntropyLoss: target \(label) at sample \(s), pixel \(lo + i) is not a class in [0, \(c)) nor ignoreIndex \(ignore)")
                    let k = Int(label)
                    cls[s * hw + lo + i] = Int32(k)
                    loss += Double(m[i] + logf(sum[i]) - zs[k * hw + i])
                    valid += 1
                }
                sum[i] = 1 / sum[i]
            }
            for ch in 0..<c {
                let e = ps + ch * hw
                for i in 0..<len { e[i] *= sum[i] }
            }
            return (loss, valid)
        }
    }

    /// scale · (softmax(z) − onehot(target)) on valid pixels, 0 on ignored ones.
    public func backward(scale: Float) -> Tensor {
        precondition(probability.rank == 4, "CrossEntropyLoss: backward before forward")
        let n = probability.n, c = probability.c, hw = probability.h * probability.w
        inputGrad.resize(probability.shape)
        let prob = probability.data, cls = classIndex.data, g = inputGrad.data
        parallelFor(n * c) { q in
            let s = q / c, ch = Int32(q % c)
            let p = prob + q * hw, out = g + q * hw, k = cls + s * hw
            for i in 0..<hw {
                out[i] = k[i] < 0 ? 0 : scale * (k[i] == ch ? p[i] - 1 : p[i])
            }
        }
        return inputGrad
    }
}

/// |pred − target| on pixels with target ≠ 0 (0 marks missing depth). pred, target [N, 1, H, W].
/// Gradient sign(pred − target), 0 where they are equal (as torch.abs).
public final class MaskedL1Loss {
    private let store = StoredGradient()   // the gradient is sign(pred − target)
    public init() {}

    public func forward(_ pred: Tensor, _ target: Tensor) -> LossSum {
        precondition(pred.count == target.count, "MaskedL1Loss: pred \(shapeString(pred.shape)) and target \(shapeString(target.shape)) differ")
        store.gradient.resize(pred.shape)
        let p = pred.data, t = target.data, sg = store.gradient.data
        return sumBlocks(store.partials, count: pred.count) { lo, hi in
            var loss = 0.0, valid = 0
            for i in lo..<hi {
                if t[i] == 0 { sg[i] = 0; continue }
                let d = p[i] - t[i]
                loss += Double(abs(d))
                sg[i] = d > 0 ? 1 : (d < 0 ? -1 : 0)
                valid += 1
            }
            return (loss, valid)
        }
    }

    public func backward(scale: Float) -> Tensor { store.backward(scale: scale) }
}

/// 1 − ⟨pred/‖pred‖, target⟩ per valid pixel, pred and target [N, 3, H, W]; pred is normalised
/// as F.normalize (divided by max(‖pred‖, 1e-12)); target is used as given; a pixel whose
/// target is the zero vector is invalid.
public final class NormalCosineLoss {
    public static let eps: Float = 1e-12
    private let store = StoredGradient()
    public init() {}

    public func forward(_ pred: Tensor, _ target: Tensor) -> LossSum {
        precondition(pred.rank == 4 && pred.c == 3 && target.shape == pred.shape,
                     "NormalCosineLoss: expected pred and target [N, 3, H, W], got \(shapeString(pred.shape)) and \(shapeString(target.shape))")
        return normalPixels(pred, target, store, valid: { a, b, c in !(a == 0 && b == 0 && c == 0) }) { x, y, z, a, b, c in
            let norm = (x * x + y * y + z * z).squareRoot()
            if norm > NormalCosineLoss.eps {
                // u = p/‖p‖: d⟨u, t⟩/dp = (t − u⟨u, t⟩)/‖p‖
                let inv = 1 / norm
                let ux = x * inv, uy = y * inv, uz = z * inv
                let cosine = ux * a + uy * b + uz * c
                return (Double(1 - cosine), -(a - ux * cosine) * inv, -(b - uy * cosine) * inv, -(c - uz * cosine) * inv)
            }
            // u = p/eps, linear in p
            let inv = 1 / NormalCosineLoss.eps
            return (Double(1 - (x * a + y * b + z * c) * inv), -a * inv, -b * inv, -c * inv)
        }
    }

    public func backward(scale: Float) -> Tensor { store.backward(scale: scale) }
}

/// Binary cross-entropy on logits with pos_weight (PyTorch's BCEWithLogitsLoss):
/// ℓ = (1 − t)·softplus(x) + pw·t·softplus(−x), dℓ/dx = (1 − t)·σ(x) − pw·t·(1 − σ(x)) (`weightedBCE`
/// with a = 1, b = pw). Targets other than 0 or 1 (−1, 255, ...) are ignored.
public final class BCEWithLogitsLoss {
    public let posWeight: Float
    private let store = StoredGradient()
    public init(posWeight: Float = 1) { self.posWeight = posWeight }

    public func forward(_ logits: Tensor, _ target: Tensor) -> LossSum {
        precondition(logits.count == target.count, "BCEWithLogitsLoss: logits \(shapeString(logits.shape)) and target \(shapeString(target.shape)) differ")
        store.gradient.resize(logits.shape)
        let x = logits.data, t = target.data, gr = store.gradient.data, pw = posWeight
        return sumBlocks(store.partials, count: logits.count) { lo, hi in
            weightedBCE(x, t, gr, lo, hi, negative: 1, positive: pw, soft: false)
        }
    }

    public func backward(scale: Float) -> Tensor { store.backward(scale: scale) }
}

/// ATRC's surface-normal loss: L1 between the L2-normalised prediction and the target,
/// summed over the 3 channels, per valid pixel: ℓ = Σ_c |n̂_c − t_c|, n̂ = p / max(‖p‖, 1e-12)
/// (F.normalize). `count` is the number of valid PIXELS (ATRC divides by those, not by 3×).
/// A pixel is invalid when any target channel equals `ignoreValue` (ATRC's 255) or when the
/// target is the zero vector (how mtl's datasets mark missing normals).
/// Gradient: g = sign(n̂ − t) (0 where equal, as torch.abs), dp = (g − n̂⟨n̂, g⟩)/‖p‖, or g/ε
/// where the norm is clamped.
public final class NormalL1Loss {
    public let ignoreValue: Float
    private let store = StoredGradient()
    public init(ignoreValue: Float = 255) { self.ignoreValue = ignoreValue }

    public func forward(_ pred: Tensor, _ target: Tensor) -> LossSum {
        precondition(pred.rank == 4 && pred.c == 3 && target.shape == pred.shape,
                     "NormalL1Loss: expected pred and target [N, 3, H, W], got \(shapeString(pred.shape)) and \(shapeString(target.shape))")
        let ignore = ignoreValue
        let valid = { (a: Float, b: Float, c: Float) in !(a == 0 && b == 0 && c == 0) && a != ignore && b != ignore && c != ignore }
        return normalPixels(pred, target, store, valid: valid) { x, y, z, a, b, c in
            let norm = (x * x + y * y + z * z).squareRoot()
            let clamped = !(norm > L2Normalize.eps)
            let inv = 1 / (clamped ? L2Normalize.eps : norm)
            let ux = x * inv, uy = y * inv, uz = z * inv
            let loss = Double(abs(ux - a)) + Double(abs(uy - b)) + Double(abs(uz - c))
            let sx: Float = ux > a ? 1 : (ux < a ? -1 : 0)
            let sy: Float = uy > b ? 1 : (uy < b ? -1 : 0)
            let sz: Float = uz > c ? 1 : (uz < c ? -1 : 0)
            let dot = clamped ? 0 : ux * sx + uy * sy + uz * sz
            return (loss, (sx - ux * dot) * inv, (sy - uy * dot) * inv, (sz - uz * dot) * inv)
        }
    }

    public func backward(scale: Float) -> Tensor { store.backward(scale: scale) }
}

/// MT-CP's released surface-normal loss (losses/loss_functions.py `NormalsLoss()` with its defaults:
/// norm=2, normalize=False, size_average=True, ignore_label=255): the squared error of the RAW prediction
/// (not normalised) over the valid ELEMENTS, divided by their number (`count` = valid elements, so a
/// fully valid pixel counts 3; mean = the code's `mse_loss(masked_select(out, mask), ..., 'sum') / n_valid`).
/// The code's mask is per element, `label != 255`; its AddIgnoreRegions writes 255 into all three
/// channels of a pixel whose normal has norm 0, which is how mtl's datasets mark missing normals, so a
/// zero-vector pixel is invalid here too. ℓ = Σ_valid (p − t)², dℓ/dp = 2(p − t), 0 on invalid elements.
public final class NormalMSELoss {
    public let ignoreValue: Float
    private let store = StoredGradient()
    public init(ignoreValue: Float = 255) { self.ignoreValue = ignoreValue }

    public func forward(_ pred: Tensor, _ target: Tensor) -> LossSum {
        precondition(pred.rank == 4 && pred.c == 3 && target.shape == pred.shape,
                     "NormalMSELoss: expected pred and target [N, 3, H, W], got \(shapeString(pred.shape)) and \(shapeString(target.shape))")
        let n = pred.n, hw = pred.h * pred.w, ignore = ignoreValue
        store.gradient.resize(pred.shape)
        let p = pred.data, t = target.data, gr = store.gradient.data
        return sumPixelBlocks(store.partials, samples: n, pixels: hw) { s, lo, hi in
            let base = s * 3 * hw
            var loss = 0.0, count = 0
            for i in lo..<hi {
                let a = t[base + i], b = t[base + hw + i], c = t[base + 2 * hw + i]
                let missing = a == 0 && b == 0 && c == 0
                for ch in 0..<3 {
                    let k = base + ch * hw + i
                    if missing || t[k] == ignore { gr[k] = 0; continue }
                    let d = p[k] - t[k]
                    loss += Double(d * d)
                    gr[k] = 2 * d
                    count += 1
                }
            }
            return (loss, count)
        }
    }

    public func backward(scale: Float) -> Tensor { store.backward(scale: scale) }
}

/// Class-balanced binary cross-entropy on logits (ATRC/MTFormer edges and saliency):
///   ℓ = −w·y·log σ(x) − (1 − w)(1 − y)·log(1 − σ(x))   per valid element,
///   dℓ/dx = (1 − w)(1 − y)·σ(x) − w·y·(1 − σ(x)).
/// Targets in [0, 1] are valid (soft targets are used as given); anything else (255) is ignored.
/// `positiveWeight` w fixed (ATRC edges: 0.8 NYUD, 0.95 PASCAL; = PyTorch's
/// BCEWithLogits(pos_weight = w/(1−w)) × (1−w)), or nil for HED balancing:
/// w = Σ_valid(1 − y) / N_valid, the fraction of negatives.
/// World size: the HED weight is computed from the LOCAL batch (this rank's targets), so with
/// several ranks each rank weights its pixels by its own w before the global-count division;
/// the single-process loss over the same global batch would use one global w. Making it exact
/// needs an all-reduce of (Σ(1 − y), N_valid) before the loss, which the loss interface does not
/// have; with a fixed w the loss is world-size invariant.
public final class BalancedBCEWithLogitsLoss {
    public let positiveWeight: Float?
    /// The w of the last forward.
    public private(set) var weight: Float = 0
    private let store = StoredGradient()
    public init(positiveWeight: Float? = nil) {
        precondition(positiveWeight.map { $0 >= 0 && $0 < 1 } ?? true, "BalancedBCEWithLogitsLoss: the positive weight must be in [0, 1)")
        self.positiveWeight = positiveWeight
    }

    public func forward(_ logits: Tensor, _ target: Tensor) -> LossSum {
        precondition(logits.count == target.count, "BalancedBCEWithLogitsLoss: logits \(shapeString(logits.shape)) and target \(shapeString(target.shape)) differ")
        store.gradient.resize(logits.shape)
        let x = logits.data, t = target.data, gr = store.gradient.data
        if let w = positiveWeight {
            weight = w
        } else {
            let totals = sumBlocks(store.partials, count: logits.count) { lo, hi in
                var negatives = 0.0, valid = 0
                for i in lo..<hi {
                    let y = t[i]
                    if y >= 0 && y <= 1 { negatives += Double(1 - y); valid += 1 }
                }
                return (negatives, valid)
            }
            weight = totals.count > 0 ? Float(totals.sum / Double(totals.count)) : 0
        }
        let w = weight
        return sumBlocks(store.partials, count: logits.count) { lo, hi in
            weightedBCE(x, t, gr, lo, hi, negative: 1 - w, positive: w, soft: true)
        }
    }

    public func backward(scale: Float) -> Tensor { store.backward(scale: scale) }
}

/// ATRC's saliency loss: 2-channel softmax cross-entropy with batch-computed class weights
/// (1 − w, w), w = N₀/N_valid (fraction of background pixels), summed as w_k·(−log p_k) over
/// valid pixels; `count` is the number of valid pixels (ATRC divides by that, not by the weight
/// sum as PyTorch's weighted mean would). logits [N, 2, H, W]; target [N, H, W] (or [N, 1, H, W])
/// with 0/1, `ignoreIndex` elsewhere (ATRC: 255).
/// World size: as for BalancedBCEWithLogitsLoss, w comes from the LOCAL batch; with several
/// ranks the result is not the single-process loss of the global batch (that needs an
/// all-reduce of (N₀, N_valid) first).
public final class BalancedCrossEntropyLoss {
    public let ignoreIndex: Int
    /// The w of the last forward.
    public private(set) var weight: Float = 0
    private let store = StoredGradient()
    private let classIndex = Int32Buffer()
    public init(ignoreIndex: Int = 255) { self.ignoreIndex = ignoreIndex }

    public func forward(_ logits: Tensor, _ target: Tensor) -> LossSum {
        precondition(logits.rank == 4 && logits.c == 2, "BalancedCrossEntropyLoss: logits must be [N, 2, H, W], got \(shapeString(logits.shape))")
        let n = logits.n, hw = logits.h * logits.w
        precondition(target.count == n * hw && (target.rank == 3 || (target.rank == 4 && target.c == 1)),
                     "BalancedCrossEntropyLoss: target \(shapeString(target.shape)) does not match logits \(shapeString(logits.shape)) (expected [N, H, W])")
        store.gradient.resize(logits.shape)
        classIndex.resize(n * hw)
        let z = logits.data, t = target.data, gr = store.gradient.data, cls = classIndex.data
        let ignoreValue = Float(ignoreIndex), ignore = ignoreIndex
        // Pass 1: class per pixel, and the background count.
        let totals = sumPixelBlocks(store.partials, samples: n, pixels: hw) { s, lo, hi in
            var background = 0, valid = 0
            for i in lo..<hi {
                let label = t[s * hw + i]
                if label == ignoreValue { cls[s * hw + i] = -1; continue }
                precondition(label == 0 || label == 1, "BalancedCrossEntropyLoss: target \(label) at sample \(s), pixel \(i) is neither 0, 1 nor ignoreIndex \(ignore)")
                cls[s * hw + i] = Int32(label)
                if label == 0 { background += 1 }
                valid += 1
            }
            return (Double(background), valid)
        }
        weight = totals.count > 0 ? Float(totals.sum / Double(totals.count)) : 0
        let classWeight = (1 - weight, weight)
        return sumPixelBlocks(store.partials, samples: n, pixels: hw) { s, lo, hi in
            let z0 = z + s * 2 * hw, z1 = z0 + hw, g0 = gr + s * 2 * hw, g1 = g0 + hw
            var loss = 0.0, valid = 0
            for i in lo..<hi {
                let k = cls[s * hw + i]
                if k < 0 { g0[i] = 0; g1[i] = 0; continue }
                // p₁ = σ(z₁ − z₀); −log p_k = softplus(±(z₀ − z₁)).
                let d = z1[i] - z0[i], e = expf(-abs(d))
                let p1 = d >= 0 ? 1 / (1 + e) : e / (1 + e), p0 = 1 - p1
                let wk = k == 1 ? classWeight.1 : classWeight.0
                let margin = k == 1 ? -d : d
                loss += Double(wk * (log1pf(e) + max(margin, 0)))
                g0[i] = wk * (k == 0 ? p0 - 1 : p0)
                g1[i] = wk * (k == 1 ? p1 - 1 : p1)
                valid += 1
            }
            return (loss, valid)
        }
    }

    public func backward(scale: Float) -> Tensor { store.backward(scale: scale) }
}

/// The buffers of a loss whose forward also writes dℓ/d(input) per element: that gradient, the
/// per-block partial sums, and the dx that backward returns (scale × the gradient).
final class StoredGradient {
    let gradient = Tensor([0])
    let partials = DoubleBuffer()
    private let inputGrad = Tensor([0])

    func backward(scale: Float) -> Tensor { scaledCopy(gradient, scale, into: inputGrad) }
}

/// Σ of `block(lo, hi)` = (loss sum, valid count) over [0, count) in blocks of `elementBlock`,
/// run in parallel and added in block order (the result does not depend on the thread count).
@inline(__always)
func sumBlocks(_ partials: DoubleBuffer, count: Int, _ block: (Int, Int) -> (Double, Int)) -> LossSum {
    let blocks = (count + elementBlock - 1) / elementBlock
    partials.resize(2 * blocks)
    let part = partials.data
    parallelFor(blocks) { b in
        let lo = b * elementBlock
        let (loss, valid) = block(lo, min(count, lo + elementBlock))
        part[2 * b] = loss
        part[2 * b + 1] = Double(valid)
    }
    return sumPartials(part, blocks)
}

/// The same over the pixels of each sample of an [N, ·, H, W] tensor: `block(sample, lo, hi)` for
/// pixel blocks [lo, hi) of one sample (the loops over a channel row stay contiguous).
@inline(__always)
func sumPixelBlocks(_ partials: DoubleBuffer, samples n: Int, pixels hw: Int,
                    _ block: (Int, Int, Int) -> (Double, Int)) -> LossSum {
    let blocksPerSample = (hw + elementBlock - 1) / elementBlock
    partials.resize(2 * n * blocksPerSample)
    let part = partials.data
    parallelFor(n * blocksPerSample) { task in
        let s = task / blocksPerSample, lo = (task % blocksPerSample) * elementBlock
        let (loss, valid) = block(s, lo, min(hw, lo + elementBlock))
        part[2 * task] = loss
        part[2 * task + 1] = Double(valid)
    }
    return sumPartials(part, n * blocksPerSample)
}

/// Adds (loss, count) pairs of the blocks in order.
func sumPartials(_ part: UnsafeMutablePointer<Double>, _ blocks: Int) -> LossSum {
    var total = 0.0, count = 0
    for b in 0..<blocks {
        total += part[2 * b]
        count += Int(part[2 * b + 1])
    }
    return LossSum(sum: total, count: count)
}

/// dx = scale · (the per-element gradient the forward stored): the backward of the losses whose
/// gradient is computed along with the loss value.
@inline(__always)
func scaledCopy(_ source: Tensor, _ scale: Float, into dx: Tensor) -> Tensor {
    dx.resize(source.shape)
    let src = source.data, g = dx.data
    parallelBlocks(source.count) { lo, hi in
        for i in lo..<hi { g[i] = scale * src[i] }
    }
    return dx
}

/// The weighted binary cross-entropy on logits that BCEWithLogitsLoss and BalancedBCEWithLogitsLoss
/// share, over elements [lo, hi):
///   ℓ = a·(1 − y)·softplus(x) + b·y·softplus(−x),   dℓ/dx = a·(1 − y)·σ(x) − b·y·(1 − σ(x)),
/// in the stable form softplus(−x) = log(1 + e^−|x|) + max(−x, 0), softplus(x) = softplus(−x) + x.
/// Valid targets: 0 and 1 (`soft` false) or all of [0, 1]; others get gradient 0 and are not counted.
@inline(__always)
func weightedBCE(_ x: UnsafePointer<Float>, _ t: UnsafePointer<Float>, _ gr: UnsafeMutablePointer<Float>,
                 _ lo: Int, _ hi: Int, negative a: Float, positive b: Float, soft: Bool) -> (Double, Int) {
    var loss = 0.0, valid = 0
    for i in lo..<hi {
        let y = t[i]
        if soft ? !(y >= 0 && y <= 1) : (y != 0 && y != 1) { gr[i] = 0; continue }
        let v = x[i], e = expf(-abs(v))
        let softplusNeg = log1pf(e) + max(-v, 0)        // −log σ(v)
        let softplusPos = softplusNeg + v               // −log(1 − σ(v))
        loss += Double(a * (1 - y) * softplusPos + b * y * softplusNeg)
        let sigma = v >= 0 ? 1 / (1 + e) : e / (1 + e)
        gr[i] = a * (1 - y) * sigma - b * y * (1 - sigma)
        valid += 1
    }
    return (loss, valid)
}

/// The per-pixel loop of the surface-normal losses over pred, target [N, 3, H, W]: a pixel for which
/// `valid(t)` is false gets gradient 0 and is not counted; otherwise `pixel(p, t)` gives its loss and
/// dℓ/dp (components x, y, z = channels 0, 1, 2).
@inline(__always)
func normalPixels(_ pred: Tensor, _ target: Tensor, _ store: StoredGradient,
                  valid: (Float, Float, Float) -> Bool,
                  pixel: (_ x: Float, _ y: Float, _ z: Float, _ a: Float, _ b: Float, _ c: Float)
                      -> (loss: Double, dx: Float, dy: Float, dz: Float)) -> LossSum {
    let n = pred.n, hw = pred.h * pred.w
    store.gradient.resize(pred.shape)
    let p = pred.data, t = target.data, gr = store.gradient.data
    return sumPixelBlocks(store.partials, samples: n, pixels: hw) { s, lo, hi in
        let p0 = p + s * 3 * hw, p1 = p0 + hw, p2 = p1 + hw
        let t0 = t + s * 3 * hw, t1 = t0 + hw, t2 = t1 + hw
        let g0 = gr + s * 3 * hw, g1 = g0 + hw, g2 = g1 + hw
        var loss = 0.0, count = 0
        for i in lo..<hi {
            let a = t0[i], b = t1[i], c = t2[i]
            if !valid(a, b, c) { g0[i] = 0; g1[i] = 0; g2[i] = 0; continue }
            let r = pixel(p0[i], p1[i], p2[i], a, b, c)
            loss += r.loss
            g0[i] = r.dx; g1[i] = r.dy; g2[i] = r.dz
            count += 1
        }
        return (loss, count)
    }
}
