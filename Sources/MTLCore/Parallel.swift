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
