import Foundation
import XCTest
@testable import MTLData
@testable import MTLDist
@testable import MTLEngine
@testable import MTLTrain

/// tools/h5_to_torch.py + tools/mtl_torch.py: a model trained for 2 steps, exported to PyTorch, rebuilt
/// by mtl_torch from the run's config and loaded with strict=True, predicts on the validation images
/// what `mtl predict --raw` wrote, within 1e-4 (max |torch − mtl| / max(1, max |mtl|) per task).
/// Where the encoder has a library counterpart the exported encoder also loads strictly into it —
/// torchvision's resnet50(replace_stride_with_dilation) + DeepLabHead, timm's hrnet_w18_small_v2 and
/// swin_tiny_patch4_window7_224 (features_only) — and, swapped in for the rebuild's encoder, gives the
/// same predictions. Skipped with a message without torch/torchvision/timm/h5py.
final class TorchExportTests: XCTestCase {
    func testResNetExportsReproduceMtlPredictions() throws {
        try exportAndCompare(model: "{encoder: resnet50, width: 64, output_stride: 8, head: deeplab, head_channels: 256}",
                             size: 32, library: "torchvision")
        // ResNet-18: torchvision's BasicBlock has no dilation; mtl_torch applies resnet_dilated's rule.
        try exportAndCompare(model: "{encoder: resnet18, width: 64, output_stride: 8, head: bench, head_channels: 16}",
                             size: 32, library: nil)
    }

    /// HRNet18-S with timm's nearest fuse: the encoder loads strictly into timm's hrnet_w18_small_v2
    /// (features_only, feature_location='') and reproduces mtl through the multiscale head.
    func testHRNetExportLoadsIntoTimmAndReproducesMtlPredictions() throws {
        try exportAndCompare(model: "{encoder: hrnet18s, head: multiscale, head_channels: 16, fuse_upsample: nearest}",
                             size: 32, batch: 2, library: "timm")
    }

    /// Swin-T at 224² (every stage's map a multiple of the window, where timm's roll-then-pad equals the
    /// dense rule's pad-then-roll): strict into timm's features_only Swin + the exported norm0..3.
    func testSwinExportLoadsIntoTimmAndReproducesMtlPredictions() throws {
        try exportAndCompare(model: "{encoder: swin_t, head: multiscale, head_channels: 16}", size: 224, batch: 1,
                             library: "timm")
    }

    /// TIF-R (HRNet18-S, mmseg's bilinear fuse): tif_reference's TIFDecoder with running statistics.
    func testTIFExportReproducesMtlPredictions() throws {
        try exportAndCompare(model: "{encoder: hrnet18s, head: tif}", size: 32, batch: 2, library: nil)
    }

    /// sKEM on Swin-T at 64² (stage maps 16…2, padded to the window: the dense rule's padding) with
    /// kem_reference's KEMDecoder; the ETF buffer comes from the checkpoint.
    func testKEMExportReproducesMtlPredictions() throws {
        try exportAndCompare(model: "{encoder: swin_t, head: kem, kem: {dim: 16, heads: 2, slots: 4, topk: 2, stable: true}}",
                             size: 64, batch: 1, library: nil)
    }

    /// MT-CP on Swin-T at 64² (z 16², pyramid maps 16…4 padded to the window, the CFM at stride 8 on 8²
    /// pooled maps) at d 16: bench_mtcp_torch's FPN-lite neck and mtcp_reference's MTCPDecoder, with
    /// model.mtcp.* from the exported config and running statistics.
    func testMTCPExportReproducesMtlPredictions() throws {
        try exportAndCompare(model: "{encoder: swin_t, decoder: mtcp, mtcp: {dim: 16, cfm_stride: 8, reduction: 4, depth_mid: 8}}",
                             size: 64, batch: 2, library: nil)
    }

