import Foundation
import MTLCore
import MTLNN
import MTLModels
import MTLData
import MTLDist
import MTLMethods
import MTLTrain

/// What one step measured (global values: identical on every rank).
public struct StepStats {
    public var losses: [Double]           // global mean loss per task
    public var counts: [Double]           // global number of valid elements per task
    public var methodLogs: [(String, Double)]
    public var coefficients: [Double]     // encoder coefficients the method chose
    public var gradNorm: Double           // norm of the reduced gradient (all trainable parameters)
    public var skipped: Bool              // NaN/Inf with nan_policy=skip: no update applied
    public var computeSeconds: Double     // this rank's forward/backward time
    public var commSeconds: Double        // this rank's time in collectives
}

/// One training step, as data flows in ARCHITECTURE.md:
/// encoder forward → decoder forward → per-task losses → per task a decoder backward (∂L_t/∂z kept;
/// z = the encoder's Features, one tensor per scale, and ⟨·,·⟩ on them the sum over scales) → ONE
/// all-reduce of (loss sums, valid counts, local Gram) → method → decoder grads weighted, encoder
/// backward with Σ α_t ∂L_t/∂z → gradient all-reduce → NaN check (same decision everywhere) →
/// optimizer step. A joint decoder under a loss-weighting method skips the per-task backwards: one
/// decoder backward of Σ_t w_t L_t after the method.
/// Losses are normalised by GLOBAL valid counts, so N ranks × b equal 1 rank × N·b.
public final class StepEngine {
    public let model: MultiTaskModel
    public let taskNames: [String]
    public let losses: [TaskLoss]
    public let lossWeights: [Double]
    public let roles: [TaskRole]
    public let method: MultiTaskMethod
    public let level: GradientLevel
    public let optimizer: Optimizer
    public let comm: Communicator
    public let seed: UInt64
    public let skipNonFinite: Bool

    /// Parameters that are updated and all-reduced (frozen heads excluded), in a fixed order.
    let trainable: [Parameter]
    /// The method scales each loss term (LPS) and needs no per-task gradients first: the per-task
    /// backwards wait for its term scales.
    let termScalesBeforeBackward: Bool
    /// The parameters every task's loss depends on: the encoder's, then the joint decoder's shared ones.
    let sharedParams: [Parameter]
    let encoderParams: [Parameter]
    let pass: TaskPass
    /// The step's collectives: trainable gradients all-reduced (at parameter level the shared ones
    /// are already global after the method, so only the decoder's task parameters).
    let sync: GradientSync
    /// Parameter level: the per-task shared gradients of this rank, T × P_shared (padded to a
    /// multiple of the world size), and this rank's slice of their global sums, T × P/size.
    /// Representation level, GradDrop: the per-task sign-corrected sums.
    var taskParamGrads: [Tensor] = []
    var taskSlices: [Tensor] = []
    /// Parameter level: this rank's slice of the combined shared gradient.
    let combinedSlice = Tensor([0])
    var reduction: [Double]
    /// Bucket groups: the decoder's per-task groups, its shared group, then the encoder's groups.
    let decoderGroups: Int

