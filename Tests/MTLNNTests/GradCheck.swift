import Foundation
import XCTest
import MTLCore
@testable import MTLNN

/// A tensor with values uniform in [-scale, scale).
func randomTensor(_ shape: [Int], _ rng: inout Philox, scale: Float = 1) -> Tensor {
    let t = Tensor(shape)
    for i in 0..<t.count { t.data[i] = (2 * rng.uniform() - 1) * scale }
    return t
}

/// Σ r·y in Double: a random linear functional of a layer's output, so that its gradient
/// w.r.t. the output is exactly r.
func functional(_ y: Tensor, _ r: Tensor) -> Double {
    precondition(y.count == r.count)
    var s = 0.0
    for i in 0..<y.count { s += Double(y.data[i]) * Double(r.data[i]) }
    return s
}

/// Central finite differences of `f` w.r.t. every element of `x` (or a strided subset when
/// it is large), compared with `analytic` by the relative error ‖a − n‖ / max(‖a‖, ‖n‖).
/// Fails when that exceeds `tolerance` or when the gradient is identically zero
/// (a vacuous check). `f` must recompute everything from x.
func checkGradient(_ label: String, x: Tensor, analytic: [Float], eps: Float = 1e-2,
                   tolerance: Double = 1e-2, maxChecks: Int = 400,
                   file: StaticString = #filePath, line: UInt = #line, _ f: () -> Double) {
    XCTAssertEqual(analytic.count, x.count, "\(label): gradient size", file: file, line: line)
    guard analytic.count == x.count else { return }
    let step = max(1, x.count / maxChecks)
    var diff2 = 0.0, a2 = 0.0, n2 = 0.0, worst = (0, 0.0, 0.0)
    var i = 0
    while i < x.count {
        let saved = x.data[i]
        x.data[i] = saved + eps
        let fp = f()
        x.data[i] = saved - eps
        let fm = f()
        x.data[i] = saved
        // Use the actually representable step, not the nominal one.
        let h = Double(saved + eps) - Double(saved - eps)
        let numeric = (fp - fm) / h
        let a = Double(analytic[i])
        let d = (a - numeric) * (a - numeric)
        if d > (worst.1 - worst.2) * (worst.1 - worst.2) { worst = (i, a, numeric) }
        diff2 += d
        a2 += a * a
        n2 += numeric * numeric
        i += step
    }
    let rel = diff2.squareRoot() / max(a2.squareRoot(), n2.squareRoot(), 1e-30)
    if ProcessInfo.processInfo.environment["MTL_GRADCHECK_VERBOSE"] != nil { print("gradcheck \(label): relative error \(rel)") }
    XCTAssertGreaterThan(a2, 1e-12, "\(label): analytic gradient is zero, the check would be vacuous", file: file, line: line)
    XCTAssertLessThan(rel, tolerance,
                      "\(label): relative error \(rel); worst element \(worst.0): analytic \(worst.1), numeric \(worst.2)",
                      file: file, line: line)
}

func assertClose(_ a: [Float], _ b: [Float], tol: Float = 1e-5, _ label: String,
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
