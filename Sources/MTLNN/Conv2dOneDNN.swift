import CDNNL
import MTLCore

/// The oneDNN backend of one Conv2d: forward, backward-data and backward-weights (with bias)
/// primitives, created once per (batch, height, width, threads) and kept (creating one costs
/// ~20× a steady execution). mtl's tensors stay NCHW and the weights OIHW (checkpoints keep
/// PyTorch's layout); each primitive picks its own layouts ("any"), and the arguments whose
/// layout differs are reordered on the way in and out (`OneDNN.Argument`) through scratch buffers
/// shared by all layers. The weights are reordered once per forward into a copy of the layer's
/// own, which backward-data reuses when it wants the same layout; both backward passes share one
/// reordered dy. Gradients are added to mtl's buffers by the reorder's sum post-op, so they
/// accumulate as on the BLAS path.
final class OneDNNConvolution {
    struct Shape: Hashable {
        var n, h, w, threads: Int
    }

    let inChannels, outChannels, kernel, stride, padding, dilation: Int
    let hasBias: Bool
    private var plans: [Shape: Plan] = [:]

    init(_ conv: Conv2d) {
        inChannels = conv.inChannels
        outChannels = conv.outChannels
        kernel = conv.kernel
        stride = conv.stride
        padding = conv.padding
        dilation = conv.dilation
        hasBias = conv.bias != nil
    }

    /// The plan for this input size and the current thread count; nil when oneDNN's forward
    /// implementation for it would be slower than the BLAS path (`OneDNN.beatsBLAS`).
    func plan(n: Int, h: Int, w: Int) -> Plan? {
        let shape = Shape(n: n, h: h, w: w, threads: Threads.count)
        OneDNN.useThreads(shape.threads)
        let p = plans[shape] ?? Plan(self, shape)
        plans[shape] = p
        return OneDNN.beatsBLAS(p.forwardImplementation) ? p : nil
    }

    /// The backward passes of a plan (backward-data only when `dx` is needed); nil when one of
    /// them would be slower than the BLAS path (the caller then uses the BLAS backward, which
    /// needs nothing from the forward but its input).
    func backwardPasses(_ plan: Plan, inputGrad: Bool) -> (WeightsPass, DataPass?)? {
        let wp = plan.makeWeightsPass(self)
        if !OneDNN.beatsBLAS(wp.implementation) { return nil }
        guard inputGrad else { return (wp, nil) }
        let dp = plan.makeDataPass()
        return OneDNN.beatsBLAS(dp.implementation) ? (wp, dp) : nil
    }

    /// Implementations chosen so far, one line per shape and pass (for `mtl doctor`, bench, logs).
    var implementations: [String] {
        plans.keys.sorted { ($0.n, $0.h, $0.w, $0.threads) < ($1.n, $1.h, $1.w, $1.threads) }.map { s in
            let p = plans[s]!
            var line = "n\(s.n) \(s.h)x\(s.w) t\(s.threads): fwd \(p.forwardImplementation)"
            if let d = p.dataPass { line += ", bwd_data \(d.implementation)" }
            if let w = p.weightsPass { line += ", bwd_weights \(w.implementation)" }
            return line
        }
    }

    func forward(_ plan: Plan, x: UnsafePointer<Float>, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                 y: UnsafeMutablePointer<Float>) {
        plan.src.load(x)
        plan.weights.load(weight)
        var args: [(Int32, OneDNN.Memory)] = [(Int32(MTL_DNNL_ARG_SRC), plan.src.memory),
                                              (Int32(MTL_DNNL_ARG_WEIGHTS), plan.weights.memory)]
        if let b = plan.bias, let bias {
            b.load(bias)
            args.append((Int32(MTL_DNNL_ARG_BIAS), b.memory))
        }
        plan.dst.bind(y)
        args.append((Int32(MTL_DNNL_ARG_DST), plan.dst.memory))
        OneDNN.execute(plan.forward, args)
        plan.dst.store()
    }

    /// dW += ∂/∂W, db += ∂/∂b and, with a data pass, dx = ∂/∂x, for the upstream dy of the
    /// forward that ran on `x` with this plan.
    func backward(_ passes: (WeightsPass, DataPass?), x: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                  weight: UnsafePointer<Float>, dWeight: UnsafeMutablePointer<Float>, dBias: UnsafeMutablePointer<Float>?,
                  dx: UnsafeMutablePointer<Float>?) {
        let (wp, dataPass) = passes
        wp.src.load(x)
        wp.diffDst.load(dy)
        wp.diffWeights.bind(dWeight)
        var args: [(Int32, OneDNN.Memory)] = [(Int32(MTL_DNNL_ARG_SRC), wp.src.memory), (Int32(MTL_DNNL_ARG_DIFF_DST), wp.diffDst.memory),
                                              (Int32(MTL_DNNL_ARG_DIFF_WEIGHTS), wp.diffWeights.memory)]
        if let db = wp.diffBias, let dBias {
            db.bind(dBias)
            args.append((Int32(MTL_DNNL_ARG_DIFF_BIAS), db.memory))
        }
        OneDNN.execute(wp.primitive, args)
        wp.diffWeights.store()
        wp.diffBias?.store()

        guard let dp = dataPass, let dx else { return }
        dp.diffDst?.load(dy)
        dp.weights?.load(weight)
        dp.diffSrc.bind(dx)
        OneDNN.execute(dp.primitive, [(Int32(MTL_DNNL_ARG_DIFF_DST), (dp.diffDst ?? wp.diffDst).memory),
                                      (Int32(MTL_DNNL_ARG_WEIGHTS), (dp.weights ?? dp.forwardWeights).memory),
                                      (Int32(MTL_DNNL_ARG_DIFF_SRC), dp.diffSrc.memory)])
        dp.diffSrc.store()
    }

