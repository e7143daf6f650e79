import CMPI
import Foundation
import MTLCore

/// The Communicator over MPI_COMM_WORLD.
///
/// Written against the MPI standard only (handles come from the CMPI shim and are always
/// initialised from it, never from nil or 0), so the same source builds with Open MPI, where
/// handles are pointers, and with MPICH, where they are ints.
///
/// Errors: the world's error handler is MPI_ERRORS_RETURN, and any failing call ends the job
/// through `abort` with the call's name and MPI's error string, on the rank that saw it.
/// Counts above Int32.max are split into several calls (all-reduce, broadcast); for
/// reduce-scatter and all-gather one block must fit in an Int32.
public final class MPICommunicator: Communicator {
    public let rank: Int
    public let size: Int
    public let localRank: Int
    public let localSize: Int

    // Handle types are never spelled out: Open MPI's are pointers (imported as optionals),
    // MPICH's are Int32, and inference from the shim's functions fits both.
    private let world = mtl_comm_world()
    /// The ranks sharing this node's memory (MPI_Comm_split_type SHARED).
    private var localComm = mtl_comm_null()
    /// A duplicate of the world used only by `barrier`, whose point-to-point tokens must never
    /// match a message of anybody else.
    private var barrierComm = mtl_comm_null()
    /// A barrier that timed out and is still waiting (see `barrier`).
    private var pendingBarrier: BarrierState?
    private var finalized = false
    /// False when MPI had been initialised by somebody else: then they finalize it.
    private let ownsMPI: Bool

    private static var current: MPICommunicator?

    /// Initialises MPI (MPI_Init_thread with MPI_THREAD_FUNNELED: only the thread that
    /// initialised MPI makes MPI calls). A second call returns the same communicator.
    public static func initialize() throws -> MPICommunicator {
        if let comm = current, !comm.finalized { return comm }
        var wasFinalized: Int32 = 0
        MPI_Finalized(&wasFinalized)
        if wasFinalized != 0 { throw MTLError("MPI was already finalized in this process and cannot be initialised again") }
        var wasInitialized: Int32 = 0
        MPI_Initialized(&wasInitialized)
        if wasInitialized == 0 {
            var provided: Int32 = 0
            let rc = MPI_Init_thread(nil, nil, mtl_thread_funneled(), &provided)
            if rc != mtl_success() { throw MTLError("MPI_Init_thread failed: \(mpiErrorString(rc))") }
            // The thread levels are ordered (SINGLE < FUNNELED < SERIALIZED < MULTIPLE).
            if provided < mtl_thread_funneled() {
                MPI_Finalize()
                throw MTLError("MPI_Init_thread: this MPI provides thread level \(provided), MPI_THREAD_FUNNELED (\(mtl_thread_funneled())) is needed")
            }
        }
        let comm = try MPICommunicator(ownsMPI: wasInitialized == 0)
        current = comm
        return comm
    }

    private init(ownsMPI: Bool) throws {
        self.ownsMPI = ownsMPI
        let world = mtl_comm_world()
        // From here on an MPI error is a return code that we turn into a one-line abort.
        MPI_Comm_set_errhandler(world, mtl_errors_return())
        var r: Int32 = 0, s: Int32 = 0
        MPI_Comm_rank(world, &r)
        MPI_Comm_size(world, &s)
        rank = Int(r)
        size = Int(s)

        var local = mtl_comm_null()
        var rc = MPI_Comm_split_type(world, mtl_comm_type_shared(), r, mtl_info_null(), &local)
        if rc != mtl_success() { throw MTLError("MPI_Comm_split_type(SHARED) failed on rank \(r): \(mpiErrorString(rc))") }
        var lr: Int32 = 0, ls: Int32 = 0
        MPI_Comm_rank(local, &lr)
        MPI_Comm_size(local, &ls)
        localComm = local
        localRank = Int(lr)
        localSize = Int(ls)

        var dup = mtl_comm_null()
        rc = MPI_Comm_dup(world, &dup)
        if rc != mtl_success() { throw MTLError("MPI_Comm_dup failed on rank \(r): \(mpiErrorString(rc))") }
        barrierComm = dup
    }

    /// Frees the communicators and calls MPI_Finalize (when this class initialised MPI).
    /// Every rank must call it once at the end of a successful run; a rank that exits
    /// without it makes mpirun report the job as failed.
    public func finalize() {
        if finalized { return }
        if pendingBarrier != nil {
            abort(code: 1, reason: "finalize while a barrier that timed out is still pending")
        }
        MPI_Comm_free(&localComm)
        MPI_Comm_free(&barrierComm)
        finalized = true
        MPICommunicator.current = nil
        if ownsMPI { MPI_Finalize() }
    }

