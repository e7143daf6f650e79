import Foundation
import MTLCore

/// Scratch matrices of the convolutions. Layers run one after another, so one workspace
/// can serve the whole network: its size is that of the largest layer's im2col matrix,
/// not the sum over layers. Give a layer its own workspace if layers ever run concurrently.
public final class ConvWorkspace {
    public static let shared = ConvWorkspace()
    /// im2col matrix [C·k·k, N·Ho·Wo]; in backward first the recomputed columns, then dcols.
    let cols = Tensor([0])
    /// GEMM output [O, N·Ho·Wo] in forward, reordered dy in backward.
    let rows = Tensor([0])
    /// dW in the tap-major layout [O, k·k, C] while the regions of one backward accumulate into it.
    let tapMajorGrad = Tensor([0])
    /// The weight of the layer at work in the tap-major layout [O, k·k, C] (region GEMMs read
    /// contiguous blocks of it); rebuilt by each pass that reads it.
    let tapMajorWeight = Tensor([0])
    /// The flipped, transposed weight [C, O, k, k] of the stride-1 dx twins, written by each
    /// backward that uses it: one buffer for all layers instead of a copy per layer.
    let twinWeight = Tensor([0])
    public init() {}
}

/// Which library computes the convolutions: oneDNN's JIT kernels (`Conv2dOneDNN.swift`) or
/// mtl's im2col + OpenBLAS path below, which stays as the portable backend and as the oracle
/// the oneDNN path is tested against.
public enum ConvBackend: String, CaseIterable, Sendable {
    case blas, onednn
}

/// 2-D convolution (cross-correlation, as PyTorch), NCHW, weight OIHW, general stride,
/// padding (zeros) and dilation. With `Conv2d.backend == .onednn` the three passes run on
/// oneDNN (`OneDNNConvolution`); what follows describes the BLAS backend.
///
/// Forward: im2col of the WHOLE batch into cols [C·k·k, N·Ho·Wo], one GEMM
/// W[O, C·k·k] · cols → [O, N·Ho·Wo], reordered to [N, O, Ho, Wo] (batches whose columns
/// exceed `columnBudget` go in groups of whole samples, one GEMM each). Backward recomputes the
/// columns from the cached input (cheaper than keeping them per layer), dW += dY·colsᵀ
/// (one GEMM with the batch in the inner dimension); dx of stride-1 convolutions is a forward
/// convolution of dY with the flipped, transposed kernel (`transposedInputGrad`), otherwise
/// dcols = Wᵀ·dY (into the same scratch) and col2im into dx. 1×1 stride-1 unpadded
/// convolutions skip im2col: the input planes already are the columns.
///
/// Padding-aware regions: with a large dilation on a small map (ASPP, dilated ResNet stages) a
/// big share of the im2col matrix is zeros read from the padding. The output plane then splits
/// into at most (2k+1)² rectangles in each of which a fixed subset of kernel taps reads real
/// pixels; each rectangle gets its own im2col (no bounds checks) and GEMMs over its taps only,
/// still batched over all samples. Used when it saves more than `regionMinSaving` of the
/// multiply-adds (DeepLab rate 12 on 16×32: 62%; rate 36 on 36×48: 83%).
public final class Conv2d: HasParameters {
    public let name: String
    public let inChannels: Int, outChannels: Int
    public let kernel: Int, stride: Int, padding: Int, dilation: Int
    public let weight: Parameter
    public let bias: Parameter?
    public var parameters: [Parameter] { bias.map { [weight, $0] } ?? [weight] }
    /// Scratch matrices (shared by all convolutions unless replaced).
    public var workspace = ConvWorkspace.shared
    /// Upper bound (in floats) of the im2col matrix: a batch whose columns would exceed it is
    /// processed in groups of whole samples, one GEMM per group (ResNet-50 ASPP at 288×384,
    /// batch 8, would otherwise need 1 GB of columns). 2^26 floats = 256 MB.
    public static var columnBudget = 1 << 26
    /// 1×1 stride-1 convolutions use one GEMM per sample straight on the NCHW planes (no copies)
    /// when a sample has at least this many pixels; below it the per-sample GEMMs get too thin
    /// and the batch is gathered into one GEMM. Measured with OpenBLAS on 1–2 threads: per-sample
    /// was faster from 8×8 pixels (64) up, by 5–30%.
    public static var pointwisePerSampleMinPixels = 64
    /// The region decomposition is used when it removes at least this fraction of the dense
    /// multiply-adds (smaller savings do not pay for the extra, smaller GEMMs: measured, a 12%
    /// saving ran at par with the dense path, 24% ran ~10% faster, 62% ~2× faster).
    public static var regionMinSaving = 0.2

    /// Stride-1 convolutions compute dx as a FORWARD convolution of dy with the flipped,
    /// transposed kernel (W'[c, o, i, j] = W[o, c, k−1−i, k−1−j], padding d·(k−1) − p): im2col of dy
    /// and a GEMM whose output is dx itself. The alternative, dcols = Wᵀ·dy then col2im, writes and
    /// re-reads a k·k-times larger matrix (BLAS zeroes it first) and scatter-adds it: measured ~7%
    /// of a bench step on 2 cores. The forward path brings its padding-aware regions along.
    /// False (`model.conv_dx: col2im`): always dcols + col2im (kept to compare; the tests check both).
    nonisolated(unsafe) public static var transposedInputGrad = true

