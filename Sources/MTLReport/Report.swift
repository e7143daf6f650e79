import Foundation
import MTLCore

/// Runs of one method (and level) over seeds: one row of the table, one set of figures.
public struct RunGroup {
    public let method: String
    public let level: String
    public var runs: [RunData]
    /// Row label and file-name stem: the method name, "@parameters" added at parameter level.
    public var label: String { level == "parameters" ? "\(method)@parameters" : method }
}

/// Groups runs by (method, level), in the order each group first appears; seeds sorted.
public func groupRuns(_ runs: [RunData]) -> [RunGroup] {
    var groups: [RunGroup] = []
    for run in runs {
        if let i = groups.firstIndex(where: { $0.method == run.method && $0.level == run.level }) {
            groups[i].runs.append(run)
        } else {
            groups.append(RunGroup(method: run.method, level: run.level, runs: [run]))
        }
    }
    for i in groups.indices { groups[i].runs.sort { $0.seed < $1.seed } }
    return groups
}

/// The metric columns: "<task>.<metric>" keys of the last eval records, tasks in config order,
/// metrics in the order of the first run's record (sorted by name: JSON objects have no order).
func metricColumns(tasks: [String], runs: [RunData]) -> [String: [String]] {
    var columns: [String: [String]] = [:]
    for task in tasks {
        var names = Set<String>()
        for run in runs {
            for key in run.lastEval.keys where key.hasPrefix(task + ".") { names.insert(String(key.dropFirst(task.count + 1))) }
        }
        // Known directions first (higher-better, then lower-better), then the rest; by name inside.
        columns[task] = names.sorted { a, b in
            let ra = higherIsBetter(metric: a).map { $0 ? 0 : 1 } ?? 2, rb = higherIsBetter(metric: b).map { $0 ? 0 : 1 } ?? 2
            return ra != rb ? ra < rb : a < b
        }
    }
    return columns
}

public enum Report {
    /// Reads the run directories (and the baseline runs), returns the markdown report and writes
    /// the figures as SVG into `outDir` (default: the first run directory's parent + "/report").
    /// `baseline`: one run directory, or nil for a table without Δm.
    public static func run(runDirs: [String], baseline: String?, outDir: String?, format: String) throws -> String {
        try run(runDirs: runDirs, baselines: baseline.map { [$0] } ?? [], outDir: outDir, format: format)
    }

    /// As above with several baseline runs (seeds): the baseline is their mean.
    public static func run(runDirs: [String], baselines: [String], outDir: String?, format: String) throws -> String {
        guard format == "svg" else { throw MTLError("report: format '\(format)' is not supported (expected svg)") }
        guard !runDirs.isEmpty else { throw MTLError("report: no run directory given") }
        // A directory named twice (a shell glob and an explicit path) counts once.
        var seen = Set<String>()
        let unique = runDirs.map { normalize($0) }.filter { seen.insert($0).inserted }
        let runs = try unique.map { try RunData.load($0) }
        let baseRuns = try baselines.map { try RunData.load(normalize($0)) }
        let markdown = try table(runs: runs, baseline: baseRuns)

        let out = outDir ?? ((normalize(runDirs[0]) as NSString).deletingLastPathComponent as NSString).appendingPathComponent("report")
        do {
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        } catch {
            throw MTLError("report: cannot create the output folder \(out): \(error.localizedDescription)")
        }
        var written: [String] = []
        for (name, svg) in figures(runs: runs, baseline: baseRuns) {
            let path = (out as NSString).appendingPathComponent(name)
            do {
                try writeAtomically(path, svg)   // the file and the OS reason on failure, no temporary left
            } catch let e as MTLError {
                throw MTLError("report: \(e.message)")
            }
            written.append(name)
        }
        return markdown + "\nFigures (\(out)): " + written.joined(separator: ", ") + "\n"
    }

