import Foundation

/// RGB8 images for `mtl predict`: label palettes, a perceptual colour map with a labelled colour bar,
/// normals as colours, and a side-by-side grid. Pure functions over row-major RGB triples.
public struct RGBImage: Equatable {
    public var width: Int
    public var height: Int
    public var pixels: [UInt8]   // width·height RGB triples

    public init(width: Int, height: Int, fill: (UInt8, UInt8, UInt8) = (0, 0, 0)) {
        self.width = width
        self.height = height
        pixels = [UInt8](repeating: 0, count: width * height * 3)
        if fill != (0, 0, 0) { for i in 0..<(width * height) { set(i % width, i / width, fill) } }
    }

    public mutating func set(_ x: Int, _ y: Int, _ c: (UInt8, UInt8, UInt8)) {
        let o = (y * width + x) * 3
        pixels[o] = c.0; pixels[o + 1] = c.1; pixels[o + 2] = c.2
    }

    /// Copies `img` with its top-left corner at (x0, y0) (clipped).
    public mutating func paste(_ img: RGBImage, x0: Int, y0: Int) {
        for y in 0..<img.height where y0 + y < height {
            for x in 0..<img.width where x0 + x < width {
                let s = (y * img.width + x) * 3, d = ((y0 + y) * width + x0 + x) * 3
                pixels[d] = img.pixels[s]; pixels[d + 1] = img.pixels[s + 1]; pixels[d + 2] = img.pixels[s + 2]
            }
        }
    }
}

public enum Palettes {
    /// The PASCAL VOC palette (VOCdevkit's bit-interleaving rule): label k's colour from its bits.
    public static func voc(_ count: Int = 256) -> [UInt8] {
        var out: [UInt8] = []
        for k in 0..<count {
            var r = 0, g = 0, b = 0, c = k
            for j in 0..<8 {
                r |= ((c >> 0) & 1) << (7 - j)
                g |= ((c >> 1) & 1) << (7 - j)
                b |= ((c >> 2) & 1) << (7 - j)
                c >>= 3
            }
            out += [UInt8(r), UInt8(g), UInt8(b)]
        }
        return out
    }

    /// Cityscapes' official colours (cityscapesScripts labels.py): the 19 train ids, and the 7
    /// categories flat, construction, object, nature, sky, human, vehicle (the colour of each
    /// category's most common class).
    public static let cityscapes19: [UInt8] = [
        128, 64, 128, 244, 35, 232, 70, 70, 70, 102, 102, 156, 190, 153, 153, 153, 153, 153, 250, 170, 30,
        220, 220, 0, 107, 142, 35, 152, 251, 152, 70, 130, 180, 220, 20, 60, 255, 0, 0, 0, 0, 142, 0, 0, 70,
        0, 60, 100, 0, 80, 100, 0, 0, 230, 119, 11, 32,
    ]
    public static let cityscapes7: [UInt8] = [128, 64, 128, 70, 70, 70, 153, 153, 153, 107, 142, 35, 70, 130, 180,
                                             220, 20, 60, 0, 0, 142]

    /// The palette for a label map of `classes` classes of dataset `dataset` (the root attribute), as
    /// 256 RGB entries; index 255 (ignore) is black.
    public static func forDataset(_ dataset: String, classes: Int) -> [UInt8] {
        var p: [UInt8]
        switch (dataset, classes) {
        case ("cityscapes", 19): p = cityscapes19
        case ("cityscapes", 7): p = cityscapes7
        default: p = Array(voc(256).dropFirst(3)) + [0, 0, 0]   // VOC without its black background slot
        }
        if p.count < 768 { p += voc(256)[p.count...] }
        p = Array(p.prefix(768))
        p[765] = 0; p[766] = 0; p[767] = 0
        return p
    }
}

public enum Colormap {
    /// matplotlib's viridis at t = 0, 0.1, …, 1 (perceptually uniform, readable in grey and by
    /// colour-blind readers), interpolated linearly in between.
    static let viridis: [(Double, Double, Double)] = [
        (0.267, 0.005, 0.329), (0.283, 0.141, 0.458), (0.254, 0.265, 0.530), (0.207, 0.372, 0.553),
        (0.164, 0.471, 0.558), (0.128, 0.567, 0.551), (0.135, 0.659, 0.518), (0.267, 0.749, 0.441),
        (0.478, 0.821, 0.318), (0.741, 0.873, 0.150), (0.993, 0.906, 0.144),
    ]

    /// Viridis at t ∈ [0, 1] (clamped).
    public static func viridis(_ t: Double) -> (UInt8, UInt8, UInt8) {
        let u = min(max(t.isFinite ? t : 0, 0), 1) * Double(viridis.count - 1)
        let i = min(Int(u), viridis.count - 2), f = u - Double(i)
        let a = viridis[i], b = viridis[i + 1]
        func c(_ x: Double, _ y: Double) -> UInt8 { UInt8(((x + (y - x) * f) * 255).rounded()) }
        return (c(a.0, b.0), c(a.1, b.1), c(a.2, b.2))
    }

