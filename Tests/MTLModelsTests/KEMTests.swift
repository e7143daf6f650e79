import Foundation
import XCTest
import MTLCore
import MTLTestSupport
@testable import MTLNN
@testable import MTLModels

/// KEM / sKEM / cross-attention / MTFormer-T skeleton: exact parameter counts (docs/ARCHITECTURES.md
/// §2.5), finite differences of every module, and float64 cross-checks against the from-spec
/// reference tools/kem_reference.py (weights copied by name, the ETF's Gaussian passed from Swift).
final class KEMTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path

    static let nyud: [(name: String, channels: Int)] = [("seg", 40), ("depth", 1)]
    static let pascal: [(name: String, channels: Int)] = [("seg", 21), ("parts", 7), ("sal", 1)]
    static let swinS = [96, 192, 384, 768]

    func count(_ ps: [Parameter]) -> Int { ps.reduce(0) { $0 + $1.value.count } }

    func decoder(_ tasks: [(name: String, channels: Int)], _ edit: (inout KEMOptions) -> Void = { _ in }) -> KEMDecoder {
        var o = KEMOptions()
        edit(&o)
        var rng = Philox(seed: 1, stream: 0)
        return KEMDecoder(tasks: tasks, inChannels: Self.swinS, options: o, rng: &rng)
    }

    // MARK: counts

    /// The totals of docs/ARCHITECTURES.md §2.5 (the reference's log-vars, one per task, are the uw
    /// method's state in mtl and are added here).
    func testParameterCountsMatchTheReference() {
        let swin = SwinEncoder(.small)
        XCTAssertEqual(swin.parameterCount, 48_838_602, "Swin-S dense backbone")
        let plain = decoder(Self.nyud) { $0.mixer = "none" }
        XCTAssertEqual(48_838_602 + plain.parameterCount + 2, 62_449_949, "MTFormer-T skeleton NYUD (as in code)")
        XCTAssertEqual(plain.reduce.parameterCount, 344_320)
        XCTAssertEqual(plain.shared.parameterCount, 2_630_728, "one 256-d transformer")
        XCTAssertEqual(plain.heads.reduce(0) { $0 + $1.parameterCount }, 113_385, "NYUD heads")
        let plainP = decoder(Self.pascal) { $0.mixer = "none" }
        XCTAssertEqual(48_838_602 + plainP.parameterCount + 3, 67_803_618, "MTFormer-T skeleton PASCAL")
        XCTAssertEqual(plainP.heads.reduce(0) { $0 + $1.parameterCount }, 205_597, "PASCAL heads")
        let noUnused = decoder(Self.nyud) { $0.mixer = "none"; $0.unusedPatchEmbed = false }
        XCTAssertEqual(48_838_602 + noUnused.parameterCount + 2, 57_203_229, "without the unused patch embeddings")

        let kem = decoder(Self.nyud)
        XCTAssertEqual(kem.memory!.parameterCount, 399_872, "KEM module")
        XCTAssertEqual(48_838_602 + kem.parameterCount + 2, 62_849_821, "KEM-R NYUD total")
        XCTAssertEqual(kem.parameterCount + 2, 14_011_219, "KEM-R NYUD trainable")
        XCTAssertEqual(count(kem.sharedParameters), 344_320 + 2_630_728 + 399_872, "shared: reduce, shared stage, KEM")
        XCTAssertEqual(48_838_602 + decoder(Self.pascal).parameterCount + 3, 68_203_490, "KEM-R PASCAL total")
        for role in ["tasks", "slots"] {
            let s = decoder(Self.nyud) { $0.stable = true; $0.etfRole = role }
            XCTAssertEqual(s.memory!.parameterCount, 465_664, "sKEM module, role \(role)")
            XCTAssertEqual(s.memory!.etf!.value.shape, [256, role == "tasks" ? 2 : 20], "ETF buffer (not a parameter)")
        }
        XCTAssertEqual(decoder(Self.nyud) { $0.stable = true; $0.etfProjection = false }.memory!.parameterCount, 399_872)
        let ca = decoder(Self.nyud) { $0.mixer = "cross_attention" }
        XCTAssertEqual(ca.crossAttention!.parameterCount, 526_336, "cross-attention NYUD")
        XCTAssertEqual(decoder(Self.pascal) { $0.mixer = "cross_attention" }.crossAttention!.parameterCount, 789_504)
        XCTAssertTrue(ca.sharedParameters.allSatisfy { !$0.name.contains("cross_attention") }, "CA weights belong to their task")
    }

    func testBadOptionsAreOneLineErrors() {
        func message(_ edit: (inout KEMOptions) -> Void, tasks: Int = 2) -> String {
            var o = KEMOptions()
            edit(&o)
            do { try KEMDecoder.validate(o, tasks: tasks); return "" } catch { return "\(error)" }
        }
        XCTAssertEqual(message { _ in }, "")
        XCTAssertTrue(message { $0.mixer = "mlp" }.contains("model.kem.mixer: expected memory|cross_attention|none, found 'mlp'"))
        XCTAssertTrue(message { $0.dim = 30; $0.heads = 4 }.contains("model.kem.dim"))
        XCTAssertTrue(message { $0.topkAxis = "slots"; $0.topk = 21 }.contains("model.kem.topk"))
        XCTAssertTrue(message({ $0.stable = true }, tasks: 1).contains("model.kem.etf_role"))
        XCTAssertFalse(message { $0.topk = 0 }.contains("\n"))
    }

    // MARK: finite differences

    /// Central differences along three random unit directions of `x` against ⟨analytic, direction⟩:
    /// |numeric − analytic| ≤ tol·max(|numeric|, |analytic|) + floor (float32 forward, step 1e-2).
    /// A gradient that is zero by the equations (a bias whose shift the softmax cancels) must have
    /// zero finite differences too.
    func directional(_ label: String, _ x: Tensor, _ analytic: [Float], eps: Float = 1e-2, tol: Double = 2e-2,
                     floor: Double = 2e-3, _ f: () -> Double, file: StaticString = #filePath, line: UInt = #line) {
        var rng = Philox(seed: 77, stream: UInt64(x.count))
        let zero = analytic.reduce(0.0) { max($0, Double(abs($1))) } < 1e-5
        var worst = 0.0
        for _ in 0..<3 {
            let dir = randomTensor(x.shape, &rng)
            let norm = dir.sumOfSquares().squareRoot()
            dir.scale(Float(1 / norm))
            var a = 0.0
            for i in 0..<x.count { a += Double(analytic[i]) * Double(dir.data[i]) }
            x.add(dir, alpha: eps)
            let fp = f()
            x.add(dir, alpha: -2 * eps)
            let fm = f()
            x.add(dir, alpha: eps)
            let n = (fp - fm) / (2 * Double(eps))
            worst = max(worst, abs(n - a) - tol * max(abs(n), abs(a)))
        }
        XCTAssertLessThan(worst, floor, "\(label)\(zero ? " (zero gradient)" : ""): finite differences differ from the backward by \(worst) beyond \(tol) relative",
                          file: file, line: line)
    }

    /// Smallest gap between the k-th and (k+1)-th entries of the rows of s [..., n].
    func topkGap(_ s: Tensor, k: Int) -> Float {
        let n = s.shape.last!, rows = s.count / n
        var gap = Float.infinity
        for r in 0..<rows {
            let v = (0..<n).map { s[r * n + $0] }.sorted(by: >)
            if n > k { gap = min(gap, v[k - 1] - v[k]) }
        }
        return gap
    }

    struct MixerCase { let label: String; let edit: (inout KEMOptions) -> Void }
    static let mixerCases: [MixerCase] = [
        MixerCase(label: "KEM A tokens") { _ in },
        MixerCase(label: "KEM B tokens") { $0.topkVariant = "renormalized" },
        MixerCase(label: "KEM A slots") { $0.topkAxis = "slots" },
        MixerCase(label: "sKEM tasks") { $0.stable = true },
        MixerCase(label: "sKEM tasks no proj") { $0.stable = true; $0.etfProjection = false },
        MixerCase(label: "sKEM slots") { $0.stable = true; $0.etfRole = "slots" },
        MixerCase(label: "sKEM slots no proj") { $0.stable = true; $0.etfRole = "slots"; $0.etfProjection = false },
    ]

    func makeMemory(_ o: KEMOptions, d: Int, tasks: Int, seed: UInt64, sharpen: Bool = false) -> KEMMemory {
        var rng = Philox(seed: seed, stream: 3)
        let role = o.stable ? KEMMemory.ETFRole(rawValue: o.etfRole)! : nil
        let kk = role == .tasks ? tasks : o.slots
        let e = role.map { _ in ETF.matrix(dimension: d, classes: kk, seed: o.etfSeed) }
        let mem = KEMMemory("kem", dim: d, slots: o.slots, topk: o.topk, tasks: tasks, lambda: Float(o.lambda),
                            variant: TopKSoftmax.Variant(rawValue: o.topkVariant)!, axis: KEMMemory.Axis(rawValue: o.topkAxis)!,
                            role: role, projection: o.etfProjection, etfMatrix: e, rng: &rng)
        // Larger weights than the default init, so that the scores spread and the top-k matters.
        for p in mem.parameters { p.value.scale(2.5) }
        // Top-k over the slots: sharper retrieve attention makes the slots (and the write scores) differ.
        if sharpen && mem.axis == .slots { for p in mem.parameters { p.value.scale(2) } }
        return mem
    }

    /// The top-k scores of a memory module after a forward (the stage that has the top-k).
    func topkScores(_ m: KEMMemory) -> Tensor { m.axis == .tokens ? m.scoresForTests : m.writeScoresForTests }

    /// Finite differences of the memory module (all switches) w.r.t. the inputs and every parameter, at
    /// inputs whose k-th/(k+1)-th top-k score gap is ≥ 0.02 (≫ the change a 1e-2 step along a unit direction makes).
    func testMemoryModuleFiniteDifferences() {
        Threads.set(1)
        let d = 8, tasks = 2, b = 2, l = 4
        for c in Self.mixerCases {
            var o = KEMOptions()
            o.slots = 5
            o.topk = 2
            o.lambda = 0.7
            c.edit(&o)
            var found = false
            for seed in UInt64(0)..<1000 {
                let mem = makeMemory(o, d: d, tasks: tasks, seed: seed, sharpen: true)
                var rng = Philox(seed: seed, stream: 9)
                let xs = (0..<tasks).map { _ in randomTensor([b, l, d], &rng) }
                _ = mem.forward(xs)
                guard topkGap(topkScores(mem), k: o.topk) >= 0.02 else { continue }
                found = true
                let rs = (0..<tasks).map { _ in randomTensor([b, l, d], &rng) }
                mem.zeroGrad()
                _ = mem.forward(xs)
                let dxs = mem.backward(rs).map { $0.array }
                let f = { functional(mem.forward(xs), rs) }
                for t in 0..<tasks { directional("\(c.label) dx\(t)", xs[t], dxs[t], f) }
                for p in mem.parameters {
                    let g = p.grad.array
                    if g.allSatisfy({ $0 == 0 }) {
                        // sKEM slots: M, W_q1 (and W_k1 with the projection) do not enter the scores.
                        XCTAssertTrue(o.stable && o.etfRole == "slots" && (p.name.contains("memory") || p.name.contains("retrieve.q")
                            || (o.etfProjection && p.name.contains("retrieve.k"))), "\(c.label) \(p.name): zero gradient")
                        continue
                    }
                    // The sharper (scaled) slots case needs a smaller step to stay in the linear range.
                    directional("\(c.label) \(p.name)", p.value, g, eps: o.topkAxis == "slots" ? 2e-3 : 1e-2,
                                floor: o.topkAxis == "slots" ? 6e-3 : 2e-3, f)
                }
                // A second backward after the same forward adds the same gradient again.
                let once = mem.parameters[1].grad.array
                _ = mem.forward(xs)
                _ = mem.backward(rs)
                let twice = mem.parameters[1].grad.array
                for i in 0..<once.count { XCTAssertEqual(twice[i], 2 * once[i], accuracy: 1e-4 * max(1, abs(once[i]))) }
                break
            }
            XCTAssertTrue(found, "\(c.label): no seed with a top-k gap ≥ 0.02")
        }
    }

    func testCrossAttentionFiniteDifferences() {
        Threads.set(1)
        let d = 8, b = 2, l = 5
        var rng = Philox(seed: 4, stream: 1)
        let ca = KEMCrossAttention("ca", dim: d, tasks: ["a", "b", "c"], lambda: 0.8, rng: &rng)
        for p in ca.parameters { p.value.scale(2) }
        let xs = (0..<3).map { _ in randomTensor([b, l, d], &rng) }
        // Task b's output gets no gradient: its weights must stay zero, the others' inputs still move.
        let rs: [Tensor?] = [randomTensor([b, l, d], &rng), nil, randomTensor([b, l, d], &rng)]
        ca.zeroGrad()
        _ = ca.forward(xs)
        let dxs = ca.backward(rs).map { $0.array }
        let f = { () -> Double in
            let ys = ca.forward(xs)
            return functional([ys[0], ys[2]], [rs[0]!, rs[2]!])
        }
        for t in 0..<3 { directional("CA dx\(t)", xs[t], dxs[t], f) }
        for p in ca.parameters {
            if p.name.hasPrefix("ca.task.b.") { XCTAssertTrue(p.grad.array.allSatisfy { $0 == 0 }, p.name); continue }
            directional("CA \(p.name)", p.value, p.grad.array, f)
        }
    }

    func testTaskTransformerAndHeadsFiniteDifferences() {
        Threads.set(1)
        var rng = Philox(seed: 5, stream: 1)
        let tr = TaskTransformer("tr", dim: 8, heads: 2, window: 3, depth: 2, allocateUnused: true, rng: &rng)
        let (h, w) = (4, 5)   // not a multiple of the window: padding and the shift mask are exercised
        let x = randomTensor([2, h * w, 8], &rng), r = randomTensor([2, h * w, 8], &rng)
        tr.zeroGrad()
        _ = tr.forward(x, height: h, width: w)
        let dx = tr.backward(r).array
        let f = { functional([tr.forward(x, height: h, width: w)], [r]) }
        directional("transformer dx", x, dx, f)
        for p in tr.parameters {
            if p.name.contains("patch_embed") { XCTAssertTrue(p.grad.array.allSatisfy { $0 == 0 }, "unused \(p.name)"); continue }
            directional("transformer \(p.name)", p.value, p.grad.array, f)
        }
        for kind in [KEMHead.Kind.segmentation, .saliency, .depth] {
            let head = KEMHead("head", kind: kind, dim: 8, outChannels: kind == .depth ? 1 : 3, rng: &rng)
            // Keep the ReLUs away from their kinks, where finite differences are meaningless.
            if let bn = head.bn1 { for i in 0..<8 { bn.bias.value[i] = 3 } }
            if kind == .depth {
                for i in 0..<32 { head.conv2.bias!.value[i] += 1 }
                head.conv3!.bias!.value[0] += 2
            }
            let z = randomTensor([2, 8, 3, 4], &rng)
            let y = head.forward(z)
            XCTAssertEqual(y.shape, [2, kind == .depth ? 1 : 3, kind == .saliency ? 3 : 6, kind == .saliency ? 4 : 8])
            let ry = randomTensor(y.shape, &rng)
            head.zeroGrad()
            let dz = head.backward(ry).array
            let g = { functional([head.forward(z)], [ry]) }
            directional("head \(kind) dz", z, dz, g)
            for p in head.parameters { directional("head \(kind) \(p.name)", p.value, p.grad.array, g) }
        }
    }

    /// The whole decoder (small width) by finite differences along random directions over all its
    /// parameters and the features, backpropagating each task alone and both together.
    func testDecoderFiniteDifferences() {
        Threads.set(1)
        var o = KEMOptions()
        o.dim = 8; o.heads = 2; o.window = 3; o.slots = 4; o.topk = 2; o.unusedPatchEmbed = false
        for seed in UInt64(0)..<100 {
            var rng = Philox(seed: seed, stream: 11)
            // Saliency rather than depth as the second task: the depth head's two ReLUs on a float32 forward
            // make finite differences too noisy at any one step (it is checked alone above, and the whole
            // decoder with depth against float64 PyTorch below).
            let dec = KEMDecoder(tasks: [("seg", 3), ("sal", 1)], inChannels: [2, 3, 4, 5], options: o, rng: &rng)
            for p in dec.parameters where !p.name.contains("norm") && !p.name.contains("bn1") { p.value.scale(2) }
            // The heads' BN → ReLU away from the kink (finite differences across it are meaningless).
            for bn in dec.batchNorms { for i in 0..<bn.channels { bn.bias.value[i] = 3 } }
            let feats = [randomTensor([2, 2, 8, 10], &rng), randomTensor([2, 3, 4, 5], &rng), randomTensor([2, 4, 2, 3], &rng), randomTensor([2, 5, 1, 2], &rng)]
            _ = dec.forward(feats, height: 16, width: 20)
            guard topkGap(dec.memory!.scoresForTests, k: 2) >= 0.05 else { continue }
            let rs = [randomTensor([2, 3, 16, 20], &rng), randomTensor([2, 1, 16, 20], &rng)]
            for active in [[true, false], [false, true], [true, true]] {
                dec.zeroGrad()
                _ = dec.forward(feats, height: 16, width: 20)
                let dF = dec.backward(zip(rs, active).map { $1 ? $0 : nil }).map { $0.array }
                XCTAssertTrue(dF[0].allSatisfy { $0 == 0 }, "scale 0 is not read")
                let f = { () -> Double in
                    let ys = dec.forward(feats, height: 16, width: 20)
                    return functional(zip(ys, active).filter { $1 }.map { $0.0 }, zip(rs, active).filter { $1 }.map { $0.0 })
                }
                for s in 1..<4 { directional("decoder \(active) dF\(s)", feats[s], dF[s], eps: 3e-3, tol: 3e-2, floor: 3e-3, f) }
                for p in dec.parameters {
                    let g = p.grad.array
                    if g.allSatisfy({ $0 == 0 }) {
                        let t = active[0] ? "sal" : "seg"
                        XCTAssertTrue(!(active[0] && active[1]) && (p.name.contains("task_dec.\(t)") || p.name.contains("head.\(t)")),
                                      "\(active) \(p.name): zero gradient")
                        continue
                    }
                    // Floor: f ≈ 30 here, summed from a float32 forward, so each f carries ~1e-5 of
                    // rounding, i.e. a few 1e-3 in a difference quotient over 2·eps = 6e-3 (the gradients
                    // themselves are checked to 1e-4 against float64 PyTorch below).
                    directional("decoder \(active) \(p.name)", p.value, g, eps: 3e-3, tol: 3e-2, floor: 8e-3, f)
                }
            }
            return
        }
        XCTFail("no seed with a top-k gap ≥ 0.05")
    }

    // MARK: PyTorch float64 cross-checks

    /// Runs `expr` (a kem_reference module built from the tensors in T) on the exchange: loads the
    /// Swift weights by name (prefix stripped, `extra` added), feeds the inputs and cotangents, and
    /// returns outputs, input gradients and parameter gradients by name.
    func reference(_ expr: String, call: String, params: [Parameter], prefix: String, extra: [String: Tensor] = [:],
                   inputs: [Tensor], cotangents: [Tensor], tensors: [String: Tensor] = [:]) throws
        -> (outs: [[Float]], dx: [[Float]?], grads: [String: [Float]]) {
        let ex = try TorchExchange()
        for p in params { try ex.put("p:" + String(p.name.dropFirst(prefix.count)), p.value) }
        for (n, t) in extra { try ex.put("p:" + n, t) }
        for (n, t) in tensors { try ex.put(n, t) }
        for (i, x) in inputs.enumerated() { try ex.put("in\(i)", x) }
        for (i, c) in cotangents.enumerated() { try ex.put("dy\(i)", c) }
        let (status, log) = try ex.run(imports: "sys.path.insert(0, \"\(Self.root)/tools\"); import kem_reference as K; from ref_layers import load_named, forward_backward", """
            mod = \(expr)
            load_named(mod, {n[2:]: T[n] for n in T if n.startswith("p:")})
            ins = [T["in%d" % i] for i in range(\(inputs.count))]
            cots = [T["dy%d" % i] for i in range(\(cotangents.count))]
            outs, dx, gp, _ = forward_backward(mod, ins, cots, call=\(call))
            for i, o in enumerate(outs): out("out%d" % i, o)
            for i, g in enumerate(dx):
                if g is not None: out("dx%d" % i, g)
            for n, g in gp.items(): out("g:" + n, g)
            """)
        try XCTSkipIf(status == 77, "torch not importable by python3 (\(log.trimmingCharacters(in: .whitespacesAndNewlines))): KEM cross-check skipped")
        guard status == 0 else { throw MTLError("kem_reference failed:\n\(log)") }
        let outs = try cotangents.indices.map { try ex.get("out\($0)") }
        let dx = inputs.indices.map { try? ex.get("dx\($0)") }
        var grads: [String: [Float]] = [:]
        for p in params { grads[p.name] = try ex.get("g:" + String(p.name.dropFirst(prefix.count))) }
        return (outs, dx, grads)
    }

    /// ‖a − b‖∞ / max(‖b‖∞, tiny).
    func relative(_ a: [Float], _ b: [Float]) -> Double {
        precondition(a.count == b.count, "sizes \(a.count) vs \(b.count)")
        var d = 0.0, s = 0.0
        for (x, y) in zip(a, b) { d = max(d, Double(abs(x - y))); s = max(s, Double(abs(y))) }
        return d / max(s, 1e-30)
    }

    func compare(_ label: String, swiftOut: [[Float]], swiftDx: [[Float]], params: [Parameter],
                 ref: (outs: [[Float]], dx: [[Float]?], grads: [String: [Float]]), dxFrom: Int = 0) -> (Double, Double) {
        var fwd = 0.0, bwd = 0.0
        for (a, b) in zip(swiftOut, ref.outs) { fwd = max(fwd, relative(a, b)) }
        for (i, a) in swiftDx.enumerated() {
            guard let b = ref.dx[i + dxFrom] else { XCTFail("\(label): no reference dx\(i + dxFrom)"); continue }
            bwd = max(bwd, relative(a, b))
        }
        var worstName = ""
        // Gradients that vanish by the equations (biases under a shift-invariant softmax) are ~1e-17 in
        // float64 and ~1e-8 in float32: each tensor is measured against max(its own scale, 1e-3 × the
        // largest gradient of the module).
        let scale = params.reduce(0.0) { m, p in max(m, ref.grads[p.name]!.reduce(0.0) { max($0, Double(abs($1))) }) }
        for p in params {
            let a = p.grad.array, b = ref.grads[p.name]!
            var d = 0.0, s = 0.0
            for (x, y) in zip(a, b) { d = max(d, Double(abs(x - y))); s = max(s, Double(abs(y))) }
            let e = d / max(s, 1e-3 * scale)
            if e > bwd { bwd = e; worstName = p.name }
        }
        print("KEM cross-check \(label): forward max rel error \(fwd), gradients \(bwd) \(worstName)")
        XCTAssertLessThan(fwd, 1e-5, "\(label) forward")
        XCTAssertLessThan(bwd, 1e-4, "\(label) gradients (worst \(worstName))")
        return (fwd, bwd)
    }

    func kwargs(_ o: KEMOptions) -> String {
        "m=\(o.slots), k=\(o.topk), lam=\(o.lambda), topk_variant='\(o.topkVariant == "masked" ? "A" : "B")', topk_axis='\(o.topkAxis)', "
            + "stable=\(o.stable ? "True" : "False"), etf_role='\(o.etfRole)', etf_proj=\(o.etfProjection ? "True" : "False")"
    }

    func testMemoryModuleAgainstPyTorch() throws {
        Threads.set(1)
        let d = 16, tasks = 2, b = 2, l = 12
        for c in Self.mixerCases {
            var o = KEMOptions()
            o.slots = 6
            o.topk = 3
            o.lambda = 0.9
            o.etfSeed = 3
            c.edit(&o)
            var done = false
            for seed in UInt64(0)..<100 {
                let mem = makeMemory(o, d: d, tasks: tasks, seed: seed)
                var rng = Philox(seed: seed, stream: 9)
                let xs = (0..<tasks).map { _ in randomTensor([b, l, d], &rng) }
                let ys = mem.forward(xs).map { $0.array }
                // A top-k selection that float32 rounding cannot flip.
                guard topkGap(topkScores(mem), k: o.topk) >= 1e-4 else { continue }
                let rs = (0..<tasks).map { _ in randomTensor([b, l, d], &rng) }
                mem.zeroGrad()
                let dxs = mem.backward(rs).map { $0.array }
                var tensors: [String: Tensor] = [:]
                var g = "None"
                if o.stable {
                    let kk = o.etfRole == "tasks" ? tasks : o.slots
                    tensors["G"] = Tensor([d, kk], ETF.gaussian(dimension: d, classes: kk, seed: o.etfSeed).map { Float($0) })
                    g = "T['G']"
                }
                let ref = try reference("K.KEM(d=\(d), ntasks=\(tasks), \(kwargs(o)), gaussian_matrix=\(g))",
                                        call: "lambda m, *x: m(list(x))", params: mem.parameters, prefix: "kem.",
                                        inputs: xs, cotangents: rs, tensors: tensors)
                _ = compare(c.label, swiftOut: ys, swiftDx: dxs, params: mem.parameters, ref: ref)
                done = true
                break
            }
            XCTAssertTrue(done, "\(c.label): no seed with a top-k gap")
        }
    }

    /// The ETF the reference builds from Swift's Gaussian equals Swift's (float32 buffer).
    func testETFFromSwiftGaussianMatchesReference() throws {
        let (d, kk) = (16, 5)
        let gauss = Tensor([d, kk], ETF.gaussian(dimension: d, classes: kk, seed: 3).map { Float($0) })
        let ex = try TorchExchange()
        try ex.put("G", gauss)
        let (status, log) = try ex.run(imports: "sys.path.insert(0, \"\(Self.root)/tools\"); import kem_reference as K", """
            out("E", K.etf_from_gaussian(T["G"]))
            """)
        try XCTSkipIf(status == 77, "torch not importable: \(log)")
        XCTAssertEqual(status, 0, log)
        // The Swift ETF is built from the Double draw; the reference from its float32 rounding.
        let mine = ETF.matrix(gaussian: gauss.array.map { Double($0) }, dimension: d, classes: kk).map { Float($0) }
        XCTAssertLessThan(relative(mine, try ex.get("E")), 1e-6)
        let fromDouble = ETF.matrix(dimension: d, classes: kk, seed: 3).map { Float($0) }
        XCTAssertLessThan(relative(fromDouble, try ex.get("E")), 1e-5)
    }

    func testCrossAttentionAgainstPyTorch() throws {
        Threads.set(1)
        let d = 16, b = 2, l = 10
        var rng = Philox(seed: 8, stream: 1)
        let ca = KEMCrossAttention("cross_attention", dim: d, tasks: ["seg", "depth", "sal"], lambda: 0.9, rng: &rng)
        for p in ca.parameters { p.value.scale(2) }
        let xs = (0..<3).map { _ in randomTensor([b, l, d], &rng) }
        let ys = ca.forward(xs).map { $0.array }
        let rs = (0..<3).map { _ in randomTensor([b, l, d], &rng) }
        ca.zeroGrad()
        let dxs = ca.backward(rs).map { $0.array }
        let ref2 = try reference("K.CrossAttention(\(d), ['seg', 'depth', 'sal'], lam=0.9)", call: "lambda m, *x: m(list(x))",
                                 params: ca.parameters, prefix: "cross_attention.", inputs: xs, cotangents: rs)
        _ = compare("cross-attention", swiftOut: ys, swiftDx: dxs, params: ca.parameters, ref: ref2)
    }

    func testTaskTransformerAgainstPyTorch() throws {
        Threads.set(1)
        var rng = Philox(seed: 6, stream: 1)
        let d = 16
        let tr = TaskTransformer("tr", dim: d, heads: 4, window: 7, depth: 2, allocateUnused: true, rng: &rng)
        let (h, w) = (10, 13)
        let x = randomTensor([2, h * w, d], &rng)
        let y = tr.forward(x, height: h, width: w).array
        let r = randomTensor([2, h * w, d], &rng)
        tr.zeroGrad()
        let dx = tr.backward(r).array
        let ref = try reference("K.TaskTransformer(\(d), depth=2, heads=4, window=7)", call: "lambda m, x: m(x, \(h), \(w))",
                                params: tr.parameters, prefix: "tr.", inputs: [x], cotangents: [r])
        _ = compare("task transformer", swiftOut: [y], swiftDx: [dx], params: tr.parameters, ref: ref)
    }

    /// The whole decoder (every mixer; KEM, sKEM both roles) against K.KEMDecoder, at d = 16 on a
    /// 10×13 grid (image 40×52), three tasks including depth and saliency heads.
    func testDecoderAgainstPyTorch() throws {
        Threads.set(1)
        let tasks: [(name: String, channels: Int)] = [("seg", 5), ("depth", 1), ("sal", 1)]
        let cases: [MixerCase] = [MixerCase(label: "decoder none") { $0.mixer = "none" },
                                  MixerCase(label: "decoder cross-attention") { $0.mixer = "cross_attention" }] + Self.mixerCases
        for c in cases {
            var o = KEMOptions()
            o.dim = 16; o.slots = 6; o.topk = 3; o.unusedPatchEmbed = false; o.etfSeed = 2
            c.edit(&o)
            var done = false
            for seed in UInt64(0)..<60 {
                var rng = Philox(seed: seed, stream: 12)
                let dec = KEMDecoder(tasks: tasks, inChannels: [4, 6, 8, 10], options: o, rng: &rng)
                for p in dec.parameters where p.name.contains("kem") { p.value.scale(2) }
                // Top-k over the slots needs slots that differ: at the N(0, 0.02²) init every slot's
                // retrieve query is ≈ b_q1, all slots read the same M' row and the write scores tie.
                if o.topkAxis == "slots" { dec.memory!.memory.value.scale(50) }
                for bn in dec.batchNorms { for i in 0..<bn.channels { bn.weight.value[i] = 0.5 + rng.uniform(); bn.bias.value[i] = rng.uniform() - 0.5 } }
                let feats = [randomTensor([2, 4, 20, 26], &rng), randomTensor([2, 6, 10, 13], &rng), randomTensor([2, 8, 5, 7], &rng), randomTensor([2, 10, 3, 4], &rng)]
                let ys = dec.forward(feats, height: 40, width: 52).map { $0.array }
                if let m = dec.memory, topkGap(topkScores(m), k: o.topk) < 1e-4 { continue }
                let rs = ys.indices.map { t in randomTensor([2, tasks[t].channels, 40, 52], &rng) }
                dec.zeroGrad()
                let dF = dec.backward(rs).map { $0.array }
                var tensors: [String: Tensor] = [:]
                var kem = ""
                if o.mixer == "memory" {
                    var g = "None"
                    if o.stable {
                        let kk = o.etfRole == "tasks" ? tasks.count : o.slots
                        tensors["G"] = Tensor([16, kk], ETF.gaussian(dimension: 16, classes: kk, seed: o.etfSeed).map { Float($0) })
                        g = "T['G']"
                    }
                    kem = ", \(kwargs(o)), gaussian_matrix=\(g)"
                }
                let logVars = Dictionary(uniqueKeysWithValues: tasks.map { ("log_vars.\($0.name)", Tensor([])) })
                let ref = try reference("K.KEMDecoder({'seg': 5, 'depth': 1, 'sal': 1}, d=16, in_channels=(6, 8, 10), mixer='\(o.mixer)', allocate_unused=False, window=7\(kem))",
                                        call: "lambda m, *x: m(list(x), (40, 52))", params: dec.parameters, prefix: "decoder.",
                                        extra: logVars, inputs: feats, cotangents: rs, tensors: tensors)
                _ = compare(c.label, swiftOut: ys, swiftDx: Array(dF[1...]), params: dec.parameters, ref: ref, dxFrom: 1)
                done = true
                break
            }
            XCTAssertTrue(done, "\(c.label): no seed with a top-k gap")
        }
    }
}
