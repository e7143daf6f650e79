import Foundation
import MTLCore
import XCTest
@testable import MTLMethods

final class GradDropTests: XCTestCase {
    func testUniformsMatchSequentialDraws() {
        var rng = methodRNG(seed: 9, step: 4)
        let sequential = (0..<16).map { _ in rng.uniform() }
        let base = methodRNG(seed: 9, step: 4)
        for b in 0..<4 {
            let u = GradDrop.uniforms(key: base.key, base: base.counter, block: b)
            XCTAssertEqual([u.0, u.1, u.2, u.3], Array(sequential[(4 * b)..<(4 * b + 4)]))
        }
    }

    func testParameterLevelDecisionsByHand() throws {
        let P = 1001  // not a multiple of 4, more than one parallel chunk is not needed
        var rng = Philox(seed: 1, stream: 5)
        var q: [[Float]] = (0..<3).map { _ in (0..<P).map { _ in rng.normal() } }
        for j in 0..<10 { q[0][j] = 1; q[1][j] = 2; q[2][j] = 0.5 }  // all positive: purity 1 → all kept
        let original = q
        let m = try make("graddrop", T: 3)
        let r = try q.withUnsafeMutableBufferPointerArray { bufs in
            try m.apply(MethodContext(step: 2, seed: 3, roles: roles(3), losses: [1, 1, 1], grads: bufs, level: .parameters))
        }
        XCTAssertEqual(r.output, .combinedGradient(decoder: [1, 1, 1]))
        var rngU = methodRNG(seed: 3, step: 2)
        for j in 0..<P {
            let U = rngU.uniform()
            let vals = (0..<3).map { original[$0][j] }
            let sum = vals.reduce(0, +), abs = vals.map { Swift.abs($0) }.reduce(0, +)
            let purity = 0.5 * (1 + sum / (abs + 1e-7))
            var expected: Float = 0
            for x in vals where (purity > U && x > 0) || (purity < U && x < 0) { expected += x }
            XCTAssertEqual(q[0][j], expected, accuracy: 1e-6, "j \(j)")
        }
        XCTAssertEqual(q[0][0], 3.5, accuracy: 1e-6)
    }

    func testParameterSlicesWithOffsetsEqualWhole() throws {
        let v = Vectors.random(T: 3, P: 103, seed: 40)
        let m = try make("graddrop", T: 3)
        func run(_ lo: Int, _ hi: Int, offset: Int? = nil) throws -> [Float] {
            var part = v.data.map { Array($0[lo..<hi]) }
            _ = try part.withUnsafeMutableBufferPointerArray { bufs in
                try m.apply(MethodContext(step: 6, seed: 2, roles: roles(3), losses: [1, 1, 1], grads: bufs,
                                          level: .parameters, gradsOffset: offset ?? lo))
            }
            return part[0]
        }
        let whole = try run(0, 103)
        XCTAssertEqual(try run(0, 7) + run(7, 50) + run(50, 103), whole)  // 7 and 50: not block-aligned
        XCTAssertNotEqual(try run(7, 50, offset: 0), Array(whole[7..<50]))  // the offset matters
    }

    func testRepresentationMultipliersAndCombineAcrossRanks() throws {
        // Two "ranks" with 2 samples each of a per-sample size-5 representation.
        let B = 4, S = 5, T = 2
        var rng = Philox(seed: 2, stream: 6)
        let z = (0..<(B * S)).map { _ in rng.normal() }
        let h = (0..<T).map { _ in (0..<(B * S)).map { _ in rng.normal() } }
        // q_t from the whole batch equals the sum of the two ranks' halves.
        var qWhole = [[Float]](repeating: [Float](repeating: 0, count: S), count: T)
        var qSplit = qWhole
        for t in 0..<T {
            GradDrop.signCorrectedSum(z: z, h: h[t], batch: B, perSample: S, into: &qWhole[t])
            z.withUnsafeBufferPointer { zp in h[t].withUnsafeBufferPointer { hp in
                GradDrop.signCorrectedSum(z: zp.baseAddress!, h: hp.baseAddress!, batch: 2, perSample: S, into: &qSplit[t])
                GradDrop.signCorrectedSum(z: zp.baseAddress! + 2 * S, h: hp.baseAddress! + 2 * S, batch: 2, perSample: S,
                                          into: &qSplit[t], accumulate: true)
            } }
            // By hand for j = 0.
            var e: Float = 0
            for b in 0..<B { e += (z[b * S] > 0 ? 1 : -1) * h[t][b * S] }
            XCTAssertEqual(qWhole[t][0], e, accuracy: 1e-6)
        }
        for t in 0..<T { for j in 0..<S { XCTAssertEqual(qWhole[t][j], qSplit[t][j], accuracy: 1e-6) } }
        let m = try make("graddrop", T: T, ["leak": "0.25"])
        var mult = qWhole
        let r = try mult.withUnsafeMutableBufferPointerArray { bufs in
            try m.apply(MethodContext(step: 0, seed: 1, roles: roles(T), losses: [1, 1], grads: bufs, level: .representation))
        }
        XCTAssertEqual(r.output, .multipliers(decoder: [1, 1]))
        for t in 0..<T { for j in 0..<S { XCTAssertTrue(mult[t][j] == 0.25 || mult[t][j] == 1, "\(mult[t][j])") } }
        var out = [Float](repeating: 0, count: B * S)
        mult.withUnsafeBufferPointers { mb in
            h[0].withUnsafeBufferPointer { h0 in h[1].withUnsafeBufferPointer { h1 in
                GradDrop.combine(multipliers: mb, h: [h0.baseAddress!, h1.baseAddress!], batch: B, perSample: S, into: &out)
            } }
        }
        for b in 0..<B { for j in 0..<S {
            XCTAssertEqual(out[b * S + j], mult[0][j] * h[0][b * S + j] + mult[1][j] * h[1][b * S + j], accuracy: 1e-6)
        } }
    }
}
