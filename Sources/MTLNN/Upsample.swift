import MTLCore

/// Bilinear resize to a given size, exactly PyTorch's
/// F.interpolate(x, size=(H, W), mode="bilinear", align_corners=...), per axis:
///   align_corners=False (default): scale = in/out, src = max(scale·(dst + 0.5) − 0.5, 0);
///   align_corners=True:  scale = (in − 1)/(out − 1) for out > 1 and 0 for out = 1 (the output
///                        is then the first row/column), src = scale·dst;
/// then i0 = floor(src), i1 = min(i0 + 1, in − 1), λ1 = src − i0, λ0 = 1 − λ1 (in Float, as
/// PyTorch does for float32). With a scale_factor s instead of a size, PyTorch's size is
/// ⌊in·s⌋ (`outputSize(input:scaleFactor:)`). With align_corners=True the coordinates depend on
/// the sizes only, so size = ⌊in·s⌋ reproduces scale_factor=s exactly; with align_corners=False
/// PyTorch uses 1/s rather than in/out as the scale (unless recompute_scale_factor=True), which
/// is the same only when in·s is an integer (e.g. s = 2).
public final class Upsample {
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    private var inputShape: [Int] = []
    // Per output row / column: the two source indices and their weights.
    private var rowIndex0: [Int] = [], rowIndex1: [Int] = [], rowWeight0: [Float] = [], rowWeight1: [Float] = []
    private var colIndex0: [Int] = [], colIndex1: [Int] = [], colWeight0: [Float] = [], colWeight1: [Float] = []
    private var tableKey = (0, 0, 0, 0)
    /// The horizontal adjoint as a gather: for source column j, the (output column, weight) pairs
    /// that read it, at [start[j], start[j + 1]), in the order the scatter would add them (output
    /// columns ascending, the left tap before the right one) so the sums are the scatter's.
    private var colReaderStart: [Int] = [], colReaderColumn: [Int] = [], colReaderWeight: [Float] = []
    /// One source-width row per (sample, channel) plane: the blended rows (forward) and the
    /// horizontally spread gradients (backward).
    private let rowScratch = Tensor([0])

    public let alignCorners: Bool

    public init(alignCorners: Bool = false) { self.alignCorners = alignCorners }

    /// PyTorch's output size for a scale factor: ⌊in·s⌋ (computed in Double).
    public static func outputSize(input: Int, scaleFactor: Double) -> Int {
        Int((Double(input) * scaleFactor).rounded(.down))
    }

    static func table(input: Int, output: Int, alignCorners: Bool = false) -> ([Int], [Int], [Float], [Float]) {
        let scale = alignCorners ? (output > 1 ? Float(input - 1) / Float(output - 1) : 0) : Float(input) / Float(output)
        var i0 = [Int](repeating: 0, count: output), i1 = i0
        var w0 = [Float](repeating: 0, count: output), w1 = w0
        for d in 0..<output {
            let src = alignCorners ? scale * Float(d) : max(scale * (Float(d) + 0.5) - 0.5, 0)
            let a = min(Int(src), input - 1)
            i0[d] = a
            i1[d] = a < input - 1 ? a + 1 : a
            let l1 = min(max(src - Float(a), 0), 1)
            w1[d] = l1
            w0[d] = 1 - l1
        }
        return (i0, i1, w0, w1)
    }

    static func readers(input: Int, index0: [Int], index1: [Int], weight0: [Float], weight1: [Float]) -> ([Int], [Int], [Float]) {
        var lists = [[(Int, Float)]](repeating: [], count: input)
        for d in 0..<index0.count {
            lists[index0[d]].append((d, weight0[d]))
            lists[index1[d]].append((d, weight1[d]))
        }
        var start = [0], column: [Int] = [], weight: [Float] = []
        for list in lists {
            for (d, w) in list { column.append(d); weight.append(w) }
            start.append(column.count)
        }
        return (start, column, weight)
    }

