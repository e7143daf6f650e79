import Foundation
import XCTest
@testable import MTLCore
@testable import MTLTrain
import MTLTestSupport

/// Two real "hosts" on this machine (issue 17): `launch/two-hosts up` makes two network + UTS
/// namespaces joined by a veth pair, and `launch/mtl-mpirun --cluster two-hosts -n 4` runs 2 ranks
/// on each over TCP (Open MPI's rsh launcher through launch/two-hosts instead of ssh). Everything a
/// multi-node job does that a one-node job does not: per-host local ranks, TCP between hosts, rank
/// 0's host the only writer, the loss of a host or of the link, pre-emption of ranks on two hosts.
/// Skipped, saying why, when not root or when the namespaces cannot be made.
final class TwoHostsTests: XCTestCase {
    typealias Dist = DistributedTrainingTests
    static let root = Dist.packageRoot
    static let twoHosts = root + "/launch/two-hosts"
    /// Whether this class brought the hosts up (then it takes them down at the end).
    nonisolated(unsafe) static var broughtUp = false
    nonisolated(unsafe) static var setUpProblem: String? = nil
    /// The `-n 1` reference run of the shared config, made once for the class.
    nonisolated(unsafe) static var reference: String? = nil

    override class func setUp() {
        super.setUp()
        guard getuid() == 0 else {
            setUpProblem = "the two-hosts tests need root (they create network and UTS namespaces and a veth pair)"
            return
        }
        let status = try? Dist.run(["/bin/bash", twoHosts, "status"], timeout: 30)
        if status?.status == 0 { return }   // already up (somebody's debugging session): used, left up
        guard let up = try? Dist.run(["/bin/bash", twoHosts, "up"], timeout: 60), up.status == 0 else {
            let r = try? Dist.run(["/bin/bash", twoHosts, "up"], timeout: 60)
            setUpProblem = "network namespaces cannot be created here (launch/two-hosts up: \((r?.err ?? "did not run").trimmingCharacters(in: .whitespacesAndNewlines)))"
            _ = try? Dist.run(["/bin/bash", twoHosts, "down"], timeout: 60)
            return
        }
        broughtUp = true
    }

    override class func tearDown() {
        if broughtUp { _ = try? Dist.run(["/bin/bash", twoHosts, "down"], timeout: 60) }
        if let r = reference { try? FileManager.default.removeItem(atPath: (r as NSString).deletingLastPathComponent) }
        reference = nil
        super.tearDown()
    }

    var dir = ""
    var config = ""

    override func setUpWithError() throws {
        if let problem = Self.setUpProblem { throw XCTSkip(problem) }
        _ = try Dist.mtlBinary()
        dir = NSTemporaryDirectory() + "mtl2h-test-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        config = try Self.sharedConfig()
        // A test that failed half-way may have left the link down.
        _ = try Dist.run(["/bin/bash", Self.twoHosts, "link", "up"], timeout: 30)
    }

