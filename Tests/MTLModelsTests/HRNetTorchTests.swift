import Foundation
import XCTest
import MTLCore
import MTLTestSupport
import MTLNN
@testable import MTLModels

/// HRNet forward (all four outputs) and input gradient against PyTorch in float64
/// (`tools/hrnet_reference.py`): timm's hrnet_w18_small_v2 for the nearest fuse, a from-spec
/// mmseg-style module for the bilinear fuse. Weights are mtl's, loaded into the torch modules by
/// name (never downloaded). Skipped with a message when torch, timm or h5py is missing.
final class HRNetTorchTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path

    /// max |a − b| and that divided by max |b| (the reference's scale).
    func errors(_ a: [Float], _ b: [Float]) -> (abs: Double, rel: Double) {
        var worst = 0.0, scale = 0.0
        for (x, y) in zip(a, b) {
            worst = max(worst, Double(abs(x - y)))
            scale = max(scale, Double(abs(y)))
        }
        return (worst, worst / max(scale, 1e-30))
    }

    func compare(reference: String, fuse: FuseUpsample, training: Bool, input: [Int]) throws {
        Threads.set(1)
        var rng = Philox(seed: 21, stream: 1)
        let enc = HRNetEncoder(.w18Small, fuse: fuse, prefix: "", rng: &rng)
        // Non-trivial BatchNorm affine parameters and running statistics, so both are checked.
        for bn in enc.batchNorms {
            for c in 0..<bn.channels {
                bn.weight.value[c] = 0.5 + rng.uniform()
                bn.bias.value[c] = 0.4 * rng.uniform() - 0.2
                bn.runningMean.value[c] = 0.2 * rng.uniform() - 0.1
                bn.runningVar.value[c] = 0.5 + rng.uniform()
            }
            bn.training = training
        }
        let x = Tensor(input, (0..<input.reduce(1, *)).map { _ in 2 * rng.uniform() - 1 })
        // Save the state before the forward: a training forward updates the running statistics.
        let state = (enc.parameters.map { ($0.name, $0.value) } + enc.buffers.map { ($0.name, $0.value) })
            .map { ($0.0, $0.1.clone()) }
        let ys = enc.forward(x).map { $0.clone() }
        let dys = ys.map { y in Tensor(y.shape, (0..<y.count).map { _ in 2 * rng.uniform() - 1 }) }
        enc.zeroGrad()
        let dx = enc.backward(dys, inputGradient: true)!

        let dir = NSTemporaryDirectory() + "mtl-hrnet-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/exchange.h5"
        let f = try H5File.create(path)
        try f.setAttribute("/", "arch", "w18_small")
        try f.setAttribute("/", "train", training ? 1 : 0)
        for (name, t) in state { try f.write("state/" + name, t) }
        try f.write("x", x)
        for (s, dy) in dys.enumerated() { try f.write("dy\(s)", dy) }
        f.close()
        let (status, log) = TorchExchange.python([Self.root + "/tools/hrnet_reference.py", path, reference])
        try XCTSkipIf(status == 77, "torch, timm or h5py not importable by python3 (\(log.trimmingCharacters(in: .whitespacesAndNewlines))): HRNet PyTorch cross-check skipped")
        XCTAssertEqual(status, 0, "hrnet_reference.py failed:\n\(log)")
        guard status == 0 else { return }

        let out = try H5File.open(path)
        defer { out.close() }
        let label = "\(reference) (\(fuse), BN \(training ? "train" : "eval"), input \(input))"
        // mtl (float32) against the float64 reference, within 1e-4 or, where float32 itself is further
        // off (batch statistics over the 2×2 stride-32 maps amplify rounding), within 4× torch's own
        // float32 error on the same network and input.
        for (name, mine) in ys.enumerated().map({ ("y\($0.offset)", $0.element) }) + [("dx", dx)] {
            let ref: [Float] = try out.read(name), ref32: [Float] = try out.read(name + "_f32")
            XCTAssertEqual(ref.count, mine.count, "\(label) \(name) size")
            let e = errors(mine.array, ref), e32 = errors(ref32, ref)
            print("HRNet cross-check \(label): \(name) max abs error \(e.abs), relative to max |\(name)| \(e.rel) (torch float32: \(e32.rel))")
            XCTAssertLessThan(e.rel, max(1e-4, 4 * e32.rel), "\(label) \(name)")
        }
        // Every parameter's gradient, by the same measure per tensor.
        var worst = (name: "", rel: 0.0, torch32: 0.0)
        for p in enc.parameters {
            let ref: [Float] = try out.read("grad/" + p.name), ref32: [Float] = try out.read("grad_f32/" + p.name)
            let e = errors(p.grad.array, ref), e32 = errors(ref32, ref)
            if e.rel > worst.rel { worst = (p.name, e.rel, e32.rel) }
            XCTAssertLessThan(e.rel, max(1e-4, 4 * e32.rel), "\(label) gradient of \(p.name)")
        }
        print("HRNet cross-check \(label): \(enc.parameters.count) parameter gradients, worst \(worst.name) relative error \(worst.rel) (torch float32: \(worst.torch32))")
    }

    /// timm's network (nearest fuse) with running statistics, at a size divisible by 32 (timm needs it).
    func testNearestFuseMatchesTimm() throws {
        try compare(reference: "timm", fuse: .nearest, training: false, input: [2, 3, 64, 64])
    }

    /// With batch statistics (the training path), on the oneDNN convolutions: within torch's own float32
    /// error (measured dx 8e-6, parameter gradients ≤ 2.3e-5; torch float32 7e-6 / 9e-6). On the BLAS
    /// convolution path the same check is off by 1.5e-2 at this input (the forward by 5e-6 only; at
    /// 64×64 both backends agree to 1.5e-5): open, see docs/ARCHITECTURE.md.
    func testBilinearFuseWithBatchStatisticsMatchesSpecReferenceOnOneDNN() throws {
        let saved = Conv2d.backend
        Conv2d.backend = .onednn
        defer { Conv2d.backend = saved }
        try compare(reference: "spec", fuse: .bilinear, training: true, input: [2, 3, 72, 88])
    }

    /// The mmseg-style reference (bilinear fuse) with running statistics, at a size not divisible by 32,
    /// so the fuse's second resize (to the finer branch's size) is exercised.
    func testBilinearFuseMatchesSpecReference() throws {
        try compare(reference: "spec", fuse: .bilinear, training: false, input: [2, 3, 72, 88])
    }
}
