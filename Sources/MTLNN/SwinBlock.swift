import MTLCore

/// Tokens [B, H·W, C] ↔ Swin's (shifted) windows [B·nW, ws², C]: pad the map to multiples of the
/// window with zeros at the bottom and right, roll it by −shift, cut it into windows (window
/// n = (p / ws)·(Wp / ws) + q / ws, slot (p mod ws)·ws + q mod ws, windows of each image together).
/// Two orders of padding and rolling exist in the code users import from: the dense-prediction
/// one (official Swin for segmentation, mmseg: pad, then roll over the padded map) and timm's
/// (roll the H×W map, then pad). Both are one permutation of token slots, computed once per map
/// size: partition and reverse copy rows through it, and each backward is the other's forward.
public final class WindowPartition {
    public enum Order: String, Sendable { case padThenRoll = "pad-roll", rollThenPad = "roll-pad" }
    public let window: Int, shift: Int, order: Order
    private(set) var height = 0, width = 0
    private(set) var paddedHeight = 0, paddedWidth = 0
    /// For each slot of the windows of one image: the token it holds, −1 for padding.
    private var tokenOfSlot: [Int32] = []
    /// For each token of one image: its slot.
    private var slotOfToken: [Int32] = []
    /// The padding slots of one image's windows, in order.
    private var paddingSlots: [Int32] = []
    private let windowsOut = Tensor([0]), tokensOut = Tensor([0])
    private let windowsGrad = Tensor([0]), tokensGrad = Tensor([0])

    public init(window: Int, shift: Int, order: Order = .padThenRoll) {
        precondition(window > 0 && shift >= 0 && shift < window, "window \(window), shift \(shift): need 0 ≤ shift < window")
        self.window = window
        self.shift = shift
        self.order = order
    }

    public var windowsPerImage: Int { (paddedHeight / window) * (paddedWidth / window) }

    /// Prepares the permutation for an H×W map (no work when the size is unchanged).
    public func prepare(height h: Int, width w: Int) {
        if h == height && w == width { return }
        height = h
        width = w
        let ws = window, s = shift
        let hp = (h + ws - 1) / ws * ws, wp = (w + ws - 1) / ws * ws
        paddedHeight = hp
        paddedWidth = wp
        tokenOfSlot = [Int32](repeating: -1, count: hp * wp)
        slotOfToken = [Int32](repeating: -1, count: h * w)
        for p in 0..<hp {
            for q in 0..<wp {
                // The map position whose token lands at shifted position (p, q).
                let y: Int, x: Int
                switch order {
                case .padThenRoll: (y, x) = ((p + s) % hp, (q + s) % wp)
                case .rollThenPad:
                    guard p < h && q < w else { continue }
                    (y, x) = ((p + s) % h, (q + s) % w)
                }
                guard y < h && x < w else { continue }
                let slot = ((p / ws) * (wp / ws) + q / ws) * ws * ws + (p % ws) * ws + q % ws
                tokenOfSlot[slot] = Int32(y * w + x)
                slotOfToken[y * w + x] = Int32(slot)
            }
        }
        paddingSlots = tokenOfSlot.indices.filter { tokenOfSlot[$0] < 0 }.map { Int32($0) }
    }

    /// Slots per image that hold no token (the windows' padding).
    public var paddingSlotsPerImage: Int { paddingSlots.count }

    /// tokens [B, H·W, C] → windows [B·nW, ws², C]; padding slots get the row `padding` (C values;
    /// zeros when nil). `into`: where to write instead of the partition's own buffer (not x).
    public func partition(_ x: Tensor, padding: Tensor? = nil, into out: Tensor? = nil) -> Tensor {
        let (b, c) = checkTokens(x)
        precondition(padding == nil || padding!.count == c, "windows: padding row of \(padding!.count) values for \(c) channels")
        let windowsOut = distinct(out, x) ?? self.windowsOut
        let slots = paddedHeight * paddedWidth
        windowsOut.resize([b * windowsPerImage, window * window, c])
        gather(x.data, into: windowsOut.data, map: tokenOfSlot, batches: b, rowsOut: slots, rowsIn: height * width, c: c,
               padding: padding.map { UnsafePointer($0.data) })
        return windowsOut
    }