    public init(model: MultiTaskModel, losses: [TaskLoss], lossWeights: [Double], roles: [TaskRole],
                method: MultiTaskMethod, level: GradientLevel, optimizer: Optimizer, comm: Communicator,
                seed: UInt64, skipNonFinite: Bool, sync options: SyncOptions = SyncOptions()) {
        self.model = model
        self.taskNames = model.taskNames
        self.losses = losses
        self.lossWeights = lossWeights
        self.roles = roles
        self.method = method
        self.level = (method.needsGram || method.needsGradients) ? level : .representation
        self.optimizer = optimizer
        self.comm = comm
        self.seed = seed
        self.skipNonFinite = skipNonFinite
        trainable = model.parameters.filter { $0.trainable }
        termScalesBeforeBackward = method.scalesLossTerms && !method.needsGram && !method.needsGradients
        encoderParams = model.encoderFrozen ? [] : model.encoder.parameters
        sharedParams = encoderParams + model.decoder.sharedParameters
        pass = TaskPass(model: model, losses: losses, lossWeights: lossWeights)
        let sharedNames = Set(sharedParams.map { $0.name })
        let reduced = self.level == .parameters ? trainable.filter { !sharedNames.contains($0.name) } : trainable
        let t = model.taskNames.count
        reduction = [Double](repeating: 0, count: 2 * t + t * t)
        let groups = model.decoder.taskParameters + [model.decoder.sharedParameters]
        decoderGroups = groups.count
        // Overlap needs the heads' gradients final before the encoder backward: not so for GradDrop
        // (its multipliers come after) or the parameter level (T encoder backwards).
        let overlap = options.overlap && self.level == .representation && !method.needsGradients
        sync = GradientSync(comm: comm, reduced: reduced,
                            overlapGroups: overlap ? groups + (model.encoderFrozen ? [] : model.encoder.parameterGroupsInBackwardOrder) : nil,
                            bucketBytes: Int(options.bucketMB * 1_048_576))
    }

    /// Runs one step on this rank's shard `batch`. `stepIndex`/`epoch` key the method's randomness.
    public func step(batch: Batch, stepIndex: Int, epoch: Int, epochEnded: Bool, lr: Float) throws -> StepStats {
        let stats = try gradients(batch: batch, stepIndex: stepIndex, epoch: epoch, epochEnded: epochEnded)
        if !stats.skipped { optimizer.step(lr: lr) }
        return stats
    }