    // MARK: reductions

    public func allReduceSum(_ buf: UnsafeMutableBufferPointer<Float>) {
        allReduce(UnsafeMutableRawPointer(buf.baseAddress), buf.count, .float, .sum, "MPI_Allreduce(float, sum)")
    }

    public func allReduceSum(_ buf: UnsafeMutableBufferPointer<Double>) {
        allReduce(UnsafeMutableRawPointer(buf.baseAddress), buf.count, .double, .sum, "MPI_Allreduce(double, sum)")
    }

    public func allReduceMax(_ buf: UnsafeMutableBufferPointer<Double>) {
        allReduce(UnsafeMutableRawPointer(buf.baseAddress), buf.count, .double, .max, "MPI_Allreduce(double, max)")
    }

    private func allReduce(_ base: UnsafeMutableRawPointer?, _ count: Int, _ element: Element, _ op: ReduceOp,
                           _ what: String) {
        checkAlive(what)
        guard let base = base, count > 0 else { return }
        var type = mtl_float()
        if element == .double { type = mtl_double() }
        var mpiOp = mtl_op_sum()
        if op == .max { mpiOp = mtl_op_max() }
        forEachChunk(count) { offset, n in
            check(MPI_Allreduce(mtl_in_place(), base + offset * element.stride, n, type, mpiOp, world), what)
        }
    }

    public func startAllReduceSum(_ buf: UnsafeMutableBufferPointer<Float>) -> PendingReduction {
        checkAlive("MPI_Iallreduce")
        var requests = Requests()
        if let base = buf.baseAddress, buf.count > 0 {
            forEachChunk(buf.count) { offset, n in
                let i = requests.add()
                check(MPI_Iallreduce(mtl_in_place(), base + offset, n, mtl_float(), mtl_op_sum(), world,
                                     &requests.handles[i]), "MPI_Iallreduce(float, sum)")
            }
        }
        return MPIPendingReduction(comm: self, requests: requests)
    }

    // MARK: broadcast

    public func broadcast(_ buf: UnsafeMutableBufferPointer<Float>, root: Int) {
        broadcast(UnsafeMutableRawPointer(buf.baseAddress), buf.count, .float, root, "MPI_Bcast(float)")
    }

    public func broadcast(_ buf: UnsafeMutableBufferPointer<Double>, root: Int) {
        broadcast(UnsafeMutableRawPointer(buf.baseAddress), buf.count, .double, root, "MPI_Bcast(double)")
    }

    public func broadcast(bytes: inout [UInt8], root: Int) {
        var length: [Int64] = [Int64(bytes.count)]
        length.withUnsafeMutableBytes { raw in
            broadcast(raw.baseAddress, 1, .int64, root, "MPI_Bcast(byte count)")
        }
        if rank != root { bytes = [UInt8](repeating: 0, count: Int(length[0])) }
        bytes.withUnsafeMutableBytes { raw in
            broadcast(raw.baseAddress, raw.count, .byte, root, "MPI_Bcast(bytes)")
        }
    }

    private func broadcast(_ base: UnsafeMutableRawPointer?, _ count: Int, _ element: Element,
                           _ root: Int, _ what: String) {
        checkAlive(what)
        if root < 0 || root >= size { abort(code: 1, reason: "\(what): root \(root) is not a rank of a world of size \(size)") }
        guard let base = base, count > 0 else { return }
        var type = mtl_byte()
        switch element {
        case .float: type = mtl_float()
        case .double: type = mtl_double()
        case .int64: type = mtl_int64()
        case .byte: break
        }
        forEachChunk(count) { offset, n in
            check(MPI_Bcast(base + offset * element.stride, n, type, Int32(root), world), what)
        }
    }

    // MARK: reduce-scatter, all-gather

    public func reduceScatterSum(_ send: UnsafeBufferPointer<Float>, _ recv: UnsafeMutableBufferPointer<Float>) {
        checkAlive("MPI_Reduce_scatter_block")
        if send.count != recv.count * size {
            abort(code: 1, reason: "reduceScatterSum: send.count \(send.count) must be size \(size) × recv.count \(recv.count) (pad send with zeros to a multiple of the world size)")
        }
        if recv.count > Int(Int32.max) { abort(code: 1, reason: "reduceScatterSum: block of \(recv.count) floats exceeds Int32.max") }
        guard recv.count > 0, let s = send.baseAddress, let r = recv.baseAddress else { return }
        check(MPI_Reduce_scatter_block(s, r, Int32(recv.count), mtl_float(), mtl_op_sum(), world),
              "MPI_Reduce_scatter_block(float, sum)")
    }

