import Foundation
import MTLCore
import XCTest
@testable import MTLMethods

final class InterfaceTests: XCTestCase {
    let T = 3
    lazy var v = Vectors.random(T: T, P: 3001, seed: 21, conflict: 0.4, scales: [1, 2, 0.5])

    /// Runs `steps` steps (two epochs' worth of epoch changes) and returns every result.
    func run(_ m: MultiTaskMethod, gram: [Double], from: Int = 0, steps: Int = 6) throws -> [MethodResult] {
        try (from..<(from + steps)).map { step in
            let losses = [1.0 + 0.1 * Double(step), 2.0 / Double(step + 1), 0.7]
            if m.needsGradients {
                var copies = v.data
                return try copies.withUnsafeMutableBufferPointerArray { bufs in
                    try m.apply(MethodContext(step: step, epoch: step / 2, seed: 5, roles: roles(T), losses: losses,
                                              gram: gram, grads: bufs, epochEnded: step > 0 && step % 2 == 0, level: .parameters))
                }
            }
            return try m.apply(MethodContext(step: step, epoch: step / 2, seed: 5, roles: roles(T), losses: losses,
                                             gram: m.needsGram ? gram : nil, epochEnded: step > 0 && step % 2 == 0))
        }
    }

    func flat(_ rs: [MethodResult]) -> [Double] {
        rs.flatMap { $0.alpha + $0.decoderWeights + $0.logs.map { $0.1 } }
    }

    func testEveryNameBuilds() throws {
        for name in methodNames { XCTAssertEqual(try make(name, T: T).name, name) }
    }

    /// The kind of output each method gives (the engine's path depends on it: a joint decoder under a
    /// `.lossWeights` method runs one backward of Σ_t w_t L_t, under `.coefficients` one per task).
    func testOutputKinds() throws {
        let lossWeights: Set = ["ew", "uw", "dwa", "rlw", "gradnorm", "mgda", "lps", "olaux", "autol", "imtl-l"]
        let coefficients: Set = ["pcgrad", "cagrad", "imtl", "imtl-g", "nash", "aligned", "gcs", "ial"]
        XCTAssertEqual(lossWeights.union(coefficients).union(["graddrop"]), Set(methodNames))
        for name in methodNames {
            for r in try run(make(name, T: T), gram: v.gram(), steps: 3) {
                switch r.output {
                case .lossWeights(let w):
                    XCTAssertTrue(lossWeights.contains(name), "\(name) gave loss weights")
                    XCTAssertEqual(w.count, T, name)
                case .coefficients(let alpha, let w):
                    XCTAssertTrue(coefficients.contains(name), "\(name) gave coefficients")
                    XCTAssertEqual(alpha.count, T, name)
                    XCTAssertEqual(w.count, T, name)
                case .combinedGradient(let w):  // `run` passes GradDrop the vectors at the parameter level
                    XCTAssertEqual(name, "graddrop")
                    XCTAssertEqual(w, [1, 1, 1])
                case .multipliers:
                    XCTFail("\(name) gave multipliers at the parameter level")
                }
            }
        }
        // IAL with every task primary is plain UW: loss weights.
        let allPrimary = try makeMethod(name: "ial", taskNames: names(T), roles: [TaskRole](repeating: .primary, count: T), params: [:])
        let r = try allPrimary.apply(MethodContext(step: 0, roles: [TaskRole](repeating: .primary, count: T),
                                                    losses: [1, 1, 1], gram: v.gram()))
        XCTAssertEqual(r.output, .lossWeights([0.5, 0.5, 0.5]))
        // Wrong lengths are a one-line error naming the method.
        XCTAssertThrowsError(try MethodOutput.coefficients(shared: [1, 1], decoder: [1, 1, 1]).check(taskCount: 3, method: "x")) {
            XCTAssertEqual("\($0)", "method x: returned 2 shared coefficients, expected 3 (one per task)")
        }
    }

    func testDeterministicForIdenticalInputs() throws {
        for name in methodNames where name != "graddrop" {
            let a = try run(make(name, T: T), gram: v.gram()), b = try run(make(name, T: T), gram: v.gram())
            XCTAssertEqual(flat(a), flat(b), name)  // bitwise
            XCTAssertEqual(a.map { $0.logs.map { $0.0 } }, b.map { $0.logs.map { $0.0 } }, name)
        }
    }

