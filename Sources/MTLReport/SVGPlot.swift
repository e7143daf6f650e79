import Foundation

/// One line of a panel: (x, y) points in step order, a colour and a dash pattern ("" = solid).
public struct Series {
    public var label: String
    public var points: [(x: Double, y: Double)]
    public var color: String
    public var dash: String
    public init(label: String, points: [(x: Double, y: Double)], color: String, dash: String = "") {
        self.label = label
        self.points = points
        self.color = color
        self.dash = dash
    }
}

/// One set of axes with its title and lines.
public struct Panel {
    public var title: String
    public var series: [Series]
    public init(title: String, series: [Series]) {
        self.title = title
        self.series = series
    }
}

/// Colours that stay apart on white (Tableau 10), and dash patterns for seeds.
let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
let dashes = ["", "6 3", "2 2", "8 3 2 3", "1 3"]

func xmlEscape(_ s: String) -> String {
    var out = ""
    for c in s {
        switch c {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        default: out.append(c)
        }
    }
    return out
}

/// Tick values at a step of 1, 2 or 5 × 10^k: the smallest step that makes at most `count`
/// intervals over [lo, hi] (so count + 1 ticks at most).
func niceTicks(_ lo: Double, _ hi: Double, count: Int = 5) -> [Double] {
    guard hi > lo, lo.isFinite, hi.isFinite else { return [lo] }
    let raw = (hi - lo) / Double(max(count, 1))
    let magnitude = pow(10, floor(log10(raw)))
    let step = [1.0, 2.0, 5.0, 10.0].map { $0 * magnitude }.first { $0 >= raw } ?? 10 * magnitude
    // Integer multiples of the step (no accumulated rounding from repeated additions).
    var ticks: [Double] = []
    var k = ceil(lo / step - 1e-9)
    while k * step <= hi + step * 1e-9 {
        ticks.append(k * step)
        k += 1
    }
    return ticks
}

func tickLabel(_ v: Double) -> String {
    if v == 0 { return "0" }
    let a = abs(v)
    if a >= 1e5 || a < 1e-3 { return String(format: "%.1e", v) }
    if a >= 100 { return String(format: "%.0f", v) }
    var s = String(format: "%.3f", v)
    while s.hasSuffix("0") { s.removeLast() }
    if s.hasSuffix(".") { s.removeLast() }
    return s
}