    public func allGather(_ send: UnsafeBufferPointer<Float>, _ recv: UnsafeMutableBufferPointer<Float>) {
        checkAlive("MPI_Allgather")
        if recv.count != send.count * size {
            abort(code: 1, reason: "allGather: recv.count \(recv.count) must be size \(size) × send.count \(send.count)")
        }
        if send.count > Int(Int32.max) { abort(code: 1, reason: "allGather: block of \(send.count) floats exceeds Int32.max") }
        guard send.count > 0, let s = send.baseAddress, let r = recv.baseAddress else { return }
        check(MPI_Allgather(s, Int32(send.count), mtl_float(), r, Int32(send.count), mtl_float(), world),
              "MPI_Allgather(float)")
    }

    // MARK: barrier

    /// A barrier that can time out and tell which ranks are missing: every other rank sends a
    /// token to rank 0, rank 0 releases them all once every token is in. Polled with MPI_Test
    /// (which also drives MPI's progress) with a sleep growing to 1 ms, so a waiting rank does
    /// not burn a core. O(size) messages at rank 0: meant for start-up, checkpoints and the end,
    /// not for every step. MPI_Ibarrier would be O(log size) but cannot say who is missing.
    public func barrier(timeoutSeconds: Double) throws {
        checkAlive("barrier")
        if size == 1 { return }
        let state = pendingBarrier ?? BarrierState(comm: self)
        pendingBarrier = state
        let start = Date()
        var sleepMicroseconds: UInt32 = 0
        while true {
            if state.progress() {
                pendingBarrier = nil
                return
            }
            let waited = Date().timeIntervalSince(start)
            if waited >= timeoutSeconds {
                let seconds = String(format: "%g", timeoutSeconds)
                if rank == 0 {
                    let missing = state.missingRanks()
                    throw MTLError("barrier timed out after \(seconds) s: rank\(missing.count == 1 ? "" : "s") "
                        + missing.map(String.init).joined(separator: ", ") + " of \(size) did not arrive")
                }
                throw MTLError("barrier timed out after \(seconds) s on rank \(rank): rank 0 did not release it "
                    + "(rank 0 or another rank did not arrive)")
            }
            if sleepMicroseconds > 0 { usleep(sleepMicroseconds) }
            sleepMicroseconds = min(max(sleepMicroseconds * 2, 20), 1000)
        }
    }

    fileprivate final class BarrierState {
        unowned let comm: MPICommunicator
        /// rank 0: one token receive per other rank (index r - 1); other ranks: [token send, release receive].
        var requests = Requests()
        /// rank 0: the release sends, posted once every token is in.
        var releases = Requests()
        var releasesPosted = false
        /// Zero-length messages still need a valid address.
        let scratch = UnsafeMutablePointer<UInt8>.allocate(capacity: 1)

        init(comm: MPICommunicator) {
            self.comm = comm
            if comm.rank == 0 {
                for r in 1..<comm.size {
                    let i = requests.add()
                    comm.check(MPI_Irecv(scratch, 0, mtl_byte(), Int32(r), 0, comm.barrierComm, &requests.handles[i]),
                               "MPI_Irecv(barrier token)")
                }
            } else {
                let send = requests.add(), receive = requests.add()
                comm.check(MPI_Isend(scratch, 0, mtl_byte(), 0, 0, comm.barrierComm, &requests.handles[send]),
                           "MPI_Isend(barrier token)")
                comm.check(MPI_Irecv(scratch, 0, mtl_byte(), 0, 0, comm.barrierComm, &requests.handles[receive]),
                           "MPI_Irecv(barrier release)")
            }
        }

        deinit { scratch.deallocate() }

        /// Tests every outstanding request once; true when this rank's part is complete.
        func progress() -> Bool {
            guard comm.testAll(&requests, "MPI_Test(barrier)") else { return false }
            if comm.rank != 0 { return true }
            if !releasesPosted {
                releasesPosted = true
                for r in 1..<comm.size {
                    let i = releases.add()
                    comm.check(MPI_Isend(scratch, 0, mtl_byte(), Int32(r), 0, comm.barrierComm, &releases.handles[i]),
                               "MPI_Isend(barrier release)")
                }
            }
            return comm.testAll(&releases, "MPI_Test(barrier release)")
        }

        /// Rank 0: the ranks whose token has not come.
        func missingRanks() -> [Int] {
            requests.handles.indices.filter { requests.handles[$0] != mtl_request_null() }.map { $0 + 1 }
        }
    }