    /// Everything of a step but the optimizer update: leaves the reduced, combined gradient in every
    /// trainable parameter's `grad` (identical on all ranks).
    public func gradients(batch: Batch, stepIndex: Int, epoch: Int, epochEnded: Bool) throws -> StepStats {
        let T = taskNames.count
        let t0 = Date()
        sync.beginStep()
        model.zeroGrad()

        let z = pass.forward(batch.images)
        try pass.evaluateLosses(batch)
        // Per-task decoder backwards are needed for the Gram and the per-task gradients, and are how
        // a separable decoder gets its gradients anyway; a joint decoder under a loss-weighting
        // method waits for the weights and runs one backward.
        let eachTask = model.decoder.separable || method.needsGram || method.needsGradients
        // A method that scales the loss terms (LPS) must see the term losses before any backward: a
        // separable decoder's per-task backwards wait for it (they give the same gradients later).
        if eachTask && !termScalesBeforeBackward { pass.backwardEachTask() }

        // One small all-reduce: loss sums, valid counts, (representation level) the local Gram, and the
        // per-term sums of the tasks with auxiliary predictions (only those; for the others the one term
        // is the task's sum).
        let repGram = method.needsGram && level == .representation
        let termTasks = (0..<T).filter { pass.termCount($0) > 1 }
        let termEntries = termTasks.reduce(0) { $0 + pass.termCount($1) }
        if reduction.count != 2 * T + T * T + termEntries {
            reduction = [Double](repeating: 0, count: 2 * T + T * T + termEntries)
        }
        for t in 0..<T {
            reduction[t] = pass.localSums[t]
            reduction[T + t] = pass.localCounts[t]
        }
        for i in 0..<(T * T) { reduction[2 * T + i] = 0 }
        var at = 2 * T + T * T
        for t in termTasks {
            for v in pass.localTermSums[t] { reduction[at] = v; at += 1 }
        }
        if repGram {
            // G_ij = Σ_scales ⟨g_i, g_j⟩ (one scale: exactly the single-tensor Gram).
            for s in pass.combined.indices {
                let local = gramMatrix(pass.taskGrads.map { UnsafeBufferPointer($0[s].buffer) })
                for k in 0..<(T * T) { reduction[2 * T + k] += local[k] }
            }
        }
        sync.allReduce(&reduction)

        let counts = Array(reduction[T..<(2 * T)])
        // 1/N_t: the loss of a task with no valid element anywhere is 0 and gets no gradient.
        let inv = counts.map { $0 > 0 ? 1.0 / $0 : 0.0 }
        let globalLosses = (0..<T).map { reduction[$0] * inv[$0] }
        var termLosses = globalLosses.map { [$0] }
        at = 2 * T + T * T
        for t in termTasks {
            termLosses[t] = (0..<pass.termCount(t)).map { reduction[at + $0] * inv[t] }
            at += pass.termCount(t)
        }
        var gram: [Double]? = nil
        if repGram {
            gram = (0..<(T * T)).map { k in reduction[2 * T + k] * inv[k / T] * inv[k % T] }
        }

        // Non-finite losses are decided here, on reduced values (the same on every rank), before the
        // method sees them: the methods reject them, which made nan_policy=skip unreachable.
        if globalLosses.contains(where: { !$0.isFinite }) || gram?.contains(where: { !$0.isFinite }) == true {
            if !skipNonFinite { throw nonFiniteError(stepIndex: stepIndex, globalLosses: globalLosses) }
            return StepStats(losses: globalLosses, counts: counts, methodLogs: [],
                             coefficients: [Double](repeating: 0, count: T), gradNorm: .nan, skipped: true,
                             computeSeconds: Date().timeIntervalSince(t0) - sync.seconds, commSeconds: sync.seconds)
        }

        var ctx = MethodContext(step: stepIndex, epoch: epoch, seed: seed, roles: roles, losses: globalLosses,
                                termLosses: termLosses, gram: gram, grads: nil, epochEnded: epochEnded, level: level)
        let result: MethodResult
        if level == .parameters {
            result = try parameterLevel(&ctx, inv: inv)
            pass.weightDecoder(taskWeights: scaled(result.output.decoderWeights, inv), sharedWeights: nil)
        } else if method.needsGradients {
            result = try representationVectors(&ctx, z: z, inv: inv)
            // Multipliers act on ∂L/∂z only: a joint decoder's shared parameters get the decoder weights.
            let shared = result.output.sharedCoefficients ?? result.output.decoderWeights
            pass.weightDecoder(taskWeights: scaled(result.output.decoderWeights, inv), sharedWeights: scaled(shared, inv))
        } else {
            result = try applyMethod(ctx)
            let w = scaled(result.output.decoderWeights, inv)
            let dz: Features
            switch result.output {
            case .lossWeights where !eachTask && w.contains(where: { $0 != 0 }):
                // Joint decoder, one weight per loss: one backward of Σ_t w_t/N_t L_t gives every
                // decoder parameter and ∂/∂z exactly (each term scaled by its termScales factor).
                dz = pass.backwardWeighted(w, termScales: result.termScales)
            case .lossWeights(let coefficients), .coefficients(let coefficients, _):
                if !eachTask || termScalesBeforeBackward { pass.backwardEachTask(termScales: result.termScales) }
                let alpha = scaled(coefficients, inv)
                pass.weightDecoder(taskWeights: w, sharedWeights: alpha)
                dz = pass.combine(alpha)
            case .combinedGradient, .multipliers:
                throw MTLError("method \(method.name): returned a non-linear result without asking for the per-task vectors (needsGradients)")
            }
            // The decoder's gradients are final: with overlap their buckets start reducing during
            // the encoder backward.
            for g in 0..<decoderGroups { sync.groupDone(g) }
            if !model.encoderFrozen {
                if sync.overlapped {
                    model.encoder.backward(dz) { k in self.sync.groupDone(self.decoderGroups + k) }
                } else {
                    model.encoder.backward(dz)
                }
            }
        }
        // Gradient all-reduce (sums: the losses are already global means); with overlap only the
        // reductions still in flight cost time here.
        sync.finishGradients()
        return try finishStep(globalLosses: globalLosses, counts: counts, result: result, stepIndex: stepIndex,
                              computeTime: Date().timeIntervalSince(t0) - sync.seconds, commTime: sync.seconds)
    }

