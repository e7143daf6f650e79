import Foundation
import MTLCore

/// `model.mtcp.*`: the MT-CP decoder's settings (MTLModels.MTCPOptions; docs/ARCHITECTURE.md "MT-CP",
/// the code-vs-paper switches docs/ARCHITECTURES.md §4.3). Read only with `model.head: mtcp`.
public struct MTCPConfig: Equatable {
    public var variant = "code"            // code (plain FPN) | paper (the FPN's dynamic weights)
    public var cfmStride = 4               // 4 (the paper) | 8 (the CFM on 2×2-pooled maps, 16× cheaper affinity)
    public var dim = 256                   // decoder width d = the neck's output (smaller only for tests)
    public var depths = [1, 2, 1]          // Swin blocks per pyramid stage
    public var heads = [2, 2, 2]           // attention heads per stage
    public var window = 7
    public var reduction = 16              // CBAM's MLP reduction
    public var depthMid = 32               // the depth head's middle width
    public var headLayout = "nyud"         // nyud | pascal: the code's head sets (PASCAL: seg/parts ×4, one-conv intermediates)
    public var queryBlock = 256            // query pixels per block of the CFM affinity
    public var interWeight = 0.5           // weight of each intermediate-prediction loss term (the code's ½ Σ_s)
    public init() {}

    static let keys = ["variant", "cfm_stride", "dim", "depths", "heads", "window", "reduction", "depth_mid", "head_layout",
                       "query_block", "inter_weight"]
    static let variants = ["code", "paper"]
    static let layouts = ["nyud", "pascal"]

    /// `{variant: code, cfm_stride: 4, …}`: one flow mapping under `model:` in the resolved config.
    var flowYAML: String {
        let pairs: [(String, String)] = [
            ("variant", yamlString(variant)), ("cfm_stride", "\(cfmStride)"), ("dim", "\(dim)"),
            ("depths", "[" + depths.map(String.init).joined(separator: ", ") + "]"),
            ("heads", "[" + heads.map(String.init).joined(separator: ", ") + "]"), ("window", "\(window)"),
            ("reduction", "\(reduction)"), ("depth_mid", "\(depthMid)"), ("head_layout", yamlString(headLayout)),
            ("query_block", "\(queryBlock)"), ("inter_weight", yamlDouble(interWeight))]
        return "{" + pairs.map { "\($0.0): \($0.1)" }.joined(separator: ", ") + "}"
    }
}

extension Reader {
    /// `model.mtcp` (a mapping) into a validated MTCPConfig; `head` is model.head.
    func mtcp(_ v: YValue, head: String, _ def: MTCPConfig) throws -> MTCPConfig {
        guard head == "mtcp" else { throw fail("model.mtcp", "expected model.head: mtcp with MT-CP settings, found model.head \(head)") }
        let e = try entries(v, "model.mtcp")
        try checkKeys(e, allowed: MTCPConfig.keys, prefix: ["model", "mtcp"])
        func get(_ k: String) -> YValue? { e.first { $0.key == k }?.value }
        func ints(_ k: String, _ d: [Int]) throws -> [Int] {
            guard let v = get(k) else { return d }
            guard case .seq(let items) = v, items.count == 3 else {
                throw fail("model.mtcp.\(k)", "expected a list of 3 integers >= 1, found \(v.kind)")
            }
            return try items.map { try int($0, "model.mtcp.\(k)", 1, min: 1) }
        }
        var c = def
        c.variant = try oneOf(get("variant"), "model.mtcp.variant", c.variant, MTCPConfig.variants)
        c.cfmStride = try int(get("cfm_stride"), "model.mtcp.cfm_stride", c.cfmStride, allowed: [4, 8])
        c.dim = try int(get("dim"), "model.mtcp.dim", c.dim, min: 2)
        c.depths = try ints("depths", c.depths)
        c.heads = try ints("heads", c.heads)
        c.window = try int(get("window"), "model.mtcp.window", c.window, min: 1)
        c.reduction = try int(get("reduction"), "model.mtcp.reduction", c.reduction, min: 1)
        c.depthMid = try int(get("depth_mid"), "model.mtcp.depth_mid", c.depthMid, min: 1)
        c.headLayout = try oneOf(get("head_layout"), "model.mtcp.head_layout", c.headLayout, MTCPConfig.layouts)
        c.queryBlock = try int(get("query_block"), "model.mtcp.query_block", c.queryBlock, min: 1)
        c.interWeight = try double(get("inter_weight"), "model.mtcp.inter_weight", c.interWeight, ">= 0") { $0 >= 0 }
        if c.dim % 2 != 0 { throw fail("model.mtcp.dim", "expected an even width (the depth head halves it), found \(c.dim)") }
        for s in 0..<3 where (c.dim << s) % c.heads[s] != 0 {
            throw fail("model.mtcp.heads", "expected head counts dividing the stage widths \(c.dim)·2^s, found \(c.heads) (stage \(s): \(c.dim << s))")
        }
        return c
    }
}
