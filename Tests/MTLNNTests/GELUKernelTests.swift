import Foundation
import XCTest
@testable import MTLNN

/// The vectorisable erf / exp behind GELU (ATen's formulas) against the float64 functions.
final class GELUKernelTests: XCTestCase {
    func testErfAndExpAccuracy() {
        var worstErf = 0.0, worstExp = 0.0
        var x = -12.0
        while x <= 12 {
            worstErf = max(worstErf, abs(Double(fastErf(Float(x))) - erf(Double(Float(x)))))
            x += 0.000731
        }
        x = -87
        while x <= 88 {
            let e = exp(Double(Float(x)))
            worstExp = max(worstExp, abs(Double(fastExp(Float(x))) - e) / e)
            x += 0.00173
        }
        XCTAssertLessThan(worstErf, 6e-7, "max |Δerf|")
        XCTAssertLessThan(worstExp, 2e-7, "max relative Δexp")
        XCTAssertEqual(fastErf(0), 0)
        XCTAssertEqual(fastErf(-30), -1)
        XCTAssertEqual(fastExp(-200), fastExp(-87.3))   // clamped, no NaN/Inf
        print(String(format: "fastErf max abs error %.2e, fastExp max rel error %.2e", worstErf, worstExp))
    }
}
