import Foundation
import MTLCore
import MTLModels
import MTLNN
import MTLData
import MTLDist
import MTLMethods
import MTLTrain

/// Set by SIGTERM/SIGUSR1 (Slurm's pre-emption warning); read at step boundaries.
nonisolated(unsafe) var stopSignalReceived: Int32 = 0

/// Installs the handlers that turn SIGTERM / SIGUSR1 into "checkpoint at the next step boundary, exit 0".
public func installStopSignalHandlers() {
    signal(SIGTERM) { _ in stopSignalReceived = 1 }
    signal(SIGUSR1) { _ in stopSignalReceived = 1 }
}

/// The outcome of `mtl train`.
public struct TrainSummary {
    public var finalStep: Int
    public var stoppedBySignal: Bool
    public var lastLosses: [(String, Double)]
    public var evaluation: [TaskMetrics]
    public var checkpoint: String?
}

/// Everything a run is built from, shared by `train`, `eval` and tests.
public struct RunSetup {
    public let config: Config
    public let model: MultiTaskModel
    public let taskNames: [String]
    public let lossKinds: [String]
    public let classes: [Int]
    public let roles: [TaskRole]

    /// Builds the model for `config`, reading class counts from the dataset where the config leaves them 0.
    public init(config: Config, dataset: MTDataset?) throws {
        self.config = config
        var specTasks: [(name: String, channels: Int)] = []
        var classes: [Int] = []
        for t in config.tasks {
            var k = t.classes
            if t.loss == "ce" && k <= 0 {
                guard let n = dataset?.numClasses(t.name) else {
                    throw MTLError("tasks.\(t.name).classes: not set and the dataset gives no num_classes for \(t.name)")
                }
                k = n
            }
            classes.append(k)
            specTasks.append((t.name, TaskLoss.channels(task: t.name, loss: t.loss, classes: k)))
        }
        var spec = ModelSpec(encoder: config.model.encoder, width: config.model.width,
                             outputStride: config.model.outputStride, decoder: config.model.decoder, neck: config.model.neck,
                             headChannels: config.model.headChannels, fuseUpsample: config.model.fuseUpsample,
                             tasks: specTasks, tif: config.model.tif, kem: config.model.kem)
        spec.swin = config.model.swin
        spec.mtcp = config.model.mtcp
        model = try MultiTaskModel(spec, seed: UInt64(config.train.seed))
        taskNames = config.tasks.map { $0.name }
        lossKinds = config.tasks.map { $0.loss }
        self.classes = classes
        roles = config.tasks.map { $0.role }
        for (t, tc) in config.tasks.enumerated() where tc.frozen {
            for p in model.decoder.taskParameters[t] { p.trainable = false }
        }
        if !config.model.pretrained.isEmpty {
            try Pretrained.loadEncoder(model: model, path: config.model.pretrained)
        }
        if config.model.freezeEncoder { model.freezeEncoder() }
    }
}

/// Debugging options of `mtl train`.
public struct TrainerOptions {
    /// Every K steps, compare a checksum of every parameter and buffer across ranks; stop naming the first
    /// tensor that differs (0 = off).
    public var checkConsistency = 0
    /// Ranks other than 0 write `rank-K.log` in the run directory.
    public var logAllRanks = false
    public init() {}
}

/// The training loop: data shard → StepEngine → rank 0 logs, metrics, checkpoints; evaluation; resume;
/// stop on signal at a step boundary agreed by all ranks.
public final class Trainer {
    public let config: Config
    public let comm: Communicator
    public let runDir: String
    let setup: RunSetup
    let dataset: MTDataset
    let valDataset: MTDataset?
    let engine: StepEngine
    /// Auto-λ's look-ahead before each step (method autol), else nil.
    let autol: AutoLambdaStep?
    let sampler: ShardedSampler
    let schedule: LRSchedule
    let store: CheckpointStore
    let log: RunLog?
    var startStep = 0

