import Foundation
import MTLCore
import MTLData
import MTLDist
import MTLMethods
import MTLModels
import MTLTrain

// Auto-λ's look-ahead (METHODS.md §15; reference: lorenmt/auto-lambda, auto_lambda.py and
// trainer_dense.py). Before each normal step, with λ the current task weights and α the step's
// learning rate:
//   1. g  = ∇_θ Σ_t λ_t L_t(θ; train batch)                       (global, all-reduced)
//   2. θ' = θ − α·(g + μ·momentum buffer + wd·θ)                  (Optimizer.virtualStep)
//   3. d  = ∇_θ' Σ_{p primary} L_p(θ'; val batch)                 (global, all-reduced)
//   4. ε  = 0.01/‖d‖;  L_t^± = L_t(θ ± ε·d; train batch)          (one all-reduce of 2T sums + T counts)
//      ∂L_val(θ'(λ))/∂λ_t = −α·∇L_t(θ)·d ≈ −α·(L_t^+ − L_t^−)/(2ε)
//   5. one Adam step on λ; θ and the BatchNorm running statistics are restored from copies
//      (never by subtracting back), and the trainer then runs the normal step with the new λ.
// Every quantity is formed from all-reduced values, so every rank computes the same λ, and the
// global batches are those of any world size: λ is world-size invariant like the other methods.
// The meta-gradient is also broadcast from rank 0 (METHODS.md §18.4), so the ranks' λ and Adam
// moments agree to the bit even if an all-reduce differed in the last bit between ranks.
//
// Departures from the reference, on purpose:
//   - The running statistics of BatchNorm are restored after the look-ahead. The reference lets
//     its three extra training-mode forwards of the model (virtual, θ+, θ−) update them, so they
//     move four times per step and include statistics at the perturbed θ±.
//   - A look-ahead that cannot be formed (non-finite gradient or losses, d = 0) leaves λ unchanged
//     (the reference would write NaN into λ).
//   - Only the primary heads run on the val batch (the reference runs every head and drops the
//     auxiliary losses with weight 0): same d, less work.

/// What the look-ahead needs from the network. `ModelLookahead` provides it for the trainer's
/// model; the tests use a small linear model whose every quantity can be computed by hand.
public protocol LookaheadNetwork: AnyObject {
    /// θ: the trainable parameters, in a fixed order (those the optimizer updates).
    var lookaheadParameters: [Parameter] { get }
    /// State a training-mode forward changes besides θ (BatchNorm running statistics).
    var lookaheadBuffers: [Tensor] { get }
    /// Leaves the GLOBAL gradient ∇_θ Σ_t w_t L_t(θ; batch) in every parameter's `grad` (identical
    /// on all ranks; tasks with w_t = 0 are not evaluated) and returns the global mean losses (0 for
    /// tasks not evaluated).
    func weightedGradient(batch: Batch, weights: [Double]) throws -> [Double]
    /// This rank's loss sums and valid counts of every task at the current θ (forward only).
    func localLossSums(batch: Batch) throws -> (sums: [Double], counts: [Double])
}

public final class AutoLambdaStep {
    public let method: AutoLambda
    let network: LookaheadNetwork
    let optimizer: Optimizer
    let comm: Communicator
    let params: [Parameter]
    let buffers: [Tensor]
    /// Copies of θ and of the buffers, taken before and written back after every look-ahead.
    let savedParams: Tensor
    let savedBuffers: Tensor
    /// [S_t(θ+ε·d) (T), S_t(θ−ε·d) (T), N_t (T)]: one all-reduce.
    var reduction: [Double]
    var meta: [Double]
    /// The second data stream (trainer only): nil when batches are passed in directly.
    var valStream: ValStream?

    public init(method: AutoLambda, network: LookaheadNetwork, optimizer: Optimizer, comm: Communicator) {
        self.method = method
        self.network = network
        self.optimizer = optimizer
        self.comm = comm
        params = network.lookaheadParameters
        buffers = network.lookaheadBuffers
        savedParams = Tensor([params.reduce(0) { $0 + $1.value.count }])
        savedBuffers = Tensor([buffers.reduce(0) { $0 + $1.count }])
        let T = method.lambda.count
        reduction = [Double](repeating: 0, count: 3 * T)
        meta = [Double](repeating: 0, count: T)
    }