    /// A depth map in viridis over [0, maxDepth] with a colour bar on the right labelled with the
    /// range (`barWidth` extra columns); invalid pixels (`valid` false) are black.
    public static let barWidth = 24
    public static func depth(_ values: [Float], valid: [Bool]?, width: Int, height: Int, maxDepth: Double) -> RGBImage {
        var img = RGBImage(width: width + barWidth, height: height, fill: (255, 255, 255))
        for y in 0..<height {
            for x in 0..<width {
                let i = y * width + x
                img.set(x, y, valid?[i] == false ? (0, 0, 0) : viridis(Double(values[i]) / maxDepth))
            }
            // The bar: top = maxDepth, bottom = 0.
            let c = viridis(1 - Double(y) / Double(max(1, height - 1)))
            for x in (width + 2)..<(width + 7) { img.set(x, y, c) }
        }
        let top = label(maxDepth) + "m", bottom = "0m"
        Glyphs.draw(top, into: &img, x: width + 8, y: 0)
        Glyphs.draw(bottom, into: &img, x: width + 8, y: max(0, height - Glyphs.height))
        return img
    }

    static func label(_ v: Double) -> String {
        v >= 10 || v == v.rounded() ? String(Int(v.rounded())) : String(format: "%.1f", v)
    }

    /// Unit normals n ∈ [−1, 1]³ (channel-planar, 3 × width·height) as RGB = (n + 1)/2; predictions
    /// are normalised first; zero vectors (invalid) are black.
    public static func normals(_ planes: [Float], width: Int, height: Int) -> RGBImage {
        var img = RGBImage(width: width, height: height)
        let n = width * height
        for i in 0..<n {
            let x = Double(planes[i]), y = Double(planes[n + i]), z = Double(planes[2 * n + i])
            let norm = (x * x + y * y + z * z).squareRoot()
            guard norm > 1e-12 else { continue }
            func c(_ v: Double) -> UInt8 { UInt8(((v / norm + 1) / 2 * 255).rounded()) }
            img.set(i % width, i / width, (c(x), c(y), c(z)))
        }
        return img
    }

    /// Values in [0, 1] as grey; invalid pixels red (so that they differ from 0 and 1).
    public static func grey(_ values: [Float], valid: [Bool]?, width: Int, height: Int) -> RGBImage {
        var img = RGBImage(width: width, height: height)
        for i in 0..<(width * height) {
            if valid?[i] == false { img.set(i % width, i / width, (160, 0, 0)); continue }
            let g = UInt8((min(max(Double(values[i]), 0), 1) * 255).rounded())
            img.set(i % width, i / width, (g, g, g))
        }
        return img
    }

    /// Label indices (255 = ignore) through a 256-entry palette.
    public static func labels(_ indices: [UInt8], palette: [UInt8], width: Int, height: Int) -> RGBImage {
        var img = RGBImage(width: width, height: height)
        for i in 0..<(width * height) {
            let k = Int(indices[i]) * 3
            img.set(i % width, i / width, (palette[k], palette[k + 1], palette[k + 2]))
        }
        return img
    }

    /// Rows of images side by side with a `gap` of white; cells keep their own sizes.
    public static func grid(_ rows: [[RGBImage]], gap: Int = 4) -> RGBImage {
        let columns = rows.map { $0.count }.max() ?? 0
        var colWidth = [Int](repeating: 0, count: columns)
        for row in rows { for (j, img) in row.enumerated() { colWidth[j] = max(colWidth[j], img.width) } }
        let rowHeight = rows.map { $0.map { $0.height }.max() ?? 0 }
        let width = colWidth.reduce(0, +) + gap * max(0, columns - 1)
        let height = rowHeight.reduce(0, +) + gap * max(0, rows.count - 1)
        var out = RGBImage(width: max(1, width), height: max(1, height), fill: (255, 255, 255))
        var y = 0
        for (i, row) in rows.enumerated() {
            var x = 0
            for (j, img) in row.enumerated() {
                out.paste(img, x0: x, y0: y)
                x += colWidth[j] + gap
            }
            y += rowHeight[i] + gap
        }
        return out
    }
}

/// A 3×5 pixel font for the colour bar's numbers (digits, '.', 'm'), drawn in black.
enum Glyphs {
    static let height = 5
    static let shapes: [Character: [String]] = [
        "0": ["###", "#.#", "#.#", "#.#", "###"], "1": [".#.", "##.", ".#.", ".#.", "###"],
        "2": ["###", "..#", "###", "#..", "###"], "3": ["###", "..#", "###", "..#", "###"],
        "4": ["#.#", "#.#", "###", "..#", "..#"], "5": ["###", "#..", "###", "..#", "###"],
        "6": ["###", "#..", "###", "#.#", "###"], "7": ["###", "..#", "..#", "..#", "..#"],
        "8": ["###", "#.#", "###", "#.#", "###"], "9": ["###", "#.#", "###", "..#", "###"],
        ".": ["...", "...", "...", "...", ".#."], "m": ["...", "...", "###", "###", "#.#"],
    ]

    static func draw(_ text: String, into img: inout RGBImage, x: Int, y: Int) {
        var cx = x
        for ch in text {
            guard let rows = shapes[ch] else { cx += 4; continue }
            for (dy, row) in rows.enumerated() {
                for (dx, bit) in row.enumerated() where bit == "#" {
                    let px = cx + dx, py = y + dy
                    if px < img.width && py < img.height { img.set(px, py, (0, 0, 0)) }
                }
            }
            cx += 4
        }
    }
}