    private var output = Tensor([0])
    private var inputGrad = Tensor([0])
    private var tapMajorWeight: Tensor { workspace.tapMajorWeight }
    /// The transposed twin that computes dx (created on the first backward that uses it).
    private var inputGradConv: Conv2d?
    /// The backend every Conv2d uses (set once from `model.conv_backend` before the first forward).
    nonisolated(unsafe) public static var backend: ConvBackend = .blas
    private var onednn: OneDNNConvolution?
    /// The oneDNN plan of the last forward's shape (nil: the BLAS backend is selected).
    private var onednnPlan: OneDNNConvolution.Plan?
    /// Which backend ran the last forward and backward (for the profile).
    private var lastForwardOnOneDNN = false
    /// The oneDNN implementations this layer has used, one line per input shape.
    public var onednnImplementations: [String] { onednn?.implementations ?? [] }
    private let empty = Tensor([0])
    private var input: Tensor?

    /// A rectangle of output pixels [rowLo, rowHi) × [colLo, colHi) in which exactly the kernel
    /// taps `taps` (ki·k + kj) read input pixels, and all others read padding. The taps are always
    /// the product of a range of kernel rows and a range of kernel columns (a tap row reads real
    /// input on an interval of outputs that moves monotonically with the tap), listed row-major.
    struct Region {
        var rowLo: Int, rowHi: Int, colLo: Int, colHi: Int
        var taps: [Int]
        /// The region's GEMM blocks: for kernel row ki, its taps ki·k + [kjLo, kjHi) are contiguous
        /// both in the tap-major weight [O, k·k·C] and in the region's tap-major columns; a region
        /// whose column taps are all k taps is one block.
        var blocks: [(weightColumn: Int, colsRow: Int, depth: Int)] = []
        var pixels: Int { (rowHi - rowLo) * (colHi - colLo) }
    }
    /// nil: the dense path (all taps, bounds-checked im2col). Recomputed when the input size changes.
    private var regions: [Region]?
    private var planKey = (-1, -1, 0.0)

    public init(_ name: String, inChannels: Int, outChannels: Int, kernel: Int, stride: Int = 1,
                padding: Int = 0, dilation: Int = 1, bias: Bool = false, rng: inout Philox) {
        precondition(inChannels > 0 && outChannels > 0 && kernel > 0 && stride > 0 && padding >= 0 && dilation > 0,
                     "\(name): invalid Conv2d configuration")
        self.name = name
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        let fanIn = inChannels * kernel * kernel
        let bound = 1 / Float(fanIn).squareRoot()
        weight = Parameter("\(name).weight", uniformTensor([outChannels, inChannels, kernel, kernel], bound: bound, rng: &rng))
        self.bias = bias ? Parameter("\(name).bias", uniformTensor([outChannels], bound: bound, rng: &rng)) : nil
    }

    /// Makes this layer's input gradient live in `other`'s buffer. For layers whose input gradients
    /// are used one after the other — a head's parallel branches on one input, each branch's dx
    /// added into the sum before the next branch's backward runs — so that they hold one buffer
    /// instead of one each (ResNet-50 DeepLab: 3 × 7 MB per head). A returned dx is then valid until
    /// the next backward of any layer sharing the buffer.
    public func shareInputGradientBuffer(with other: Conv2d) {
        inputGrad = other.inputGrad
    }

    /// The stride-1 dx twin of `conv` (see `transposedInputGrad`): its weight is the workspace's
    /// `twinWeight`, shared by all twins and filled by each backward, and it has no gradient.
    private init(twinOf conv: Conv2d) {
        name = conv.name + ".dx"
        inChannels = conv.outChannels
        outChannels = conv.inChannels
        kernel = conv.kernel
        stride = 1
        padding = conv.dilation * (conv.kernel - 1) - conv.padding
        dilation = conv.dilation
        weight = Parameter(name + ".weight", conv.workspace.twinWeight, grad: Tensor([0]))
        bias = nil
        workspace = conv.workspace
    }

    /// Output height and width for an input of height × width (PyTorch's formula, floor).
    public func outputSize(height: Int, width: Int) -> (height: Int, width: Int) {
        let span = dilation * (kernel - 1) + 1
        return ((height + 2 * padding - span) / stride + 1, (width + 2 * padding - span) / stride + 1)
    }

    /// Fraction of the dense multiply-adds that the region decomposition performs for this input
    /// size (1 when every tap reads real pixels everywhere); nil for 1×1 stride-1 unpadded convs.
    public func regionWorkFraction(height: Int, width: Int) -> Double? {
        if isPointwise { return nil }
        let (ho, wo) = outputSize(height: height, width: width)
        let work = makeRegions(h: height, w: width, ho: ho, wo: wo).reduce(0) { $0 + $1.pixels * $1.taps.count }
        return Double(work) / Double(ho * wo * kernel * kernel)
    }

    private var isPointwise: Bool { kernel == 1 && stride == 1 && padding == 0 }