/// A figure of panels in a grid (up to 3 columns), each with axes, ticks, a title and a legend of
/// its own series, as one standalone SVG document. Non-finite points are left out of the lines.
public func renderSVG(title: String, panels: [Panel], columns: Int = 3) -> String {
    let cols = max(1, min(columns, panels.count))
    let rows = max(1, (panels.count + cols - 1) / cols)
    // Every panel: title (24), plot area (150), tick labels and "step" (40), legend rows of 13.
    let legendRows = panels.map { p in (Set(p.series.map { $0.label }).count + 1) / 2 }.max() ?? 0
    let legendH = 13.0 * Double(legendRows) + 8
    let panelW = 360.0, panelH = 24 + 150 + 40 + legendH, top = 36.0
    let width = Double(cols) * panelW, height = top + Double(rows) * panelH
    var svg = """
    <?xml version="1.0" encoding="UTF-8"?>
    <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-family="sans-serif" font-size="11">
    <rect x="0" y="0" width="\(Int(width))" height="\(Int(height))" fill="white"/>
    <text x="\(Int(width / 2))" y="22" text-anchor="middle" font-size="15">\(xmlEscape(title))</text>

    """
    for (index, panel) in panels.enumerated() {
        let ox = Double(index % cols) * panelW, oy = top + Double(index / cols) * panelH
        // Plot area inside the panel: room for tick labels left/bottom, the title on top.
        let left = ox + 58, right = ox + panelW - 12, upper = oy + 24, lower = oy + 174
        let points = panel.series.flatMap { $0.points }.filter { $0.x.isFinite && $0.y.isFinite }
        svg += "<g>\n<text x=\"\(fmt((left + right) / 2))\" y=\"\(fmt(oy + 14))\" text-anchor=\"middle\" font-size=\"12\">\(xmlEscape(panel.title))</text>\n"
        svg += "<rect x=\"\(fmt(left))\" y=\"\(fmt(upper))\" width=\"\(fmt(right - left))\" height=\"\(fmt(lower - upper))\" fill=\"none\" stroke=\"#444\"/>\n"
        guard !points.isEmpty else {
            svg += "<text x=\"\(fmt((left + right) / 2))\" y=\"\(fmt((upper + lower) / 2))\" text-anchor=\"middle\" fill=\"#888\">no data</text>\n</g>\n"
            continue
        }
        var xlo = points.map { $0.x }.min()!, xhi = points.map { $0.x }.max()!
        var ylo = points.map { $0.y }.min()!, yhi = points.map { $0.y }.max()!
        if xhi == xlo { xlo -= 1; xhi += 1 }
        if yhi == ylo { let pad = abs(ylo) > 0 ? abs(ylo) * 0.05 : 1; ylo -= pad; yhi += pad }
        let ypad = (yhi - ylo) * 0.05
        ylo -= ypad; yhi += ypad
        func sx(_ x: Double) -> Double { left + (x - xlo) / (xhi - xlo) * (right - left) }
        func sy(_ y: Double) -> Double { lower - (y - ylo) / (yhi - ylo) * (lower - upper) }
        for t in niceTicks(xlo, xhi) {
            svg += "<line x1=\"\(fmt(sx(t)))\" y1=\"\(fmt(lower))\" x2=\"\(fmt(sx(t)))\" y2=\"\(fmt(lower + 4))\" stroke=\"#444\"/>"
            svg += "<text x=\"\(fmt(sx(t)))\" y=\"\(fmt(lower + 15))\" text-anchor=\"middle\">\(tickLabel(t))</text>\n"
        }
        for t in niceTicks(ylo, yhi) {
            svg += "<line x1=\"\(fmt(left - 4))\" y1=\"\(fmt(sy(t)))\" x2=\"\(fmt(right))\" y2=\"\(fmt(sy(t)))\" stroke=\"#ddd\"/>"
            svg += "<text x=\"\(fmt(left - 6))\" y=\"\(fmt(sy(t) + 4))\" text-anchor=\"end\">\(tickLabel(t))</text>\n"
        }
        svg += "<text x=\"\(fmt((left + right) / 2))\" y=\"\(fmt(lower + 29))\" text-anchor=\"middle\" fill=\"#444\">step</text>\n"
        for s in panel.series {
            let finite = s.points.filter { $0.x.isFinite && $0.y.isFinite }
            guard !finite.isEmpty else { continue }
            let coords = finite.map { "\(fmt(sx($0.x))),\(fmt(sy($0.y)))" }.joined(separator: " ")
            let dash = s.dash.isEmpty ? "" : " stroke-dasharray=\"\(s.dash)\""
            if finite.count == 1 {
                svg += "<circle cx=\"\(fmt(sx(finite[0].x)))\" cy=\"\(fmt(sy(finite[0].y)))\" r=\"3\" fill=\"\(s.color)\"/>\n"
            } else {
                svg += "<polyline points=\"\(coords)\" fill=\"none\" stroke=\"\(s.color)\" stroke-width=\"1.5\"\(dash)/>\n"
            }
        }
        // Legend under the axes, in two columns; one entry per label (seeds of one task share it).
        var seen = Set<String>()
        let entries = panel.series.filter { seen.insert($0.label).inserted }
        for (k, s) in entries.enumerated() {
            let lx = ox + 20 + Double(k % 2) * (panelW / 2), ly = lower + 40 + Double(k / 2) * 13
            let dash = s.dash.isEmpty ? "" : " stroke-dasharray=\"\(s.dash)\""
            svg += "<line x1=\"\(fmt(lx))\" y1=\"\(fmt(ly - 4))\" x2=\"\(fmt(lx + 22))\" y2=\"\(fmt(ly - 4))\" stroke=\"\(s.color)\" stroke-width=\"2\"\(dash)/>"
            svg += "<text x=\"\(fmt(lx + 27))\" y=\"\(fmt(ly))\">\(xmlEscape(s.label))</text>\n"
        }
        svg += "</g>\n"
    }
    svg += "</svg>\n"
    return svg
}

private func fmt(_ v: Double) -> String { String(format: "%.1f", v) }
