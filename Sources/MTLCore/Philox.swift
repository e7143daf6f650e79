/// Philox-4x32-10 (Salmon et al., SC'11): a counter-based RNG. A draw is a pure
/// function of (key, counter), so every rank computes the same numbers for the same
/// (seed, step, purpose) without sharing state — the basis of the "same update on
/// every rank" and "deterministic resume" invariants.
public struct Philox: Sendable {
    public let key: (UInt32, UInt32)
    public var counter: (UInt32, UInt32, UInt32, UInt32)
    private var cache: (UInt32, UInt32, UInt32, UInt32) = (0, 0, 0, 0)
    private var cached = 0

    /// `seed` is the run's seed; `stream` separates purposes (data order, augmentation,
    /// method randomness, init); `index` is the step/epoch/sample the draws belong to.
    /// Counter layout: word 0 counts the blocks drawn, words 1–2 hold the index, word 3 the
    /// stream, so the draws of different (stream, index) pairs never overlap (2^32 blocks each).
    public init(seed: UInt64, stream: UInt64, index: UInt64 = 0) {
        key = (UInt32(truncatingIfNeeded: seed), UInt32(truncatingIfNeeded: seed >> 32))
        counter = (0, UInt32(truncatingIfNeeded: index), UInt32(truncatingIfNeeded: index >> 32),
                   UInt32(truncatingIfNeeded: stream))
    }

    @inline(__always)
    static func mulhilo(_ a: UInt32, _ b: UInt32) -> (UInt32, UInt32) {
        let p = UInt64(a) * UInt64(b)
        return (UInt32(truncatingIfNeeded: p >> 32), UInt32(truncatingIfNeeded: p))
    }

    /// The 10-round Philox bijection of one counter block.
    public static func block(key: (UInt32, UInt32), counter: (UInt32, UInt32, UInt32, UInt32))
        -> (UInt32, UInt32, UInt32, UInt32) {
        var (c0, c1, c2, c3) = counter
        var (k0, k1) = key
        for _ in 0..<10 {
            let (hi0, lo0) = mulhilo(0xD251_1F53, c0)
            let (hi1, lo1) = mulhilo(0xCD9E_8D57, c2)
            (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
            k0 &+= 0x9E37_79B9
            k1 &+= 0xBB67_AE85
        }
        return (c0, c1, c2, c3)
    }

    public mutating func nextUInt32() -> UInt32 {
        if cached == 0 {
            cache = Philox.block(key: key, counter: counter)
            counter.0 &+= 1
            cached = 4
        }
        cached -= 1
        switch cached {
        case 3: return cache.0
        case 2: return cache.1
        case 1: return cache.2
        default: return cache.3
        }
    }

    /// Uniform in [0, 1) with 24 random bits.
    public mutating func uniform() -> Float { Float(nextUInt32() >> 8) * (1.0 / 16_777_216.0) }

    public mutating func uniformDouble() -> Double {
        let hi = UInt64(nextUInt32() >> 5), lo = UInt64(nextUInt32() >> 6)
        return Double(hi * 67_108_864 + lo) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// Standard normal (Box–Muller).
    public mutating func normal() -> Float {
        var u1 = uniformDouble()
        if u1 < 1e-300 { u1 = 1e-300 }
        let u2 = uniformDouble()
        return Float((-2 * _log(u1)).squareRoot() * _cos(2 * Double.pi * u2))
    }

    /// Uniform integer in 0..<n (n > 0), without modulo bias worth caring about for n < 2^16.
    public mutating func int(below n: Int) -> Int {
        Int((UInt64(nextUInt32()) * UInt64(n)) >> 32)
    }

    /// A uniformly random permutation of 0..<n (Fisher–Yates).
    public mutating func permutation(_ n: Int) -> [Int] {
        var p = Array(0..<n)
        if n < 2 { return p }
        for i in stride(from: n - 1, to: 0, by: -1) {
            let j = int(below: i + 1)
            p.swapAt(i, j)
        }
        return p
    }
}

/// Purposes of random streams; one per use so that draws never collide.
public enum RNGStream: UInt64 {
    case initialization = 1, dataOrder = 2, augmentation = 3, method = 4, synth = 5, dropout = 6
    /// `mtl synth --noise-task`: the noisy pseudo-auxiliary labels.
    case synthNoise = 7
    /// Auto-λ's second ("val") stream of training batches: its order and its augmentation.
    case autolDataOrder = 8, autolAugmentation = 9
    /// DropPath (stochastic depth): the layer id goes into the upper bits of the stream word.
    case dropPath = 10
}

import Foundation
@inline(__always) func _log(_ x: Double) -> Double { Foundation.log(x) }
@inline(__always) func _cos(_ x: Double) -> Double { Foundation.cos(x) }
