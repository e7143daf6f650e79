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
    public init() {}
}

/// 2-D convolution (cross-correlation, as PyTorch), NCHW, weight OIHW, general stride,
/// padding (zeros) and dilation.
///
/// Forward: im2col of the WHOLE batch into cols [C·k·k, N·Ho·Wo], one GEMM
/// W[O, C·k·k] · cols → [O, N·Ho·Wo], reordered to [N, O, Ho, Wo] (batches whose columns
/// exceed `columnBudget` go in groups of whole samples, one GEMM each). Backward recomputes the
/// columns from the cached input (cheaper than keeping them per layer), dW += dY·colsᵀ
/// (one GEMM with the batch in the inner dimension), dcols = Wᵀ·dY (into the same
/// scratch), col2im into dx. 1×1 stride-1 unpadded convolutions skip im2col: the input
/// planes already are the columns. Kernel taps that only ever read padding (large dilation on a
/// small map) are dropped from the GEMMs; their weight gradient is exactly zero.
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

    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    private let empty = Tensor([0])
    private var input: Tensor?

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

    /// Output height and width for an input of height × width (PyTorch's formula, floor).
    public func outputSize(height: Int, width: Int) -> (height: Int, width: Int) {
        let span = dilation * (kernel - 1) + 1
        return ((height + 2 * padding - span) / stride + 1, (width + 2 * padding - span) / stride + 1)
    }

    /// Samples per GEMM so that the columns stay within `columnBudget` (at least one).
    private func samplesPerGroup(ckk: Int, pix: Int, n: Int) -> Int {
        max(1, min(n, Conv2d.columnBudget / max(1, ckk * pix)))
    }

    private var isPointwise: Bool { kernel == 1 && stride == 1 && padding == 0 }

    /// Kernel taps (ki·k + kj) that see at least one input pixel for this input size. With a
    /// large dilation on a small feature map (ASPP rate 36 on 36×48) whole kernel rows only ever
    /// read padding: their im2col rows would be zero, so they are left out of the GEMMs.
    private var taps: [Int] = []
    private var tapsKey = (-1, -1)
    /// The weight restricted to the active taps [O, C·T] and its gradient (only when T < k·k).
    private let compactWeight = Tensor([0])
    private let compactGrad = Tensor([0])

    private func updateTaps(h: Int, w: Int, ho: Int, wo: Int) {
        if tapsKey == (h, w) { return }
        tapsKey = (h, w)
        // Tap index i along one axis reads input positions pos·stride + i·dilation − padding.
        func active(_ i: Int, size: Int, outSize: Int) -> Bool {
            let (lo, hi) = validRange(offset: i * dilation - padding, size: size, outSize: outSize)
            return lo < hi
        }
        taps.removeAll(keepingCapacity: true)
        for ki in 0..<kernel where active(ki, size: h, outSize: ho) {
            for kj in 0..<kernel where active(kj, size: w, outSize: wo) { taps.append(ki * kernel + kj) }
        }
    }

    /// compactWeight[o, c·T + t] = W[o, c, taps[t]].
    private func gatherCompactWeight() {
        let o = outChannels, c = inChannels, kk = kernel * kernel, t = taps.count
        compactWeight.resize([o, c * t])
        let src = weight.value.data, dst = compactWeight.data
        for q in 0..<(o * c) {
            for (i, tap) in taps.enumerated() { dst[q * t + i] = src[q * kk + tap] }
        }
    }

    public func forward(_ x: Tensor) -> Tensor {
        precondition(x.rank == 4 && x.c == inChannels,
                     "\(name): expected input [N, \(inChannels), H, W], got \(shapeString(x.shape))")
        let (n, h, w) = (x.n, x.h, x.w)
        let (ho, wo) = outputSize(height: h, width: w)
        precondition(ho > 0 && wo > 0, "\(name): input \(h)x\(w) is smaller than the kernel's span")
        input = x
        output.resize([n, outChannels, ho, wo])
        let o = outChannels, pix = ho * wo
        let y = output.data

        if isPointwise && (n == 1 || pix >= Conv2d.pointwisePerSampleMinPixels) {
            // y[s] = W · x[s]: one GEMM per sample straight from/to the NCHW planes.
            for s in 0..<n {
                sgemm(m: o, n: pix, k: inChannels, a: weight.value.data, lda: inChannels,
                      b: x.data + s * inChannels * pix, ldb: pix, c: y + s * o * pix, ldc: pix)
            }
            addBias(y, n: n, pix: pix)
            return output
        }

        updateTaps(h: h, w: w, ho: ho, wo: wo)
        let ckk = inChannels * taps.count
        if ckk == 0 {
            // Every tap reads padding only (e.g. a strided 1×1 conv with padding on a 1-pixel map).
            output.zero()
            addBias(y, n: n, pix: pix)
            return output
        }
        var wt = UnsafePointer(weight.value.data)
        if taps.count < kernel * kernel {
            gatherCompactWeight()
            wt = UnsafePointer(compactWeight.data)
        }
        let cols = workspace.cols
        let group = samplesPerGroup(ckk: ckk, pix: pix, n: n)
        if n == 1 {
            // [O, 1·Ho·Wo] already is the NCHW layout.
            cols.resize([ckk, pix])
            im2col(x.data, n: 1, h: h, w: w, ho: ho, wo: wo, cols: cols.data)
            sgemm(m: o, n: pix, k: ckk, a: wt, lda: ckk, b: cols.data, ldb: pix, c: y, ldc: pix)
            addBias(y, n: 1, pix: pix)
            return output
        }
        let rows = workspace.rows
        rows.resize([o, n * pix])
        for s0 in Swift.stride(from: 0, to: n, by: group) {
            // Samples [s0, s1) as one GEMM into columns s0·P..<s1·P of rows [O, N·P].
            let count = min(group, n - s0)
            cols.resize([ckk, count * pix])
            im2col(x.data + s0 * inChannels * h * w, n: count, h: h, w: w, ho: ho, wo: wo, cols: cols.data)
            sgemm(m: o, n: count * pix, k: ckk, a: wt, lda: ckk, b: cols.data, ldb: count * pix,
                  c: rows.data + s0 * pix, ldc: n * pix)
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

    /// dy: [N, O, Ho, Wo] of the last forward. Accumulates weight (and bias) gradients;
    /// returns dx, or an empty tensor when `computeInputGrad` is false (first layer).
    /// The cached input is not modified, so backward can be repeated after one forward.
    public func backward(_ dy: Tensor, computeInputGrad: Bool = true) -> Tensor {
        guard let x = input else { preconditionFailure("\(name): backward before forward") }
        let (n, h, w) = (x.n, x.h, x.w)
        let (ho, wo) = outputSize(height: h, width: w)
        precondition(dy.shape == [n, outChannels, ho, wo],
                     "\(name): dy \(shapeString(dy.shape)) does not match the output \(shapeString([n, outChannels, ho, wo]))")
        let o = outChannels, pix = ho * wo
        let g = dy.data

        if let bias {
            // db[o] += Σ_{n,p} dy[n, o, p], in Double for long sums.
            let db = bias.grad.data
            parallelFor(o) { oc in
                var s = 0.0
                for smp in 0..<n { s += sumDouble(g + (smp * o + oc) * pix, pix) }
                db[oc] += Float(s)
            }
        }

        if isPointwise && (n == 1 || pix >= Conv2d.pointwisePerSampleMinPixels) {
            let wt = weight.value.data, dw = weight.grad.data
            for s in 0..<n {
                // dW[O, C] += dy[s] [O, P] · x[s]ᵀ [P, C]
                sgemm(transB: true, m: o, n: inChannels, k: pix, a: g + s * o * pix, lda: pix,
                      b: x.data + s * inChannels * pix, ldb: pix, beta: 1, c: dw, ldc: inChannels)
            }
            guard computeInputGrad else { return empty }
            inputGrad.resize(x.shape)
            for s in 0..<n {
                // dx[s] [C, P] = Wᵀ [C, O] · dy[s] [O, P]
                sgemm(transA: true, m: inChannels, n: pix, k: o, a: wt, lda: inChannels,
                      b: g + s * o * pix, ldb: pix, c: inputGrad.data + s * inChannels * pix, ldc: pix)
            }
            return inputGrad
        }

        updateTaps(h: h, w: w, ho: ho, wo: wo)
        let ckk = inChannels * taps.count
        if ckk == 0 {
            guard computeInputGrad else { return empty }
            inputGrad.resize(x.shape)
            inputGrad.zero()
            return inputGrad
        }
        let compact = taps.count < kernel * kernel
        var wt = UnsafePointer(weight.value.data), dw = weight.grad.data
        if compact {
            gatherCompactWeight()
            wt = UnsafePointer(compactWeight.data)
            compactGrad.resize([o, ckk])
            dw = compactGrad.data
        }

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
        let plane = inChannels * h * w
        for s0 in Swift.stride(from: 0, to: n, by: group) {
            let count = min(group, n - s0)
            let dyGroup = dyRows + s0 * pix          // columns s0·P..<s1·P of dY [O, N·P]
            cols.resize([ckk, count * pix])
            im2col(x.data + s0 * plane, n: count, h: h, w: w, ho: ho, wo: wo, cols: cols.data)
            // dW [O, CKK] += dY [O, count·P] · colsᵀ [count·P, CKK]  (compact: the first group overwrites)
            sgemm(transB: true, m: o, n: ckk, k: count * pix, a: dyGroup, lda: n * pix, b: cols.data, ldb: count * pix,
                  beta: compact && s0 == 0 ? 0 : 1, c: dw, ldc: ckk)
            guard computeInputGrad else { continue }
            // dcols [CKK, count·P] = Wᵀ [CKK, O] · dY [O, count·P], overwriting the columns (no longer needed).
            sgemm(transA: true, m: ckk, n: count * pix, k: o, a: wt, lda: ckk, b: dyGroup, ldb: n * pix,
                  c: cols.data, ldc: count * pix)
            col2im(cols.data, n: count, h: h, w: w, ho: ho, wo: wo, dx: inputGrad.data + s0 * plane)
        }
        if compact {
            // Scatter the active taps' gradient into the full [O, C, k, k] gradient.
            let t = taps.count, kk = kernel * kernel, full = weight.grad.data
            for q in 0..<(o * inChannels) {
                for (i, tap) in taps.enumerated() { full[q * kk + tap] += dw[q * t + i] }
            }
        }
        guard computeInputGrad else { return empty }
        return inputGrad
    }

    /// The range of output positions whose input position pos·stride + offset lies in [0, size).
    @inline(__always)
    private func validRange(offset: Int, size: Int, outSize: Int) -> (Int, Int) {
        let s = stride
        let lo = offset >= 0 ? 0 : min(outSize, (-offset + s - 1) / s)
        let hi = size - 1 - offset < 0 ? 0 : min(outSize, (size - 1 - offset) / s + 1)
        return (lo, max(lo, hi))
    }

    /// cols[r][s·P + oh·Wo + ow] = x[s, c, oh·stride − pad + ki·dil, ow·stride − pad + kj·dil] (0 outside),
    /// r = c·T + t for the active tap t = (ki, kj). One row per task: rows are disjoint, so no races.
    private func im2col(_ x: UnsafePointer<Float>, n: Int, h: Int, w: Int, ho: Int, wo: Int,
                        cols: UnsafeMutablePointer<Float>) {
        let k = kernel, c = inChannels, s = stride, pad = padding, d = dilation
        let plane = h * w, pix = ho * wo, np = n * pix
        taps.withUnsafeBufferPointer { taps in
            let t = taps.count
            parallelFor(c * t) { r in
                let ci = r / t, tap = taps[r % t], ki = tap / k, kj = tap % k
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
                        if s == 1 {
                            (dst + owLo).update(from: srow + owLo, count: owHi - owLo)
                        } else if s == 2 {
                            // A constant stride and wrapping index arithmetic make this a tight gather
                            // loop (2–3× faster than the generic one in the 7×7/2 stem).
                            var ow = owLo
                            while ow < owHi { dst[ow] = srow[ow &* 2]; ow &+= 1 }
                        } else {
                            var ow = owLo
                            while ow < owHi { dst[ow] = srow[ow &* s]; ow &+= 1 }
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of im2col: dx[s, c] = Σ over the active-tap rows of channel c of their
    /// scattered columns. One (sample, channel) plane per task, so no two tasks write the same memory.
    private func col2im(_ cols: UnsafePointer<Float>, n: Int, h: Int, w: Int, ho: Int, wo: Int,
                        dx: UnsafeMutablePointer<Float>) {
        let k = kernel, c = inChannels, s = stride, pad = padding, d = dilation
        let plane = h * w, pix = ho * wo, np = n * pix
        taps.withUnsafeBufferPointer { taps in
            let t = taps.count
            parallelFor(n * c) { q in
                let smp = q / c, ci = q % c
                let dst = dx + q * plane
                dst.update(repeating: 0, count: plane)
                for (i, tap) in taps.enumerated() {
                    let offH = (tap / k) * d - pad, offW = (tap % k) * d - pad
                    let (owLo, owHi) = self.validRange(offset: offW, size: w, outSize: wo)
                    if owLo >= owHi { continue }
                    let row = cols + (ci * t + i) * np + smp * pix
                    for oh in 0..<ho {
                        let ih = oh * s + offH
                        if ih < 0 || ih >= h { continue }
                        let src = row + oh * wo, drow = dst + ih * w + offW
                        if s == 1 {
                            var ow = owLo
                            while ow < owHi { drow[ow] += src[ow]; ow &+= 1 }
                        } else if s == 2 {
                            var ow = owLo
                            while ow < owHi { drow[ow &* 2] += src[ow]; ow &+= 1 }
                        } else {
                            var ow = owLo
                            while ow < owHi { drow[ow &* s] += src[ow]; ow &+= 1 }
                        }
                    }
                }
            }
        }
    }
}
