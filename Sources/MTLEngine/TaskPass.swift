import MTLCore
import MTLNN
import MTLModels
import MTLData
import MTLMethods

/// The forward / per-task loss / backward pieces of a step, in one place for the training step
/// (StepEngine), Auto-λ's look-ahead and the Evaluator.
///
/// Loss scale convention: every backward here is of λ_t·S_t, the task weight times the LOCAL loss
/// sum, because the global valid counts N_t are known only after the all-reduce; the caller then
/// scales by 1/N_t (per-task gradients) or passes weights that include it (`backwardWeighted`).
final class TaskPass {
    let model: MultiTaskModel
    let losses: [TaskLoss]
    let lossWeights: [Double]
    var taskCount: Int { losses.count }
    /// ∂(λ_t S_t)/∂Features per task and scale, kept by `backwardEachTask`.
    let taskGrads: [[Tensor]]
    /// Σ_t c_t · taskGrads[t], per scale (`combine`).
    let combined: [Tensor]
    /// Joint decoders: per task, the gradient of λ_t S_t w.r.t. the task parameters and the shared
    /// decoder parameters (flat, in `taskParameters` / `sharedParameters` order).
    private(set) var decoderTaskGrads: [Tensor] = []
    private(set) var decoderSharedGrads: [Tensor] = []
    private let decoderTaskParams: [Parameter]
    private let decoderSharedParams: [Parameter]
    /// The last forward's predictions (nil: task not active) and local loss sums / valid counts.
    private(set) var predictions: [Tensor?] = []
    private(set) var localSums: [Double]
    private(set) var localCounts: [Double]
    /// Per task, λ_t × the local sum of each loss term: the final prediction's, then each auxiliary
    /// prediction's (NOT times its auxiliary weight), so that S_t = Σ_k a_k · localTermSums[t][k]
    /// with a_0 = 1. Methods that weight the terms separately (LPS) need their global means.
    private(set) var localTermSums: [[Double]]
    private var lossReady: [Bool]
    private let mixed = Tensor([0])
    /// Per task, one loss of the task's kind for each auxiliary prediction of the decoder (deep
    /// supervision; created on first use).
    private var auxiliaryLosses: [[TaskLoss]]

    init(model: MultiTaskModel, losses: [TaskLoss], lossWeights: [Double]) {
        precondition(losses.count == model.taskNames.count && lossWeights.count == losses.count)
        self.model = model
        self.losses = losses
        self.lossWeights = lossWeights
        let scales = model.encoder.featureChannels.count
        taskGrads = model.taskNames.map { _ in (0..<scales).map { _ in Tensor([0]) } }
        combined = (0..<scales).map { _ in Tensor([0]) }
        decoderTaskParams = model.decoder.taskParameters.flatMap { $0 }
        decoderSharedParams = model.decoder.sharedParameters
        localSums = [Double](repeating: 0, count: losses.count)
        localCounts = localSums
        localTermSums = losses.indices.map { [Double](repeating: 0, count: 1 + model.decoder.auxiliaryWeights($0).count) }
        lossReady = [Bool](repeating: false, count: losses.count)
        auxiliaryLosses = losses.map { _ in [] }
    }

    /// Task t's number of loss terms: its final prediction and the decoder's auxiliary predictions of it
    /// (fixed by the decoder, the same on every rank: the step's all-reduce layout follows it).
    func termCount(_ t: Int) -> Int { 1 + model.decoder.auxiliaryWeights(t).count }

    /// Encoder and decoder forward for the tasks with `active[t]` (default: all). Returns the Features.
    @discardableResult
    func forward(_ images: Tensor, active: [Bool]? = nil) -> Features {
        let z = model.encoder.forward(images)
        predictions = model.decoder.forward(z, height: images.h, width: images.w,
                                            active: active ?? [Bool](repeating: true, count: taskCount))
        for t in 0..<taskCount { lossReady[t] = false }
        return z
    }