    /// The markdown table: one row per (method, level) group, mean ± std over its seeds of the
    /// last eval record; Δm and the primary-task Δ against the mean of the baseline runs.
    public static func table(runs: [RunData], baseline: [RunData]) throws -> String {
        guard let first = runs.first else { throw MTLError("report: no run directory given") }
        let tasks = first.taskNames
        for run in runs.dropFirst() where Set(run.taskNames) != Set(tasks) {
            throw MTLError("report: \(run.dir) has tasks \(run.taskNames.joined(separator: ",")) but \(first.dir) has \(tasks.joined(separator: ",")): report runs of one task set together (a run with fewer tasks can be the --baseline)")
        }
        for run in baseline {
            guard Set(run.taskNames) == Set(baseline[0].taskNames) else {
                throw MTLError("report: baseline \(run.dir) has tasks \(run.taskNames.joined(separator: ",")) but baseline \(baseline[0].dir) has \(baseline[0].taskNames.joined(separator: ","))")
            }
            for task in run.taskNames where !tasks.contains(task) {
                throw MTLError("report: baseline \(run.dir) has task \(task), which the runs (\(tasks.joined(separator: ","))) do not have")
            }
        }
        let primary = first.tasks.filter { $0.role == "primary" }.map { $0.name }
        let columns = metricColumns(tasks: tasks, runs: runs + baseline)
        let keys = tasks.flatMap { t in (columns[t] ?? []).map { "\(t).\($0)" } }

        // Baseline: the mean of its runs' last eval records, key by key.
        var base: [String: Double] = [:]
        for key in keys {
            let values = baseline.compactMap { $0.lastEval[key] }
            if !values.isEmpty { base[key] = meanStd(values).mean }
        }
        let baseTasks = baseline.first?.taskNames ?? []
        let deltaTasks = tasks.filter { baseTasks.contains($0) }
        var skipped = Set<String>()

        var header = "| method | runs |"
        var rule = "|---|---|"
        for key in keys {
            let metric = String(key.split(separator: ".", maxSplits: 1)[1])
            let arrow = higherIsBetter(metric: metric).map { $0 ? " ↑" : " ↓" } ?? ""
            header += " \(key)\(arrow) |"
            rule += "---|"
        }
        if !baseline.isEmpty {
            header += " Δm % ↑ | Δ primary % ↑ |"
            rule += "---|---|"
        }
        var lines = [header, rule]
        let baseDirs = Set(baseline.map { $0.dir })
        let groups = groupRuns(runs)
        var rows: [(label: String, runs: [RunData])] = groups.map { ($0.label, $0.runs) }
        // The baseline gets its own row unless its runs are already a row of the table.
        if !baseline.isEmpty && !groups.contains(where: { Set($0.runs.map { $0.dir }) == baseDirs }) {
            let b = groupRuns(baseline)[0]
            let suffix = Set(baseTasks) == Set(tasks) ? "" : " (\(baseTasks.joined(separator: ",")) only)"
            rows.append(("baseline: \(b.label)\(suffix)", baseline))
        }
        for row in rows {
            var line = "| \(row.label) | \(row.runs.count) |"
            for key in keys {
                let values = row.runs.compactMap { $0.lastEval[key] }
                line += " \(cell(values)) |"
            }
            if !baseline.isEmpty {
                let dm = row.runs.compactMap {
                    deltaM(tasks: deltaTasks, metrics: columns, value: $0.lastEval, baseline: base, skipped: &skipped)
                }
                let dp = row.runs.compactMap {
                    deltaM(tasks: primary.filter { deltaTasks.contains($0) }, metrics: columns, value: $0.lastEval,
                           baseline: base, skipped: &skipped)
                }
                line += " \(cell(dm, decimals: 2)) | \(cell(dp, decimals: 2)) |"
            }
            lines.append(line)
        }

        var notes: [String] = []
        let steps = Set(runs.map { Int($0.lastEval["step"] ?? -1) })
        notes.append("Last eval record of each run (step \(steps.sorted().map(String.init).joined(separator: ", "))); mean ± sample std over the runs of a row (seeds).")
        notes.append("Tasks: " + first.tasks.map { "\($0.name) (\($0.role)\($0.frozen ? ", frozen" : ""))" }.joined(separator: ", ") + ".")
        if !baseline.isEmpty {
            notes.append("Δm (LibMTL): per task the mean over its metrics of ±(M − B)/B (+ when higher is better), then the mean over the tasks \(deltaTasks.joined(separator: ", ")); B = mean of the baseline runs \(baseline.map { $0.dir }.joined(separator: ", ")). Δ primary: the same over \(primary.joined(separator: ", ")) only.")
        }
        let unknown = keys.filter { higherIsBetter(metric: String($0.split(separator: ".", maxSplits: 1)[1])) == nil }
        if !unknown.isEmpty { notes.append("No known direction (left out of Δm): \(unknown.joined(separator: ", ")).") }
        if !skipped.isEmpty { notes.append("Baseline value 0 or not finite (left out of Δm): \(skipped.sorted().joined(separator: ", ")).") }
        return lines.joined(separator: "\n") + "\n\n" + notes.joined(separator: "\n") + "\n"
    }

