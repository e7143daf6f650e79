import Foundation

/// Runs body(i) for i in 0..<n on up to `Threads.count` threads, in contiguous chunks.
/// Used for loops over channels or rows that BLAS does not cover (im2col, BN, pooling).
/// The chunk bounds depend on n, minChunk and the thread count only; which thread runs a chunk
/// does not matter, since chunks write disjoint results.
@inline(__always)
public func parallelFor(_ n: Int, minChunk: Int = 1, _ body: (Int) -> Void) {
    let threads = Threads.count
    if threads <= 1 || n < 2 * minChunk {
        for i in 0..<n { body(i) }
        return
    }
    let chunks = min(threads, (n + minChunk - 1) / minChunk)
    concurrentRun(chunks) { ci in
        let lo = n * ci / chunks, hi = n * (ci + 1) / chunks
        for i in lo..<hi { body(i) }
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

/// body(0), …, body(count − 1) on up to `Threads.count` threads at once, the calling thread taking
/// part; returns when all are done. The one place where mtl hands work to other threads (`parallelFor` and `sgemm`'s slabs).
///
/// On the main thread the work goes to GNU OpenMP's team (libgomp, which oneDNN runs on) rather than
/// to libdispatch's pool: then the convolutions and every other loop share one set of worker
/// threads, and those workers wait for the next region by spinning briefly before they sleep
/// (`Runtime` sets GOMP_SPINCOUNT, ~0.2 ms). A step runs ~2000 short parallel regions; with workers
/// that sleep at once, each region paid a futex wake-up on the critical path and the second core
/// idled while it woke (perf: 8 % of samples in try_to_wake_up). Two pools that both spin would take
/// the cores from each other; one pool cannot. Other threads (the data loader) use libdispatch, so
/// that they never start a second OpenMP team. Without libgomp in the process, libdispatch is used.
@inline(__always)
public func concurrentRun(_ count: Int, _ body: (Int) -> Void) {
    if count <= 1 {
        if count == 1 { body(0) }
        return
    }
    withoutActuallyEscaping(body) { body in
        if let team = OpenMPTeam.entryPoints, Thread.isMainThread {
            var job = OpenMPTeam.Job(count: count, body: body)
            let members = UInt32(min(count, Threads.count))
            withUnsafeMutablePointer(to: &job) { team.parallel(OpenMPTeam.runJob, $0, members, 0) }
        } else {
            DispatchQueue.concurrentPerform(iterations: count, execute: body)
        }
    }
}

/// GNU OpenMP's parallel-region entry points (the ones a compiler emits for `#pragma omp parallel`),
/// looked up at run time so that nothing links libgomp by name: it is there when oneDNN is.
enum OpenMPTeam {
    typealias RegionBody = @convention(c) (UnsafeMutableRawPointer?) -> Void
    struct EntryPoints {
        /// GOMP_parallel(fn, data, num_threads, flags): runs fn(data) on a team of up to
        /// num_threads threads (fewer when nested inside another region) and waits for all.
        let parallel: @convention(c) (RegionBody, UnsafeMutableRawPointer?, UInt32, UInt32) -> Void
        let threadNumber: @convention(c) () -> Int32
        let teamSize: @convention(c) () -> Int32
    }

    struct Job {
        let count: Int
        let body: (Int) -> Void
    }

    static let entryPoints: EntryPoints? = {
        let process = dlopen(nil, RTLD_NOW)
        guard let parallel = dlsym(process, "GOMP_parallel"), let number = dlsym(process, "omp_get_thread_num"),
              let size = dlsym(process, "omp_get_num_threads") else { return nil }
        return EntryPoints(parallel: unsafeBitCast(parallel, to: (@convention(c) (RegionBody, UnsafeMutableRawPointer?, UInt32, UInt32) -> Void).self),
                           threadNumber: unsafeBitCast(number, to: (@convention(c) () -> Int32).self),
                           teamSize: unsafeBitCast(size, to: (@convention(c) () -> Int32).self))
    }()

    /// Each team member takes the job's indices member, member + team size, …: all of them even
    /// when the team is smaller than asked for.
    static let runJob: RegionBody = { raw in
        let job = raw!.assumingMemoryBound(to: Job.self)
        let team = entryPoints!
        let member = Int(team.threadNumber()), size = max(1, Int(team.teamSize()))
        for i in Swift.stride(from: member, to: job.pointee.count, by: size) { job.pointee.body(i) }
    }
}