    /// Samples per GEMM so that the columns stay within `columnBudget` (at least one).
    private func samplesPerGroup(ckk: Int, pix: Int, n: Int) -> Int {
        max(1, min(n, Conv2d.columnBudget / max(1, ckk * pix)))
    }

    /// The range of output positions whose input position pos·stride + offset lies in [0, size).
    @inline(__always)
    private func validRange(offset: Int, size: Int, outSize: Int) -> (Int, Int) {
        let s = stride
        let lo = offset >= 0 ? 0 : min(outSize, (-offset + s - 1) / s)
        let hi = size - 1 - offset < 0 ? 0 : min(outSize, (size - 1 - offset) / s + 1)
        return (lo, max(lo, hi))
    }

    /// Splits [0, outSize) at every point where some tap index starts or stops reading real input.
    private func axisIntervals(size: Int, outSize: Int) -> [(lo: Int, hi: Int, taps: [Int])] {
        let ranges = (0..<kernel).map { validRange(offset: $0 * dilation - padding, size: size, outSize: outSize) }
        let cuts = Set([0, outSize] + ranges.flatMap { [$0.0, $0.1] }).sorted()
        var intervals: [(lo: Int, hi: Int, taps: [Int])] = []
        for (a, b) in zip(cuts, cuts.dropFirst()) where a < b {
            intervals.append((a, b, (0..<kernel).filter { ranges[$0].0 <= a && b <= ranges[$0].1 }))
        }
        return intervals
    }

    private func makeRegions(h: Int, w: Int, ho: Int, wo: Int) -> [Region] {
        var regions: [Region] = []
        for r in axisIntervals(size: h, outSize: ho) {
            for c in axisIntervals(size: w, outSize: wo) {
                let taps = r.taps.flatMap { ki in c.taps.map { kj in ki * kernel + kj } }
                var region = Region(rowLo: r.lo, rowHi: r.hi, colLo: c.lo, colHi: c.hi, taps: taps)
                if let kjLo = c.taps.first, let kiLo = r.taps.first {
                    let width = c.taps.count, C = inChannels
                    precondition(c.taps == Array(kjLo..<(kjLo + width)) && r.taps == Array(kiLo..<(kiLo + r.taps.count)),
                                 "\(name): region taps are not a product of ranges")
                    if width == kernel {
                        region.blocks = [(kiLo * kernel * C, 0, taps.count * C)]
                    } else {
                        region.blocks = r.taps.enumerated().map { i, ki in ((ki * kernel + kjLo) * C, i * width * C, width * C) }
                    }
                }
                regions.append(region)
            }
        }
        return regions
    }

    private func updatePlan(h: Int, w: Int, ho: Int, wo: Int) {
        if planKey == (h, w, Conv2d.regionMinSaving) { return }
        planKey = (h, w, Conv2d.regionMinSaving)
        let candidate = makeRegions(h: h, w: w, ho: ho, wo: wo)
        let work = candidate.reduce(0) { $0 + $1.pixels * $1.taps.count }
        let dense = ho * wo * kernel * kernel
        regions = Double(work) <= (1 - Conv2d.regionMinSaving) * Double(dense) ? candidate : nil
    }

    /// tapMajorWeight[o, t, c] = W[o, c, t] (t = ki·k + kj).
    private func refreshTapMajorWeight() {
        let o = outChannels, c = inChannels, kk = kernel * kernel
        tapMajorWeight.resize([o, kk, c])
        let src = weight.value.data, dst = tapMajorWeight.data
        parallelFor(o) { oc in
            for ci in 0..<c {
                for t in 0..<kk { dst[(oc * kk + t) * c + ci] = src[(oc * c + ci) * kk + t] }
            }
        }
    }

    public func forward(_ x: Tensor) -> Tensor {
        guard ConvProfile.enabled else { return forwardPass(x) }
        let t = ConvProfile.now()
        let y = forwardPass(x)
        ConvProfile.add(self, "fwd", lastForwardOnOneDNN, since: t)
        return y
    }

