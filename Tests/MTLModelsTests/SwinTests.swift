import Foundation
import XCTest
import MTLCore
import MTLTestSupport
import MTLNN
@testable import MTLModels

final class SwinTests: XCTestCase {
    /// The dense-prediction backbones (norm0…norm3, no classifier): the counts of the official
    /// Swin-for-segmentation models.
    func testExactParameterCounts() {
        XCTAssertEqual(SwinEncoder(.tiny).parameterCount, 27_520_698)
        XCTAssertEqual(SwinEncoder(.small).parameterCount, 48_838_602)
        XCTAssertEqual(SwinEncoder(.base).parameterCount, 86_745_016)
    }

    func testFeatureShapesOnAnAwkwardSize() {
        let v = SwinVariant(embedDim: 8, depths: [1, 2, 1, 1], heads: [1, 2, 2, 4], window: 3)
        let swin = SwinEncoder(v)
        var rng = Philox(seed: 1, stream: 1)
        let x = Tensor([2, 3, 37, 50])
        for i in 0..<x.count { x[i] = rng.normal() }
        let f = swin.forward(x)
        // 37×50 → patch grid 10×13 → 5×7 → 3×4 → 2×2
        XCTAssertEqual(f.map { $0.shape }, [[2, 8, 10, 13], [2, 16, 5, 7], [2, 32, 3, 4], [2, 64, 2, 2]])
        let names = Set(swin.parameters.map { $0.name })
        for n in ["patch_embed.proj.weight", "patch_embed.norm.bias", "layers.0.blocks.0.attn.relative_position_bias_table",
                  "layers.1.blocks.1.mlp.fc2.weight", "layers.2.downsample.reduction.weight", "layers.2.downsample.norm.weight", "norm3.weight"] {
            XCTAssertTrue(names.contains(n), n)
        }
        XCTAssertEqual(names.count, swin.parameters.count, "parameter names are unique")
    }

    /// Swin-T with DropPath at the 32×32 size of SwinDistributedTests: 1 and 2 threads give bit-identical
    /// features and gradients (each layer's thread-count independence is what makes runs reproducible).
    func testOneAndTwoThreadsAreBitIdentical() {
        let saved = Threads.count
        defer { Threads.set(saved) }
        var rng = Philox(seed: 12, stream: 1)
        let x = Tensor([4, 3, 32, 32])
        for i in 0..<x.count { x[i] = rng.normal() }
        var results: [[[Float]]] = []
        for threads in [1, 2] {
            Threads.set(threads)
            let swin = SwinEncoder(.tiny, options: SwinOptions(dropPathRate: 0.3), seed: 2)
            swin.prepareStep(seed: 3, step: 1, sampleIndices: [4, 5, 6, 7])
            let f = swin.forward(x)
            var drng = Philox(seed: 13, stream: 1)
            let dys = f.map { t -> Tensor in let d = Tensor(t.shape); for i in 0..<d.count { d[i] = drng.normal() }; return d }
            swin.zeroGrad()
            swin.backward(dys, groupDone: nil)
            results.append(f.map { $0.array } + swin.parameters.map { $0.grad.array })
        }
        let names = (0..<4).map { "feature \($0)" } + SwinEncoder(.tiny).parameters.map { "d" + $0.name }
        for (k, (a, b)) in zip(results[0], results[1]).enumerated() { XCTAssertTrue(a == b, "\(names[k]) differs between 1 and 2 threads") }
    }

    /// A frozen encoder's forward-only mode (nothing kept for a backward) gives the features of the
    /// normal forward bit for bit, on a size whose windows need padding, with both shift rules.
    func testForwardOnlyGivesTheSameFeatures() {
        let v = SwinVariant(embedDim: 8, depths: [2, 2, 2, 2], heads: [1, 2, 2, 4], window: 3)
        var rng = Philox(seed: 14, stream: 1)
        let x = Tensor([2, 3, 37, 50])
        for i in 0..<x.count { x[i] = rng.normal() }
        for rule in [SwinOptions.ShiftRule.dense, .classification] {
            let swin = SwinEncoder(v, options: SwinOptions(window: 3, shiftRule: rule), seed: 5)
            let normal = swin.forward(x).map { $0.array }
            swin.forwardOnly = true
            let forwardOnly = swin.forward(x).map { $0.array }
            for k in 0..<4 { XCTAssertTrue(normal[k] == forwardOnly[k], "\(rule): feature \(k) differs in forward-only mode") }
        }
    }

