import Foundation
import XCTest
import MTLCore
import MTLTestSupport
@testable import MTLNN

/// The token-layout layers of the transformer issue: finite differences, and PyTorch in float64.
final class TransformerLayerTests: XCTestCase {
    func testLayerNormGradients() {
        var rng = Philox(seed: 1, stream: 1)
        let ln = LayerNorm("ln", features: 7)
        for i in 0..<7 { ln.weight.value[i] = 0.5 + rng.uniform(); ln.bias.value[i] = rng.uniform() - 0.5 }
        let x = randomTensor([2, 5, 7], &rng, scale: 2)
        let y = ln.forward(x)
        // Each row of x̂ has mean 0 and biased variance σ²/(σ² + ε) ≈ 1.
        let r = randomTensor(y.shape, &rng)
        ln.zeroGrad()
        let dx = ln.backward(r).array
        let f = { functional(ln.forward(x), r) }
        checkGradient("LayerNorm dx", x: x, analytic: dx, f)
        checkGradient("LayerNorm dγ", x: ln.weight.value, analytic: ln.weight.grad.array, f)
        checkGradient("LayerNorm dβ", x: ln.bias.value, analytic: ln.bias.grad.array, f)
    }

    func testLayerNormIsThreadCountIndependent() {
        let saved = Threads.count
        defer { Threads.set(saved) }
        var rng = Philox(seed: 2, stream: 1)
        let x = randomTensor([3, 100, 16], &rng), dy = randomTensor([3, 100, 16], &rng)
        var results: [[Float]] = []
        for t in [1, 2] {
            Threads.set(t)
            let ln = LayerNorm("ln", features: 16)
            let y = ln.forward(x).array
            let dx = ln.backward(dy).array
            results.append(y + dx + ln.weight.grad.array + ln.bias.grad.array)
        }
        XCTAssertEqual(results[0], results[1])
    }

    func testGELUGradients() {
        var rng = Philox(seed: 3, stream: 1)
        for form in [GELU.Form.exact, .tanh] {
            let g = GELU(form)
            let x = randomTensor([3, 4, 5], &rng, scale: 3)
            let y = g.forward(x)
            let r = randomTensor(y.shape, &rng)
            let dx = g.backward(r).array
            checkGradient("GELU \(form) dx", x: x, analytic: dx, eps: 1e-3) { functional(g.forward(x), r) }
        }
        // Known values of the exact form: GELU(1) = Φ(1) = 0.8413447, GELU(−1) = −0.1586553.
        let g = GELU()
        let y = g.forward(Tensor([2], [1, -1])).array
        XCTAssertEqual(y[0], 0.8413447, accuracy: 1e-6)
        XCTAssertEqual(y[1], -0.1586553, accuracy: 1e-6)
    }

    func testSoftmaxGradientsAndLargeScores() {
        var rng = Philox(seed: 4, stream: 1)
        let sm = Softmax()
        let s = randomTensor([4, 9], &rng, scale: 3)
        let p = sm.forward(s)
        let r = randomTensor(p.shape, &rng)
        let ds = sm.backward(r).array
        checkGradient("softmax ds", x: s, analytic: ds, eps: 1e-3) { functional(sm.forward(s), r) }
        // Scores of 1e4 do not overflow; rows sum to 1.
        let big = sm.forward(Tensor([1, 3], [1e4, 1e4 - 1, -1e4])).array
        XCTAssertEqual(big.reduce(0, +), 1, accuracy: 1e-6)
        XCTAssertEqual(big[0] / big[1], Float(exp(1.0)), accuracy: 1e-4)
    }

    func testTokensRoundTripAndLinearOnTokens() {
        var rng = Philox(seed: 5, stream: 1)
        let x = randomTensor([2, 5, 3, 7], &rng)   // [B, C, H, W], sizes not multiples of the 32-tile
        let to = ToTokens(), from = FromTokens(height: 3, width: 7)
        let tokens = to.forward(x)
        XCTAssertEqual(tokens.shape, [2, 21, 5])
        // token (y, x) = 1·7 + 4 of sample 1, channel 3
        XCTAssertEqual(tokens[(1 * 21 + 11) * 5 + 3], x[((1 * 5 + 3) * 3 + 1) * 7 + 4])
        XCTAssertEqual(from.forward(tokens).array, x.array)
        XCTAssertEqual(to.backward(from.backward(x)).array, x.array, "each backward is the other's forward")

        var initRng = Philox(seed: 6, stream: 1)
        let linear = Linear("fc", inFeatures: 5, outFeatures: 4, rng: &initRng)
        let y = linear.forward(tokens)
        XCTAssertEqual(y.shape, [2, 21, 4])
        let r = randomTensor(y.shape, &rng)
        linear.zeroGrad()
        let dx = linear.backward(r).array
        let f = { functional(linear.forward(tokens), r) }
        checkGradient("Linear tokens dx", x: tokens, analytic: dx, f)
        checkGradient("Linear tokens dW", x: linear.weight.value, analytic: linear.weight.grad.array, f)
        checkGradient("Linear tokens db", x: linear.bias!.value, analytic: linear.bias!.grad.array, f)
    }