    private func forwardPass(_ x: Tensor) -> Tensor {
        precondition(x.rank == 4 && x.c == inChannels,
                     "\(name): expected input [N, \(inChannels), H, W], got \(shapeString(x.shape))")
        let (n, h, w) = (x.n, x.h, x.w)
        let (ho, wo) = outputSize(height: h, width: w)
        precondition(ho > 0 && wo > 0, "\(name): input \(h)x\(w) is smaller than the kernel's span")
        input = x
        output.resize([n, outChannels, ho, wo])
        let o = outChannels, pix = ho * wo
        let y = output.data, wt = weight.value.data
        onednnPlan = nil
        lastForwardOnOneDNN = false
        if Conv2d.backend == .onednn {
            let fast = onednn ?? OneDNNConvolution(self)
            onednn = fast
            let plan = fast.plan(n: n, h: h, w: w)
            onednnPlan = plan
            if plan.forwardIsFast {
                fast.forward(plan, x: x.data, weight: wt, bias: bias.map { UnsafePointer($0.value.data) }, y: y)
                lastForwardOnOneDNN = true
                return output
            }
        }

        if isPointwise && (n == 1 || pix >= Conv2d.pointwisePerSampleMinPixels) {
            // y[s] = W · x[s]: one GEMM per sample straight from/to the NCHW planes.
            for s in 0..<n {
                sgemm(m: o, n: pix, k: inChannels, a: wt, lda: inChannels,
                      b: x.data + s * inChannels * pix, ldb: pix, c: y + s * o * pix, ldc: pix, counted: false)
            }
            addBias(y, n: n, pix: pix)
            return output
        }
        updatePlan(h: h, w: w, ho: ho, wo: wo)
        if let regions {
            forwardRegions(x, regions, ho: ho, wo: wo)
            return output
        }

        let ckk = inChannels * kernel * kernel
        let cols = workspace.cols
        if n == 1 {
            // [O, 1·Ho·Wo] already is the NCHW layout.
            cols.resize([ckk, pix])
            im2col(x.data, n: 1, h: h, w: w, ho: ho, wo: wo, cols: cols.data)
            sgemm(m: o, n: pix, k: ckk, a: wt, lda: ckk, b: cols.data, ldb: pix, c: y, ldc: pix, counted: false)
            addBias(y, n: 1, pix: pix)
            return output
        }
        let rows = workspace.rows
        rows.resize([o, n * pix])
        let group = samplesPerGroup(ckk: ckk, pix: pix, n: n)
        for s0 in Swift.stride(from: 0, to: n, by: group) {
            // Samples [s0, s0 + count) as one GEMM into columns s0·P..<(s0 + count)·P of rows [O, N·P].
            let count = min(group, n - s0)
            cols.resize([ckk, count * pix])
            im2col(x.data + s0 * inChannels * h * w, n: count, h: h, w: w, ho: ho, wo: wo, cols: cols.data)
            sgemm(m: o, n: count * pix, k: ckk, a: wt, lda: ckk, b: cols.data, ldb: count * pix,
                  c: rows.data + s0 * pix, ldc: n * pix, counted: false)
        }
        // [O, N, P] → [N, O, P], adding the bias on the way.
        let r = rows.data, b = bias?.value.data
        parallelFor(n * o) { q in
            let s = q / o, oc = q % o
            let src = r + oc * n * pix + s * pix, dst = y + q * pix
            if let b {
                let bv = b[oc]
                for i in 0..<pix { dst[i] = src[i] + bv }
            } else {
                dst.update(from: src, count: pix)
            }
        }
        return output
    }

    private func addBias(_ y: UnsafeMutablePointer<Float>, n: Int, pix: Int) {
        guard let b = bias?.value.data else { return }
        let o = outChannels
        parallelFor(n * o) { q in
            let bv = b[q % o], dst = y + q * pix
            for i in 0..<pix { dst[i] += bv }
        }
    }

    private func forwardRegions(_ x: Tensor, _ regions: [Region], ho: Int, wo: Int) {
        let (n, h, w) = (x.n, x.h, x.w)
        let o = outChannels, pix = ho * wo, samplePlane = inChannels * h * w
        let y = output.data, b = bias?.value.data
        let cols = workspace.cols, rows = workspace.rows
        refreshTapMajorWeight()
        let tapMajor = UnsafePointer(tapMajorWeight.data)
        for region in regions where region.pixels > 0 {
            let pr = region.pixels, wr = region.colHi - region.colLo
            let (rowLo, rowHi, colLo) = (region.rowLo, region.rowHi, region.colLo)
            if region.taps.isEmpty {
                // Only padding under the kernel: the output is the bias.
                parallelFor(n * o) { q in
                    let v = b?[q % o] ?? 0
                    for oh in rowLo..<rowHi { (y + q * pix + oh * wo + colLo).update(repeating: v, count: wr) }
                }
                continue
            }
            let ckk = inChannels * region.taps.count, ldw = kernel * kernel * inChannels
            let group = samplesPerGroup(ckk: ckk, pix: pr, n: n)
            for s0 in Swift.stride(from: 0, to: n, by: group) {
                let count = min(group, n - s0), np = count * pr
                cols.resize([ckk, np])
                im2colRegion(x.data + s0 * samplePlane, n: count, h: h, w: w, region: region, cols: cols.data)
                rows.resize([o, np])
                // rows = Σ_blocks W_tm[:, block] · cols[block rows, :]
                for (b, block) in region.blocks.enumerated() {
                    sgemm(m: o, n: np, k: block.depth, a: tapMajor + block.weightColumn, lda: ldw,
                          b: cols.data + block.colsRow * np, ldb: np, beta: b == 0 ? 0 : 1, c: rows.data, ldc: np, counted: false)
                }
                // rows [O, count, pr] → the region's pixels of y[s0 + s, o], plus bias.
                let r = rows.data
                parallelFor(count * o) { q in
                    let s = q / o, oc = q % o
                    let bv = b?[oc] ?? 0
                    let src = r + oc * count * pr + s * pr, plane = y + ((s0 + s) * o + oc) * pix
                    for oh in rowLo..<rowHi {
                        let srow = src + (oh - rowLo) * wr, drow = plane + oh * wo + colLo
                        for i in 0..<wr { drow[i] = srow[i] + bv }
                    }
                }
            }
        }
    }