    public func forward(_ x: Tensor, height: Int, width: Int) -> Tensor {
        precondition(x.rank == 4 && height > 0 && width > 0, "Upsample: expected [N, C, H, W] and a positive size, got \(shapeString(x.shape)) → \(height)x\(width)")
        inputShape = x.shape
        let (hi, wi) = (x.h, x.w)
        if tableKey != (hi, wi, height, width) {
            (rowIndex0, rowIndex1, rowWeight0, rowWeight1) = Upsample.table(input: hi, output: height, alignCorners: alignCorners)
            (colIndex0, colIndex1, colWeight0, colWeight1) = Upsample.table(input: wi, output: width, alignCorners: alignCorners)
            (colReaderStart, colReaderColumn, colReaderWeight) = Upsample.readers(input: wi, index0: colIndex0, index1: colIndex1,
                                                                                   weight0: colWeight0, weight1: colWeight1)
            tableKey = (hi, wi, height, width)
        }
        output.resize([x.n, x.c, height, width])
        rowScratch.resize([x.n * x.c, wi])
        let src = x.data, dst = output.data, tmp = rowScratch.data
        rowIndex0.withUnsafeBufferPointer { r0 in rowIndex1.withUnsafeBufferPointer { r1 in
        rowWeight0.withUnsafeBufferPointer { rw0 in rowWeight1.withUnsafeBufferPointer { rw1 in
        colIndex0.withUnsafeBufferPointer { c0 in colIndex1.withUnsafeBufferPointer { c1 in
        colWeight0.withUnsafeBufferPointer { cw0 in colWeight1.withUnsafeBufferPointer { cw1 in
            parallelFor(x.n * x.c) { q in
                // Separable: blend the two source rows (length wi), then gather two columns of it.
                let plane = src + q * hi * wi, out = dst + q * height * width, blend = tmp + q * wi
                for oh in 0..<height {
                    let top = plane + r0[oh] * wi, bottom = plane + r1[oh] * wi
                    let a0 = rw0[oh], a1 = rw1[oh]
                    for j in 0..<wi { blend[j] = a0 * top[j] + a1 * bottom[j] }
                    let row = out + oh * width
                    for ow in 0..<width { row[ow] = cw0[ow] * blend[c0[ow]] + cw1[ow] * blend[c1[ow]] }
                }
            }
        }}}}}}}}
        return output
    }

    /// The adjoint: each output gradient is spread back over its four source pixels.
    public func backward(_ dy: Tensor) -> Tensor {
        precondition(dy.shape == output.shape, "Upsample: dy \(shapeString(dy.shape)) does not match the output \(shapeString(output.shape))")
        inputGrad.resize(inputShape)
        inputGrad.zero()
        let (hi, wi) = (inputShape[2], inputShape[3]), (height, width) = (dy.h, dy.w)
        rowScratch.resize([dy.n * dy.c, wi])
        let g = dy.data, dx = inputGrad.data, tmp = rowScratch.data
        rowIndex0.withUnsafeBufferPointer { r0 in rowIndex1.withUnsafeBufferPointer { r1 in
        rowWeight0.withUnsafeBufferPointer { rw0 in rowWeight1.withUnsafeBufferPointer { rw1 in
        colReaderStart.withUnsafeBufferPointer { start in colReaderColumn.withUnsafeBufferPointer { column in
        colReaderWeight.withUnsafeBufferPointer { weight in
            parallelFor(dy.n * dy.c) { q in
                // Separable adjoint: gather each source column's gradient from the output columns
                // that read it, then add that row into the two source rows with the vertical weights.
                let plane = dx + q * hi * wi, src = g + q * height * width, spread = tmp + q * wi
                for oh in 0..<height {
                    let row = src + oh * width
                    for j in 0..<wi {
                        var s: Float = 0
                        for k in start[j]..<start[j + 1] { s += weight[k] * row[column[k]] }
                        spread[j] = s
                    }
                    let top = plane + r0[oh] * wi, bottom = plane + r1[oh] * wi
                    let a0 = rw0[oh], a1 = rw1[oh]
                    for j in 0..<wi { top[j] += a0 * spread[j] }
                    for j in 0..<wi { bottom[j] += a1 * spread[j] }
                }
            }
        }}}}}}}
        return inputGrad
    }
}
