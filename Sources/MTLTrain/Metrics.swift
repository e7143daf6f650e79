import Foundation
import MTLCore

/// An evaluation metric whose whole accumulated state is a flat [Double] of sums and
/// counts, so data-parallel ranks merge by summing it (one all-reduce) before `results()`.
/// Everything is pooled over the set (sums of pixels), never an average of batch averages,
/// so the result does not depend on how the set was split over ranks or batches.
public protocol Metric: AnyObject {
    var state: [Double] { get set }
    func reset()
    /// Named values in a fixed order.
    func results() -> [(String, Double)]
    /// For each result name: true if higher is better (for Δm and "best" tracking).
    var higherIsBetter: [String: Bool] { get }
    /// The task-specific `update` under one name, so a trainer can loop over its tasks:
    /// `output` is the head's raw output (logits / prediction), `target` the label tensor.
    func update(output: Tensor, target: Tensor)
}

/// The metric for a task name (seg/parts: confusion matrix with `classes` classes; depth;
/// normals; edges/saliency: binary maps).
public func makeMetric(task: String, classes: Int) -> Metric {
    guard let kind = TaskKind.named(task) else { preconditionFailure("makeMetric: unknown task \(task) (Config validates task names)") }
    switch kind.family {
    case .classMap: return SegmentationMetric(numClasses: classes)
    case .depth: return DepthMetric()
    case .normals: return NormalsMetric()
    case .binary: return BinaryMetric()
    }
}

// MARK: - Segmentation

/// Confusion matrix over pixels with 0 ≤ gt < C (and gt ≠ ignoreIndex); prediction = argmax
/// of the logits. "miou": mean IoU over the classes present in gt or prediction (LibMTL
/// averages over all classes and gets NaN when one is absent from both); "pixel_acc":
/// trace / total.
public final class SegmentationMetric: Metric {
    public let numClasses: Int
    public let ignoreIndex: Int
    /// Row-major C×C confusion matrix: state[gt·C + pred].
    public var state: [Double] {
        didSet { precondition(state.count == numClasses * numClasses, "SegmentationMetric: state size \(state.count)") }
    }
    private var best: [Float] = []
    private var argmax: [Int32] = []

    public init(numClasses: Int, ignoreIndex: Int = -1) {
        precondition(numClasses >= 1)
        self.numClasses = numClasses
        self.ignoreIndex = ignoreIndex
        self.state = [Double](repeating: 0, count: numClasses * numClasses)
    }

    public func reset() { state = [Double](repeating: 0, count: numClasses * numClasses) }

    public var higherIsBetter: [String: Bool] { ["miou": true, "pixel_acc": true] }
    public func update(output: Tensor, target: Tensor) { update(logits: output, target: target) }

    /// logits [N,C,H,W]; target [N,H,W] (or [N,1,H,W]) holding class indices as Float.
    public func update(logits: Tensor, target: Tensor) {
        let C = numClasses
        precondition(logits.rank == 4 && logits.c == C, "SegmentationMetric: logits \(logits.shape), expected [N,\(C),H,W]")
        let N = logits.n, HW = logits.h * logits.w
        precondition(target.count == N * HW, "SegmentationMetric: target \(target.shape) vs logits \(logits.shape)")
        if best.count < HW { best = [Float](repeating: 0, count: HW); argmax = [Int32](repeating: 0, count: HW) }
        let ignore = ignoreIndex
        best.withUnsafeMutableBufferPointer { best in
            argmax.withUnsafeMutableBufferPointer { arg in
                state.withUnsafeMutableBufferPointer { conf in
                    for n in 0..<N {
                        // argmax over channels plane by plane (contiguous reads); the first maximum wins, as torch.argmax
                        let x = logits.data + n * C * HW
                        for i in 0..<HW { best[i] = x[i]; arg[i] = 0 }
                        for c in 1..<max(C, 1) {
                            let plane = x + c * HW
                            for i in 0..<HW where plane[i] > best[i] { best[i] = plane[i]; arg[i] = Int32(c) }
                        }
                        let t = target.data + n * HW
                        for i in 0..<HW {
                            let g = t[i]
                            guard g >= 0, g < Float(C) else { continue }   // also skips NaN, −1 and 255
                            let gi = Int(g)
                            if gi == ignore { continue }
                            conf[gi * C + Int(arg[i])] += 1
                        }
                    }
                }
            }
        }
    }

    /// IoU of each class (nil when the class is absent from both gt and prediction).
    public func classIoU() -> [Double?] {
        let C = numClasses
        return (0..<C).map { c in
            let tp = state[c * C + c]
            var row = 0.0, col = 0.0
            for j in 0..<C { row += state[c * C + j]; col += state[j * C + c] }
            let union = row + col - tp
            return union > 0 ? tp / union : nil
        }
    }

    public func results() -> [(String, Double)] {
        let ious = classIoU().compactMap { $0 }
        var trace = 0.0, total = 0.0
        for c in 0..<numClasses { trace += state[c * numClasses + c] }
        for v in state { total += v }
        return [("miou", ious.isEmpty ? 0 : ious.reduce(0, +) / Double(ious.count)),
                ("pixel_acc", total > 0 ? trace / total : 0)]
    }
}