    /// dy: [N, O, Ho, Wo] of the last forward. Accumulates weight (and bias) gradients;
    /// returns dx, or an empty tensor when `computeInputGrad` is false (first layer).
    /// The cached input is not modified, so backward can be repeated after one forward.
    public func backward(_ dy: Tensor, computeInputGrad: Bool = true) -> Tensor {
        guard ConvProfile.enabled else { return backwardPass(dy, computeInputGrad: computeInputGrad) }
        let t = ConvProfile.now()
        let dx = backwardPass(dy, computeInputGrad: computeInputGrad)
        ConvProfile.add(self, computeInputGrad ? "bwd" : "bwd_weights", lastBackwardOnOneDNN, since: t)
        return dx
    }

    private var lastBackwardOnOneDNN = false

    private func backwardPass(_ dy: Tensor, computeInputGrad: Bool) -> Tensor {
        guard let x = input else { preconditionFailure("\(name): backward before forward") }
        let (n, h, w) = (x.n, x.h, x.w)
        let (ho, wo) = outputSize(height: h, width: w)
        precondition(dy.shape == [n, outChannels, ho, wo],
                     "\(name): dy \(shapeString(dy.shape)) does not match the output \(shapeString([n, outChannels, ho, wo]))")
        let o = outChannels, pix = ho * wo
        let g = dy.data

        // oneDNN backend: each of the two passes runs on oneDNN where it has a JIT kernel for it and
        // on the BLAS path otherwise (they need nothing from the forward but x, dy and W). The BLAS
        // dx of a strided convolution comes with its dW (col2im path): then both run on BLAS.
        lastBackwardOnOneDNN = false
        if let plan = onednnPlan, let fast = onednn {
            let wp = plan.fastWeightsPass(fast)
            let dp = computeInputGrad ? plan.fastDataPass(fast) : nil
            let weightsOnOneDNN = wp != nil && (!computeInputGrad || dp != nil || transposedDxApplies)
            let blasRuns = !weightsOnOneDNN || (computeInputGrad && dp == nil)
            if blasRuns && lastForwardOnOneDNN && !isPointwise {
                // The region plan that the BLAS forward would have made.
                updatePlan(h: h, w: w, ho: ho, wo: wo)
            }
            lastBackwardOnOneDNN = weightsOnOneDNN || dp != nil
            if let wp, weightsOnOneDNN {
                fast.backwardWeights(wp, x: x.data, dy: g, dWeight: weight.grad.data, dBias: bias?.grad.data)
            }
            if let dp {
                if !weightsOnOneDNN {
                    addBiasGradient(dy)
                    _ = backwardWeights(x, dy, ho: ho, wo: wo, computeInputGrad: false)
                }
                inputGrad.resize(x.shape)
                fast.backwardData(plan, dp, dy: g, weight: weight.value.data, dx: inputGrad.data, dyLoaded: weightsOnOneDNN)
                return inputGrad
            }
            if weightsOnOneDNN { return computeInputGrad ? transposedInputGradient(dy) : empty }
        }

        addBiasGradient(dy)
        if computeInputGrad && transposedDxApplies {
            // dW (and db above) by the usual path, then dx by the twin's forward.
            _ = backwardWeights(x, dy, ho: ho, wo: wo, computeInputGrad: false)
            return transposedInputGradient(dy)
        }
        return backwardWeights(x, dy, ho: ho, wo: wo, computeInputGrad: computeInputGrad)
    }

    /// Stride-1 dx as the forward of the flipped, transposed twin (see `transposedInputGrad`).
    private var transposedDxApplies: Bool {
        Conv2d.transposedInputGrad && stride == 1 && !isPointwise && padding <= dilation * (kernel - 1)
    }

    /// db[o] += Σ_{n,p} dy[n, o, p], in Double for long sums.
    private func addBiasGradient(_ dy: Tensor) {
        guard let bias else { return }
        let (n, o) = (dy.n, outChannels), pix = dy.h * dy.w
        let g = dy.data, db = bias.grad.data
        parallelFor(o) { oc in
            var s = 0.0
            for smp in 0..<n { s += sumDouble(g + (smp * o + oc) * pix, pix) }
            db[oc] += Float(s)
        }
    }

    /// dx = conv(dy; flipped transposed W, padding d·(k−1) − p, dilation d), stride 1.
    private func transposedInputGradient(_ dy: Tensor) -> Tensor {
        let twin = inputGradConv ?? Conv2d(twinOf: self)
        inputGradConv = twin
        twin.output = inputGrad   // the twin's output is this layer's input gradient
        twin.workspace = workspace
        let o = outChannels, c = inChannels, k = kernel, kk = kernel * kernel
        twin.weight.value.resize([c, o, k, k])
        let src = weight.value.data, dst = twin.weight.value.data
        parallelFor(c) { ci in
            for oc in 0..<o {
                for i in 0..<k {
                    for j in 0..<k { dst[(ci * o + oc) * kk + i * k + j] = src[(oc * c + ci) * kk + (k - 1 - i) * k + (k - 1 - j)] }
                }
            }
        }
        return twin.forward(dy)
    }

