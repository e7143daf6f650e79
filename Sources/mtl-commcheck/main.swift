// mtl-commcheck: exercises every collective of MTLDist's Communicator with values that depend
// on the rank, and checks what each rank must get against a closed form.
//
//   mpirun -n 3 --oversubscribe .build/release/mtl-commcheck --expect-size 3
//
// One line per check on rank 0: `ok <name> [details]`, or `FAIL <name>: ...` (a rank whose own
// result is wrong prints its FAIL line itself, with its rank). Exit 0 only if every check passed
// on every rank. All values are integers or dyadic fractions small enough to be exact in
// Float/Double, so sums must match exactly whatever order MPI adds them in.
import Foundation
import MTLCore
import MTLDist

let usage = """
usage: mtl-commcheck [--expect-size N] [--count N] [--fail-rank K] [--kill-rank K] [--abort-rank K]
                     [--no-timeout-check] [--bench]
  Checks every collective of the communicator (MPI under mpirun/srun, else single-process).
  --expect-size N     fail unless the world has N ranks
  --count N           elements per all-reduce (default 100003; the non-blocking one uses 40×)
  --fail-rank K       rank K exits(3) abruptly right after the first barrier (the job must end, not hang)
  --kill-rank K       rank K sends itself SIGKILL right after the first barrier (like the OOM killer)
  --abort-rank K      rank K calls abort(reason:) right after the first barrier
  --no-timeout-check  skip the barrier-timeout check (it costs about 1 s)
  --bench             instead of the checks: time the float sum all-reduce from 4 B to 64 MB and
                      print, per size, the median time, the algorithm bandwidth (bytes / time) and
                      the bus bandwidth (× 2(N-1)/N: what each rank sends and receives in a ring)
"""

var expectSize: Int?
var count = 100_003
var failRank: Int?
var abortRank: Int?
var killRank: Int?
var timeoutCheck = true
var bench = false
do {
    var args = CommandLine.arguments.dropFirst()
    func intValue(_ flag: String) -> Int {
        guard let text = args.popFirst(), let v = Int(text) else {
            fputs("error: \(flag) needs an integer\n\(usage)\n", stderr)
            exit(2)
        }
        return v
    }
    while let arg = args.popFirst() {
        switch arg {
        case "--expect-size": expectSize = intValue(arg)
        case "--count": count = max(1, intValue(arg))
        case "--fail-rank": failRank = intValue(arg)
        case "--abort-rank": abortRank = intValue(arg)
        case "--kill-rank": killRank = intValue(arg)
        case "--no-timeout-check": timeoutCheck = false
        case "--bench": bench = true
        case "-h", "--help": print(usage); exit(0)
        default: fputs("error: unknown argument \(arg)\n\(usage)\n", stderr); exit(2)
        }
    }
}

setvbuf(stdout, nil, _IOLBF, 0)

let comm: Communicator
do {
    comm = try CommunicatorFactory.make()
} catch {
    fputs("error: \(error)\n", stderr)
    exit(2)
}
let rank = comm.rank, size = comm.size
let S = Double(size)
var checks = 0
var failures = 0

/// Records one check: every rank says whether its own result was right (one all-reduce of the
/// failure flags), rank 0 prints `ok` only if all were.
func report(_ name: String, _ problem: String?, details: String = "") {
    checks += 1
    if let problem = problem { print("FAIL \(name): rank \(rank): \(problem)") }
    var failed: [Double] = [problem == nil ? 0 : 1]
    failed.withUnsafeMutableBufferPointer { comm.allReduceSum($0) }
    if failed[0] == 0 {
        if comm.isRoot { print("ok \(name)" + (details.isEmpty ? "" : " (\(details))")) }
    } else {
        failures += 1
        if comm.isRoot && problem == nil { print("FAIL \(name): wrong on \(Int(failed[0])) rank(s), see their lines") }
    }
}

