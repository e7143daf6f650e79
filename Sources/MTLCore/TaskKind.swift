// The task kinds and task losses, each declared once: the schema (file layout), the loader's
// target, the config's allowed and default losses, the evaluator's metric and `mtl predict`'s
// colour rule all read these tables.

public struct TaskKind: Sendable, Equatable {
    /// What a task's labels are; the file layout, target, metric and colour rule follow from it.
    public enum Family: Sendable, Equatable {
        case classMap   // int16 (N,H,W) class indices, -1 = void → target [B,H,W]; mIoU; dataset palette
        case depth      // float32 (N,H,W) metres, 0 = invalid → [B,1,H,W]; depth errors; viridis
        case normals    // float32 (N,H,W,3) unit vectors, zero = invalid → [B,3,H,W]; angles; RGB = (n+1)/2
        case binary     // uint8 (N,H,W) 0/1, 255 = ignore → [B,1,H,W] in {0,1}, -1 = ignore; F-scores; grey
    }

    public let name: String
    public let family: Family
    public let defaultLoss: String
    /// The losses the task accepts (LossKind names).
    public let losses: [String]
    public let summary: String

    public static let all: [TaskKind] = [
        TaskKind(name: "seg", family: .classMap, defaultLoss: "ce", losses: ["ce"], summary: "semantic segmentation"),
        TaskKind(name: "depth", family: .depth, defaultLoss: "l1", losses: ["l1"], summary: "depth in metres"),
        TaskKind(name: "normals", family: .normals, defaultLoss: "cosine", losses: ["cosine", "normal_l1", "normal_mse"], summary: "surface normals"),
        TaskKind(name: "edges", family: .binary, defaultLoss: "bce", losses: ["bce", "balanced_bce"], summary: "boundaries"),
        TaskKind(name: "parts", family: .classMap, defaultLoss: "ce", losses: ["ce"], summary: "human parts"),
        TaskKind(name: "saliency", family: .binary, defaultLoss: "bce", losses: ["bce", "balanced_bce", "saliency_ce"],
                 summary: "salient object"),
    ]

    /// The task names in the schema's canonical order (docs/DATASETS.md §4).
    public static let names = all.map { $0.name }

    public static func named(_ name: String) -> TaskKind? { all.first { $0.name == name } }

    /// Stored element type (the schema fixes it; readers reject anything else).
    public var fileType: H5TypeClass {
        switch family {
        case .classMap: return .int16
        case .depth, .normals: return .float32
        case .binary: return .uint8
        }
    }

    /// Trailing channel dimension in the file ((N,H,W,3) for normals); 0 = none ((N,H,W)).
    public var fileChannels: Int { family == .normals ? 3 : 0 }

    /// Channels of the loaded target: 0 = [B,H,W] class map, else [B,C,H,W].
    public var targetChannels: Int {
        switch family {
        case .classMap: return 0
        case .normals: return 3
        case .depth, .binary: return 1
        }
    }
}

public struct LossKind: Sendable, Equatable {
    public let name: String
    /// Output channels the head needs; 0 = the task's classes.
    public let channels: Int
    public let summary: String

    public static let all: [LossKind] = [
        LossKind(name: "ce", channels: 0, summary: "softmax cross-entropy, void pixels ignored"),
        LossKind(name: "l1", channels: 1, summary: "L1 on valid depth pixels"),
        LossKind(name: "cosine", channels: 3, summary: "1 − cosine between predicted and true normal"),
        LossKind(name: "bce", channels: 1, summary: "BCE with logits (PyTorch's pos_weight = tasks.<t>.pos_weight)"),
        LossKind(name: "normal_l1", channels: 3, summary: "ATRC normals: L1 on the L2-normalised prediction"),
        LossKind(name: "balanced_bce", channels: 1, summary: "ATRC edges: BCE with positive weight w = tasks.<t>.pos_weight in (0, 1)"),
        LossKind(name: "saliency_ce", channels: 2,
                 summary: "ATRC saliency: 2-channel CE with class weights (1 − w, w), w = the batch's background fraction"),
        LossKind(name: "normal_mse", channels: 3,
                 summary: "MT-CP code normals: masked MSE of the raw prediction, mean over the valid elements"),
    ]

    public static let names = all.map { $0.name }

    public static func named(_ name: String) -> LossKind? { all.first { $0.name == name } }

    public func outputChannels(classes: Int) -> Int { channels == 0 ? classes : channels }
}
