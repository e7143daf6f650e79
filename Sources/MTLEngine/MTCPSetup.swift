import MTLModels
import MTLTrain

extension MTCPOptions {
    /// The config's `model.mtcp.*` (validated spellings) as the decoder's options.
    init(_ c: MTCPConfig) {
        self.init()
        variant = c.variant; cfmStride = c.cfmStride; dim = c.dim; depths = c.depths; heads = c.heads; window = c.window
        reduction = c.reduction; depthMid = c.depthMid; headLayout = c.headLayout; queryBlock = c.queryBlock
        interWeight = c.interWeight; neckDim = c.dim
    }
}