    /// Weight (and, if asked, input) gradients by im2col of the cached input: dW += dY·colsᵀ, and
    /// dcols = Wᵀ·dY scattered back by col2im.
    private func backwardWeights(_ x: Tensor, _ dy: Tensor, ho: Int, wo: Int, computeInputGrad: Bool) -> Tensor {
        let (n, h, w) = (x.n, x.h, x.w)
        let o = outChannels, pix = ho * wo
        let g = dy.data, wt = weight.value.data, dw = weight.grad.data
        if isPointwise && (n == 1 || pix >= Conv2d.pointwisePerSampleMinPixels) {
            for s in 0..<n {
                // dW[O, C] += dy[s] [O, P] · x[s]ᵀ [P, C]
                sgemm(transB: true, m: o, n: inChannels, k: pix, a: g + s * o * pix, lda: pix,
                      b: x.data + s * inChannels * pix, ldb: pix, beta: 1, c: dw, ldc: inChannels, counted: false)
            }
            guard computeInputGrad else { return empty }
            inputGrad.resize(x.shape)
            for s in 0..<n {
                // dx[s] [C, P] = Wᵀ [C, O] · dy[s] [O, P]
                sgemm(transA: true, m: inChannels, n: pix, k: o, a: wt, lda: inChannels,
                      b: g + s * o * pix, ldb: pix, c: inputGrad.data + s * inChannels * pix, ldc: pix, counted: false)
            }
            return inputGrad
        }
        updatePlan(h: h, w: w, ho: ho, wo: wo)
        if let regions {
            backwardRegions(x, dy, regions, ho: ho, wo: wo, computeInputGrad: computeInputGrad)
            return computeInputGrad ? inputGrad : empty
        }

        let ckk = inChannels * kernel * kernel
        // dy as one matrix [O, N·P] (for one sample it already is).
        var dyRows = UnsafePointer(g)
        if n > 1 {
            let rows = workspace.rows
            rows.resize([o, n * pix])
            let r = rows.data
            parallelFor(n * o) { q in
                let s = q / o, oc = q % o
                (r + oc * n * pix + s * pix).update(from: g + q * pix, count: pix)
            }
            dyRows = UnsafePointer(r)
        }
        if computeInputGrad { inputGrad.resize(x.shape) }
        let cols = workspace.cols
        let group = samplesPerGroup(ckk: ckk, pix: pix, n: n)
        let samplePlane = inChannels * h * w
        for s0 in Swift.stride(from: 0, to: n, by: group) {
            let count = min(group, n - s0)
            let dyGroup = dyRows + s0 * pix          // columns s0·P..<(s0 + count)·P of dY [O, N·P]
            cols.resize([ckk, count * pix])
            im2col(x.data + s0 * samplePlane, n: count, h: h, w: w, ho: ho, wo: wo, cols: cols.data)
            // dW [O, CKK] += dY [O, count·P] · colsᵀ [count·P, CKK]
            sgemm(transB: true, m: o, n: ckk, k: count * pix, a: dyGroup, lda: n * pix, b: cols.data,
                  ldb: count * pix, beta: 1, c: dw, ldc: ckk, counted: false)
            guard computeInputGrad else { continue }
            // dcols [CKK, count·P] = Wᵀ [CKK, O] · dY [O, count·P], overwriting the columns.
            sgemm(transA: true, m: ckk, n: count * pix, k: o, a: wt, lda: ckk, b: dyGroup, ldb: n * pix,
                  c: cols.data, ldc: count * pix, counted: false)
            col2im(cols.data, n: count, h: h, w: w, ho: ho, wo: wo, dx: inputGrad.data + s0 * samplePlane)
        }
        return computeInputGrad ? inputGrad : empty
    }

    private func backwardRegions(_ x: Tensor, _ dy: Tensor, _ regions: [Region], ho: Int, wo: Int,
                                 computeInputGrad: Bool) {
        let (n, h, w) = (x.n, x.h, x.w)
        let o = outChannels, c = inChannels, pix = ho * wo, samplePlane = c * h * w, kk = kernel * kernel
        let ldw = kk * c
        let g = dy.data
        let cols = workspace.cols, rows = workspace.rows
        if computeInputGrad {
            inputGrad.resize(x.shape)
            inputGrad.zero()   // regions add their contributions
        }
        // dW accumulates in the tap-major layout (each block is a contiguous column range), then is
        // added into the OIHW gradient once. dcols read the tap-major weight (shared by all layers,
        // so rebuilt here).
        if computeInputGrad { refreshTapMajorWeight() }
        let dWtm = workspace.tapMajorGrad
        dWtm.resize([o, kk, c])
        dWtm.zero()
        let tapMajor = UnsafePointer(tapMajorWeight.data)
        for region in regions where region.pixels > 0 && !region.taps.isEmpty {
            let pr = region.pixels, wr = region.colHi - region.colLo
            let (rowLo, rowHi, colLo) = (region.rowLo, region.rowHi, region.colLo)
            let ckk = c * region.taps.count
            let group = samplesPerGroup(ckk: ckk, pix: pr, n: n)
            for s0 in Swift.stride(from: 0, to: n, by: group) {
                let count = min(group, n - s0), np = count * pr
                // dY of the region's pixels as [O, count·pr].
                rows.resize([o, np])
                let r = rows.data
                parallelFor(count * o) { q in
                    let s = q / o, oc = q % o
                    let dst = r + oc * np + s * pr, plane = g + ((s0 + s) * o + oc) * pix
                    for oh in rowLo..<rowHi {
                        (dst + (oh - rowLo) * wr).update(from: plane + oh * wo + colLo, count: wr)
                    }
                }
                cols.resize([ckk, np])
                im2colRegion(x.data + s0 * samplePlane, n: count, h: h, w: w, region: region, cols: cols.data)
                for block in region.blocks {
                    // dW_tm[:, block] += dY [O, np] · cols[block rows]ᵀ
                    sgemm(transB: true, m: o, n: block.depth, k: np, a: r, lda: np, b: cols.data + block.colsRow * np,
                          ldb: np, beta: 1, c: dWtm.data + block.weightColumn, ldc: ldw, counted: false)
                }
                guard computeInputGrad else { continue }
                for block in region.blocks {
                    // dcols[block rows] = W_tm[:, block]ᵀ · dY, overwriting the columns.
                    sgemm(transA: true, m: block.depth, n: np, k: o, a: tapMajor + block.weightColumn, lda: ldw, b: r,
                          ldb: np, c: cols.data + block.colsRow * np, ldc: np, counted: false)
                }
                col2imRegion(cols.data, n: count, h: h, w: w, region: region, dx: inputGrad.data + s0 * samplePlane)
            }
        }
        let full = weight.grad.data, src = dWtm.data
        parallelFor(o) { oc in
            for ci in 0..<c {
                for t in 0..<kk { full[(oc * c + ci) * kk + t] += src[(oc * kk + t) * c + ci] }
            }
        }
    }

