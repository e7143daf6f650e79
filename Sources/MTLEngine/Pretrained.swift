import MTLCore
import MTLModels

/// Initialises the encoder from an HDF5 file of PyTorch-named tensors, one dataset per tensor at the
/// file's root (`conv1.weight`, `layer1.0.bn1.running_mean`, ... as written by tools/torch_to_h5.py from a
/// torchvision state_dict). Names may carry an `encoder.` prefix or none; `fc.*` is ignored.
/// A file that also holds `decoder.*` tensors (tools/mtformer_to_h5.py: a trained MTFormer for KEM-R)
/// initialises the decoder from them too: each must be a tensor of the model with its shape; the
/// decoder tensors the file does not have (KEM's memory module) keep their initialisation.
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
        var decoder: [String: Tensor] = [:]
        for (k, v) in raw {
            if k.hasPrefix("fc.") { continue }
            if k.hasPrefix("decoder.") { decoder[k] = v; continue }
            named[k.hasPrefix("encoder.") ? k : "encoder." + k] = v
        }
        if named.isEmpty { throw MTLError("\(path): no tensors at the file root (expected torchvision names like conv1.weight)") }
        try model.load(named, source: path, only: "encoder.")
        guard !decoder.isEmpty else { return }
        let own = Dictionary(uniqueKeysWithValues: model.stateTensors().filter { $0.0.hasPrefix("decoder.") })
        if let extra = decoder.keys.sorted().first(where: { own[$0] == nil }) {
            throw MTLError("\(path): tensor \(extra) is not in the model (model.decoder \(model.spec.decoder); check model.\(model.spec.decoder).* against the file)")
        }
        let names = decoder.keys.sorted()
        for name in names {
            let src = decoder[name]!, t = own[name]!
            guard src.count == t.count && (src.shape == t.shape || t.shape.isEmpty) else {
                throw MTLError("\(path): tensor \(name): expected shape \(t.shape), found \(src.shape)")
            }
        }
        for name in names { own[name]!.data.update(from: decoder[name]!.data, count: own[name]!.count) }
    }
}
