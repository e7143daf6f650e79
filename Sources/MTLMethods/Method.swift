import MTLCore

// The one interface every multi-task method sits behind. The trainer calls `apply`
// AFTER the reductions (global losses, global Gram, or the all-reduced per-task
// vectors), identically on every rank, so every rank computes the same result from
// the same inputs. Nothing here depends on dictionary order, time or the rank.

/// Where the per-task gradients were taken. The Gram-based methods do not care (the
/// trainer forms the Gram at the chosen level); GradDrop does: at the representation
/// level it returns per-element multipliers, at the parameter level the combined vector.
public enum GradientLevel: String, Sendable {
    case representation, parameters
}

/// What a method sees after the all-reduce.
public struct MethodContext {
    public var step: Int
    public var epoch: Int
    public var seed: UInt64
    /// One per task, in task order.
    public var roles: [TaskRole]
    /// GLOBAL mean loss per task (raw, unweighted).
    public var losses: [Double]
    /// GLOBAL mean of each loss term per task: termLosses[t][0] the final prediction's, then one per
    /// auxiliary prediction of a decoder with deep supervision (MT-CP's intermediate predictions), each
    /// unweighted by its auxiliary weight a_i: losses[t] = termLosses[t][0] + Σ_i a_i termLosses[t][i].
    /// A task without auxiliary predictions has the one term losses[t].
    public var termLosses: [[Double]]
    /// T×T row-major global Gram of the per-task gradients (representation level: full-tensor
    /// inner products summed over ranks; parameter level: of the reduced parameter gradients).
    public var gram: [Double]?
    /// The per-task (global) gradients, length P each, for methods with `needsGradients`.
    /// A method may overwrite them (`MethodOutput.combinedGradient`, `.multipliers`).
    public var grads: [UnsafeMutableBufferPointer<Float>]?
    /// True on the first step of a new epoch (DWA and LPS close their epoch means then).
    public var epochEnded: Bool
    /// Added to the brief's interface: GradDrop's output depends on the level (see GradDrop.swift).
    public var level: GradientLevel
    /// Added: the global index of grads[t][0] when a rank passes only its slice of the vectors
    /// (parameter level after a reduce-scatter), so that per-element randomness (GradDrop's U)
    /// is keyed by the global element index and does not depend on the world size.
    public var gradsOffset: Int

    public init(step: Int, epoch: Int = 0, seed: UInt64 = 0, roles: [TaskRole], losses: [Double],
                termLosses: [[Double]]? = nil, gram: [Double]? = nil, grads: [UnsafeMutableBufferPointer<Float>]? = nil,
                epochEnded: Bool = false, level: GradientLevel = .representation, gradsOffset: Int = 0) {
        self.step = step
        self.epoch = epoch
        self.seed = seed
        self.roles = roles
        self.losses = losses
        self.termLosses = termLosses ?? losses.map { [$0] }
        self.gram = gram
        self.grads = grads
        self.epochEnded = epochEnded
        self.level = level
        self.gradsOffset = gradsOffset
    }
}

/// What a method produces, by kind: the trainer, `mtl balance` and the tests switch over it
/// exhaustively, and a method cannot hand back an inconsistent combination (coefficients next to
/// a gradient it wrote, multipliers at the parameter level, ...). Shared parameters are the
/// encoder and a joint decoder's shared modules; g_t is task t's gradient of them.
public enum MethodOutput: Equatable {
    /// One weight per task loss, the same for the shared and the decoder parameters (α = w):
    /// the step's gradient is that of Σ_t w_t L_t, so a joint decoder needs one backward.
    /// EW, UW, DWA, RLW, GradNorm, MGDA, LPS, OL-AUX, Auto-λ, IMTL-L; IAL with every task primary (plain UW).
    case lossWeights([Double])
    /// Shared gradient Σ_t α_t g_t; task t's decoder parameters get weight w_t (α ≠ w in general).
    /// IAL, PCGrad, CAGrad, GCS, IMTL(-G), Nash, Aligned.
    case coefficients(shared: [Double], decoder: [Double])
    /// Non-linear, parameter level: the method wrote the combined shared gradient into grads[0]
    /// (GradDrop's sign-free variant).
    case combinedGradient(decoder: [Double])
    /// Non-linear, representation level: the method overwrote grads[t] with per-element
    /// multipliers m_t; each rank forms Σ_t m_t ⊙ h_t of its own samples (`GradDrop.combine`).
    case multipliers(decoder: [Double])

    /// The weight of each task's loss for its own decoder parameters.
    public var decoderWeights: [Double] {
        switch self {
        case .lossWeights(let w): return w
        case .coefficients(_, let w), .combinedGradient(let w), .multipliers(let w): return w
        }
    }

