import Foundation
import MTLCore
import XCTest
@testable import MTLMethods

final class BalanceTests: XCTestCase {
    var dir: String!

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "mtl-balance-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    func writeGrads(_ v: Vectors, losses: [Double]?, primary: Int?, names: String?) throws -> String {
        let path = dir + "/grads.h5"
        let f = try H5File.create(path)
        try f.write("grads", v.data.flatMap { $0 }, shape: [v.T, v.P])
        if let losses { try f.write("losses", losses.map { Float($0) }, shape: [losses.count]) }
        if let primary { try f.setAttribute("/", "primary", primary) }
        if let names { try f.setAttribute("/", "task_names", names) }
        f.close()
        return path
    }

    func testPCGradCombinedAndCoefficients() throws {
        let v = Vectors.random(T: 3, P: 100, seed: 31, conflict: 0.6)
        let path = try writeGrads(v, losses: nil, primary: nil, names: "seg,depth,normal")
        let out = dir + "/out.h5"
        let summary = try Balance.run(gradsPath: path, method: "pcgrad", seed: 4, step: 17, params: [:], outPath: out)
        XCTAssertTrue(summary.contains("pcgrad") && summary.contains("seg*"), summary)
        let f = try H5File.open(out)
        defer { f.close() }
        let coefficients: [Double] = try f.read("coefficients")
        let combined: [Float] = try f.read("combined")
        let ctx = MethodContext(step: 17, seed: 4, roles: roles(3), losses: [1, 1, 1], gram: v.gram())
        let direct = try make("pcgrad", T: 3).apply(ctx)
        XCTAssertEqual(coefficients, direct.alpha)
        let expected = v.combine(coefficients)
        for i in 0..<v.P { XCTAssertEqual(Double(combined[i]), expected[i], accuracy: 1e-5 * max(1, abs(expected[i]))) }
        XCTAssertEqual(f.intAttribute("/", "step"), 17)
    }

    func testIALPrimaryAttributeAndLosses() throws {
        let v = Vectors.random(T: 3, P: 64, seed: 32, scales: [3, 1, 0.2])
        let path = try writeGrads(v, losses: [1, 2, 3], primary: 2, names: nil)
        let out = dir + "/ial.h5"
        _ = try Balance.run(gradsPath: path, method: "ial", seed: 0, step: 0, params: ["f": "inv"], outPath: out)
        let f = try H5File.open(out)
        defer { f.close() }
        let c: [Double] = try f.read("coefficients")
        XCTAssertEqual(c[2], 1)
        let n2 = norm(v.double(2))
        for k in 0..<2 { XCTAssertEqual(c[k], 0.5 * n2 / (norm(v.double(k)) + 1e-8), accuracy: 1e-9 * c[k]) }
    }

    func testGradDropWritesCombinedOnly() throws {
        let v = Vectors.random(T: 2, P: 33, seed: 33)
        let path = try writeGrads(v, losses: nil, primary: nil, names: nil)
        let out = dir + "/gd.h5"
        let summary = try Balance.run(gradsPath: path, method: "graddrop", seed: 1, step: 2, params: [:], outPath: out)
        XCTAssertTrue(summary.contains("non-linear"), summary)
        let f = try H5File.open(out)
        defer { f.close() }
        XCTAssertFalse(f.exists("coefficients"))
        let combined: [Float] = try f.read("combined")
        // Every element is the sum of a subset of the task values (kept signs).
        for j in 0..<v.P {
            let a = v.data[0][j], b = v.data[1][j]
            XCTAssertTrue([0, a, b, a + b].contains { abs($0 - combined[j]) < 1e-6 }, "j \(j)")
        }
    }

    func testBadInputsAreOneLineErrors() throws {
        XCTAssertThrowsError(try Balance.run(gradsPath: dir + "/none.h5", method: "ew", seed: 0, step: 0, params: [:], outPath: dir + "/o.h5")) {
            XCTAssertTrue("\($0)".contains("file not found"))
        }
        let path = dir + "/bad.h5"
        let f = try H5File.create(path)
        try f.write("grads", [Float](repeating: 1, count: 6), shape: [6])
        f.close()
        XCTAssertThrowsError(try Balance.run(gradsPath: path, method: "ew", seed: 0, step: 0, params: [:], outPath: dir + "/o.h5")) {
            XCTAssertTrue("\($0)".contains("expected shape [T, P]"), "\($0)")
        }
        let v = Vectors.random(T: 2, P: 4, seed: 1)
        let p2 = try writeGrads(v, losses: [1, 2, 3], primary: 5, names: nil)
        XCTAssertThrowsError(try Balance.run(gradsPath: p2, method: "ew", seed: 0, step: 0, params: [:], outPath: dir + "/o.h5"))
        let p3 = try writeGrads(v, losses: nil, primary: nil, names: nil)
        XCTAssertThrowsError(try Balance.run(gradsPath: p3, method: "autol", seed: 0, step: 0, params: [:], outPath: dir + "/o.h5")) {
            XCTAssertTrue("\($0)".contains("look-ahead"), "\($0)")
        }
    }
}
