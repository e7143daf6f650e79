import MTLCore

/// The tasks the unified schema (DATASETS.md §4) knows, in their canonical order (MTLCore.TaskKind).
public let knownTasks = TaskKind.names

/// Root attribute values that identify a file written in the unified schema.
let schemaFormat = "mtdp-hdf5"
let schemaVersion = 1

/// How one task is stored in the file and what the loader turns it into (from its TaskKind).
struct TaskLayout {
    let kind: TaskKind
    var name: String { kind.name }
    /// Stored element type (the schema fixes it; readers reject anything else).
    var fileType: H5TypeClass { kind.fileType }
    /// Trailing channel dimension in the file ((N,H,W,3) for normals); 0 = none ((N,H,W)).
    var fileChannels: Int { kind.fileChannels }
    /// Channels of the loaded target: 0 = [B,H,W] class map, else [B,C,H,W].
    var targetChannels: Int { kind.targetChannels }
    /// True for class maps (seg, parts) whose range is checked against `num_classes`.
    var isClassMap: Bool { kind.family == .classMap }

    var fileShapeDescription: String { fileChannels > 0 ? "(N,H,W,\(fileChannels))" : "(N,H,W)" }

    func targetShape(batch: Int, height: Int, width: Int) -> [Int] {
        targetChannels == 0 ? [batch, height, width] : [batch, targetChannels, height, width]
    }

    static func of(_ task: String) -> TaskLayout? { TaskKind.named(task).map { TaskLayout(kind: $0) } }
}

/// "(64,64,96,3)" — shapes printed the way the schema documents them.
func shapeString(_ s: [Int]) -> String { "(" + s.map(String.init).joined(separator: ",") + ")" }
