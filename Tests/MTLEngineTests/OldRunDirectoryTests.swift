import Foundation
import XCTest
import MTLTestSupport
@testable import MTLCore
import MTLDist
@testable import MTLEngine
@testable import MTLTrain

/// Run directories written before the component registry (commit 7cb42ee): their resolved config.yaml,
/// and the config their checkpoints store, list a `model.swin` group whatever the encoder. Resume and
/// predict read them (the group restates Swin's defaults and is dropped); a user's file with the same
/// group, an override of it, and an old run whose group is not the defaults keep the one-line error.
final class OldRunDirectoryTests: XCTestCase {
    /// What `Config.yaml()` wrote before the registry (`git show 7cb42ee^:Sources/MTLTrain/Config.swift`),
    /// for the run of `userYAML`: `head:` where `decoder:` is now, no `neck:`, and `swin:` under a ResNet.
    static func oldResolvedYAML(data: String, steps: Int, swin: String = "    window: 7\n    shift_rule: dense\n") -> String {
        var out = """
        data:
          path: \(data)
          train_split: train
          val_split: val
          cache: false
          augment: false
          prefetch: 2
        model:
          encoder: resnet18
          width: 4
          output_stride: 8
          head: bench
          head_channels: 8
          fuse_upsample: bilinear
          pretrained: ""
          sync_bn: false
          conv_backend: auto
          conv_dx: transposed
          freeze_encoder: false
          drop_path_rate: 0.0
          swin:

        """
        out += swin
        out += "tasks:\n"
        for (task, loss) in [("seg", "ce"), ("depth", "l1"), ("normals", "cosine")] {
            out += "  \(task):\n    role: \(task == "seg" ? "primary" : "auxiliary")\n    loss: \(loss)\n    classes: 0\n"
                + "    weight: 1.0\n    frozen: false\n    pos_weight: 1.0\n"
        }
        out += """
        train:
          steps: \(steps)
          batch_size: 4
          seed: 3
          eval_every: 0
          threads: 1
          nan_policy: stop
          blas_threads: mtl
        optim:
          name: adam
          lr: 0.001
          momentum: 0.9
          nesterov: false
          weight_decay: 0.0
          beta1: 0.9
          beta2: 0.999
          eps: 1.0e-08
        schedule:
          name: constant
          warmup_steps: 0
          warmup_factor: 0.001
          step_size: 1000
          gamma: 0.1
          power: 0.9
          min_lr: 0.0
        log:
          every: 1
        checkpoint:
          every: 0
          keep: 3
        dist:
          overlap: true
          bucket_mb: 25.0
        method:
          name: ew
          level: representation

        """
        return out
    }

    /// The same run as a user writes it today.
    static func userYAML(data: String, steps: Int) -> String {
        """
        data: {path: \(data)}
        model: {encoder: resnet18, width: 4, output_stride: 8, decoder: bench, head_channels: 8}
        tasks:
          seg: {role: primary, loss: ce}
          depth: {loss: l1}
          normals: {loss: cosine}
        train: {steps: \(steps), batch_size: 4, seed: 3, threads: 1}
        optim: {name: adam, lr: 0.001}
        log: {every: 1}
        """
    }

    static func swinError(_ source: String) -> String {
        "\(source): model.swin: parameters of encoder swin_t|swin_s|swin_b, but model.encoder is resnet18 (did you mean model.encoder=swin_t?)"
    }

    func message(_ body: () throws -> Any) -> String {
        do { _ = try body(); return "" } catch { return (error as? MTLError)?.message ?? "\(error)" }
    }