    /// The trainer's Auto-λ, or nil when the engine's method is another one. The val stream reads
    /// the train split (primary tasks only) in an order and with augmentation draws of its own.
    static func make(engine: StepEngine, config: Config, comm: Communicator) throws -> AutoLambdaStep? {
        guard let autol = engine.method as? AutoLambda else { return nil }
        let step = AutoLambdaStep(method: autol, network: ModelLookahead(engine: engine),
                                  optimizer: engine.optimizer, comm: comm)
        let primaries = zip(engine.taskNames, engine.roles).filter { $0.1 == .primary }.map { $0.0 }
        let data = try MTDataset(path: config.data.path, split: config.data.trainSplit, tasks: primaries,
                                 cache: config.data.cache)
        let sampler = try ShardedSampler(count: data.count, globalBatch: config.train.batchSize, rank: comm.rank,
                                         worldSize: comm.size, seed: UInt64(config.train.seed), stream: .autolDataOrder)
        var augmentation: Augmentation? = nil
        if config.data.augment {
            augmentation = Augmentation(seed: UInt64(config.train.seed))
            augmentation!.stream = RNGStream.autolAugmentation.rawValue
        }
        step.valStream = ValStream(dataset: data, sampler: sampler, augmentation: augmentation)
        return step
    }

    /// Starts reading the val stream where the method state says (after a resume: where it stopped).
    func begin(steps: Int, prefetch: Int) { valStream?.begin(at: method.valPosition, count: steps, prefetch: prefetch) }
    func end() { valStream?.end() }

    /// The look-ahead with the next batch of the val stream.
    public func updateWeights(batch: Batch, lr: Float) throws {
        guard let valStream else { throw MTLError("autol: no val stream (internal: begin() not called)") }
        try updateWeights(batch: batch, valBatch: try valStream.batch(position: method.valPosition), lr: lr)
    }

    /// Updates λ from the look-ahead on (batch, valBatch) at learning rate `lr`; θ and the buffers
    /// are exactly as before when it returns (also when it throws), their grads hold junk.
    public func updateWeights(batch: Batch, valBatch: Batch, lr: Float) throws {
        defer { method.valPosition += 1 }
        save()
        defer { restore() }
        let T = method.lambda.count

        // 1–2. θ' = θ − α·(∇Σλ_t L_t + μ·buf + wd·θ).
        let trainLosses = try network.weightedGradient(batch: batch, weights: method.lambda)
        guard trainLosses.allSatisfy({ $0.isFinite }), gradientSumOfSquares().isFinite else { return method.skipUpdate() }
        optimizer.virtualStep(lr: lr)

        // 3. d = ∇_θ' L_primary(val batch), left in the grads.
        let valLosses = try network.weightedGradient(batch: valBatch, weights: method.primaryWeights)
        let norm = gradientSumOfSquares().squareRoot()
        guard valLosses.allSatisfy({ $0.isFinite }), norm > 0, norm.isFinite else { return method.skipUpdate() }

        // 4. Central difference of every task's loss along d, at θ ± ε·d (θ from the copy).
        let eps = Float(0.01 / norm)
        perturb(eps)
        let plus = try network.localLossSums(batch: batch)
        perturb(-eps)
        let minus = try network.localLossSums(batch: batch)
        for t in 0..<T {
            reduction[t] = plus.sums[t]
            reduction[T + t] = minus.sums[t]
            reduction[2 * T + t] = plus.counts[t]
        }
        reduction.withUnsafeMutableBufferPointer { comm.allReduceSum($0) }
        let twoEps = 2 * Double(eps)   // the perturbation really applied is ±Float(ε)·d
        for t in 0..<T {
            let n = reduction[2 * T + t]
            let difference = n > 0 ? (reduction[t] - reduction[T + t]) / n : 0
            meta[t] = -Double(lr) * difference / twoEps
        }
        meta.withUnsafeMutableBufferPointer { comm.broadcast($0, root: 0) }
        guard meta.allSatisfy({ $0.isFinite }) else { return method.skipUpdate() }

        // 5. Adam on λ; the defers restore θ and the buffers.
        method.update(metaGradient: meta, directionNorm: norm)
    }

    private func gradientSumOfSquares() -> Double {
        var s = 0.0
        for p in params where p.trainable { s += p.grad.sumOfSquares() }
        return s
    }

    /// θ ← saved θ + eps·d, with d in the grads.
    private func perturb(_ eps: Float) {
        var off = 0
        for p in params {
            let n = p.value.count
            let v = p.value.data, d = p.grad.data, s = savedParams.data + off
            if p.trainable {
                for i in 0..<n { v[i] = s[i] + eps * d[i] }
            }
            off += n
        }
    }