    /// The SVG figures (file name, text): per group its losses, eval metrics and method weights
    /// over steps, and one comparison of the groups on the primary task's metrics (the baseline
    /// runs too, grey, when they are not among the runs).
    public static func figures(runs: [RunData], baseline: [RunData] = []) -> [(String, String)] {
        var out: [(String, String)] = []
        let groups = groupRuns(runs)
        for group in groups {
            let seedNote = group.runs.count > 1
                ? " (seeds " + group.runs.enumerated().map { i, r in "\(r.seed): \(dashName(i))" }.joined(separator: ", ") + ")"
                : " (seed \(group.runs[0].seed))"
            let tasks = group.runs[0].taskNames
            let stem = fileStem(group.label)

            // Losses: one panel per task, one line per seed.
            let lossPanels = tasks.enumerated().map { t, task in
                Panel(title: "loss.\(task)", series: group.runs.enumerated().map { i, run in
                    Series(label: "seed \(run.seed)", points: curve(run.train, "loss.\(task)"),
                           color: palette[t % palette.count], dash: dashes[i % dashes.count])
                })
            }
            out.append(("\(stem)-losses.svg", renderSVG(title: "\(group.label): training losses\(seedNote)", panels: lossPanels)))

            // Eval metrics: one panel per task metric.
            let columns = metricColumns(tasks: tasks, runs: group.runs)
            var metricPanels: [Panel] = []
            for (t, task) in tasks.enumerated() {
                for metric in columns[task] ?? [] {
                    let arrow = higherIsBetter(metric: metric).map { $0 ? " ↑" : " ↓" } ?? ""
                    metricPanels.append(Panel(title: "\(task).\(metric)\(arrow)", series: group.runs.enumerated().map { i, run in
                        Series(label: "seed \(run.seed)", points: curve(run.evals, "\(task).\(metric)"),
                               color: palette[t % palette.count], dash: dashes[i % dashes.count])
                    }))
                }
            }
            out.append(("\(stem)-metrics.svg", renderSVG(title: "\(group.label): eval metrics\(seedNote)", panels: metricPanels)))

            // Method weights: coef.<task>, method.w.<task>, method.sigma.<task>, Auto-λ's
            // method.lambda.<task> and method.metagrad.<task>, and any other
            // method.* number each in its own panel.
            var keys = Set<String>()
            for run in group.runs { for record in run.train { for key in record.keys where key.hasPrefix("coef.") || key.hasPrefix("method.") { keys.insert(key) } } }
            var families: [String: [String]] = [:]   // family → tasks
            var singles: [String] = []
            for key in keys.sorted() {
                var family: String? = nil
                for prefix in ["coef.", "method.w.", "method.sigma.", "method.lambda.", "method.metagrad."] where key.hasPrefix(prefix) && tasks.contains(String(key.dropFirst(prefix.count))) {
                    family = prefix
                }
                if let f = family { families[f, default: []].append(String(key.dropFirst(f.count))) } else { singles.append(key) }
            }
            var weightPanels: [Panel] = []
            for family in ["coef.", "method.w.", "method.sigma.", "method.lambda.", "method.metagrad."] {
                guard let present = families[family] else { continue }
                var series: [Series] = []
                for (t, task) in tasks.enumerated() where present.contains(task) {
                    for (i, run) in group.runs.enumerated() {
                        series.append(Series(label: task, points: curve(run.train, family + task),
                                             color: palette[t % palette.count], dash: dashes[i % dashes.count]))
                    }
                }
                weightPanels.append(Panel(title: family + "<task>", series: series))
            }
            for key in singles {
                weightPanels.append(Panel(title: key, series: group.runs.enumerated().map { i, run in
                    Series(label: "seed \(run.seed)", points: curve(run.train, key), color: palette[0], dash: dashes[i % dashes.count])
                }))
            }
            if !weightPanels.isEmpty {
                out.append(("\(stem)-weights.svg", renderSVG(title: "\(group.label): method weights\(seedNote)", panels: weightPanels)))
            }
        }

        // Comparison: the primary task's metrics over steps, the mean over seeds per group.
        if let first = runs.first {
            let primary = first.tasks.filter { $0.role == "primary" }.map { $0.name }
            let columns = metricColumns(tasks: primary, runs: runs)
            var panels: [Panel] = []
            for task in primary {
                for metric in columns[task] ?? [] {
                    let key = "\(task).\(metric)"
                    let arrow = higherIsBetter(metric: metric).map { $0 ? " ↑" : " ↓" } ?? ""
                    panels.append(Panel(title: key + arrow, series: groups.enumerated().map { g, group in
                        Series(label: group.label, points: meanCurve(group.runs.map { curve($0.evals, key) }),
                               color: palette[g % palette.count], dash: g >= palette.count ? dashes[1] : "")
                    }))
                }
            }
            let baseDirs = Set(baseline.map { $0.dir })
            if !baseline.isEmpty && !groups.contains(where: { Set($0.runs.map { $0.dir }) == baseDirs }) {
                let label = "baseline: " + groupRuns(baseline)[0].label
                for (i, panel) in panels.enumerated() {
                    let key = String(panel.title.split(separator: " ")[0])
                    panels[i].series.append(Series(label: label, points: meanCurve(baseline.map { curve($0.evals, key) }),
                                                   color: "#000000", dash: "6 3"))
                }
            }
            if !panels.isEmpty {
                out.append(("compare-primary.svg", renderSVG(title: "primary task, mean over seeds", panels: panels)))
            }
        }
        return out
    }
}

