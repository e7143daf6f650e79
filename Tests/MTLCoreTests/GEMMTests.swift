import XCTest
@testable import MTLCore

/// `sgemm` with several threads cuts C into slabs, each one single-threaded BLAS call; the
/// result must match a float64 reference for every transpose combination and for shapes whose
/// split is uneven or not a multiple of the 16-wide slab unit, and repeat bit for bit (resume
/// equality relies on it). It may differ from one unsplit call in the last bit: the edge
/// tiles of a slab take other kernel paths.
final class GEMMTests: XCTestCase {
    func testSlabSplitEqualsOneCallForAllTransposes() {
        let saved = Threads.count
        defer { Threads.set(saved) }
        var rng = Philox(seed: 7, stream: 0, index: 0)
        // (m, n, k): split by columns (n ≥ m), by rows (m > n), uneven, odd sizes.
        let shapes = [(37, 300, 129), (300, 37, 129), (64, 64, 200), (129, 1025, 40), (1000, 48, 33)]
        for (m, n, k) in shapes {
            XCTAssertGreaterThanOrEqual(m * n * k, Threads.minParallelMACs, "the shape must take the split path")
            for transA in [false, true] {
                for transB in [false, true] {
                    let a = (0..<(m * k)).map { _ in Float(rng.uniform()) - 0.5 }
                    let b = (0..<(k * n)).map { _ in Float(rng.uniform()) - 0.5 }
                    let c0 = (0..<(m * n)).map { _ in Float(rng.uniform()) - 0.5 }
                    let lda = transA ? m : k, ldb = transB ? k : n
                    func run(threads: Int, beta: Float) -> [Float] {
                        Threads.set(threads)
                        var c = c0
                        c.withUnsafeMutableBufferPointer { cp in
                            sgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.75, a: a, lda: lda,
                                  b: b, ldb: ldb, beta: beta, c: cp.baseAddress!, ldc: n)
                        }
                        return c
                    }
                    for beta: Float in [0, 1] {
                        XCTAssertGreaterThan(Threads.gemmParts(m: m, n: n, k: k), 0)
                        let one = run(threads: 1, beta: beta)
                        let split = run(threads: 2, beta: beta)
                        Threads.set(2)
                        XCTAssertEqual(Threads.gemmParts(m: m, n: n, k: k), 2)
                        var maxErr = 0.0
                        for i in 0..<m {
                            for j in 0..<n {
                                var s = 0.0
                                for p in 0..<k {
                                    let av = Double(transA ? a[p * lda + i] : a[i * lda + p])
                                    let bv = Double(transB ? b[j * ldb + p] : b[p * ldb + j])
                                    s += av * bv
                                }
                                let ref = 0.75 * s + Double(beta) * Double(c0[i * n + j])
                                maxErr = max(maxErr, abs(Double(split[i * n + j]) - ref))
                            }
                        }
                        XCTAssertLessThan(maxErr, 1e-4, "\(m)x\(n)x\(k) tA=\(transA) tB=\(transB) beta=\(beta)")
                        XCTAssertEqual(split, run(threads: 2, beta: beta), "split GEMM not reproducible")
                        var maxDiff: Float = 0
                        for i in 0..<(m * n) { maxDiff = max(maxDiff, abs(one[i] - split[i])) }
                        XCTAssertLessThan(maxDiff, 1e-4)
                    }
                }
            }
        }
    }
}
