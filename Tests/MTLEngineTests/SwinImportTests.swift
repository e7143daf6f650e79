import Foundation
import XCTest
@testable import MTLCore
@testable import MTLEngine
@testable import MTLModels

/// tools/swin_to_h5.py on timm 1.0's swin_tiny_patch4_window7_224 (random weights) saved by PyTorch in
/// three layouts — the current timm state_dict, the same tensors in the official Microsoft layout
/// ({"model": ...}, PatchMerging at the end of each stage, `head`, the index and mask buffers) and a
/// features_only model's `layers_i` names — each imported and loaded through `model.pretrained`'s loader
/// into a swin_t model: every encoder tensor equal to the checkpoint's (max abs diff 0), the output norms
/// fresh (1, 0), the ignored keys listed; and the bias tables resized bicubically for window 12.
/// Skipped without torch/timm/h5py.
final class SwinImportTests: XCTestCase {
    static let makeCheckpoints = #"""
import re, sys
try:
    import h5py, numpy as np, torch, timm, torch.nn.functional as F
except ImportError as e:
    print(e); sys.exit(77)
d = sys.argv[1]
torch.manual_seed(0)
m = timm.create_model("swin_tiny_patch4_window7_224")
for p in m.parameters(): p.data.normal_(0, 0.1)   # distinct values everywhere, LayerNorms included
sd = m.state_dict()
torch.save(sd, d + "/timm.pth")
off = {}
for k, v in sd.items():
    k = re.sub(r"^layers\.(\d+)\.downsample", lambda g: "layers.%d.downsample" % (int(g.group(1)) - 1), k)
    off[k.replace("head.fc.", "head.")] = v
for i, layer in enumerate(m.layers):
    for j, b in enumerate(layer.blocks):
        off["layers.%d.blocks.%d.attn.relative_position_index" % (i, j)] = b.attn.relative_position_index.clone()
        if j % 2: off["layers.%d.blocks.%d.attn_mask" % (i, j)] = torch.zeros(4, 49, 49)
torch.save({"model": off}, d + "/official.pth")
fo = timm.create_model("swin_tiny_patch4_window7_224", features_only=True)
fsd = {k: sd[re.sub(r"^layers_(\d+)\.", r"layers.\1.", k)] for k in fo.state_dict()}
fo.load_state_dict(fsd)
assert any(k.startswith("layers_1.downsample") for k in fsd), list(fsd)[:5]
torch.save(fo.state_dict(), d + "/features.pth")
with h5py.File(d + "/expected.h5", "w") as f:
    for k, v in off.items():
        if k.startswith(("head.", "norm.")) or k.endswith(("relative_position_index", "attn_mask")): continue
        f.create_dataset(k, data=v.numpy().astype(np.float32))
    t = off["layers.2.blocks.3.attn.relative_position_bias_table"]
    r = F.interpolate(t.double().t().reshape(1, 12, 13, 13), size=(23, 23), mode="bicubic", align_corners=False)
    f.create_dataset("w12.layers.2.blocks.3.attn.relative_position_bias_table", data=r.reshape(12, 529).t().numpy().astype(np.float32))
"""#

    func testTimmOfficialAndFeaturesOnlyCheckpointsImportIntoSwinT() throws {
        let root = DistributedTrainingTests.packageRoot
        let dir = NSTemporaryDirectory() + "mtl-swin-import-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.makeCheckpoints.write(toFile: dir + "/make.py", atomically: true, encoding: .utf8)
        let made = try DistributedTrainingTests.run(["python3", dir + "/make.py", dir], timeout: 300)
        try XCTSkipIf(made.status == 77, "torch, timm or h5py not importable by python3: Swin import test skipped")
        XCTAssertEqual(made.status, 0, made.err)
        guard made.status == 0 else { return }
        let expected = try Pretrained.readTensors(dir + "/expected.h5")
        let model = try MultiTaskModel(ModelSpec(encoder: "swin_t", width: 64, outputStride: 8, decoder: "multiscale",
                                                 headChannels: 8, tasks: [("seg", 3)]), seed: 1)
        let ignoredLines: [String: [String]] = [
            "timm": ["ignored head.* (classifier): 2 tensors", "ignored norm.* (classification norm): 2 tensors"],
            "official": ["ignored head.* (classifier): 2 tensors", "ignored norm.* (classification norm): 2 tensors",
                         "ignored *.relative_position_index (buffer): 12 tensors", "ignored *.attn_mask (buffer): 6 tensors"],
            "features": [],
        ]
        for (file, layout) in [("timm", "timm"), ("official", "official"), ("features", "timm")] {
            let out = dir + "/\(file).h5"
            let r = try DistributedTrainingTests.run(["python3", root + "/tools/swin_to_h5.py", dir + "/\(file).pth", out,
                                                      "--variant", "swin_t"], timeout: 300)
            XCTAssertEqual(r.status, 0, r.err)
            guard r.status == 0 else { continue }
            XCTAssertTrue(r.out.contains("wrote \(out): 177 encoder tensors (\(layout) layout, Swin swin_t, window 7); 169 from the checkpoint"), r.out)
            XCTAssertTrue(r.out.contains("initialised (not in the checkpoint): norm0, norm1, norm2, norm3 as weight 1, bias 0 (8 tensors)"), r.out)
            for line in ignoredLines[file]! { XCTAssertTrue(r.out.contains(line), "\(line) in\n\(r.out)") }
            if file == "features" { XCTAssertFalse(r.out.contains("ignored"), r.out) }
            for (_, t) in model.stateTensors() { t.zero() }
            try Pretrained.loadEncoder(model: model, path: out)
            var compared = 0, maxDiff: Float = 0
            for (name, t) in model.stateTensors() where name.hasPrefix("encoder.") {
                let key = String(name.dropFirst("encoder.".count))
                if key.hasPrefix("norm"), let i = Int(String(key.dropFirst(4).prefix(1))), i < 4 {
                    XCTAssertEqual(Set(t.array), [key.hasSuffix("weight") ? 1 : 0], key)
                    continue
                }
                guard let e = expected[key] else { XCTFail("\(key) not in the checkpoint"); continue }
                XCTAssertEqual(t.shape, e.shape, key)
                for (a, b) in zip(t.array, e.array) { maxDiff = max(maxDiff, abs(a - b)) }
                compared += 1
            }
            XCTAssertEqual(compared, 169, file)
            XCTAssertEqual(maxDiff, 0, "\(file): max abs difference")
        }

        // Window 7 → 12: tables resized bicubically; the model with model.swin.window 12 loads them.
        let out12 = dir + "/w12.h5"
        let r = try DistributedTrainingTests.run(["python3", root + "/tools/swin_to_h5.py", dir + "/official.pth", out12,
                                                  "--variant", "swin_t", "--window", "12"], timeout: 300)
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("resized relative_position_bias_table, window 7 → 12: 12 tensors (bicubic)"), r.out)
        var spec = ModelSpec(encoder: "swin_t", width: 64, outputStride: 8, decoder: "multiscale", headChannels: 8, tasks: [("seg", 3)])
        spec.swin = SwinOptions(window: 12)
        let m12 = try MultiTaskModel(spec, seed: 1)
        try Pretrained.loadEncoder(model: m12, path: out12)
        let table = m12.stateTensors().first { $0.0 == "encoder.layers.2.blocks.3.attn.relative_position_bias_table" }!.1
        let e12 = expected["w12.layers.2.blocks.3.attn.relative_position_bias_table"]!
        XCTAssertEqual(table.shape, [529, 12])
        var d: Float = 0
        for (a, b) in zip(table.array, e12.array) { d = max(d, abs(a - b)) }
        XCTAssertLessThanOrEqual(d, 1e-6, "resized table vs F.interpolate bicubic")

        // Bad input: a checkpoint of another variant → one line naming what is wrong.
        let bad = try DistributedTrainingTests.run(["python3", root + "/tools/swin_to_h5.py", dir + "/timm.pth", dir + "/bad.h5",
                                                    "--variant", "swin_s"], timeout: 300)
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.err.contains("not a Swin swin_s backbone: 156 tensors missing"), bad.err)
    }
}
