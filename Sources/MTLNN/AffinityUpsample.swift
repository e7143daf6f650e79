import MTLCore

/// Bilinear upsampling of an affinity matrix over both of its grids (TIF's LTHD):
/// A [B, h·w, h·w] (query rows, key columns, both row-major over an h×w grid) →
/// [B, H·W, H·W]: resize every query's key map h×w → H×W, transpose, resize every key's query
/// map the same way, transpose back. Both resizes are `Upsample` (align_corners as given), so
/// Â[(Y,X), (Y',X')] = Σ w(Y,y)w(X,x)w(Y',y')w(X',x') A[(y,x), (y',x')].
/// Backward runs the same steps in reverse with Upsample's adjoint.
public final class AffinityUpsample {
    public let height: Int, width: Int
    private let keyResize: Upsample, queryResize: Upsample
    /// A as [B, hw, h, w]; the key-resized map transposed, [B, HW, h, w]; the output.
    private let input4 = Tensor([0]), transposed = Tensor([0]), output = Tensor([0])
    /// Backward: dÂ transposed [B, HW, H, W]; the key-map gradient transposed [B, hw, H, W]; dA.
    private let gradTransposed = Tensor([0]), keyGrad = Tensor([0]), inputGrad = Tensor([0])
    private var inputShape: [Int] = []
    private var gridIn = (0, 0)

    /// Output grid height × width (2h × 2w for TIF).
    public init(height: Int, width: Int, alignCorners: Bool = false) {
        self.height = height
        self.width = width
        keyResize = Upsample(alignCorners: alignCorners)
        queryResize = Upsample(alignCorners: alignCorners)
    }

    /// a [B, h·w, h·w] on the h × w grid.
    public func forward(_ a: Tensor, gridHeight h: Int, gridWidth w: Int) -> Tensor {
        let hw = h * w, big = height * width
        precondition(a.rank == 3 && a.shape[1] == hw && a.shape[2] == hw,
                     "AffinityUpsample: expected [B, \(hw), \(hw)] for a \(h)×\(w) grid, got \(shapeString(a.shape))")
        inputShape = a.shape
        gridIn = (h, w)
        let b = a.shape[0]
        input4.resize([b, hw, h, w])
        input4.data.update(from: a.data, count: a.count)
        let keyUp = keyResize.forward(input4, height: height, width: width)        // [B, hw, H, W]
        transposed.resize([b, big, h, w])
        AffinityUpsample.transpose(keyUp.data, transposed.data, batch: b, rows: hw, columns: big)
        let queryUp = queryResize.forward(transposed, height: height, width: width) // [B, HW(key), HW(query)]
        output.resize([b, big, big])
        AffinityUpsample.transpose(queryUp.data, output.data, batch: b, rows: big, columns: big)
        return output
    }

    public func backward(_ dy: Tensor) -> Tensor {
        precondition(dy.shape == output.shape, "AffinityUpsample: dy \(shapeString(dy.shape)) does not match the output \(shapeString(output.shape))")
        let b = inputShape[0], (h, w) = gridIn, hw = h * w, big = height * width
        gradTransposed.resize([b, big, height, width])
        AffinityUpsample.transpose(dy.data, gradTransposed.data, batch: b, rows: big, columns: big)
        let dKeyMajor = queryResize.backward(gradTransposed)                       // [B, HW, h, w]
        keyGrad.resize([b, hw, height, width])
        AffinityUpsample.transpose(dKeyMajor.data, keyGrad.data, batch: b, rows: big, columns: hw)
        let dA = keyResize.backward(keyGrad)                                        // [B, hw, h, w]
        inputGrad.resize(inputShape)
        inputGrad.data.update(from: dA.data, count: dA.count)
        return inputGrad
    }

    /// dst[b][j][i] = src[b][i][j] for src [batch, rows, columns], in tiles of 32×32.
    static func transpose(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, batch: Int, rows: Int, columns: Int) {
        let tile = 32, rowTiles = (rows + tile - 1) / tile
        parallelFor(batch * rowTiles) { task in
            let s = task / rowTiles, r0 = (task % rowTiles) * tile, r1 = min(rows, r0 + tile)
            let a = src + s * rows * columns, t = dst + s * rows * columns
            var c0 = 0
            while c0 < columns {
                let c1 = min(columns, c0 + tile)
                for r in r0..<r1 { for c in c0..<c1 { t[c * rows + r] = a[r * columns + c] } }
                c0 = c1
            }
        }
    }
}