    static let imports = "from timm.models.swin_transformer import WindowAttention, window_partition, window_reverse"
    static let script = #"""
P = {k[2:]: T[k].clone().requires_grad_(True) for k in T if k.startswith("p.")}
C0, depths, heads, ws = 8, [1, 2, 1, 1], [1, 2, 2, 4], 3
def ln(x, name): return F.layer_norm(x, (x.shape[-1],), P[name + ".weight"], P[name + ".bias"], eps=1e-5)
def lin(x, name, bias=True): return F.linear(x, P[name + ".weight"], P.get(name + ".bias") if bias else None)
def attention(x, name, nh, mask):
    # timm's WindowAttention with this block's tensors
    m = WindowAttention(x.shape[-1], num_heads=nh, window_size=ws).double(); m.fused_attn = False
    m.qkv.weight, m.qkv.bias = torch.nn.Parameter(P[name + ".qkv.weight"]), torch.nn.Parameter(P[name + ".qkv.bias"])
    m.proj.weight, m.proj.bias = torch.nn.Parameter(P[name + ".proj.weight"]), torch.nn.Parameter(P[name + ".proj.bias"])
    m.relative_position_bias_table = torch.nn.Parameter(P[name + ".relative_position_bias_table"])
    return m(x, mask=mask), m
mods = []
def block(x, H, W, name, nh, s):
    B, L, C = x.shape
    z = ln(x, name + ".norm1").view(B, H, W, C)
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    z = F.pad(z, (0, 0, 0, Wp - W, 0, Hp - H))
    mask = None
    if s:
        z = torch.roll(z, (-s, -s), (1, 2))
        img = torch.zeros(1, Hp, Wp, 1, dtype=z.dtype); cnt = 0
        for a in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            for b in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                img[:, a, b, :] = cnt; cnt += 1
        mw = window_partition(img, (ws, ws)).view(-1, ws * ws)
        mask = (mw.unsqueeze(1) - mw.unsqueeze(2)).ne(0).double() * -100.0
    a, m = attention(window_partition(z, (ws, ws)).view(-1, ws * ws, C), name + ".attn", nh, mask)
    mods.append((name + ".attn", m))
    z = window_reverse(a.view(-1, ws, ws, C), (ws, ws), Hp, Wp)
    if s: z = torch.roll(z, (s, s), (1, 2))
    x = x + z[:, :H, :W, :].reshape(B, L, C)
    return x + lin(F.gelu(lin(ln(x, name + ".norm2"), name + ".mlp.fc1")), name + ".mlp.fc2")
img = T["x"]
B, _, H, W = img.shape
x = F.pad(img, (0, -W % 4, 0, -H % 4))
x = F.conv2d(x, P["patch_embed.proj.weight"], P["patch_embed.proj.bias"], stride=4)
H, W = x.shape[2], x.shape[3]
x = ln(x.flatten(2).transpose(1, 2), "patch_embed.norm")
feats = []
for i in range(4):
    for j in range(depths[i]):
        x = block(x, H, W, "layers.%d.blocks.%d" % (i, j), heads[i], ws // 2 if j % 2 else 0)
    C = x.shape[-1]
    feats.append(ln(x, "norm%d" % i).transpose(1, 2).reshape(B, C, H, W))
    if i < 3:
        z = x.view(B, H, W, C)
        z = F.pad(z, (0, 0, 0, W % 2, 0, H % 2))
        z = torch.cat([z[:, 0::2, 0::2], z[:, 1::2, 0::2], z[:, 0::2, 1::2], z[:, 1::2, 1::2]], -1)
        H, W = z.shape[1], z.shape[2]
        x = lin(ln(z.reshape(B, H * W, 4 * C), "layers.%d.downsample.norm" % i), "layers.%d.downsample.reduction" % i, bias=False)
loss = sum((f * T["dy%d" % k]).sum() for k, f in enumerate(feats))
loss.backward()
for k, f in enumerate(feats): out("f%d" % k, f)
for name, m in mods:
    for n, p in m.named_parameters(): P[name + "." + n].grad = p.grad if P[name + "." + n].grad is None else P[name + "." + n].grad + p.grad
for k, p in P.items():
    if p.grad is not None: out("g." + k, p.grad)
"""#

    /// The whole backbone (dense-prediction order, a size that neither 4 nor the window divides) in
    /// float64 against the equations in PyTorch, with timm's WindowAttention for the attention.
    func testAgainstPyTorchReference() throws {
        let ex = try TorchExchange()
        let v = SwinVariant(embedDim: 8, depths: [1, 2, 1, 1], heads: [1, 2, 2, 4], window: 3)
        let swin = SwinEncoder(v, seed: 3)
        var rng = Philox(seed: 4, stream: 1)
        for p in swin.parameters where p.name.hasSuffix("relative_position_bias_table") {
            for i in 0..<p.value.count { p.value[i] = rng.uniform() - 0.5 }
        }
        let x = Tensor([2, 3, 37, 50])
        for i in 0..<x.count { x[i] = rng.normal() }
        let feats = swin.forward(x)
        let dys = feats.map { f -> Tensor in let t = Tensor(f.shape); for i in 0..<t.count { t[i] = rng.normal() }; return t }
        try ex.put("x", x)
        for (k, t) in dys.enumerated() { try ex.put("dy\(k)", t) }
        for p in swin.parameters { try ex.put("p." + p.name, p.value) }
        let (status, log) = try ex.run(imports: Self.imports, Self.script)
        try XCTSkipIf(status == 77, "torch/timm not importable by python3 (\(log.trimmingCharacters(in: .whitespacesAndNewlines))): comparison skipped")
        XCTAssertEqual(status, 0, "reference script failed:\n\(log)")
        guard status == 0 else { return }
        for (k, f) in feats.enumerated() { assertRelative(f.array, try ex.get("f\(k)"), 1e-4, "feature \(k)") }
        swin.zeroGrad()
        swin.backward(dys, groupDone: nil)
        for p in swin.parameters { assertRelative(p.grad.array, try ex.get("g." + p.name), 1e-4, "d\(p.name)") }
    }

    func assertRelative(_ a: [Float], _ b: [Float], _ tol: Double, _ label: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, label, file: file, line: line)
        var diff = 0.0, norm = 0.0
        for (x, y) in zip(a, b) { diff += Double(x - y) * Double(x - y); norm += Double(y) * Double(y) }
        XCTAssertLessThanOrEqual((diff / max(norm, 1e-30)).squareRoot(), tol, "\(label): relative L2 error", file: file, line: line)
    }
}
