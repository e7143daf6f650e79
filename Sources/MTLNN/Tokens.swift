import MTLCore

/// NCHW feature maps ↔ tokens [B, H·W, C] (token (y, x) at index y·W + x, channels last), the
/// layout of the transformer layers. Both directions are transposes; the backward of one is the
/// other.
public final class ToTokens {
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    private var inputShape: [Int] = []
    public init() {}

    public func forward(_ x: Tensor) -> Tensor {
        precondition(x.rank == 4, "ToTokens: expected [B, C, H, W], got \(shapeString(x.shape))")
        inputShape = x.shape
        output.resize([x.n, x.h * x.w, x.c])
        mapsToTokens(x.data, output.data, b: x.n, c: x.c, pixels: x.h * x.w)
        return output
    }

    public func backward(_ dy: Tensor) -> Tensor {
        let (b, c, h, w) = (inputShape[0], inputShape[1], inputShape[2], inputShape[3])
        precondition(dy.shape == [b, h * w, c], "ToTokens: dy \(shapeString(dy.shape)) does not match [\(b), \(h * w), \(c)]")
        inputGrad.resize(inputShape)
        tokensToMaps(dy.data, inputGrad.data, b: b, c: c, pixels: h * w)
        return inputGrad
    }
}

public final class FromTokens {
    public let height: Int, width: Int
    private let output = Tensor([0])
    private let inputGrad = Tensor([0])
    public init(height: Int, width: Int) { self.height = height; self.width = width }

    public func forward(_ x: Tensor) -> Tensor {
        precondition(x.rank == 3 && x.shape[1] == height * width,
                     "FromTokens: expected [B, \(height * width), C], got \(shapeString(x.shape))")
        let (b, c) = (x.shape[0], x.shape[2])
        output.resize([b, c, height, width])
        tokensToMaps(x.data, output.data, b: b, c: c, pixels: height * width)
        return output
    }

    public func backward(_ dy: Tensor) -> Tensor {
        precondition(dy.rank == 4 && dy.h == height && dy.w == width, "FromTokens: dy \(shapeString(dy.shape))")
        inputGrad.resize([dy.n, height * width, dy.c])
        mapsToTokens(dy.data, inputGrad.data, b: dy.n, c: dy.c, pixels: height * width)
        return inputGrad
    }
}

/// dst[b, p, c] = src[b, c, p], in 32×32 tiles (both sides stay in cache).
public func mapsToTokens(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, b: Int, c: Int, pixels: Int) {
    transposeBatches(src, dst, batches: b, rows: c, cols: pixels)
}

/// dst[b, c, p] = src[b, p, c].
public func tokensToMaps(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, b: Int, c: Int, pixels: Int) {
    transposeBatches(src, dst, batches: b, rows: pixels, cols: c)
}

/// For each batch, dst [cols, rows] = srcᵀ with src [rows, cols].
func transposeBatches(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, batches: Int, rows: Int, cols: Int) {
    let tile = 32, rowTiles = (rows + tile - 1) / tile
    parallelFor(batches * rowTiles) { q in
        let s = q / rowTiles, r0 = (q % rowTiles) * tile, r1 = min(rows, r0 + tile)
        let a = src + s * rows * cols, t = dst + s * rows * cols
        var c0 = 0
        while c0 < cols {
            let c1 = min(cols, c0 + tile)
            for r in r0..<r1 { for c in c0..<c1 { t[c * rows + r] = a[r * cols + c] } }
            c0 = c1
        }
    }
}
