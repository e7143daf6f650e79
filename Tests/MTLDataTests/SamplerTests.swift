import MTLCore
import XCTest
@testable import MTLData

final class SamplerTests: XCTestCase {
    func testShardsAreDisjointAndCoverTheGlobalBatchForEveryWorldSize() throws {
        let count = 103, batch = 8, seed: UInt64 = 7
        let reference = try ShardedSampler(count: count, globalBatch: batch, rank: 0, worldSize: 1, seed: seed)
        XCTAssertEqual(reference.stepsPerEpoch, 12)  // 103 / 8, tail of 7 dropped
        for worldSize in [1, 2, 4] {
            let ranks = try (0..<worldSize).map {
                try ShardedSampler(count: count, globalBatch: batch, rank: $0, worldSize: worldSize, seed: seed)
            }
            for step in 0..<(3 * reference.stepsPerEpoch + 2) {
                let global = reference.globalBatch(step: step)
                XCTAssertEqual(global.count, batch)
                XCTAssertEqual(Set(global).count, batch, "duplicate sample in global batch of step \(step)")
                var union: [Int] = []
                for r in ranks {
                    XCTAssertEqual(r.globalBatch(step: step), global, "N=\(worldSize): global batch differs at step \(step)")
                    let local = r.localBatch(step: step)
                    XCTAssertEqual(local.count, batch / worldSize)
                    union += local
                }
                // Rank blocks are contiguous and in rank order, so concatenation IS the global batch.
                XCTAssertEqual(union, global, "N=\(worldSize) step \(step)")
                XCTAssertEqual(Set(union).count, batch, "shards overlap at N=\(worldSize) step \(step)")
            }
        }
    }

    func testEpochsArePermutationsAndDiffer() throws {
        let count = 40, batch = 8
        let s = try ShardedSampler(count: count, globalBatch: batch, rank: 0, worldSize: 1, seed: 3)
        XCTAssertEqual(s.stepsPerEpoch, 5)
        var epochs: [[Int]] = []
        for e in 0..<4 {
            let steps = (e * 5)..<((e + 1) * 5)
            for step in steps { XCTAssertEqual(s.epoch(ofStep: step), e) }
            let order = steps.flatMap { s.globalBatch(step: $0) }
            XCTAssertEqual(order.sorted(), Array(0..<count), "epoch \(e) is not a permutation")
            XCTAssertEqual(order, s.permutation(epoch: e))
            epochs.append(order)
        }
        for a in 0..<4 { for b in (a + 1)..<4 { XCTAssertNotEqual(epochs[a], epochs[b], "epochs \(a) and \(b) identical") } }
        // Consecutive epochs must not be shifted copies of each other's random stream: count how
        // many positions agree; for independent permutations of 40 that is about 1.
        let agree = zip(epochs[0], epochs[1]).filter { $0 == $1 }.count
        XCTAssertLessThan(agree, 8)
        XCTAssertNotEqual(epochs[0], Array(0..<count), "no shuffling")
    }

    func testSameSeedSameOrderDifferentSeedDifferentOrder() throws {
        let a = try ShardedSampler(count: 64, globalBatch: 16, rank: 1, worldSize: 2, seed: 11)
        let b = try ShardedSampler(count: 64, globalBatch: 16, rank: 1, worldSize: 2, seed: 11)
        let c = try ShardedSampler(count: 64, globalBatch: 16, rank: 1, worldSize: 2, seed: 12)
        XCTAssertEqual((0..<10).map { a.localBatch(step: $0) }, (0..<10).map { b.localBatch(step: $0) })
        XCTAssertNotEqual((0..<10).map { a.localBatch(step: $0) }, (0..<10).map { c.localBatch(step: $0) })
        // A fresh sampler asked for step 7 first (resume) gives what a sampler that walked there gives.
        let resumed = try ShardedSampler(count: 64, globalBatch: 16, rank: 1, worldSize: 2, seed: 11)
        XCTAssertEqual(resumed.localBatch(step: 7), a.localBatch(step: 7))
    }

    func testBadConfigurationsAreErrors() {
        assertMTLError(["global batch size 10", "not divisible", "world size 4"]) {
            _ = try ShardedSampler(count: 100, globalBatch: 10, rank: 0, worldSize: 4, seed: 0)
        }
        assertMTLError(["5 samples", "fewer than the global batch size 8"]) {
            _ = try ShardedSampler(count: 5, globalBatch: 8, rank: 0, worldSize: 1, seed: 0)
        }
        assertMTLError(["rank", "0..<2", "found 2"]) {
            _ = try ShardedSampler(count: 100, globalBatch: 8, rank: 2, worldSize: 2, seed: 0)
        }
        assertMTLError(["global batch size must be >= 1"]) {
            _ = try ShardedSampler(count: 100, globalBatch: 0, rank: 0, worldSize: 1, seed: 0)
        }
    }
}