    let options: TrainerOptions
    let rankLog: AppendOnlyFile?
    /// Rank 0's exclusive hold on the run directory (nil on other ranks or with MTL_RUN_LOCK=off).
    let runLock: RunDirectoryLock?
    /// Performance switches of the config that the environment overrode (logged at the start).
    let performanceOverrides: [String]

    public init(config: Config, runDir: String, comm: Communicator, resume: String?,
                options: TrainerOptions = TrainerOptions()) throws {
        self.config = config
        self.options = options
        self.comm = comm
        self.runDir = runDir
        // Before anything is written: a second job on this directory stops here (all ranks, via abort).
        runLock = comm.isRoot ? try RunDirectoryLock.acquire(directory: runDir) : nil
        let (syncOptions, overrides) = try Runtime.applyPerformanceSwitches(
            config, threads: Trainer.threadCount(configured: config.train.threads, comm: comm))
        performanceOverrides = overrides
        try Runtime.selectConvBackend(config.model.convBackend)

        let names = config.tasks.map { $0.name }
        dataset = try MTDataset(path: config.data.path, split: config.data.trainSplit, tasks: names, cache: config.data.cache)
        valDataset = Trainer.hasSplit(config.data.path, config.data.valSplit)
            ? try MTDataset(path: config.data.path, split: config.data.valSplit, tasks: names) : nil
        setup = try RunSetup(config: config, dataset: dataset)
        let model = setup.model
        if config.model.syncBN && comm.size > 1 { model.setStatsReducer(comm) }

        let method = try makeMethod(name: config.method.name, taskNames: names, roles: setup.roles,
                                    params: try methodParameters(name: config.method.name, groups: config.method.params))
        guard let level = GradientLevel(rawValue: config.method.level) else {
            throw MTLError("method.level: expected representation|parameters, found '\(config.method.level)'")
        }
        if level == .parameters && (method.needsGram || method.needsGradients) && model.encoderFrozen
            && model.decoder.sharedParameters.isEmpty {
            throw MTLError("method.level: parameters needs shared parameters, but model.freeze_encoder=true leaves none (the decoder has no shared modules); use method.level=representation")
        }
        let optimizer = makeOptimizer(config.optim, model.parameters.filter { $0.trainable })
        let losses = try config.tasks.map { try TaskLoss(kind: $0.loss, posWeight: Float($0.posWeight)) }
        engine = StepEngine(model: model, losses: losses, lossWeights: config.tasks.map { $0.weight },
                            roles: setup.roles, method: method, level: level, optimizer: optimizer, comm: comm,
                            seed: UInt64(config.train.seed), skipNonFinite: config.train.nanPolicy == "skip",
                            sync: syncOptions)
        autol = try AutoLambdaStep.make(engine: engine, config: config, comm: comm)
        sampler = try ShardedSampler(count: dataset.count, globalBatch: config.train.batchSize, rank: comm.rank,
                                     worldSize: comm.size, seed: UInt64(config.train.seed))
        schedule = LRSchedule(config.schedule, baseLR: config.optim.lr, totalSteps: config.train.steps)
        store = CheckpointStore(directory: runDir + "/checkpoints")
        log = comm.isRoot ? try RunLog(directory: runDir, echo: true) : nil

        // The same initial parameters everywhere (rank 0's), whatever each rank computed. Being a
        // collective, it also keeps the other ranks from writing before rank 0 holds the lock.
        for (_, t) in model.stateTensors() { comm.broadcast(t.buffer, root: 0) }

        if options.logAllRanks && !comm.isRoot {
            try FileManager.default.createDirectory(atPath: runDir, withIntermediateDirectories: true)
            rankLog = try AppendOnlyFile(path: runDir + "/rank-\(comm.rank).log")
        } else {
            rankLog = nil
        }

        if let resume {
            if resume == "auto" {
                if let (path, contents) = try newestReadableCheckpoint() {
                    try restore(path, contents: contents)
                } else {
                    log?.line("resume auto: no checkpoint in \(runDir)/checkpoints, starting at step 0")
                }
            } else {
                try restore(resume)
            }
        }
        try log?.writeConfig(config.yaml())
    }