    func exportAndCompare(model: String, size: Int, batch: Int = 4, library: String?) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let started = Date()
        let data = try makeSynth(dir, samples: 8, height: size, width: size)
        let yaml = """
        data: {path: \(data)}
        model: \(model)
        tasks:
          seg: {role: primary, loss: ce}
          depth: {loss: l1}
          normals: {loss: cosine}
        train: {steps: 2, batch_size: \(batch), seed: 3, eval_every: 0, threads: 2}
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
        let trained = Date().timeIntervalSince(started)

        let root = DistributedTrainingTests.packageRoot
        // One interpreter (one torch import): the export as its command line runs it, then the checks.
        let check = """
        import contextlib, io, runpy, sys
        root, pth, library = sys.argv[1], sys.argv[2], sys.argv[4]
        sys.path.insert(0, root + "/tools")
        try:
            import h5py, numpy as np, torch, torchvision
            if library == "timm":
                import timm
        except ImportError as e:
            print(e); sys.exit(77)
        argv, sys.argv = sys.argv, [root + "/tools/h5_to_torch.py", sys.argv[5], pth]
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            runpy.run_path(sys.argv[0], run_name="__main__")
        sys.argv = argv
        print("export:", log.getvalue().strip())
        import mtl_torch
        torch.set_num_threads(1)
        saved = torch.load(pth, weights_only=False)
        if library == "torchvision":
            from torchvision.models.segmentation.deeplabv3 import DeepLabHead
            resnet = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
            resnet.load_state_dict(saved["encoder"], strict=True)
            for t, k in saved["out_channels"].items():
                DeepLabHead(2048, k).load_state_dict(saved["heads"][t], strict=True)
        model = mtl_torch.build(saved["config"], saved["out_channels"]).double().eval()
        model.load_state_dict(saved["state_dict"], strict=True)

        def compare(label, out, f):
            worst = 0.0
            for t, y in out.items():
                ref = f[t][...]
                err = np.abs(y.numpy() - ref).max() / max(1.0, np.abs(ref).max())
                print(label, t, err); worst = max(worst, err)
            print(label, worst)

        with h5py.File(sys.argv[3], "r") as f:
            x = torch.from_numpy(f["input"][...]).double()
            with torch.no_grad():
                compare("worst", model(x), f)
                if library == "timm":
                    # strict=True inside timm_encoder: the exported encoder in timm's own module
                    timm_encoder = mtl_torch.timm_encoder(saved["config"], saved["encoder"], image_size=x.shape[-2:],
                                                          encoder_norms=saved.get("encoder_norms")).double().eval()
                    diff = max((a - b).abs().max().item() for a, b in zip(model.encoder(x), timm_encoder(x)))
                    print(f"features of {type(model.encoder).__name__} vs {type(timm_encoder).__name__}: max abs diff {diff:.3g}")
                    model.encoder = timm_encoder
                    compare("worst_library", model(x), f)
        """
        try check.write(toFile: dir + "/check.py", atomically: true, encoding: .utf8)
        let r = try DistributedTrainingTests.run(["python3", dir + "/check.py", root, dir + "/model.pth", dir + "/pred/predictions.h5",
                                                  library ?? "rebuild", checkpoint])
        if r.status == 77 { throw XCTSkip("torch/torchvision/timm/h5py not importable: \(r.out)") }
        XCTAssertEqual(r.status, 0, r.err + r.out)
        func worst(_ label: String) -> Double? {
            r.out.split(separator: "\n").first { $0.hasPrefix(label + " ") && $0.split(separator: " ").count == 2 }
                .flatMap { Double($0.split(separator: " ")[1]) }
        }
        print("\(model) exported vs mtl predict --raw (train+predict \(String(format: "%.1f", trained)) s, total "
              + "\(String(format: "%.1f", Date().timeIntervalSince(started))) s):\n\(r.out)")
        XCTAssertLessThan(try XCTUnwrap(worst("worst"), r.out), 1e-4, r.out)
        if library == "timm" {
            XCTAssertLessThan(try XCTUnwrap(worst("worst_library"), r.out), 1e-4, r.out)
            XCTAssertTrue(r.out.contains("encoder loads strictly into timm's"), r.out)
        }
    }
}