    /// Trains 4 steps into `dir`/run, then turns it into a run directory of the old writer: its
    /// config.yaml and its checkpoint's stored config become `oldResolvedYAML` (with `swin`).
    func makeOldRun(_ dir: String, swin: String? = nil) throws -> (run: String, checkpoint: String, old: String) {
        let data = try makeSynth(dir)
        try Self.userYAML(data: data, steps: 4).write(toFile: dir + "/user.yaml", atomically: true, encoding: .utf8)
        let run = dir + "/run"
        let trained = try runProcess([try mtlBinary(), "train", "--config", dir + "/user.yaml", "--run-dir", run])
        XCTAssertEqual(trained.status, 0, trained.err)
        let checkpoint = run + "/checkpoints/" + CheckpointStore.fileName(step: 4)
        let old = swin.map { Self.oldResolvedYAML(data: data, steps: 4, swin: $0) } ?? Self.oldResolvedYAML(data: data, steps: 4)
        try old.write(toFile: run + "/config.yaml", atomically: true, encoding: .utf8)
        let saved = try CheckpointStore.load(checkpoint)
        var meta = saved.meta
        meta["config"] = old
        try CheckpointStore(directory: run + "/checkpoints")
            .save(step: 4, tensors: saved.tensors.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }, meta: meta, keep: 3)
        return (run, checkpoint, old)
    }

    func testOldRunDirectoryResumesAndPredicts() throws {
        let dir = makeTemporaryDirectory("mtl-oldrun")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (run, checkpoint, old) = try makeOldRun(dir)
        let runConfig = run + "/config.yaml"
        XCTAssertTrue(Config.isRunDirectoryConfig(runConfig))

        // It reads to the run's config: the swin group dropped, head read as decoder, both noted.
        let user = try Config.load(path: dir + "/user.yaml")
        let read = try Config.load(path: runConfig, runConfig: true)
        XCTAssertEqual(read, user)
        XCTAssertEqual(read.notes.lines, [
            "\(runConfig): model.head is the old name of model.decoder; read as model.decoder",
            "\(runConfig): model.swin restates Swin's defaults for encoder resnet18 (a config.yaml written before the component registry); dropped",
        ])
        XCTAssertFalse(read.yaml().contains("swin:"), "re-resolved without the group")

        // Predict / eval: from the checkpoint's stored config, and from the run directory's config.yaml.
        let comm = SingleProcessCommunicator()
        let fromMeta = try LoadedCheckpoint.load(checkpoint: checkpoint, config: nil, overrides: [], split: "val", comm: comm)
        XCTAssertEqual(fromMeta.config, user)
        let fromFile = try LoadedCheckpoint.load(checkpoint: checkpoint, config: runConfig, overrides: [], split: "val", comm: comm)
        XCTAssertEqual(fromFile.config, user)
        let mtl = try mtlBinary()
        let predicted = try runProcess([mtl, "predict", "--checkpoint", checkpoint, "--out", dir + "/pred", "--samples", "1"])
        XCTAssertEqual(predicted.status, 0, predicted.err)

        // The same text in a user's file (not a run directory's config.yaml) is refused, in one line.
        let copy = dir + "/old.yaml"
        try old.write(toFile: copy, atomically: true, encoding: .utf8)
        XCTAssertFalse(Config.isRunDirectoryConfig(copy))
        XCTAssertEqual(message { try Config.load(path: copy) }, Self.swinError(copy))
        XCTAssertEqual(message { try LoadedCheckpoint.load(checkpoint: checkpoint, config: copy, overrides: [], split: "val", comm: comm) },
                       Self.swinError(copy))
        let refused = try runProcess([mtl, "train", "--config", copy, "--run-dir", run, "--resume", "auto"])
        XCTAssertEqual(refused.status, 1)
        XCTAssertEqual(refused.err, "error: \(Self.swinError(copy))\n")
        // The check is on the file's role, not its name: a config.yaml outside a run directory is a user's.
        try FileManager.default.createDirectory(atPath: dir + "/plain", withIntermediateDirectories: true)
        try old.write(toFile: dir + "/plain/config.yaml", atomically: true, encoding: .utf8)
        XCTAssertFalse(Config.isRunDirectoryConfig(dir + "/plain/config.yaml"))
        // An override of the group is the user's, even when it restates the default.
        XCTAssertEqual(message { try Config.load(path: runConfig, overrides: ["model.swin.window=7"], runConfig: true) },
                       Self.swinError("override 'model.swin.window=7'"))
        XCTAssertEqual(message { try LoadedCheckpoint.load(checkpoint: checkpoint, config: nil, overrides: ["model.swin.window=7"],
                                                           split: "val", comm: comm) },
                       Self.swinError("override 'model.swin.window=7'"))

        // A checkpoint that does not fit names the setting that differs, not the old writer's spellings
        // (head for decoder, no neck, the swin group).
        let misfit = try runProcess([mtl, "train", "--config", runConfig, "--run-dir", run, "--resume", "auto",
                                     "--set", "model.width=8"])
        XCTAssertEqual(misfit.status, 1)
        XCTAssertTrue(misfit.err.contains("; the checkpoint was saved with a different config: model.width (4 in the checkpoint, 8 now)\n"),
                      misfit.err)

        // Resume through `mtl train` from the run directory's own config.yaml: it continues from step 4
        // and rewrites config.yaml in today's form.
        let resumed = try runProcess([mtl, "train", "--config", runConfig, "--run-dir", run, "--resume", "auto",
                                      "--set", "train.steps=6"])
        XCTAssertEqual(resumed.status, 0, resumed.err)
        let log = try String(contentsOfFile: run + "/train.log", encoding: .utf8)
        XCTAssertTrue(log.contains("resumed from \(run)/checkpoints/step-00000004.h5 at step 4"), log)
        XCTAssertTrue(log.contains("model.swin restates Swin's defaults for encoder resnet18"), log)
        XCTAssertEqual(try trainRecords(run).compactMap { $0["step"] as? Int }, Array(1...6))
        let rewritten = try String(contentsOfFile: runConfig, encoding: .utf8)
        XCTAssertFalse(rewritten.contains("swin:"), rewritten)
        XCTAssertTrue(rewritten.contains("  decoder: bench\n"), rewritten)
    }

    /// An old run whose swin group is not Swin's defaults (the old reader ignored it under a ResNet):
    /// what the run meant is not what was built, so it is the error, not a guess.
    func testOldRunDirectoryWithNonDefaultSwinGroupIsRefused() throws {
        let dir = makeTemporaryDirectory("mtl-oldrun")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (run, checkpoint, _) = try makeOldRun(dir, swin: "    window: 12\n    shift_rule: dense\n")
        let runConfig = run + "/config.yaml"
        XCTAssertTrue(Config.isRunDirectoryConfig(runConfig))
        XCTAssertEqual(message { try Config.load(path: runConfig, runConfig: true) }, Self.swinError(runConfig))
        let comm = SingleProcessCommunicator()
        XCTAssertEqual(message { try LoadedCheckpoint.load(checkpoint: checkpoint, config: nil, overrides: [], split: "val", comm: comm) },
                       Self.swinError(checkpoint))
        let refused = try runProcess([try mtlBinary(), "train", "--config", runConfig, "--run-dir", run, "--resume", "auto"])
        XCTAssertEqual(refused.status, 1)
        XCTAssertEqual(refused.err, "error: \(Self.swinError(runConfig))\n")
    }
}
