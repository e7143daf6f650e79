import MTLCore

/// EW (METHODS.md §1): every task's loss with weight 1, for the decoders and the encoder alike.
/// (LibMTL documents 1/T but uses 1; so do we.)
final class EW: MultiTaskMethod {
    let name = "ew"
    let needsGram = false
    let needsGradients = false
    let tasks: TaskSet

    init(_ tasks: TaskSet) { self.tasks = tasks }

    func apply(_ ctx: MethodContext) throws -> MethodResult {
        try check(ctx, name, tasks)
        return MethodResult(.lossWeights([Double](repeating: 1, count: tasks.count)))
    }

    func stateValues() -> [String: [Double]] { [:] }
    func loadState(_ state: [String: [Double]]) throws { try checkStateKeys(state, name, []) }
}
