import XCTest
import MTLCore
import MTLNN
import MTLTestSupport
@testable import MTLModels

/// BatchNorm in eval mode with random running statistics, small random scales and positive shifts
/// (γ ∈ [0.2, 0.4), β ∈ [1, 1.5)): most ReLU inputs then sit well away from the kink, so central
/// differences in float32 are accurate while every path of the module still carries gradient.
/// (BatchNorm's batch-statistics backward and ReLU have their own tests.)
private func linearishBatchNorms(_ bns: [BatchNorm2d], _ rng: inout Philox) {
    for bn in bns {
        for c in 0..<bn.channels {
            bn.weight.value[c] = 0.2 + 0.2 * rng.uniform()
            bn.bias.value[c] = 1 + 0.5 * rng.uniform()
            bn.runningMean.value[c] = 0.2 * rng.uniform() - 0.1
            bn.runningVar.value[c] = 0.5 + rng.uniform()
        }
        bn.training = false
    }
}

final class HRNetTests: XCTestCase {
    /// The backbone counts of SEED-ARCHITECTURES.md §1.2 (= timm / mmseg without the classification head).
    func testParameterCountsAndNames() {
        var rng = Philox(seed: 0, stream: 1)
        let small = HRNetEncoder(.w18Small, prefix: "", rng: &rng)
        XCTAssertEqual(small.parameterCount, 3_860_720)
        let full = HRNetEncoder(.w18, prefix: "", rng: &rng)
        XCTAssertEqual(full.parameterCount, 9_562_260)

        let shapes = Dictionary(uniqueKeysWithValues: (small.parameters.map { ($0.name, $0.value.shape) }
                                                       + small.buffers.map { ($0.name, $0.value.shape) }))
        XCTAssertEqual(shapes.count, 864)   // timm's state_dict keys without the classification head
        XCTAssertEqual(shapes["conv1.weight"], [64, 3, 3, 3])
        XCTAssertEqual(shapes["layer1.0.downsample.0.weight"], [256, 64, 1, 1])
        XCTAssertEqual(shapes["layer1.1.conv3.weight"], [256, 64, 1, 1])
        XCTAssertEqual(shapes["transition1.0.0.weight"], [18, 256, 3, 3])
        XCTAssertEqual(shapes["transition1.1.0.0.weight"], [36, 256, 3, 3])
        XCTAssertEqual(shapes["transition2.2.0.1.running_var"], [72])
        XCTAssertEqual(shapes["transition3.3.0.0.weight"], [144, 72, 3, 3])
        XCTAssertEqual(shapes["stage2.0.branches.1.1.conv2.weight"], [36, 36, 3, 3])
        XCTAssertEqual(shapes["stage3.2.fuse_layers.0.2.0.weight"], [18, 72, 1, 1])
        XCTAssertEqual(shapes["stage4.1.fuse_layers.3.0.1.0.weight"], [18, 18, 3, 3])   // j < i: all but the last keep C_j
        XCTAssertEqual(shapes["stage4.1.fuse_layers.3.0.2.0.weight"], [144, 18, 3, 3])
        XCTAssertEqual(shapes["stage4.1.fuse_layers.3.0.2.1.num_batches_tracked"], [])
        XCTAssertNil(shapes["stage4.2.branches.0.0.conv1.weight"])   // two stage-4 modules in W18-Small-v2
        // Every parameter appears in exactly one backward group.
        XCTAssertEqual(small.parameterGroupsInBackwardOrder.joined().map { $0.name }.sorted(),
                       small.parameters.map { $0.name }.sorted())
    }

    /// Four scales at strides 4/8/16/32, also for sizes not divisible by 32 (the fuse resizes to each
    /// branch's own size), with both fuse upsamplings; the multiscale head maps them to the input size.
    func testFeatureShapesAndMultiscaleModel() throws {
        Threads.set(1)
        for fuse in FuseUpsample.allCases {
            let model = try MultiTaskModel(ModelSpec(encoder: "hrnet18s", width: 64, outputStride: 8, decoder: "multiscale",
                                                     headChannels: 16, fuseUpsample: fuse, tasks: [("seg", 5), ("depth", 1)]),
                                           seed: 1)
            XCTAssertEqual(model.encoder.featureStrides, [4, 8, 16, 32])
            let x = Tensor([1, 3, 40, 56])
            let f = model.encoder.forward(x)
            XCTAssertEqual(f.map { $0.shape }, [[1, 18, 10, 14], [1, 36, 5, 7], [1, 72, 3, 4], [1, 144, 2, 2]], "\(fuse)")
            XCTAssertEqual(model.heads[0].forward(f, height: 40, width: 56).shape, [1, 5, 40, 56])
            XCTAssertEqual(model.heads[1].parameters.map { $0.name },
                           ["heads.depth.last_layer.0.weight", "heads.depth.last_layer.0.bias", "heads.depth.last_layer.1.weight",
                            "heads.depth.last_layer.1.bias", "heads.depth.last_layer.3.weight", "heads.depth.last_layer.3.bias"])
        }
        XCTAssertThrowsError(try MultiTaskModel(ModelSpec(encoder: "hrnet18s", width: 64, outputStride: 8, decoder: "deeplab",
                                                          headChannels: 8, tasks: [("seg", 4)]), seed: 0))
    }