    override func tearDownWithError() throws {
        for pid in processes(mentioning: dir) { kill(pid, SIGKILL) }
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// The data and config every case trains (in a directory of the class, kept until tearDown):
    /// IAL, SyncBN, SGD at a small rate (see DistributedTrainingTests.testWorldSizeInvariance),
    /// batch 4 = 1 sample per rank on 4 ranks.
    static func sharedConfig() throws -> String {
        let base = NSTemporaryDirectory() + "mtl2h-shared"
        let config = base + "/tiny.yaml"
        if FileManager.default.fileExists(atPath: config) && reference != nil { return config }
        try? FileManager.default.removeItem(atPath: base)
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        let data = base + "/synth.h5"
        let r = try Dist.run([try Dist.mtlBinary(), "synth", "--out", data, "--samples", "16", "--val-samples", "4",
                              "--height", "32", "--width", "32", "--seed", "4"])
        XCTAssertEqual(r.status, 0, r.err)
        try tinyConfigYAML(data: data, steps: 12, checkpointEvery: 0, method: "ial", extra: "")
            .write(toFile: config, atomically: true, encoding: .utf8)
        reference = base + "/n1"
        return config
    }

    /// (A constant rate after the warm-up: runs of different train.steps then share their first steps.)
    static let common = ["--set", "model.sync_bn=true", "--set", "optim.name=sgd", "--set", "optim.lr=0.0005",
                         "--set", "schedule.name=constant",
                         "--set", "model.head=bench", "--set", "model.width=8", "--set", "log.every=1"]

    /// `launch/mtl-mpirun --cluster two-hosts -n 4 -- train ...` (the release or debug mtl).
    func trainTwoHosts(run: String, _ extra: [String], timeout: Double = 120,
                       onStart: ((Process) -> Void)? = nil) throws -> Dist.Result {
        try Dist.run(["/bin/bash", Self.root + "/launch/mtl-mpirun", "--cluster", "two-hosts", "-n", "4",
                      "--bin", try Dist.mtlBinary(), "--", "train", "--config", config, "--run-dir", dir + "/" + run]
                     + Self.common + extra, timeout: timeout, onStart: onStart)
    }

    /// The `-n 1` reference (no mpirun), 12 steps, once per class.
    func referenceRun() throws -> String {
        let path = Self.reference!
        if !FileManager.default.fileExists(atPath: path + "/checkpoints/latest") {
            let r = try Dist.run([try Dist.mtlBinary(), "train", "--config", config, "--run-dir", path]
                                 + Self.common + ["--set", "checkpoint.every=1", "--set", "checkpoint.keep=12"])
            XCTAssertEqual(r.status, 0, r.err)
        }
        return path
    }

    // MARK: records

    /// The train records so far (none while the file does not exist yet).
    func trainRecords(_ runDir: String) -> [[String: Any]] { (try? MTLTestSupport.trainRecords(runDir)) ?? [] }

    func values(_ runDir: String, _ prefix: String) -> [[Double]] {
        trainRecords(runDir).map { o in ["seg", "depth", "normals"].map { (o["\(prefix).\($0)"] as? Double) ?? .nan } }
    }

    /// Records 1...8 at `tolerance`, later ones at 1e-3 (see DistributedTrainingTests.testWorldSizeInvariance:
    /// after the first steps a ReLU/max-pool decision flips now and then between world sizes).
    func assertClose(_ a: [[Double]], _ b: [[Double]], _ tolerance: Double, _ what: String,
                     file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        for (step, (x, y)) in zip(a, b).enumerated() {
            let tolerance = step < 8 ? tolerance : max(tolerance, 1e-3)
            for (u, v) in zip(x, y) {
                XCTAssertEqual(u, v, accuracy: tolerance * max(1, abs(u)), "\(what), record \(step + 1)", file: file, line: line)
            }
        }
    }

    func modelDifference(_ a: String, _ b: String) throws -> (worst: Double, worstName: String, global: Double, compared: Int) {
        relativeDifference(try CheckpointStore.load(a).tensors, try CheckpointStore.load(b).tensors,
                           include: { $0.hasPrefix("model.") && !$0.contains("num_batches") })
    }

    /// The worst per-tensor ‖θ_a − θ_b‖ / ‖θ_a‖ over the model tensors.
    func worstRelativeDifference(_ a: String, _ b: String) throws -> Double { try modelDifference(a, b).worst }

    /// ‖θ_a − θ_b‖ / ‖θ_a‖ over all model tensors together (BN biases start at 0 and stay ~1e-4 in
    /// 12 steps, so a per-tensor ratio there measures rounding against nearly nothing).
    func globalRelativeDifference(_ a: String, _ b: String) throws -> Double { try modelDifference(a, b).global }

    // MARK: processes

    /// The pids of the `mtl` ranks of this test (OMPI_COMM_WORLD_RANK in their environment), by rank.
    func rankPids() -> [Int: Int32] {
        var out: [Int: Int32] = [:]
        for pid in processes(mentioning: dir) {
            guard let env = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { continue }
            for v in env.split(separator: 0).map({ String(decoding: $0, as: UTF8.self) })
            where v.hasPrefix("OMPI_COMM_WORLD_RANK=") {
                if let r = Int(v.dropFirst("OMPI_COMM_WORLD_RANK=".count)) { out[r] = pid }
            }
        }
        return out
    }

    /// The network namespace (inode) of a process, and of a two-hosts host.
    func netns(pid: Int32) -> UInt64? { inode("/proc/\(pid)/ns/net") }
    func netns(host: String) -> UInt64? { inode("/run/netns/\(host)") }
    func inode(_ path: String) -> UInt64? {
        var st = stat()
        return stat(path, &st) == 0 ? UInt64(st.st_ino) : nil
    }

    /// Nothing of this test runs any more, and nothing at all runs inside the two namespaces.
    func assertNoProcessLeft(within seconds: Double = 10, file: StaticString = #filePath, line: UInt = #line) {
        let deadline = Date().addingTimeInterval(seconds)
        var left: [String] = []
        repeat {
            left = processes(mentioning: dir).map { "pid \($0)" }
            for host in ["mtl2h-h1", "mtl2h-h2"] {
                let r = try? Dist.run(["ip", "netns", "pids", host], timeout: 10)
                let pids = (r?.out ?? "").split(separator: "\n").map(String.init)
                left += pids.map { "pid \($0) in \(host)" }
            }
            if left.isEmpty { return }
            usleep(200_000)
        } while Date() < deadline
        XCTFail("processes left \(seconds) s after the job ended: \(left)", file: file, line: line)
    }

    /// Waits (polling) until the run has logged `steps` train records; false after `seconds`.
    func waitForSteps(_ runDir: String, _ steps: Int, seconds: Double = 90) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if trainRecords(runDir).count >= steps { return true }
            usleep(50_000)
        }
        return false
    }

    // MARK: the cases

    /// 2 hosts × 2 ranks = 4 ranks over TCP give the losses, IAL coefficients and parameters of
    /// `-n 1` (SyncBN, same global batch); train.log's placement line shows 2 ranks per host with
    /// local ranks 0 and 1 and 1 thread each (cores_per_node 2 / 2 ranks), as mtl-mpirun sets up a
    /// real 2-node job; only rank 0's host wrote the run directory (its lock names mtl2h-h1).
    func testFourRanksOnTwoHostsEqualOneRank() throws {
        let ref = try referenceRun()
        let r = try trainTwoHosts(run: "n4", ["--set", "train.steps=8", "--set", "checkpoint.every=4",
                                              "--set", "checkpoint.keep=5", "--check-consistency", "1"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("4 rank(s), 2 per node on 2 node(s), 1 thread(s) per rank"), r.err)
        let run = dir + "/n4"
        assertClose(values(ref, "loss").prefix(8).map { $0 }, values(run, "loss"), 1e-5, "losses -n 1 vs 2 hosts × 2")
        assertClose(values(ref, "coef").prefix(8).map { $0 }, values(run, "coef"), 1e-5, "IAL coefficients")
        XCTAssertLessThan(try worstRelativeDifference(ref + "/checkpoints/step-00000008.h5",
                                                      run + "/checkpoints/step-00000008.h5"), 1e-5)
        let log = try String(contentsOfFile: run + "/train.log", encoding: .utf8)
        XCTAssertTrue(log.contains("placement: 2 host(s): mtl2h-h1 ranks 0,1 (local 0,1 of 2; threads 1,1); "
            + "mtl2h-h2 ranks 2,3 (local 0,1 of 2; threads 1,1)"), log)
        let files = try FileManager.default.contentsOfDirectory(atPath: run).sorted()
        XCTAssertEqual(files, [".lock", "checkpoints", "config.yaml", "metrics.jsonl", "train.log"])
        let lock = try String(contentsOfFile: run + "/.lock", encoding: .utf8)
        XCTAssertTrue(lock.contains("mtl2h-h1"), "the run directory's lock does not name rank 0's host: \(lock)")
        assertNoProcessLeft()
    }

    /// Parameter-level PCGrad (T reduce-scatters, the Gram, one all-gather, over TCP between the
    /// hosts) gives the coefficients and losses of `-n 1`.
    func testParameterLevelPCGradOverTCPEqualsOneRank() throws {
        let pc = ["--set", "method.name=pcgrad", "--set", "method.level=parameters", "--set", "train.steps=4"]
        let one = try Dist.run([try Dist.mtlBinary(), "train", "--config", config, "--run-dir", dir + "/pc1"] + Self.common + pc)
        XCTAssertEqual(one.status, 0, one.err)
        let four = try trainTwoHosts(run: "pc4", pc)
        XCTAssertEqual(four.status, 0, four.err)
        XCTAssertEqual(values(dir + "/pc1", "loss").count, 4)
        assertClose(values(dir + "/pc1", "loss"), values(dir + "/pc4", "loss"), 1e-5, "PCGrad losses")
        assertClose(values(dir + "/pc1", "coef"), values(dir + "/pc4", "coef"), 1e-5, "PCGrad coefficients")
        assertNoProcessLeft()
    }

    /// SIGKILL of both ranks of the second host → the job ends non-zero within 30 s, Open MPI's
    /// message names the rank and the host, and no process is left on either host.
    func testNodeLossEndsTheJob() throws {
        var killedAt: Date? = nil
        var onHost2 = false
        let r = try trainTwoHosts(run: "node", ["--set", "train.steps=100000"], timeout: 120) { _ in
            guard self.waitForSteps(self.dir + "/node", 2) else { return }
            let pids = self.rankPids()
            guard let a = pids[2], let b = pids[3] else { return }
            onHost2 = self.netns(pid: a) != nil && self.netns(pid: a) == self.netns(host: "mtl2h-h2")
                && self.netns(pid: b) == self.netns(host: "mtl2h-h2")
            kill(a, SIGKILL)
            kill(b, SIGKILL)
            killedAt = Date()
        }
        let ended = Date()
        guard let k = killedAt else { return XCTFail("ranks 2 and 3 never started: \(r.err)") }
        XCTAssertTrue(onHost2, "ranks 2 and 3 did not run in mtl2h-h2's network namespace")
        XCTAssertNotEqual(r.status, 0, r.err)
        let seconds = ended.timeIntervalSince(k)
        XCTAssertLessThan(seconds, 30, r.err)
        print("two-hosts node loss: job ended \(String(format: "%.1f", seconds)) s after SIGKILL of host 2's ranks")
        let named = r.err.split(separator: "\n").contains { l in
            (l.contains("rank 2") || l.contains("rank 3")) && l.contains("mtl2h-h2")
        }
        XCTAssertTrue(named, "no line names rank 2 or 3 and host mtl2h-h2: \(r.err)")
        assertNoProcessLeft()
    }

    /// The veth link taken down mid-step: no hang — Open MPI's daemons (TCP keepalive 5 s + 3 × 2 s,
    /// cluster-configs/two-hosts.yaml) see the lost connection and end the job non-zero within the
    /// documented 11 s (asserted: < 25 s); nothing is left on either host; with the link back,
    /// `--resume auto` continues from the last complete checkpoint.
    func testLinkLossEndsTheJobAndResumeContinues() throws {
        var downAt: Date? = nil
        let run = dir + "/link"
        let r = try trainTwoHosts(run: "link", ["--set", "train.steps=100000", "--set", "checkpoint.every=2",
                                                "--set", "checkpoint.keep=2"], timeout: 120) { _ in
            guard self.waitForSteps(run, 5) else { return }
            if (try? Dist.run(["/bin/bash", Self.twoHosts, "link", "down"], timeout: 30))?.status == 0 { downAt = Date() }
        }
        let ended = Date()
        _ = try Dist.run(["/bin/bash", Self.twoHosts, "link", "up"], timeout: 30)
        guard let d = downAt else { return XCTFail("the link was never taken down: \(r.err)") }
        XCTAssertNotEqual(r.status, 0, r.err)
        let seconds = ended.timeIntervalSince(d)
        XCTAssertLessThan(seconds, 25, r.err)
        print("two-hosts link loss: job ended \(String(format: "%.1f", seconds)) s after the link went down")
        XCTAssertTrue(r.err.contains("lost communication with a remote daemon"), r.err)
        XCTAssertTrue(r.err.contains("mtl2h-h2"), r.err)
        assertNoProcessLeft()
        // The newest complete checkpoint, and a resume from it.
        let store = CheckpointStore(directory: run + "/checkpoints")
        guard let latest = store.latest(), let step = try CheckpointStore.load(latest).meta["step"].flatMap({ Int($0) }) else {
            return XCTFail("no complete checkpoint after the link loss")
        }
        XCTAssertGreaterThanOrEqual(step, 4)
        let logged = trainRecords(run).count
        let again = try trainTwoHosts(run: "link", ["--set", "train.steps=\(step + 2)", "--set", "checkpoint.every=2",
                                                    "--resume", "auto"])
        XCTAssertEqual(again.status, 0, again.err)
        let log = try String(contentsOfFile: run + "/train.log", encoding: .utf8)
        XCTAssertTrue(log.contains("resumed from ") && log.contains((latest as NSString).lastPathComponent + " at step \(step)"), log)
        XCTAssertEqual(trainRecords(run).count, logged + 2)
        XCTAssertNotNil(store.list().first { $0.0 == step + 2 }, "no checkpoint of step \(step + 2)")
        assertNoProcessLeft()
    }

    /// SIGUSR1 to mpirun (Slurm's --signal=B:USR1) → Open MPI forwards it to every rank on both
    /// hosts, they agree at the next step boundary, one checkpoint, exit 0; resumed on 1 host × 2
    /// ranks (plain mpirun -n 2), the run continues at the next step (every step logged once) with the
    /// losses of the uninterrupted `-n 1` run; the checkpoint equals -n 1's state at that step (1e-5).
    /// (Float tolerance, not bits: 4 and 2 ranks sum in a different order.)
    func testPreemptionAcrossHostsAndResumeOnOneHost() throws {
        let ref = try referenceRun()
        let run = dir + "/pre"
        var signalled = false
        let first = try trainTwoHosts(run: "pre", ["--set", "checkpoint.every=0"]) { mpirun in
            guard self.waitForSteps(run, 3) else { return }
            // mtl-mpirun runs mpirun as its child (it turns SIGTERM into SIGUSR1); two-hosts exec,
            // ip netns exec and nsenter all exec, so the launcher's child is mpirun itself.
            guard let pid = FaultTests.childPid(of: mpirun.processIdentifier, named: "mpirun") else {
                return XCTFail("no mpirun under launch/mtl-mpirun (pid \(mpirun.processIdentifier))")
            }
            kill(pid, SIGUSR1)
            signalled = true
        }
        XCTAssertTrue(signalled)
        XCTAssertEqual(first.status, 0, first.err)
        let stoppedAt = trainRecords(run).count
        XCTAssertLessThan(stoppedAt, 12, "the run was not interrupted")
        let store = CheckpointStore(directory: run + "/checkpoints")
        XCTAssertEqual(store.list().map(\.0), [stoppedAt], "exactly one checkpoint, at the step it stopped")
        assertNoProcessLeft()
        // The checkpoint holds the state after exactly `stoppedAt` steps: that of -n 1 after as many.
        let name = String(format: "step-%08d.h5", stoppedAt)
        if stoppedAt <= 8 {
            XCTAssertLessThan(try worstRelativeDifference(ref + "/checkpoints/" + name, run + "/checkpoints/" + name), 1e-5)
        }
        let second = try Dist.mpirun(2, ["train", "--config", config, "--run-dir", run, "--resume", "auto"] + Self.common)
        XCTAssertEqual(second.status, 0, second.err)
        let log = try String(contentsOfFile: run + "/train.log", encoding: .utf8)
        XCTAssertTrue(log.contains("at step \(stoppedAt) (saved with world size 4, now 2)"), log)
        let steps = trainRecords(run).compactMap { $0["step"] as? Int }
        XCTAssertEqual(steps, Array(1...12), "every step once, in order")
        assertClose(values(ref, "loss"), values(run, "loss"), 1e-5, "losses, pre-empted on 2 hosts + resumed on 1, vs -n 1")
        XCTAssertLessThan(try globalRelativeDifference(ref + "/checkpoints/step-00000012.h5",
                                                       run + "/checkpoints/step-00000012.h5"), 5e-4)
    }
}
