import Foundation
import XCTest
@testable import MTLCore
@testable import MTLEngine
@testable import MTLModels

/// tools/mtformer_to_h5.py without the real checkpoint: the from-spec MTFormer-T (tools/kem_reference.py's
/// KEMDecoder, mixer none, on ref_layers' dense Swin-T; random weights and BatchNorm statistics) saved under
/// MTFormer's key names in its `checkpoint.pth.tar` form ({"model": ...} with DataParallel's `module.`,
/// the relative-position-index buffers, log_var_list, the contrastive mapping/NCE tensors), imported and
/// loaded through `model.pretrained`'s loader into a KEM-R model with `model.kem.mixer: none`: mtl's
/// eval-mode predictions equal the reference's (float64) within 1e-4. The released model's cross-task
/// attention stage is refused unless --skip-cross-task; a wrong shape, an unknown key and a depth head
/// under a non-depth task name are one-line errors. Skipped without torch/h5py.
final class MTFormerImportTests: XCTestCase {
    static let makeCheckpoint = #"""
import sys
try:
    import h5py, numpy as np, torch, torch.nn as nn
except ImportError as e:
    print(e); sys.exit(77)
tools = sys.argv[1]
sys.path.insert(0, tools)
import kem_reference as K, mtl_torch, ref_layers
d, tasks = sys.argv[2], {"semseg": 5, "depth": 1}
torch.manual_seed(0)
backbone = ref_layers.SwinDense("swin_t")
dec = mtl_torch.with_running_statistics(K.KEMDecoder(tasks, d=16, in_channels=(192, 384, 768), mixer="none")).eval()
del dec.log_vars
with torch.no_grad():
    for p in list(backbone.parameters()) + list(dec.parameters()):
        p.add_(0.05 * torch.randn_like(p))          # LayerNorm / BN affine away from 1, 0
    for m in dec.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2); m.running_var.uniform_(0.5, 2.0); m.num_batches_tracked.fill_(7)
    for t in list(backbone.parameters()) + list(dec.parameters()) + list(dec.buffers()):
        if t.is_floating_point():
            t.copy_(t.float().double())             # the checkpoint's float32 values, in float64
index = ref_layers.relative_position_index(7)
sd = {"backbone." + k: v for k, v in backbone.state_dict().items()}
for i, stage in enumerate(backbone.layers):
    for j in range(len(stage.blocks)):
        sd[f"backbone.layers.{i}.blocks.{j}.attn.relative_position_index"] = index
sd["decoder.weight"], sd["decoder.bias"] = dec.reduce.weight, dec.reduce.bias
stages = {"transformer1": dec.shared, "transformer4": dec.task_enc["semseg"], "transformer5": dec.task_enc["depth"],
          "transformer6": dec.task_dec["semseg"], "transformer7": dec.task_dec["depth"]}
for name, t in stages.items():
    for k, v in t.state_dict().items():
        k = "layers.0." + k if k.startswith("blocks.") else k.replace("norm.", "norm0.", 1) if k.startswith("norm.") else k
        sd[f"{name}.{k}"] = v
    for b in range(2):
        sd[f"{name}.layers.0.blocks.{b}.attn.relative_position_index"] = index
seg, depth = dec.head["semseg"], dec.head["depth"]
for k, v in seg.state_dict().items():
    layer, _, tail = k.partition(".")
    sd["project1." + {"conv1": "0", "bn1": "1", "conv2": "3"}[layer] + "." + tail] = v
for k, v in depth.state_dict().items():
    layer, _, tail = k.partition(".")
    sd["project2." + {"conv1": "0", "conv2": "2", "conv3": "4"}[layer] + "." + tail] = v
sd["log_var_list"] = torch.zeros(2)
for m in ("mapping1", "mapping2"):
    sd[m + ".0.weight"], sd[m + ".0.bias"] = torch.randn(128, 256), torch.randn(128)
    sd[m + ".2.weight"], sd[m + ".2.bias"] = torch.randn(128, 128), torch.randn(128)
