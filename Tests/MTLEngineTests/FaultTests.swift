import Foundation
import XCTest
@testable import MTLCore
@testable import MTLTrain
import MTLTestSupport

/// The fault-injection suite (issue 11): real `mtl` processes, real `mpirun` where ranks matter.
/// Every case checks the outcome a user sees — a non-zero exit (or the documented recovery), one
/// `error:` line naming the file, key or rank, no crash report, no rank left in the process table,
/// and no checkpoint lost. docs/RELIABILITY.md lists the cases with their counts.
final class FaultTests: XCTestCase {
    typealias Dist = DistributedTrainingTests

    var dir = ""
    var data = ""
    var config = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "mtl-fault-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        data = try makeSynth(dir)
        config = dir + "/tiny.yaml"
        try tinyConfigYAML(data: data, steps: 20, checkpointEvery: 0, method: "ew")
            .write(toFile: config, atomically: true, encoding: .utf8)
    }

    /// A tmpfs a test mounted, unmounted in tearDown even when the test fails half-way.
    var tmpfsMount: String? = nil

    override func tearDownWithError() throws {
        if let mounted = tmpfsMount { _ = try? Dist.run(["umount", "-l", mounted], timeout: 30) }
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// The small, fast model every case trains: the tiny config's encoder at width 8 with bench heads.
    let quick = ["--set", "model.head=bench", "--set", "model.width=8"]

    /// `mtl ARGS` as one process (n = 1) or under `mpirun -n N`, with extra environment variables.
    func mtl(_ n: Int, _ args: [String], env: [String: String] = [:], timeout: Double = 120,
             onStart: ((Process) -> Void)? = nil) throws -> Dist.Result {
        let assignments = env.map { "\($0.key)=\($0.value)" }
        if n == 1 {
            return try Dist.run(assignments + [try Dist.mtlBinary()] + args, timeout: timeout, onStart: onStart)
        }
        return try Dist.run(assignments + ["mpirun", "-n", "\(n)", "--oversubscribe", "--bind-to", "none"]
                            + env.keys.flatMap { ["-x", $0] } + [try Dist.mtlBinary()] + args,
                            timeout: timeout, onStart: onStart)
    }

    func train(_ n: Int, run: String, _ extra: [String] = [], env: [String: String] = [:], timeout: Double = 120,
               onStart: ((Process) -> Void)? = nil) throws -> Dist.Result {
        try mtl(n, ["train", "--config", config, "--run-dir", dir + "/" + run] + quick + extra,
                env: env, timeout: timeout, onStart: onStart)
    }

    // MARK: assertions

    /// Non-zero exit, an `error:` line containing every part, and no crash report.
    func assertFailsCleanly(_ r: Dist.Result, _ parts: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertNotEqual(r.status, 0, "expected a non-zero exit; stderr: \(r.err)", file: file, line: line)
        let errors = r.err.split(separator: "\n").filter { $0.contains("error: ") }
        XCTAssertFalse(errors.isEmpty, "no error: line in stderr: \(r.err)", file: file, line: line)
        let hit = errors.first { l in parts.allSatisfy { l.contains($0) } }
        XCTAssertNotNil(hit, "no error line contains \(parts): \(r.err)", file: file, line: line)
        assertNoCrashReport(r, file: file, line: line)
    }

    func assertNoCrashReport(_ r: Dist.Result, file: StaticString = #filePath, line: UInt = #line) {
        for marker in ["Fatal error", "Program crashed", "Backtrac", "Segmentation fault", "signal 11"] {
            XCTAssertFalse(r.err.contains(marker) || r.out.contains(marker), "crash report (\(marker)): \(r.err)",
                           file: file, line: line)
        }
    }

    /// No process whose command line names this test's directory is left (every rank has ended).
    func assertNoProcessLeft(within seconds: Double = 10, file: StaticString = #filePath, line: UInt = #line) {
        let deadline = Date().addingTimeInterval(seconds)
        var left: [Int32] = []
        repeat {
            left = processes(mentioning: dir)
            if left.isEmpty { return }
            usleep(100_000)
        } while Date() < deadline
        XCTFail("processes still running \(seconds) s after the job ended: \(left)", file: file, line: line)
        for pid in left { kill(pid, SIGKILL) }
    }

    /// `latest` names a checkpoint that loads, no `.tmp` is left, and every `step-*.h5` loads.
    @discardableResult
    func assertCheckpointsComplete(_ run: String, allowTmp: Bool = false, file: StaticString = #filePath,
                                   line: UInt = #line) -> Int? {
        let store = CheckpointStore(directory: dir + "/" + run + "/checkpoints")
        let names = (try? FileManager.default.contentsOfDirectory(atPath: store.directory)) ?? []
        if !allowTmp {
            XCTAssertEqual(names.filter { $0.hasSuffix(".tmp") }, [], "temporary files left", file: file, line: line)
        }
        for (_, path) in store.list() {
            XCTAssertNoThrow(try CheckpointStore.load(path), "\(path) does not load", file: file, line: line)
        }
        guard let latest = store.latest() else {
            XCTFail("no latest checkpoint in \(run)", file: file, line: line)
            return nil
        }
        guard let meta = try? CheckpointStore.load(latest).meta else {
            XCTFail("latest (\(latest)) does not load", file: file, line: line)
            return nil
        }
        return meta["step"].flatMap { Int($0) }
    }

    func metricsLines(_ run: String) -> [Substring] {
        ((try? String(contentsOfFile: dir + "/" + run + "/metrics.jsonl", encoding: .utf8)) ?? "").split(separator: "\n")
    }

    // MARK: bad configs

    /// Unknown keys and groups, wrong types, YAML syntax (with the line), tasks the dataset lacks,
    /// a batch the ranks do not divide: one line naming the key, non-zero on every rank, and nothing
    /// written to the run directory.
    func testBadConfigs() throws {
        let cases: [(ranks: Int, args: [String], parts: [String])] = [
            (1, ["--set", "train.batchsize=4"], ["train.batchsize", "did you mean 'train.batch_size'"]),
            (1, ["--set", "method.name=ial", "--set", "method.iall.lr=5"], ["method.iall", "method.name is ial", "did you mean 'method.ial'"]),
            (1, ["--set", "method.name=imtl-l", "--set", "method.pcgrad.foo=1"], ["method.pcgrad", "method.name is imtl-l"]),
            (1, ["--set", "method.name=ial", "--set", "method.ial.lrr=5"], ["method.ial.lrr", "unknown key", "did you mean 'lr'"]),
            (1, ["--set", "train.steps=abc"], ["train.steps", "expected an integer, found 'abc'"]),
            (1, ["--set", "tasks.edges.role=auxiliary"], ["edges", data]),
            (2, ["--set", "train.batch_size=5"], ["batch", "5"]),
        ]
        for (i, c) in cases.enumerated() {
            let r = try train(c.ranks, run: "cfg\(i)", c.args, timeout: 60)
            assertFailsCleanly(r, c.parts)
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/cfg\(i)/checkpoints"), "case \(i) wrote checkpoints")
            XCTAssertEqual(metricsLines("cfg\(i)").count, 0, "case \(i) wrote metrics")
        }
        // A YAML syntax error names the file and the line where it is.
        let broken = dir + "/broken.yaml"
        try "data: {path: \(data)}\ntrain:\n  steps: [1, 2\n  seed: 3\nmethod: {name: ew}\n"
            .write(toFile: broken, atomically: true, encoding: .utf8)
        let r = try mtl(2, ["train", "--config", broken, "--run-dir", dir + "/yaml"], timeout: 60)
        assertFailsCleanly(r, [broken, "invalid YAML", "line 4"])
        assertNoProcessLeft()
    }

    // MARK: bad data

    /// Replaces one dataset of a copy of the synthetic file.
    func corruptedCopy(_ name: String, _ edit: (H5File) throws -> Void) throws -> String {
        let path = dir + "/" + name + ".h5"
        try FileManager.default.copyItem(atPath: data, toPath: path)
        let f = try H5File.open(path, readOnly: false)
        defer { f.close() }
        try edit(f)
        return path
    }

    /// Labels out of range, NaN/Inf in depth and normals, wrong dtypes and shapes, truncated and
    /// byte-flipped files: on 2 ranks, one line naming the file, the dataset and the sample or what
    /// was expected; every rank gone.
    func testBadData() throws {
        let probe = try H5File.open(data)
        let shape = try probe.shape("/train/depth")   // [N, H, W]
        probe.close()
        let (n, h, w) = (shape[0], shape[1], shape[2])
        var cases: [(String, [String])] = []
        cases.append((try corruptedCopy("labels") { f in
            var seg = try f.read("/train/seg", as: Int16.self)
            seg[h * w + 5] = 99
            try f.write("/train/seg", seg, shape: [n, h, w])
            try f.setAttribute("/train/seg", "num_classes", 13)
        }, ["/train/seg sample 1", "label 99 out of range"]))
        cases.append((try corruptedCopy("nan-depth") { f in
            var depth = try f.read("/train/depth", as: Float.self)
            depth[3] = .nan
            try f.write("/train/depth", depth, shape: [n, h, w])
        }, ["/train/depth sample 0", "nan", "expected finite"]))
        cases.append((try corruptedCopy("inf-normals") { f in
            var normals = try f.read("/train/normals", as: Float.self)
            normals[(2 * h * w + 7) * 3 + 1] = .infinity
            try f.write("/train/normals", normals, shape: [n, h, w, 3])
        }, ["/train/normals sample 2", "inf", "expected finite"]))
        cases.append((try corruptedCopy("int-depth") { f in
            try f.write("/train/depth", [Int16](repeating: 1, count: n * h * w), shape: [n, h, w])
        }, ["/train/depth", "expected float32", "found int16"]))
        cases.append((try corruptedCopy("shape") { f in
            try f.write("/train/normals", [Float](repeating: 0, count: n * h * w * 2), shape: [n, h, w, 2])
        }, ["/train/normals", "expected float32", "found float32 (\(n),\(h),\(w),2)"]))
        let truncated = dir + "/truncated.h5"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: data))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: truncated))
        cases.append((truncated, [truncated]))
        var flipped = bytes
        flipped[1] ^= 0xff   // the HDF5 signature
        let flippedPath = dir + "/flipped.h5"
        try flipped.write(to: URL(fileURLWithPath: flippedPath))
        cases.append((flippedPath, [flippedPath, "not an HDF5 file"]))

        for (i, (path, parts)) in cases.enumerated() {
            let r = try train(2, run: "data\(i)", ["--set", "data.path=\(path)", "--set", "data.prefetch=0"], timeout: 60)
            assertFailsCleanly(r, [path] + parts)
            XCTAssertTrue(r.err.contains("rank "), "the message names the rank: \(r.err)")
        }
        assertNoProcessLeft()
    }

    // MARK: numerics

    /// A learning rate that blows the weights up makes the losses non-finite from step 2 on. `stop`:
    /// both ranks end non-zero with the step named; `skip`: the steps are dropped (no update), the run
    /// finishes and says so in metrics.jsonl — the same decision on both ranks, taken on reduced values.
    func testNonFiniteLossStopAndSkipOnTwoRanks() throws {
        let blowUp = ["--set", "optim.name=sgd", "--set", "optim.lr=1e30", "--set", "train.steps=4"]
        let stop = try train(2, run: "nan-stop", blowUp + ["--set", "train.nan_policy=stop"], timeout: 90)
        assertFailsCleanly(stop, ["non-finite", "train.nan_policy=stop"])
        XCTAssertTrue(stop.err.contains("step "), stop.err)
        let skip = try train(2, run: "nan-skip", blowUp + ["--set", "train.nan_policy=skip"], timeout: 90)
        XCTAssertEqual(skip.status, 0, skip.err)
        let skipped = metricsLines("nan-skip").filter { $0.contains("\"skipped\":true") }
        XCTAssertGreaterThan(skipped.count, 0, "no step was skipped")
        assertCheckpointsComplete("nan-skip")
        assertNoProcessLeft()
    }

    // MARK: checkpoints

    /// What is in a checkpoint directory, for the kill tests' checks and failure messages: every file
    /// with size and mtime, what `latest` says, and for each `step-*.h5` the step its meta holds (or why
    /// it does not load). `newestLoadable` is what `--resume auto` takes (the highest step that reads),
    /// which is not always what `latest` names: a kill between the rename of `step-N.h5.tmp` and the
    /// replacement of `latest` leaves a complete `step-N.h5` and a `latest` that still names N-1.
    struct CheckpointListing: CustomStringConvertible {
        var lines: [String] = []
        var latestText = "(none)"
        var latestStep: Int? = nil
        var newestLoadable: Int? = nil
        var unloadable: [String] = []
        var description: String {
            "latest: \(latestText) (step \(latestStep.map { "\($0)" } ?? "?")); newest loadable: step "
                + (newestLoadable.map { "\($0)" } ?? "none") + "\n    " + lines.joined(separator: "\n    ")
        }
    }

    func checkpointListing(_ run: String) -> CheckpointListing {
        let directory = dir + "/" + run + "/checkpoints"
        let store = CheckpointStore(directory: directory)
        var listing = CheckpointListing()
        let time = DateFormatter()
        time.locale = Locale(identifier: "en_US_POSIX")
        time.dateFormat = "HH:mm:ss.SSS"
        let stepFiles = Dictionary(uniqueKeysWithValues: store.list().map { ($0.path, $0.step) })
        for name in ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted() {
            let path = directory + "/" + name
            let attributes = (try? FileManager.default.attributesOfItem(atPath: path)) ?? [:]
            let size = (attributes[.size] as? NSNumber)?.intValue ?? -1
            let mtime = (attributes[.modificationDate] as? Date).map { time.string(from: $0) } ?? "?"
            var line = "\(name)  \(size) bytes  mtime \(mtime)"
            if let fileStep = stepFiles[path] {
                do {
                    let stored = try CheckpointStore.load(path).meta["step"] ?? "?"
                    line += "  loads, holds step \(stored)"
                    if stored != "\(fileStep)" { listing.unloadable.append(name + " (holds step \(stored))") }
                    listing.newestLoadable = max(listing.newestLoadable ?? fileStep, fileStep)
                } catch {
                    line += "  DOES NOT LOAD: \(error)"
                    listing.unloadable.append(name)
                }
            }
            listing.lines.append(line)
        }
        if let data = FileManager.default.contents(atPath: directory + "/latest") {
            listing.latestText = "'" + String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) + "'"
        }
        listing.latestStep = store.latest().flatMap { try? CheckpointStore.load($0).meta["step"] }.flatMap { Int($0) }
        return listing
    }

    /// The last "resumed from ... at step S" line of a run's train.log and S.
    func lastResume(_ run: String) -> (line: String, step: Int?) {
        let log = (try? String(contentsOfFile: dir + "/" + run + "/train.log", encoding: .utf8)) ?? ""
        let line = log.components(separatedBy: "\n").last { $0.contains("resumed from") } ?? "(no resume line in train.log)"
        let step = line.components(separatedBy: " at step ").dropFirst().first.flatMap { Int($0.prefix { $0.isNumber }) }
        return (line, step)
    }

    /// kill -9 while a run checkpoints every step (checkpoints of ~4 MB, so the writes take a good
    /// share of the time), 20 rounds — even rounds a few ms after a `.tmp` appears (inside a write),
    /// odd ones at a random moment —, each `--resume auto` from where the last one died. After every
    /// kill: every file named step-*.h5 loads and holds the step of its name, `latest` names one of
    /// them, and it is the newest or (kill between the rename and the new `latest`) the one before.
    /// Every resume — each round's and the final one — starts from the newest complete checkpoint the
    /// previous kill left (what `--resume auto` promises); at the end the run finishes.
    func testKillDuringCheckpointWritesNeverLosesACheckpoint() throws {
        let rounds = 20
        let args = ["--set", "model.width=16", "--set", "checkpoint.every=1", "--set", "checkpoint.keep=3",
                    "--set", "train.steps=100000", "--set", "log.every=1", "--resume", "auto"]
        var generator = SystemRandomNumberGenerator()
        var resumedSteps: [Int] = []
        var killedWithTmp = 0
        var latestBehind: [Int] = []   // rounds whose kill left `latest` one behind the newest complete file
        var previous: CheckpointListing? = nil
        for round in 0..<rounds {
            var killedAt: Date? = nil
            let r = try train(1, run: "kill", args, timeout: 90) { p in
                // Let it reach its first checkpoint of this round, then kill at a random moment.
                let deadline = Date().addingTimeInterval(60)
                let log = self.dir + "/kill/train.log"
                func checkpointsLogged() -> Int {   // lines "<time> checkpoint /tmp/.../step-N.h5"
                    ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").components(separatedBy: " checkpoint /").count - 1
                }
                let before = checkpointsLogged()
                while Date() < deadline {
                    if checkpointsLogged() > before { break }
                    usleep(5_000)
                }
                func writing() -> Bool {
                    (try? FileManager.default.contentsOfDirectory(atPath: self.dir + "/kill/checkpoints"))?
                        .contains { $0.hasSuffix(".tmp") } ?? false
                }
                if round % 2 == 0 {
                    // Even rounds aim inside a write: wait for the next .tmp, then up to 15 ms into it.
                    let until = Date().addingTimeInterval(5)
                    while !writing() && Date() < until { usleep(500) }
                    usleep(UInt32.random(in: 0...15_000, using: &generator))
                } else {
                    usleep(UInt32.random(in: 0...400_000, using: &generator))
                }
                let tmp = writing()
                kill(p.processIdentifier, SIGKILL)
                killedAt = Date()
                if tmp { killedWithTmp += 1 }
            }
            XCTAssertNotNil(killedAt, "round \(round): never killed")
            XCTAssertEqual(r.status, SIGKILL, "round \(round): \(r.err)")
            // This round resumed from the newest complete checkpoint the previous kill left.
            if let expected = previous?.newestLoadable {
                let resume = lastResume("kill")
                XCTAssertEqual(resume.step, expected, "round \(round): \(resume.line); before this round: \(previous!)")
            }
            // A kill during a write leaves its .tmp (nothing can remove it); the next save does.
            let listing = checkpointListing("kill")
            XCTAssertEqual(listing.unloadable, [], "round \(round): a step-*.h5 that does not load or holds another step: \(listing)")
            guard let step = assertCheckpointsComplete("kill", allowTmp: true), let newest = listing.newestLoadable else {
                return XCTFail("round \(round): no complete checkpoint: \(listing)")
            }
            // `latest` is replaced right after the rename, so it lags the newest file by at most that one save.
            XCTAssertTrue(step == newest || step == newest - 1, "round \(round): latest = step \(step): \(listing)")
            if step != newest { latestBehind.append(round) }
            if let last = resumedSteps.last { XCTAssertGreaterThanOrEqual(step, last, "round \(round) went backwards: \(listing)") }
            resumedSteps.append(step)
            previous = listing
        }
        let newest = previous!.newestLoadable!
        let final = newest + 2
        let r = try train(1, run: "kill", Array(args.dropLast(2)) + ["--set", "train.steps=\(final)", "--resume", "auto"])
        XCTAssertEqual(r.status, 0, r.err)
        // It resumes from the newest complete checkpoint after the last kill: the one `latest` names, or
        // the next one when the kill fell between its rename and the replacement of `latest`.
        let resume = lastResume("kill")
        XCTAssertEqual(resume.step, newest, "final resume: \(resume.line); after the last kill: \(previous!)")
        XCTAssertEqual(assertCheckpointsComplete("kill"), final, "after the final run: \(checkpointListing("kill"))")
        print("kill -9 during checkpointing: \(rounds)/\(rounds) rounds left a complete latest checkpoint "
              + "(\(killedWithTmp) killed with a checkpoint half-written; \(latestBehind.count) with latest one behind "
              + "the newest complete file, rounds \(latestBehind)); latest after each kill: \(resumedSteps); "
              + "final resume from step \(resume.step.map { "\($0)" } ?? "?")")
        assertNoProcessLeft()
    }

    /// The same on 2 ranks, killing rank 0 (the writer) inside a checkpoint write: Open MPI ends rank 1,
    /// nothing is lost, and the job resumes on 2 ranks.
    func testKillOfRankZeroDuringACheckpointOnTwoRanks() throws {
        let rounds = 4
        let args = ["--set", "model.width=16", "--set", "checkpoint.every=1", "--set", "checkpoint.keep=3",
                    "--set", "train.steps=100000", "--resume", "auto"]
        var inWrite = 0
        var last = 0
        for round in 0..<rounds {
            var killedAt: Date? = nil
            let r = try train(2, run: "kill2", args, timeout: 90) { mpirun in
                let deadline = Date().addingTimeInterval(60)
                let before = (try? String(contentsOfFile: self.dir + "/kill2/train.log", encoding: .utf8))?
                    .components(separatedBy: " checkpoint /").count ?? 1
                while Date() < deadline {   // this round's first checkpoint is out: the ranks are in the loop
                    let now = (try? String(contentsOfFile: self.dir + "/kill2/train.log", encoding: .utf8))?
                        .components(separatedBy: " checkpoint /").count ?? 1
                    if now > before { break }
                    usleep(5_000)
                }
                func writing() -> Bool {
                    (try? FileManager.default.contentsOfDirectory(atPath: self.dir + "/kill2/checkpoints"))?
                        .contains { $0.hasSuffix(".tmp") } ?? false
                }
                while !writing() && Date() < deadline { usleep(500) }
                usleep(UInt32.random(in: 0...10_000))
                guard let rank0 = Dist.rankPid(parent: mpirun.processIdentifier, rank: 0) else { return }
                if writing() { inWrite += 1 }
                kill(rank0, SIGKILL)
                killedAt = Date()
            }
            XCTAssertNotNil(killedAt, "round \(round): never killed")
            XCTAssertNotEqual(r.status, 0)
            if let k = killedAt { XCTAssertLessThan(Date().timeIntervalSince(k), 30) }
            assertNoProcessLeft(within: 30)
            guard let step = assertCheckpointsComplete("kill2", allowTmp: true) else { return }
            XCTAssertGreaterThanOrEqual(step, last)
            last = step
        }
        let r = try train(2, run: "kill2", Array(args.dropLast(2)) + ["--set", "train.steps=\(last + 1)", "--resume", "auto"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(assertCheckpointsComplete("kill2"), last + 1)
        print("kill -9 of rank 0 on 2 ranks: \(rounds)/\(rounds) resumed from a complete checkpoint (\(inWrite) inside a write)")
    }

    /// The newest checkpoint truncated, or one byte flipped anywhere in it: `--resume auto` warns
    /// naming the skipped file and resumes from the newest one that reads; a flip is always caught
    /// (HDF5 1.8+ metadata checksums, Fletcher-32 on every dataset) or lands where it changes nothing.
    func testResumeAutoSkipsACorruptNewestCheckpoint() throws {
        let first = try train(1, run: "corrupt", ["--set", "train.steps=6", "--set", "checkpoint.every=2", "--set", "checkpoint.keep=0"])
        XCTAssertEqual(first.status, 0, first.err)
        let ckpt = dir + "/corrupt/checkpoints/"
        let newest = ckpt + "step-00000006.h5"
        let original = try Data(contentsOf: URL(fileURLWithPath: newest))
        let reference = try CheckpointStore.load(newest)

        // Truncated: resume falls back to step 4 with a warning that names step 6.
        try original.prefix(original.count * 2 / 3).write(to: URL(fileURLWithPath: newest))
        let r = try train(1, run: "corrupt", ["--set", "train.steps=7", "--resume", "auto"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("warning: resume auto: skipping \(newest)"), r.err)
        let log = try String(contentsOfFile: dir + "/corrupt/train.log", encoding: .utf8)
        XCTAssertTrue(log.contains("resumed from \(ckpt)step-00000004.h5 at step 4"), log)
        assertNoCrashReport(r)

        // Byte flips at random offsets: every one is detected by the reader or harmless.
        var generator = SystemRandomNumberGenerator()
        var detected = 0, harmless = 0
        let flips = 100
        for _ in 0..<flips {
            var bytes = original
            let offset = Int.random(in: 0..<bytes.count, using: &generator)
            bytes[offset] ^= UInt8.random(in: 1...255, using: &generator)
            let path = dir + "/flip.h5"
            try bytes.write(to: URL(fileURLWithPath: path))
            do {
                let loaded = try CheckpointStore.load(path)
                XCTAssertEqual(loaded.meta, reference.meta, "flip at \(offset) changed the meta silently")
                for (k, t) in reference.tensors {
                    XCTAssertTrue(loaded.tensors[k]?.array == t.array, "flip at \(offset) changed \(k) silently")
                }
                harmless += 1
            } catch is MTLError {
                detected += 1
            }
        }
        print("byte flips in a checkpoint: \(detected)/\(flips) detected on read, \(harmless) in bytes that change nothing")

        // Through the trainer: a flip in the middle of the newest file (tensor data) is skipped too.
        unlink(ckpt + "step-00000007.h5")
        var bytes = original
        bytes[bytes.count / 2] ^= 0x40
        try bytes.write(to: URL(fileURLWithPath: newest))
        let again = try train(1, run: "corrupt", ["--set", "train.steps=7", "--resume", "auto"])
        XCTAssertEqual(again.status, 0, again.err)
        XCTAssertTrue(again.err.contains("warning: resume auto: skipping \(newest)"), again.err)
        // The unreadable file stays where it was (mtl deletes no file it did not just write); latest is complete.
        let latest = try XCTUnwrap(CheckpointStore(directory: ckpt).latest())
        XCTAssertEqual(try CheckpointStore.load(latest).meta["step"], "7")
    }

    /// Resuming into a different model names the tensor and the config key to change.
    func testResumeIntoADifferentModelNamesTheKey() throws {
        let first = try train(1, run: "model", ["--set", "train.steps=2"])
        XCTAssertEqual(first.status, 0, first.err)
        let r = try train(2, run: "model", ["--set", "train.steps=4", "--set", "model.width=16", "--resume", "auto"])
        assertFailsCleanly(r, ["tensor encoder.", "expected shape", "model.width (8 in the checkpoint, 16 now)"])
        let head = try train(1, run: "model", ["--set", "train.steps=4", "--set", "model.decoder=deeplab", "--resume", "auto"])
        assertFailsCleanly(head, ["model.decoder (bench in the checkpoint, deeplab now)"])
        assertNoProcessLeft()
    }

    // MARK: disk full and I/O errors

    /// The run directory on a small tmpfs that the run's own checkpoints fill (keep all): at the
    /// first checkpoint that does not fit, both ranks exit non-zero with one line naming the file and
    /// "No space left on device"; no .tmp is left, `latest` names a complete checkpoint, and after
    /// the disk is made larger `--resume auto` continues from it.
    func testDiskFullOnTmpfs() throws {
        let mountPoint = dir + "/small"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let mounted = getuid() == 0 ? try Dist.run(["mount", "-t", "tmpfs", "-o", "size=9m", "tmpfs", mountPoint], timeout: 30) : nil
        guard let mounted, mounted.status == 0 else {
            throw XCTSkip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN: \(mounted?.err ?? "not root")); "
                          + "the disk-full case is then covered only by testInjectedWriteFailures")
        }
        tmpfsMount = mountPoint
        // Each checkpoint is ~2.6 MB: three fit, the fourth does not.
        let start = Date()
        let r = try train(2, run: "small/run", ["--set", "train.steps=40", "--set", "checkpoint.every=2",
                                                "--set", "checkpoint.keep=0"], timeout: 120)
        assertFailsCleanly(r, [mountPoint + "/run/checkpoints/step-", "No space left on device", "not saved"])
        XCTAssertTrue(r.err.contains("rank 0"), r.err)
        XCTAssertLessThan(Date().timeIntervalSince(start), 60)
        print(String(format: "disk full on 2 ranks: exit %d, whole run %.1f s, latest = step %@", r.status,
                     Date().timeIntervalSince(start), assertCheckpointsComplete("small/run").map { "\($0)" } ?? "none"))
        let step = assertCheckpointsComplete("small/run")
        XCTAssertNotNil(step)
        assertNoProcessLeft(within: 30)
        // metrics.jsonl has whole lines only.
        for line in metricsLines("small/run") {
            XCTAssertNoThrow(try JSONSerialization.jsonObject(with: Data(line.utf8)), "torn line: \(line)")
        }
        // More room: the run resumes from the last complete checkpoint and finishes.
        XCTAssertEqual(try Dist.run(["mount", "-o", "remount,size=64m", mountPoint], timeout: 30).status, 0)
        let again = try train(2, run: "small/run", ["--set", "train.steps=\(step! + 2)", "--set", "checkpoint.every=2",
                                                    "--resume", "auto"], timeout: 120)
        XCTAssertEqual(again.status, 0, again.err)
        XCTAssertEqual(assertCheckpointsComplete("small/run"), step! + 2)
        // Plots on the full disk: `mtl report` fails naming the figure and the reason, leaving no temporary.
        let filler = mountPoint + "/filler"
        let fd = open(filler, O_WRONLY | O_CREAT, 0o644)
        var block = [UInt8](repeating: 1, count: 4096)
        while block.withUnsafeMutableBytes({ write(fd, $0.baseAddress, $0.count) }) > 0 {}
        close(fd)
        let report = try mtl(1, ["report", mountPoint + "/run", "--out", mountPoint + "/report"])
        assertFailsCleanly(report, [mountPoint + "/report/", ".svg", "No space left on device"])
        let figures = (try? FileManager.default.contentsOfDirectory(atPath: mountPoint + "/report")) ?? []
        XCTAssertEqual(figures.filter { $0.hasSuffix(".tmp") }, [])
        unlink(filler)
    }

    /// A log line that only partly fits on a full disk (the kernel writes what fits in the file's last
    /// page, then ENOSPC) is cut back off: the file keeps whole lines, and says what is missing once
    /// there is room again.
    func testLogLinesStayWholeOnAFullDisk() throws {
        let mountPoint = dir + "/tiny"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let mounted = getuid() == 0 ? try Dist.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mountPoint], timeout: 30) : nil
        guard let mounted, mounted.status == 0 else {
            throw XCTSkip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN: \(mounted?.err ?? "not root"))")
        }
        tmpfsMount = mountPoint
        let path = mountPoint + "/train.log"
        let log = try AppendOnlyFile(path: path)
        XCTAssertTrue(log.append("first\n"))          // the file's first page, mostly empty
        let filler = mountPoint + "/filler"
        let fd = open(filler, O_WRONLY | O_CREAT, 0o644)
        let block = [UInt8](repeating: 1, count: 4096)
        while block.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) > 0 {}
        close(fd)
        let long = String(repeating: "x", count: 20_000) + "\n"   // 4090 bytes fit, the rest does not
        XCTAssertFalse(log.append(long))
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "first\n")
        unlink(filler)
        XCTAssertTrue(log.append("after\n"))
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8),
                       "first\n(1 line(s) could not be written here and are missing)\nafter\n")
    }

    /// Write failures a tmpfs cannot produce, through MTL_TEST_WRITE_FAULT: EIO from a checkpoint's
    /// fsync and from its rename, ENOSPC on `latest`, EIO on the lock file. Each stops the run with the
    /// file and the reason on every rank, keeps the previous checkpoint, and leaves no .tmp.
    /// EIO on metrics.jsonl and train.log warns and training continues, with whole lines only.
    func testInjectedWriteFailures() throws {
        let base = ["--set", "train.steps=6", "--set", "checkpoint.every=2"]
        let stopping: [(String, [String])] = [
            (".h5.tmp#fsync:EIO:1", ["step-00000004.h5.tmp: fsync failed (Input/output error)", "step-00000002.h5"]),
            (".h5#rename:EXDEV:1", ["cannot rename", "Invalid cross-device link", "step-00000002.h5"]),
            ("latest.tmp:ENOSPC:1", ["latest.tmp: cannot write (No space left on device)", "written to"]),
        ]
        for (i, (fault, parts)) in stopping.enumerated() {
            let r = try train(2, run: "inj\(i)", base, env: ["MTL_TEST_WRITE_FAULT": fault], timeout: 90)
            assertFailsCleanly(r, parts)
            XCTAssertTrue(r.err.contains("rank 0"), r.err)
            XCTAssertEqual(assertCheckpointsComplete("inj\(i)"), 2, fault)
        }
        let lock = try train(1, run: "inj-lock", base, env: ["MTL_TEST_WRITE_FAULT": ".lock#flock:ENOLCK"])
        assertFailsCleanly(lock, [".lock: cannot lock the run directory", "No locks available", "MTL_RUN_LOCK=off"])

        let logs = try train(2, run: "inj-log", base, env: ["MTL_TEST_WRITE_FAULT": "metrics.jsonl:EIO:3,train.log:EIO:4"])
        XCTAssertEqual(logs.status, 0, logs.err)
        XCTAssertTrue(logs.err.contains("warning: \(dir)/inj-log/metrics.jsonl: cannot write (Input/output error)"), logs.err)
        XCTAssertTrue(logs.err.contains("warning: \(dir)/inj-log/train.log: cannot write (Input/output error)"), logs.err)
        XCTAssertEqual(metricsLines("inj-log").count, 3)
        XCTAssertEqual(assertCheckpointsComplete("inj-log"), 6)
        assertNoProcessLeft()
    }

    // MARK: signals

    /// The pid of a child of `parent` whose /proc/PID/comm is `name`.
    static func childPid(of parent: Int32, named name: String) -> Int32? {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return nil }
        for e in entries {
            guard let pid = Int32(e), let stat = try? String(contentsOfFile: "/proc/\(e)/stat", encoding: .utf8),
                  let comm = try? String(contentsOfFile: "/proc/\(e)/comm", encoding: .utf8) else { continue }
            let fields = stat.split(separator: ")").last?.split(separator: " ") ?? []
            if fields.count > 2, Int32(fields[1]) == parent, comm.trimmingCharacters(in: .whitespacesAndNewlines) == name {
                return pid
            }
        }
        return nil
    }

    /// Signals to mpirun, to launch/mtl-mpirun and to one rank (docs/RELIABILITY.md has the timeline):
    /// - TERM or USR1 to a rank, USR1 to mpirun, TERM to launch/mtl-mpirun (which passes it to mpirun
    ///   as USR1, forwarded at once): the ranks agree at the next step boundary, rank 0 checkpoints,
    ///   every process exits 0.
    /// - TERM to mpirun itself is not forwarded: Open MPI 4.1 tears the job down — SIGCONT, sleep
    ///   odls_base_sigkill_timeout (1 s), SIGTERM, sleep again, SIGKILL — and exits 1, ≈ 2 s after.
    ///   The ranks get 1 s to finish their step and write the checkpoint: a race that load decides
    ///   (measured here on a busy machine: the SIGKILL sometimes falls inside the checkpoint write).
    ///   What must hold is what holds either way: the job ends, mpirun exits 1, `latest` names no
    ///   partial file, and a checkpoint written is of the step both ranks stopped at.
    /// - The same with odls_base_sigkill_timeout=3 (SIGTERM at +3 s, SIGKILL at +6 s or when a rank has
    ///   exited): a checkpoint, always.
    /// - SIGKILL of a rank ends the job non-zero.
    /// Every stop is at one step on both ranks: rank 1's last step line (rank-1.log), rank 0's stop
    /// line and the checkpoint agree. Always within 30 s, with no rank left.
    func testSignals() throws {
        enum Target { case mpirun, launcher, rank(Int) }
        let launcher = packageRoot + "/launch/mtl-mpirun"
        let grace = ["OMPI_MCA_odls_base_sigkill_timeout": "3"]
        let cases: [(run: String, sig: Int32, target: Target, env: [String: String])] = [
            ("term-mpirun", SIGTERM, .mpirun, [:]), ("term-mpirun-grace3", SIGTERM, .mpirun, grace),
            ("usr1-mpirun", SIGUSR1, .mpirun, [:]), ("term-launcher", SIGTERM, .launcher, [:]),
            ("term-rank0", SIGTERM, .rank(0), [:]), ("usr1-rank1", SIGUSR1, .rank(1), [:]),
            ("kill-rank0", SIGKILL, .rank(0), [:]), ("kill-rank1", SIGKILL, .rank(1), [:])]
        for (run, sig, target, env) in cases {
            var sentAt: Date? = nil
            let extra = ["--set", "train.steps=100000", "--set", "log.every=1", "--log-all-ranks"]
            let onStart: (Process) -> Void = { p in
                let deadline = Date().addingTimeInterval(60)
                while Date() < deadline {
                    var mpirun: Int32? = p.processIdentifier
                    if case .launcher = target { mpirun = Self.childPid(of: p.processIdentifier, named: "mpirun") }
                    var pid = mpirun
                    if case .launcher = target { pid = p.processIdentifier }
                    if case .rank(let k) = target { pid = mpirun.flatMap { Dist.rankPid(parent: $0, rank: k) } }
                    if self.metricsLines(run).count >= 2, mpirun != nil, let pid {
                        kill(pid, sig)
                        sentAt = Date()
                        return
                    }
                    usleep(20_000)
                }
            }
            let r: Dist.Result
            if case .launcher = target {
                r = try Dist.run(["bash", launcher, "-n", "2", "--bin", try Dist.mtlBinary(), "--",
                                  "train", "--config", config, "--run-dir", dir + "/" + run] + quick + extra,
                                 timeout: 120, onStart: onStart)
            } else {
                r = try train(2, run: run, extra, env: env, timeout: 120, onStart: onStart)
            }
            XCTAssertNotNil(sentAt, "\(run): never signalled")
            var seconds = -1.0
            if let t = sentAt {
                seconds = Date().timeIntervalSince(t)
                XCTAssertLessThan(seconds, 30, run)
            }
            assertNoProcessLeft(within: 30)
            assertNoCrashReport(r)
            if sig == SIGKILL {
                XCTAssertNotEqual(r.status, 0, run)
                print(String(format: "signal %@: job ended %.1f s after the signal, exit %d", run, seconds, r.status))
                continue
            }
            let log = try String(contentsOfFile: dir + "/\(run)/train.log", encoding: .utf8)
            let stopLine = log.components(separatedBy: "\n").first { $0.contains("stop signal received") }
            let stopStep = stopLine?.components(separatedBy: "checkpointing at step ").dropFirst().first
                .flatMap { Int($0.prefix { $0.isNumber }) }
            let listing = checkpointListing(run)
            // Rank 1's last step line ("step N | ...") is the step it stopped at.
            let rank1 = (try? String(contentsOfFile: dir + "/\(run)/rank-1.log", encoding: .utf8)) ?? ""
            let rank1Last = rank1.split(separator: "\n").last.flatMap { Int($0.dropFirst(5).prefix { $0.isNumber }) }
            var teardown = false
            if case .mpirun = target, sig == SIGTERM { teardown = true }
            if teardown {
                // mpirun exits 1 whatever the ranks did. Its ranks get SIGTERM only after the first
                // sleep(odls_base_sigkill_timeout); the second ends early when a rank exits (SIGCHLD).
                let timeout = Double(env["OMPI_MCA_odls_base_sigkill_timeout"] ?? "1")!
                XCTAssertEqual(r.status, 1, "\(run): \(r.err)")
                XCTAssertGreaterThan(seconds, timeout, "\(run): the job ended before mpirun's first sleep of \(timeout) s was over")
                XCTAssertEqual(listing.unloadable, [], "\(run): \(listing)")
                if env.isEmpty {
                    if let newest = listing.newestLoadable {
                        // Won the race: the checkpoint is of the step both ranks stopped at. (`latest` may be
                        // missing if the SIGKILL fell between the rename and its write; resume auto reads the file.)
                        XCTAssertEqual(newest, stopStep, "\(run): \(listing)")
                        XCTAssertEqual(rank1Last, stopStep, "\(run): rank 1 stopped at another step: \(rank1.suffix(200))")
                        XCTAssertTrue(listing.latestStep == nil || listing.latestStep == newest, "\(run): \(listing)")
                    } else {
                        // Lost it: SIGKILL before the step and the checkpoint were done (at most a .tmp is left).
                        XCTAssertNil(listing.latestStep, "\(run): \(listing)")
                    }
                    print(String(format: "signal %@: %@ (%@), job ended %.1f s after the signal, exit %d", run,
                                 listing.newestLoadable.map { "checkpoint of step \($0) on both ranks" } ?? "no checkpoint",
                                 stopStep.map { "stop line at step \($0)" } ?? "no stop line", seconds, r.status))
                    continue
                }
            } else {
                XCTAssertEqual(r.status, 0, "\(run): \(r.err)")
            }
            XCTAssertNotNil(stopStep, "\(run): no stop line; exit \(r.status); \(log.suffix(400)); stderr: \(r.err.suffix(600))")
            XCTAssertEqual(assertCheckpointsComplete(run), stopStep, "\(run): the checkpoint is not of the step the ranks stopped at: \(listing)")
            XCTAssertEqual(rank1Last, stopStep, "\(run): rank 1 stopped at another step: \(rank1.suffix(200))")
            print(String(format: "signal %@: checkpoint of step %d on both ranks, job ended %.1f s after the signal, exit %d",
                         run, stopStep ?? -1, seconds, r.status))
        }
    }

    /// A stdout nobody reads (mpirun stops reading its ranks' output while it handles a signal) must not
    /// stall training: rank 0 echoes a line only when stdout can take it and drops the rest (train.log has
    /// every line). 3000 steps logged every step fill a 64 KB pipe after ~500 lines; before the change the
    /// process blocked there in write(2) until this test's timeout.
    func testUnreadStdoutDoesNotStallTraining() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try Dist.mtlBinary())
        p.arguments = ["train", "--config", config, "--run-dir", dir + "/unread"] + quick
            + ["--set", "train.steps=3000", "--set", "log.every=1"]
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let deadline = Date().addingTimeInterval(240)
        while p.isRunning && Date() < deadline { usleep(100_000) }
        let finished = !p.isRunning
        if !finished { p.terminate() }
        let echoed = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertTrue(finished, "training with an unread stdout did not finish within 240 s (blocked writing to stdout?)")
        XCTAssertEqual(p.terminationStatus, 0, String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
        let log = try String(contentsOfFile: dir + "/unread/train.log", encoding: .utf8)
        XCTAssertTrue(log.contains("step 3000/3000"), "train.log lacks the last step line: \(log.suffix(300))")
        XCTAssertLessThan(echoed.utf8.count, 1 << 20, "more was echoed than a pipe holds, so nothing was dropped")
        XCTAssertFalse(echoed.contains("step 3000/3000"), "the last step line reached the unread pipe")
    }

    // MARK: concurrency

    /// Two jobs, one run directory: the second exits non-zero at once naming the owner (PID, host,
    /// since when) on every rank; the first is untouched. After kill -9 of the first, `--resume auto`
    /// takes the lock again with no cleanup.
    func testTwoJobsOneRunDirectory() throws {
        var second: Dist.Result? = nil
        var ownerPid: Int32 = 0
        let first = try train(1, run: "shared", ["--set", "train.steps=100000", "--set", "log.every=1",
                                                 "--set", "checkpoint.every=3"], timeout: 120) { p in
            ownerPid = p.processIdentifier
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline, self.metricsLines("shared").count < 4 { usleep(20_000) }
            let linesBefore = self.metricsLines("shared").count
            second = try? self.train(2, run: "shared", ["--set", "train.steps=10"], timeout: 60)
            XCTAssertTrue(p.isRunning, "the first job died")
            XCTAssertGreaterThan(self.metricsLines("shared").count, linesBefore, "the first job stopped writing")
            kill(p.processIdentifier, SIGKILL)
        }
        XCTAssertEqual(first.status, SIGKILL)
        guard let second else { return XCTFail("the second job did not run") }
        // /usr/bin/env execs mtl, so the owner's PID is the Process's.
        assertFailsCleanly(second, ["run directory \(dir)/shared is in use by PID \(ownerPid) on ", " since 20"])
        XCTAssertLessThan(second.seconds, 20)
        print(String(format: "second job on a used run directory: exit %d after %.1f s", second.status, second.seconds))
        let lines = metricsLines("shared")
        let steps = lines.compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
            .compactMap { $0["step"] as? Int }
        XCTAssertEqual(steps, Array(1...steps.count), "metrics.jsonl was written by more than one job")
        let step = assertCheckpointsComplete("shared", allowTmp: true)!   // killed -9, perhaps mid-save
        let resumed = try train(1, run: "shared", ["--set", "train.steps=\(step + 1)", "--resume", "auto"])
        XCTAssertEqual(resumed.status, 0, resumed.err)
        assertNoProcessLeft()
    }
}
