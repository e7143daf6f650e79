import Foundation
import XCTest
@testable import MTLCore
@testable import MTLEngine
@testable import MTLModels

/// tools/hrnet_to_h5.py on an mmseg-style segmentor checkpoint made from timm's hrnet_w18_small_v2
/// (random weights, `backbone.` prefix, a decode head, the classification head's keys): the HDF5 it
/// writes loads into an hrnet18s model through `model.pretrained`'s loader with every backbone tensor
/// equal to the checkpoint's, and the ignored keys are listed. Skipped without torch/timm/h5py.
final class HRNetImportTests: XCTestCase {
    static let makeCheckpoint = #"""
import sys
try:
    import h5py, numpy as np, torch, timm
except ImportError as e:
    print(e); sys.exit(77)
torch.manual_seed(0)
m = timm.create_model("hrnet_w18_small_v2")
for mod in m.modules():
    if isinstance(mod, torch.nn.BatchNorm2d):
        for t in (mod.weight, mod.bias, mod.running_mean):
            t.data.uniform_(-1, 1)
        mod.running_var.data.uniform_(0.5, 1.5)
state = m.state_dict()
sd = {"backbone." + k: v for k, v in state.items()}
sd["decode_head.conv_seg.weight"] = torch.zeros(3, 270, 1, 1)
torch.save({"state_dict": sd, "meta": {}}, sys.argv[1] + "/seg.pth")
with h5py.File(sys.argv[1] + "/expected.h5", "w") as f:
    for k, v in state.items():
        f.create_dataset(k, data=v.numpy().astype(np.float32))
"""#

    func testMMSegCheckpointImportsIntoHRNet18S() throws {
        let root = DistributedTrainingTests.packageRoot
        let dir = NSTemporaryDirectory() + "mtl-hrnet-import-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.makeCheckpoint.write(toFile: dir + "/make.py", atomically: true, encoding: .utf8)
        let made = try DistributedTrainingTests.run(["python3", dir + "/make.py", dir], timeout: 300)
        try XCTSkipIf(made.status == 77, "torch, timm or h5py not importable by python3: HRNet import test skipped")
        XCTAssertEqual(made.status, 0, made.err)
        let r = try DistributedTrainingTests.run(["python3", root + "/tools/hrnet_to_h5.py", dir + "/seg.pth",
                                                  dir + "/imported.h5", "--arch", "w18_small"], timeout: 300)
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("wrote \(dir)/imported.h5: 864 backbone tensors"), r.out)
        for ignored in ["decode_head.*: 1", "incre_modules.*: 96", "downsamp_modules.*: 21", "final_layer.*: 7", "classifier.*: 2"] {
            XCTAssertTrue(r.out.contains("ignored \(ignored) tensors"), "\(ignored) in\n\(r.out)")
        }

        let model = try MultiTaskModel(ModelSpec(encoder: "hrnet18s", width: 64, outputStride: 8, decoder: "multiscale",
                                                 headChannels: 8, tasks: [("seg", 3)]), seed: 1)
        try Pretrained.loadEncoder(model: model, path: dir + "/imported.h5")
        let expected = try Pretrained.readTensors(dir + "/expected.h5")
        var compared = 0
        for (name, t) in model.stateTensors() where name.hasPrefix("encoder.") {
            let key = String(name.dropFirst("encoder.".count))
            guard let e = expected[key] else { XCTFail("\(key) not in the checkpoint"); continue }
            XCTAssertEqual(t.array, e.array, key)
            compared += 1
        }
        XCTAssertEqual(compared, 864)
    }
}
