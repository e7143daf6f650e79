import Foundation
import MTLCore
import MTLConvert
import MTLData
import MTLDist
import MTLModels
import MTLReport
import MTLTrain

/// A trained model from a checkpoint, with its config (the checkpoint's own, or a given file) and a
/// split of its dataset: what `mtl eval` and `mtl predict` start from.
public struct LoadedCheckpoint {
    public let config: Config
    public let setup: RunSetup
    public let dataset: MTDataset

    /// `split`: a split name of the config's dataset, or the path of another dataset file (`*.h5`,
    /// read at the config's validation split); nil = `data.val_split`.
    public static func load(checkpoint: String, config: String?, overrides: [String], split: String?,
                            comm: Communicator) throws -> LoadedCheckpoint {
        let (tensors, meta) = try CheckpointStore.load(checkpoint)
        var cfg: Config
        if let config {
            cfg = try Config.load(path: config, overrides: overrides, runConfig: Config.isRunDirectoryConfig(config))
        } else {
            guard let y = meta["config"] else { throw MTLError("\(checkpoint): no config stored; pass --config") }
            // The trainer's resolved config, possibly from an older writer (Reader.droppableSwinGroup).
            cfg = try Config.parse(yaml: y, source: checkpoint, overrides: overrides, runConfig: true)
        }
        var splitName = split ?? cfg.data.valSplit
        if splitName.hasSuffix(".h5") {
            cfg.data.path = splitName
            splitName = cfg.data.valSplit
        }
        _ = try Runtime.applyPerformanceSwitches(cfg, threads: Trainer.threadCount(configured: cfg.train.threads, comm: comm))
        try Runtime.selectConvBackend(cfg.model.convBackend)
        let ds = try MTDataset(path: cfg.data.path, split: splitName, tasks: cfg.tasks.map { $0.name })
        let setup = try RunSetup(config: cfg, dataset: ds)
        var modelTensors: [String: Tensor] = [:]
        for (k, v) in tensors where k.hasPrefix("model.") { modelTensors[String(k.dropFirst(6))] = v }
        try setup.model.load(modelTensors, source: checkpoint)
        return LoadedCheckpoint(config: cfg, setup: setup, dataset: ds)
    }
}

/// `mtl predict`: the model's predictions on the first samples of a split as images — per sample the
/// input, per task the prediction and the ground truth, and one grid of them all — and optionally as
/// float arrays (`predictions.h5`). Under mpirun rank r predicts samples r, r+N, …; the predictions
/// are gathered and rank 0 writes every file.
public enum Predict {
    public struct Options {
        public var samples = 8
        public var raw = false
        public init() {}
    }

    /// How a task is drawn, from its loss (as the evaluator picks its metric).
    enum Kind { case labels(classes: Int), depth, normals, probability }

    /// The depth range of the colour map: fixed per dataset (NYUv2 indoor 0–10 m, Cityscapes 0–80 m);
    /// for other datasets the largest ground-truth depth of the rendered samples, rounded up.
    static func depthRange(dataset: String, largest: Double) -> Double {
        switch dataset {
        case "nyuv2": return 10
        case "cityscapes": return 80
        default: return max(1, largest.rounded(.up))
        }
    }

    /// Writes the files into `out` (rank 0) and returns their paths (rank 0; empty elsewhere).
    @discardableResult
    public static func run(_ loaded: LoadedCheckpoint, out: String, options: Options, comm: Communicator) throws -> [String] {
        let model = loaded.setup.model, ds = loaded.dataset
        let tasks = model.taskNames
        let kinds: [Kind] = zip(tasks, loaded.setup.classes).map { task, k in
            switch TaskKind.named(task)?.family {
            case .classMap?: return .labels(classes: k)
            case .depth?: return .depth
            case .normals?: return .normals
            case .binary?, nil: return .probability
            }
        }
        let H = ds.height, W = ds.width, n = min(max(0, options.samples), ds.count)
        guard n > 0 else { throw MTLError("--samples: expected ≥ 1 sample of split \(ds.split) (\(ds.count) samples), found \(options.samples)") }
        if comm.isRoot { try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true) }