    /// The method's result, its arrays checked to have one value per task (and one term scale per loss
    /// term, from a method that may return them: only then do the per-task backwards wait for it).
    private func applyMethod(_ ctx: MethodContext) throws -> MethodResult {
        let result = try method.apply(ctx)
        try result.output.check(taskCount: taskNames.count, method: method.name)
        if result.termScales != nil && !termScalesBeforeBackward {
            throw MTLError("method \(method.name): returned loss-term scales without scalesLossTerms (or with the Gram / per-task gradients, whose backwards precede the method)")
        }
        try result.checkTermScales(ctx, method: method.name)
        return result
    }

    /// w_t / N_t.
    private func scaled(_ weights: [Double], _ inv: [Double]) -> [Double] { zip(weights, inv).map { $0 * $1 } }

    private func nonFiniteError(stepIndex: Int, globalLosses: [Double]) -> MTLError {
        let bad = zip(taskNames, globalLosses).filter { !$0.1.isFinite }.map { $0.0 }
        return MTLError("step \(stepIndex): non-finite \(bad.isEmpty ? "gradient" : "loss for " + bad.joined(separator: ", ")) (train.nan_policy=stop; use skip to drop such steps)")
    }

    /// The non-finite check on the reduced values (the same decision on every rank) and the stats.
    private func finishStep(globalLosses: [Double], counts: [Double], result: MethodResult, stepIndex: Int,
                            computeTime: Double, commTime: Double) throws -> StepStats {
        var sq = 0.0
        for p in trainable { sq += p.grad.sumOfSquares() }

        // Every rank holds the same reduced values, so every rank takes the same decision here.
        let finite = sq.isFinite && globalLosses.allSatisfy { $0.isFinite }
        if !finite && !skipNonFinite { throw nonFiniteError(stepIndex: stepIndex, globalLosses: globalLosses) }
        // A non-linear method has no coefficients: 1 per task keeps the same record keys for every method.
        let ones = [Double](repeating: 1, count: taskNames.count)
        return StepStats(losses: globalLosses, counts: counts, methodLogs: result.logs,
                         coefficients: result.output.sharedCoefficients ?? ones, gradNorm: sq.squareRoot(), skipped: !finite,
                         computeSeconds: computeTime, commSeconds: commTime)
    }

    /// Representation level, non-linear methods (GradDrop): the per-position sign-corrected sums
    /// q_t[j] = Σ_b sign(z[b,j]) ∂L_t/∂z[b,j] are all-reduced (T × C·h·w floats; several scales are
    /// concatenated, finest first), the method turns them into per-position multipliers m_t (same on
    /// every rank), and each rank backpropagates Σ_t m_t ⊙ ∂L_t/∂z of its own samples.
    private func representationVectors(_ ctx: inout MethodContext, z: Features, inv: [Double]) throws -> MethodResult {
        let T = taskNames.count
        let batch = z[0].n
        let perScale = z.map { $0.count / max(1, batch) }
        let offsets = perScale.indices.map { perScale[..<$0].reduce(0, +) }
        let perSample = perScale.reduce(0, +)
        if taskParamGrads.count != T || taskParamGrads[0].count != perSample {
            taskParamGrads = (0..<T).map { _ in Tensor([perSample]) }
        }
        for t in 0..<T {
            for s in z.indices {
                pass.taskGrads[t][s].scale(Float(inv[t]))
                GradDrop.signCorrectedSum(z: z[s].data, h: pass.taskGrads[t][s].data, batch: batch, perSample: perScale[s],
                                          into: taskParamGrads[t].data + offsets[s])
            }
        }
        for t in 0..<T { sync.allReduce(taskParamGrads[t].buffer) }
        ctx.grads = taskParamGrads.map { $0.buffer }
        let result = try applyMethod(ctx)
        switch result.output {
        case .multipliers:
            for s in z.indices {
                pass.combined[s].resize(pass.taskGrads[0][s].shape)
                GradDrop.combine(multipliers: taskParamGrads.map { UnsafeBufferPointer(start: $0.data + offsets[s], count: perScale[s]) },
                                 h: pass.taskGrads.map { UnsafePointer($0[s].data) }, batch: batch, perSample: perScale[s],
                                 into: pass.combined[s].data)
            }
        case .lossWeights(let alpha), .coefficients(let alpha, _):
            _ = pass.combine(alpha)   // the task gradients already carry 1/N_t
        case .combinedGradient:
            throw MTLError("method \(method.name): returned a combined parameter gradient at the representation level")
        }
        if !model.encoderFrozen { model.encoder.backward(pass.combined) }
        return result
    }