    /// One HR module (3 branches, tiny widths, odd sizes so the bilinear fuse takes its second resize):
    /// input gradients of every branch and weight gradients of an up, a down and a branch convolution
    /// against central differences, both fuse upsamplings.
    func testHRModuleGradients() {
        Threads.set(1)
        for fuse in FuseUpsample.allCases {
            var rng = Philox(seed: 5, stream: 1)
            let module = HRModule("m", channels: [2, 3, 4], blocks: 1, fuse: fuse, rng: &rng)
            linearishBatchNorms(module.bns, &rng)
            let xs = [randomTensor([2, 2, 9, 7], &rng), randomTensor([2, 3, 5, 4], &rng), randomTensor([2, 4, 3, 2], &rng)]
            let ys = module.forward(xs)
            XCTAssertEqual(ys.map { $0.shape }, xs.map { $0.shape })
            let rs = ys.map { randomTensor($0.shape, &rng) }
            for p in module.parameters { p.grad.zero() }
            let dxs = module.backward(rs).map { $0.array }
            let f = { functional(module.forward(xs), rs) }
            for b in 0..<3 { checkGradient("\(fuse) dx\(b)", x: xs[b], analytic: dxs[b], maxChecks: 150, skipKinks: true, f) }
            let byName = Dictionary(uniqueKeysWithValues: module.parameters.map { ($0.name, $0) })
            for name in ["m.fuse_layers.0.2.0.weight", "m.fuse_layers.2.0.0.0.weight", "m.fuse_layers.2.0.1.1.weight",
                         "m.branches.1.0.conv2.weight"] {
                let p = byName[name]!
                checkGradient("\(fuse) \(name)", x: p.value, analytic: p.grad.array, maxChecks: 150, skipKinks: true, f)
            }
        }
    }

    /// The transition before stage 3 style (two kept branches, one new from the last) and the
    /// transition1 style (a changed width and a new branch): gradients against central differences.
    func testTransitionGradients() {
        Threads.set(1)
        for (old, new) in [([2, 3], [2, 3, 4]), ([5], [2, 3])] {
            var rng = Philox(seed: 6, stream: 1)
            let t = Transition("t", from: old, to: new, rng: &rng)
            linearishBatchNorms(t.bns, &rng)
            let xs = old.enumerated().map { b, c in randomTensor([2, c, 8 >> b, 6 >> b], &rng) }
            let ys = t.forward(xs)
            let rs = ys.map { randomTensor($0.shape, &rng) }
            for p in t.parameters { p.grad.zero() }
            let dxs = t.backward(rs).map { $0.array }
            let f = { functional(t.forward(xs), rs) }
            for b in xs.indices { checkGradient("\(old)→\(new) dx\(b)", x: xs[b], analytic: dxs[b], maxChecks: 150, skipKinks: true, f) }
            for p in t.parameters where p.name.hasSuffix(".0.weight") {
                checkGradient("\(old)→\(new) \(p.name)", x: p.value, analytic: p.grad.array, maxChecks: 150, skipKinks: true, f)
            }
        }
    }

    /// The multiscale head: per-scale input gradients and its parameters against central differences.
    func testMultiScaleHeadGradients() {
        Threads.set(1)
        var rng = Philox(seed: 7, stream: 1)
        let head = MultiScaleHead("h", inChannels: [2, 3, 4], outChannels: 3, channels: 5, rng: &rng)
        linearishBatchNorms(head.batchNorms, &rng)
        let fs = [randomTensor([2, 2, 6, 5], &rng), randomTensor([2, 3, 3, 3], &rng), randomTensor([2, 4, 2, 2], &rng)]
        let y = head.forward(fs, height: 11, width: 9)
        XCTAssertEqual(y.shape, [2, 3, 11, 9])
        let r = randomTensor(y.shape, &rng)
        head.zeroGrad()
        let ds = head.backward(r).map { $0.array }
        let f = { functional([head.forward(fs, height: 11, width: 9)], [r]) }
        for s in 0..<3 { checkGradient("df\(s)", x: fs[s], analytic: ds[s], maxChecks: 150, skipKinks: true, f) }
        for p in head.parameters { checkGradient(p.name, x: p.value, analytic: p.grad.array, maxChecks: 150, skipKinks: true, f) }
    }
}
