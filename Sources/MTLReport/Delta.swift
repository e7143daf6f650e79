import Foundation

/// Which way a metric improves, by its name (the metric part of "<task>.<metric>").
/// nil: unknown metric (shown in the table without an arrow and left out of Δm).
public func higherIsBetter(metric: String) -> Bool? {
    switch metric {
    case "miou", "max_miou", "pixel_acc", "max_f", "acc", "f1", "odsf": return true
    case "abs_err", "rel_err", "rmse", "mean", "median", "loss": return false
    default: return metric.hasPrefix("within_") ? true : nil
    }
}

/// Mean and sample standard deviation (n − 1 in the denominator; 0 for one value).
public func meanStd(_ values: [Double]) -> (mean: Double, std: Double) {
    guard !values.isEmpty else { return (.nan, .nan) }
    let mean = values.reduce(0, +) / Double(values.count)
    guard values.count > 1 else { return (mean, 0) }
    let ss = values.reduce(0) { $0 + ($1 - mean) * ($1 - mean) }
    return (mean, (ss / Double(values.count - 1)).squareRoot())
}

/// Relative improvement of one task over the baseline, in percent: the mean over the task's
/// metrics of ±(M − B)/B, + for higher-better metrics, − for lower-better (LibMTL's
/// count_improvement, inner average). Metrics with unknown direction or B = 0 are skipped and
/// named in `skipped`. nil when no metric of the task is usable.
public func taskImprovement(task: String, metrics: [String], value: [String: Double], baseline: [String: Double],
                            skipped: inout Set<String>) -> Double? {
    var sum = 0.0, n = 0
    for metric in metrics {
        let key = "\(task).\(metric)"
        guard let higher = higherIsBetter(metric: metric), let m = value[key], let b = baseline[key] else { continue }
        guard b != 0, b.isFinite, m.isFinite else { skipped.insert(key); continue }
        sum += (higher ? 1 : -1) * (m - b) / b
        n += 1
    }
    return n > 0 ? 100 * sum / Double(n) : nil
}

/// Δm in percent (LibMTL): per task the mean over its metrics of ±(M − B)/B, then the mean over
/// `tasks` (the tasks that have a usable baseline metric).
public func deltaM(tasks: [String], metrics: [String: [String]], value: [String: Double], baseline: [String: Double],
                   skipped: inout Set<String>) -> Double? {
    var sum = 0.0, n = 0
    for task in tasks {
        if let d = taskImprovement(task: task, metrics: metrics[task] ?? [], value: value, baseline: baseline, skipped: &skipped) {
            sum += d
            n += 1
        }
    }
    return n > 0 ? sum / Double(n) : nil
}
