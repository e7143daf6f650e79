import ArgumentParser
import Foundation
import MTLConvert
import MTLCore
import MTLData
import MTLDist
import MTLEngine
import MTLMethods
import MTLReport
import MTLTrain

/// Prints `error: <one line>` and exits non-zero. Under MPI the whole job is aborted so that
/// no rank is left waiting in a collective.
func fail(_ error: Error, comm: Communicator? = nil) -> Never {
    let message = (error as? MTLError)?.message ?? "\(error)"
    if let comm, comm.size > 1 { comm.abort(code: 1, reason: message) }
    FileHandle.standardError.write(Data("error: \(message)\n".utf8))
    // _exit, not exit: after a failed write HDF5's exit handler can crash on the half-closed file
    // (a full disk ended in SIGSEGV that way); nothing of ours is buffered except stdout.
    fflush(stdout)
    _exit(1)
}

struct MTL: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mtl",
        abstract: "Multi-task dense prediction training on MPI data-parallel ranks.",
        discussion: "Run under mpirun/srun for data parallelism; without them it runs as one process.",
        subcommands: [Train.self, Eval.self, PredictCommand.self, SynthCommand.self, Convert.self, Inspect.self, BalanceCommand.self, BenchCommand.self, ReportCommand.self, Doctor.self, KeysCommand.self])
}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Train a model from a YAML config.")
    @Option(help: "Experiment config (YAML).") var config: String
    @Option(name: .customLong("set"), help: "Override a config key: section.key=value (repeatable).")
    var overrides: [String] = []
    @Option(help: "Run directory (logs, metrics.jsonl, checkpoints). Default: runs/<config name>.")
    var runDir: String?
    @Option(help: "Resume: 'auto' (latest checkpoint in the run directory, if any) or a checkpoint path.")
    var resume: String?
    @Option(help: "Debug: every K steps check that all ranks hold identical parameters (0 = off).")
    var checkConsistency = 0
    @Flag(help: "Debug: ranks other than 0 write rank-K.log in the run directory.")
    var logAllRanks = false

    func run() throws {
        let comm: Communicator
        do { comm = try CommunicatorFactory.make() } catch { fail(error) }
        do {
            // `--config D/config.yaml --run-dir D --resume auto` resumes from the run's own resolved
            // config, which may come from an older writer (Reader.droppableSwinGroup).
            let cfg = try Config.load(path: config, overrides: overrides, runConfig: Config.isRunDirectoryConfig(config))
            let dir = runDir ?? "runs/" + ((config as NSString).lastPathComponent as NSString).deletingPathExtension
            installStopSignalHandlers()
            var options = TrainerOptions()
            options.checkConsistency = checkConsistency
            options.logAllRanks = logAllRanks
            let trainer = try Trainer(config: cfg, runDir: dir, comm: comm, resume: resume, options: options)
            let summary = try trainer.run()
            if comm.isRoot && !summary.evaluation.isEmpty {
                print("final metrics (step \(summary.finalStep)):\n" + Evaluator.table(summary.evaluation))
            }
            (comm as? MPICommunicator)?.finalize()
        } catch { fail(error, comm: comm) }
    }
}

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Evaluate a checkpoint on the validation split.")
    @Option(help: "Experiment config (YAML); the checkpoint's own config is used if omitted.") var config: String?
    @Option(name: .customLong("set"), help: "Override a config key (repeatable).") var overrides: [String] = []
    @Option(help: "Checkpoint file (checkpoints/step-*.h5).") var checkpoint: String
    @Option(help: "Split to evaluate (default: data.val_split), or another dataset file (*.h5).") var split: String?
    @Flag(help: "Print the metrics as one JSON object.") var json = false

    func run() throws {
        let comm: Communicator
        do { comm = try CommunicatorFactory.make() } catch { fail(error) }
        do {
            let loaded = try LoadedCheckpoint.load(checkpoint: checkpoint, config: config, overrides: overrides,
                                                   split: split, comm: comm)
            let cfg = loaded.config, ds = loaded.dataset, setup = loaded.setup
            let results = try Evaluator.run(model: setup.model, dataset: ds, losses: setup.lossKinds,
                                            classes: setup.classes, comm: comm,
                                            batchSize: max(1, cfg.train.batchSize / comm.size))
            if comm.isRoot {
                if json {
                    var obj: [String: Any] = ["checkpoint": checkpoint, "split": split ?? cfg.data.valSplit]
                    for r in results { for (k, v) in r.values { obj["\(r.task).\(k)"] = v } }
                    let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
                    print(String(decoding: data, as: UTF8.self))
                } else {
                    print("\(checkpoint) on \(ds.split) (\(ds.count) samples):\n" + Evaluator.table(results))
                }
            }
            (comm as? MPICommunicator)?.finalize()
        } catch { fail(error, comm: comm) }
    }
}

