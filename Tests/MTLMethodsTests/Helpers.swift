import MTLCore
import XCTest
@testable import MTLMethods

/// Per-task test vectors held as Float (like the trainer's), with Double helpers.
final class Vectors {
    var data: [[Float]]
    var T: Int { data.count }
    var P: Int { data[0].count }

    init(_ data: [[Float]]) { self.data = data }

    /// Random vectors; `conflict` mixes −conflict·g_0 into the others so that PCGrad has work.
    static func random(T: Int, P: Int, seed: UInt64, conflict: Float = 0, scales: [Float]? = nil) -> Vectors {
        var rng = Philox(seed: seed, stream: 77)
        var d = (0..<T).map { _ in (0..<P).map { _ in rng.normal() } }
        for t in 1..<max(T, 1) { for i in 0..<P { d[t][i] -= conflict * d[0][i] } }
        if let scales { for t in 0..<T { for i in 0..<P { d[t][i] *= scales[t] } } }
        return Vectors(d)
    }

    func gram() -> [Double] {
        data.withUnsafeBufferPointers { gramMatrix($0) }
    }

    /// Σ of the Grams of the two halves [0, P/2) and [P/2, P): what two ranks produce.
    func splitGram() -> [Double] {
        let h = (P + 1) / 2
        let a = Vectors(data.map { Array($0[0..<h]) }).gram()
        let b = Vectors(data.map { Array($0[h..<P]) }).gram()
        return zip(a, b).map { $0 + $1 }
    }

    func combine(_ alpha: [Double]) -> [Double] {
        (0..<P).map { i in (0..<T).reduce(0.0) { $0 + alpha[$1] * Double(data[$1][i]) } }
    }

    func double(_ t: Int) -> [Double] { data[t].map(Double.init) }
}

extension Array where Element == [Float] {
    func withUnsafeBufferPointers<R>(_ body: ([UnsafeBufferPointer<Float>]) -> R) -> R {
        var ptrs: [UnsafeMutablePointer<Float>] = []
        for v in self {
            let p = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(v.count, 1))
            p.initialize(from: v, count: v.count)
            ptrs.append(p)
        }
        defer { ptrs.forEach { $0.deallocate() } }
        return body(zip(ptrs, self).map { UnsafeBufferPointer(start: $0.0, count: $0.1.count) })
    }
}

func dot(_ a: [Double], _ b: [Double]) -> Double { zip(a, b).reduce(0) { $0 + $1.0 * $1.1 } }
func norm(_ a: [Double]) -> Double { dot(a, a).squareRoot() }

func roles(_ T: Int, primary: Int? = 0) -> [TaskRole] {
    (0..<T).map { $0 == primary ? .primary : .auxiliary }
}

func names(_ T: Int) -> [String] { ["seg", "depth", "normal", "edge", "parts", "sal"].prefix(T).map { $0 } + (T > 6 ? (6..<T).map { "t\($0)" } : []) }

func make(_ name: String, T: Int, primary: Int? = 0, _ params: [String: String] = [:]) throws -> MultiTaskMethod {
    try makeMethod(name: name, taskNames: names(T), roles: roles(T, primary: primary), params: params)
}

func context(step: Int = 0, epoch: Int = 0, seed: UInt64 = 7, T: Int, primary: Int? = 0, losses: [Double]? = nil,
             gram: [Double]? = nil, epochEnded: Bool = false) -> MethodContext {
    MethodContext(step: step, epoch: epoch, seed: seed, roles: roles(T, primary: primary),
                  losses: losses ?? [Double](repeating: 1, count: T), gram: gram, epochEnded: epochEnded)
}

func assertClose(_ a: [Double], _ b: [Double], _ tol: Double, _ msg: String = "", file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, msg, file: file, line: line)
    for i in 0..<min(a.count, b.count) {
        XCTAssertEqual(a[i], b[i], accuracy: tol * max(1, abs(b[i])), "\(msg) [\(i)] \(a) vs \(b)", file: file, line: line)
    }
}

func logValue(_ r: MethodResult, _ key: String) -> Double? { r.logs.first { $0.0 == key }?.1 }

extension MethodResult {
    /// α of a linear result; empty for a non-linear one, so that comparisons with it fail.
    var alpha: [Double] { output.sharedCoefficients ?? [] }
    var decoderWeights: [Double] { output.decoderWeights }
}
