import Foundation
import MTLCore
import XCTest
@testable import MTLTrain

final class MetricTests: XCTestCase {
    func result(_ m: Metric, _ name: String) -> Double {
        m.results().first { $0.0 == name }!.1
    }

    /// One image, 2×3 pixels, 3 classes (class 2 never occurs):
    ///   gt   0 0 1 / 1 −1 255      pred 0 1 1 / 1 0 1
    /// confusion (gt row, pred col): [[1,1,0],[0,2,0],[0,0,0]] (ignored pixels dropped)
    /// IoU0 = 1/(2+1−1) = 1/2, IoU1 = 2/(2+3−2) = 2/3, class 2 absent from both → left out
    /// miou = 7/12, pixel_acc = 3/4.
    func testSegmentationHandCase() {
        let HW = 6
        var logits = [Float](repeating: 0, count: 3 * HW)
        let pred = [0, 1, 1, 1, 0, 1]
        for i in 0..<HW {
            logits[pred[i] * HW + i] = 2      // the predicted class
            logits[2 * HW + i] = -1           // class 2 never wins
        }
        let m = SegmentationMetric(numClasses: 3)
        m.update(logits: Tensor([1, 3, 2, 3], logits), target: Tensor([1, 2, 3], [0, 0, 1, 1, -1, 255]))
        XCTAssertEqual(m.state, [1, 1, 0, 0, 2, 0, 0, 0, 0])
        XCTAssertEqual(result(m, "miou"), 7.0 / 12, accuracy: 1e-12)
        XCTAssertEqual(result(m, "pixel_acc"), 0.75, accuracy: 1e-12)
        XCTAssertEqual(m.classIoU()[2], nil)
        XCTAssertTrue(m.results().allSatisfy { $0.1.isFinite })
        m.reset()
        XCTAssertEqual(m.results().map { $0.1 }, [0, 0])   // empty: zeros, not NaN
    }

    func testSegmentationArgmaxTieTakesFirstClassAndIgnoreIndex() {
        let m = SegmentationMetric(numClasses: 2, ignoreIndex: 1)
        // 1×2×1×2: pixel 0 tie (first class wins, like torch.argmax), pixel 1 class 1
        m.update(logits: Tensor([1, 2, 1, 2], [3, 0, 3, 5]), target: Tensor([1, 1, 2], [0, 1]))
        XCTAssertEqual(m.state, [1, 0, 0, 0])   // gt 1 ignored
    }

    func testSegmentationMergeOfHalvesEqualsWhole() {
        var rng = Philox(seed: 3, stream: 1)
        let N = 4, C = 5, H = 3, W = 4
        let logits = Tensor([N, C, H, W], (0..<(N * C * H * W)).map { _ in rng.normal() })
        let target = Tensor([N, H, W], (0..<(N * H * W)).map { _ in Float(rng.int(below: C + 1)) - 1 })
        let whole = SegmentationMetric(numClasses: C)
        whole.update(logits: logits, target: target)
        let a = SegmentationMetric(numClasses: C), b = SegmentationMetric(numClasses: C)
        let half = N / 2
        a.update(logits: Tensor([half, C, H, W], Array(logits.array[0..<(half * C * H * W)])),
                 target: Tensor([half, H, W], Array(target.array[0..<(half * H * W)])))
        b.update(logits: Tensor([half, C, H, W], Array(logits.array[(half * C * H * W)...])),
                 target: Tensor([half, H, W], Array(target.array[(half * H * W)...])))
        let merged = SegmentationMetric(numClasses: C)
        merged.state = zip(a.state, b.state).map { $0 + $1 }
        XCTAssertEqual(merged.state, whole.state)
        XCTAssertEqual(merged.results().map { $0.1 }, whole.results().map { $0.1 })
        XCTAssertGreaterThan(whole.state.reduce(0, +), 0)
    }

