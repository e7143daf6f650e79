import Foundation
import MTLCore
import XCTest
@testable import MTLData

/// Asserts that `body` throws an MTLError that is one line and contains every word of `words`.
func assertMTLError(_ words: [String], file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> Void) {
    do {
        try body()
        XCTFail("expected an MTLError containing \(words), nothing was thrown", file: file, line: line)
    } catch let e as MTLError {
        if ProcessInfo.processInfo.environment["MTL_SHOW_ERRORS"] != nil { print("error: \(e.message)") }
        XCTAssertFalse(e.message.contains("\n"), "error is not one line: \(e.message)", file: file, line: line)
        for w in words {
            XCTAssertTrue(e.message.contains(w), "error \"\(e.message)\" does not contain \"\(w)\"", file: file, line: line)
        }
    } catch {
        XCTFail("expected an MTLError, got \(error)", file: file, line: line)
    }
}

/// A small hand-written file in the schema with known values (N=4, H=2, W=3), every task.
/// Sample i, pixel p (row-major): image byte (i*60 + p*3 + c) % 256; seg = (i + p) % 4 - 1;
/// depth = i + p/10; normals = (i, p, 1) / |.|; edges = [0,1,255][(i+p)%3]; parts = (i*p) % 7;
/// saliency = [1,0,255][(i+p)%3]. Images carry mean/std only when `withMeanStd`.
struct TinyFile {
    static let n = 4, h = 2, w = 3

    static func image(_ i: Int, _ p: Int, _ c: Int) -> UInt8 { UInt8((i * 60 + p * 3 + c) % 256) }
    static func seg(_ i: Int, _ p: Int) -> Int16 { Int16((i + p) % 4 - 1) }
    static func depth(_ i: Int, _ p: Int) -> Float { Float(i) + Float(p) / 10 }
    static func normal(_ i: Int, _ p: Int) -> [Float] {
        let v = [Float(i), Float(p), 1]
        let norm = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).squareRoot()
        return v.map { $0 / norm }
    }
    static func edge(_ i: Int, _ p: Int) -> UInt8 { [0, 1, 255][(i + p) % 3] }
    static func part(_ i: Int, _ p: Int) -> Int16 { Int16((i * p) % 7) }
    static func saliency(_ i: Int, _ p: Int) -> UInt8 { [1, 0, 255][(i + p) % 3] }

    static let mean: [Double] = [0.4, 0.5, 0.6]
    static let std: [Double] = [0.2, 0.25, 0.3]

    @discardableResult
    static func write(_ path: String, withMeanStd: Bool = true, formatVersion: Int = 1) throws -> String {
        let f = try H5File.create(path)
        defer { f.close() }
        let n = self.n, h = self.h, w = self.w, hw = h * w
        try f.setAttribute("/", "format", "mtdp-hdf5")
        try f.setAttribute("/", "format_version", formatVersion)
        try f.setAttribute("/", "dataset", "tiny")
        try f.setAttribute("/", "variant", "tiny-2x3")
        try f.createGroup("/train")
        try f.setAttribute("/train", "num_samples", n)
        try f.setAttribute("/train", "height", h)
        try f.setAttribute("/train", "width", w)
        var images: [UInt8] = [], seg: [Int16] = [], depth: [Float] = [], normals: [Float] = []
        var edges: [UInt8] = [], parts: [Int16] = [], saliency: [UInt8] = []
        for i in 0..<n {
            for p in 0..<hw {
                for c in 0..<3 { images.append(image(i, p, c)) }
                seg.append(self.seg(i, p))
                depth.append(self.depth(i, p))
                normals.append(contentsOf: normal(i, p))
                edges.append(edge(i, p))
                parts.append(part(i, p))
                saliency.append(self.saliency(i, p))
            }
        }
        try f.write("/train/images", images, shape: [n, h, w, 3], chunks: [1, h, w, 3])
        if withMeanStd {
            try f.setAttribute("/train/images", "mean", mean)
            try f.setAttribute("/train/images", "std", std)
        }
        try f.write("/train/seg", seg, shape: [n, h, w], chunks: [1, h, w], deflate: 4)
        try f.setAttribute("/train/seg", "num_classes", 3)
        try f.write("/train/depth", depth, shape: [n, h, w], chunks: [1, h, w])
        try f.write("/train/normals", normals, shape: [n, h, w, 3], chunks: [1, h, w, 3])
        try f.write("/train/edges", edges, shape: [n, h, w], chunks: [1, h, w], deflate: 4)
        try f.write("/train/parts", parts, shape: [n, h, w], chunks: [1, h, w], deflate: 4)
        try f.setAttribute("/train/parts", "num_classes", 7)
        try f.write("/train/saliency", saliency, shape: [n, h, w], chunks: [1, h, w], deflate: 4)
        return path
    }
}

/// Reads a whole dataset's stored bytes in its own type (for byte comparisons).
func datasetBytes(_ f: H5File, _ name: String) throws -> [UInt8] {
    switch try f.typeClass(name) {
    case .uint8: return try f.read(name, as: UInt8.self)
    case .int16: return try f.read(name, as: Int16.self).withUnsafeBytes { Array($0) }
    case .float32: return try f.read(name, as: Float.self).withUnsafeBytes { Array($0) }
    case .string: return Array(try f.readStrings(name).joined(separator: "\u{0}").utf8)
    default: XCTFail("unexpected type of \(name)"); return []
    }
}
