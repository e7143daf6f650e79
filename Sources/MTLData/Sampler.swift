import Foundation
import MTLCore

/// World-size-invariant sharding (ARCHITECTURE.md invariant 1).
///
/// Every rank builds the same permutation of 0..<count from Philox(seed, .dataOrder, epoch).
/// The global batch of global step s is the window [j·B, (j+1)·B) of epoch e's permutation,
/// with e = s / stepsPerEpoch and j = s % stepsPerEpoch (the tail count % B is dropped, so
/// every step has a full batch). Rank r of N takes the r-th contiguous block of b = B/N of
/// that window. Hence the union over ranks of step s is the same set of samples for every N,
/// which is what makes N ranks × b equal 1 rank × N·b.
///
/// Thread-safe: the permutation cache is guarded by a lock, so a prefetch thread may ask
/// for step s+1 while the trainer holds step s.
public struct ShardedSampler {
    public let count: Int
    public let globalBatchSize: Int
    public let rank: Int
    public let worldSize: Int
    public let seed: UInt64
    /// The Philox stream of the permutations: .dataOrder, or Auto-λ's independent second stream.
    public let stream: UInt64
    private let cache = PermutationCache()

    public init(count: Int, globalBatch: Int, rank: Int, worldSize: Int, seed: UInt64,
                stream: RNGStream = .dataOrder) throws {
        guard worldSize >= 1 else { throw MTLError("sampler: world size must be >= 1, found \(worldSize)") }
        guard rank >= 0 && rank < worldSize else {
            throw MTLError("sampler: rank must be in 0..<\(worldSize), found \(rank)")
        }
        guard globalBatch >= 1 else { throw MTLError("sampler: global batch size must be >= 1, found \(globalBatch)") }
        guard globalBatch % worldSize == 0 else {
            throw MTLError("sampler: global batch size \(globalBatch) is not divisible by the world size \(worldSize) "
                           + "(expected a multiple of \(worldSize), e.g. \(max(worldSize, globalBatch / worldSize * worldSize)))")
        }
        guard count >= globalBatch else {
            throw MTLError("sampler: dataset has \(count) samples, fewer than the global batch size \(globalBatch)")
        }
        self.count = count
        self.globalBatchSize = globalBatch
        self.rank = rank
        self.worldSize = worldSize
        self.seed = seed
        self.stream = stream.rawValue
    }

    public var stepsPerEpoch: Int { count / globalBatchSize }
    public var localBatchSize: Int { globalBatchSize / worldSize }

    public func epoch(ofStep step: Int) -> Int { step / stepsPerEpoch }

    /// The permutation of epoch `epoch`. The epoch goes into the high 32 bits of Philox's
    /// counter: MTLCore's Philox puts `index` in the counter that advances with every draw,
    /// so consecutive indices would otherwise give streams shifted by one block (4 draws),
    /// i.e. strongly correlated permutations in consecutive epochs.
    public func permutation(epoch: Int) -> [Int] {
        cache.permutation(epoch: epoch) {
            var rng = Philox(seed: seed, stream: stream, index: UInt64(epoch) << 32)
            return rng.permutation(count)
        }
    }

    public func globalBatch(step: Int) -> [Int] {
        precondition(step >= 0, "negative step \(step)")
        let perm = permutation(epoch: epoch(ofStep: step))
        let start = (step % stepsPerEpoch) * globalBatchSize
        return Array(perm[start..<(start + globalBatchSize)])
    }

    public func localBatch(step: Int) -> [Int] {
        let global = globalBatch(step: step)
        let b = localBatchSize
        return Array(global[(rank * b)..<((rank + 1) * b)])
    }
}

/// Holds the last permutation built, so the steps of one epoch share it.
final class PermutationCache: @unchecked Sendable {
    private let lock = NSLock()
    private var epoch = -1
    private var perm: [Int] = []

    func permutation(epoch e: Int, build: () -> [Int]) -> [Int] {
        lock.lock()
        defer { lock.unlock() }
        if e != epoch {
            perm = build()
            epoch = e
        }
        return perm
    }
}