    /// pred 1 2 3 4 5, target 2 0 1 4 −1 → valid (target > 0): |1−2| = 1, |3−1| = 2, |4−4| = 0
    /// abs = 3/3 = 1, rel = (1/2 + 2/1 + 0)/3 = 5/6, rmse = √(5/3).
    func testDepthHandCase() {
        let m = DepthMetric()
        m.update(pred: Tensor([1, 1, 1, 5], [1, 2, 3, 4, 5]), target: Tensor([1, 1, 1, 5], [2, 0, 1, 4, -1]))
        XCTAssertEqual(result(m, "abs_err"), 1, accuracy: 1e-12)
        XCTAssertEqual(result(m, "rel_err"), 5.0 / 6, accuracy: 1e-12)
        XCTAssertEqual(result(m, "rmse"), (5.0 / 3).squareRoot(), accuracy: 1e-12)
        // merging: a second batch adds to the pooled sums (not an average of batch averages)
        let other = DepthMetric()
        other.update(pred: Tensor([1, 1, 1, 1], [3]), target: Tensor([1, 1, 1, 1], [1]))
        m.state = zip(m.state, other.state).map { $0 + $1 }
        XCTAssertEqual(result(m, "abs_err"), 5.0 / 4, accuracy: 1e-12)
        XCTAssertEqual(m.higherIsBetter["abs_err"], false)
        // the generic entry point and the factory reach the same code
        let generic = makeMetric(task: "depth", classes: 0)
        generic.update(output: Tensor([1, 1, 1, 5], [1, 2, 3, 4, 5]), target: Tensor([1, 1, 1, 5], [2, 0, 1, 4, -1]))
        XCTAssertEqual(result(generic, "rel_err"), 5.0 / 6, accuracy: 1e-12)
        XCTAssertTrue(makeMetric(task: "parts", classes: 7) is SegmentationMetric)
        XCTAssertTrue(makeMetric(task: "saliency", classes: 0) is BinaryMetric)
    }

    /// Target (0,0,1) everywhere; predictions at 0°, 10°, 45°, 90°, 135° (not unit length) and
    /// one pixel with a zero target (invalid). mean = 56°, median = 45°, within 11.25/22.5/30 = 40 %.
    func testNormalsKnownAngles() {
        let d = Double.pi / 180
        let preds: [(Double, Double, Double)] = [(0, 0, 2), (sin(10 * d), 0, cos(10 * d)), (3, 0, 3), (0, -1, 0), (0, 1, -1), (1, 1, 1)]
        let targets: [(Double, Double, Double)] = [(0, 0, 1), (0, 0, 1), (0, 0, 1), (0, 0, 1), (0, 0, 1), (0, 0, 0)]
        let HW = preds.count
        var p = [Float](repeating: 0, count: 3 * HW), t = p
        for i in 0..<HW {
            p[i] = Float(preds[i].0); p[HW + i] = Float(preds[i].1); p[2 * HW + i] = Float(preds[i].2)
            t[i] = Float(targets[i].0); t[HW + i] = Float(targets[i].1); t[2 * HW + i] = Float(targets[i].2)
        }
        let m = NormalsMetric()
        m.update(pred: Tensor([1, 3, 1, HW], p), target: Tensor([1, 3, 1, HW], t))
        XCTAssertEqual(m.state[0], 5)
        XCTAssertEqual(result(m, "mean"), (0 + 10 + 45 + 90 + 135) / 5, accuracy: 1e-3)
        XCTAssertEqual(result(m, "median"), 45, accuracy: 0.01)
        XCTAssertEqual(result(m, "within_11.25"), 40, accuracy: 1e-9)
        XCTAssertEqual(result(m, "within_22.5"), 40, accuracy: 1e-9)
        XCTAssertEqual(result(m, "within_30"), 40, accuracy: 1e-9)
        XCTAssertEqual(result(m, "rmse"), ((100.0 + 2025 + 8100 + 18225) / 5).squareRoot(), accuracy: 1e-3)
    }