        // One sample per rank and round; everything a sample needs (image, targets, predictions) in
        // one flat record so that one all-gather brings a round to rank 0.
        let channels = model.decoder.outChannels
        let targetChannels = kinds.map { kind -> Int in if case .normals = kind { return 3 } else { return 1 } }
        let recordCount = 1 + 3 * H * W + (channels.reduce(0, +) + targetChannels.reduce(0, +)) * H * W
        let record = Tensor([recordCount])
        let gathered = Tensor([recordCount * comm.size])
        var raw: [[Float]] = tasks.map { _ in [] }
        var rawIndex: [Float] = []
        var rawInput: [Float] = []
        var samples: [(index: Int, values: [Float])] = []
        model.setTraining(false)
        defer { model.setTraining(true) }
        let batch = Batch()
        var start = 0
        while start < n {
            let mine = start + comm.rank
            record.zero()
            if mine < n {
                try ds.load([mine], into: batch)
                let preds = model.decoder.forward(model.encoder.forward(batch.images), height: H, width: W)
                let r = record.data
                r[0] = 1
                var o = 1
                (r + o).update(from: batch.images.data, count: 3 * H * W); o += 3 * H * W
                for t in tasks.indices {
                    (r + o).update(from: preds[t].data, count: channels[t] * H * W); o += channels[t] * H * W
                    if let target = batch.targets[tasks[t]] {
                        (r + o).update(from: target.data, count: targetChannels[t] * H * W)
                    }
                    o += targetChannels[t] * H * W
                }
            }
            comm.allGather(UnsafeBufferPointer(record.buffer), gathered.buffer)
            if comm.isRoot {
                for k in 0..<comm.size where gathered.data[k * recordCount] == 1 {
                    samples.append((start + k, Array(UnsafeBufferPointer(start: gathered.data + k * recordCount, count: recordCount))))
                }
            }
            start += comm.size
        }
        guard comm.isRoot else { return [] }

