import Foundation
import MTLTestSupport
import XCTest

/// The PyTorch references that docs/PERFORMANCE.md's ratios come from (tools/bench_*_torch.py, run by
/// tools/bench_pairs.py) must run and must time the same network as `mtl bench`: one step of each at a
/// small size; the parameter counts of the two JSON lines must be equal (for KEM also the trainable
/// ones: the decoder, with the Swin-S frozen), and mtl's GFLOP/step (convolutions counted per layer,
/// every other GEMM as executed) must be within 2 % of what torch.utils.flop_counter counts for the
/// reference's step (measured at these sizes: HRNet18-S equal, Swin-T −0.1 % (mtl does not count the patch
/// embedding), TIF-R −0.6 %, MT-CP +0.06 %). The timm Swins run with always_partition, so that maps
/// smaller than the window are padded as in mtl's dense rule instead of getting a smaller window.
/// Skipped with a message without torch/timm.
final class BenchReferenceTests: XCTestCase {
    func testEveryTorchBenchReferenceRunsTheSameNetworkAsMtlBench() throws {
        let probe = TorchExchange.python(["-c", "import torch, timm"])
        if probe.status != 0 { throw XCTSkip("torch/timm not importable: \(probe.log.suffix(200))") }
        let mtl = try releaseMTLBinary()
        let rows: [(model: String, script: String, size: [String], extra: [String])] = [
            ("hrnet18s-baseline", "bench_hrnet_torch.py", ["--batch", "1", "--height", "64", "--wide", "96"], []),
            ("tif-hrnet18", "bench_tif_torch.py", ["--batch", "1", "--height", "64", "--wide", "96"], []),
            ("swin_t-baseline", "bench_swin_torch.py", ["--batch", "1", "--height", "64", "--wide", "128"],
             ["--head-channels", "32"]),
            ("kem-swin_s", "bench_kem_torch.py", ["--batch", "1", "--height", "64", "--wide", "128"], []),
            ("mtcp-swin_t", "bench_mtcp_torch.py", ["--batch", "1", "--height", "64", "--wide", "128"], ["--cfm-stride", "8"]),
        ]
        for row in rows {
            let common = ["--model", row.model, "--threads", "1", "--steps", "1"] + row.size + row.extra
            let m = try runProcess([mtl, "bench", "--json"] + common, timeout: 300)
            XCTAssertEqual(m.status, 0, "\(row.model): mtl bench failed: \(m.err.suffix(400))")
            let t = TorchExchange.python([packageRoot + "/tools/" + row.script] + common)
            XCTAssertEqual(t.status, 0, "\(row.model): \(row.script) failed: \(t.log.suffix(600))")
            guard let mj = lastJSON(m.out), let tj = lastJSON(t.log) else {
                XCTFail("\(row.model): no JSON line (mtl: \(m.out.suffix(300)); torch: \(t.log.suffix(300)))")
                continue
            }
            XCTAssertNotNil(tj["ms_per_step_median"] as? Double, "\(row.model): \(row.script) printed no time")
            XCTAssertEqual(mj["parameters"] as? Int, tj["parameters"] as? Int, "\(row.model): parameters mtl vs \(row.script)")
            if let mg = mj["gflop_per_step"] as? Double, let tg = tj["gflop_per_step"] as? Double {
                XCTAssertEqual(mg, tg, accuracy: 0.02 * tg, "\(row.model): GFLOP/step mtl vs torch.utils.flop_counter")
            } else {
                XCTFail("\(row.model): a JSON line without gflop_per_step")
            }
            if let trainable = tj["trainable_parameters"] as? Int {
                XCTAssertEqual(mj["trainable_parameters"] as? Int, trainable, "\(row.model): trainable parameters")
            }
        }
    }

    private func lastJSON(_ text: String) -> [String: Any]? {
        guard let line = text.split(separator: "\n").last(where: { $0.hasPrefix("{") }) else { return nil }
        return (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
    }
}