// MARK: - Depth

/// Over pixels with target > 0: "abs_err" = Σ|p − g| / n, "rel_err" = Σ|p − g|/g / n,
/// "rmse" = √(Σ(p − g)² / n).
public final class DepthMetric: Metric {
    /// [Σ|p−g|, Σ|p−g|/g, Σ(p−g)², n]
    public var state = [Double](repeating: 0, count: 4) {
        didSet { precondition(state.count == 4, "DepthMetric: state size \(state.count)") }
    }

    public init() {}
    public func reset() { state = [0, 0, 0, 0] }
    public var higherIsBetter: [String: Bool] { ["abs_err": false, "rel_err": false, "rmse": false] }
    public func update(output: Tensor, target: Tensor) { update(pred: output, target: target) }

    /// pred and target [N,1,H,W] (same element count).
    public func update(pred: Tensor, target: Tensor) {
        precondition(pred.count == target.count, "DepthMetric: pred \(pred.shape) vs target \(target.shape)")
        var sumAbs = 0.0, sumRel = 0.0, sumSq = 0.0, n = 0.0
        let p = pred.data, g = target.data
        for i in 0..<pred.count where g[i] > 0 {
            let gi = Double(g[i]), d = abs(Double(p[i]) - gi)
            sumAbs += d
            sumRel += d / gi
            sumSq += d * d
            n += 1
        }
        state[0] += sumAbs; state[1] += sumRel; state[2] += sumSq; state[3] += n
    }

    public func results() -> [(String, Double)] {
        let n = state[3]
        return [("abs_err", n > 0 ? state[0] / n : 0), ("rel_err", n > 0 ? state[1] / n : 0),
                ("rmse", n > 0 ? (state[2] / n).squareRoot() : 0)]
    }
}

// MARK: - Surface normals

/// Angle in degrees between the L2-normalised prediction and target over valid pixels
/// (target vector non-zero). "mean", "rmse", "median" and "within_11.25|22.5|30" (percent
/// of pixels with angle < threshold). The median comes from a 0.01° histogram (interpolated
/// within the bin), so it merges across ranks by summation and is within 0.01° of the exact one.
public final class NormalsMetric: Metric {
    public static let binWidth = 0.01
    public static let bins = 18000          // 0…180°
    static let header = 6                   // [n, Σangle, Σangle², n<11.25, n<22.5, n<30]
    public var state: [Double] {
        didSet { precondition(state.count == NormalsMetric.header + NormalsMetric.bins, "NormalsMetric: state size \(state.count)") }
    }

    public init() { state = [Double](repeating: 0, count: NormalsMetric.header + NormalsMetric.bins) }
    public func reset() { state = [Double](repeating: 0, count: NormalsMetric.header + NormalsMetric.bins) }
    public var higherIsBetter: [String: Bool] {
        ["mean": false, "median": false, "rmse": false, "within_11.25": true, "within_22.5": true, "within_30": true]
    }
    public func update(output: Tensor, target: Tensor) { update(pred: output, target: target) }

    /// pred [N,3,H,W] (not necessarily unit length), target [N,3,H,W].
    public func update(pred: Tensor, target: Tensor) {
        precondition(pred.rank == 4 && pred.c == 3 && pred.shape == target.shape,
                     "NormalsMetric: pred \(pred.shape) vs target \(target.shape), expected [N,3,H,W] both")
        let N = pred.n, HW = pred.h * pred.w
        let toDegrees = 180.0 / Double.pi, inv = 1 / NormalsMetric.binWidth, last = NormalsMetric.bins - 1
        state.withUnsafeMutableBufferPointer { s in
            let hist = s.baseAddress! + NormalsMetric.header
            for n in 0..<N {
                let p = pred.data + n * 3 * HW, g = target.data + n * 3 * HW
                for i in 0..<HW {
                    let gx = Double(g[i]), gy = Double(g[HW + i]), gz = Double(g[2 * HW + i])
                    let gg = gx * gx + gy * gy + gz * gz
                    guard gg > 0, gg.isFinite else { continue }
                    let px = Double(p[i]), py = Double(p[HW + i]), pz = Double(p[2 * HW + i])
                    let pp = px * px + py * py + pz * pz
                    // A zero prediction has no direction: count it as 90° rather than NaN.
                    let cosine = pp > 0 ? (px * gx + py * gy + pz * gz) / (pp * gg).squareRoot() : 0
                    let angle = acos(min(1, max(-1, cosine))) * toDegrees
                    s[0] += 1
                    s[1] += angle
                    s[2] += angle * angle
                    if angle < 11.25 { s[3] += 1 }
                    if angle < 22.5 { s[4] += 1 }
                    if angle < 30 { s[5] += 1 }
                    hist[min(Int(angle * inv), last)] += 1
                }
            }
        }
    }