/// The first index where `found` differs from `expected(i)`, as "expected .. found .." text.
func firstMismatch<T: Equatable>(_ found: [T], _ expected: (Int) -> T) -> String? {
    for i in found.indices where found[i] != expected(i) {
        return "index \(i) of \(found.count): expected \(expected(i)) found \(found[i])"
    }
    return nil
}

func milliseconds(since start: DispatchTime) -> Double {
    Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e6
}

// --bench: all-reduce latency and bandwidth (rank 0 prints one line per size), then exit.
if bench {
    if comm.isRoot {
        print("bench: MPI_Allreduce(float, sum) on \(size) rank(s), \(comm.localSize) on this node; median over repetitions")
        print("       bytes    median us       min us   algbw MB/s   busbw MB/s")
    }
    var floats = 1
    while floats <= 16 << 20 {
        var buf = [Float](repeating: 1, count: floats)
        let reps = max(3, min(200, (64 << 20) / (floats * 4 * 4)))
        var times: [Double] = []
        // At most ~2 s per size (rank 0's clock decides, broadcast in the max all-reduce below).
        let sizeStart = DispatchTime.now()
        for rep in 0..<(reps + 1) {
            // Start together: a tiny all-reduce, so that the timed one measures the collective only.
            var sync: [Double] = [0]
            sync.withUnsafeMutableBufferPointer { comm.allReduceMax($0) }
            let t0 = DispatchTime.now()
            buf.withUnsafeMutableBufferPointer { comm.allReduceSum($0) }
            var t: [Double] = [milliseconds(since: t0), comm.isRoot ? milliseconds(since: sizeStart) : 0]
            t.withUnsafeMutableBufferPointer { comm.allReduceMax($0) }   // the slowest rank's time
            if rep > 0 { times.append(t[0]) }                              // the first one warms up
            if rep >= 3 && t[1] > 2000 { break }
        }
        times.sort()
        let median = times[times.count / 2] / 1000, bytes = Double(floats * 4)
        if comm.isRoot {
            print(String(format: "%12d %12.1f %12.1f %12.1f %12.1f", floats * 4, median * 1e6, times[0] * 1e3,
                         bytes / median / 1e6, bytes / median / 1e6 * 2 * (S - 1) / S))
        }
        floats *= floats < 1024 ? 16 : 4
    }
    (comm as? MPICommunicator)?.finalize()
    exit(0)
}

// world: rank and size agree with the sum of ranks; the node-local groups partition the world.
do {
    var problem: String?
    if rank < 0 || rank >= size { problem = "rank \(rank) outside 0..<\(size)" }
    if comm.localRank < 0 || comm.localRank >= comm.localSize || comm.localSize > size {
        problem = "local rank \(comm.localRank) / local size \(comm.localSize) inconsistent with size \(size)"
    }
    if comm.isRoot != (rank == 0) { problem = "isRoot \(comm.isRoot) on rank \(rank)" }
    if let n = expectSize, n != size { problem = "expected a world of \(n) ranks, found \(size)" }
    // Σ rank = S(S-1)/2; Σ over each node's local rank 0 of localSize = S; max local rank < S.
    var sums: [Double] = [Double(rank), comm.localRank == 0 ? Double(comm.localSize) : 0]
    sums.withUnsafeMutableBufferPointer { comm.allReduceSum($0) }
    if problem == nil, sums[0] != S * (S - 1) / 2 { problem = "Σ rank: expected \(S * (S - 1) / 2) found \(sums[0])" }
    if problem == nil, sums[1] != S { problem = "Σ local sizes over node roots: expected \(S) found \(sums[1])" }
    report("world", problem, details: "size \(size), local \(comm.localRank)/\(comm.localSize), \(type(of: comm))")
}

