import Foundation
import MTLCore
import MTLModels
import MTLData
import MTLDist
import MTLTrain

/// Metrics of one task over a whole evaluation split.
public struct TaskMetrics {
    public var task: String
    public var values: [(String, Double)]
    public var higherIsBetter: [String: Bool]
}

/// Evaluates a model on a split: rank r takes samples r, r+N, ...; each rank accumulates its metric
/// state and the states are summed across ranks, so the result is the same for any world size.
public enum Evaluator {
    /// A 2-channel binary prediction (saliency_ce) as the one logit of the binary metric:
    /// softmax(z₀, z₁)₁ = σ(z₁ − z₀).
    static func binaryLogit(_ pred: Tensor, into out: Tensor) -> Tensor {
        guard pred.c == 2 else { return pred }
        let n = pred.n, hw = pred.h * pred.w
        out.resize([n, 1, pred.h, pred.w])
        for s in 0..<n {
            let z0 = pred.data + s * 2 * hw, z1 = z0 + hw, o = out.data + s * hw
            for i in 0..<hw { o[i] = z1[i] - z0[i] }
        }
        return out
    }

    public static func run(model: MultiTaskModel, dataset: MTDataset, losses: [String], classes: [Int],
                           comm: Communicator, batchSize: Int) throws -> [TaskMetrics] {
        model.setTraining(false)
        defer { model.setTraining(true) }
        let metrics = zip(model.taskNames, classes).map { makeMetric(task: $0.0, classes: $0.1) }
        let logit = Tensor([0])
        let mine = Array(stride(from: comm.rank, to: dataset.count, by: comm.size))
        let batch = Batch()
        var start = 0
        while start < mine.count {
            let idx = Array(mine[start..<min(start + max(1, batchSize), mine.count)])
            start += idx.count
            try dataset.load(idx, into: batch)
            let active = model.taskNames.map { batch.targets[$0] != nil }
            let z = model.encoder.forward(batch.images)
            let preds = model.decoder.forward(z, height: batch.images.h, width: batch.images.w, active: active)
            for (t, name) in model.taskNames.enumerated() {
                guard let target = batch.targets[name], let pred = preds[t] else { continue }
                switch metrics[t] {
                case let m as SegmentationMetric: m.update(logits: pred, target: target)
                case let m as DepthMetric: m.update(pred: pred, target: target)
                case let m as NormalsMetric: m.update(pred: pred, target: target)
                case let m as BinaryMetric: m.update(logits: binaryLogit(pred, into: logit), target: target)
                default: break
                }
            }
        }
        var out: [TaskMetrics] = []
        for (t, m) in metrics.enumerated() {
            var state = m.state
            if comm.size > 1 { state.withUnsafeMutableBufferPointer { comm.allReduceSum($0) } }
            m.state = state
            out.append(TaskMetrics(task: model.taskNames[t], values: m.results(), higherIsBetter: m.higherIsBetter))
        }
        return out
    }

    /// A plain-text table: one row per task, its metrics with ↑ (higher is better) or ↓.
    public static func table(_ results: [TaskMetrics]) -> String {
        var lines = ["task      metric            value"]
        lines.append(String(repeating: "-", count: 36))
        for r in results {
            for (k, v) in r.values {
                let arrow = (r.higherIsBetter[k] ?? true) ? "↑" : "↓"
                lines.append(r.task.padding(toLength: 10, withPad: " ", startingAt: 0)
                             + (k + " " + arrow).padding(toLength: 18, withPad: " ", startingAt: 0)
                             + String(format: "%.4f", v))
            }
        }
        return lines.joined(separator: "\n")
    }
}
