import Foundation
import MTLCore

/// A world of one rank: every collective is the identity (a copy where send and recv differ).
/// Argument checks are the same as MPICommunicator's, so a wrong count fails here too
/// instead of only on a cluster.
public final class SingleProcessCommunicator: Communicator {
    public let rank = 0
    public let size = 1
    public let localRank = 0
    public let localSize = 1

    public init() {}

    public func allReduceSum(_ buf: UnsafeMutableBufferPointer<Float>) {}
    public func allReduceSum(_ buf: UnsafeMutableBufferPointer<Double>) {}
    public func allReduceMax(_ buf: UnsafeMutableBufferPointer<Double>) {}

    public func startAllReduceSum(_ buf: UnsafeMutableBufferPointer<Float>) -> PendingReduction {
        CompletedReduction()
    }

    public func broadcast(_ buf: UnsafeMutableBufferPointer<Float>, root: Int) { checkRoot(root) }
    public func broadcast(_ buf: UnsafeMutableBufferPointer<Double>, root: Int) { checkRoot(root) }
    public func broadcast(bytes: inout [UInt8], root: Int) { checkRoot(root) }

    public func reduceScatterSum(_ send: UnsafeBufferPointer<Float>, _ recv: UnsafeMutableBufferPointer<Float>) {
        if recv.count != send.count {
            abort(code: 1, reason: "reduceScatterSum: recv.count \(recv.count) != send.count \(send.count) / size 1")
        }
        copy(send, recv)
    }

    public func allGather(_ send: UnsafeBufferPointer<Float>, _ recv: UnsafeMutableBufferPointer<Float>) {
        if recv.count != send.count {
            abort(code: 1, reason: "allGather: recv.count \(recv.count) != size 1 × send.count \(send.count)")
        }
        copy(send, recv)
    }

    public func barrier(timeoutSeconds: Double) throws {}

    public func abort(code: Int32, reason: String) -> Never {
        fputs("error: rank 0: \(reason)\n", stderr)
        fflush(stderr)
        fflush(stdout)
        exit(code)
    }

    private func checkRoot(_ root: Int) {
        if root != 0 { abort(code: 1, reason: "broadcast: root \(root) is not a rank of a world of size 1") }
    }

    private func copy(_ send: UnsafeBufferPointer<Float>, _ recv: UnsafeMutableBufferPointer<Float>) {
        guard let s = send.baseAddress, let r = recv.baseAddress, s != UnsafePointer(r) else { return }
        r.update(from: s, count: send.count)
    }
}

/// The pending reduction of a world of one: already complete.
final class CompletedReduction: PendingReduction {
    func wait() {}
    func test() -> Bool { true }
}