struct PredictCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "predict",
        abstract: "Write prediction images (and optionally arrays) of a checkpoint on the first samples of a split.",
        discussion: """
        Per sample: NNNNN_input.png, NNNNN_<task>_pred.png and NNNNN_<task>_gt.png, and NNNNN_grid.png with \
        the input and the predictions above the ground truths. Segmentation and parts use the dataset's \
        palette (palette PNGs: their indices are the class ids, 255 = ignore), depth viridis with a \
        colour bar over a fixed range per dataset, normals RGB = (n+1)/2, edges and saliency grey. \
        Under mpirun the ranks share the samples and rank 0 writes.
        """)
    @Option(help: "Checkpoint file (checkpoints/step-*.h5).") var checkpoint: String
    @Option(help: "Experiment config (YAML); the checkpoint's own config is used if omitted.") var config: String?
    @Option(name: .customLong("set"), help: "Override a config key (repeatable).") var overrides: [String] = []
    @Option(help: "A split of the config's dataset (val, train) or another dataset file (*.h5).") var split: String?
    @Option(help: "Output directory.") var out: String
    @Option(help: "Number of samples, from the first of the split.") var samples = 8
    @Flag(help: "Also write the raw model outputs as float arrays (predictions.h5: one [N, C, H, W] per task, index, input: the normalised images).")
    var raw = false

    func run() throws {
        let comm: Communicator
        do { comm = try CommunicatorFactory.make() } catch { fail(error) }
        do {
            let loaded = try LoadedCheckpoint.load(checkpoint: checkpoint, config: config, overrides: overrides,
                                                   split: split, comm: comm)
            var o = Predict.Options()
            o.samples = samples
            o.raw = raw
            let files = try Predict.run(loaded, out: out, options: o, comm: comm)
            if comm.isRoot {
                print("wrote \(files.count) files for \(min(samples, loaded.dataset.count)) samples of \(loaded.dataset.split) to \(out) (grids: \(out)/*_grid.png)")
            }
            (comm as? MPICommunicator)?.finalize()
        } catch { fail(error, comm: comm) }
    }
}