    // MARK: abort, errors

    public func abort(code: Int32, reason: String) -> Never {
        fputs("error: rank \(rank): \(reason)\n", stderr)
        fflush(stderr)
        fflush(stdout)
        var mpiFinalized: Int32 = 0
        MPI_Finalized(&mpiFinalized)
        if mpiFinalized == 0 { MPI_Abort(world, code) }
        exit(code)
    }

    /// Ends the job when an MPI call returned an error.
    @inline(__always)
    fileprivate func check(_ rc: Int32, _ what: String) {
        if rc != mtl_success() { abort(code: 1, reason: "\(what) failed: \(mpiErrorString(rc))") }
    }

    private func checkAlive(_ what: String) {
        if finalized { abort(code: 1, reason: "\(what) called after finalize()") }
    }

    /// MPI_Test on every request not yet complete (completed ones become MPI_REQUEST_NULL);
    /// true when all are complete.
    fileprivate func testAll(_ requests: inout Requests, _ what: String) -> Bool {
        var all = true
        for i in requests.handles.indices where requests.handles[i] != mtl_request_null() {
            var flag: Int32 = 0
            check(MPI_Test(&requests.handles[i], &flag, mtl_status_ignore()), what)
            if flag == 0 { all = false }
        }
        return all
    }

    fileprivate func waitAll(_ requests: inout Requests, _ what: String) {
        for i in requests.handles.indices where requests.handles[i] != mtl_request_null() {
            check(MPI_Wait(&requests.handles[i], mtl_status_ignore()), what)
        }
    }

    fileprivate var isFinalized: Bool { finalized }
}

/// An MPI_Iallreduce in flight (one request per Int32-sized chunk).
final class MPIPendingReduction: PendingReduction {
    private let comm: MPICommunicator
    private var requests: Requests

    fileprivate init(comm: MPICommunicator, requests: Requests) {
        self.comm = comm
        self.requests = requests
    }

    func wait() { comm.waitAll(&requests, "MPI_Wait(Iallreduce)") }

    func test() -> Bool { comm.testAll(&requests, "MPI_Test(Iallreduce)") }

    /// A reduction dropped without wait() is still completed: an abandoned request would
    /// leave MPI writing into a buffer its owner may free.
    deinit {
        if !comm.isFinalized { wait() }
    }
}

/// A growing set of MPI requests (the handle type is inferred from the shim; see `world`).
struct Requests {
    var handles = [mtl_request_null()]
    init() { handles.removeAll() }
    /// Appends MPI_REQUEST_NULL and returns its index, for the call that starts the operation.
    mutating func add() -> Int {
        handles.append(mtl_request_null())
        return handles.count - 1
    }
}

/// The element types and reduction operations used here, mapped to MPI handles at the call
/// (with `var type = mtl_byte(); switch ...`, so that no handle type is spelled out).
enum Element {
    case float, double, int64, byte
    var stride: Int {
        switch self {
        case .float: return 4
        case .double, .int64: return 8
        case .byte: return 1
        }
    }
}

enum ReduceOp { case sum, max }

/// MPI's text for an error code.
func mpiErrorString(_ rc: Int32) -> String {
    var text = [CChar](repeating: 0, count: 1024)
    var length: Int32 = 0
    if MPI_Error_string(rc, &text, &length) != mtl_success() { return "MPI error code \(rc)" }
    return String(cString: text) + " (code \(rc))"
}

/// Splits a count into pieces that fit MPI's Int32 counts.
@inline(__always)
private func forEachChunk(_ count: Int, _ body: (Int, Int32) -> Void) {
    let maxChunk = Int(Int32.max)
    var offset = 0
    while offset < count {
        let n = min(maxChunk, count - offset)
        body(offset, Int32(n))
        offset += n
    }
}


public enum MPILibrary {
    /// The first line of MPI_Get_library_version, e.g. "Open MPI v4.1.4, package: Debian ...".
    /// Callable before MPI_Init.
    public static var version: String {
        var buffer = [CChar](repeating: 0, count: Int(MPI_MAX_LIBRARY_VERSION_STRING) + 1)
        var length: Int32 = 0
        guard MPI_Get_library_version(&buffer, &length) == MPI_SUCCESS else { return "?" }
        let text = String(cString: buffer)
        return text.split(separator: "\n").first.map(String.init)?.trimmingCharacters(in: .whitespaces) ?? text
    }
}