    /// Parameter level (ARCHITECTURE.md): T encoder backwards give the per-task shared gradients g_t^r
    /// of this rank. Instead of all-reducing T full vectors, each is reduce-scattered: rank r receives
    /// the GLOBAL slice g_t[r·B..<(r+1)·B] (B = P padded to a multiple of the world size, / size).
    /// The Gram is the sum over slices, K = Σ_r K^r with K^r_ij = <g_i, g_j> on slice r: one T×T
    /// all-reduce (then rank 0's copy is broadcast, so every rank's solver sees the same bits).
    /// The method combines the slices (coefficients, or GradDrop element-wise on its slice with the
    /// global offset), and one all-gather of the combined slice rebuilds the shared gradient.
    /// Traffic per rank ≈ (T + 1)·P floats (ring) instead of 2·T·P for T all-reduces; the Gram and
    /// the combination cost 1/size of the full vectors.
    private func parameterLevel(_ ctx: inout MethodContext, inv: [Double]) throws -> MethodResult {
        let T = taskNames.count, R = comm.size
        let encoderP = encoderParams.reduce(0) { $0 + $1.value.count }
        let P = sharedParams.reduce(0) { $0 + $1.value.count }
        let block = (P + R - 1) / R, padded = block * R
        if taskParamGrads.count != T || taskParamGrads[0].count != padded {
            taskParamGrads = (0..<T).map { _ in Tensor([padded]) }
            taskSlices = (0..<T).map { _ in Tensor([block]) }
        }
        for t in 0..<T {
            for p in encoderParams { p.grad.zero() }
            for g in pass.taskGrads[t] { g.scale(Float(inv[t])) }
            if !model.encoderFrozen { model.encoder.backward(pass.taskGrads[t]) }
            let flat = taskParamGrads[t].data
            packGradients(encoderParams, into: flat)
            if let decoderShared = pass.sharedDecoderGradient(t) {
                let src = decoderShared.data, dst = flat + encoderP, scale = Float(inv[t])
                for i in 0..<decoderShared.count { dst[i] = src[i] * scale }
            }
            (flat + P).update(repeating: 0, count: padded - P)   // the padding sums to zero
            sync.reduceScatter(taskParamGrads[t], into: taskSlices[t])
        }
        let offset = comm.rank * block
        let valid = max(0, min(block, P - offset))   // this rank's elements that are not padding
        var gram = gramMatrix(taskSlices.map { UnsafeBufferPointer(start: $0.data, count: valid) })
        sync.globalGram(&gram)
        ctx.gram = gram
        ctx.grads = taskSlices.map { UnsafeMutableBufferPointer(start: $0.data, count: valid) }
        ctx.gradsOffset = offset
        let result = try applyMethod(ctx)

        // This rank's slice of the combined gradient, then all-gathered.
        combinedSlice.resize([block])
        let out = combinedSlice.data
        switch result.output {
        case .combinedGradient:
            out.update(from: taskSlices[0].data, count: valid)
        case .lossWeights(let alpha), .coefficients(let alpha, _):
            combineGradients(alpha, taskSlices.map { UnsafeBufferPointer(start: $0.data, count: valid) },
                             into: UnsafeMutableBufferPointer(start: out, count: valid))
        case .multipliers:
            throw MTLError("method \(method.name): returned representation-level multipliers at the parameter level")
        }
        (out + valid).update(repeating: 0, count: block - valid)
        let full = taskParamGrads[0]
        sync.allGather(UnsafeBufferPointer(start: out, count: block), into: full)
        unpackGradients(sharedParams, from: full.data)
        return result
    }
}
