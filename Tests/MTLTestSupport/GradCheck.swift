import Foundation
import MTLCore
import XCTest

/// A tensor with values uniform in [-scale, scale).
public func randomTensor(_ shape: [Int], _ rng: inout Philox, scale: Float = 1) -> Tensor {
    let t = Tensor(shape)
    for i in 0..<t.count { t.data[i] = (2 * rng.uniform() - 1) * scale }
    return t
}

/// Σ r·y in Double: a random linear functional of a layer's output, so that its gradient
/// w.r.t. the output is exactly r.
public func functional(_ y: Tensor, _ r: Tensor) -> Double { functional([y], [r]) }

/// Σ_s <y_s, r_s> in Double: its gradient with respect to y_s is exactly r_s.
public func functional(_ ys: [Tensor], _ rs: [Tensor]) -> Double {
    precondition(ys.count == rs.count)
    var s = 0.0
    for (y, r) in zip(ys, rs) {
        precondition(y.count == r.count)
        for i in 0..<y.count { s += Double(y.data[i]) * Double(r.data[i]) }
    }
    return s
}

/// Central finite differences of `f` w.r.t. every element of `x` (or a strided subset when
/// it is large), compared with `analytic` by the relative error ‖a − n‖ / max(‖a‖, ‖n‖).
/// Fails when that exceeds `tolerance` or when the gradient is identically zero
/// (a vacuous check). `f` must recompute everything from x.
/// `skipKinks` (networks full of ReLUs): an element whose differences with steps eps and eps/2
/// disagree has a kink within the step and is left out; at most a quarter of them may be.
public func checkGradient(_ label: String, x: Tensor, analytic: [Float], eps: Float = 1e-2,
                          tolerance: Double = 1e-2, maxChecks: Int = 400, skipKinks: Bool = false,
                          file: StaticString = #filePath, line: UInt = #line, _ f: () -> Double) {
    XCTAssertEqual(analytic.count, x.count, "\(label): gradient size", file: file, line: line)
    guard analytic.count == x.count else { return }
    func central(_ i: Int, _ h: Float) -> Double {
        let saved = x.data[i]
        x.data[i] = saved + h
        let fp = f()
        x.data[i] = saved - h
        let fm = f()
        x.data[i] = saved
        // The representable step, not the nominal one.
        return (fp - fm) / (Double(saved + h) - Double(saved - h))
    }
    let step = max(1, x.count / maxChecks)
    var diff2 = 0.0, a2 = 0.0, n2 = 0.0, checked = 0, kinks = 0, worst = (0, 0.0, 0.0)
    for i in stride(from: 0, to: x.count, by: step) {
        let numeric = central(i, eps)
        if skipKinks {
            let half = central(i, eps / 2)
            if abs(numeric - half) > 0.02 * max(abs(numeric), abs(half)) + 1e-3 { kinks += 1; continue }
        }
        let a = Double(analytic[i])
        let d = (a - numeric) * (a - numeric)
        if d > (worst.1 - worst.2) * (worst.1 - worst.2) { worst = (i, a, numeric) }
        diff2 += d
        a2 += a * a
        n2 += numeric * numeric
        checked += 1
    }
    let rel = diff2.squareRoot() / max(a2.squareRoot(), n2.squareRoot(), 1e-30)
    if ProcessInfo.processInfo.environment["MTL_GRADCHECK_VERBOSE"] != nil { print("gradcheck \(label): relative error \(rel)") }
    if skipKinks {
        XCTAssertLessThanOrEqual(4 * kinks, checked + kinks, "\(label): \(kinks) of \(checked + kinks) elements at a kink",
                                 file: file, line: line)
    }
    XCTAssertGreaterThan(a2, 1e-12, "\(label): analytic gradient is zero, the check would be vacuous", file: file, line: line)
    XCTAssertLessThan(rel, tolerance, "\(label): relative error \(rel) (\(kinks) kinks left out); worst element \(worst.0): "
                      + "analytic \(worst.1), numeric \(worst.2)", file: file, line: line)
}

/// max_i |a_i − b_i| / max(1, |b_i|) ≤ tol.
public func assertClose(_ a: [Float], _ b: [Float], tol: Float = 1e-5, _ label: String,
                        file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, "\(label): count", file: file, line: line)
    guard a.count == b.count else { return }
    var worst: Float = 0, at = 0
    for i in 0..<a.count {
        let d = abs(a[i] - b[i]) / max(1, abs(b[i]))
        if !(d <= worst) { worst = d; at = i }
    }
    if ProcessInfo.processInfo.environment["MTL_GRADCHECK_VERBOSE"] != nil { print("close \(label): max error \(worst)") }
    XCTAssertLessThanOrEqual(worst, tol, "\(label): element \(at): \(a[at]) vs \(b[at])", file: file, line: line)
}

/// ‖got − want‖ / ‖want‖ over the elements in `ranges` (e.g. one group of a model's flattened parameters)
/// below `tol`, in Double; fails on a zero reference (a vacuous check).
public func assertClose(_ got: [Float], _ want: [Double], _ ranges: [Range<Int>], _ label: String, tol: Double = 1e-4,
                        file: StaticString = #filePath, line: UInt = #line) {
    var d2 = 0.0, w2 = 0.0
    for r in ranges { for i in r { d2 += (Double(got[i]) - want[i]) * (Double(got[i]) - want[i]); w2 += want[i] * want[i] } }
    XCTAssertGreaterThan(w2, 1e-12, "\(label): reference is zero, the check would be vacuous", file: file, line: line)
    XCTAssertLessThan(d2.squareRoot() / max(w2.squareRoot(), 1e-30), tol, "\(label): relative error", file: file, line: line)
}