struct SynthCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "synth", abstract: "Write a synthetic multi-task dataset (HDF5, mtdp-hdf5 schema).")
    @Option(help: "Output HDF5 file.") var out: String
    @Option(help: "Training samples.") var samples = 64
    @Option(help: "Validation samples (default: samples / 4).") var valSamples: Int?
    @Option(help: "Image height (multiple of 32).") var height = 64
    @Option(help: "Image width (multiple of 32).") var width = 96
    @Option(help: "Tasks, comma-separated (seg,depth,normals,edges,parts,saliency).") var tasks = "seg,depth,normals"
    @Option(help: "Random seed.") var seed: UInt64 = 0
    @Option(name: .customLong("noise-task"), help: ArgumentHelp(
        "A noisy pseudo-auxiliary task TASK=SOURCE:KIND[:P] (repeatable).",
        discussion: "The TASK slot holds a corrupted copy of SOURCE's labels. replace:P — each valid pixel becomes a uniform random label with probability P (default 1: pure noise); shuffle — each image gets another image's labels (a fixed random derangement). E.g. parts=seg:replace:0.5, parts=seg:shuffle, saliency=saliency:replace:1.0."))
    var noiseTask: [String] = []

    func run() throws {
        do {
            var o = SynthOptions()
            o.samples = samples
            o.valSamples = valSamples ?? max(1, samples / 4)
            o.height = height
            o.width = width
            o.tasks = tasks.split(separator: ",").map { String($0) }
            o.seed = seed
            o.noiseTasks = try noiseTask.map(NoiseTaskSpec.parse)
            let t = Date()
            try MTLData.Synth.write(to: out, options: o) { print($0) }
            print(String(format: "wrote %@ (%d train + %d val samples, %dx%d) in %.2f s", out, o.samples, o.valSamples,
                         height, width, Date().timeIntervalSince(t)))
        } catch { fail(error) }
    }
}

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert an official dataset release into the mtdp-hdf5 schema (see docs/DATASETS.md).",
        discussion: "Kinds: \(Converter.kinds.joined(separator: ", ")). The output is written to OUT.tmp and renamed when complete.")
    @Argument(help: "Dataset kind: \(Converter.kinds.joined(separator: " | ")).") var kind: String
    @Option(help: "The official release: a directory (nyud-mt: the NYUD_MT folder), or nyu_depth_v2_labeled.mat for nyuv2.") var src: String
    @Option(help: "Output HDF5 file.") var out: String
    @Option(help: "Resize to this height (with --width).") var height: Int?
    @Option(help: "Resize to this width (with --height).") var width: Int?
    @Option(help: "Classes: cityscapes 7 or 19, nyuv2 13 or 40, nyud-mt 40.") var classes: Int?
    @Option(help: "nyuv2: splits.mat (MAT v5; default <src dir>/splits.mat).") var splits: String?
    @Option(help: "nyuv2: directory of precomputed normals (else computed from depth).") var normals: String?
    @Option(help: "nyuv2: classMapping40.mat (894 → 40 classes; default <src dir>/classMapping40.mat).") var classMap: String?

    func run() throws {
        do {
            var o = ConvertOptions()
            o.height = height
            o.width = width
            o.classes = classes
            o.splitsFile = splits
            o.normalsDir = normals
            o.classMapFile = classMap
            print(try Converter.run(kind: kind, src: src, out: out, options: o) { print($0) })
        } catch { fail(error) }
    }
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a dataset's or a checkpoint's contents.")
    @Argument(help: "A dataset (.h5) or a checkpoint (checkpoints/step-*.h5).") var path: String
    @Flag(help: "Dataset: read every dataset, check the stored SHA-256 checksums and value ranges.") var verify = false

    func run() throws {
        do {
            if verify {
                print(try DatasetVerifier.verify(path))
            } else if DatasetInspector.isDataset(path) {
                print(try DatasetInspector.describe(path))
            } else {
                let (tensors, meta) = try CheckpointStore.load(path)
                print("checkpoint \(path)")
                for k in meta.keys.sorted() where k != "config" { print("  \(k): \(meta[k]!)") }
                var total = 0
                for k in tensors.keys.sorted() {
                    let t = tensors[k]!
                    total += t.count
                    let rms = t.count > 0 ? (t.sumOfSquares() / Double(t.count)).squareRoot() : 0
                    print("  \(k) \(t.shape) rms=\(String(format: "%.4g", rms))")
                }
                print("  \(tensors.count) tensors, \(total) values")
                if let c = meta["config"] { print("config:\n" + c) }
            }
        } catch { fail(error) }
    }
}

