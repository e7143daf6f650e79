import Foundation
import XCTest
import MTLCore
import MTLTestSupport
@testable import MTLNN

/// Compares layer outputs and gradients with PyTorch run in a python3 subprocess.
/// Skipped (exit code 77 from the script) when torch is not importable; the finite-difference tests do not depend on it.
final class TorchComparisonTests: XCTestCase {
    static let imports = ""
    static let script = #"""
# Conv2d, two configurations
for tag, stride, pad, dil in (("c1", 2, 1, 1), ("c2", 1, 2, 2)):
    x, w, b = leaf(tag + "_x"), leaf(tag + "_w"), leaf(tag + "_b")
    y = F.conv2d(x, w, b, stride, pad, dil)
    y.backward(T[tag + "_dy"])
    out(tag + "_y", y); out(tag + "_dx", x.grad); out(tag + "_dw", w.grad); out(tag + "_db", b.grad)

# BatchNorm2d in training mode, one step
x = leaf("bn_x"); g = leaf("bn_g"); b = leaf("bn_b")
rm = torch.zeros(x.shape[1], dtype=torch.double); rv = torch.ones(x.shape[1], dtype=torch.double)
y = F.batch_norm(x, rm, rv, g, b, training=True, momentum=0.1, eps=1e-5)
y.backward(T["bn_dy"])
out("bn_y", y); out("bn_dx", x.grad); out("bn_dg", g.grad); out("bn_db", b.grad); out("bn_rm", rm); out("bn_rv", rv)

# Upsample
x = leaf("up_x")
y = F.interpolate(x, size=(11, 7), mode="bilinear", align_corners=False)
y.backward(T["up_dy"])
out("up_y", y); out("up_dx", x.grad)

# MaxPool
x = leaf("mp_x")
y = F.max_pool2d(x, 3, 2, 1)
y.backward(T["mp_dy"])
out("mp_y", y); out("mp_dx", x.grad)

# Losses (sums)
z = leaf("ce_z"); t = T["ce_t"].long()
l = F.cross_entropy(z, t, ignore_index=-1, reduction="sum"); l.backward()
out("ce_l", l.reshape(1)); out("ce_g", z.grad)
p = leaf("l1_p"); t = T["l1_t"]; valid = t != 0
l = (p - t).abs()[valid].sum(); l.backward()
out("l1_l", l.reshape(1)); out("l1_g", p.grad)
p = leaf("nc_p"); t = T["nc_t"]; valid = t.abs().sum(1) > 0
l = (1 - (F.normalize(p, dim=1) * t).sum(1))[valid].sum(); l.backward()
out("nc_l", l.reshape(1)); out("nc_g", p.grad)
z = leaf("bce_z"); t = T["bce_t"]; valid = (t == 0) | (t == 1)
l = F.binary_cross_entropy_with_logits(z[valid], t[valid], pos_weight=torch.tensor(2.5, dtype=torch.double), reduction="sum"); l.backward()
out("bce_l", l.reshape(1)); out("bce_g", z.grad)
"""#

    func testAgainstPyTorch() throws {
        let ex = try TorchExchange()
        var rng = Philox(seed: 42, stream: 1)

        var convs: [(String, Conv2d, Tensor, Tensor)] = []
        for (tag, stride, pad, dil) in [("c1", 2, 1, 1), ("c2", 1, 2, 2)] {
            var initRng = Philox(seed: 7, stream: 1)
            let conv = Conv2d(tag, inChannels: 3, outChannels: 4, kernel: 3, stride: stride, padding: pad,
                              dilation: dil, bias: true, rng: &initRng)
            let x = randomTensor([2, 3, 9, 8], &rng)
            let y = conv.forward(x)
            let dy = randomTensor(y.shape, &rng)
            try ex.put(tag + "_x", x); try ex.put(tag + "_w", conv.weight.value); try ex.put(tag + "_b", conv.bias!.value)
            try ex.put(tag + "_dy", dy)
            convs.append((tag, conv, x, dy))
        }
        let bn = BatchNorm2d("bn", channels: 3)
        for i in 0..<3 { bn.weight.value[i] = 0.5 + rng.uniform(); bn.bias.value[i] = rng.uniform() - 0.5 }
        let bnX = randomTensor([3, 3, 4, 5], &rng, scale: 2), bnDy = randomTensor([3, 3, 4, 5], &rng)
        for i in 0..<bnX.count { bnX.data[i] += 1 }
        try ex.put("bn_x", bnX); try ex.put("bn_g", bn.weight.value); try ex.put("bn_b", bn.bias.value); try ex.put("bn_dy", bnDy)
        let upX = randomTensor([2, 2, 5, 3], &rng), upDy = randomTensor([2, 2, 11, 7], &rng)
        try ex.put("up_x", upX); try ex.put("up_dy", upDy)
        let mpX = randomTensor([2, 2, 7, 6], &rng), mpDy = randomTensor([2, 2, 4, 3], &rng)
        try ex.put("mp_x", mpX); try ex.put("mp_dy", mpDy)
        let ceZ = randomTensor([2, 5, 3, 4], &rng, scale: 3)
        let ceT = Tensor([2, 3, 4], (0..<24).map { _ in Float(rng.int(below: 6) - 1) })
        try ex.put("ce_z", ceZ); try ex.put("ce_t", ceT)
        let l1P = randomTensor([2, 1, 3, 4], &rng)
        let l1T = Tensor([2, 1, 3, 4], (0..<24).map { i in i % 3 == 0 ? 0 : rng.uniform() + 0.5 })
        try ex.put("l1_p", l1P); try ex.put("l1_t", l1T)
        let ncP = randomTensor([2, 3, 3, 4], &rng), ncT = randomTensor([2, 3, 3, 4], &rng)
        for s in 0..<2 { for ch in 0..<3 { ncT.data[(s * 3 + ch) * 12 + 5] = 0 } }   // one invalid pixel per sample
        try ex.put("nc_p", ncP); try ex.put("nc_t", ncT)
        let bceZ = randomTensor([2, 1, 3, 4], &rng, scale: 4)
        let bceT = Tensor([2, 1, 3, 4], (0..<24).map { _ in Float([0, 1, 1, 0, -1, 255][rng.int(below: 6)]) })
        try ex.put("bce_z", bceZ); try ex.put("bce_t", bceT)
        let (status, log) = try ex.run(imports: Self.imports, Self.script)
        try XCTSkipIf(status == 77, "torch (or numpy) is not importable by python3 (\(log.trimmingCharacters(in: .whitespacesAndNewlines))): PyTorch comparison skipped")
        XCTAssertEqual(status, 0, "reference script failed:\n\(log)")
        guard status == 0 else { return }

        for (tag, conv, x, dy) in convs {
            let y = conv.forward(x).array
            conv.zeroGrad()
            let dx = conv.backward(dy).array
            assertClose(y, try ex.get(tag + "_y"), tol: 1e-5, "\(tag) y")
            assertClose(dx, try ex.get(tag + "_dx"), tol: 1e-5, "\(tag) dx")
            assertClose(conv.weight.grad.array, try ex.get(tag + "_dw"), tol: 1e-5, "\(tag) dW")
            assertClose(conv.bias!.grad.array, try ex.get(tag + "_db"), tol: 1e-5, "\(tag) db")
        }
        let bnY = bn.forward(bnX).array
        bn.zeroGrad()
        let bnDx = bn.backward(bnDy).array
        assertClose(bnY, try ex.get("bn_y"), tol: 1e-5, "bn y")
        assertClose(bnDx, try ex.get("bn_dx"), tol: 1e-4, "bn dx")
        assertClose(bn.weight.grad.array, try ex.get("bn_dg"), tol: 1e-5, "bn dgamma")
        assertClose(bn.bias.grad.array, try ex.get("bn_db"), tol: 1e-5, "bn dbeta")
        assertClose(bn.runningMean.value.array, try ex.get("bn_rm"), tol: 1e-6, "bn running_mean")
        assertClose(bn.runningVar.value.array, try ex.get("bn_rv"), tol: 1e-6, "bn running_var")

        let up = Upsample()
        assertClose(up.forward(upX, height: 11, width: 7).array, try ex.get("up_y"), tol: 1e-6, "upsample y")
        assertClose(up.backward(upDy).array, try ex.get("up_dx"), tol: 1e-5, "upsample dx")
        let mp = MaxPool2d(kernel: 3, stride: 2, padding: 1)
        assertClose(mp.forward(mpX).array, try ex.get("mp_y"), tol: 0, "maxpool y")
        assertClose(mp.backward(mpDy).array, try ex.get("mp_dx"), tol: 1e-6, "maxpool dx")

        let ce = CrossEntropyLoss()
        XCTAssertEqual(Float(ce.forward(ceZ, ceT).sum), try ex.get("ce_l")[0], accuracy: 1e-4)
        assertClose(ce.backward(scale: 1).array, try ex.get("ce_g"), tol: 1e-6, "CE grad")
        let l1 = MaskedL1Loss()
        XCTAssertEqual(Float(l1.forward(l1P, l1T).sum), try ex.get("l1_l")[0], accuracy: 1e-4)
        assertClose(l1.backward(scale: 1).array, try ex.get("l1_g"), tol: 0, "L1 grad")
        let nc = NormalCosineLoss()
        XCTAssertEqual(Float(nc.forward(ncP, ncT).sum), try ex.get("nc_l")[0], accuracy: 1e-4)
        assertClose(nc.backward(scale: 1).array, try ex.get("nc_g"), tol: 1e-5, "cosine grad")
        let bce = BCEWithLogitsLoss(posWeight: 2.5)
        XCTAssertEqual(Float(bce.forward(bceZ, bceT).sum), try ex.get("bce_l")[0], accuracy: 1e-4)
        assertClose(bce.backward(scale: 1).array, try ex.get("bce_g"), tol: 1e-6, "BCE grad")
    }
}