    /// train.threads if set; else what the launcher exported (MTL_THREADS, SLURM_CPUS_PER_TASK,
    /// OMP_NUM_THREADS, in that order); else this node's cores divided by the ranks on it.
    public static func threadCount(configured: Int, comm: Communicator) -> Int {
        if configured > 0 { return configured }
        let env = ProcessInfo.processInfo.environment
        for key in ["MTL_THREADS", "SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"] {
            if let v = env[key].flatMap({ Int($0) }), v > 0 { return v }
        }
        return max(1, ProcessInfo.processInfo.activeProcessorCount / max(1, comm.localSize))
    }

    static func hasSplit(_ path: String, _ split: String) -> Bool {
        guard let f = try? H5File.open(path) else { return false }
        defer { f.close() }
        return f.exists("/" + split)
    }

    // MARK: checkpoints

    /// Without SyncBN every rank keeps its own BatchNorm running statistics; like PyTorch DDP
    /// (broadcast_buffers), rank 0's are the model's: broadcast before evaluating or saving, so that
    /// the distributed evaluation equals `mtl eval` of the checkpoint.
    func broadcastBuffers() {
        guard comm.size > 1 else { return }
        for b in setup.model.buffers { comm.broadcast(b.value.buffer, root: 0) }
    }

    func save(nextStep: Int) throws -> String? {
        broadcastBuffers()
        guard comm.isRoot else { return nil }
        let tensors = setup.model.stateTensors().map { ("model." + $0.0, $0.1) } + engine.optimizer.stateTensors()
        let methodState = engine.method.stateValues()
        let json = try JSONSerialization.data(withJSONObject: methodState.mapValues { $0.map { "\($0)" } },
                                              options: [.sortedKeys])
        let meta = ["format": "mtl-checkpoint", "version": "1", "step": "\(nextStep)", "world_size": "\(comm.size)",
                    "seed": "\(config.train.seed)", "config": config.yaml(),
                    "method": config.method.name, "method_state": String(decoding: json, as: UTF8.self)]
        let path = try store.save(step: nextStep, tensors: tensors, meta: meta, keep: config.checkpoint.keep)
        log?.line("checkpoint \(path)")
        return path
    }

    func restore(_ path: String, contents: (tensors: [String: Tensor], meta: [String: String])? = nil) throws {
        let (tensors, meta) = try contents ?? CheckpointStore.load(path)
        do {
            var modelTensors: [String: Tensor] = [:]
            for (k, v) in tensors where k.hasPrefix("model.") { modelTensors[String(k.dropFirst(6))] = v }
            try setup.model.load(modelTensors, source: path)
            try engine.optimizer.loadState(tensors)
            if let js = meta["method_state"], let obj = try JSONSerialization.jsonObject(with: Data(js.utf8)) as? [String: [String]] {
                try engine.method.loadState(obj.mapValues { $0.compactMap { Double($0) } })
            }
        } catch let e as MTLError {
            throw mismatchError(e, checkpoint: path, storedConfig: meta["config"])
        }
        guard let s = meta["step"].flatMap({ Int($0) }) else { throw MTLError("\(path): checkpoint has no step") }
        startStep = s
        let oldWorld = meta["world_size"] ?? "?"
        log?.line("resumed from \(path) at step \(s) (saved with world size \(oldWorld), now \(comm.size))")
    }

    // MARK: the loop