/// (step, value) of every record that has the key.
func curve(_ records: [[String: Double]], _ key: String) -> [(x: Double, y: Double)] {
    records.compactMap { r in
        guard let s = r["step"], let v = r[key] else { return nil }
        return (s, v)
    }
}

/// Pointwise mean of curves at the steps they all share.
func meanCurve(_ curves: [[(x: Double, y: Double)]]) -> [(x: Double, y: Double)] {
    guard let first = curves.first else { return [] }
    var result: [(x: Double, y: Double)] = []
    for point in first {
        let ys = curves.compactMap { c in c.first(where: { $0.x == point.x })?.y }
        if ys.count == curves.count { result.append((point.x, ys.reduce(0, +) / Double(ys.count))) }
    }
    return result
}

func cell(_ values: [Double], decimals: Int = 4) -> String {
    guard !values.isEmpty else { return "—" }
    let std = meanStd(values).std
    var mean = meanStd(values).mean
    // No "-0.00": a value that rounds to zero prints as zero.
    if abs(mean) < 0.5 * pow(10, -Double(decimals)) { mean = 0 }
    let f = "%.\(decimals)f"
    return values.count > 1 ? String(format: f, mean) + " ± " + String(format: f, std) : String(format: f, mean)
}

func dashName(_ i: Int) -> String { ["solid", "dashed", "dotted", "dash-dot", "sparse dots"][i % 5] }

func fileStem(_ label: String) -> String {
    String(label.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" ? $0 : "_" })
}

private func normalize(_ dir: String) -> String {
    var d = dir
    while d.count > 1 && d.hasSuffix("/") { d.removeLast() }
    return d
}