    private func save() {
        var off = 0
        for p in params { (savedParams.data + off).update(from: p.value.data, count: p.value.count); off += p.value.count }
        off = 0
        for b in buffers { (savedBuffers.data + off).update(from: b.data, count: b.count); off += b.count }
    }

    private func restore() {
        var off = 0
        for p in params { p.value.data.update(from: savedParams.data + off, count: p.value.count); off += p.value.count }
        off = 0
        for b in buffers { b.data.update(from: savedBuffers.data + off, count: b.count); off += b.count }
    }
}

/// The trainer's model as a `LookaheadNetwork`: the step's TaskPass with the same normalisation as
/// StepEngine (sums and valid counts all-reduced, losses divided by the GLOBAL counts, one decoder
/// backward of Σ_t w_t/N_t L_t, one encoder backward, gradients all-reduced).
final class ModelLookahead: LookaheadNetwork {
    let pass: TaskPass
    let comm: Communicator
    let lookaheadParameters: [Parameter]
    let lookaheadBuffers: [Tensor]
    let flat: Tensor
    var reduction: [Double]

    init(engine: StepEngine) {
        pass = TaskPass(model: engine.model, losses: engine.losses, lossWeights: engine.lossWeights)
        comm = engine.comm
        lookaheadParameters = engine.trainable
        lookaheadBuffers = engine.model.buffers.map { $0.value }
        flat = Tensor([engine.trainable.reduce(0) { $0 + $1.value.count }])
        reduction = [Double](repeating: 0, count: 2 * engine.taskNames.count)
    }

    func weightedGradient(batch: Batch, weights: [Double]) throws -> [Double] {
        let T = pass.taskCount
        pass.model.zeroGrad()
        pass.forward(batch.images, active: weights.map { $0 != 0 })
        try pass.evaluateLosses(batch)
        for t in 0..<T {
            reduction[t] = weights[t] != 0 ? pass.localSums[t] : 0
            reduction[T + t] = weights[t] != 0 ? pass.localCounts[t] : 0
        }
        reduction.withUnsafeMutableBufferPointer { comm.allReduceSum($0) }
        let scaled = (0..<T).map { t in reduction[T + t] > 0 ? weights[t] / reduction[T + t] : 0 }
        if scaled.contains(where: { $0 != 0 }) {
            let dz = pass.backwardWeighted(scaled)
            if !pass.model.encoderFrozen { pass.model.encoder.backward(dz) }
        }
        if comm.size > 1 {
            packGradients(lookaheadParameters, into: flat.data)
            comm.allReduceSum(flat.buffer)
            unpackGradients(lookaheadParameters, from: flat.data)
        }
        return (0..<T).map { t in reduction[T + t] > 0 && weights[t] != 0 ? reduction[t] / reduction[T + t] : 0 }
    }

    func localLossSums(batch: Batch) throws -> (sums: [Double], counts: [Double]) {
        pass.forward(batch.images)
        try pass.evaluateLosses(batch)
        return (pass.localSums, pass.localCounts)
    }
}

/// Auto-λ's second ("val") stream of training batches: the train split in an order of its own
/// (Philox stream .autolDataOrder) and, with augmentation, draws of its own — the reference's
/// second shuffled DataLoader over the train set. Batch k of the stream is a function of
/// (seed, k) only, so a resumed run continues it from the method state's val_position.
final class ValStream {
    let dataset: MTDataset
    let sampler: ShardedSampler
    let augmentation: Augmentation?
    var loader: PrefetchLoader?
    var augmenter: Augmenter?
    let syncBatch = Batch()

    init(dataset: MTDataset, sampler: ShardedSampler, augmentation: Augmentation?) {
        self.dataset = dataset
        self.sampler = sampler
        self.augmentation = augmentation
    }

    func begin(at start: Int, count: Int, prefetch: Int) {
        if prefetch > 0 {
            loader = PrefetchLoader(dataset: dataset, sampler: sampler, startStep: start, depth: prefetch,
                                    augment: augmentation, endStep: start + count)
        } else {
            augmenter = augmentation.map { Augmenter($0, imageMean: dataset.imageMean, imageStd: dataset.imageStd) }
        }
    }

    func end() {
        loader?.stop()
        loader = nil
    }

    func batch(position k: Int) throws -> Batch {
        if let loader {
            let (loaded, b) = try loader.next()
            precondition(loaded == k, "autol val stream returned batch \(loaded) for \(k)")
            return b
        }
        try dataset.load(sampler.localBatch(step: k), into: syncBatch)
        augmenter?.apply(to: syncBatch, epoch: sampler.epoch(ofStep: k))
        return syncBatch
    }
}