    static let imports = ""
    static let script = #"""
x, g, b = leaf("ln_x"), leaf("ln_g"), leaf("ln_b")
y = F.layer_norm(x, (x.shape[-1],), g, b, eps=1e-5); y.backward(T["ln_dy"])
out("ln_y", y); out("ln_dx", x.grad); out("ln_dg", g.grad); out("ln_db", b.grad)
for form in ("none", "tanh"):
    x = leaf("gelu_x"); y = F.gelu(x, approximate=form); y.backward(T["gelu_dy"])
    out("gelu_%s_y" % form, y); out("gelu_%s_dx" % form, x.grad)
s = leaf("sm_s"); p = torch.softmax(s, -1); p.backward(T["sm_dy"]); out("sm_p", p); out("sm_ds", s.grad)
"""#

    func testAgainstPyTorch() throws {
        let ex = try TorchExchange()
        var rng = Philox(seed: 9, stream: 1)
        let ln = LayerNorm("ln", features: 24)
        for i in 0..<24 { ln.weight.value[i] = 0.5 + rng.uniform(); ln.bias.value[i] = rng.uniform() - 0.5 }
        let lnX = randomTensor([2, 13, 24], &rng, scale: 3), lnDy = randomTensor([2, 13, 24], &rng)
        for i in 0..<lnX.count { lnX.data[i] += 2 }   // a mean far from 0
        try ex.put("ln_x", lnX); try ex.put("ln_g", ln.weight.value); try ex.put("ln_b", ln.bias.value); try ex.put("ln_dy", lnDy)
        let geluX = randomTensor([3, 50], &rng, scale: 4), geluDy = randomTensor([3, 50], &rng)
        try ex.put("gelu_x", geluX); try ex.put("gelu_dy", geluDy)
        let smS = randomTensor([6, 49], &rng, scale: 5), smDy = randomTensor([6, 49], &rng)
        try ex.put("sm_s", smS); try ex.put("sm_dy", smDy)
        let (status, log) = try ex.run(imports: Self.imports, Self.script)
        try XCTSkipIf(status == 77, "torch (or numpy) is not importable by python3 (\(log.trimmingCharacters(in: .whitespacesAndNewlines))): PyTorch comparison skipped")
        XCTAssertEqual(status, 0, "reference script failed:\n\(log)")
        guard status == 0 else { return }

        assertClose(ln.forward(lnX).array, try ex.get("ln_y"), tol: 1e-5, "LayerNorm y")
        ln.zeroGrad()
        assertClose(ln.backward(lnDy).array, try ex.get("ln_dx"), tol: 1e-5, "LayerNorm dx")
        assertClose(ln.weight.grad.array, try ex.get("ln_dg"), tol: 1e-5, "LayerNorm dγ")
        assertClose(ln.bias.grad.array, try ex.get("ln_db"), tol: 1e-5, "LayerNorm dβ")
        for (form, tag) in [(GELU.Form.exact, "none"), (.tanh, "tanh")] {
            let g = GELU(form)
            assertClose(g.forward(geluX).array, try ex.get("gelu_\(tag)_y"), tol: 1e-6, "GELU \(tag) y")
            assertClose(g.backward(geluDy).array, try ex.get("gelu_\(tag)_dx"), tol: 1e-6, "GELU \(tag) dx")
        }
        let sm = Softmax()
        assertClose(sm.forward(smS).array, try ex.get("sm_p"), tol: 1e-6, "softmax p")
        assertClose(sm.backward(smDy).array, try ex.get("sm_ds"), tol: 1e-6, "softmax ds")
    }
}

/// Window attention against finite differences and timm's WindowAttention (float64).
final class WindowAttentionTests: XCTestCase {
    /// A −100/0 mask with a different pattern per window (as the shifted windows have).
    func makeMask(windows: Int, tokens n: Int) -> Tensor {
        let m = Tensor([windows, n, n])
        for w in 0..<windows { for i in 0..<n { for j in 0..<n where (i * 7 + j * 3 + w) % 5 == 0 && i != j { m[(w * n + i) * n + j] = -100 } } }
        return m
    }

    func testGradients() {
        var rng = Philox(seed: 11, stream: 1)
        var initRng = Philox(seed: 12, stream: 1)
        let attn = WindowAttention("attn", dim: 8, heads: 2, window: 3, rng: &initRng)
        // A larger bias table than the init's, so that its gradient check is not lost in rounding.
        for i in 0..<attn.biasTable.value.count { attn.biasTable.value[i] = rng.uniform() - 0.5 }
        let x = randomTensor([4, 9, 8], &rng)   // 2 images × 2 windows
        let mask = makeMask(windows: 2, tokens: 9)
        let y = attn.forward(x, mask: mask)
        let r = randomTensor(y.shape, &rng)
        attn.zeroGrad()
        let dx = attn.backward(r).array
        let f = { functional(attn.forward(x, mask: mask), r) }
        checkGradient("attention dx", x: x, analytic: dx, eps: 1e-2, f)
        checkGradient("attention dW_qkv", x: attn.qkv.weight.value, analytic: attn.qkv.weight.grad.array, f)
        checkGradient("attention db_qkv", x: attn.qkv.bias!.value, analytic: attn.qkv.bias!.grad.array, f)
        checkGradient("attention dW_proj", x: attn.proj.weight.value, analytic: attn.proj.weight.grad.array, f)
        checkGradient("attention bias table", x: attn.biasTable.value, analytic: attn.biasTable.grad.array, f)
    }

    func testThreadCountIndependent() {
        let saved = Threads.count
        defer { Threads.set(saved) }
        var results: [[Float]] = []
        for t in [1, 2] {
            Threads.set(t)
            var rng = Philox(seed: 13, stream: 1), initRng = Philox(seed: 14, stream: 1)
            let attn = WindowAttention("attn", dim: 16, heads: 4, window: 7, rng: &initRng)
            let x = randomTensor([6, 49, 16], &rng), dy = randomTensor([6, 49, 16], &rng)
            let y = attn.forward(x, mask: makeMask(windows: 3, tokens: 49)).array
            let dx = attn.backward(dy).array
            results.append(y + dx + attn.parameters.flatMap { $0.grad.array })
        }
        XCTAssertEqual(results[0], results[1])
    }

    static let imports = "from timm.models.swin_transformer import WindowAttention"
    static let script = #"""
m = WindowAttention(16, num_heads=4, window_size=7).double()
m.fused_attn = False
sd = m.state_dict()
for k in ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias", "relative_position_bias_table"):
    sd[k] = T[k].reshape(sd[k].shape)
m.load_state_dict(sd)
x = T["x"].clone().requires_grad_(True)
y = m(x, mask=T["mask"])
y.backward(T["dy"])
out("y", y); out("dx", x.grad)
for k, p in m.named_parameters(): out("g." + k, p.grad)
"""#

    func testAgainstTimm() throws {
        let ex = try TorchExchange()
        var rng = Philox(seed: 15, stream: 1), initRng = Philox(seed: 16, stream: 1)
        let attn = WindowAttention("attn", dim: 16, heads: 4, window: 7, rng: &initRng)
        for i in 0..<attn.biasTable.value.count { attn.biasTable.value[i] = rng.uniform() - 0.5 }
        let x = randomTensor([6, 49, 16], &rng), dy = randomTensor([6, 49, 16], &rng)
        let mask = makeMask(windows: 3, tokens: 49)
        try ex.put("x", x); try ex.put("dy", dy); try ex.put("mask", mask)
        try ex.put("qkv.weight", attn.qkv.weight.value); try ex.put("qkv.bias", attn.qkv.bias!.value)
        try ex.put("proj.weight", attn.proj.weight.value); try ex.put("proj.bias", attn.proj.bias!.value)
        try ex.put("relative_position_bias_table", attn.biasTable.value)
        let (status, log) = try ex.run(imports: Self.imports, Self.script)
        try XCTSkipIf(status == 77, "torch/timm not importable by python3 (\(log.trimmingCharacters(in: .whitespacesAndNewlines))): timm comparison skipped")
        XCTAssertEqual(status, 0, "reference script failed:\n\(log)")
        guard status == 0 else { return }
        attn.zeroGrad()
        assertClose(attn.forward(x, mask: mask).array, try ex.get("y"), tol: 1e-5, "attention y")
        assertClose(attn.backward(dy).array, try ex.get("dx"), tol: 1e-5, "attention dx")
        for (name, p) in [("qkv.weight", attn.qkv.weight), ("qkv.bias", attn.qkv.bias!), ("proj.weight", attn.proj.weight),
                          ("proj.bias", attn.proj.bias!), ("relative_position_bias_table", attn.biasTable)] {
            assertClose(p.grad.array, try ex.get("g." + name), tol: 1e-4, "attention d\(name)")
        }
    }
}

/// Windows with padding and cyclic shift, and the whole Swin block.
final class SwinBlockTests: XCTestCase {
    func testPartitionIsAPermutationAndReverseUndoesIt() {
        var rng = Philox(seed: 21, stream: 1)
        for order in [WindowPartition.Order.padThenRoll, .rollThenPad] {
            let wp = WindowPartition(window: 3, shift: 1, order: order)
            wp.prepare(height: 4, width: 5)
            XCTAssertEqual(wp.windowsPerImage, 4)   // padded to 6×6
            let x = randomTensor([2, 20, 3], &rng)
            let windows = wp.partition(x)
            XCTAssertEqual(windows.shape, [8, 9, 3])
            // 2 images × 36 slots, 16 of them padding (zeros) per image; every token exactly once.
            let zeros = (0..<(8 * 9)).filter { r in (0..<3).allSatisfy { windows[r * 3 + $0] == 0 } }.count
            XCTAssertEqual(zeros, 2 * 16, "\(order)")
            XCTAssertEqual(wp.reverse(windows).array, x.array, "\(order): reverse ∘ partition = identity")
            XCTAssertEqual(wp.partitionBackward(wp.reverseBackward(x)).array, x.array, "\(order): the backwards")
        }
        // pad-then-roll: slot 0 of window 0 holds the token at (1, 1) (the padded map rolled by −1).
        let wp = WindowPartition(window: 3, shift: 1, order: .padThenRoll)
        wp.prepare(height: 4, width: 5)
        let x = Tensor([1, 20, 1], (0..<20).map(Float.init))
        XCTAssertEqual(wp.partition(x)[0], 6)   // 1·5 + 1
        let m = wp.mask()!
        XCTAssertEqual(m.shape, [4, 9, 9])
        XCTAssertEqual(m[0], 0)                 // window 0 lies in one region
        XCTAssertTrue((0..<81).contains { m[3 * 81 + $0] == -100 }, "the last window mixes regions")
    }

    func testGradients() {
        for order in [WindowPartition.Order.padThenRoll, .rollThenPad] {
            var rng = Philox(seed: 22, stream: 1), initRng = Philox(seed: 23, stream: 1)
            let block = SwinBlock("b", dim: 8, heads: 2, window: 3, shift: 1, mlpRatio: 2, order: order, rng: &initRng)
            let x = randomTensor([2, 20, 8], &rng)
            let y = block.forward(x, height: 4, width: 5)
            let r = randomTensor(y.shape, &rng)
            block.zeroGrad()
            let dx = block.backward(r).array
            let f = { functional(block.forward(x, height: 4, width: 5), r) }
            checkGradient("Swin block dx \(order)", x: x, analytic: dx, f)
            checkGradient("Swin block dW_qkv \(order)", x: block.attn.qkv.weight.value, analytic: block.attn.qkv.weight.grad.array, f)
            // The padding slots' Q K V rows are b_qkv: their gradient reaches the bias only.
            checkGradient("Swin block db_qkv \(order)", x: block.attn.qkv.bias!.value, analytic: block.attn.qkv.bias!.grad.array, f)
            checkGradient("Swin block dW_proj \(order)", x: block.attn.proj.weight.value, analytic: block.attn.proj.weight.grad.array, f)
            checkGradient("Swin block bias table \(order)", x: block.attn.biasTable.value, analytic: block.attn.biasTable.grad.array, f)
            checkGradient("Swin block dγ₁ \(order)", x: block.norm1.weight.value, analytic: block.norm1.weight.grad.array, f)
            checkGradient("Swin block dW_fc1 \(order)", x: block.fc1.weight.value, analytic: block.fc1.weight.grad.array, f)
        }
    }

    static let imports = "from timm.models.swin_transformer import SwinTransformerBlock, window_partition, window_reverse"
    static let script = #"""
H, W, C, ws, s = 10, 13, 32, 7, 3
blk = SwinTransformerBlock(C, (H, W), num_heads=4, window_size=ws, shift_size=s, always_partition=True, dynamic_mask=True).double()
blk.attn.fused_attn = False
sd = blk.state_dict()
for k in list(sd.keys()):
    if k in T: sd[k] = T[k].reshape(sd[k].shape)
blk.load_state_dict(sd)
# timm's order: roll the H×W map, then pad.
x = T["x"].clone().requires_grad_(True)
y = blk(x.view(2, H, W, C)).reshape(2, H * W, C)
y.backward(T["dy"])
out("timm_y", y); out("timm_dx", x.grad)
for k, p in blk.named_parameters(): out("timm_g." + k, p.grad); p.grad = None
# Dense-prediction order (official Swin for segmentation), from the equations: pad, roll, windows, mask
# on the padded map, attention, reverse, roll back, crop.
def attn_pad_roll(z):
    B = z.shape[0]
    z = z.view(B, H, W, C)
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    z = F.pad(z, (0, 0, 0, Wp - W, 0, Hp - H))
    z = torch.roll(z, (-s, -s), (1, 2))
    img = torch.zeros(1, Hp, Wp, 1, dtype=z.dtype); cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
        for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            img[:, hs, wsl, :] = cnt; cnt += 1
    mw = window_partition(img, (ws, ws)).view(-1, ws * ws)
    mask = (mw.unsqueeze(1) - mw.unsqueeze(2)).ne(0).double() * -100.0
    a = blk.attn(window_partition(z, (ws, ws)).view(-1, ws * ws, C), mask=mask)
    z = window_reverse(a.view(-1, ws, ws, C), (ws, ws), Hp, Wp)
    z = torch.roll(z, (s, s), (1, 2))[:, :H, :W, :]
    return z.reshape(B, H * W, C)
x2 = T["x"].clone().requires_grad_(True)
z = x2 + attn_pad_roll(blk.norm1(x2))
y2 = z + blk.mlp(blk.norm2(z))
y2.backward(T["dy"])
out("dense_y", y2); out("dense_dx", x2.grad)
for k, p in blk.named_parameters(): out("dense_g." + k, p.grad)
"""#

    func testAgainstTimmAndTheDenseOrder() throws {
        let ex = try TorchExchange()
        var rng = Philox(seed: 24, stream: 1)
        var blocks: [SwinBlock] = []
        for order in [WindowPartition.Order.rollThenPad, .padThenRoll] {
            var initRng = Philox(seed: 25, stream: 1)
            blocks.append(SwinBlock("b", dim: 32, heads: 4, window: 7, shift: 3, order: order, rng: &initRng))
        }
        let ref = blocks[0]
        for i in 0..<ref.attn.biasTable.value.count { ref.attn.biasTable.value[i] = rng.uniform() - 0.5 }
        for p in ref.norm1.parameters + ref.norm2.parameters { for i in 0..<p.value.count { p.value[i] = 0.5 + rng.uniform() } }
        for (p, q) in zip(blocks[0].parameters, blocks[1].parameters) { q.value.data.update(from: p.value.data, count: p.value.count) }
        let x = randomTensor([2, 130, 32], &rng), dy = randomTensor([2, 130, 32], &rng)
        try ex.put("x", x); try ex.put("dy", dy)
        for p in ref.parameters { try ex.put(String(p.name.dropFirst(2)), p.value) }   // "b.attn.qkv.weight" → "attn.qkv.weight"
        let (status, log) = try ex.run(imports: Self.imports, Self.script)
        try XCTSkipIf(status == 77, "torch/timm not importable by python3 (\(log.trimmingCharacters(in: .whitespacesAndNewlines))): timm comparison skipped")
        XCTAssertEqual(status, 0, "reference script failed:\n\(log)")
        guard status == 0 else { return }
        for (block, tag) in zip(blocks, ["timm", "dense"]) {
            block.zeroGrad()
            assertClose(block.forward(x, height: 10, width: 13).array, try ex.get("\(tag)_y"), tol: 1e-5, "\(tag) y")
            assertClose(block.backward(dy).array, try ex.get("\(tag)_dx"), tol: 1e-4, "\(tag) dx")
            for p in block.parameters {
                assertClose(p.grad.array, try ex.get("\(tag)_g." + p.name.dropFirst(2)), tol: 1e-4, "\(tag) d\(p.name)")
            }
        }
    }
}