// barrier (the first one; --fail-rank / --kill-rank / --abort-rank act right after it, while
// the other ranks go on into the next all-reduce, where they would block forever)
do {
    var problem: String?
    do { try comm.barrier(timeoutSeconds: 60) } catch { problem = "\(error)" }
    if rank == failRank {
        fputs("mtl-commcheck: rank \(rank) exits(3) now, as asked by --fail-rank\n", stderr)
        exit(3)
    }
    if rank == killRank {
        fputs("mtl-commcheck: rank \(rank) kills itself (SIGKILL), as asked by --kill-rank\n", stderr)
        kill(getpid(), SIGKILL)
    }
    if rank == abortRank {
        comm.abort(code: 4, reason: "mtl-commcheck: abort requested by --abort-rank \(rank)")
    }
    report("barrier", problem)
}

// allreduce_sum_float: rank r contributes r + 1 + (i mod 1000) → S(S+1)/2 + S·(i mod 1000).
do {
    var x = [Float](repeating: 0, count: count)
    for i in 0..<count { x[i] = Float(rank + 1 + i % 1000) }
    x.withUnsafeMutableBufferPointer { comm.allReduceSum($0) }
    report("allreduce_sum_float", firstMismatch(x) { i in Float(S * (S + 1) / 2 + S * Double(i % 1000)) })
}

// allreduce_sum_double: rank r contributes (r+1)/4 + i/2 → S(S+1)/8 + S·i/2.
do {
    var x = [Double](repeating: 0, count: count)
    for i in 0..<count { x[i] = Double(rank + 1) * 0.25 + Double(i) * 0.5 }
    x.withUnsafeMutableBufferPointer { comm.allReduceSum($0) }
    report("allreduce_sum_double", firstMismatch(x) { i in S * (S + 1) / 8 + S * Double(i) * 0.5 })
}

// allreduce_max_double: rank r contributes ((r + i) mod S) − 2i → max S − 1 − 2i.
do {
    var x = [Double](repeating: 0, count: count)
    for i in 0..<count { x[i] = Double((rank + i) % size) - 2 * Double(i) }
    x.withUnsafeMutableBufferPointer { comm.allReduceMax($0) }
    report("allreduce_max_double", firstMismatch(x) { i in S - 1 - 2 * Double(i) })
}

// sum_reducer: the SumReducer seam used by SyncBN and the metrics.
do {
    let reducer: SumReducer = comm
    var x: [Double] = [1, Double(rank), -0.5 * Double(rank * rank)]
    x.withUnsafeMutableBufferPointer { reducer.sumInPlace($0) }
    let expected = [S, S * (S - 1) / 2, -0.5 * (S - 1) * S * (2 * S - 1) / 6]
    report("sum_reducer", firstMismatch(x) { expected[$0] })
}

// allreduce_empty: zero-length buffers are a no-op, not a crash or a hang.
do {
    var empty: [Float] = []
    empty.withUnsafeMutableBufferPointer { comm.allReduceSum($0) }
    var emptyD: [Double] = []
    emptyD.withUnsafeMutableBufferPointer { comm.allReduceMax($0) }
    let pending = empty.withUnsafeMutableBufferPointer { comm.startAllReduceSum($0) }
    pending.wait()
    report("allreduce_empty", empty.isEmpty && emptyD.isEmpty ? nil : "buffers changed length")
}

