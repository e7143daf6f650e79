import Foundation
import XCTest
@testable import MTLData
@testable import MTLDist
@testable import MTLEngine
@testable import MTLTrain

/// tools/h5_to_torch.py + tools/mtl_torch.py: a trained ResNet-50 + DeepLab checkpoint exported to
/// PyTorch loads strictly into torchvision's resnet50(replace_stride_with_dilation) and DeepLabHead,
/// and the rebuilt model's outputs on the validation images equal `mtl predict --raw` within 1e-4.
final class TorchExportTests: XCTestCase {
    func testExportedModelReproducesMtlPredictions() throws {
        try exportAndCompare(encoder: "resnet50", head: "deeplab", torchvisionStrict: true)
        // ResNet-18: torchvision's BasicBlock has no dilation; mtl_torch applies resnet_dilated's rule.
        try exportAndCompare(encoder: "resnet18", head: "bench", torchvisionStrict: false)
    }

    func exportAndCompare(encoder: String, head: String, torchvisionStrict: Bool) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = try makeSynth(dir, samples: 8, height: 32, width: 32)
        let yaml = """
        data: {path: \(data)}
        model: {encoder: \(encoder), width: 64, output_stride: 8, head: \(head), head_channels: \(head == "deeplab" ? 256 : 16)}
        tasks:
          seg: {role: primary, loss: ce}
          depth: {loss: l1}
          normals: {loss: cosine}
        train: {steps: 2, batch_size: 4, seed: 3, eval_every: 0, threads: 1}
        optim: {name: adam, lr: 0.001}
        checkpoint: {every: 0, keep: 1}
        """
        try yaml.write(toFile: dir + "/c.yaml", atomically: true, encoding: .utf8)
        let comm = SingleProcessCommunicator()
        let summary = try Trainer(config: try Config.load(path: dir + "/c.yaml"), runDir: dir + "/run", comm: comm, resume: nil).run()
        let checkpoint = try XCTUnwrap(summary.checkpoint)
        let loaded = try LoadedCheckpoint.load(checkpoint: checkpoint, config: nil, overrides: [], split: "val", comm: comm)
        var options = Predict.Options()
        options.samples = 2
        options.raw = true
        try Predict.run(loaded, out: dir + "/pred", options: options, comm: comm)

        let root = DistributedTrainingTests.packageRoot
        let export = try DistributedTrainingTests.run(["python3", root + "/tools/h5_to_torch.py", checkpoint, dir + "/model.pth"])
        if export.status == 77 { throw XCTSkip("torch/h5py not importable: \(export.err)") }
        XCTAssertEqual(export.status, 0, export.err + export.out)
        let check = """
        import sys
        sys.path.insert(0, sys.argv[1] + "/tools")
        try:
            import h5py, numpy as np, torch, torchvision
            from torchvision.models.segmentation.deeplabv3 import DeepLabHead
        except ImportError as e:
            print(e); sys.exit(77)
        import mtl_torch
        torch.set_num_threads(1)
        saved = torch.load(sys.argv[2], weights_only=False)
        if sys.argv[4] == "strict":
            resnet = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
            resnet.load_state_dict(saved["encoder"], strict=True)
            for t, k in saved["out_channels"].items():
                DeepLabHead(2048, k).load_state_dict(saved["heads"][t], strict=True)
        model = mtl_torch.build(saved["config"], saved["out_channels"]).double().eval()
        model.load_state_dict(saved["state_dict"], strict=True)
        with h5py.File(sys.argv[3], "r") as f:
            x = torch.from_numpy(f["input"][...]).double()
            with torch.no_grad():
                out = model(x)
            worst = 0.0
            for t, y in out.items():
                ref = f[t][...]
                err = np.abs(y.numpy() - ref).max() / max(1.0, np.abs(ref).max())
                print(t, err); worst = max(worst, err)
        print("worst", worst)
        """
        try check.write(toFile: dir + "/check.py", atomically: true, encoding: .utf8)
        let r = try DistributedTrainingTests.run(["python3", dir + "/check.py", root, dir + "/model.pth", dir + "/pred/predictions.h5",
                                                  torchvisionStrict ? "strict" : "rebuild"])
        if r.status == 77 { throw XCTSkip("torch/torchvision/h5py not importable: \(r.out)") }
        XCTAssertEqual(r.status, 0, r.err + r.out)
        let worst = r.out.split(separator: "\n").first { $0.hasPrefix("worst ") }.flatMap { Double($0.dropFirst(6)) }
        let w = try XCTUnwrap(worst, r.out)
        print("\(encoder)/\(head) exported model vs mtl predict --raw: \(r.out)")
        XCTAssertLessThan(w, 1e-4, r.out)
    }
}