    /// α of the linear kinds (the shared gradient is Σ_t α_t g_t); nil for the non-linear ones.
    public var sharedCoefficients: [Double]? {
        switch self {
        case .lossWeights(let w): return w
        case .coefficients(let alpha, _): return alpha
        case .combinedGradient, .multipliers: return nil
        }
    }

    /// One value per task in every array; a one-line error naming the method otherwise.
    public func check(taskCount T: Int, method: String) throws {
        if decoderWeights.count != T {
            throw MTLError("method \(method): returned \(decoderWeights.count) decoder weights, expected \(T) (one per task)")
        }
        if let alpha = sharedCoefficients, alpha.count != T {
            throw MTLError("method \(method): returned \(alpha.count) shared coefficients, expected \(T) (one per task)")
        }
    }
}

/// What a method returns: its output and what it logs.
public struct MethodResult {
    public var output: MethodOutput
    /// Logged every step, in a fixed order, e.g. ("w.depth", 0.43), ("sigma.seg", 1.2).
    public var logs: [(String, Double)]
    /// Per task, one factor per loss term (the layout of MethodContext.termLosses): the output's weights
    /// and coefficients act on the task loss Σ_k termScales[t][k]·a_k·L_t^k instead of L_t = Σ_k a_k L_t^k
    /// (a_0 = 1). nil: every factor 1. Only a method with `scalesLossTerms` may return it (the engine
    /// then runs the per-task backwards after the method; otherwise they may already have run).
    /// LPS: its per-term log projection, ∂log(1 + L^k + η)/∂L^k relative to the final term's.
    public var termScales: [[Double]]?

    public init(_ output: MethodOutput, logs: [(String, Double)] = [], termScales: [[Double]]? = nil) {
        self.output = output
        self.logs = logs
        self.termScales = termScales
    }

    /// termScales match the context's terms (one finite factor per term), or a one-line error naming the method.
    public func checkTermScales(_ ctx: MethodContext, method: String) throws {
        guard let termScales else { return }
        if termScales.count != ctx.termLosses.count {
            throw MTLError("method \(method): returned term scales for \(termScales.count) tasks, expected \(ctx.termLosses.count)")
        }
        for (t, (scales, terms)) in zip(termScales, ctx.termLosses).enumerated() {
            if scales.count != terms.count {
                throw MTLError("method \(method): returned \(scales.count) term scales for task \(t), expected \(terms.count) (its loss terms)")
            }
            if let bad = scales.first(where: { !$0.isFinite }) {
                throw MTLError("method \(method): term scale \(bad) for task \(t) is not finite")
            }
        }
    }
}

public protocol MultiTaskMethod: AnyObject {
    var name: String { get }
    /// The representation/parameter Gram is needed.
    var needsGram: Bool { get }
    /// The per-task vectors themselves are needed (GradDrop).
    var needsGradients: Bool { get }
    /// The method may return `MethodResult.termScales` (LPS's per-term log projection): the engine
    /// defers the per-task decoder backwards until after the method. Needs neither the Gram nor the
    /// per-task gradients (those come from backwards before the method). Default false.
    var scalesLossTerms: Bool { get }
    func apply(_ ctx: MethodContext) throws -> MethodResult
    /// Everything needed for an exact resume (learned s_t, optimizer moments, histories, warm starts).
    func stateValues() -> [String: [Double]]
    func loadState(_ state: [String: [Double]]) throws
}

public extension MultiTaskMethod {
    var scalesLossTerms: Bool { false }
}

/// Every method name accepted by `makeMethod` (`method.name` in configs, `--method` on the command line).
/// `autol` (Auto-λ) needs the trainer's look-ahead step (MTLEngine/AutoLambdaStep.swift, METHODS.md §15).
public let methodNames: [String] = [
    "ew", "uw", "dwa", "gradnorm", "rlw", "mgda", "pcgrad", "graddrop", "cagrad",
    "imtl", "imtl-l", "imtl-g", "nash", "aligned", "gcs", "olaux", "autol", "ial", "lps",
]

