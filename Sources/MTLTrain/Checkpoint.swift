import Foundation
import MTLCore
#if canImport(Glibc)
import Glibc
#endif

/// Checkpoints: `<run>/checkpoints/step-00001234.h5`, one HDF5 file per save, plus a file
/// `latest` holding the newest file's name.
///
/// Layout (flat, readable with h5py): every tensor is a float32 dataset at the file ROOT
/// named exactly as given — PyTorch state_dict names such as `encoder.layer1.0.conv1.weight`
/// (HDF5 only treats '/' specially, so the dots are kept), optimizer state as
/// `optim.exp_avg.<param>` etc. Root attributes: `format` = "mtl-checkpoint" and `meta` = a
/// JSON object of strings (step, RNG keys and anything else the trainer stores; integers as
/// decimal strings so 64-bit values survive). In Python:
///
///     with h5py.File(p) as f: state = {k: torch.from_numpy(f[k][()]) for k in f}
///                             meta = json.loads(f.attrs["meta"])
///
/// Saving is atomic: write `step-N.h5.tmp`, flush and close, fsync the file, rename, fsync
/// the directory, then replace `latest` the same way, and only then delete old files, so a
/// crash at any point leaves the previous checkpoint and a `latest` that names a complete file.
/// A failure at any step (disk full, EIO) removes the `.tmp` and throws one line naming the file,
/// the OS reason and the checkpoint `latest` still names.
///
/// Files are checksummed (`H5File.create(_:checksummed:)`: HDF5 1.10 format, Fletcher-32 per
/// dataset; h5py built on HDF5 ≥ 1.10 reads them), so a truncated or bit-flipped file fails `load`.
public struct CheckpointStore {
    public let directory: String

    public init(directory: String) {
        self.directory = directory
    }

    public static func fileName(step: Int) -> String { String(format: "step-%08d.h5", step) }

    /// Writes the checkpoint for `step` and returns its path; keeps the newest `keep` files
    /// (keep ≤ 0: keep all). Tensor names must be unique and free of '/'.
    @discardableResult
    public func save(step: Int, tensors: [(String, Tensor)], meta: [String: String], keep: Int) throws -> String {
        var seen = Set<String>()
        for (name, _) in tensors {
            if name.isEmpty || name.contains("/") || name == "." {
                throw MTLError("checkpoint: tensor name '\(name)' is not a valid flat dataset name (empty or contains '/')")
            }
            if !seen.insert(name).inserted { throw MTLError("checkpoint: duplicate tensor name '\(name)'") }
        }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw MTLError("\(directory): cannot create the checkpoint directory (\(error.localizedDescription))")
        }
        let name = CheckpointStore.fileName(step: step)
        let path = directory + "/" + name, tmp = path + ".tmp"
        var meta = meta
        if meta["step"] == nil { meta["step"] = String(step) }
        let metaJSON = String(data: try JSONSerialization.data(withJSONObject: meta, options: [.sortedKeys]), encoding: .utf8)!

        // Leftovers of saves that crashed half-way (only rank 0 ever writes here).
        for n in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        where n.hasSuffix(".tmp") && (n.hasPrefix("step-") || n == "latest.tmp") {
            unlink(directory + "/" + n)
        }
        var installed = false   // step-N.h5 complete and in place
        do {
            do {
                let f = try H5File.create(tmp, checksummed: true)
                do {
                    for (n, t) in tensors { try f.write(n, t) }
                    try f.setAttribute("/", "format", "mtl-checkpoint")
                    try f.setAttribute("/", "meta", metaJSON)
                    try f.closeChecked()
                } catch {
                    f.close()
                    throw error
                }
                if let code = WriteFaultInjection.error(forWriteTo: tmp) {
                    throw MTLError("\(tmp): cannot write (\(osReason(code)))")
                }
                try fsyncPath(tmp)
                if let code = WriteFaultInjection.error(forWriteTo: path + "#rename") {
                    throw MTLError("\(path): cannot rename \(tmp) into place (\(osReason(code)))")
                }
                if rename(tmp, path) != 0 { throw MTLError("\(path): cannot rename \(tmp) into place (\(osReason(errno)))") }
                installed = true
                try fsyncPath(directory)
            } catch {
                unlink(tmp)
                throw error
            }
            try writeAtomically(directory + "/latest", name + "\n")
        } catch let e as MTLError {
            let newest = latest().map { "'latest' still names \($0)" } ?? "no earlier complete checkpoint"
            throw MTLError("\(e.message); checkpoint of step \(step) "
                           + (installed ? "written to \(path) but not made durable/latest, " : "not saved, ") + newest)
        }
        if keep > 0 {
            let all = list()
            var excess = all.count - keep
            for (_, old) in all where excess > 0 && old != path {   // oldest first; never the one just written
                unlink(old)
                excess -= 1
            }
        }
        return path
    }

    /// Checkpoint files in the directory, oldest (lowest step) first.
    public func list() -> [(step: Int, path: String)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.compactMap { n -> (Int, String)? in
            guard n.hasPrefix("step-"), n.hasSuffix(".h5"), let s = Int(n.dropFirst(5).dropLast(3)) else { return nil }
            return (s, directory + "/" + n)
        }.sorted { $0.0 < $1.0 }
    }

    /// The full path named by `latest`, or nil if there is none or the file is missing.
    public func latest() -> String? {
        guard let data = FileManager.default.contents(atPath: directory + "/latest"),
              let text = String(data: data, encoding: .utf8) else { return nil }
        let name = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if name.isEmpty || name.contains("/") { return nil }
        let path = directory + "/" + name
        return FileManager.default.fileExists(atPath: path) ? path : nil
    }

    /// Reads every dataset (as float32, nested groups joined with '/') and the `meta` attribute
    /// (empty when absent, e.g. a pretrained-weights file from tools/torch_to_h5.py).
    public static func load(_ path: String) throws -> (tensors: [String: Tensor], meta: [String: String]) {
        let f = try H5File.open(path)
        defer { f.close() }
        var tensors: [String: Tensor] = [:]
        func walk(_ group: String) throws {
            for child in try f.children(group) {
                let full = group == "/" ? child : group + "/" + child
                if f.isGroup(full) { try walk(full); continue }
                switch try f.typeClass(full) {
                case .string, .other:
                    throw MTLError("\(path): dataset \(full): expected a numeric tensor, found \(try f.typeClass(full).rawValue)")
                default:
                    let t = Tensor([0])
                    try f.read(full, into: t)
                    tensors[full] = t
                }
            }
        }
        try walk("/")
        var meta: [String: String] = [:]
        if let text = f.stringAttribute("/", "meta") {
            guard let obj = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
                throw MTLError("\(path): attribute 'meta': expected a JSON object, found \(text.prefix(60))")
            }
            for (k, v) in obj { meta[k] = (v as? String) ?? "\(v)" }
        }
        return (tensors, meta)
    }
}