    /// cols[r][s·P + oh·Wo + ow] = x[s, c, oh·stride − pad + ki·dil, ow·stride − pad + kj·dil] (0 outside),
    /// r = (c·k + ki)·k + kj. One row per task: rows are disjoint, so no races.
    private func im2col(_ x: UnsafePointer<Float>, n: Int, h: Int, w: Int, ho: Int, wo: Int,
                        cols: UnsafeMutablePointer<Float>) {
        let k = kernel, c = inChannels, s = stride, pad = padding, d = dilation
        let plane = h * w, pix = ho * wo, np = n * pix
        parallelFor(c * k * k) { r in
            let ci = r / (k * k), ki = (r / k) % k, kj = r % k
            let offW = kj * d - pad, offH = ki * d - pad
            let (owLo, owHi) = self.validRange(offset: offW, size: w, outSize: wo)
            let row = cols + r * np
            for smp in 0..<n {
                let src = x + (smp * c + ci) * plane
                for oh in 0..<ho {
                    let dst = row + smp * pix + oh * wo
                    let ih = oh * s + offH
                    if ih < 0 || ih >= h {
                        dst.update(repeating: 0, count: wo)
                        continue
                    }
                    let srow = src + ih * w + offW
                    if owLo > 0 { dst.update(repeating: 0, count: owLo) }
                    if owHi < wo { (dst + owHi).update(repeating: 0, count: wo - owHi) }
                    Conv2d.gather(dst + owLo, srow + owLo * s, count: owHi - owLo, stride: s)
                }
            }
        }
    }

    /// dst[i] = src[i·stride]. A constant stride and wrapping index arithmetic make the strided
    /// cases tight loops (2–3× faster than the generic form in the 7×7/2 stem).
    @inline(__always)
    static func gather(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, count: Int, stride s: Int) {
        if count <= 0 { return }
        if s == 1 {
            dst.update(from: src, count: count)
        } else if s == 2 {
            var i = 0
            while i < count { dst[i] = src[i &* 2]; i &+= 1 }
        } else {
            var i = 0
            while i < count { dst[i] = src[i &* s]; i &+= 1 }
        }
    }

    /// dst[i·stride] += src[i] (the adjoint of `gather`).
    @inline(__always)
    static func scatterAdd(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, count: Int, stride s: Int) {
        if s == 1 {
            var i = 0
            while i < count { dst[i] += src[i]; i &+= 1 }
        } else if s == 2 {
            var i = 0
            while i < count { dst[i &* 2] += src[i]; i &+= 1 }
        } else {
            var i = 0
            while i < count { dst[i &* s] += src[i]; i &+= 1 }
        }
    }

    /// The adjoint of im2col: dx[s, c] = Σ over the k·k rows of channel c of their scattered
    /// columns. One (sample, channel) plane per task, so no two tasks write the same memory.
    private func col2im(_ cols: UnsafePointer<Float>, n: Int, h: Int, w: Int, ho: Int, wo: Int,
                        dx: UnsafeMutablePointer<Float>) {
        let k = kernel, c = inChannels, s = stride, pad = padding, d = dilation
        let plane = h * w, pix = ho * wo, np = n * pix
        parallelFor(n * c) { q in
            let smp = q / c, ci = q % c
            let dst = dx + q * plane
            dst.update(repeating: 0, count: plane)
            for ki in 0..<k {
                let offH = ki * d - pad
                for kj in 0..<k {
                    let offW = kj * d - pad
                    let (owLo, owHi) = self.validRange(offset: offW, size: w, outSize: wo)
                    if owLo >= owHi { continue }
                    let row = cols + ((ci * k + ki) * k + kj) * np + smp * pix
                    for oh in 0..<ho {
                        let ih = oh * s + offH
                        if ih < 0 || ih >= h { continue }
                        Conv2d.scatterAdd(dst + ih * w + offW + owLo * s, row + oh * wo + owLo,
                                          count: owHi - owLo, stride: s)
                    }
                }
            }
        }
    }

