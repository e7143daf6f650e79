import Foundation
import MTLCore

/// The collectives the trainer needs, over MPI or within a single process.
///
/// Rules every implementation follows (they are those of MPI collectives):
/// - every rank calls the same collectives in the same order with the same counts;
/// - reductions and broadcasts work in place on the caller's buffer;
/// - calls are made from ONE thread (MPI is initialised with MPI_THREAD_FUNNELED);
/// - a failure inside a collective (MPI error code) ends the whole job through `abort`,
///   because no rank can continue once a collective went wrong and none must be left blocked.
public protocol Communicator: SumReducer {
    var rank: Int { get }
    var size: Int { get }
    /// Rank among the processes that share this node's memory (MPI_Comm_split_type SHARED).
    var localRank: Int { get }
    var localSize: Int { get }
    var isRoot: Bool { get }

    /// Element-wise sum over ranks, in place, blocking.
    func allReduceSum(_ buf: UnsafeMutableBufferPointer<Float>)
    func allReduceSum(_ buf: UnsafeMutableBufferPointer<Double>)
    /// Element-wise maximum over ranks, in place, blocking.
    func allReduceMax(_ buf: UnsafeMutableBufferPointer<Double>)
    /// Starts an in-place sum (MPI_Iallreduce) and returns at once. The buffer must stay alive
    /// and untouched until `wait()` returned. Open MPI has no progress thread: call `test()`
    /// now and then during the overlapped compute so that the reduction advances.
    func startAllReduceSum(_ buf: UnsafeMutableBufferPointer<Float>) -> PendingReduction
    /// Root's values into every rank's buffer (same count everywhere).
    func broadcast(_ buf: UnsafeMutableBufferPointer<Float>, root: Int)
    func broadcast(_ buf: UnsafeMutableBufferPointer<Double>, root: Int)
    /// Root's bytes into every rank's array, whatever length the others had before
    /// (the length is broadcast first).
    func broadcast(bytes: inout [UInt8], root: Int)
    /// Sum over ranks of `send` (count = size · block), and rank r receives block r:
    /// recv[j] = Σ_ranks send[r·block + j], recv.count == block == send.count / size.
    /// Padding rule: send.count must be a multiple of size; the caller pads its vector with
    /// zeros up to the next multiple (and ignores the padding after an allGather).
    func reduceScatterSum(_ send: UnsafeBufferPointer<Float>, _ recv: UnsafeMutableBufferPointer<Float>)
    /// recv[r·block + j] = send[j] of rank r, recv.count == size · send.count.
    func allGather(_ send: UnsafeBufferPointer<Float>, _ recv: UnsafeMutableBufferPointer<Float>)
    /// Waits until every rank arrived, for at most `timeoutSeconds`. On timeout it throws an
    /// MTLError (rank 0's message names the ranks that did not arrive) and the barrier stays
    /// pending: calling `barrier` again keeps waiting for THAT barrier instead of starting a
    /// new one, so a caller may log and retry, or abort.
    func barrier(timeoutSeconds: Double) throws
    /// Prints "error: rank R: reason" to stderr and ends the whole job with `code`
    /// (MPI_Abort on the world), so that no rank is left blocked in a collective.
    func abort(code: Int32, reason: String) -> Never
}

extension Communicator {
    public var isRoot: Bool { rank == 0 }
    /// SumReducer (used by SyncBN and the metrics): a blocking Double sum.
    public func sumInPlace(_ values: UnsafeMutableBufferPointer<Double>) { allReduceSum(values) }
}

/// A reduction started by `startAllReduceSum`.
public protocol PendingReduction: AnyObject {
    /// Blocks until the result is in the buffer.
    func wait()
    /// Advances the reduction; true once it is complete (then `wait()` returns at once).
    func test() -> Bool
}

/// Chooses the communicator from the environment the process was started in.
///
/// MPI is used when a launcher started this process, recognised by any of:
///   OMPI_COMM_WORLD_SIZE         Open MPI's mpirun / mpiexec
///   PMIX_RANK                    PMIx launchers: `srun --mpi=pmix`, Open MPI ≥ 4 mpirun, prrte
///   PMI_RANK, PMI_SIZE           MPICH / Intel MPI hydra, `srun --mpi=pmi2`
///   SLURM_STEP_NUM_TASKS > 1     a multi-task `srun` step (if MPI then sees a world of 1,
///                                srun was not given a working --mpi plugin: that is an error)
/// otherwise a SingleProcessCommunicator (so `mtl train` runs without mpirun and without
/// starting an MPI singleton). MTL_FORCE_SINGLE=1 forces single-process even under a
/// launcher; MTL_FORCE_MPI=1 forces MPI (an MPI singleton when started without a launcher).
public enum CommunicatorFactory {
    public static func make() throws -> Communicator {
        try make(environment: ProcessInfo.processInfo.environment)
    }