    public func run() throws -> TrainSummary {
        let steps = config.train.steps
        let names = setup.taskNames
        // Augmentation draws are keyed by (seed, epoch, global sample index): independent of the ranks.
        let augmentation = config.data.augment ? Augmentation(seed: UInt64(config.train.seed)) : nil
        // The loader thread owns `dataset` from here on (evaluation uses its own MTDataset).
        let loader = config.data.prefetch > 0
            ? PrefetchLoader(dataset: dataset, sampler: sampler, startStep: startStep, depth: config.data.prefetch,
                             augment: augmentation, endStep: steps) : nil
        defer { loader?.stop() }
        autol?.begin(steps: steps - startStep, prefetch: config.data.prefetch)
        defer { autol?.end() }
        let augmenter = augmentation.map { Augmenter($0, imageMean: dataset.imageMean, imageStd: dataset.imageStd) }
        let syncBatch = Batch()
        var last: StepStats? = nil
        var lastCheckpoint: String? = nil
        var windowStart = Date()
        var windowSamples = 0
        let runStart = Date()
        var stoppedBySignal = false
        var step = startStep
        for line in Runtime.report(threadsPerRank: Threads.count, ranks: comm.size) { log?.line(line) }
        for line in config.notes.lines + performanceOverrides { log?.line(line) }
        // A collective: every rank computes it (log is nil on ranks other than 0).
        let placement = RankPlacement.summary(comm.placements(threads: Threads.count))
        log?.line("placement: " + placement)
        log?.line("training \(names.joined(separator: ", ")) with \(config.method.name) on \(comm.size) rank(s) × \(Threads.count) thread(s); \(setup.model.parameterCount) parameters; global batch \(config.train.batchSize); steps \(startStep)..<\(steps); gradient all-reduce: \(engine.sync.buckets.map { "\($0.bucketCount) bucket(s) overlapped with the backward" } ?? (comm.size > 1 ? "blocking" : "none"))")
        while step < steps {
            let epoch = sampler.epoch(ofStep: step)
            let epochEnded = step > 0 && sampler.epoch(ofStep: step - 1) != epoch
            let t0 = Date()
            let batch: Batch
            if let loader {
                let (loaded, b) = try loader.next()
                precondition(loaded == step, "loader returned step \(loaded) for step \(step)")
                batch = b
            } else {
                try dataset.load(sampler.localBatch(step: step), into: syncBatch)
                augmenter?.apply(to: syncBatch, epoch: epoch)
                batch = syncBatch
            }
            let lr = schedule.lr(step: step)
            engine.model.prepareStep(seed: engine.seed, step: step, sampleIndices: batch.indices)
            if let autol { try autol.updateWeights(batch: batch, lr: Float(lr)) }
            let stats = try engine.step(batch: batch, stepIndex: step, epoch: epoch, epochEnded: epochEnded, lr: Float(lr))
            let stepTime = Date().timeIntervalSince(t0)
            if last == nil && Conv2d.backend == .onednn {
                log?.line("oneDNN convolution kernels (primitives created by the first step): \(OneDNN.implementationSummary)")
            }
            last = stats
            windowSamples += config.train.batchSize
            step += 1

            // One tiny all-reduce per step: the stop flag (max) and this rank's step time spread.
            var agree: [Double] = [Double(stopSignalReceived), stepTime, -stepTime]
            agree.withUnsafeMutableBufferPointer { comm.allReduceMax($0) }
            let stop = agree[0] > 0

            if let rankLog {
                let line = String(format: "step %d | %@ | %.1f ms (compute %.1f, comm %.1f)\n", step,
                                  zip(names, stats.losses).map { "\($0.0) \(String(format: "%.4f", $0.1))" }.joined(separator: " "),
                                  stepTime * 1000, stats.computeSeconds * 1000, stats.commSeconds * 1000)
                rankLog.append(line)
            }
            if options.checkConsistency > 0 && step % options.checkConsistency == 0 { try checkConsistency(step: step) }

            let logNow = step % max(1, config.log.every) == 0 || step == steps || stop
            if logNow, let log {
                let elapsed = Date().timeIntervalSince(windowStart)
                let sps = Double(windowSamples) / max(elapsed, 1e-9)
                let eta = Double(steps - step) * elapsed / Double(max(1, windowSamples / config.train.batchSize))
                log.line(formatProgress(step: step, total: steps, losses: Array(zip(names, stats.losses)), lr: lr,
                                        samplesPerSecond: sps, etaSeconds: eta)
                         + String(format: " | step %.0f–%.0f ms over ranks", -agree[2] * 1000, agree[1] * 1000)
                         + (stats.skipped ? " | SKIPPED (non-finite)" : ""))
                var rec: [String: Any] = ["kind": "train", "step": step, "epoch": epoch, "lr": lr,
                                          "samples_per_s": sps, "grad_norm": stats.gradNorm,
                                          "step_time_max_s": agree[1], "step_time_min_s": -agree[2],
                                          "compute_s": stats.computeSeconds, "comm_s": stats.commSeconds,
                                          "skipped": stats.skipped]
                for (n, l) in zip(names, stats.losses) { rec["loss.\(n)"] = l }
                for (n, c) in zip(names, stats.coefficients) { rec["coef.\(n)"] = c }
                for (k, v) in stats.methodLogs { rec["method.\(k)"] = v }
                log.record(rec)
                windowStart = Date()
                windowSamples = 0
            }
            if config.checkpoint.every > 0 && step % config.checkpoint.every == 0 && step < steps && !stop {
                lastCheckpoint = try save(nextStep: step)
            }
            if config.train.evalEvery > 0 && step % config.train.evalEvery == 0 && step < steps && !stop {
                _ = try evaluate(step: step)
            }
            if stop {
                log?.line("stop signal received: checkpointing at step \(step) and exiting (resume with --resume auto)")
                stoppedBySignal = true
                break
            }
        }
        if step > startStep || lastCheckpoint == nil { lastCheckpoint = try save(nextStep: step) ?? lastCheckpoint }
        let evaluation = stoppedBySignal ? [] : try evaluate(step: step)
        log?.line(String(format: "done: %d steps in %.1f s", step - startStep, Date().timeIntervalSince(runStart)))
        return TrainSummary(finalStep: step, stoppedBySignal: stoppedBySignal,
                            lastLosses: last.map { Array(zip(names, $0.losses)) } ?? [],
                            evaluation: evaluation, checkpoint: lastCheckpoint)
    }