    /// The operation descriptors of the three passes for one shape. oneDNN counts dilation from 0
    /// and needs both paddings: the right one follows from PyTorch's floor output size and may be
    /// negative (a stride-2 1×1 on an even map never reads the last row).
    struct Geometry {
        var src, weights, bias, dst: dnnl_memory_desc_t
        var userSrc, userWeights, userBias, userDst: dnnl_memory_desc_t
        var strides, dilates, padL, padR: [Int64]
    }

    func geometry(_ s: Shape) -> Geometry {
        let span = dilation * (kernel - 1) + 1
        let ho = (s.h + 2 * padding - span) / stride + 1, wo = (s.w + 2 * padding - span) / stride + 1
        let srcDims = [s.n, inChannels, s.h, s.w], wDims = [outChannels, inChannels, kernel, kernel]
        let dstDims = [s.n, outChannels, ho, wo]
        let padR = [(ho - 1) * stride + span - s.h - padding, (wo - 1) * stride + span - s.w - padding].map(Int64.init)
        return Geometry(src: OneDNN.desc(srcDims, dnnl_format_tag_any), weights: OneDNN.desc(wDims, dnnl_format_tag_any),
                        bias: OneDNN.desc([outChannels], dnnl_format_tag_any), dst: OneDNN.desc(dstDims, dnnl_format_tag_any),
                        userSrc: OneDNN.desc(srcDims, dnnl_nchw), userWeights: OneDNN.desc(wDims, dnnl_oihw),
                        userBias: OneDNN.desc([outChannels], dnnl_a), userDst: OneDNN.desc(dstDims, dnnl_nchw),
                        strides: [Int64(stride), Int64(stride)], dilates: [Int64(dilation - 1), Int64(dilation - 1)],
                        padL: [Int64(padding), Int64(padding)], padR: padR)
    }

    final class Plan {
        let shape: Shape
        let geometry: Geometry
        let forwardPD: dnnl_primitive_desc_t
        let forward: dnnl_primitive_t
        let forwardImplementation: String
        let src, weights, dst: OneDNN.Argument
        let bias: OneDNN.Argument?
        private(set) var dataPass: DataPass?
        private(set) var weightsPass: WeightsPass?

        init(_ conv: OneDNNConvolution, _ shape: Shape) {
            self.shape = shape
            var g = conv.geometry(shape)
            geometry = g
            var desc = dnnl_convolution_desc_t()
            let hasBias = conv.hasBias
            OneDNN.check(withUnsafePointer(to: &g.bias) { bias in
                dnnl_dilated_convolution_forward_desc_init(&desc, dnnl_forward_training, dnnl_convolution_direct,
                                                           &g.src, &g.weights, hasBias ? bias : nil, &g.dst,
                                                           g.strides, g.dilates, g.padL, g.padR)
            }, "convolution_forward_desc_init")
            var pd: dnnl_primitive_desc_t?
            OneDNN.check(dnnl_primitive_desc_create(&pd, &desc, nil, OneDNN.engine, nil), "convolution forward primitive_desc_create")
            forwardPD = pd!
            forward = OneDNN.makePrimitive(forwardPD)
            forwardImplementation = OneDNN.implementation(forwardPD)
            OneDNN.record("fwd", forwardImplementation)
            src = OneDNN.Argument(input: g.userSrc, wanted: OneDNN.queryDesc(forwardPD, dnnl_query_src_md), role: .src)
            weights = OneDNN.Argument(input: g.userWeights, wanted: OneDNN.queryDesc(forwardPD, dnnl_query_weights_md), role: nil)
            bias = conv.hasBias
                ? OneDNN.Argument(input: g.userBias, wanted: dnnl_primitive_desc_query_md(forwardPD, dnnl_query_weights_md, 1)!.pointee,
                                  role: nil)
                : nil
            dst = OneDNN.Argument(output: g.userDst, produced: OneDNN.queryDesc(forwardPD, dnnl_query_dst_md), role: .dst)
        }