    /// This rank's weighted loss sums λ_t·S_t and valid counts of the active tasks of the last forward
    /// (0 for the others). Every active task must have a target in `batch`.
    func evaluateLosses(_ batch: Batch) throws {
        for t in 0..<taskCount {
            localSums[t] = 0
            localCounts[t] = 0
            localTermSums[t] = [Double](repeating: 0, count: termCount(t))
            guard let pred = predictions[t] else { continue }
            guard let target = batch.targets[model.taskNames[t]] else {
                throw MTLError("batch has no target for task \(model.taskNames[t])")
            }
            let ls = losses[t].forward(pred, target)
            var sum = ls.sum
            var terms = [ls.sum * lossWeights[t]]
            // Auxiliary predictions share the final's target, hence its valid count: their weighted sums
            // join task t's sum, so that S_t / N_t = L_t + Σ_i w_i L_t^(i).
            let aux = model.decoder.auxiliaryPredictions(t), weights = model.decoder.auxiliaryWeights(t)
            while auxiliaryLosses[t].count < aux.count {
                let l = losses[t]
                auxiliaryLosses[t].append(try TaskLoss(kind: l.kind.rawValue, posWeight: l.bce?.posWeight ?? l.bbce?.positiveWeight ?? 1))
            }
            for (i, a) in aux.enumerated() {
                let la = auxiliaryLosses[t][i].forward(a, target)
                precondition(la.count == ls.count, "TaskPass: auxiliary prediction \(i) of task \(model.taskNames[t]) has \(la.count) valid elements, the final \(ls.count)")
                sum += weights[i] * la.sum
                terms.append(la.sum * lossWeights[t])
            }
            precondition(terms.count == termCount(t), "TaskPass: task \(model.taskNames[t]) has \(aux.count) auxiliary predictions, its decoder declares \(termCount(t) - 1) weights")
            localTermSums[t] = terms
            localSums[t] = sum * lossWeights[t]
            localCounts[t] = Double(ls.count)
            lossReady[t] = true
        }
    }

    /// The gradients of task t's auxiliary predictions for the loss scale `scale` (nil: the decoder has none);
    /// auxiliary i's term gets scale × a_i × terms[1 + i] (`terms`: task t's per-term scales, nil = all 1).
    private func auxiliaryGradients(_ t: Int, scale: Double, terms: [Double]?) -> [Tensor]? {
        let weights = model.decoder.auxiliaryWeights(t)
        guard !weights.isEmpty else { return nil }
        return weights.indices.map { auxiliaryLosses[t][$0].backward(scale: Float(scale * weights[$0] * (terms?[1 + $0] ?? 1))) }
    }

    /// The backward of task t's final and auxiliary terms at loss scale `scale`, term k additionally
    /// scaled by termScales[t][k] (MethodResult.termScales; nil: every term by 1).
    private func termGradients(_ t: Int, scale: Double, termScales: [[Double]]?) -> (Tensor, [Tensor]?) {
        let terms = termScales?[t]
        precondition(terms == nil || terms!.count == localTermSums[t].count,
                     "TaskPass: \(terms?.count ?? 0) term scales for task \(model.taskNames[t]), which has \(localTermSums[t].count) loss terms")
        return (losses[t].backward(scale: Float(scale * (terms?[0] ?? 1))), auxiliaryGradients(t, scale: scale, terms: terms))
    }