    public static func make(environment env: [String: String]) throws -> Communicator {
        if env["MTL_FORCE_SINGLE"] == "1" { return SingleProcessCommunicator() }
        guard env["MTL_FORCE_MPI"] == "1" || launcherDetected(env) else { return SingleProcessCommunicator() }
        let comm = try MPICommunicator.initialize()
        if let tasks = env["SLURM_STEP_NUM_TASKS"].flatMap({ Int($0) }), tasks > 1, comm.size == 1,
           env["OMPI_COMM_WORLD_SIZE"] == nil, env["PMIX_RANK"] == nil, env["PMI_RANK"] == nil {
            comm.finalize()
            throw MTLError("srun started \(tasks) tasks but MPI sees a world of 1 in each: "
                + "launch with `srun --mpi=pmix` (Debian's Open MPI does not work with --mpi=pmi2) or with mpirun")
        }
        return comm
    }

    /// True when the environment shows an MPI or Slurm launcher (see `make`).
    public static func launcherDetected(_ env: [String: String]) -> Bool {
        if env["OMPI_COMM_WORLD_SIZE"] != nil || env["PMIX_RANK"] != nil
            || env["PMI_RANK"] != nil || env["PMI_SIZE"] != nil { return true }
        if let tasks = env["SLURM_STEP_NUM_TASKS"].flatMap({ Int($0) }), tasks > 1 { return true }
        return false
    }
}

/// Where one rank runs: its host, its rank among the processes of that host, its threads.
public struct RankPlacement: Equatable, Sendable {
    public var rank: Int
    public var host: String
    public var localRank: Int
    public var localSize: Int
    public var threads: Int
}

extension Communicator {
    /// Every rank's placement, the same array on every rank (one all-gather of 68 floats per rank:
    /// call it at start-up, not per step).
    public func placements(threads: Int) -> [RankPlacement] {
        let nameBytes = 64
        var host = [UInt8](repeating: 0, count: nameBytes + 1)
        _ = host.withUnsafeMutableBufferPointer { gethostname(UnsafeMutableRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self), nameBytes) }
        host[nameBytes] = 0
        var mine = host.prefix(nameBytes).map { Float($0) }
        mine += [Float(rank), Float(localRank), Float(localSize), Float(threads)]
        let width = mine.count
        var all = [Float](repeating: 0, count: width * size)
        if size == 1 {
            all = mine
        } else {
            mine.withUnsafeBufferPointer { s in all.withUnsafeMutableBufferPointer { allGather(s, $0) } }
        }
        return (0..<size).map { r in
            let row = all[(r * width)..<((r + 1) * width)].map { $0 }
            let bytes = row.prefix(nameBytes).map { UInt8($0) }.prefix { $0 != 0 }
            return RankPlacement(rank: Int(row[nameBytes]), host: String(decoding: bytes, as: UTF8.self),
                                 localRank: Int(row[nameBytes + 1]), localSize: Int(row[nameBytes + 2]),
                                 threads: Int(row[nameBytes + 3]))
        }
    }
}

extension RankPlacement {
    /// One line: "2 host(s): mtl2h-h1 ranks 0,1 (local 0,1 of 2; threads 1,1); mtl2h-h2 ranks 2,3 (...)".
    public static func summary(_ placements: [RankPlacement]) -> String {
        var order: [String] = []
        var byHost: [String: [RankPlacement]] = [:]
        for p in placements {
            if byHost[p.host] == nil { order.append(p.host) }
            byHost[p.host, default: []].append(p)
        }
        let parts = order.map { h -> String in
            let ps = byHost[h]!
            func list(_ f: (RankPlacement) -> Int) -> String { ps.map { String(f($0)) }.joined(separator: ",") }
            let sizes = Array(Set(ps.map { String($0.localSize) })).sorted().joined(separator: "/")
            return "\(h) ranks \(list(\.rank)) (local \(list(\.localRank)) of \(sizes); threads \(list(\.threads)))"
        }
        return "\(order.count) host(s): " + parts.joined(separator: "; ")
    }
}
