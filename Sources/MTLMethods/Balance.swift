import Foundation
import MTLCore

/// `mtl balance`: apply one method once to given per-task gradients, for debugging methods and
/// cross-checking them against other implementations (LibMTL, nash-mtl, ...).
public enum Balance {
    /// Reads from `gradsPath`: `grads` [T, P] (float32; other numeric types are converted),
    /// optional `losses` [T] (absent → all 1), root attribute `primary` (task index, default 0),
    /// optional root string attribute `task_names` (comma- or space-separated; default task0..).
    /// The Gram is formed in Double from the vectors; the method runs at the parameter level
    /// (GradDrop: sign-free variant). Writes to `outPath`: `combined` [P] float32 and, for linear
    /// methods, `coefficients` [T] and `decoder_weights` [T] (float64); attributes method, seed,
    /// step. Returns a short human-readable summary.
    public static func run(gradsPath: String, method: String, seed: UInt64, step: Int,
                           params: [String: String], outPath: String) throws -> String {
        let file = try H5File.open(gradsPath)
        defer { file.close() }
        guard file.exists("grads") else { throw MTLError("\(gradsPath): missing dataset grads (expected [T, P] float32)") }
        let shape = try file.shape("grads")
        guard shape.count == 2, shape[0] >= 1, shape[1] >= 1 else {
            throw MTLError("\(gradsPath): grads: expected shape [T, P] with T, P >= 1, found \(shape)")
        }
        let cls = try file.typeClass("grads")
        guard cls != .string && cls != .other else {
            throw MTLError("\(gradsPath): grads: expected float32, found \(cls.rawValue)")
        }
        let T = shape[0], P = shape[1]
        var values: [Float] = try file.read("grads")
        for v in values where !v.isFinite {
            throw MTLError("\(gradsPath): grads: contains \(v) (expected finite values)")
        }
        var losses = [Double](repeating: 1, count: T)
        let haveLosses = file.exists("losses")
        if haveLosses {
            let ls = try file.shape("losses")
            guard ls.reduce(1, *) == T else { throw MTLError("\(gradsPath): losses: expected \(T) values (one per task), found shape \(ls)") }
            losses = try file.read("losses")
        }
        let primary = file.intAttribute("/", "primary") ?? 0
        guard (0..<T).contains(primary) else {
            throw MTLError("\(gradsPath): attribute primary: expected a task index in 0..<\(T), found \(primary)")
        }
        var names = (0..<T).map { "task\($0)" }
        if let s = file.stringAttribute("/", "task_names") {
            let parts = s.split(whereSeparator: { $0 == "," || $0 == " " }).map(String.init)
            guard parts.count == T else {
                throw MTLError("\(gradsPath): attribute task_names: expected \(T) names, found \(parts.count) in '\(s)'")
            }
            names = parts
        }
        let roles = (0..<T).map { $0 == primary ? TaskRole.primary : TaskRole.auxiliary }
        let m = try makeMethod(name: method, taskNames: names, roles: roles, params: params)
        if m is AutoLambda {
            throw MTLError("balance: autol learns its weights from a look-ahead of the network (virtual step, second batch), which per-task gradients alone do not give; use mtl train")
        }

        let original = values  // untouched copy: a method may overwrite the vectors
        var combined = [Float](repeating: 0, count: P)
        let result: MethodResult = try values.withUnsafeMutableBufferPointer { all in
            let vectors = (0..<T).map { UnsafeMutableBufferPointer(rebasing: all[($0 * P)..<(($0 + 1) * P)]) }
            let gram = gramMatrix(vectors.map { UnsafeBufferPointer($0) })
            let ctx = MethodContext(step: step, epoch: 0, seed: seed, roles: roles, losses: losses, gram: gram,
                                    grads: vectors, epochEnded: false, level: .parameters)
            return try m.apply(ctx)
        }
        try result.output.check(taskCount: T, method: m.name)
        let coefficients: [Double]?
        switch result.output {
        case .lossWeights(let alpha), .coefficients(let alpha, _):
            coefficients = alpha
            original.withUnsafeBufferPointer { all in
                let vectors = (0..<T).map { UnsafeBufferPointer(rebasing: all[($0 * P)..<(($0 + 1) * P)]) }
                combined.withUnsafeMutableBufferPointer { combineGradients(alpha, vectors, into: $0) }
            }
        case .combinedGradient:
            coefficients = nil
            combined = Array(values[0..<P])   // the method wrote it over the first vector
        case .multipliers:
            throw MTLError("balance: method \(m.name) returned representation-level multipliers at the parameter level")
        }

        let out = try H5File.create(outPath)
        defer { out.close() }
        try out.write("combined", combined, shape: [P])
        if let coefficients {
            try out.write("coefficients", coefficients, shape: [T])
            try out.write("decoder_weights", result.output.decoderWeights, shape: [T])
        }
        try out.setAttribute("/", "method", m.name)
        try out.setAttribute("/", "seed", [UInt64(seed)].map { Int64(bitPattern: $0) })
        try out.setAttribute("/", "step", step)
        out.flush()

        var norm = 0.0
        for v in combined { norm += Double(v) * Double(v) }
        func fmt(_ x: Double) -> String { String(format: "%.6g", x) }
        var lines = ["\(m.name): T=\(T) tasks (\(names.enumerated().map { $0.offset == primary ? $0.element + "*" : $0.element }.joined(separator: ", "))), P=\(P), seed \(seed), step \(step)\(haveLosses ? "" : ", losses absent (1.0 used)")"]
        if let coefficients {
            lines.append("coefficients: " + coefficients.map(fmt).joined(separator: " "))
        } else {
            lines.append("non-linear: combined gradient written directly")
        }
        lines.append("|combined| = \(fmt(norm.squareRoot()))")
        if !result.logs.isEmpty { lines.append(result.logs.map { "\($0.0)=\(fmt($0.1))" }.joined(separator: " ")) }
        lines.append("wrote \(outPath)")
        return lines.joined(separator: "\n")
    }
}
