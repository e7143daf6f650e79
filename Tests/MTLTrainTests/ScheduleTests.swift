import Foundation
import XCTest
@testable import MTLTrain

final class ScheduleTests: XCTestCase {
    func schedule(_ name: String, warmup: Int = 10, factor: Double = 0.1, minLR: Double = 0) -> LRSchedule {
        var c = ScheduleConfig()
        c.name = name
        c.warmupSteps = warmup
        c.warmupFactor = factor
        c.stepSize = 30
        c.gamma = 0.1
        c.power = 0.9
        c.minLR = minLR
        return LRSchedule(c, baseLR: 1.0, totalSteps: 110)   // T = 100 steps after the warm-up
    }

    func testWarmupIsLinearFromFactorToBase() {
        for name in ["constant", "step", "poly", "cosine"] {
            let s = schedule(name)
            XCTAssertEqual(s.lr(step: 0), 0.1, accuracy: 1e-12, name)
            XCTAssertEqual(s.lr(step: 5), 0.55, accuracy: 1e-12, name)   // 0.1 + 0.9·5/10
            XCTAssertEqual(s.lr(step: 9), 0.91, accuracy: 1e-12, name)
            XCTAssertEqual(s.lr(step: 10), 1.0, accuracy: 1e-12, name)   // schedule starts at the base lr
        }
        XCTAssertEqual(schedule("constant", warmup: 0).lr(step: 0), 1.0)
    }

    func testConstant() {
        XCTAssertEqual(schedule("constant").lr(step: 60), 1.0)
        XCTAssertEqual(schedule("constant").lr(step: 500), 1.0)
    }

    func testStep() {
        let s = schedule("step")
        XCTAssertEqual(s.lr(step: 10 + 29), 1.0, accuracy: 1e-12)
        XCTAssertEqual(s.lr(step: 10 + 30), 0.1, accuracy: 1e-12)
        XCTAssertEqual(s.lr(step: 10 + 60), 0.01, accuracy: 1e-12)
        XCTAssertEqual(s.lr(step: 10 + 99), 0.001, accuracy: 1e-12)
    }

    func testPoly() {
        let s = schedule("poly")
        XCTAssertEqual(s.lr(step: 60), pow(0.5, 0.9), accuracy: 1e-12)    // (1 − 50/100)^0.9 = 0.535887...
        XCTAssertEqual(s.lr(step: 60), 0.5358867312681466, accuracy: 1e-12)
        XCTAssertEqual(s.lr(step: 85), pow(0.25, 0.9), accuracy: 1e-12)
        XCTAssertEqual(s.lr(step: 110), 0, accuracy: 1e-12)
        XCTAssertEqual(s.lr(step: 200), 0, accuracy: 1e-12)                // clamped past the end
    }

    func testCosine() {
        let s = schedule("cosine", minLR: 0.1)
        XCTAssertEqual(s.lr(step: 60), 0.55, accuracy: 1e-12)              // 0.1 + 0.45·(1 + cos(π/2))
        XCTAssertEqual(s.lr(step: 35), 0.1 + 0.45 * (1 + 0.7071067811865476), accuracy: 1e-12)   // s = 25: cos(π/4)
        XCTAssertEqual(s.lr(step: 110), 0.1, accuracy: 1e-12)
        let plain = schedule("cosine", warmup: 0)
        XCTAssertEqual(plain.lr(step: 0), 1.0, accuracy: 1e-12)
        XCTAssertEqual(plain.lr(step: 55), 0.5, accuracy: 1e-12)           // T = 110, half-way
    }
}
