import Foundation
import MTLCore
import MTLTrain

extension Trainer {
    /// `--resume auto`: the newest checkpoint in the run directory that reads completely (HDF5's
    /// checksums of the file's metadata and of every dataset pass). A newer file that does not —
    /// truncated, a flipped byte — is skipped with a warning naming it. Rank 0 decides and
    /// broadcasts the step, so that every rank resumes from the same file. Nil when there is no
    /// checkpoint at all; an error when there are some and none can be read.
    func newestReadableCheckpoint() throws -> (String, (tensors: [String: Tensor], meta: [String: String]))? {
        var chosen = [-1.0]
        var contents: (tensors: [String: Tensor], meta: [String: String])? = nil
        var skipped: [String] = []
        if comm.isRoot {
            for (step, path) in store.list().reversed() {
                do {
                    contents = try CheckpointStore.load(path)
                    chosen[0] = Double(step)
                    break
                } catch {
                    let message = (error as? MTLError)?.message ?? "\(error)"
                    skipped.append(message)
                    let reason = message.hasPrefix(path + ": ") ? String(message.dropFirst(path.count + 2)) : message
                    let warning = "warning: resume auto: skipping \(path), it cannot be read (\(reason))"
                    FileHandle.standardError.write(Data((warning + "\n").utf8))
                    log?.line(warning, echo: false)
                }
            }
            if chosen[0] < 0, !skipped.isEmpty { chosen[0] = -2 }   // thrown after the broadcast: no rank waits in it
        }
        chosen.withUnsafeMutableBufferPointer { comm.broadcast($0, root: 0) }
        if chosen[0] == -2 {
            throw MTLError("resume auto: no checkpoint in \(store.directory) can be read"
                           + (skipped.first.map { " (newest: \($0))" } ?? "") + "; pass --resume PATH or move them away to start afresh")
        }
        guard chosen[0] >= 0 else { return nil }
        let path = store.directory + "/" + CheckpointStore.fileName(step: Int(chosen[0]))
        if let contents { return (path, contents) }
        return (path, try CheckpointStore.load(path))
    }

    /// A checkpoint that does not fit the model: the tensor (in `error`) and the config keys that
    /// differ between the checkpoint's stored config and the current one, which is what to change.
    func mismatchError(_ error: MTLError, checkpoint: String, storedConfig: String?) -> MTLError {
        guard let storedConfig else {
            return MTLError("\(error.message) (the checkpoint stores no config to compare with)")
        }
        // Keys that decide which tensors exist and their shapes come first; the rest after.
        let structural: (String) -> Bool = { k in
            k.hasPrefix("model.") || k.hasPrefix("tasks.") || k == "optim.name" || k == "method.name" || k == "method.level"
        }
        let all = config.differences(fromStored: storedConfig)
        let relevant = all.filter { structural($0.key) && !["model.pretrained", "model.conv_backend", "model.sync_bn"].contains($0.key) }
        guard !relevant.isEmpty else {
            return MTLError("\(error.message); the checkpoint's stored config has the same model, tasks and method as the current one")
        }
        let text = relevant.prefix(4).map { "\($0.key) (\($0.stored) in the checkpoint, \($0.current) now)" }
            .joined(separator: ", ")
        return MTLError("\(error.message); the checkpoint was saved with a different config: \(text)"
                        + (relevant.count > 4 ? " and \(relevant.count - 4) more" : ""))
    }
}
