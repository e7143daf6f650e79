import MTLCore
import MTLModels

/// Initialises the encoder from an HDF5 file of PyTorch-named tensors, one dataset per tensor at the
/// file's root (`conv1.weight`, `layer1.0.bn1.running_mean`, ... as written by tools/torch_to_h5.py from a
/// torchvision state_dict). Names may carry an `encoder.` prefix or none; `fc.*` is ignored.
public enum Pretrained {
    public static func readTensors(_ path: String) throws -> [String: Tensor] {
        let f = try H5File.open(path)
        defer { f.close() }
        var out: [String: Tensor] = [:]
        for name in try f.children("/") where !f.isGroup("/" + name) {
            let t = Tensor([0])
            try f.read("/" + name, into: t)
            out[name] = t
        }
        return out
    }

    public static func loadEncoder(model: MultiTaskModel, path: String) throws {
        let raw = try readTensors(path)
        var named: [String: Tensor] = [:]
        for (k, v) in raw {
            if k.hasPrefix("fc.") { continue }
            named[k.hasPrefix("encoder.") ? k : "encoder." + k] = v
        }
        if named.isEmpty { throw MTLError("\(path): no tensors at the file root (expected torchvision names like conv1.weight)") }
        try model.load(named, source: path, only: "encoder.")
    }
}
