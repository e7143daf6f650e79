import Foundation
import MTLCore
import MTLDist

/// Every collective of a training step, in one place (as PyTorch DDP's reducer), with the time
/// spent in them. Three plans exist for the gradients:
///  - blocking: after the backward, one all-reduce of every reduced gradient, packed flat;
///  - overlapped buckets (representation level, several ranks): buckets of parameters start their
///    all-reduce as soon as their gradients are final, while the encoder backward still runs;
///  - parameter level: each task's shared gradient is reduce-scattered, the Gram formed from the
///    slices and all-reduced, the combined slice all-gathered (see StepEngine.parameterLevel).
/// The decoder's task parameters are always reduced by the first or second plan; at parameter
/// level the shared ones (encoder + the decoder's shared modules) come out of the third.
final class GradientSync {
    let comm: Communicator
    /// Gradients reduced by the blocking or the overlapped plan.
    let reduced: [Parameter]
    let buckets: GradientBuckets?
    /// Seconds in collectives since `beginStep` that did not overlap with computation.
    private(set) var seconds = 0.0
    /// The flat buffer of the blocking all-reduce: made on first use, so that one process, or
    /// overlapped buckets (which have their own), do not hold a second copy of every gradient.
    private lazy var flat = Tensor([reduced.reduce(0) { $0 + $1.value.count }])

    /// `overlapGroups`: parameter groups in the order their gradients become final, or nil for the
    /// blocking plan.
    init(comm: Communicator, reduced: [Parameter], overlapGroups: [[Parameter]]?, bucketBytes: Int) {
        self.comm = comm
        self.reduced = reduced
        if let overlapGroups, comm.size > 1 {
            buckets = GradientBuckets(groups: overlapGroups, bucketBytes: bucketBytes, comm: comm)
        } else {
            buckets = nil
        }
    }

    var overlapped: Bool { buckets != nil }

    func beginStep() {
        seconds = 0
        buckets?.beginStep()
    }

    private func timed(_ body: () -> Void) {
        let t = Date()
        body()
        seconds += Date().timeIntervalSince(t)
    }

    /// Sums small Double values (loss sums, counts, a local Gram) over the ranks.
    func allReduce(_ values: inout [Double]) {
        timed { values.withUnsafeMutableBufferPointer { comm.allReduceSum($0) } }
    }

    /// Sums a float vector over the ranks (GradDrop's sign-corrected sums).
    func allReduce(_ values: UnsafeMutableBufferPointer<Float>) {
        if comm.size > 1 { timed { comm.allReduceSum(values) } }
    }

    /// Overlapped plan: group `g` of `overlapGroups` has its final gradient.
    func groupDone(_ g: Int) { buckets?.groupDone(g) }

    /// After the backward: the reduced gradients hold their sums over the ranks.
    func finishGradients() {
        if let buckets {
            buckets.finish()
            seconds += buckets.exposedSeconds
        } else if comm.size > 1 {
            packGradients(reduced, into: flat.data)
            timed { comm.allReduceSum(flat.buffer) }
            unpackGradients(reduced, from: flat.data)
        }
    }

    // MARK: parameter level

    /// Rank r receives slice r (block = full.count / size) of the global sum of `full`.
    func reduceScatter(_ full: Tensor, into slice: Tensor) {
        timed { comm.reduceScatterSum(UnsafeBufferPointer(full.buffer), slice.buffer) }
    }

    /// The global Gram from the ranks' slice Grams: summed, then rank 0's copy broadcast, so every
    /// rank's solver sees the same bits.
    func globalGram(_ gram: inout [Double]) {
        guard comm.size > 1 else { return }
        timed {
            gram.withUnsafeMutableBufferPointer { comm.allReduceSum($0) }
            gram.withUnsafeMutableBufferPointer { comm.broadcast($0, root: 0) }
        }
    }

    /// Every rank's slice, concatenated into `full` on every rank.
    func allGather(_ slice: UnsafeBufferPointer<Float>, into full: Tensor) {
        timed { comm.allGather(slice, full.buffer) }
    }
}

/// The gradient plan's switches (config section `dist`).
public struct SyncOptions: Equatable {
    /// Overlap the bucketed all-reduce with the encoder backward (representation level, several ranks).
    public var overlap = true
    /// Bucket size of the overlapped all-reduce, in MiB.
    public var bucketMB = 25.0
    public init(overlap: Bool = true, bucketMB: Double = 25) {
        self.overlap = overlap
        self.bucketMB = bucketMB
    }
}