    /// Rank 0's per-tensor checksums are broadcast; every rank compares its own and all ranks agree (max)
    /// on the first mismatching tensor, so the whole job stops with the same message.
    func checkConsistency(step: Int) throws {
        // Parameters always; BatchNorm statistics only with SyncBN (otherwise each rank keeps its own
        // until they are broadcast before evaluation and saving, as in PyTorch DDP).
        let tensors = config.model.syncBN ? setup.model.stateTensors()
            : setup.model.parameters.map { ($0.name, $0.value) }
        var mine = [Double](repeating: 0, count: 2 * tensors.count)
        for (i, (_, t)) in tensors.enumerated() {
            var s = 0.0, w = 0.0
            for k in 0..<t.count {
                let v = Double(t[k])
                s += v
                w += v * Double(k % 7 + 1)
            }
            mine[2 * i] = s
            mine[2 * i + 1] = w
        }
        var root = mine
        root.withUnsafeMutableBufferPointer { comm.broadcast($0, root: 0) }
        var firstBad = [Double(tensors.count)]
        for i in 0..<tensors.count {
            let same = mine[2 * i] == root[2 * i] && mine[2 * i + 1] == root[2 * i + 1]
            if !same { firstBad[0] = Double(i); break }
        }
        firstBad[0] = -firstBad[0]
        firstBad.withUnsafeMutableBufferPointer { comm.allReduceMax($0) }   // max of -index = min index
        let index = Int(-firstBad[0])
        if index < tensors.count {
            throw MTLError("consistency check at step \(step): tensor \(tensors[index].0) differs across ranks")
        }
    }

    func evaluate(step: Int) throws -> [TaskMetrics] {
        guard let valDataset else { return [] }
        broadcastBuffers()
        let results = try Evaluator.run(model: setup.model, dataset: valDataset, losses: setup.lossKinds,
                                        classes: setup.classes, comm: comm,
                                        batchSize: max(1, config.train.batchSize / comm.size))
        if let log {
            log.line("evaluation at step \(step) on \(config.data.valSplit) (\(valDataset.count) samples):\n" + Evaluator.table(results))
            var rec: [String: Any] = ["kind": "eval", "step": step, "split": config.data.valSplit]
            for r in results { for (k, v) in r.values { rec["\(r.task).\(k)"] = v } }
            log.record(rec)
        }
        return results
    }
}

