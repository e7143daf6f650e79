import CDNNL
import MTLCore

/// The oneDNN backend of one Conv2d: forward, backward-data and backward-weights (with bias)
/// primitives, created once per (batch, height, width, threads) and kept (creating one costs
/// ~20× a steady execution). mtl's tensors stay NCHW and the weights OIHW (checkpoints keep
/// PyTorch's layout); each primitive picks its own layouts ("any"; a forward that then gets only
/// im2col + GEMM is asked again with NHWC activations, see `Plan.init`), and the arguments whose
/// layout differs are reordered on the way in and out (`OneDNN.Argument`) through scratch buffers
/// shared by all layers (a copy per layer of the activations or weights in oneDNN's layout would
/// add up to a second network's worth of memory). The weights are reordered once per pass that
/// reads them; both backward passes share one reordered dy. Gradients are added to mtl's buffers
/// by the reorder's sum post-op, so they accumulate as on the BLAS path.
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

    /// The plan for this input size and the current thread count (created on first use).
    func plan(n: Int, h: Int, w: Int) -> Plan {
        let shape = Shape(n: n, h: h, w: w, threads: Threads.count)
        OneDNN.useThreads(shape.threads)
        let p = plans[shape] ?? Plan(self, shape)
        plans[shape] = p
        return p
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
        OneDNN.execute(plan.forward!, args)
        plan.dst.store()
    }

    /// dW += ∂/∂W and db += ∂/∂b for the upstream dy of a forward on `x`.
    func backwardWeights(_ wp: WeightsPass, x: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                         dWeight: UnsafeMutablePointer<Float>, dBias: UnsafeMutablePointer<Float>?) {
        wp.src.load(x)
        wp.diffDst.load(dy)
        wp.diffWeights.bind(dWeight)
        var args: [(Int32, OneDNN.Memory)] = [(Int32(MTL_DNNL_ARG_SRC), wp.src.memory), (Int32(MTL_DNNL_ARG_DIFF_DST), wp.diffDst.memory),
                                              (Int32(MTL_DNNL_ARG_DIFF_WEIGHTS), wp.diffWeights.memory)]
        if let db = wp.diffBias, let dBias {
            db.bind(dBias)
            args.append((Int32(MTL_DNNL_ARG_DIFF_BIAS), db.memory))
        }
        OneDNN.execute(wp.primitive!, args)
        wp.diffWeights.store()
        wp.diffBias?.store()
    }

    /// dx = ∂/∂x for the upstream dy. `dyLoaded`: the backward-weights pass has just brought dy into
    /// the layout this pass reads too (then it is not reordered again).
    func backwardData(_ plan: Plan, _ dp: DataPass, dy: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                      dx: UnsafeMutablePointer<Float>, dyLoaded: Bool) {
        let diffDst: OneDNN.Memory
        if dyLoaded && dp.readsWeightsPassDiffDst, let wp = plan.weightsPass {
            diffDst = wp.diffDst.memory
        } else {
            dp.diffDst.load(dy)
            diffDst = dp.diffDst.memory
        }
        dp.weights.load(weight)
        dp.diffSrc.bind(dx)
        OneDNN.execute(dp.primitive!, [(Int32(MTL_DNNL_ARG_DIFF_DST), diffDst), (Int32(MTL_DNNL_ARG_WEIGHTS), dp.weights.memory),
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
        var srcDims, dstDims: [Int]
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
                        padL: [Int64(padding), Int64(padding)], padR: padR, srcDims: srcDims, dstDims: dstDims)
    }

    final class Plan {
        let shape: Shape
        let geometry: Geometry
        let forwardPD: dnnl_primitive_desc_t
        /// nil when the BLAS path runs the forward (see `OneDNN.primitiveIfFast`).
        let forward: dnnl_primitive_t?
        let forwardImplementation: String
        let src, weights, dst: OneDNN.Argument
        let bias: OneDNN.Argument?
        private(set) var dataPass: DataPass?
        private(set) var weightsPass: WeightsPass?
        /// Whether oneDNN runs the forward (else the BLAS path does: `OneDNN.primitiveIfFast`).
        var forwardIsFast: Bool { forward != nil }

        init(_ conv: OneDNNConvolution, _ shape: Shape) {
            self.shape = shape
            let g = conv.geometry(shape)
            geometry = g
            var pd = Plan.forwardDescriptor(conv, g, src: g.src, dst: g.dst)
            var implementation = OneDNN.implementation(pd)
            if !OneDNN.beatsBLAS(implementation) {
                // oneDNN 2.x's blocked JIT kernels refuse a padding wider than their register block
                // (rate 12 on a 16×32 map) and fall back to im2col + GEMM; its brgemm kernels take
                // NHWC activations, accept any padding and skip the taps that read it: 3–4× faster
                // than the BLAS regions on the bench heads (AMD EPYC Zen5, avx512_core). Without
                // AVX-512 there is no brgemm kernel and the retry returns GEMM again.
                let nhwc = Plan.forwardDescriptor(conv, g, src: OneDNN.desc(g.srcDims, dnnl_nhwc),
                                                  dst: OneDNN.desc(g.dstDims, dnnl_nhwc))
                let nhwcImplementation = OneDNN.implementation(nhwc)
                if OneDNN.beatsBLAS(nhwcImplementation) {
                    dnnl_primitive_desc_destroy(pd)
                    (pd, implementation) = (nhwc, nhwcImplementation)
                } else {
                    dnnl_primitive_desc_destroy(nhwc)
                }
            }
            forwardPD = pd
            forwardImplementation = implementation
            forward = OneDNN.primitiveIfFast(forwardPD, forwardImplementation)
            OneDNN.record("fwd", forwardImplementation)
            src = OneDNN.Argument(input: g.userSrc, wanted: OneDNN.queryDesc(forwardPD, dnnl_query_src_md), role: .src)
            weights = OneDNN.Argument(input: g.userWeights, wanted: OneDNN.queryDesc(forwardPD, dnnl_query_weights_md), role: .weights)
            bias = conv.hasBias
                ? OneDNN.Argument(input: g.userBias, wanted: dnnl_primitive_desc_query_md(forwardPD, dnnl_query_weights_md, 1)!.pointee,
                                  role: nil)
                : nil
            dst = OneDNN.Argument(output: g.userDst, produced: OneDNN.queryDesc(forwardPD, dnnl_query_dst_md), role: .dst)
        }

        /// The forward primitive descriptor for activations in the layouts `src` and `dst`.
        static func forwardDescriptor(_ conv: OneDNNConvolution, _ geometry: Geometry, src: dnnl_memory_desc_t,
                                      dst: dnnl_memory_desc_t) -> dnnl_primitive_desc_t {
            var g = geometry, src = src, dst = dst
            var desc = dnnl_convolution_desc_t()
            let hasBias = conv.hasBias
            OneDNN.check(withUnsafePointer(to: &g.bias) { bias in
                dnnl_dilated_convolution_forward_desc_init(&desc, dnnl_forward_training, dnnl_convolution_direct,
                                                           &src, &g.weights, hasBias ? bias : nil, &dst,
                                                           g.strides, g.dilates, g.padL, g.padR)
            }, "convolution_forward_desc_init")
            var pd: dnnl_primitive_desc_t?
            OneDNN.check(dnnl_primitive_desc_create(&pd, &desc, nil, OneDNN.engine, nil), "convolution forward primitive_desc_create")
            return pd!
        }

        /// The backward-weights pass, nil when the BLAS path is faster for it.
        func fastWeightsPass(_ conv: OneDNNConvolution) -> WeightsPass? {
            let p = weightsPass ?? WeightsPass(conv, self)
            weightsPass = p
            return p.primitive == nil ? nil : p
        }

        /// The backward-data pass, nil when the BLAS path is faster for it.
        func fastDataPass(_ conv: OneDNNConvolution) -> DataPass? {
            let p = dataPass ?? DataPass(self, weightsPassDiffDst: weightsPass?.diffDst.desc)
            dataPass = p
            return p.primitive == nil ? nil : p
        }

        deinit {
            if let forward { dnnl_primitive_destroy(forward) }
            dnnl_primitive_desc_destroy(forwardPD)
        }
    }

    final class WeightsPass {
        let pd: dnnl_primitive_desc_t
        let primitive: dnnl_primitive_t?
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
            implementation = OneDNN.implementation(pd)
            primitive = OneDNN.primitiveIfFast(pd, implementation)
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
            if let primitive { dnnl_primitive_destroy(primitive) }
            dnnl_primitive_desc_destroy(pd)
        }
    }

    final class DataPass {
        let pd: dnnl_primitive_desc_t
        let primitive: dnnl_primitive_t?
        let implementation: String
        let diffDst, weights, diffSrc: OneDNN.Argument
        /// dy in the layout of the backward-weights pass is what this pass reads too.
        let readsWeightsPassDiffDst: Bool

        init(_ plan: Plan, weightsPassDiffDst: dnnl_memory_desc_t?) {
            var g = plan.geometry
            var desc = dnnl_convolution_desc_t()
            OneDNN.check(dnnl_dilated_convolution_backward_data_desc_init(&desc, dnnl_convolution_direct, &g.src, &g.weights, &g.dst,
                                                                          g.strides, g.dilates, g.padL, g.padR),
                         "convolution_backward_data_desc_init")
            var p: dnnl_primitive_desc_t?
            OneDNN.check(dnnl_primitive_desc_create(&p, &desc, nil, OneDNN.engine, plan.forwardPD),
                         "convolution backward-data primitive_desc_create")
            pd = p!
            implementation = OneDNN.implementation(pd)
            primitive = OneDNN.primitiveIfFast(pd, implementation)
            OneDNN.record("bwd_data", implementation)
            let wantedDiffDst = OneDNN.queryDesc(pd, dnnl_query_diff_dst_md)
            readsWeightsPassDiffDst = weightsPassDiffDst.map { OneDNN.equal(wantedDiffDst, $0) } ?? false
            diffDst = OneDNN.Argument(input: g.userDst, wanted: wantedDiffDst, role: .diffDstData)
            let wantedWeights = OneDNN.queryDesc(pd, dnnl_query_weights_md)
            weights = OneDNN.Argument(input: g.userWeights, wanted: wantedWeights, role: .weights)
            diffSrc = OneDNN.Argument(output: g.userSrc, produced: OneDNN.queryDesc(pd, dnnl_query_diff_src_md), role: .diffSrc)
        }

        deinit {
            if let primitive { dnnl_primitive_destroy(primitive) }
            dnnl_primitive_desc_destroy(pd)
        }
    }
}