struct BalanceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "balance", abstract: "Apply one multi-task method to given per-task gradients (debugging, cross-checks).")
    @Option(help: "Method name (\(methodNames.joined(separator: ", "))).") var method: String
    @Option(help: "HDF5 file with `grads` [T, P] float32, optional `losses` [T], attribute `primary`.") var grads: String
    @Option(help: "Seed for the method's randomness.") var seed: UInt64 = 0
    @Option(help: "Step (keys the randomness).") var step = 0
    @Option(name: .customLong("param"), help: "Method hyperparameter key=value (repeatable).") var params: [String] = []
    @Option(help: "Output HDF5 file (`combined` [P], `coefficients` [T]).") var out: String

    func run() throws {
        do {
            var p: [String: String] = [:]
            for kv in params {
                guard let eq = kv.firstIndex(of: "=") else { throw MTLError("--param \(kv): expected key=value") }
                p[String(kv[..<eq])] = String(kv[kv.index(after: eq)...])
            }
            print(try MTLMethods.Balance.run(gradsPath: grads, method: method, seed: seed, step: step, params: p, outPath: out))
        } catch { fail(error) }
    }
}

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench",
        abstract: "Time training steps of the bench network of ../shared/bench/torch_ref.py (same flags).")
    @Option(help: "Base width of the encoder.") var width = 32
    @Option(help: "Batch size.") var batch = 4
    @Option(help: "Image height.") var height = 128
    @Option(help: "Image width.") var wide = 256
    @Option(help: "Threads.") var threads = 2
    @Option(help: "Method: ew | pcgrad (parameter level) | ial (representation level) | autol (look-ahead) | any method name.") var method = "ew"
    @Option(help: "Timed steps (median reported).") var steps = 8
    @Option(help: "Model: bench (ResNet-18-style + bench heads) | resnet50-deeplab (dilated ResNet-50 + DeepLabV3 heads) | hrnet18s-baseline (HRNetV2-W18-Small-v2 + multiscale heads; --width is ignored) | swin_t-baseline (dense Swin-T + multiscale heads of --head-channels; e.g. --batch 2 --height 224 --wide 288) | tif-hrnet18 (TIF-R on HRNetV2-W18-Small-v2) | kem-swin_s (frozen Swin-S + the KEM decoder; --kem-mixer) | mtcp-swin_t (Swin-T + FPN-lite + the MT-CP decoder; --cfm-stride).") var model = "bench"
    @Option(help: "kem-swin_s: memory (KEM) | skem | cross_attention | none.") var kemMixer = "memory"
    @Option(help: "mtcp-swin_t: the CFM's stride, 4 (the paper) | 8.") var cfmStride = 4
    @Option(help: "ASPP channels of the DeepLabV3 heads (resnet50-deeplab; 256 = torchvision); hidden width of the multiscale heads (swin_t-baseline).") var headChannels = 256
    @Option(help: "Convolution backend: auto | onednn | blas.") var convBackend = "auto"
    @Flag(help: "Time every convolution pass (per layer, pass and backend) and print the table.") var profile = false
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        do {
            var o = BenchOptions()
            o.width = width; o.batch = batch; o.height = height; o.wide = wide
            o.threads = threads; o.method = method; o.steps = max(5, steps)
            o.model = model; o.headChannels = headChannels; o.convBackend = convBackend; o.profile = profile
            o.kemMixer = kemMixer
            o.cfmStride = cfmStride
            let r = try Bench.run(o)
            if json {
                print(r.json)
            } else {
                print(r.text)
                for line in Runtime.report(threadsPerRank: threads) { print("  " + line) }
            }
            if let table = r.convProfile { print(table) }
        } catch { fail(error) }
    }
}

struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print what this machine runs: CPU and ISA, BLAS kernel, oneDNN version and the kernels it picks for the bench network's convolutions, threads, MPI, HDF5.")
    @Option(help: "Threads per rank to report and to create the convolution kernels with.") var threads = Trainer.threadCount(configured: 0, comm: SingleProcessCommunicator())
    @Option(help: "Convolution backend: auto | onednn | blas.") var convBackend = "auto"
    @Option(help: "Directory runs will be written in (checked: writable, HDF5 files, free space).") var runDir = "."

    func run() throws {
        do {
            var o = BenchOptions()
            o.threads = threads; o.steps = 5; o.warmup = 1; o.convBackend = convBackend
            o.batch = 2; o.height = 64; o.wide = 128
            let r = try Bench.run(o)
            for line in Runtime.report(threadsPerRank: threads) { print(line) }
            print(String(format: "bench network (width %d, batch %d, %dx%d): %.1f ms/step, %.1f GFLOP/s, sgemm peak %.1f GFLOP/s",
                         o.width, o.batch, o.height, o.wide, r.msPerStepMedian, r.gflops, r.sgemmPeakGflops))
            let checks = MTLEngine.Doctor.checks(runDirectory: runDir, threadsPerRank: threads)
            for c in checks { print((c.failed ? "MISSING " : "") + c.text) }
            if let bad = checks.first(where: { $0.failed }) { throw MTLError("doctor: \(bad.text)") }
        } catch { fail(error) }
    }
}

struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "keys",
        abstract: "List every config key: what it accepts, its default and its help (model.<group>.* with the components that read them).")

    func run() throws { print(Config.keyListing(), terminator: "") }
}

struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "report",
        abstract: "Per-metric table and Δm versus a baseline (markdown), and SVG plots of losses, metrics and method weights.")
    @Argument(help: "Run directories (each with config.yaml and metrics.jsonl).") var runDirs: [String]
    @Option(help: "Baseline run directory (repeatable: several seeds are averaged).") var baseline: [String] = []
    @Option(help: "Directory for the figures (default: <parent of the first run>/report).") var out: String?

    func run() throws {
        do {
            print(try Report.run(runDirs: runDirs, baselines: baseline, outDir: out, format: "svg"))
        } catch { fail(error) }
    }
}

// Before MPI_Init and before OpenBLAS/oneDNN start their threads (may re-execute this binary once).
Runtime.tuneEnvironmentAndReexec()
MTL.main()
