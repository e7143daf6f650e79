import Foundation
import XCTest
import MTLCore
import MTLTestSupport
@testable import MTLNN
@testable import MTLModels

/// MT-CP: exact parameter counts (docs/ARCHITECTURES.md §4.4, SEED Appendix B), finite differences of
/// every module and of the whole decoder, and float64 cross-checks against the from-spec reference
/// tools/mtcp_reference.py (weights copied by name).
final class MTCPTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path

    func count(_ ps: [Parameter]) -> Int { ps.reduce(0) { $0 + $1.value.count } }

    func random(_ shape: [Int], _ rng: inout Philox, scale: Float = 1) -> Tensor {
        Tensor(shape, (0..<shape.reduce(1, *)).map { _ in (2 * rng.uniform() - 1) * scale })
    }

    /// Σ r·y in Double.
    func functional(_ ys: [Tensor], _ rs: [Tensor]) -> Double {
        var s = 0.0
        for (y, r) in zip(ys, rs) { for i in 0..<y.count { s += Double(y.data[i]) * Double(r.data[i]) } }
        return s
    }

    /// BN shifts that keep the ReLUs after them (and CBAM's MLP ReLU: small weights, positive bias) away from
    /// their kinks, where finite differences are meaningless; the CFM's query/key BNs give θ, φ ≈ 1.5 ± 0.5, an
    /// affinity neither uniform (o would be nearly constant and BN_o ill-conditioned) nor saturated.
    func smoothen(_ params: [Parameter]) {
        for p in params {
            let parts = p.name.split(separator: ".")
            guard parts.count >= 2 else { continue }
            let owner = parts[parts.count - 2], leaf = parts.last!
            if owner == "bn_q" || owner == "bn_k" { p.value.fill(leaf == "bias" ? 1.5 : 0.5) }
            else if owner.hasPrefix("bn") && leaf == "bias" { p.value.fill(3) }
            else if owner == "fuse" && leaf == "bias" { p.value.fill(3) }
            else if owner == "fc1" { if leaf == "bias" { p.value.fill(1.5) } else { p.value.scale(0.3) } }
        }
    }

    /// Central differences along random unit directions of `x` against ⟨analytic, direction⟩:
    /// |numeric − analytic| ≤ tol·max(|numeric|, |analytic|) + floor (float32 forward).
    func directional(_ label: String, _ x: Tensor, _ analytic: [Float], eps: Float = 1e-2, tol: Double = 2e-2,
                     floor: Double = 2e-3, _ f: () -> Double, file: StaticString = #filePath, line: UInt = #line) {
        var rng = Philox(seed: 77, stream: UInt64(x.count))
        var worst = 0.0
        for _ in 0..<2 {
            let dir = random(x.shape, &rng)
            dir.scale(Float(1 / dir.sumOfSquares().squareRoot()))
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
        XCTAssertLessThan(worst, floor, "\(label): finite differences differ from the backward by \(worst) beyond \(tol) relative",
                          file: file, line: line)
    }

    /// Checks every input and every parameter of a module (one tensor at a time).
    func checkModule(_ label: String, inputs: [Tensor], dInputs: [[Float]], params: [Parameter], eps: Float = 1e-2,
                     tol: Double = 2e-2, floor: Double = 2e-3, _ f: () -> Double, file: StaticString = #filePath, line: UInt = #line) {
        for (i, x) in inputs.enumerated() { directional("\(label) dx\(i)", x, dInputs[i], eps: eps, tol: tol, floor: floor, f, file: file, line: line) }
        for p in params {
            let g = p.grad.array
            XCTAssertTrue(g.contains { $0 != 0 }, "\(label) \(p.name): zero gradient", file: file, line: line)
            directional("\(label) \(p.name)", p.value, g, eps: eps, tol: tol, floor: floor, f, file: file, line: line)
        }
    }

    // MARK: counts

    /// A parameter-free stand-in for a backbone with Swin-T's four widths (the neck's count depends on them only).
    final class WidthsOnly: FeatureEncoder {
        let featureChannels: [Int]
        init(_ c: [Int]) { featureChannels = c }
        var featureStrides: [Int] { [4, 8, 16, 32] }
        var parameters: [Parameter] { [] }
        var batchNorms: [BatchNorm2d] { [] }
        var parameterGroupsInBackwardOrder: [[Parameter]] { [] }
        func forward(_ x: Tensor) -> Features { [] }
        func backward(_ dFeatures: Features, groupDone: ((Int) -> Void)?) {}
    }

    /// Appendix B / §2.5 "used" counts at d = 256. Every per-task module's count is a quadratic in d (weights
    /// d², biases and norms d, relative-position tables and the 1-channel CBAM BNs constant), so the modules are
    /// built at three small widths and the exact quadratic through those counts is evaluated at 256 (building
    /// the 27 M parameters per task would cost seconds of random initialisation); the heads are built at 256.
    /// T = 4 (CFM with a third gate), the paper variant (+4 FPN scalars per task), and the FPN-lite neck on
    /// Swin-T's widths (SEED §2.7: 1,025,792; with Swin-T 27,520,698 and the NYUD decoder 111,211,342).
    func testParameterCountsMatchTheReference() {
        var rng = Philox(seed: 1, stream: 0)
        /// Counts at d = 8, 16, 32 → the quadratic's value at 256 (Lagrange form, exact in integers).
        func at256(_ count: (Int) -> Int) -> Int {
            let (y0, y1, y2) = (count(8), count(16), count(32))
            // p(d) with nodes 8, 16, 32: p(256) = y0·L0 + y1·L1 + y2·L2, L0 = (256−16)(256−32)/((8−16)(8−32)), …
            let l0 = (256 - 16) * (256 - 32) / ((8 - 16) * (8 - 32)), l1 = (256 - 8) * (256 - 32) / ((16 - 8) * (16 - 32))
            let l2 = (256 - 8) * (256 - 16) / ((32 - 8) * (32 - 16))
            return y0 * l0 + y1 * l1 + y2 * l2
        }
        let transformer = at256 { MTCPTransformer("t", dim: $0, depths: [1, 2, 1], heads: [2, 2, 2], window: 7, rng: &rng).parameterCount }
        XCTAssertEqual(transformer, 22_323_272, "task transformer")
        XCTAssertEqual(at256 { MTCPFPN("f", inChannels: [$0, 2 * $0, 4 * $0], dim: $0, dynamic: false, rng: &rng).parameterCount }, 1_049_600, "FPN")
        XCTAssertEqual(at256 { MTCPFPN("f", inChannels: [$0, 2 * $0, 4 * $0], dim: $0, dynamic: true, rng: &rng).parameterCount }, 1_049_604,
                       "dynamic FPN")
        // CBAM's MLP width is ⌊c/16⌋, a linear function of d only when 16 | d: the CFM and SRMs at d = 16, 32, 64.
        func at256b(_ count: (Int) -> Int) -> Int {
            let (y0, y1, y2) = (count(16), count(32), count(64))
            let l0 = (256 - 32) * (256 - 64) / ((16 - 32) * (16 - 64)), l1 = (256 - 16) * (256 - 64) / ((32 - 16) * (32 - 64))
            let l2 = (256 - 16) * (256 - 32) / ((64 - 16) * (64 - 32))
            return y0 * l0 + y1 * l1 + y2 * l2
        }
        XCTAssertEqual(at256b { MTCPCFM("c", dim: $0, tasks: 3, stride: 4, queryBlock: 256, rng: &rng).parameterCount }, 481_264, "CFM")
        XCTAssertEqual(at256b { MTCPCFM("c", dim: $0, tasks: 4, stride: 8, queryBlock: 256, rng: &rng).parameterCount }, 678_128, "CFM, T = 4")
        XCTAssertEqual(at256b { MTCPTraceBack("s", dim: $0, rng: &rng).parameterCount }, 3_370_040, "SRMs")
        XCTAssertEqual((0..<3).map { i in at256b { MTCPTraceBack("s", dim: $0, rng: &rng).srms[i].parameterCount } }, [1_783_064, 1_347_624, 239_352])
        let perTask = 22_323_272 + 1_049_600 + 481_264 + 3_370_040
        XCTAssertEqual(perTask, 27_224_176)
        func heads(_ tasks: [(String, Int)], _ layout: String) -> (Int, Int) {
            var inter = 0, final = 0
            for (t, c) in tasks {
                let s = MTCPTaskHeads.of(task: t, layout: layout)
                inter += 2 * MTCPInterHead("i", dim: 256, outChannels: c, convs: s.interConvs, rng: &rng).parameterCount
                final += MTCPFinalHead("h", kind: s.kind, dim: 256, outChannels: c, up: s.up, rng: &rng).parameterCount
            }
            return (inter, final)
        }
        let nyud = heads([("seg", 40), ("depth", 1), ("normals", 3)], "nyud")
        XCTAssertEqual(nyud.0, 812_120, "NYUD intermediate heads")
        XCTAssertEqual(nyud.1, 180_204, "NYUD final heads")
        XCTAssertEqual(3 * perTask + nyud.0 + nyud.1, 82_664_852, "NYUD decoder")
        let pascal = heads([("seg", 21), ("parts", 7), ("saliency", 1)], "pascal")
        XCTAssertEqual(pascal.0, 542_266, "PASCAL intermediate heads")
        XCTAssertEqual(pascal.1, 205_597, "PASCAL final heads")
        XCTAssertEqual(3 * perTask + pascal.0 + pascal.1, 82_420_391, "PASCAL decoder")
        // The decoder is exactly its modules (a small width, so that the test stays cheap).
        var o = MTCPOptions()
        o.dim = 16
        let dec = MTCPDecoder(tasks: [("seg", 40), ("depth", 1), ("normals", 3)], inChannels: 16, options: o, rng: &rng)
        let parts = dec.transformers.map { $0.parameterCount }.reduce(0, +) + dec.fpns.map { $0.parameterCount }.reduce(0, +)
            + dec.cfms.map { $0.parameterCount }.reduce(0, +) + dec.traceBacks.map { $0.parameterCount }.reduce(0, +)
            + dec.interHeads.joined().map { $0.parameterCount }.reduce(0, +) + dec.heads.map { $0.parameterCount }.reduce(0, +)
        XCTAssertEqual(dec.parameterCount, parts)
        XCTAssertEqual(Set(dec.parameters.map { $0.name }).count, dec.parameters.count, "unique names")
        XCTAssertTrue(dec.sharedParameters.isEmpty)
        XCTAssertEqual(dec.taskParameters.map { count($0) }.reduce(0, +), dec.parameterCount)
        let neck = MTCPEncoder(backbone: WidthsOnly([96, 192, 384, 768]), dim: 256, rng: &rng)
        XCTAssertEqual(count(neck.neckParameters), 1_025_792, "FPN-lite neck on Swin-T's widths")
        XCTAssertEqual(27_520_698 + 1_025_792 + 82_664_852, 111_211_342)
    }

    func testBadOptionsAreOneLineErrors() {
        func message(_ edit: (inout MTCPOptions) -> Void, tasks: Int = 3) -> String {
            var o = MTCPOptions()
            edit(&o)
            do { try MTCPDecoder.validate(o, tasks: tasks); return "" } catch { return "\(error)" }
        }
        XCTAssertEqual(message { _ in }, "")
        XCTAssertTrue(message { $0.variant = "dynamic" }.contains("model.mtcp.variant: expected code|paper, found 'dynamic'"))
        XCTAssertTrue(message { $0.cfmStride = 16 }.contains("model.mtcp.cfm_stride: expected 4|8, found 16"))
        XCTAssertTrue(message({ _ in }, tasks: 1).contains("model.mtcp.tasks"))
        XCTAssertTrue(message { $0.heads = [3, 2, 2] }.contains("model.mtcp.heads"))
        XCTAssertFalse(message { $0.dim = 15 }.contains("\n"))
    }

    // MARK: finite differences

    func testCBAMAndPoolingFiniteDifferences() {
        Threads.set(1)
        var rng = Philox(seed: 3, stream: 1)
        let cbam = CBAM("cbam", channels: 8, reduction: 2, rng: &rng)
        smoothen(cbam.parameters)
        let x = random([2, 8, 5, 7], &rng), r = random([2, 8, 5, 7], &rng)
        cbam.zeroGrad()
        _ = cbam.forward(x)
        let dx = cbam.backward(r).array
        checkModule("CBAM", inputs: [x], dInputs: [dx], params: cbam.parameters) { self.functional([cbam.forward(x)], [r]) }
        // The ceil-mode 2×2 average on an odd grid: the exact adjoint of its forward.
        let pool = CeilAvgPool2()
        let y = pool.forward(x)
        XCTAssertEqual(y.shape, [2, 8, 3, 4])
        XCTAssertEqual(y[0], (x[0] + x[1] + x[7] + x[8]) / 4, accuracy: 1e-6)
        XCTAssertEqual(y[3], (x[6] + x[13]) / 2, accuracy: 1e-6, "the overhanging column averages what it holds")
        let ry = random(y.shape, &rng)
        let dp = pool.backward(ry).array
        directional("pool dx", x, dp) { self.functional([pool.forward(x)], [ry]) }
    }

    func testTransformerAndFPNFiniteDifferences() {
        Threads.set(1)
        var rng = Philox(seed: 4, stream: 1)
        let tr = MTCPTransformer("tr", dim: 8, depths: [1, 2, 1], heads: [2, 2, 2], window: 3, rng: &rng)
        let z = random([2, 8, 5, 7], &rng)    // odd grids: padding, shift masks and odd merging
        let outs = tr.forward(z)
        XCTAssertEqual(outs.map { $0.shape }, [[2, 8, 5, 7], [2, 16, 3, 4], [2, 32, 2, 2]])
        let rs = outs.map { random($0.shape, &rng) }
        tr.zeroGrad()
        _ = tr.forward(z)
        let dz = tr.backward(rs).array
        checkModule("transformer", inputs: [z], dInputs: [dz], params: tr.parameters) { self.functional(tr.forward(z), rs) }
        for dynamic in [false, true] {
            let fpn = MTCPFPN("fpn", inChannels: [8, 16, 32], dim: 8, dynamic: dynamic, rng: &rng)
            for p in fpn.dynamic { p.value.data[0] = Float(rng.uniform()); p.value.data[1] = -Float(rng.uniform()) }
            let xs = outs.map { random($0.shape, &rng) }
            let e = fpn.forward(xs)
            XCTAssertEqual(e.shape, [2, 8, 5, 7])
            let re = random(e.shape, &rng)
            fpn.zeroGrad()
            _ = fpn.forward(xs)
            let dxs = fpn.backward(re).map { $0.array }
            checkModule("FPN dynamic=\(dynamic)", inputs: xs, dInputs: dxs, params: fpn.parameters) { self.functional([fpn.forward(xs)], [re]) }
        }
    }

    /// The CFM at stride 4 (query blocks of 5 pixels over N = 35) and stride 8 (odd grid), T = 3, by finite
    /// differences; and the chunked CFM equals the one-block (dense) CFM, outputs and every gradient.
    func testCFMFiniteDifferencesAndChunking() {
        Threads.set(1)
        for stride in [4, 8] {
            var rng = Philox(seed: 5, stream: UInt64(stride))
            let cfm = MTCPCFM("cfm", dim: 8, tasks: 3, stride: stride, queryBlock: 5, reduction: 2, rng: &rng)
            smoothen(cfm.parameters)
            let es = (0..<3).map { _ in random([2, 8, 5, 7], &rng) }
            let r = random([2, 8, 5, 7], &rng)
            cfm.zeroGrad()
            _ = cfm.forward(es[0], [es[1], es[2]])
            let (dm, da) = cfm.backward(r)
            let d = [dm.array] + da.map { $0.array }
            checkModule("CFM stride \(stride)", inputs: es, dInputs: d, params: cfm.parameters, eps: 5e-3, tol: 3e-2, floor: 1e-2) {
                self.functional([cfm.forward(es[0], [es[1], es[2]])], [r])
            }
            // One block of all N query pixels: the same numbers.
            var rng2 = Philox(seed: 5, stream: UInt64(stride))
            let dense = MTCPCFM("cfm", dim: 8, tasks: 3, stride: stride, queryBlock: 1000, reduction: 2, rng: &rng2)
            for (p, q) in zip(dense.parameters, cfm.parameters) { p.value.copy(from: q.value) }
            let y1 = cfm.forward(es[0], [es[1], es[2]]).array, y2 = dense.forward(es[0], [es[1], es[2]]).array
            cfm.zeroGrad(); dense.zeroGrad()
            _ = cfm.forward(es[0], [es[1], es[2]])
            let g1 = cfm.backward(r).0.array
            _ = dense.forward(es[0], [es[1], es[2]])
            let g2 = dense.backward(r).0.array
            // Equal up to float32 summation order (the float64 reference checks chunked == dense to 1e-14).
            XCTAssertLessThan(relative(y1, y2), 1e-5, "chunked vs dense forward, stride \(stride)")
            XCTAssertLessThan(relative(g1, g2), 1e-4, "chunked vs dense input gradient, stride \(stride)")
            // Each tensor against max(its scale, 1e-3 × the largest): bn_k's bias shifts every key's logit of a query
            // by the same amount, so the softmax cancels it and its gradient is rounding noise.
            let scale = dense.parameters.reduce(0.0) { m, q in max(m, q.grad.array.reduce(0.0) { max($0, Double(abs($1))) }) }
            for (p, q) in zip(cfm.parameters, dense.parameters) {
                let a = p.grad.array, b = q.grad.array
                var d = 0.0, own = 0.0
                for (x, y) in zip(a, b) { d = max(d, Double(abs(x - y))); own = max(own, Double(abs(y))) }
                XCTAssertLessThan(d / max(own, 1e-3 * scale), 1e-3, "chunked vs dense \(p.name)")
            }
        }
    }

    func testSRMTraceBackAndHeadsFiniteDifferences() {
        Threads.set(1)
        var rng = Philox(seed: 6, stream: 1)
        let tb = MTCPTraceBack("srm", dim: 4, reduction: 2, rng: &rng)
        smoothen(tb.parameters)
        let c = random([2, 4, 6, 7], &rng)
        let rs = [random([2, 4, 6, 7], &rng), random([2, 8, 3, 4], &rng), random([2, 16, 2, 2], &rng)]
        let ps = tb.forward(c, rs)
        XCTAssertEqual(ps.map { $0.shape }, [[2, 4, 2, 2], [2, 4, 3, 4], [2, 4, 6, 7]])
        let qs = ps.map { random($0.shape, &rng) }
        tb.zeroGrad()
        _ = tb.forward(c, rs)
        let (dc, drs) = tb.backward(qs)
        checkModule("trace-back", inputs: [c] + rs, dInputs: [dc.array] + drs.map { $0.array }, params: tb.parameters) {
            self.functional(tb.forward(c, rs), qs)
        }
        for convs in [1, 2] {
            let head = MTCPInterHead("inter", dim: 4, outChannels: 3, convs: convs, rng: &rng)
            smoothen(head.parameters)
            let x = random([2, 4, 3, 5], &rng), r = random([2, 3, 3, 5], &rng)
            head.zeroGrad()
            _ = head.forward(x)
            let dx = head.backward(r).array
            checkModule("inter head \(convs)", inputs: [x], dInputs: [dx], params: head.parameters) { self.functional([head.forward(x)], [r]) }
        }
        for (kind, up) in [(MTCPFinalHead.Kind.seg, 2), (.seg, 4), (.plain, 1), (.depth, 2)] {
            let head = MTCPFinalHead("head", kind: kind, dim: 4, outChannels: kind == .depth ? 1 : 3, up: up, depthMid: 6, rng: &rng)
            smoothen(head.parameters)
            if kind == .depth { head.conv2!.bias!.value.fill(2) }
            let x = random([2, 4, 3, 5], &rng)
            let y = head.forward(x)
            XCTAssertEqual(y.shape, [2, kind == .depth ? 1 : 3, 3 * up, 5 * up])
            let r = random(y.shape, &rng)
            head.zeroGrad()
            let dx = head.backward(r).array
            checkModule("head \(kind) ×\(up)", inputs: [x], dInputs: [dx], params: head.parameters) { self.functional([head.forward(x)], [r]) }
        }
    }

    /// The whole tiny decoder (3 tasks, d = 8, z 5×7 → image 20×28) by central differences along random
    /// directions through all parameters at once and through z, backpropagating each task alone (its
    /// gradient reaches the other tasks' transformers and FPNs through its CFM) and all together, with
    /// the intermediate predictions' gradients.
    func testDecoderFiniteDifferences() {
        Threads.set(1)
        var o = MTCPOptions()
        o.dim = 8; o.window = 3; o.reduction = 2; o.depthMid = 6; o.queryBlock = 7
        for stride in [4, 8] {
            o.cfmStride = stride
            var rng = Philox(seed: 7, stream: UInt64(stride))
            let tasks: [(name: String, channels: Int)] = [("seg", 3), ("depth", 1), ("normals", 3)]
            let dec = MTCPDecoder(tasks: tasks, inChannels: 8, options: o, rng: &rng)
            smoothen(dec.parameters)
            for h in dec.heads where h.kind == .depth { h.conv2!.bias!.value.fill(2) }
            let z = random([2, 8, 5, 7], &rng)
            let (H, W) = (20, 28)
            let finals = dec.forward([z], height: H, width: W, active: [true, true, true]).map { $0! }
            XCTAssertEqual(finals.map { $0.shape }, tasks.map { [2, $0.channels, H, W] })
            let rf = finals.map { random($0.shape, &rng) }
            let ra = (0..<3).map { t in dec.auxiliaryPredictions(t).map { random($0.shape, &rng) } }
            XCTAssertEqual(ra.map { $0.count }, [2, 2, 2])
            for active in [[true, false, false], [false, false, true], [true, true, true]] {
                dec.zeroGrad()
                _ = dec.forward([z], height: H, width: W, active: active)
                let dz = dec.backward(zip(rf, active).map { $1 ? $0 : nil }, auxiliary: zip(ra, active).map { $1 ? $0 : nil })[0].array
                let f = { () -> Double in
                    let ys = dec.forward([z], height: H, width: W, active: active)
                    var s = 0.0
                    for t in 0..<3 where active[t] {
                        s += self.functional([ys[t]!] + dec.auxiliaryPredictions(t), [rf[t]] + ra[t])
                    }
                    return s
                }
                // The functional sums ~2·10⁴ float32 outputs: its rounding alone moves a difference quotient by ~5e-3.
                directional("decoder stride \(stride) \(active) dz", z, dz, eps: 1e-2, tol: 3e-2, floor: 2e-2, f)
                // Every parameter at once: flatten into one direction.
                let params = dec.parameters
                var g: [Float] = [], untouched = 0
                for p in params {
                    let a = p.grad.array
                    if !a.contains(where: { $0 != 0 }) {
                        untouched += 1
                        // A task that is not backpropagated leaves its CFM, SRMs and heads untouched.
                        let owner = tasks.indices.first { p.name.contains(".\(tasks[$0].name).") || p.name.hasSuffix(".\(tasks[$0].name)") }
                        XCTAssertTrue(owner.map { !active[$0] && !p.name.contains("transformer") && !p.name.contains("fpn") } ?? false,
                                      "\(active) \(p.name): zero gradient")
                    }
                    g += a
                }
                let flat = Tensor([g.count])
                var k = 0
                for p in params { flat.data.advanced(by: k).update(from: p.value.data, count: p.value.count); k += p.value.count }
                let fAll = { () -> Double in
                    var k = 0
                    for p in params { p.value.data.update(from: flat.data + k, count: p.value.count); k += p.value.count }
                    return f()
                }
                directional("decoder stride \(stride) \(active) all parameters", flat, g, eps: 1e-2, tol: 3e-2, floor: 2e-2, fAll)
                _ = fAll()
            }
        }
    }

    // MARK: PyTorch float64 cross-checks

    /// ‖a − b‖∞ / max(‖b‖∞, tiny).
    func relative(_ a: [Float], _ b: [Float]) -> Double {
        precondition(a.count == b.count, "sizes \(a.count) vs \(b.count)")
        var d = 0.0, s = 0.0
        for (x, y) in zip(a, b) { d = max(d, Double(abs(x - y))); s = max(s, Double(abs(y))) }
        return d / max(s, 1e-30)
    }

    /// One module run of the reference: `expr` (an mtcp_reference module) with the Swift weights loaded by
    /// name (prefix stripped), called by `call` on the inputs, backpropagated from the cotangents; the
    /// Swift side's outputs and input gradients to compare with.
    struct Job {
        let label: String, expr: String, call: String, prefix: String
        let params: [Parameter]
        let inputs: [Tensor], cotangents: [Tensor]
        let swiftOut: [[Float]], swiftDx: [[Float]]
        var gradientTolerance = 1e-4
    }

    /// Runs every job in ONE python3 process (torch's import dominates a small module's check) and compares
    /// each with `compare`.
    func check(_ jobs: [Job]) throws {
        let ex = try TorchExchange()
        var table: [String] = []
        for (k, job) in jobs.enumerated() {
            for p in job.params { try ex.put("j\(k)p:" + String(p.name.dropFirst(job.prefix.count)), p.value) }
            for (i, x) in job.inputs.enumerated() { try ex.put("j\(k)in\(i)", x) }
            for (i, c) in job.cotangents.enumerated() { try ex.put("j\(k)dy\(i)", c) }
            table.append("(\"\(job.expr)\", \"\(job.call)\", \(job.inputs.count), \(job.cotangents.count))")
        }
        let (status, log) = try ex.run(imports: "sys.path.insert(0, \"\(Self.root)/tools\"); import mtcp_reference as M; from ref_layers import load_named, forward_backward", """
            for k, (expr, call, nin, ncot) in enumerate([\(table.joined(separator: ", "))]):
                mod = eval(expr)
                pre = "j%dp:" % k
                load_named(mod, {n[len(pre):]: T[n] for n in T if n.startswith(pre)})
                ins = [T["j%din%d" % (k, i)] for i in range(nin)]
                cots = [T["j%ddy%d" % (k, i)] for i in range(ncot)]
                outs, dx, gp, _ = forward_backward(mod, ins, cots, call=eval(call))
                assert len(outs) == len(cots), (expr, len(outs), len(cots))
                for i, o in enumerate(outs): out("j%dout%d" % (k, i), o)
                for i, g in enumerate(dx):
                    if g is not None: out("j%ddx%d" % (k, i), g)
                for n, g in gp.items(): out("j%dg:" % k + n, g)
            """)
        try XCTSkipIf(status == 77, "torch not importable by python3 (\(log.trimmingCharacters(in: .whitespacesAndNewlines))): MT-CP cross-check skipped")
        guard status == 0 else { throw MTLError("mtcp_reference failed:\n\(log)") }
        for (k, job) in jobs.enumerated() {
            let outs = try job.cotangents.indices.map { try ex.get("j\(k)out\($0)") }
            let dx = job.inputs.indices.map { try? ex.get("j\(k)dx\($0)") }
            var grads: [String: [Float]] = [:]
            for p in job.params { grads[p.name] = try ex.get("j\(k)g:" + String(p.name.dropFirst(job.prefix.count))) }
            compare(job.label, swiftOut: job.swiftOut, swiftDx: job.swiftDx, params: job.params, ref: (outs, dx, grads),
                    gradientTolerance: job.gradientTolerance)
        }
    }

    @discardableResult
    func compare(_ label: String, swiftOut: [[Float]], swiftDx: [[Float]], params: [Parameter],
                 ref: (outs: [[Float]], dx: [[Float]?], grads: [String: [Float]]), gradientTolerance: Double = 1e-4,
                 file: StaticString = #filePath, line: UInt = #line) -> (Double, Double) {
        var fwd = 0.0, bwd = 0.0
        for (a, b) in zip(swiftOut, ref.outs) { fwd = max(fwd, relative(a, b)) }
        for (i, a) in swiftDx.enumerated() {
            guard let b = ref.dx[i] else { XCTFail("\(label): no reference dx\(i)", file: file, line: line); continue }
            bwd = max(bwd, relative(a, b))
        }
        var worstName = ""
        // Gradients that vanish by the equations (a bias before a BN) are ~1e-17 in float64 and ~1e-8 in
        // float32: each tensor is measured against max(its own scale, 1e-3 × the module's largest gradient).
        let scale = params.reduce(0.0) { m, p in max(m, ref.grads[p.name]!.reduce(0.0) { max($0, Double(abs($1))) }) }
        for p in params {
            let a = p.grad.array, b = ref.grads[p.name]!
            var d = 0.0, s = 0.0, own = 0.0
            for (x, y) in zip(a, b) { d = max(d, Double(abs(x - y))); s = max(s, Double(abs(y))); own = max(own, Double(abs(x))) }
            if s < 1e-10 * scale {
                // Zero by the equations (a conv bias right before a batch-statistics BN): float32 leaves rounding.
                XCTAssertLessThan(own, 1e-5 * scale, "\(label) \(p.name): the reference gradient is zero", file: file, line: line)
                continue
            }
            let e = d / max(s, 1e-3 * scale)
            if e > bwd { bwd = e; worstName = p.name }
        }
        print("MT-CP cross-check \(label): forward max rel error \(fwd), gradients \(bwd) \(worstName)")
        XCTAssertLessThan(fwd, 1e-5, "\(label) forward", file: file, line: line)
        XCTAssertLessThan(bwd, gradientTolerance, "\(label) gradients (worst \(worstName))", file: file, line: line)
        return (fwd, bwd)
    }

    /// Every module (d = 16) and the whole decoder against the reference, in one python3 run.
    func testAgainstPyTorch() throws {
        Threads.set(1)
        try check(moduleJobs() + decoderJobs())
    }

    func moduleJobs() -> [Job] {
        var rng = Philox(seed: 8, stream: 1)
        var jobs: [Job] = []
        func job(_ label: String, _ expr: String, call: String = "None", prefix: String, params: [Parameter], inputs: [Tensor],
                 forward: () -> [Tensor], backward: ([Tensor]) -> [Tensor]) {
            let ys = forward()
            let outs = ys.map { $0.array }
            let cots = ys.map { random($0.shape, &rng) }
            for p in params { p.grad.zero() }
            _ = forward()
            let dx = backward(cots).map { $0.array }
            jobs.append(Job(label: label, expr: expr, call: call, prefix: prefix, params: params, inputs: inputs, cotangents: cots,
                            swiftOut: outs, swiftDx: dx))
        }
        let cbam = CBAM("cbam", channels: 16, reduction: 4, rng: &rng)
        let x = random([2, 16, 6, 9], &rng)
        job("CBAM", "M.CBAM(16, 4)", prefix: "cbam.", params: cbam.parameters, inputs: [x],
            forward: { [cbam.forward(x)] }, backward: { [cbam.backward($0[0])] })
        // The pyramid transformer on an 8×12 grid (a 32×48 image), window 7 (padding and shifts).
        let tr = MTCPTransformer("tr", dim: 16, depths: [1, 2, 1], heads: [2, 2, 2], window: 7, rng: &rng)
        let z = random([2, 16, 8, 12], &rng)
        job("task transformer", "M.TaskTransformer(16, (1, 2, 1), (2, 2, 2), 7)", prefix: "tr.", params: tr.parameters, inputs: [z],
            forward: { tr.forward(z) }, backward: { [tr.backward($0)] })
        // FPN, both variants, uneven nearest sizes (9×13 → 5×7 → 3×4).
        for variant in ["code", "paper"] {
            let fpn = MTCPFPN("fpn", inChannels: [16, 32, 64], dim: 16, dynamic: variant == "paper", rng: &rng)
            for p in fpn.dynamic { p.value.data[0] = 0.3; p.value.data[1] = -0.4 }
            let xs = [random([2, 16, 9, 13], &rng), random([2, 32, 5, 7], &rng), random([2, 64, 3, 4], &rng)]
            job("FPN \(variant)", "M.FPN((16, 32, 64), 16, '\(variant)')", call: "lambda m, *x: m(list(x))", prefix: "fpn.",
                params: fpn.parameters, inputs: xs, forward: { [fpn.forward(xs)] }, backward: { fpn.backward($0[0]) })
        }
        // CFM, T = 3: stride 4 in 13-pixel query blocks (the reference dense), stride 8 on an odd grid; T = 4.
        for (stride, grid, tasks) in [(4, (8, 12), 3), (8, (9, 13), 3), (4, (6, 7), 4)] {
            let cfm = MTCPCFM("cfm", dim: 16, tasks: tasks, stride: stride, queryBlock: 13, reduction: 4, rng: &rng)
            let es = (0..<tasks).map { _ in random([2, 16, grid.0, grid.1], &rng) }
            job("CFM stride \(stride) T = \(tasks)", "M.CFM(16, \(tasks), None, \(stride / 4), False, 4)", prefix: "cfm.",
                params: cfm.parameters, inputs: es, forward: { [cfm.forward(es[0], Array(es[1...]))] },
                backward: { let (dm, da) = cfm.backward($0[0]); return [dm] + da })
        }
        // The trace-back chain (SRMs with and without the q branch; up- and down-resizes).
        let tb = MTCPTraceBack("srm", dim: 16, reduction: 4, rng: &rng)
        let ct = random([2, 16, 8, 12], &rng)
        let trs = [random([2, 16, 8, 12], &rng), random([2, 32, 4, 6], &rng), random([2, 64, 2, 3], &rng)]
        job("trace-back", "M.TraceBack(16, False, 4)", call: "lambda m, c, *r: m(c, list(r))", prefix: "srm.", params: tb.parameters,
            inputs: [ct] + trs, forward: { tb.forward(ct, trs) }, backward: { let (dc, dr) = tb.backward($0); return [dc] + dr })
        // Heads: intermediate kinds 1, 2; final seg ×2 and ×4, plain, depth.
        for convs in [1, 2] {
            let h = MTCPInterHead("inter", dim: 16, outChannels: 5, convs: convs, rng: &rng)
            let hx = random([2, 16, 4, 6], &rng)
            job("inter head \(convs)", "M.InterHead(16, 5, \(convs))", prefix: "inter.", params: h.parameters, inputs: [hx],
                forward: { [h.forward(hx)] }, backward: { [h.backward($0[0])] })
        }
        for (kind, up) in [(MTCPFinalHead.Kind.seg, 2), (.seg, 4), (.plain, 1), (.depth, 2)] {
            let c = kind == .depth ? 1 : 5
            let h = MTCPFinalHead("head", kind: kind, dim: 16, outChannels: c, up: up, depthMid: 8, rng: &rng)
            let hx = random([2, 16, 4, 6], &rng)
            job("final head \(kind) ×\(up)", "M.FinalHead(16, \(c), '\(kind.rawValue)', \(up), 8)", prefix: "head.", params: h.parameters,
                inputs: [hx], forward: { [h.forward(hx)] }, backward: { [h.backward($0[0])] })
        }
        return jobs
    }

    /// The whole decoder against M.MTCPDecoder at d = 16 (dims 16-32-64) on a 32×48 image (z 8×12): 2 tasks
    /// (NYUD layout, paper FPN, CFM stride 4), 3 tasks (PASCAL layout, code FPN, stride 8) and NYUD's 3 tasks
    /// (code, stride 4). Outputs per task: final, intermediate 0, intermediate 1.
    func decoderJobs() -> [Job] {
        let cases: [(String, [(name: String, channels: Int)], String, String, Int)] = [
            ("decoder 2 tasks nyud paper s4", [("seg", 5), ("depth", 1)], "nyud", "paper", 4),
            ("decoder 3 tasks pascal code s8", [("seg", 5), ("parts", 3), ("saliency", 1)], "pascal", "code", 8),
            ("decoder 3 tasks nyud code s4", [("seg", 5), ("depth", 1), ("normals", 3)], "nyud", "code", 4)]
        var jobs: [Job] = []
        for (label, tasks, layout, variant, stride) in cases {
            var o = MTCPOptions()
            o.dim = 16; o.reduction = 4; o.depthMid = 8; o.headLayout = layout; o.variant = variant; o.cfmStride = stride; o.queryBlock = 17
            var rng = Philox(seed: 9, stream: UInt64(tasks.count))
            let dec = MTCPDecoder(tasks: tasks, inChannels: 16, options: o, rng: &rng)
            for bn in dec.batchNorms { for i in 0..<bn.channels { bn.weight.value[i] = 0.5 + rng.uniform(); bn.bias.value[i] = rng.uniform() - 0.5 } }
            for f in dec.fpns { for p in f.dynamic { p.value.data[0] = Float(rng.uniform()); p.value.data[1] = -Float(rng.uniform()) } }
            let (H, W) = (32, 48)
            let z = random([2, 16, 8, 12], &rng)
            let finals = dec.forward([z], height: H, width: W)
            var ys: [[Float]] = [], rs: [Tensor] = []
            for t in tasks.indices {
                for y in [finals[t]] + dec.auxiliaryPredictions(t) { ys.append(y.array); rs.append(random(y.shape, &rng)) }
            }
            dec.zeroGrad()
            _ = dec.forward([z], height: H, width: W)
            let dz = dec.backward(tasks.indices.map { rs[3 * $0] }, auxiliary: tasks.indices.map { [rs[3 * $0 + 1], rs[3 * $0 + 2]] })[0].array
            let specs = tasks.map { t -> String in
                let s = MTCPTaskHeads.of(task: t.name, layout: layout)
                return "'\(t.name)': (\(t.channels), \(s.interConvs), '\(s.kind.rawValue)', \(s.up))"
            }.joined(separator: ", ")
            jobs.append(Job(label: label, expr: "M.MTCPDecoder('nyud', d=16, variant='\(variant)', cfm_stride=\(stride), reduction=4, depth_mid=8, specs={\(specs)})",
                            call: "lambda m, z: m(z, (\(H), \(W)))", prefix: "decoder.", params: dec.parameters, inputs: [z], cotangents: rs,
                            swiftOut: ys, swiftDx: [dz],
                            // The key CBAM's 1-channel spatial-BN parameters are sums with cancellation (BN_k after it
                            // removes the gate's overall scale): float32 reaches 1.0e-4–2.7e-4 of them (seed-dependent).
                            gradientTolerance: 3e-4))
        }
        return jobs
    }
}