    /// acc[j] += Σ over the padding slots of every image of dWindows[slot, j], in Double, slots in
    /// order (the gradient of the padding row, which partitionBackward drops).
    public func addPaddingRows(of dWindows: Tensor, into acc: UnsafeMutablePointer<Float>) {
        let c = dWindows.shape[2], slots = paddedHeight * paddedWidth, b = dWindows.shape[0] / windowsPerImage
        let p = paddingSlots.count
        guard p > 0 else { return }
        let g = UnsafePointer(dWindows.data)
        paddingSlots.withUnsafeBufferPointer { pad in
            addColumnSums(rows: b * p, columns: c, into: acc) { i in g + ((i / p) * slots + Int(pad[i % p])) * c }
        }
    }

    /// d(windows) → d(tokens): each token's row from its slot (padding slots are dropped). `into`:
    /// where to write instead of the partition's own buffer (in this and the next two; not the input).
    public func partitionBackward(_ dWindows: Tensor, into out: Tensor? = nil) -> Tensor {
        let c = dWindows.shape[2], b = dWindows.shape[0] / windowsPerImage
        let tokensGrad = distinct(out, dWindows) ?? self.tokensGrad
        tokensGrad.resize([b, height * width, c])
        gather(dWindows.data, into: tokensGrad.data, map: slotOfToken, batches: b, rowsOut: height * width,
               rowsIn: paddedHeight * paddedWidth, c: c)
        return tokensGrad
    }

    /// windows [B·nW, ws², C] → tokens [B, H·W, C] (roll back, crop).
    public func reverse(_ windows: Tensor, into out: Tensor? = nil) -> Tensor {
        let c = windows.shape[2], b = windows.shape[0] / windowsPerImage
        let tokensOut = distinct(out, windows) ?? self.tokensOut
        tokensOut.resize([b, height * width, c])
        gather(windows.data, into: tokensOut.data, map: slotOfToken, batches: b, rowsOut: height * width,
               rowsIn: paddedHeight * paddedWidth, c: c)
        return tokensOut
    }

    /// d(tokens) → d(windows), zero in the padding slots.
    public func reverseBackward(_ dy: Tensor, into out: Tensor? = nil) -> Tensor {
        let (b, c) = checkTokens(dy)
        let windowsGrad = distinct(out, dy) ?? self.windowsGrad
        windowsGrad.resize([b * windowsPerImage, window * window, c])
        gather(dy.data, into: windowsGrad.data, map: tokenOfSlot, batches: b, rowsOut: paddedHeight * paddedWidth,
               rowsIn: height * width, c: c)
        return windowsGrad
    }

    /// The shifted-window mask [nW, ws², ws²]: 0 where two slots come from the same region of the
    /// rolled map (its last `window` and `shift` rows and columns cut it into 3×3 regions), −100
    /// elsewhere; nil without a shift.
    public func mask() -> Tensor? {
        guard shift > 0 else { return nil }
        let ws = window, s = shift, hp = paddedHeight, wp = paddedWidth, n = ws * ws, nW = windowsPerImage
        func band(_ v: Int, _ size: Int) -> Int { v < size - ws ? 0 : v < size - s ? 1 : 2 }
        var region = [Int](repeating: 0, count: hp * wp)
        for p in 0..<hp { for q in 0..<wp {
            let slot = ((p / ws) * (wp / ws) + q / ws) * n + (p % ws) * ws + q % ws
            region[slot] = band(p, hp) * 3 + band(q, wp)
        } }
        let m = Tensor([nW, n, n])
        for w in 0..<nW { for i in 0..<n { for j in 0..<n where region[w * n + i] != region[w * n + j] {
            m[(w * n + i) * n + j] = -100
        } } }
        return m
    }

    /// `out`, checked not to be the gather's source.
    private func distinct(_ out: Tensor?, _ source: Tensor) -> Tensor? {
        precondition(out !== source, "windows: a gather cannot write over its input")
        return out
    }

    private func checkTokens(_ x: Tensor) -> (Int, Int) {
        precondition(x.rank == 3 && x.shape[1] == height * width,
                     "windows: expected tokens [B, \(height * width), C] (call prepare first), got \(shapeString(x.shape))")
        return (x.shape[0], x.shape[2])
    }

