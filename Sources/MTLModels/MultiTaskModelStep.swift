import MTLCore

extension MultiTaskModel {
    /// Keys the per-step randomness of the next training forward (DropPath in Swin) by the run's seed,
    /// the step index and the batch's dataset (global) sample indices, so that it does not depend on
    /// the number of ranks or threads and a resumed run redraws exactly. No effect on other encoders.
    public func prepareStep(seed: UInt64, step: Int, sampleIndices: [Int]) {
        (encoder as? StochasticEncoder)?.prepareStep(seed: seed, step: step, sampleIndices: sampleIndices)
    }
}