    /// Many random directions: the histogram median is within one 0.01° bin of the exact
    /// median, and two halves merged give exactly the whole.
    func testNormalsMedianFromHistogramAndMerge() {
        var rng = Philox(seed: 11, stream: 2)
        let N = 2, HW = 1001
        let pred = Tensor([N, 3, 1, HW], (0..<(N * 3 * HW)).map { _ in rng.normal() })
        let target = Tensor([N, 3, 1, HW], (0..<(N * 3 * HW)).map { _ in rng.normal() })
        var angles: [Double] = []
        for n in 0..<N {
            for i in 0..<HW {
                var dot = 0.0, pp = 0.0, tt = 0.0
                for c in 0..<3 {
                    let a = Double(pred[(n * 3 + c) * HW + i]), b = Double(target[(n * 3 + c) * HW + i])
                    dot += a * b; pp += a * a; tt += b * b
                }
                angles.append(acos(max(-1, min(1, dot / (pp * tt).squareRoot()))) * 180 / Double.pi)
            }
        }
        angles.sort()
        let exactMedian = 0.5 * (angles[angles.count / 2 - 1] + angles[angles.count / 2])
        let whole = NormalsMetric()
        whole.update(pred: pred, target: target)
        XCTAssertEqual(result(whole, "median"), exactMedian, accuracy: 0.01)
        XCTAssertEqual(result(whole, "mean"), angles.reduce(0, +) / Double(angles.count), accuracy: 1e-9)
        XCTAssertEqual(result(whole, "within_30"), 100 * Double(angles.filter { $0 < 30 }.count) / Double(angles.count), accuracy: 1e-9)

        let a = NormalsMetric(), b = NormalsMetric()
        let half = 3 * HW
        a.update(pred: Tensor([1, 3, 1, HW], Array(pred.array[..<half])), target: Tensor([1, 3, 1, HW], Array(target.array[..<half])))
        b.update(pred: Tensor([1, 3, 1, HW], Array(pred.array[half...])), target: Tensor([1, 3, 1, HW], Array(target.array[half...])))
        a.state = zip(a.state, b.state).map { $0 + $1 }
        for ((na, va), (nw, vw)) in zip(a.results(), whole.results()) {
            XCTAssertEqual(na, nw)
            XCTAssertEqual(va, vw, accuracy: 1e-9, na)
        }
    }

    /// One image, logits 2, −2, 0.5, −0.1 (sigmoid .881 .119 .622 .475), gt 1 0 0 1, plus an ignored pixel.
    ///   t ≤ 0.45: predicted {0,2,3}: TP 2 FP 1 FN 0 → J 2/3, P 2/3, R 1, F 0.8
    ///   t 0.5–0.6: {0,2}: TP 1 FP 1 FN 1 → J 1/3, P 1/2, R 1/2, F 0.5
    ///   t 0.65–0.85: {0}: TP 1 FP 0 FN 1 → J 1/2, P 1, R 1/2, F 2/3
    ///   t 0.9: {} → J 0, F 0
    /// miou (t = 0.5) = 1/3, max_miou = 2/3, max_f = 0.8.
    func testBinaryHandCase() {
        let m = BinaryMetric()
        m.update(logits: Tensor([1, 1, 1, 5], [2, -2, 0.5, -0.1, 9]), target: Tensor([1, 1, 1, 5], [1, 0, 0, 1, -1]))
        XCTAssertEqual(result(m, "miou"), 1.0 / 3, accuracy: 1e-12)
        XCTAssertEqual(result(m, "max_miou"), 2.0 / 3, accuracy: 1e-12)
        XCTAssertEqual(result(m, "max_f"), 0.8, accuracy: 1e-9)
        // a second image with no foreground and no positives: Jaccard 1 at every threshold, P = R = 0
        let empty = BinaryMetric()
        empty.update(logits: Tensor([1, 1, 1, 3], [-5, -5, -5]), target: Tensor([1, 1, 1, 3], [0, 0, 255]))
        XCTAssertEqual(result(empty, "miou"), 1, accuracy: 1e-12)
        // both images in one batch == merged states; mean P at t = 0.2: 1/3, R: 1/2 → F = 0.4
        let both = BinaryMetric()
        both.update(logits: Tensor([2, 1, 1, 5], [2, -2, 0.5, -0.1, 9, -5, -5, -5, -5, -5]),
                    target: Tensor([2, 1, 1, 5], [1, 0, 0, 1, -1, 0, 0, 255, -1, -1]))
        m.state = zip(m.state, empty.state).map { $0 + $1 }
        XCTAssertEqual(m.state.count, both.state.count)
        for (x, y) in zip(m.state, both.state) { XCTAssertEqual(x, y, accuracy: 1e-12) }
        XCTAssertEqual(result(both, "miou"), (1.0 / 3 + 1) / 2, accuracy: 1e-12)
        XCTAssertEqual(result(both, "max_f"), 0.4, accuracy: 1e-9)
    }
}
