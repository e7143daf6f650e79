import Foundation

/// Runs body(i) for i in 0..<n on up to `Threads.count` threads, in contiguous chunks.
/// Used for loops over channels or rows that BLAS does not cover (im2col, BN, pooling).
@inline(__always)
public func parallelFor(_ n: Int, minChunk: Int = 1, _ body: (Int) -> Void) {
    let threads = Threads.count
    if threads <= 1 || n < 2 * minChunk {
        for i in 0..<n { body(i) }
        return
    }
    let chunks = min(threads, (n + minChunk - 1) / minChunk)
    withoutActuallyEscaping(body) { body in
        DispatchQueue.concurrentPerform(iterations: chunks) { ci in
            let lo = n * ci / chunks, hi = n * (ci + 1) / chunks
            for i in lo..<hi { body(i) }
        }
    }
}

/// body(lo, hi) over [0, count) in contiguous blocks of `block` elements, the blocks spread over the
/// threads by `parallelFor`: the element-wise loops of the layers, the MT-CP decoder and the optimizers.
/// In such a loop an element's result depends on that element alone, so neither `block` nor the
/// thread count changes a bit; `block` only sets how much work one closure call carries (and, below
/// two blocks, that the loop stays on the calling thread). A reduction whose rounding must not depend
/// on the thread count blocks its partial sums itself at a fixed size (MTLNN's `elementBlock`).
@inline(__always)
public func parallelBlocks(_ count: Int, block: Int = 1 << 14, _ body: (Int, Int) -> Void) {
    precondition(block > 0, "parallelBlocks: block must be positive")
    parallelFor((count + block - 1) / block) { b in body(b * block, min(count, (b + 1) * block)) }
}