// iallreduce_overlap: a 16 MB non-blocking sum overlapped with sgemm work, calling test()
// between the products (Open MPI progresses only inside MPI calls). The timing is reported,
// not judged: what is checked is the result.
do {
    let n = 40 * count
    var big = [Float](repeating: 0, count: n)
    func fill() { for i in 0..<n { big[i] = Float(rank + 1 + i % 1000) } }
    func expected(_ i: Int) -> Float { Float(S * (S + 1) / 2 + S * Double(i % 1000)) }

    fill()
    let blockingStart = DispatchTime.now()
    big.withUnsafeMutableBufferPointer { comm.allReduceSum($0) }
    let blockingMs = milliseconds(since: blockingStart)
    var problem = firstMismatch(big, expected)

    let m = 192
    let a = Tensor([m, m], repeating: 0.5), b = Tensor([m, m], repeating: 0.25), c = Tensor([m, m])
    let products = 12
    fill()
    var completedEarly = false
    var waitMs = 0.0
    let overlapStart = DispatchTime.now()
    big.withUnsafeMutableBufferPointer { buf in
        let pending = comm.startAllReduceSum(buf)
        for _ in 0..<products {
            sgemm(m: m, n: m, k: m, a: a.data, lda: m, b: b.data, ldb: m, c: c.data, ldc: m)
            if pending.test() { completedEarly = true }
        }
        let waitStart = DispatchTime.now()
        pending.wait()
        waitMs = milliseconds(since: waitStart)
    }
    let overlapMs = milliseconds(since: overlapStart)
    if problem == nil { problem = firstMismatch(big, expected) }
    // c = a·b with constant entries: every element is m · 0.5 · 0.25.
    if problem == nil, c[0] != Float(m) * 0.125 { problem = "sgemm result \(c[0]), expected \(Float(m) * 0.125)" }
    report("iallreduce_overlap", problem, details: String(
        format: "%.1f MB; blocking %.1f ms; overlapped: %d products + wait %.1f ms = %.1f ms%@",
        Double(n * 4) / 1e6, blockingMs, products, waitMs, overlapMs,
        completedEarly ? "; complete before the last test()" : ""))
}

// iallreduce_two_buckets: two reductions in flight at once, waited for in reverse order
// (what the bucketed gradient all-reduce does).
do {
    var first = [Float](repeating: 0, count: count), second = [Float](repeating: 0, count: count / 2 + 1)
    for i in first.indices { first[i] = Float(rank) }
    for i in second.indices { second[i] = Float(2 * rank + i % 7) }
    first.withUnsafeMutableBufferPointer { f in
        second.withUnsafeMutableBufferPointer { s in
            let p1 = comm.startAllReduceSum(f)
            let p2 = comm.startAllReduceSum(s)
            p2.wait()
            p1.wait()
            _ = p1.test()  // complete: must return at once
        }
    }
    report("iallreduce_two_buckets",
           firstMismatch(first) { _ in Float(S * (S - 1) / 2) }
           ?? firstMismatch(second) { i in Float(S * (S - 1) + S * Double(i % 7)) })
}

// broadcast_float from the last rank: root holds 1000·root + i, the others −1.
do {
    let root = size - 1
    var x = [Float](repeating: -1, count: count)
    if rank == root { for i in 0..<count { x[i] = Float(1000 * root + i % 4096) } }
    x.withUnsafeMutableBufferPointer { comm.broadcast($0, root: root) }
    report("broadcast_float", firstMismatch(x) { i in Float(1000 * root + i % 4096) })
}

// broadcast_double from rank 0.
do {
    var x = [Double](repeating: -1, count: 1001)
    if rank == 0 { for i in x.indices { x[i] = Double(i) * 0.125 - 3 } }
    x.withUnsafeMutableBufferPointer { comm.broadcast($0, root: 0) }
    report("broadcast_double", firstMismatch(x) { i in Double(i) * 0.125 - 3 })
}

// broadcast_bytes: root 1 (mod S) sends a text of its own length; the others start with
// arrays of other lengths, which must be replaced; then an empty broadcast.
do {
    let root = 1 % size
    func message(_ r: Int) -> [UInt8] { Array("config from rank \(r): ".utf8) + (0..<(1000 + r)).map { UInt8($0 % 251) } }
    var bytes: [UInt8] = rank == root ? message(root) : [UInt8](repeating: 7, count: rank * 3)
    comm.broadcast(bytes: &bytes, root: root)
    var problem: String?
    let want = message(root)
    if bytes.count != want.count { problem = "expected \(want.count) bytes found \(bytes.count)" }
    else { problem = firstMismatch(bytes) { want[$0] } }
    var empty: [UInt8] = rank == 0 ? [] : [1, 2, 3]
    comm.broadcast(bytes: &empty, root: 0)
    if problem == nil, !empty.isEmpty { problem = "empty broadcast: expected 0 bytes found \(empty.count)" }
    report("broadcast_bytes", problem)
}