sd["contrast12.params"] = torch.tensor([700, 0.07, -1, -1, 0.5])
sd["contrast12.memory_l"], sd["contrast12.memory_ab"] = torch.rand(795, 128), torch.rand(795, 128)
sd = {k: v.detach().float().clone() if v.is_floating_point() else v.clone() for k, v in sd.items()}
torch.save({"model": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, d + "/checkpoint.pth.tar")

# The released layout: transformer6/7 are cross-task attention stages (attn1, mlp2, ..., T·256 wide).
# The error cases that fail before the backbone is read are saved without it (smaller files).
small = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
ca = {k: v for k, v in sd.items() if not k.startswith(("transformer6.", "transformer7."))}
for name in ("transformer6", "transformer7"):
    ca[name + ".norm0.weight"] = torch.ones(32)
    ca[name + ".layers.0.blocks.0.attn1.qkv.weight"] = torch.zeros(32, 16)
    ca[name + ".layers.0.blocks.0.mlp2.fc1.weight"] = torch.zeros(64, 16)
torch.save(ca, d + "/released.pth")
torch.save({k: v for k, v in ca.items() if not k.startswith("backbone.")}, d + "/released-small.pth")
bad = dict(sd); bad["project1.3.weight"] = torch.zeros(5, 12, 1, 1)
torch.save(bad, d + "/badshape.pth")
unknown = dict(small); unknown["transformer9.norm0.weight"] = torch.ones(16)
torch.save(unknown, d + "/unknown.pth")
# A model.pretrained file whose decoder does not fit the model: the full encoder, a reduce of width 8.
with h5py.File(d + "/mismatch.h5", "w") as f:
    for k, v in backbone.state_dict().items():
        f["encoder." + k] = v.float().numpy()
    f["decoder.reduce.weight"] = np.zeros((8, 1344, 1, 1), dtype=np.float32)

x = torch.randn(2, 3, 64, 64).double()
with torch.no_grad():
    out = dec(backbone(x), (64, 64))
with h5py.File(d + "/reference.h5", "w") as f:
    f["x"] = x.float().numpy()
    for t, y in out.items():
        f["y." + t] = y.float().numpy()

# The tool's other cases in this interpreter (one torch import): <case>.status / .out / .err as its CLI gives them.
import contextlib, io, runpy
cases = {"released": ["released-small.pth", "r.h5"], "skipped": ["released.pth", "r.h5", "--skip-cross-task"],
         "badshape": ["badshape.pth", "b.h5"], "unknown": ["unknown.pth", "u.h5"],
         "names": ["checkpoint.pth.tar", "n.h5", "--tasks", "depth,seg"]}
for case, args in cases.items():
    sys.argv = [tools + "/mtformer_to_h5.py"] + [d + "/" + a if a.endswith((".pth", ".tar", ".h5")) else a for a in args]
    out, err, status = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
        except SystemExit as e:
            if isinstance(e.code, str):
                err.write(e.code + "\n"); status = 1
            else:
                status = e.code or 0
    for ext, text in (("status", str(status)), ("out", out.getvalue()), ("err", err.getvalue())):
        open(f"{d}/{case}.{ext}", "w").write(text)
"""#

    func testMTFormerCheckpointImportsIntoKEMRWithoutMixer() throws {
        let root = DistributedTrainingTests.packageRoot
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let started = Date()
        try Self.makeCheckpoint.write(toFile: dir + "/make.py", atomically: true, encoding: .utf8)
        let made = try DistributedTrainingTests.run(["python3", dir + "/make.py", root + "/tools", dir], timeout: 300)
        try XCTSkipIf(made.status == 77, "torch or h5py not importable by python3: MTFormer import test skipped (\(made.out))")
        XCTAssertEqual(made.status, 0, made.err + made.out)
        guard made.status == 0 else { return }
        let tool = root + "/tools/mtformer_to_h5.py"
        let out = dir + "/mtformer.h5"
        let r = try DistributedTrainingTests.run(["python3", tool, dir + "/checkpoint.pth.tar", out], timeout: 300)
        XCTAssertEqual(r.status, 0, r.err)
        guard r.status == 0 else { return }
        for line in ["(nyud layout, backbone swin_t, d 16, 4 heads, window 7, 2 blocks per transformer; tasks semseg,depth)",
                     "ignored *.relative_position_index (buffer): 22 tensors",
                     "ignored log_var_list (uncertainty weights; mtl's uw method keeps its own): 1 tensors",
                     "ignored mapping*.* (contrastive projection heads): 8 tensors",
                     "ignored contrast*.* (NCE memory banks): 3 tensors"] {
            XCTAssertTrue(r.out.contains(line), "\(line) in\n\(r.out)")
        }

        var spec = ModelSpec(encoder: "swin_t", width: 64, outputStride: 8, decoder: "kem", headChannels: 1,
                             tasks: [("semseg", 5), ("depth", 1)])
        spec.kem.mixer = "none"
        spec.kem.dim = 16
        let model = try MultiTaskModel(spec, seed: 4)
        try Pretrained.loadEncoder(model: model, path: out)
        model.setTraining(false)
        let ref = try Pretrained.readTensors(dir + "/reference.h5")
        let x = try XCTUnwrap(ref["x"])
        let preds = model.decoder.forward(model.encoder.forward(x), height: 64, width: 64, active: [true, true])
        for (t, name) in ["semseg", "depth"].enumerated() {
            let y = try XCTUnwrap(preds[t]), want = try XCTUnwrap(ref["y." + name])
            XCTAssertEqual(y.shape, want.shape, name)
            var worst: Float = 0, scale: Float = 0
            for (a, b) in zip(y.array, want.array) { worst = max(worst, abs(a - b)); scale = max(scale, abs(b)) }
            let e = Double(worst / max(scale, 1))
            print("MTFormer-T imported into mtl vs the reference, \(name): \(e)")
            XCTAssertLessThan(e, 1e-4, name)
        }

        // The released MTFormer (cross-task attention stage): refused, or imported without the task decoders;
        // bad input: one line naming the tensor / key / task (the tool run by make.py in its interpreter).
        func run(_ name: String) throws -> (status: Int, out: String, err: String) {
            func read(_ ext: String) throws -> String { try String(contentsOfFile: "\(dir)/\(name).\(ext)", encoding: .utf8) }
            return (Int(try read("status")) ?? -1, try read("out"), try read("err"))
        }
        let released = try run("released")
        XCTAssertNotEqual(released.status, 0)
        XCTAssertTrue(released.err.contains("transformer6, transformer7 are MTFormer's cross-task attention stage"), released.err)
        let skipped = try run("skipped")
        XCTAssertEqual(skipped.status, 0, skipped.err)
        XCTAssertTrue(skipped.out.contains("decoder.task_dec.* (cross-task attention skipped)"), skipped.out)
        XCTAssertTrue(skipped.out.contains("ignored transformer6.* (cross-task attention stage, --skip-cross-task): 3 tensors"), skipped.out)
        let partial = try Pretrained.readTensors(dir + "/r.h5")
        XCTAssertFalse(partial.keys.contains { $0.hasPrefix("decoder.task_dec.") })
        XCTAssertTrue(partial.keys.contains("decoder.task_enc.depth.blocks.1.mlp.fc2.bias"))
        let bad = try run("badshape")
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.err.contains("1 with the wrong shape ['decoder.head.semseg.conv2.weight: (5, 12, 1, 1) (expected (5, 16, 1, 1))']"), bad.err)
        XCTAssertEqual(bad.err.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "\n").count, 1, bad.err)
        let unknown = try run("unknown")
        XCTAssertNotEqual(unknown.status, 0)
        XCTAssertTrue(unknown.err.contains("1 keys are neither MTFormer tensors mtl maps nor known to be ignorable: ['transformer9.norm0.weight']"), unknown.err)
        let names = try run("names")
        XCTAssertNotEqual(names.status, 0)
        XCTAssertTrue(names.err.contains("project1: a segmentation head, but mtl builds a depth head for task 'depth'"), names.err)

        // A file whose decoder does not fit the model: one line naming the tensor.
        XCTAssertThrowsError(try Pretrained.loadEncoder(model: model, path: dir + "/mismatch.h5")) { e in
            XCTAssertTrue("\(e)".contains("mismatch.h5: tensor decoder.reduce.weight: expected shape [16, 1344, 1, 1], found [8, 1344, 1, 1]"), "\(e)")
        }
        print("MTFormerImportTests: \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
    }
}