    /// One decoder backward per task of λ_t S_t, keeping ∂/∂Features in `taskGrads[t]`. A joint
    /// decoder's parameter gradients are kept per task too (and left zero in the grads), so that
    /// they can be combined with weights known only after the method ran (`weightDecoder`).
    /// A separable decoder's task t gradient lands in its own parameters, to be scaled later.
    /// `termScales` (per task, per loss term): task t's backward is that of Σ_k termScales[t][k]·a_k·λ_t·S_t^k.
    func backwardEachTask(termScales: [[Double]]? = nil) {
        let T = taskCount
        let joint = !model.decoder.separable
        if joint && decoderTaskGrads.count != T {
            let nt = decoderTaskParams.reduce(0) { $0 + $1.value.count }
            let ns = decoderSharedParams.reduce(0) { $0 + $1.value.count }
            decoderTaskGrads = (0..<T).map { _ in Tensor([nt]) }
            decoderSharedGrads = (0..<T).map { _ in Tensor([ns]) }
        }
        var dPreds = [Tensor?](repeating: nil, count: T)
        var dAux = [[Tensor]?](repeating: nil, count: T)
        for t in 0..<T {
            precondition(lossReady[t], "TaskPass: backward of task \(t) without its loss")
            if joint { for p in model.decoder.parameters { p.grad.zero() } }
            let (dFinal, dIntermediate) = termGradients(t, scale: lossWeights[t], termScales: termScales)
            dPreds[t] = dFinal
            dAux[t] = dIntermediate
            let dz = model.decoder.backward(dPreds, auxiliary: dAux)
            dPreds[t] = nil
            dAux[t] = nil
            for (kept, g) in zip(taskGrads[t], dz) { kept.copy(from: g) }
            if joint {
                packGradients(decoderTaskParams, into: decoderTaskGrads[t].data)
                packGradients(decoderSharedParams, into: decoderSharedGrads[t].data)
            }
        }
        if joint { for p in model.decoder.parameters { p.grad.zero() } }
    }

    /// After `backwardEachTask`: the decoder's gradients become Σ_t taskWeights[t]·∂(λ_t S_t)/∂θ for
    /// task parameters and Σ_t sharedWeights[t]·∂(λ_t S_t)/∂θ for shared ones (nil: leave the shared
    /// grads alone, e.g. when the parameter level has written them). Separable: head t's gradient
    /// is scaled by taskWeights[t].
    func weightDecoder(taskWeights: [Double], sharedWeights: [Double]?) {
        if model.decoder.separable {
            for (t, params) in model.decoder.taskParameters.enumerated() {
                for p in params { p.grad.scale(Float(taskWeights[t])) }
            }
            return
        }
        let mix = { (vectors: [Tensor], weights: [Double], params: [Parameter]) in
            let n = vectors.first?.count ?? 0
            guard n > 0 else { return }
            self.mixed.resize([n])
            combineGradients(weights, vectors.map { UnsafeBufferPointer($0.buffer) }, into: self.mixed.buffer)
            unpackGradients(params, from: self.mixed.data)
        }
        mix(decoderTaskGrads, taskWeights, decoderTaskParams)
        if let sharedWeights { mix(decoderSharedGrads, sharedWeights, decoderSharedParams) }
    }

    /// Task t's kept shared-decoder gradient (joint decoders; empty tensor otherwise).
    func sharedDecoderGradient(_ t: Int) -> Tensor? { decoderSharedGrads.isEmpty ? nil : decoderSharedGrads[t] }
    var sharedDecoderParameters: [Parameter] { decoderSharedParams }

    /// One decoder backward of Σ_t weights[t]·λ_t·S_t (tasks with weight 0 are left out), adding into
    /// the decoder's grads; returns ∂/∂Features (decoder-owned). With `termScales`, S_t's term k is
    /// scaled by termScales[t][k] (as `backwardEachTask`).
    func backwardWeighted(_ weights: [Double], termScales: [[Double]]? = nil) -> Features {
        var dPreds = [Tensor?](repeating: nil, count: taskCount)
        var dAux = [[Tensor]?](repeating: nil, count: taskCount)
        for t in 0..<taskCount where weights[t] != 0 {
            precondition(lossReady[t], "TaskPass: backward of task \(t) without its loss")
            let (dFinal, dIntermediate) = termGradients(t, scale: weights[t] * lossWeights[t], termScales: termScales)
            dPreds[t] = dFinal
            dAux[t] = dIntermediate
        }
        return model.decoder.backward(dPreds, auxiliary: dAux)
    }

    /// combined[s] = Σ_t coefficients[t]·taskGrads[t][s] (tasks with coefficient 0 skipped).
    func combine(_ coefficients: [Double]) -> Features {
        for s in combined.indices {
            combined[s].resize(taskGrads[0][s].shape)
            combined[s].zero()
            for t in 0..<taskCount where coefficients[t] != 0 {
                combined[s].add(taskGrads[t][s], alpha: Float(coefficients[t]))
            }
        }
        return combined
    }
}
