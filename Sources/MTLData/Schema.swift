import MTLCore

/// The tasks the unified schema (DATASETS.md §4) knows, in their canonical order.
public let knownTasks = ["seg", "depth", "normals", "edges", "parts", "saliency"]

/// Root attribute values that identify a file written in the unified schema.
let schemaFormat = "mtdp-hdf5"
let schemaVersion = 1

/// How one task is stored in the file and what the loader turns it into.
struct TaskLayout {
    let name: String
    /// Stored element type (the schema fixes it; readers reject anything else).
    let fileType: H5TypeClass
    /// Trailing channel dimension in the file ((N,H,W,3) for normals); 0 = none ((N,H,W)).
    let fileChannels: Int
    /// Channels of the loaded target: 0 = [B,H,W] class map, else [B,C,H,W].
    let targetChannels: Int
    /// True for class maps (seg, parts) whose range is checked against `num_classes`.
    let isClassMap: Bool

    var fileShapeDescription: String { fileChannels > 0 ? "(N,H,W,\(fileChannels))" : "(N,H,W)" }

    func targetShape(batch: Int, height: Int, width: Int) -> [Int] {
        targetChannels == 0 ? [batch, height, width] : [batch, targetChannels, height, width]
    }

    static func of(_ task: String) -> TaskLayout? {
        switch task {
        case "seg": return TaskLayout(name: task, fileType: .int16, fileChannels: 0, targetChannels: 0, isClassMap: true)
        case "parts": return TaskLayout(name: task, fileType: .int16, fileChannels: 0, targetChannels: 0, isClassMap: true)
        case "depth": return TaskLayout(name: task, fileType: .float32, fileChannels: 0, targetChannels: 1, isClassMap: false)
        case "normals": return TaskLayout(name: task, fileType: .float32, fileChannels: 3, targetChannels: 3, isClassMap: false)
        case "edges", "saliency": return TaskLayout(name: task, fileType: .uint8, fileChannels: 0, targetChannels: 1, isClassMap: false)
        default: return nil
        }
    }
}

/// "(64,64,96,3)" — shapes printed the way the schema documents them.
func shapeString(_ s: [Int]) -> String { "(" + s.map(String.init).joined(separator: ",") + ")" }