    /// The value of 0-based rank k among the n angles, read from the histogram: the samples
    /// of a bin are taken as evenly spread inside it.
    private func histogramValue(rank k: Double) -> Double {
        var below = 0.0
        for b in 0..<NormalsMetric.bins {
            let h = state[NormalsMetric.header + b]
            if h > 0, k < below + h {
                return (Double(b) + (k - below + 0.5) / h) * NormalsMetric.binWidth
            }
            below += h
        }
        return 180
    }

    public func results() -> [(String, Double)] {
        let n = state[0]
        guard n > 0 else {
            return [("mean", 0), ("median", 0), ("rmse", 0), ("within_11.25", 0), ("within_22.5", 0), ("within_30", 0)]
        }
        let count = Int(n)
        let median = count % 2 == 1 ? histogramValue(rank: Double(count / 2))
            : 0.5 * (histogramValue(rank: Double(count / 2 - 1)) + histogramValue(rank: Double(count / 2)))
        return [("mean", state[1] / n), ("median", median), ("rmse", (state[2] / n).squareRoot()),
                ("within_11.25", 100 * state[3] / n), ("within_22.5", 100 * state[4] / n), ("within_30", 100 * state[5] / n)]
    }
}

// MARK: - Binary maps (edges, saliency)

/// Per image, as MTL-Pytorch / ASTMT's saliency evaluation: probability = sigmoid(logit),
/// thresholds 0.2…0.9 (15, numpy.linspace), target > 0.5 is foreground, −1 and 255 are
/// ignored. For each threshold the image's Jaccard index (1 when gt and prediction are both
/// empty), precision and recall are summed over images. "miou" = mean Jaccard at 0.5,
/// "max_miou" = best mean Jaccard over thresholds, "max_f" = max over thresholds of the F
/// measure of the mean precision and mean recall.
public final class BinaryMetric: Metric {
    /// numpy.linspace(0.2, 0.9, 15), bit for bit.
    public static let thresholds: [Double] = [0.2, 0.25, 0.3, 0.35, 0.4, 0.44999999999999996, 0.5, 0.55, 0.6,
                                              0.6499999999999999, 0.7, 0.75, 0.8, 0.8499999999999999, 0.9]
    static let T = 15
    /// [images, Σjaccard[15], Σprecision[15], Σrecall[15]]
    public var state = [Double](repeating: 0, count: 1 + 3 * 15) {
        didSet { precondition(state.count == 1 + 3 * BinaryMetric.T, "BinaryMetric: state size \(state.count)") }
    }

    public init() {}
    public func reset() { state = [Double](repeating: 0, count: 1 + 3 * BinaryMetric.T) }
    public var higherIsBetter: [String: Bool] { ["miou": true, "max_miou": true, "max_f": true] }
    public func update(output: Tensor, target: Tensor) { update(logits: output, target: target) }

    /// logits [N,1,H,W]; target with N·H·W elements: 1 foreground, 0 background, −1/255 ignore.
    public func update(logits: Tensor, target: Tensor) {
        precondition(logits.rank >= 1 && target.count == logits.count, "BinaryMetric: logits \(logits.shape) vs target \(target.shape)")
        let T = BinaryMetric.T, thr = BinaryMetric.thresholds
        let N = logits.shape[0], HW = logits.count / max(N, 1)
        // counts[gt][k]: pixels of class gt whose probability exceeds exactly k thresholds
        var counts = [Double](repeating: 0, count: 2 * (T + 1))
        for n in 0..<N {
            for i in 0..<counts.count { counts[i] = 0 }
            let x = logits.data + n * HW, t = target.data + n * HW
            for i in 0..<HW {
                let g = t[i]
                if g < 0 || g == 255 || g.isNaN { continue }
                let prob = Double(1 / (1 + exp(-x[i])))   // float32 sigmoid, compared in double as numpy does
                var k = 0
                while k < T && prob > thr[k] { k += 1 }
                counts[(g > 0.5 ? T + 1 : 0) + k] += 1
            }
            var gtTotal = 0.0
            for k in 0...T { gtTotal += counts[T + 1 + k] }
            var tp = 0.0, fp = 0.0   // pixels above threshold j: those with k > j
            for j in stride(from: T - 1, through: 0, by: -1) {
                tp += counts[T + 1 + j + 1]
                fp += counts[j + 1]
                let fn = gtTotal - tp
                let jaccard = (gtTotal == 0 && tp + fp == 0) ? 1 : tp / (tp + fp + fn)
                state[1 + j] += jaccard
                state[1 + T + j] += tp / (tp + fp + 1e-12)
                state[1 + 2 * T + j] += tp / (tp + fn + 1e-12)
            }
            state[0] += 1
        }
    }

    public func results() -> [(String, Double)] {
        let T = BinaryMetric.T, n = state[0]
        guard n > 0 else { return [("miou", 0), ("max_miou", 0), ("max_f", 0)] }
        var maxJ = 0.0, maxF = 0.0
        for j in 0..<T {
            maxJ = max(maxJ, state[1 + j] / n)
            let p = state[1 + T + j] / n, r = state[1 + 2 * T + j] / n
            maxF = max(maxF, 2 * p * r / (p + r + 1e-12))
        }
        return [("miou", state[1 + 6] / n), ("max_miou", maxJ), ("max_f", maxF)]
    }
}
