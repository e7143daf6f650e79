import CBLAS
import Foundation

/// Counts the work of the steps `mtl bench` times, for its GFLOP/step. Convolutions are counted
/// per layer as they run forward (the dense 2·N·O·Ho·Wo·I·k² of PyTorch's accounting; their
/// backward booked at the same time: dW always, dX except for the stem) into `forwardFlops` /
/// `backwardFlops`, so their figure does not depend on the kernel path (the BLAS path skips padding
/// taps). Every other GEMM — linears, attention, affinities, in forward and backward — is counted
/// where it executes, in `sgemm`, into `gemmFlops`. Off unless `enabled`.
public enum FlopCounter {
    nonisolated(unsafe) public static var enabled = false
    nonisolated(unsafe) public static var forwardFlops: Double = 0
    nonisolated(unsafe) public static var backwardFlops: Double = 0
    /// 2·M·N·K of every counted GEMM (attention's per-window GEMMs run on several threads: locked).
    public static var gemmFlops: Double {
        get { lock.lock(); defer { lock.unlock() }; return gemm }
        set { lock.lock(); gemm = newValue; lock.unlock() }
    }
    nonisolated(unsafe) private static var gemm: Double = 0
    private static let lock = NSLock()

    @inline(__always)
    static func addGemm(_ m: Int, _ n: Int, _ k: Int) {
        guard enabled else { return }
        lock.lock()
        gemm += 2 * Double(m) * Double(n) * Double(k)
        lock.unlock()
    }

    /// Books 2·M·N·K for GEMM work a layer skips because its result is known (Swin's padding
    /// slots), so that GFLOP/step counts the dense module as PyTorch's counter does.
    public static func addSkippedGemm(_ m: Int, _ n: Int, _ k: Int) { addGemm(m, n, k) }

    public static func reset() {
        forwardFlops = 0
        backwardFlops = 0
        gemmFlops = 0
    }
}

/// Row-major single-precision GEMM: C = alpha * op(A) * op(B) + beta * C,
/// op(A) is M×K, op(B) is K×N, C is M×N.
///
/// With several threads, a large GEMM is cut into `Threads.count` slabs of C (columns when
/// N ≥ M, else rows) and each slab is one single-threaded OpenBLAS call on its own thread of
/// the same pool that runs mtl's other parallel loops (`parallelFor`). Why not OpenBLAS's own
/// threads: between calls they spin in sched_yield for up to ~0.1 s, so during im2col, BN or
/// ReLU (run by the pool) a spinning BLAS thread competes for the same cores; on 2 cores the
/// profile showed 17% of all cycles in sched_yield. Slabs of C are disjoint and their
/// bounds depend only on the shape and the thread count, so results repeat bit for bit (they
/// may differ from one unsplit call in the last bit, as OpenBLAS's own threading does).
/// `counted: false` for the convolutions' GEMMs, which `FlopCounter` counts per layer.
@inline(__always)
public func sgemm(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
                  alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                  b: UnsafePointer<Float>, ldb: Int,
                  beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int, counted: Bool = true) {
    if counted { FlopCounter.addGemm(m, n, k) }
    let parts = Threads.gemmParts(m: m, n: n, k: k)
    if parts <= 1 {
        sgemmCall(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        return
    }
    // Slab boundaries on multiples of 16 (the packing width of the sgemm kernels).
    let splitColumns = n >= m
    let extent = splitColumns ? n : m
    let unit = 16
    let blocks = (extent + unit - 1) / unit
    // The slabs depend on the shape only (not on the thread count): `workers` threads take them in turn.
    let workers = min(Threads.count, parts)
    func slab(_ p: Int) {
        let lo = min(extent, blocks * p / parts * unit), hi = min(extent, blocks * (p + 1) / parts * unit)
        if lo >= hi { return }
        if splitColumns {
            // op(B)[:, lo..<hi]: columns of B, or rows of Bᵀ's storage.
            let bPart = transB ? b + lo * ldb : b + lo
            sgemmCall(transA, transB, m, hi - lo, k, alpha, a, lda, bPart, ldb, beta, c + lo, ldc)
        } else {
            // op(A)[lo..<hi, :]: rows of A, or columns of Aᵀ's storage.
            let aPart = transA ? a + lo : a + lo * lda
            sgemmCall(transA, transB, hi - lo, n, k, alpha, aPart, lda, b, ldb, beta, c + lo * ldc, ldc)
        }
    }
    if workers <= 1 {
        for p in 0..<parts { slab(p) }
    } else {
        concurrentRun(workers) { w in
            for p in stride(from: w, to: parts, by: workers) { slab(p) }
        }
    }
}

/// One BLAS call on the calling thread, never split into slabs: for the small GEMMs that run
/// inside a parallel loop (attention per window and head), whose results must not depend on the
/// thread count.
@inline(__always)
public func sgemmOnThisThread(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
                              alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                              b: UnsafePointer<Float>, ldb: Int,
                              beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int, counted: Bool = true) {
    if counted { FlopCounter.addGemm(m, n, k) }
    sgemmCall(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

@inline(__always)
private func sgemmCall(_ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
                       _ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
                       _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int) {
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

/// Threads used by mtl's parallel loops and GEMM slabs.
public enum Threads {
    nonisolated(unsafe) public private(set) static var count = 1
    /// True: OpenBLAS runs single-threaded and `sgemm` splits large GEMMs over mtl's pool (the
    /// default). False (`train.blas_threads: openblas`): OpenBLAS gets `count` threads of its own
    /// and every GEMM is one call — kept to compare the two.
    nonisolated(unsafe) public private(set) static var splitGemms = true
    /// A GEMM below this many multiply-adds runs on one thread: a slab's fixed cost (packing,
    /// thread hand-off, ~10 µs) would eat the gain.
    public static let minParallelMACs = 1 << 19

    public static func set(_ n: Int, splitGemms split: Bool = true) {
        count = max(1, n)
        splitGemms = split
        openblas_set_num_threads(Int32(splitGemms ? 1 : count))
    }

    /// Slabs of a large GEMM: fixed per machine (its core count, at least 2; MTL_GEMM_SLABS overrides),
    /// not the thread count. A slab is one OpenBLAS call whose rounding depends on its shape (OpenBLAS
    /// picks kernels by size), so slabs chosen by thread count made 1 and 2 threads differ in the last
    /// bits; with the partition fixed, results are bit-identical for any thread count.
    public static let gemmSlabs: Int = {
        if let v = ProcessInfo.processInfo.environment["MTL_GEMM_SLABS"].flatMap({ Int($0) }), v >= 1 { return v }
        return max(2, ProcessInfo.processInfo.activeProcessorCount)
    }()

    /// How many slabs `sgemm` cuts an M×N×K product into.
    @inline(__always)
    static func gemmParts(m: Int, n: Int, k: Int) -> Int {
        if !splitGemms || m * n * k < minParallelMACs { return 1 }
        // Every slab gets at least 16 rows/columns.
        return max(1, min(gemmSlabs, max(m, n) / 16))
    }
}

/// What the loaded OpenBLAS is and which kernel it runs.
public enum BLASLibrary {
    /// "Haswell", "SkylakeX", "Zen", ... or a generic core ("Prescott", "Nehalem", ...).
    public static var coreName: String { openblas_get_corename().map { String(cString: $0) } ?? "?" }
    /// e.g. "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY Zen MAX_THREADS=64".
    public static var config: String { openblas_get_config().map { String(cString: $0) } ?? "?" }
}
