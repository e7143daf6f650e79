import Foundation
import MTLCore
import CHDF5

/// Background loading: a Foundation Thread reads (and augments) the batches of steps
/// startStep, startStep+1, ... into a pool of depth+1 recycled `Batch`es while the trainer
/// computes, so reading and decoding overlap the step.
///
/// - The loader thread owns `dataset` exclusively from `init` on: do not call `dataset.load`
///   from another thread (its read buffers and HDF5 handle are not shared); open a second
///   MTDataset for evaluation. Its immutable properties (count, height, numClasses...) may be read.
/// - `next()` returns the batch of the next step; that Batch stays valid until the following
///   `next()` call, which hands it back to the pool (no allocation in steady state).
/// - Deterministic: the batch of step s is a function of (dataset, sampler, augmentation, s) only,
///   whatever `depth` or timing.
/// - A loading error (bad label, corrupt chunk, ...) ends the thread and is rethrown by `next()`
///   once the batches read before it have been consumed; later calls rethrow it again.
public final class PrefetchLoader {
    public let startStep: Int
    public let depth: Int
    /// Seconds the consumer spent blocked in `next()` (0 when the loader keeps ahead).
    public private(set) var waitSeconds: Double = 0
    private let state: LoaderState
    private var held: Batch?

    /// `endStep`: first step not to load (nil = load until stopped).
    public init(dataset: MTDataset, sampler: ShardedSampler, startStep: Int, depth: Int = 2,
                augment: Augmentation?, endStep: Int? = nil) {
        precondition(depth >= 1, "prefetch depth must be >= 1, found \(depth)")
        precondition(startStep >= 0, "negative start step \(startStep)")
        self.startStep = startStep
        self.depth = depth
        let state = LoaderState(pool: (0...depth).map { _ in Batch() })
        self.state = state
        let augmenter = augment.map { Augmenter($0, imageMean: dataset.imageMean, imageStd: dataset.imageStd) }
        // The thread captures the state, not self, so that dropping the loader runs deinit → stop().
        let thread = Thread {
            state.produce(dataset: dataset, sampler: sampler, augmenter: augmenter, from: startStep, until: endStep)
        }
        thread.name = "mtl-loader"
        thread.start()
    }

    deinit { stop() }

    /// The next step's batch, blocking until it is ready; rethrows the loader thread's error.
    public func next() throws -> (step: Int, batch: Batch) {
        let c = state.condition
        c.lock()
        defer { c.unlock() }
        if let previous = held {
            state.free.append(previous)
            held = nil
            c.broadcast()
        }
        if state.stopRequested { throw MTLError("loader: next() called after stop()") }
        if state.ready.isEmpty && state.error == nil && !state.finished {
            let t0 = DispatchTime.now().uptimeNanoseconds
            while state.ready.isEmpty && state.error == nil && !state.finished { c.wait() }
            waitSeconds += Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
        }
        if !state.ready.isEmpty {
            let (step, batch) = state.ready.removeFirst()
            held = batch
            return (step, batch)
        }
        if let error = state.error { throw error }
        throw MTLError("loader: no batch after step \(state.lastStep) (end step reached)")
    }

    /// Ends the loader thread and waits for it (at most the time of the load in progress).
    /// Idempotent; also called by deinit.
    public func stop() {
        let c = state.condition
        c.lock()
        state.stopRequested = true
        c.broadcast()
        while !state.finished { c.wait() }
        c.unlock()
    }

    /// True once the loader thread has exited (after stop(), an error, or the end step).
    public var threadFinished: Bool {
        state.condition.lock()
        defer { state.condition.unlock() }
        return state.finished
    }
}

/// What the loader thread and the consumer share; every field is guarded by `condition`.
final class LoaderState: @unchecked Sendable {
    let condition = NSCondition()
    var free: [Batch]
    var ready: [(Int, Batch)] = []
    var error: Error?
    var stopRequested = false
    var finished = false
    var lastStep = -1

    init(pool: [Batch]) {
        free = pool
        free.reserveCapacity(pool.count)
        ready.reserveCapacity(pool.count)
    }

    func produce(dataset: MTDataset, sampler: ShardedSampler, augmenter: Augmenter?, from start: Int, until end: Int?) {
        // HDF5's automatic error printing is per thread in the thread-safe build: silence it here
        // as on the main thread (errors reach the user as MTLErrors, not as HDF5 stack dumps).
        mtl_h5_silence()
        var step = start
        while end.map({ step < $0 }) ?? true {
            condition.lock()
            while free.isEmpty && !stopRequested { condition.wait() }
            if stopRequested { condition.unlock(); break }
            let batch = free.removeLast()
            condition.unlock()
            do {
                try dataset.load(sampler.localBatch(step: step), into: batch)
                augmenter?.apply(to: batch, epoch: sampler.epoch(ofStep: step))
            } catch {
                condition.lock()
                self.error = error is MTLError ? error : MTLError("loader: step \(step): \(error)")
                free.append(batch)
                finished = true  // with the error, so that a consumer woken by it sees a finished thread
                condition.broadcast()
                condition.unlock()
                break
            }
            condition.lock()
            ready.append((step, batch))
            lastStep = step
            condition.broadcast()
            condition.unlock()
            step += 1
        }
        condition.lock()
        finished = true
        condition.broadcast()
        condition.unlock()
    }
}