// reduce_scatter_sum: send has S blocks of `block`; rank r contributes r + 1 + k at index k
// → rank r's block j = S(S+1)/2 + S·(r·block + j).
let block = 1003
do {
    var send = [Float](repeating: 0, count: block * size)
    for k in send.indices { send[k] = Float(rank + 1 + k) }
    var recv = [Float](repeating: -1, count: block)
    send.withUnsafeBufferPointer { s in recv.withUnsafeMutableBufferPointer { comm.reduceScatterSum(s, $0) } }
    report("reduce_scatter_sum", firstMismatch(recv) { j in Float(S * (S + 1) / 2 + S * Double(rank * block + j)) })
}

// allgather: rank r sends r·block + j + 1/2 → recv[k] = k + 1/2.
do {
    var send = [Float](repeating: 0, count: block)
    for j in send.indices { send[j] = Float(rank * block + j) + 0.5 }
    var recv = [Float](repeating: -1, count: block * size)
    send.withUnsafeBufferPointer { s in recv.withUnsafeMutableBufferPointer { comm.allGather(s, $0) } }
    report("allgather", firstMismatch(recv) { k in Float(k) + 0.5 })
}

// reduce_scatter_allgather_equals_allreduce: random integers from Philox(seed, rank), padded
// with zeros to a multiple of S (the documented padding rule), must give exactly the all-reduce.
do {
    let n = 10_007
    let padded = (n + size - 1) / size * size
    var rng = Philox(seed: 2024, stream: UInt64(rank))
    var values = [Float](repeating: 0, count: padded)
    for i in 0..<n { values[i] = Float(rng.int(below: 2001) - 1000) }
    var reduced = values
    reduced.withUnsafeMutableBufferPointer { comm.allReduceSum($0) }
    var slice = [Float](repeating: 0, count: padded / size)
    var gathered = [Float](repeating: -1, count: padded)
    values.withUnsafeBufferPointer { s in slice.withUnsafeMutableBufferPointer { comm.reduceScatterSum(s, $0) } }
    slice.withUnsafeBufferPointer { s in gathered.withUnsafeMutableBufferPointer { comm.allGather(s, $0) } }
    var problem = firstMismatch(gathered) { reduced[$0] }
    if problem == nil, gathered[n...].contains(where: { $0 != 0 }) { problem = "padding not zero after the round trip" }
    report("reduce_scatter_allgather_equals_allreduce", problem)
}

// barrier_timeout: the last rank comes 1 s late; the others' 0.2 s barrier must throw
// (rank 0's message naming the late rank), and retrying must complete that same barrier.
if timeoutCheck && size > 1 {
    let late = size - 1
    var problem: String?
    var message = ""
    if rank == late {
        usleep(1_000_000)
        do { try comm.barrier(timeoutSeconds: 60) } catch { problem = "late rank's barrier failed: \(error)" }
    } else {
        do {
            try comm.barrier(timeoutSeconds: 0.2)
            problem = "barrier returned although rank \(late) had not arrived"
        } catch {
            message = "\(error)"
            if rank == 0 && !message.contains("rank \(late) of \(size) did not arrive") {
                problem = "timeout message does not name rank \(late): \(message)"
            }
            if !message.contains("timed out after 0.2 s") { problem = "unexpected timeout message: \(message)" }
        }
        do { try comm.barrier(timeoutSeconds: 60) } catch { problem = "retry failed: \(error)" }
    }
    report("barrier_timeout", problem, details: message)
}

if comm.isRoot {
    print("commcheck: \(checks) checks, \(failures) failed, world size \(size)")
}
if let mpi = comm as? MPICommunicator { mpi.finalize() }
exit(failures == 0 ? 0 : 1)
