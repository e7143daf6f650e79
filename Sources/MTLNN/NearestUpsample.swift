import MTLCore

/// Nearest-neighbour resize to a given size, exactly PyTorch's
/// F.interpolate(x, size=(H, W), mode="nearest"): per axis scale = in/out (in Float) and
/// src = min(floor(dst·scale), in − 1). With out = in·2^k this is also nn.Upsample(scale_factor=2^k,
/// mode="nearest") (timm's HRNet fuse). Backward adds each output gradient into its source pixel.
public final class NearestUpsample {
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    private var inputShape: [Int] = []
    /// Source row of every output row, source column of every output column.
    private var rowSource: [Int] = [], colSource: [Int] = []
    private var tableKey = (0, 0, 0, 0)

    public init() {}

    static func table(input: Int, output: Int) -> [Int] {
        let scale = Float(input) / Float(output)
        return (0..<output).map { min(Int((Float($0) * scale).rounded(.down)), input - 1) }
    }

    public func forward(_ x: Tensor, height: Int, width: Int) -> Tensor {
        precondition(x.rank == 4 && height > 0 && width > 0, "NearestUpsample: expected [N, C, H, W] and a positive size, got \(shapeString(x.shape)) → \(height)x\(width)")
        inputShape = x.shape
        let (hi, wi) = (x.h, x.w)
        if tableKey != (hi, wi, height, width) {
            rowSource = NearestUpsample.table(input: hi, output: height)
            colSource = NearestUpsample.table(input: wi, output: width)
            tableKey = (hi, wi, height, width)
        }
        output.resize([x.n, x.c, height, width])
        let src = x.data, dst = output.data
        rowSource.withUnsafeBufferPointer { rows in colSource.withUnsafeBufferPointer { cols in
            parallelFor(x.n * x.c) { q in
                let plane = src + q * hi * wi, out = dst + q * height * width
                for oh in 0..<height {
                    let from = plane + rows[oh] * wi, row = out + oh * width
                    for ow in 0..<width { row[ow] = from[cols[ow]] }
                }
            }
        }}
        return output
    }

    /// The adjoint: every input pixel receives the sum of the gradients of the outputs copied from it.
    public func backward(_ dy: Tensor) -> Tensor {
        precondition(dy.shape == output.shape, "NearestUpsample: dy \(shapeString(dy.shape)) does not match the output \(shapeString(output.shape))")
        inputGrad.resize(inputShape)
        inputGrad.zero()
        let (hi, wi) = (inputShape[2], inputShape[3]), (height, width) = (dy.h, dy.w)
        let g = dy.data, dx = inputGrad.data
        rowSource.withUnsafeBufferPointer { rows in colSource.withUnsafeBufferPointer { cols in
            parallelFor(dy.n * dy.c) { q in
                let plane = dx + q * hi * wi, src = g + q * height * width
                for oh in 0..<height {
                    let to = plane + rows[oh] * wi, row = src + oh * width
                    for ow in 0..<width { to[cols[ow]] += row[ow] }
                }
            }
        }}
        return inputGrad
    }
}
