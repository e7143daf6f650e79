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
///
/// Against the from-spec module the reference is differentiated on mtl's own ReLU decisions
/// (`ReLU.forwardObserver` → `relu_mask/k`): HRNet18-S has ~10⁶ ReLU inputs per step and tens of them
/// lie within float32 rounding of 0, where float32 may decide either way. One such decision is a
/// different piecewise-linear branch of the network: measured at 2×3×64×64 with batch statistics, the
/// oneDNN backend (and torch's own float32, whose convolutions are oneDNN's too) takes one ReLU input
/// of −2.9e-6 (float64) as positive, and the gradients move by up to 6e-2 from the float64 ones
/// (`stage4.0.branches.1.1.conv1.weight`, a sum of ±32 terms cancelling to −5.3 vs −0.14), while on
/// that same branch they agree to 2e-5. So that deviation is the kink, not a bug (nor rounding
/// amplified by batch statistics: inputs and weights perturbed by 2^-24 move the float64 gradients by
/// ≤ 5e-6). The checks therefore hold mtl to 1e-4 against the reference on mtl's branch, and require
/// that a larger deviation from the reference's own branch comes with at least one flipped decision.
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

    func compare(reference: String, fuse: FuseUpsample, training: Bool, input: [Int], backend: ConvBackend = .blas) throws {
        Threads.set(1)
        let savedBackend = Conv2d.backend
        Conv2d.backend = backend
        defer { Conv2d.backend = savedBackend }
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
        let onMTLBranch = reference == "spec"
        var masks: [Tensor] = []
        if onMTLBranch {
            ReLU.forwardObserver = { y in masks.append(Tensor(y.shape, y.array.map { $0 > 0 ? 1 : 0 })) }
        }
        let ys = enc.forward(x).map { $0.clone() }
        ReLU.forwardObserver = nil
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
        for (k, m) in masks.enumerated() { try f.write("relu_mask/\(k)", m) }
        f.close()
        let (status, log) = TorchExchange.python([Self.root + "/tools/hrnet_reference.py", path, reference])
        try XCTSkipIf(status == 77, "torch, timm or h5py not importable by python3 (\(log.trimmingCharacters(in: .whitespacesAndNewlines))): HRNet PyTorch cross-check skipped")
        XCTAssertEqual(status, 0, "hrnet_reference.py failed:\n\(log)")
        guard status == 0 else { return }

        let out = try H5File.open(path)
        defer { out.close() }
        let label = "\(reference) (\(fuse), BN \(training ? "train" : "eval"), input \(input), \(backend))"
        let flips = out.intAttribute("/", "relu_flips") ?? 0
        if onMTLBranch {
            XCTAssertEqual(out.intAttribute("/", "relu_calls"), masks.count, "\(label): ReLU calls")
            print("HRNet cross-check \(label): \(masks.count) ReLU calls, \(flips) decisions that differ from float64's")
        }
        // Each tensor: the error against the reference on mtl's branch within 1e-4 and, where the reference's
        // own branch is further off, a flipped decision. timm: torch's float32 is the yardstick (within 1e-4
        // or 4× torch's own float32 error).
        func check(_ name: String, _ mine: [Float], _ key: String, _ key32: String, _ keyMasked: String) throws -> Double {
            let ref: [Float] = try out.read(key)
            XCTAssertEqual(ref.count, mine.count, "\(label) \(name) size")
            let plain = errors(mine, ref).rel
            guard onMTLBranch else {
                let e32 = errors(try out.read(key32), ref).rel
                XCTAssertLessThan(plain, max(1e-4, 4 * e32), "\(label) \(name)")
                return plain
            }
            let masked = errors(mine, try out.read(keyMasked)).rel
            XCTAssertLessThan(masked, 1e-4, "\(label) \(name) on mtl's ReLU decisions")
            XCTAssertTrue(plain < 1e-4 || flips > 0, "\(label) \(name): \(plain) from float64 with every ReLU decided as float64 does")
            return masked
        }
        for (s, y) in ys.enumerated() {
            let e = try check("y\(s)", y.array, "y\(s)", "y\(s)_f32", "y\(s)_masked")
            print("HRNet cross-check \(label): y\(s) relative error \(e)")
        }
        print("HRNet cross-check \(label): dx relative error \(try check("dx", dx.array, "dx", "dx_f32", "dx_masked"))")
        var worst = (name: "", rel: 0.0), worstPlain = (name: "", rel: 0.0)
        for p in enc.parameters {
            let e = try check(p.name, p.grad.array, "grad/" + p.name, "grad_f32/" + p.name, "grad_masked/" + p.name)
            let plain = errors(p.grad.array, try out.read("grad/" + p.name)).rel
            if e > worst.rel { worst = (p.name, e) }
            if plain > worstPlain.rel { worstPlain = (p.name, plain) }
        }
        print("HRNet cross-check \(label): \(enc.parameters.count) parameter gradients, worst \(worst.name) relative error \(worst.rel)"
              + (onMTLBranch ? "; against float64's own ReLU decisions worst \(worstPlain.name) \(worstPlain.rel)" : ""))
    }

    /// timm's network (nearest fuse) with running statistics, at a size divisible by 32 (timm needs it).
    func testNearestFuseMatchesTimm() throws {
        try compare(reference: "timm", fuse: .nearest, training: false, input: [2, 3, 64, 64])
    }

    /// With batch statistics (the training path): the BLAS convolutions at a size not divisible by 32
    /// (measured: no flipped decision, gradients ≤ 1.4e-5), the oneDNN ones at 64×64, where one ReLU
    /// decision flips (measured: ≤ 3.9e-5 on mtl's branch, 6.0e-2 against float64's own).
    func testBatchStatisticsGradientsMatchSpecReferenceOnBothBackends() throws {
        try compare(reference: "spec", fuse: .bilinear, training: true, input: [2, 3, 72, 88], backend: .blas)
        if OneDNN.available {
            try compare(reference: "spec", fuse: .bilinear, training: true, input: [2, 3, 64, 64], backend: .onednn)
        }
    }

    /// The mmseg-style reference (bilinear fuse) with running statistics, at a size not divisible by 32,
    /// so the fuse's second resize (to the finer branch's size) is exercised.
    func testBilinearFuseMatchesSpecReference() throws {
        try compare(reference: "spec", fuse: .bilinear, training: false, input: [2, 3, 72, 88])
    }
}
