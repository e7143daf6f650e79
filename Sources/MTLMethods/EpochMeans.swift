import MTLCore

/// Per-epoch means of per-task values (DWA: losses, LPS: log-losses), accumulated from the
/// GLOBAL per-step values, so identical on every rank. An epoch is closed on the first step
/// of the next one (`epochEnded`, or a change of `epoch`), keeping the last `keep` means.
struct EpochMeans {
    let count: Int
    let keep: Int
    var sums: [Double]
    var steps = 0
    var lastEpoch = -1
    var history: [[Double]] = []

    init(count: Int, keep: Int) {
        self.count = count
        self.keep = keep
        sums = [Double](repeating: 0, count: count)
    }

    /// Closes the running epoch if this step starts a new one.
    mutating func advance(_ ctx: MethodContext) {
        let started = ctx.epochEnded || (lastEpoch >= 0 && ctx.epoch != lastEpoch)
        lastEpoch = ctx.epoch
        guard started, steps > 0 else { return }
        history.append(sums.map { $0 / Double(steps) })
        if history.count > keep { history.removeFirst(history.count - keep) }
        sums = [Double](repeating: 0, count: count)
        steps = 0
    }

    mutating func add(_ values: [Double]) {
        for t in 0..<count { sums[t] += values[t] }
        steps += 1
    }

    static let keys = ["epoch.sums", "epoch.steps", "epoch.last", "epoch.history"]

    var state: [String: [Double]] {
        ["epoch.sums": sums, "epoch.steps": [Double(steps)], "epoch.last": [Double(lastEpoch)],
         "epoch.history": history.flatMap { $0 }]
    }

    mutating func load(_ state: [String: [Double]], method: String) throws {
        sums = try stateArray(state, method, "epoch.sums", count: count)
        steps = Int(try stateArray(state, method, "epoch.steps", count: 1)[0])
        lastEpoch = Int(try stateArray(state, method, "epoch.last", count: 1)[0])
        let flat = try stateArray(state, method, "epoch.history")
        if flat.count % count != 0 || flat.count / count > keep {
            throw MTLError("method \(method) state: 'epoch.history' has \(flat.count) values, expected a multiple of \(count) up to \(keep * count)")
        }
        history = stride(from: 0, to: flat.count, by: count).map { Array(flat[$0..<($0 + count)]) }
    }
}