/// Builds a method. `params` holds the `method.<name>.<key>` values, either with the full
/// prefix or as bare keys; an unknown key is a one-line MTLError listing the valid keys.
public func makeMethod(name: String, taskNames: [String], roles: [TaskRole],
                       params: [String: String]) throws -> MultiTaskMethod {
    var key = name.lowercased()
    if key == "auto-lambda" { key = "autol" }
    guard !taskNames.isEmpty else { throw MTLError("method \(name): no tasks") }
    guard taskNames.count == roles.count else {
        throw MTLError("method \(name): \(taskNames.count) task names but \(roles.count) roles")
    }
    if Set(taskNames).count != taskNames.count {
        throw MTLError("method \(name): duplicate task names \(taskNames)")
    }
    var p = try MethodParams(method: key, raw: params)
    let tasks = TaskSet(names: taskNames, roles: roles)
    let method: MultiTaskMethod
    switch key {
    case "ew": method = EW(tasks)
    case "uw": method = try UW(tasks, &p)
    case "dwa": method = try DWA(tasks, &p)
    case "gradnorm": method = try GradNorm(tasks, &p)
    case "rlw": method = try RLW(tasks, &p)
    case "mgda": method = try MGDA(tasks, &p)
    case "pcgrad": method = PCGrad(tasks)
    case "graddrop": method = try GradDrop(tasks, &p)
    case "cagrad": method = try CAGrad(tasks, &p)
    case "imtl": method = try IMTL(tasks, &p, variant: .both)
    case "imtl-l": method = try IMTL(tasks, &p, variant: .loss)
    case "imtl-g": method = try IMTL(tasks, &p, variant: .gradient)
    case "nash": method = try Nash(tasks, &p)
    case "aligned": method = try Aligned(tasks, &p)
    case "gcs": method = try GCS(tasks, &p)
    case "olaux": method = try OLAux(tasks, &p)
    case "ial": method = try IAL(tasks, &p)
    case "lps": method = try LPS(tasks, &p)
    case "autol": method = try AutoLambda(tasks, &p)
    default:
        let hint = nearest(key, in: methodNames).map { " (did you mean '\($0)'?)" } ?? ""
        throw MTLError("method.name: unknown method '\(name)'\(hint); valid: \(methodNames.joined(separator: ", "))")
    }
    try p.finish()
    return method
}

/// The task names and roles a method was built for.
struct TaskSet {
    let names: [String]
    let roles: [TaskRole]
    var count: Int { names.count }
    var primaries: [Int] { roles.indices.filter { roles[$0] == .primary } }
    var auxiliaries: [Int] { roles.indices.filter { roles[$0] == .auxiliary } }

    /// The single primary task; auxiliary-learning methods (GCS, OL-AUX) are defined for one.
    func singlePrimary(_ method: String) throws -> Int {
        let p = primaries
        guard p.count == 1 else {
            throw MTLError("method \(method): needs exactly one primary task (task roles), found \(p.count): \(p.map { names[$0] })")
        }
        return p[0]
    }
}

// MARK: - shared checks and helpers

/// Validates what a method reads from the context; all ranks see identical inputs, so all
/// ranks throw the same one-line error (never one rank alone).
func check(_ ctx: MethodContext, _ method: String, _ tasks: TaskSet,
           gram: Bool = false, grads: Bool = false) throws {
    let T = tasks.count
    if ctx.roles.count != T { throw MTLError("method \(method): \(ctx.roles.count) roles in the step context, expected \(T)") }
    if ctx.roles != tasks.roles { throw MTLError("method \(method): task roles changed after construction") }
    if ctx.losses.count != T { throw MTLError("method \(method): \(ctx.losses.count) losses, expected \(T)") }
    for t in 0..<T where !ctx.losses[t].isFinite {
        throw MTLError("method \(method): loss of task \(tasks.names[t]) is \(ctx.losses[t]) at step \(ctx.step)")
    }
    if ctx.termLosses.count != T { throw MTLError("method \(method): loss terms of \(ctx.termLosses.count) tasks, expected \(T)") }
    for t in 0..<T {
        if ctx.termLosses[t].isEmpty { throw MTLError("method \(method): task \(tasks.names[t]) has no loss term") }
        if let bad = ctx.termLosses[t].first(where: { !$0.isFinite }) {
            throw MTLError("method \(method): a loss term of task \(tasks.names[t]) is \(bad) at step \(ctx.step)")
        }
    }
    if gram {
        guard let K = ctx.gram else { throw MTLError("method \(method): needs the Gram matrix, none given") }
        if K.count != T * T { throw MTLError("method \(method): Gram has \(K.count) entries, expected \(T)×\(T)") }
        for v in K where !v.isFinite { throw MTLError("method \(method): non-finite Gram entry \(v) at step \(ctx.step)") }
        for t in 0..<T where K[t * T + t] < 0 {
            throw MTLError("method \(method): negative squared norm \(K[t * T + t]) for task \(tasks.names[t])")
        }
    }
    if grads {
        guard let g = ctx.grads else { throw MTLError("method \(method): needs the per-task gradients, none given") }
        if g.count != T { throw MTLError("method \(method): \(g.count) gradient vectors, expected \(T)") }
        let P = g[0].count
        for v in g where v.count != P { throw MTLError("method \(method): per-task gradients differ in length (\(v.count) vs \(P))") }
    }
}