        var largestDepth = 0.0
        for s in samples {
            var o = 1 + 3 * H * W
            for t in tasks.indices {
                o += channels[t] * H * W
                if case .depth = kinds[t] { for i in 0..<(H * W) where s.values[o + i].isFinite { largestDepth = max(largestDepth, Double(s.values[o + i])) } }
                o += targetChannels[t] * H * W
            }
        }
        let dataset = ds.attributes["dataset"] ?? ""
        let maxDepth = depthRange(dataset: dataset, largest: largestDepth)
        var written: [String] = []
        for s in samples.sorted(by: { $0.index < $1.index }) {
            let v = s.values
            let name = String(format: "%@/%05d", out, s.index)
            let input = inputImage(Array(v[1..<(1 + 3 * H * W)]), mean: ds.imageMean, std: ds.imageStd, width: W, height: H)
            if options.raw { rawInput += v[1..<(1 + 3 * H * W)] }
            try PNG.writeRGB8(name + "_input.png", width: W, height: H, input.pixels)
            written.append(name + "_input.png")
            var predRow = [input], gtRow = [RGBImage(width: W, height: H, fill: (255, 255, 255))]
            var o = 1 + 3 * H * W
            for t in tasks.indices {
                let pred = Array(v[o..<(o + channels[t] * H * W)]); o += channels[t] * H * W
                let gt = Array(v[o..<(o + targetChannels[t] * H * W)]); o += targetChannels[t] * H * W
                raw[t] += pred
                let (p, g) = try render(kinds[t], pred: pred, gt: gt, width: W, height: H, dataset: dataset,
                                        maxDepth: maxDepth, path: name + "_" + tasks[t])
                written += [name + "_" + tasks[t] + "_pred.png", name + "_" + tasks[t] + "_gt.png"]
                predRow.append(p)
                gtRow.append(g)
            }
            rawIndex.append(Float(s.index))
            let grid = Colormap.grid([predRow, gtRow])
            try PNG.writeRGB8(name + "_grid.png", width: grid.width, height: grid.height, grid.pixels)
            written.append(name + "_grid.png")
        }
        if options.raw {
            let path = out + "/predictions.h5"
            let file = try H5File.create(path)
            for t in tasks.indices {
                try file.write(tasks[t], raw[t], shape: [samples.count, channels[t], H, W])
            }
            try file.write("index", rawIndex, shape: [samples.count])
            try file.write("input", rawInput, shape: [samples.count, 3, H, W])   // the normalised images the model saw
            try file.setAttribute("/", "split", ds.split)
            try file.setAttribute("/", "dataset_path", ds.path)
            try file.closeChecked()
            written.append(path)
        }
        return written
    }

    static func inputImage(_ planes: [Float], mean: [Float], std: [Float], width: Int, height: Int) -> RGBImage {
        var img = RGBImage(width: width, height: height)
        let n = width * height
        for i in 0..<n {
            func c(_ ch: Int) -> UInt8 {
                let v = Double(planes[ch * n + i]) * Double(std[ch]) + Double(mean[ch])
                return UInt8((min(max(v, 0), 1) * 255).rounded())
            }
            img.set(i % width, i / width, (c(0), c(1), c(2)))
        }
        return img
    }

    /// Writes `<path>_pred.png` and `<path>_gt.png` and returns both images for the grid.
    static func render(_ kind: Kind, pred: [Float], gt: [Float], width W: Int, height H: Int, dataset: String,
                       maxDepth: Double, path: String) throws -> (RGBImage, RGBImage) {
        let n = W * H
        switch kind {
        case .labels(let classes):
            let palette = Palettes.forDataset(dataset, classes: classes)
            var p = [UInt8](repeating: 0, count: n), g = [UInt8](repeating: 255, count: n)
            for i in 0..<n {
                var best = 0
                for c in 1..<classes where pred[c * n + i] > pred[best * n + i] { best = c }
                p[i] = UInt8(min(best, 254))
                let label = gt[i]
                if label >= 0 && label < Float(classes) && label.isFinite { g[i] = UInt8(label) }
            }
            try PNG.writePalette(path + "_pred.png", width: W, height: H, p, palette: palette)
            try PNG.writePalette(path + "_gt.png", width: W, height: H, g, palette: palette)
            return (Colormap.labels(p, palette: palette, width: W, height: H), Colormap.labels(g, palette: palette, width: W, height: H))
        case .depth:
            let p = Colormap.depth(pred, valid: nil, width: W, height: H, maxDepth: maxDepth)
            let g = Colormap.depth(gt, valid: gt.map { $0 > 0 && $0.isFinite }, width: W, height: H, maxDepth: maxDepth)
            try PNG.writeRGB8(path + "_pred.png", width: p.width, height: p.height, p.pixels)
            try PNG.writeRGB8(path + "_gt.png", width: g.width, height: g.height, g.pixels)
            return (p, g)
        case .normals:
            let p = Colormap.normals(pred, width: W, height: H), g = Colormap.normals(gt, width: W, height: H)
            try PNG.writeRGB8(path + "_pred.png", width: W, height: H, p.pixels)
            try PNG.writeRGB8(path + "_gt.png", width: W, height: H, g.pixels)
            return (p, g)
        case .probability:
            // One logit, or two (saliency_ce): softmax(z₀, z₁)₁ = σ(z₁ − z₀).
            let two = pred.count >= 2 * n
            let prob = (0..<n).map { i in Float(1 / (1 + exp(-Double(two ? pred[n + i] - pred[i] : pred[i])))) }
            let p = Colormap.grey(prob, valid: nil, width: W, height: H)
            let g = Colormap.grey(gt, valid: gt.map { $0 >= 0 && $0 != 255 && !$0.isNaN }, width: W, height: H)
            try PNG.writeRGB8(path + "_pred.png", width: W, height: H, p.pixels)
            try PNG.writeRGB8(path + "_gt.png", width: W, height: H, g.pixels)
            return (p, g)
        }
    }
}
