import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import XCTest
import MTLCore
@testable import MTLReport

final class ReportTests: XCTestCase {
    var root = ""

    override func setUpWithError() throws {
        root = NSTemporaryDirectory() + "mtl-report-tests-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: root)
    }

    /// A run directory as `mtl train` writes it (same YAML layout, same JSON line shapes).
    @discardableResult
    func makeRun(_ name: String, method: String, seed: Int, tasks: [(String, String)], level: String = "representation",
                 evals: [[String: Double]], train: [[String: Double]] = []) throws -> String {
        let dir = root + "/" + name
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var yaml = "data:\n  path: /tmp/x.h5\n  cache: false\ntasks:\n"
        for (task, role) in tasks {
            yaml += "  \(task):\n    role: \(role)\n    loss: ce\n    weight: 1.0\n    frozen: false\n"
        }
        yaml += "train:\n  steps: 20\n  batch_size: 8\n  seed: \(seed)\n  eval_every: 10\noptim:\n  eps: 1.0e-08\n"
        yaml += "method:\n  name: \(method)\n  level: \(level)\n"
        try yaml.write(toFile: dir + "/config.yaml", atomically: true, encoding: .utf8)
        var lines: [String] = []
        for record in train {
            var object: [String: Any] = record
            object["kind"] = "train"
            object["skipped"] = false
            lines.append(String(data: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), encoding: .utf8)!)
        }
        for record in evals {
            var object: [String: Any] = record
            object["kind"] = "eval"
            object["split"] = "val"
            lines.append(String(data: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), encoding: .utf8)!)
        }
        try (lines.joined(separator: "\n") + "\n").write(toFile: dir + "/metrics.jsonl", atomically: true, encoding: .utf8)
        return dir
    }

    // MARK: - Δm

    func testDeltaMHandComputedMixedDirections() {
        // seg: miou (0.5 − 0.4)/0.4 = +25 %, pixel_acc unchanged → task +12.5 %.
        // depth (lower is better): abs_err −(0.9 − 1.0)/1.0 = +10 %, rel_err −(0.3 − 0.2)/0.2 = −50 %
        // → task −20 %. Δm = (12.5 − 20)/2 = −3.75 %.
        let metrics = ["seg": ["miou", "pixel_acc"], "depth": ["abs_err", "rel_err"]]
        let value = ["seg.miou": 0.5, "seg.pixel_acc": 0.8, "depth.abs_err": 0.9, "depth.rel_err": 0.3]
        let base = ["seg.miou": 0.4, "seg.pixel_acc": 0.8, "depth.abs_err": 1.0, "depth.rel_err": 0.2]
        var skipped = Set<String>()
        let dm = deltaM(tasks: ["seg", "depth"], metrics: metrics, value: value, baseline: base, skipped: &skipped)
        XCTAssertEqual(dm!, -3.75, accuracy: 1e-12)
        let seg = deltaM(tasks: ["seg"], metrics: metrics, value: value, baseline: base, skipped: &skipped)
        XCTAssertEqual(seg!, 12.5, accuracy: 1e-12)
        XCTAssertTrue(skipped.isEmpty)
        // A zero baseline value cannot give a relative change: skipped and named.
        var base0 = base
        base0["depth.rel_err"] = 0
        let dm0 = deltaM(tasks: ["seg", "depth"], metrics: metrics, value: value, baseline: base0, skipped: &skipped)
        XCTAssertEqual(dm0!, (12.5 + 10) / 2, accuracy: 1e-12)
        XCTAssertEqual(skipped, ["depth.rel_err"])
    }

    func testDirections() {
        for m in ["miou", "pixel_acc", "within_11.25", "within_30", "max_f", "max_miou"] { XCTAssertEqual(higherIsBetter(metric: m), true, m) }
        for m in ["abs_err", "rel_err", "rmse", "mean", "median"] { XCTAssertEqual(higherIsBetter(metric: m), false, m) }
        XCTAssertNil(higherIsBetter(metric: "samples_per_s"))
    }

    func testMeanStd() {
        let (m, s) = meanStd([1, 2, 3, 4])
        XCTAssertEqual(m, 2.5)
        XCTAssertEqual(s, (5.0 / 3.0).squareRoot(), accuracy: 1e-12)   // sample std: Σ(x−m)² = 5, n − 1 = 3
        XCTAssertEqual(meanStd([7]).std, 0)
    }

    // MARK: - Table

    func testGroupingMeanStdAndDeltaColumns() throws {
        let tasks = [("seg", "primary"), ("depth", "auxiliary")]
        let ew0 = try makeRun("ew-s0", method: "ew", seed: 0, tasks: tasks,
                              evals: [["step": 10, "seg.miou": 0.1, "depth.abs_err": 9],
                                      ["step": 20, "seg.miou": 0.4, "depth.abs_err": 1.0]])
        let ew1 = try makeRun("ew-s1", method: "ew", seed: 1, tasks: tasks,
                              evals: [["step": 20, "seg.miou": 0.6, "depth.abs_err": 1.0]])
        let ial0 = try makeRun("ial-s0", method: "ial", seed: 0, tasks: tasks,
                               evals: [["step": 20, "seg.miou": 0.55, "depth.abs_err": 0.8]])
        let pc0 = try makeRun("pcgrad-s0", method: "pcgrad", seed: 0, tasks: tasks, level: "parameters",
                              evals: [["step": 20, "seg.miou": 0.5, "depth.abs_err": 1.0]])
        let md = try Report.run(runDirs: [ew0, ial0, ew1, pc0, ew1 + "/"], baselines: [ew0, ew1], outDir: root + "/out", format: "svg")
        let rows = md.split(separator: "\n").filter { $0.hasPrefix("|") }.map(String.init)
        XCTAssertEqual(rows.count, 2 + 3, md)   // header, rule, ew, ial, pcgrad@parameters (baseline is the ew row)
        XCTAssertEqual(rows[0], "| method | runs | seg.miou ↑ | depth.abs_err ↓ | Δm % ↑ | Δ primary % ↑ |")
        // Every row has as many cells as the header.
        let cells = rows.map { $0.filter { $0 == "|" }.count }
        XCTAssertEqual(Set(cells).count, 1, md)
        // ew: miou mean 0.5, sample std of {0.4, 0.6} = 0.1414; the baseline is this mean, so its
        // Δm is the mean of per-seed Δm: seg ±20 % → task Δ; depth 0 → Δm ±10 %, mean 0, std 14.14.
        XCTAssertEqual(rows[2], "| ew | 2 | 0.5000 ± 0.1414 | 1.0000 ± 0.0000 | 0.00 ± 14.14 | 0.00 ± 28.28 |")
        // ial: seg (0.55 − 0.5)/0.5 = +10 %, depth −(0.8 − 1)/1 = +20 % → Δm 15 %, primary 10 %.
        XCTAssertEqual(rows[3], "| ial | 1 | 0.5500 | 0.8000 | 15.00 | 10.00 |")
        XCTAssertEqual(rows[4], "| pcgrad@parameters | 1 | 0.5000 | 1.0000 | 0.00 | 0.00 |")
        XCTAssertTrue(md.contains("step 20"), md)
    }

    func testSingleTaskBaselineGetsItsOwnRow() throws {
        let tasks = [("seg", "primary"), ("depth", "auxiliary")]
        let ew = try makeRun("ew-s0", method: "ew", seed: 0, tasks: tasks, evals: [["step": 20, "seg.miou": 0.3, "depth.abs_err": 1.0]])
        let stl = try makeRun("stl-s0", method: "ew", seed: 0, tasks: [("seg", "primary")], evals: [["step": 20, "seg.miou": 0.4]])
        let md = try Report.table(runs: [try RunData.load(ew)], baseline: [try RunData.load(stl)])
        let rows = md.split(separator: "\n").filter { $0.hasPrefix("|") }.map(String.init)
        XCTAssertEqual(rows.count, 4, md)
        // Δm over the baseline's tasks only (seg): (0.3 − 0.4)/0.4 = −25 %.
        XCTAssertEqual(rows[2], "| ew | 1 | 0.3000 | 1.0000 | -25.00 | -25.00 |")
        XCTAssertEqual(rows[3], "| baseline: ew (seg only) | 1 | 0.4000 | — | 0.00 | 0.00 |")
        // The comparison figure draws the single-task baseline next to the runs.
        _ = try Report.run(runDirs: [ew], baseline: stl, outDir: root + "/out", format: "svg")
        let compare = try String(contentsOfFile: root + "/out/compare-primary.svg", encoding: .utf8)
        XCTAssertTrue(compare.contains(">baseline: ew<"), compare)
    }

    // MARK: - SVG

    final class Collector: NSObject, XMLParserDelegate {
        var elements: [String: Int] = [:]
        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                    attributes: [String: String] = [:]) {
            elements[name, default: 0] += 1
        }
    }

    func testFiguresAreWellFormedSVG() throws {
        let tasks = [("seg", "primary"), ("depth", "auxiliary")]
        var dirs: [String] = []
        for seed in 0..<2 {
            var train: [[String: Double]] = []
            for s in 1...5 {
                let x = Double(s)
                var r: [String: Double] = ["step": 10 * x, "loss.seg": 2 / x, "loss.depth": 3 / x + Double(seed)]
                r["coef.seg"] = 1
                r["coef.depth"] = 0.5
                r["method.w.depth"] = 0.1 * x
                r["method.sigma.seg"] = 1
                r["method.sigma.depth"] = 1.5
                r["method.pcgrad.projections"] = Double(s % 2)
                r["lr"] = 0.001
                train.append(r)
            }
            dirs.append(try makeRun("ial-s\(seed)", method: "ial", seed: seed, tasks: tasks,
                                    evals: [["step": 25, "seg.miou": 0.2, "depth.abs_err": 2], ["step": 50, "seg.miou": 0.3, "depth.abs_err": 1.5]],
                                    train: train))
        }
        let md = try Report.run(runDirs: dirs, baseline: nil, outDir: nil, format: "svg")
        XCTAssertFalse(md.contains("Δm"), md)   // no baseline, no Δm column
        let out = root + "/report"              // default: the first run's parent + /report
        let files = try FileManager.default.contentsOfDirectory(atPath: out).sorted()
        XCTAssertEqual(files, ["compare-primary.svg", "ial-losses.svg", "ial-metrics.svg", "ial-weights.svg"])
        for file in files {
            let data = try Data(contentsOf: URL(fileURLWithPath: out + "/" + file))
            let parser = XMLParser(data: data)
            let collector = Collector()
            parser.delegate = collector
            XCTAssertTrue(parser.parse(), "\(file): \(String(describing: parser.parserError))")
            XCTAssertEqual(collector.elements["svg"], 1, file)
            XCTAssertGreaterThan(collector.elements["polyline"] ?? 0, 0, file)
            XCTAssertGreaterThan(collector.elements["text"] ?? 0, 4, file)
        }
        // Weights: coef, w, sigma families plus the one method.* scalar = 4 panels; 2 seeds each.
        let weights = try String(contentsOfFile: out + "/ial-weights.svg", encoding: .utf8)
        XCTAssertTrue(weights.contains("coef.&lt;task&gt;"))
        XCTAssertTrue(weights.contains("method.pcgrad.projections"))
        XCTAssertEqual(weights.components(separatedBy: "<polyline").count - 1, 2 * 2 + 2 * 1 + 2 * 2 + 2)
    }

    func testPlotScalesPointsIntoThePanel() {
        // Two points at the corners of the data range land on the plot area's corners.
        let svg = renderSVG(title: "t & <x>", panels: [Panel(title: "p", series: [Series(label: "a", points: [(0, 0), (10, 1)], color: "#000")])])
        XCTAssertTrue(svg.contains("t &amp; &lt;x&gt;"))
        let line = svg.split(separator: "\n").first { $0.hasPrefix("<polyline") }!
        // x: left 58 … right 348; y: the 5 % padding maps 0 → lower − 0.05/1.1 of the height.
        let lower = 36.0 + 174, upper = 36.0 + 24
        let y0 = lower - (0.05 / 1.1) * (lower - upper), y1 = lower - (1.05 / 1.1) * (lower - upper)
        XCTAssertTrue(line.contains(String(format: "58.0,%.1f 348.0,%.1f", y0, y1)), String(line))
        let ticks = niceTicks(0, 1)
        XCTAssertEqual(ticks.count, 6)
        for (t, want) in zip(ticks, [0, 0.2, 0.4, 0.6, 0.8, 1.0]) { XCTAssertEqual(t, want, accuracy: 1e-12) }
        XCTAssertEqual(niceTicks(3, 97).first, 20)
        XCTAssertEqual(niceTicks(3, 97).last, 80)
    }

    // MARK: - YAML subset

    func testYAMLFlowAndComments() throws {
        let text = "tasks:   # the tasks\n  seg: {role: primary, loss: ce}\n  depth: {}\nmethod:\n  name: \"ial\"\n  ial: {weight: {source: uncertainty}}\ntrain:\n  seed: 3\n"
        let y = try flattenYAML(text, file: "c.yaml")
        XCTAssertEqual(y["tasks.seg.role"], "primary")
        XCTAssertEqual(y["tasks.depth"], "")
        XCTAssertEqual(y["method.name"], "ial")
        XCTAssertEqual(y["method.ial.weight.source"], "uncertainty")
        XCTAssertEqual(y["train.seed"], "3")
    }

    // MARK: - Errors

    func testErrors() throws {
        let tasks = [("seg", "primary"), ("depth", "auxiliary")]
        XCTAssertThrowsError(try Report.run(runDirs: [root + "/nope"], baseline: nil, outDir: nil, format: "svg")) {
            XCTAssertEqual(($0 as? MTLError)?.message, "report: run directory \(self.root)/nope not found")
        }
        let noEval = try makeRun("noeval", method: "ew", seed: 0, tasks: tasks, evals: [], train: [["step": 1, "loss.seg": 1]])
        XCTAssertThrowsError(try Report.run(runDirs: [noEval], baseline: nil, outDir: nil, format: "svg")) {
            XCTAssertTrue(($0 as? MTLError)?.message.contains("has no eval record") == true, "\($0)")
        }
        let a = try makeRun("a", method: "ew", seed: 0, tasks: tasks, evals: [["step": 1, "seg.miou": 0.1, "depth.abs_err": 1]])
        let b = try makeRun("b", method: "ew", seed: 1, tasks: [("seg", "primary"), ("normals", "auxiliary")], evals: [["step": 1, "seg.miou": 0.1]])
        XCTAssertThrowsError(try Report.run(runDirs: [a, b], baseline: nil, outDir: nil, format: "svg")) {
            XCTAssertTrue(($0 as? MTLError)?.message.contains("has tasks seg,normals but") == true, "\($0)")
        }
        XCTAssertThrowsError(try Report.run(runDirs: [a], baseline: b, outDir: nil, format: "svg")) {
            XCTAssertTrue(($0 as? MTLError)?.message.contains("has task normals, which the runs") == true, "\($0)")
        }
        XCTAssertThrowsError(try Report.run(runDirs: [a], baseline: nil, outDir: nil, format: "png")) {
            XCTAssertTrue(($0 as? MTLError)?.message.contains("format 'png'") == true, "\($0)")
        }
        try "{\"kind\": \"eval\", \"step\": 1}\nnot json\n".write(toFile: a + "/metrics.jsonl", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try Report.run(runDirs: [a], baseline: nil, outDir: nil, format: "svg")) {
            XCTAssertTrue(($0 as? MTLError)?.message.contains("metrics.jsonl line 2: expected one JSON object") == true, "\($0)")
        }
        try FileManager.default.removeItem(atPath: a + "/config.yaml")
        XCTAssertThrowsError(try Report.run(runDirs: [a], baseline: nil, outDir: nil, format: "svg")) {
            XCTAssertTrue(($0 as? MTLError)?.message.contains("config.yaml not found") == true, "\($0)")
        }
    }
}