    /// out[b, r, :] = in[b, map[r], :] (the padding row, or zeros, where map[r] < 0).
    private func gather(_ src: UnsafePointer<Float>, into dst: UnsafeMutablePointer<Float>, map: [Int32],
                        batches: Int, rowsOut: Int, rowsIn: Int, c: Int, padding: UnsafePointer<Float>? = nil) {
        map.withUnsafeBufferPointer { m in
            parallelFor(batches * rowsOut, minChunk: 64) { q in
                let b = q / rowsOut, r = q % rowsOut, from = Int(m[r])
                let out = dst + q * c
                if from >= 0 { out.update(from: src + (b * rowsIn + from) * c, count: c) }
                else if let padding { out.update(from: padding, count: c) }
                else { out.update(repeating: 0, count: c) }
            }
        }
    }
}

/// The buffers a Swin block needs only while its forward or backward runs: the branch outputs
/// before they join the residual (forward), the gradients between its layers (backward), and its
/// dx. Nothing reads them once the block has returned, except its dx, which the block below reads
/// as dy and overwrites in place with its own dx. So the blocks of an encoder, which run one at a
/// time, share one workspace (SwinEncoder): one block's worth, sized by the largest stage, instead
/// of one per block (Swin-T at 2 × 224×288: ≈ 43 MB instead of ≈ 330 MB). Forward and backward
/// share it too: no block's forward runs while the encoder's backward does. What the backward
/// reads (x̂, the Linear inputs, Q K V, P) stays in the layers.
public final class SwinBlockWorkspace {
    /// Token-shaped [B, H·W, C]: the branches' outputs; the layers' dx.
    let tokensA = Tensor([0]), tokensB = Tensor([0])
    /// A forward-only block's norm outputs [B, H·W, C].
    let normed = Tensor([0])
    /// [B, H·W, mlpRatio·C]: fc2's dx, then GELU's (in place); a forward-only block's MLP hidden.
    let hidden = Tensor([0])
    /// The block's dx.
    let inputGrad = Tensor([0])
    let attention = WindowAttention.Scratch()
    public init() {}
}

/// One Swin Transformer block on tokens [B, H·W, C] (timm / official names: norm1, attn, norm2,
/// mlp.fc1, mlp.fc2):  x ← x + W-MSA(LN₁ x) (shifted windows when shift > 0),  x ← x + MLP(LN₂ x),
/// MLP = fc2(GELU(fc1 ·)) with hidden width mlpRatio·C.
public final class SwinBlock: HasParameters {
    public let name: String
    public let norm1: LayerNorm, norm2: LayerNorm
    public let attn: WindowAttention
    public let fc1: Linear, fc2: Linear
    public let windows: WindowPartition
    /// The classification code's rule (official Swin, timm): a shifted block runs unshifted on a
    /// map whose smaller side is at most the window (one window covers it). Off: the
    /// dense-prediction code, which always shifts.
    public var noShiftWhenOneWindow = false
    /// Own by default; blocks that never run at the same time can be given one shared workspace.
    /// The dx that `backward` returns lives in it (valid until the next block using it runs).
    public var workspace = SwinBlockWorkspace()
    /// No backward follows (a frozen encoder): every layer's output goes to the workspace, the
    /// block keeps nothing but its output, and `backward` refuses.
    public var forwardOnly = false
    private let unshifted: WindowPartition
    private let gelu = GELU()
    /// Stochastic depth on the attention and MLP branches (timm's drop_path1, drop_path2): layer
    /// ids 2·blockID and 2·blockID + 1.
    public let dropPath1: DropPath, dropPath2: DropPath
    private let output = Tensor([0])
    private var mask: Tensor?
    private var maskSize = (0, 0)
    public var parameters: [Parameter] { norm1.parameters + attn.parameters + norm2.parameters + fc1.parameters + fc2.parameters }

    public init(_ name: String, dim: Int, heads: Int, window: Int, shift: Int, mlpRatio: Int = 4,
                order: WindowPartition.Order = .padThenRoll, dropPath: Float = 0, blockID: Int = 0, rng: inout Philox) {
        self.name = name
        dropPath1 = DropPath(rate: dropPath, layerID: 2 * blockID)
        dropPath2 = DropPath(rate: dropPath, layerID: 2 * blockID + 1)
        norm1 = LayerNorm("\(name).norm1", features: dim)
        attn = WindowAttention("\(name).attn", dim: dim, heads: heads, window: window, rng: &rng)
        norm2 = LayerNorm("\(name).norm2", features: dim)
        fc1 = Linear("\(name).mlp.fc1", inFeatures: dim, outFeatures: mlpRatio * dim, rng: &rng)
        fc2 = Linear("\(name).mlp.fc2", inFeatures: mlpRatio * dim, outFeatures: dim, rng: &rng)
        windows = WindowPartition(window: window, shift: shift, order: order)
        unshifted = WindowPartition(window: window, shift: 0, order: order)
    }