    /// Two ranks each hold half of the representation: the global Gram is the sum of their
    /// partial Grams, and the coefficients must not depend on that split.
    func testRepresentationCoefficientsInvariantToSplitGram() throws {
        let whole = v.gram(), split = v.splitGram()
        XCTAssertNotEqual(whole, split, "the test needs different rounding to mean anything")
        for name in methodNames where name != "graddrop" {
            let m1 = try make(name, T: T), m2 = try make(name, T: T)
            guard m1.needsGram else { continue }
            let a = try run(m1, gram: whole), b = try run(m2, gram: split)
            for (ra, rb) in zip(a, b) {
                let scale = ra.alpha.map(abs).max()!
                for t in 0..<T {
                    XCTAssertEqual(ra.alpha[t], rb.alpha[t], accuracy: 1e-9 * max(scale, 1e-300), name)
                    XCTAssertEqual(ra.decoderWeights[t], rb.decoderWeights[t], accuracy: 1e-9 * max(abs(ra.decoderWeights[t]), 1), name)
                }
            }
        }
    }

    func testGramFromSplitVectorsMatchesWhole() {
        let K = v.gram(), S = v.splitGram()
        for i in 0..<K.count { XCTAssertEqual(K[i], S[i], accuracy: 1e-12 * abs(K[0])) }
        // And the chunked Gram equals a direct double loop.
        for i in 0..<T { for j in 0..<T { XCTAssertEqual(K[i * T + j], dot(v.double(i), v.double(j)), accuracy: 1e-12 * abs(K[0])) } }
    }

    func testStateRoundTripGivesIdenticalContinuation() throws {
        for name in methodNames {
            let a = try make(name, T: T)
            _ = try run(a, gram: v.gram(), steps: 5)
            let saved = a.stateValues()
            let b = try make(name, T: T)
            try b.loadState(saved)
            let ca = try run(a, gram: v.gram(), from: 5, steps: 4), cb = try run(b, gram: v.gram(), from: 5, steps: 4)
            XCTAssertEqual(flat(ca), flat(cb), name)
            XCTAssertEqual(a.stateValues(), b.stateValues(), name)
        }
    }

    func testLoadStateRejectsForeignState() throws {
        let uw = try make("uw", T: 3)
        XCTAssertThrowsError(try uw.loadState(["s": [0, 0]])) { e in
            XCTAssertTrue("\(e)".contains("'s' has 2 values, expected 3"), "\(e)")
        }
        XCTAssertThrowsError(try make("ew", T: 3).loadState(["s": [0]]))
        XCTAssertThrowsError(try uw.loadState(["w": [1, 1, 1]]))
    }

    func testParameterErrors() {
        func message(_ f: () throws -> Any) -> String {
            do { _ = try f(); return "" } catch { return "\(error)" }
        }
        let unknown = message { try make("uw", T: 2, ["lrr": "0.1"]) }
        XCTAssertTrue(unknown.contains("method.uw.lrr") && unknown.contains("did you mean 'lr'") && unknown.contains("valid keys: init, lr"), unknown)
        XCTAssertFalse(unknown.contains("\n"))
        let bad = message { try make("uw", T: 2, ["lr": "fast"]) }
        XCTAssertTrue(bad.contains("method.uw.lr: expected a number, found 'fast'"), bad)
        let choice = message { try make("ial", T: 2, ["f": "sigmod"]) }
        XCTAssertTrue(choice.contains("did you mean 'sigmoid'"), choice)
        let name = message { try make("pcgard", T: 2) }
        XCTAssertTrue(name.contains("did you mean 'pcgrad'"), name)
        let other = message { try make("uw", T: 2, ["method.ial.lr": "0.1"]) }
        XCTAssertTrue(other.contains("another method"), other)
        let none = message { try make("pcgrad", T: 2, ["c": "1"]) }
        XCTAssertTrue(none.contains("no hyperparameters"), none)
        XCTAssertTrue(message { try make("autol", T: 2, primary: nil) }.contains("at least one primary"))
        XCTAssertTrue(message { try make("autol", T: 2, ["lr": "-1"]) }.contains("method.autol.lr"))
        XCTAssertEqual(try make("auto-lambda", T: 2).name, "autol")
        XCTAssertTrue(message { try make("gcs", T: 2, primary: nil) }.contains("exactly one primary"))
        // Full prefixes and the trainer's own keys are accepted.
        XCTAssertNoThrow(try make("imtl-l", T: 2, ["method.imtl.lr": "0.1", "method.name": "imtl-l", "method.level": "representation"]))
    }