/// "w.<task>" log entries in task order.
func taskLogs(_ prefix: String, _ values: [Double], _ names: [String], only: [Int]? = nil) -> [(String, Double)] {
    (only ?? Array(values.indices)).map { ("\(prefix).\(names[$0])", values[$0]) }
}

/// The RNG of step `step` for method randomness. The step sits in the HIGH 32 bits of the
/// Philox index: `Philox(index:)` advances the low word of its counter with each 4 draws, so
/// `index: step` would make step k's second block equal step k+1's first block (correlated
/// draws across steps). With `step << 32` every step owns 2^32 blocks.
public func methodRNG(seed: UInt64, step: Int) -> Philox {
    Philox(seed: seed, stream: RNGStream.method.rawValue, index: UInt64(truncatingIfNeeded: step) << 32)
}

/// The global Gram matrix (Double, row-major T×T) of T vectors of equal length, or their
/// contribution when the vectors are one rank's slice (sum the results over ranks). Chunked
/// so that all T(T+1)/2 products are formed in one pass over memory; partial sums are
/// reduced in a fixed order, so the result does not depend on the thread count.
public func gramMatrix(_ vectors: [UnsafeBufferPointer<Float>]) -> [Double] {
    let T = vectors.count
    guard T > 0 else { return [] }
    let P = vectors[0].count
    let chunk = 4096
    let chunks = (P + chunk - 1) / chunk
    let pairs = T * (T + 1) / 2
    var partial = [Double](repeating: 0, count: max(chunks, 1) * pairs)
    partial.withUnsafeMutableBufferPointer { part in
        let part = part
        parallelFor(chunks, minChunk: 8) { c in
            let lo = c * chunk, hi = min(P, lo + chunk)
            var k = 0
            for i in 0..<T {
                let a = vectors[i].baseAddress!
                for j in i..<T {
                    let b = vectors[j].baseAddress!
                    // Float products are exact in Double (24+24 bits); only the sums round.
                    var s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
                    var e = lo
                    while e + 4 <= hi {
                        s0 += Double(a[e]) * Double(b[e]); s1 += Double(a[e + 1]) * Double(b[e + 1])
                        s2 += Double(a[e + 2]) * Double(b[e + 2]); s3 += Double(a[e + 3]) * Double(b[e + 3])
                        e += 4
                    }
                    while e < hi { s0 += Double(a[e]) * Double(b[e]); e += 1 }
                    part[c * pairs + k] = (s0 + s1) + (s2 + s3)
                    k += 1
                }
            }
        }
    }
    var K = [Double](repeating: 0, count: T * T)
    var k = 0
    for i in 0..<T {
        for j in i..<T {
            var s = 0.0
            for c in 0..<chunks { s += partial[c * pairs + k] }
            K[i * T + j] = s
            K[j * T + i] = s
            k += 1
        }
    }
    return K
}

/// out = Σ_t coefficients[t] · vectors[t], accumulated in Double per element.
public func combineGradients(_ coefficients: [Double], _ vectors: [UnsafeBufferPointer<Float>],
                             into out: UnsafeMutableBufferPointer<Float>) {
    let T = vectors.count
    precondition(coefficients.count == T)
    let P = out.count
    let chunk = 16384
    parallelFor((P + chunk - 1) / chunk, minChunk: 4) { c in
        let lo = c * chunk, hi = min(P, lo + chunk)
        for e in lo..<hi {
            var s = 0.0
            for t in 0..<T { s += coefficients[t] * Double(vectors[t][e]) }
            out[e] = Float(s)
        }
    }
}

// MARK: - state (de)serialisation helpers

/// Reads `key` from a saved state with the expected length; one-line error otherwise.
func stateArray(_ state: [String: [Double]], _ method: String, _ key: String, count: Int? = nil) throws -> [Double] {
    guard let v = state[key] else {
        throw MTLError("method \(method) state: missing '\(key)' (saved keys: \(state.keys.sorted().joined(separator: ", ")))")
    }
    if let count, v.count != count {
        throw MTLError("method \(method) state: '\(key)' has \(v.count) values, expected \(count)")
    }
    return v
}

/// Rejects keys a method does not know (a checkpoint of another method or another task set).
func checkStateKeys(_ state: [String: [Double]], _ method: String, _ known: [String]) throws {
    let unknown = state.keys.filter { !known.contains($0) }.sorted()
    if !unknown.isEmpty {
        throw MTLError("method \(method) state: unknown keys \(unknown.joined(separator: ", ")) (expected: \(known.sorted().joined(separator: ", ")))")
    }
}