        func makeWeightsPass(_ conv: OneDNNConvolution) -> WeightsPass {
            if let p = weightsPass { return p }
            let p = WeightsPass(conv, self)
            weightsPass = p
            return p
        }

        /// After `makeWeightsPass` (it shares that pass's reordered dy when the layouts agree).
        func makeDataPass() -> DataPass {
            if let p = dataPass { return p }
            let p = DataPass(self, sharedDiffDst: weightsPass!.diffDst)
            dataPass = p
            return p
        }

        deinit {
            dnnl_primitive_destroy(forward)
            dnnl_primitive_desc_destroy(forwardPD)
        }
    }

    final class WeightsPass {
        let pd: dnnl_primitive_desc_t
        let primitive: dnnl_primitive_t
        let implementation: String
        let src, diffDst, diffWeights: OneDNN.Argument
        let diffBias: OneDNN.Argument?

        init(_ conv: OneDNNConvolution, _ plan: Plan) {
            var g = plan.geometry
            var desc = dnnl_convolution_desc_t()
            let hasBias = conv.hasBias
            OneDNN.check(withUnsafePointer(to: &g.bias) { bias in
                dnnl_dilated_convolution_backward_weights_desc_init(&desc, dnnl_convolution_direct, &g.src, &g.weights,
                                                                    hasBias ? bias : nil, &g.dst,
                                                                    g.strides, g.dilates, g.padL, g.padR)
            }, "convolution_backward_weights_desc_init")
            var p: dnnl_primitive_desc_t?
            OneDNN.check(dnnl_primitive_desc_create(&p, &desc, nil, OneDNN.engine, plan.forwardPD),
                         "convolution backward-weights primitive_desc_create")
            pd = p!
            primitive = OneDNN.makePrimitive(pd)
            implementation = OneDNN.implementation(pd)
            OneDNN.record("bwd_weights", implementation)
            src = OneDNN.Argument(input: g.userSrc, wanted: OneDNN.queryDesc(pd, dnnl_query_src_md), role: .src)
            diffDst = OneDNN.Argument(input: g.userDst, wanted: OneDNN.queryDesc(pd, dnnl_query_diff_dst_md), role: .diffDst)
            diffWeights = OneDNN.Argument(output: g.userWeights, produced: OneDNN.queryDesc(pd, dnnl_query_diff_weights_md),
                                          role: .diffWeights, accumulate: true)
            diffBias = conv.hasBias
                ? OneDNN.Argument(output: g.userBias, produced: dnnl_primitive_desc_query_md(pd, dnnl_query_diff_weights_md, 1)!.pointee,
                                  role: nil, accumulate: true)
                : nil
        }

        deinit {
            dnnl_primitive_destroy(primitive)
            dnnl_primitive_desc_destroy(pd)
        }
    }

    final class DataPass {
        let pd: dnnl_primitive_desc_t
        let primitive: dnnl_primitive_t
        let implementation: String
        /// nil: the backward-weights pass's reordered dy / the forward's weights copy is in the
        /// layout this pass wants and is used as it is.
        let diffDst, weights: OneDNN.Argument?
        let forwardWeights, diffSrc: OneDNN.Argument

        init(_ plan: Plan, sharedDiffDst: OneDNN.Argument) {
            var g = plan.geometry
            var desc = dnnl_convolution_desc_t()
            OneDNN.check(dnnl_dilated_convolution_backward_data_desc_init(&desc, dnnl_convolution_direct, &g.src, &g.weights, &g.dst,
                                                                          g.strides, g.dilates, g.padL, g.padR),
                         "convolution_backward_data_desc_init")
            var p: dnnl_primitive_desc_t?
            OneDNN.check(dnnl_primitive_desc_create(&p, &desc, nil, OneDNN.engine, plan.forwardPD),
                         "convolution backward-data primitive_desc_create")
            pd = p!
            primitive = OneDNN.makePrimitive(pd)
            implementation = OneDNN.implementation(pd)
            OneDNN.record("bwd_data", implementation)
            let wantedDiffDst = OneDNN.queryDesc(pd, dnnl_query_diff_dst_md)
            diffDst = OneDNN.equal(wantedDiffDst, sharedDiffDst.desc)
                ? nil : OneDNN.Argument(input: g.userDst, wanted: wantedDiffDst, role: .diffDstData)
            let wantedWeights = OneDNN.queryDesc(pd, dnnl_query_weights_md)
            forwardWeights = plan.weights
            weights = OneDNN.equal(wantedWeights, plan.weights.desc) ? nil : OneDNN.Argument(input: g.userWeights, wanted: wantedWeights, role: nil)
            diffSrc = OneDNN.Argument(output: g.userSrc, produced: OneDNN.queryDesc(pd, dnnl_query_diff_src_md), role: .diffSrc)
        }

        deinit {
            dnnl_primitive_destroy(primitive)
            dnnl_primitive_desc_destroy(pd)
        }
    }
}