    /// im2col of one region, tap-major: cols[t·C + c][s·pr + (oh − rowLo)·wr + (ow − colLo)] for the region's
    /// pixels and taps, all of which read real input (no bounds checks, no zero fill).
    private func im2colRegion(_ x: UnsafePointer<Float>, n: Int, h: Int, w: Int, region: Region,
                              cols: UnsafeMutablePointer<Float>) {
        let k = kernel, c = inChannels, s = stride, pad = padding, d = dilation
        let plane = h * w, pr = region.pixels, wr = region.colHi - region.colLo, npr = n * pr
        let (rowLo, rowHi, colLo) = (region.rowLo, region.rowHi, region.colLo)
        region.taps.withUnsafeBufferPointer { taps in
            let t = taps.count
            parallelFor(c * t) { r in
                let ci = r % c, tap = taps[r / c]   // tap-major rows: r = (tap index)·C + ci
                let offH = (tap / k) * d - pad, offW = (tap % k) * d - pad
                let row = cols + r * npr
                for smp in 0..<n {
                    let src = x + (smp * c + ci) * plane
                    for oh in rowLo..<rowHi {
                        let ih = oh * s + offH
                        Conv2d.gather(row + smp * pr + (oh - rowLo) * wr, src + ih * w + colLo * s + offW,
                                      count: wr, stride: s)
                    }
                }
            }
        }
    }

    /// The adjoint of im2colRegion, ADDED into dx (zeroed by the caller before the first region).
    private func col2imRegion(_ cols: UnsafePointer<Float>, n: Int, h: Int, w: Int, region: Region,
                              dx: UnsafeMutablePointer<Float>) {
        let k = kernel, c = inChannels, s = stride, pad = padding, d = dilation
        let plane = h * w, pr = region.pixels, wr = region.colHi - region.colLo, npr = n * pr
        let (rowLo, rowHi, colLo) = (region.rowLo, region.rowHi, region.colLo)
        region.taps.withUnsafeBufferPointer { taps in
            let t = taps.count
            parallelFor(n * c) { q in
                let smp = q / c, ci = q % c
                let dst = dx + q * plane
                for i in 0..<t {
                    let offH = (taps[i] / k) * d - pad, offW = (taps[i] % k) * d - pad
                    let row = cols + (i * c + ci) * npr + smp * pr
                    for oh in rowLo..<rowHi {
                        let ih = oh * s + offH
                        Conv2d.scatterAdd(dst + ih * w + colLo * s + offW, row + (oh - rowLo) * wr,
                                          count: wr, stride: s)
                    }
                }
            }
        }
    }
}

/// Time per convolution layer, pass and backend (`mtl bench --profile`): where a step's
/// convolution time goes, and which backend ran each pass. Besides wall time it records the
/// process's CPU time (all threads), which another program on the machine inflates much less:
/// on a shared machine that is the column to compare backends by.
public enum ConvProfile {
    nonisolated(unsafe) public static var enabled = false
    /// "layer pass backend geometry" → (wall ms, CPU ms, calls).
    nonisolated(unsafe) public private(set) static var table: [String: (ms: Double, cpuMs: Double, calls: Int)] = [:]

    public static func reset() { table = [:] }

    static func now() -> (wall: UInt64, cpu: UInt64) {
        var ts = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
        return (DispatchTime.now().uptimeNanoseconds, UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec))
    }

    static func add(_ conv: Conv2d, _ pass: String, _ onednn: Bool, since start: (wall: UInt64, cpu: UInt64)) {
        let end = now()
        let geometry = "\(conv.inChannels)→\(conv.outChannels) k\(conv.kernel) s\(conv.stride) d\(conv.dilation)"
        let key = "\(conv.name) \(pass) \(onednn ? "onednn" : "blas") \(geometry)"
        let old = table[key] ?? (0, 0, 0)
        table[key] = (old.ms + Double(end.wall - start.wall) / 1e6, old.cpuMs + Double(end.cpu - start.cpu) / 1e6, old.calls + 1)
    }

    /// The table, largest total first, per step of `steps` steps. A layer's "bwd" includes the
    /// forward of its ".dx" twin (the BLAS path's input gradient), listed on its own line too.
    public static func report(steps: Int) -> String {
        let n = Double(max(1, steps))
        let outer = table.filter { !$0.key.split(separator: " ")[0].hasSuffix(".dx") }
        let wall = outer.values.reduce(0) { $0 + $1.ms }, cpu = outer.values.reduce(0) { $0 + $1.cpuMs }
        var lines = [String(format: "convolutions: %.1f ms/step wall, %.1f ms/step CPU (all threads)", wall / n, cpu / n),
                     "  wall ms   CPU ms  layer pass backend geometry"]
        for (key, v) in table.sorted(by: { $0.value.ms > $1.value.ms }) {
            lines.append(String(format: "%9.2f %8.2f  %@", v.ms / n, v.cpuMs / n, key))
        }
        return lines.joined(separator: "\n")
    }
}