    /// Eval mode (false) makes DropPath the identity.
    public var training: Bool {
        get { dropPath1.training }
        set { dropPath1.training = newValue; dropPath2.training = newValue }
    }

    public func prepareDropPath(seed: UInt64, step: Int, sampleIndices: [Int]) {
        dropPath1.prepare(seed: seed, step: step, sampleIndices: sampleIndices)
        dropPath2.prepare(seed: seed, step: step, sampleIndices: sampleIndices)
    }

    /// x: tokens [B, H·W, C] of an H×W map.
    public func forward(_ x: Tensor, height h: Int, width w: Int) -> Tensor {
        let windows = noShiftWhenOneWindow && min(h, w) <= self.windows.window ? unshifted : self.windows
        windows.prepare(height: h, width: w)
        let shifted = windows === self.windows
        if shifted && maskSize != (h, w) {
            mask = windows.mask()
            maskSize = (h, w)
        }
        // Branch outputs go to the workspace (read once, by the sums); the outputs the backward
        // reads (norm1's and norm2's y, the attention's, fc1, GELU) stay in the layers — unless no
        // backward follows (forward-only: they go to the workspace too, GELU in place).
        let ws = workspace, keep = !forwardOnly
        precondition(keep || !training || (dropPath1.rate == 0 && dropPath2.rate == 0),
                     "\(name): forward-only in training mode with DropPath")
        let normed = norm1.forward(x, into: keep ? nil : ws.normed, forBackward: keep)
        let attended = attn.forward(tokens: normed, windows: windows, mask: shifted ? mask : nil,
                                    scratch: ws.attention, into: ws.tokensA, forBackward: keep)
        let a = dropPath1.forward(attended, into: ws.tokensB)
        output.resize(x.shape)
        let y = output.data, xs = x.data, ad = a.data
        parallelBlocks(x.count) { lo, hi in for i in lo..<hi { y[i] = xs[i] + ad[i] } }
        let fc1Out = fc1.forward(norm2.forward(output, into: keep ? nil : ws.normed, forBackward: keep), into: keep ? nil : ws.hidden)
        let hidden = gelu.forward(fc1Out, into: keep ? nil : fc1Out)
        let m = dropPath2.forward(fc2.forward(hidden, into: ws.tokensA), into: ws.tokensB)
        let md = m.data
        parallelBlocks(x.count) { lo, hi in for i in lo..<hi { y[i] += md[i] } }
        return output
    }

    /// dx in `workspace.inputGrad`; dy may be that same buffer (the block above's dx): the sum
    /// then runs in place.
    public func backward(_ dy: Tensor) -> Tensor {
        precondition(!forwardOnly, "\(name): backward of a forward-only block (a frozen encoder)")
        let ws = workspace
        // Through the MLP branch (GELU in place in the hidden-width buffer), plus the identity.
        let dHidden = fc2.backward(dropPath2.backward(dy, into: ws.tokensB), into: ws.hidden)
        let dMid = norm2.backward(fc1.backward(gelu.backward(dHidden, into: dHidden), into: ws.tokensA), into: ws.tokensB)
        let inputGrad = ws.inputGrad
        let inPlace = dy === inputGrad
        inputGrad.resize(dy.shape)
        let g = inputGrad.data, dys = dy.data, dm = dMid.data
        // In place, one pointer: two to one buffer would fail the vectoriser's overlap check.
        if inPlace { parallelBlocks(dy.count) { lo, hi in for i in lo..<hi { g[i] += dm[i] } } }
        else { parallelBlocks(dy.count) { lo, hi in for i in lo..<hi { g[i] = dys[i] + dm[i] } } }
        // Through the attention branch, plus the identity. The attention's dx may overwrite its dy
        // (only proj's backward reads dy).
        let dAttended = dropPath1.backward(inputGrad, into: ws.tokensA)
        let dNormed = attn.backward(dAttended, scratch: ws.attention, into: ws.tokensA)
        let dAttn = norm1.backward(dNormed, into: ws.tokensB)
        let da = dAttn.data
        parallelBlocks(dy.count) { lo, hi in for i in lo..<hi { g[i] += da[i] } }
        return inputGrad
    }
}