    func testContextErrors() throws {
        let m = try make("pcgrad", T: 2)
        XCTAssertThrowsError(try m.apply(context(T: 2)))  // no Gram
        XCTAssertThrowsError(try m.apply(context(T: 2, gram: [1, 0, 0])))
        XCTAssertThrowsError(try m.apply(context(T: 2, gram: [1, 0, 0, .nan])))
        XCTAssertThrowsError(try make("uw", T: 2).apply(context(T: 2, losses: [1, .infinity])))
    }
}

extension Array where Element == [Float] {
    mutating func withUnsafeMutableBufferPointerArray<R>(_ body: ([UnsafeMutableBufferPointer<Float>]) throws -> R) rethrows -> R {
        var ptrs: [UnsafeMutablePointer<Float>] = []
        for v in self {
            let p = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(v.count, 1))
            p.initialize(from: v, count: v.count)
            ptrs.append(p)
        }
        defer { ptrs.forEach { $0.deallocate() } }
        let bufs = zip(ptrs, self).map { UnsafeMutableBufferPointer(start: $0.0, count: $0.1.count) }
        let r = try body(bufs)
        for i in indices { self[i] = [Float](bufs[i]) }
        return r
    }
}

/// Auto-λ's own part (the look-ahead is in MTLEngine/AutoLambdaStep.swift and tested there).
final class AutoLambdaMethodTests: XCTestCase {
    func testWeightsAreLambdaAndAdamMovesThem() throws {
        let m = try XCTUnwrap(try make("autol", T: 3, ["lr": "0.01", "init": "0.2"]) as? AutoLambda)
        let r = try m.apply(context(T: 3))
        XCTAssertEqual(r.alpha, [0.2, 0.2, 0.2])
        XCTAssertEqual(r.decoderWeights, [0.2, 0.2, 0.2])
        XCTAssertEqual(r.logs.map { $0.0 }, ["lambda.seg", "lambda.depth", "lambda.normal",
                                             "metagrad.seg", "metagrad.depth", "metagrad.normal", "d_norm"])
        XCTAssertEqual(m.primaryWeights, [1, 0, 0])
        // torch.optim.Adam's first step moves each weight by lr against the sign of its gradient.
        m.update(metaGradient: [-3, 0.5, 0], directionNorm: 2)
        XCTAssertEqual(m.lambda[0], 0.21, accuracy: 1e-9)
        XCTAssertEqual(m.lambda[1], 0.19, accuracy: 1e-9)
        XCTAssertEqual(m.lambda[2], 0.2)
        XCTAssertEqual(try m.apply(context(T: 3)).alpha, m.lambda)
        // apply() does not change anything: the look-ahead alone moves λ.
        XCTAssertEqual(try m.apply(context(T: 3)).alpha, m.lambda)
    }

    func testStateHoldsLambdaAdamAndValPosition() throws {
        let a = try XCTUnwrap(try make("autol", T: 2) as? AutoLambda)
        a.update(metaGradient: [1, -2], directionNorm: 1)
        a.valPosition = 17
        let b = try XCTUnwrap(try make("autol", T: 2) as? AutoLambda)
        try b.loadState(a.stateValues())
        XCTAssertEqual(b.lambda, a.lambda)
        XCTAssertEqual(b.valPosition, 17)
        a.update(metaGradient: [0.3, 0.1], directionNorm: 1)
        b.update(metaGradient: [0.3, 0.1], directionNorm: 1)
        XCTAssertEqual(a.stateValues(), b.stateValues())
        var bad = a.stateValues()
        bad["val_position"] = [1.5]
        XCTAssertThrowsError(try b.loadState(bad))
        XCTAssertThrowsError(try b.loadState(["lambda": [0.1, 0.1]]))
    }
}
