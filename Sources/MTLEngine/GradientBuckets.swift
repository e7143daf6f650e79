import Foundation
import MTLCore
import MTLDist

/// Copies the parameters' gradients one after another into `flat` (which must hold them all).
func packGradients(_ params: [Parameter], into flat: UnsafeMutablePointer<Float>) {
    var off = 0
    for p in params {
        (flat + off).update(from: p.grad.data, count: p.grad.count)
        off += p.grad.count
    }
}

/// The inverse of `packGradients`: writes the flat values back into the parameters' gradients.
func unpackGradients(_ params: [Parameter], from flat: UnsafePointer<Float>) {
    var off = 0
    for p in params {
        p.grad.data.update(from: flat + off, count: p.grad.count)
        off += p.grad.count
    }
}

/// Bucketed, overlapped gradient all-reduce (as PyTorch DDP's reducer): parameters are packed into
/// buckets of about `bucketBytes` in the order their gradients become final (heads first, then the
/// encoder's blocks from last to first, the stem last). As soon as every parameter of a bucket is
/// final, its gradients are copied into the bucket's flat buffer and a non-blocking all-reduce starts,
/// so communication runs while the rest of the encoder is still backpropagating.
final class GradientBuckets {
    struct Bucket {
        let params: [Parameter]
        let lastGroup: Int          // the bucket can start once this group is final
        let flat: Tensor
        var pending: PendingReduction? = nil
    }
    let comm: Communicator
    private(set) var buckets: [Bucket] = []
    private var next = 0            // first bucket not started yet
    /// Seconds spent waiting for reductions at the end of the step (communication NOT hidden).
    private(set) var exposedSeconds = 0.0

    /// `groups`: parameter groups in the order they become final.
    init(groups: [[Parameter]], bucketBytes: Int, comm: Communicator) {
        self.comm = comm
        let limit = max(1, bucketBytes / 4)
        var current: [Parameter] = []
        var size = 0
        for (g, group) in groups.enumerated() {
            for p in group where p.trainable {
                current.append(p)
                size += p.grad.count
            }
            let isLast = g == groups.count - 1
            if !current.isEmpty && (size >= limit || isLast) {
                buckets.append(Bucket(params: current, lastGroup: g, flat: Tensor([size])))
                current = []
                size = 0
            }
        }
    }

    var bucketCount: Int { buckets.count }

    func beginStep() {
        next = 0
        exposedSeconds = 0
    }

    /// Group `g` is final: start every bucket whose groups are all final, and let the in-flight
    /// reductions progress (Open MPI has no progress thread by default).
    func groupDone(_ g: Int) {
        while next < buckets.count && buckets[next].lastGroup <= g {
            let flat = buckets[next].flat
            packGradients(buckets[next].params, into: flat.data)
            buckets[next].pending = comm.startAllReduceSum(flat.buffer)
            next += 1
        }
        for i in 0..<next { _ = buckets[i].pending?.test() }
    }

    /// Waits for every reduction and writes the summed gradients back.
    func finish() {
        let t = Date()
        for i in 0..<buckets.count {
            buckets[i].pending?.wait()
            buckets[i].pending = nil
        }
        exposedSeconds = Date().timeIntervalSince(t)
        for b in buckets { unpackGradients(b.params, from: b.flat.data) }
    }
}
