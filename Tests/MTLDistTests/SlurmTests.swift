import Foundation
import MTLTestSupport
import XCTest

/// A real one-node Slurm (launch/slurm-local: munged, slurmctld, slurmd), started and stopped
/// by the test, runs launch/train.sbatch with 2 tasks through `srun --mpi=pmix` and through
/// `mpirun`. Until the trainer exists the job's `mtl` is a stand-in script that runs
/// mtl-commcheck on the job's ranks (so the MPI world Slurm builds is checked collective by
/// collective) and has rank 0 record the arguments and thread count it was given in the run
/// directory. Skips, saying why, when not root or when Slurm is not installed.
final class SlurmTests: XCTestCase {
    /// Starts a test Slurm (unless one of ours is already up); returns the scratch folder and the teardown.
    func startLocalSlurm() throws -> (work: URL, teardown: () -> Void) {
        guard getuid() == 0 else { throw XCTSkip("Slurm test needs root (it starts munged, slurmctld and slurmd)") }
        for tool in ["slurmctld", "slurmd", "munged", "sbatch", "squeue"] where which(tool) == nil
            && !FileManager.default.isExecutableFile(atPath: "/usr/sbin/\(tool)") {
            throw XCTSkip("Slurm is not installed (\(tool) missing): launch/test installs slurm-wlm and munge as root")
        }
        if let conf = try? String(contentsOfFile: "/etc/slurm/slurm.conf", encoding: .utf8),
           !conf.contains("written by mtl launch/slurm-local") {
            throw XCTSkip("/etc/slurm/slurm.conf belongs to a real Slurm set-up: not starting a test one")
        }
        let fm = FileManager.default
        let slurmLocal = packageRoot + "/launch/slurm-local"
        let work = fm.temporaryDirectory.appendingPathComponent("mtl-slurm-test-\(UUID().uuidString)")
        try fm.createDirectory(at: work, withIntermediateDirectories: true)
        let wasUp = (try runProcess(["/usr/bin/pgrep", "-x", "slurmctld"], timeout: 10, launcherFree: true)).status == 0
        let up = try runProcess(["/bin/bash", slurmLocal, "up", work.appendingPathComponent("slurm").path], timeout: 300,
                                launcherFree: true)
        let teardown = {
            if !wasUp {
                _ = try? runProcess(["/bin/bash", slurmLocal, "down", work.appendingPathComponent("slurm").path], timeout: 60,
                                    launcherFree: true)
            }
            try? fm.removeItem(at: work)
        }
        guard up.status == 0 else {
            teardown()
            XCTFail(up.out + up.err)
            throw XCTSkip("launch/slurm-local up failed")
        }
        return (work, teardown)
    }

    /// Waits while squeue lists the job (accounting is off: no sacct); returns whether it finished.
    func waitForJob(_ job: String, seconds: Double) throws -> Bool {
        let start = Date()
        while Date().timeIntervalSince(start) < seconds {
            let q = try runProcess(["squeue", "-h", "-j", job], timeout: 10, launcherFree: true)
            if q.out.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty { return true }
            usleep(300_000)
        }
        return false
    }

    /// The real trainer: train.sbatch with 2 tasks (srun --mpi=pmix) trains a tiny synthetic run; rank 0's
    /// run directory has the config, one metrics record per step, an evaluation and the final checkpoint.
    func testTrainSbatchRunsTheRealTrainer() throws {
        let root = URL(fileURLWithPath: packageRoot)
        let mtl = ["release", "debug"].map { root.appendingPathComponent(".build/\($0)/mtl").path }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let mtl else { throw XCTSkip("mtl is not built (swift build -c release --product mtl)") }
        let (work, teardown) = try startLocalSlurm()
        defer { teardown() }
        let data = work.appendingPathComponent("synth.h5").path
        let synth = try runProcess([mtl, "synth", "--out", data, "--samples", "16", "--height", "32", "--width", "32"],
                                   timeout: 120, launcherFree: true)
        XCTAssertEqual(synth.status, 0, synth.err)
        let runDir = work.appendingPathComponent("run")
        let output = work.appendingPathComponent("job.out")
        let submit = try runProcess([
            "sbatch", "--parsable", "--time=00:05:00", "-o", output.path,
            "--export=ALL,MTL_BIN=\(mtl),MTL_LAUNCHER=srun,RUN_DIR=\(runDir.path)",
            root.appendingPathComponent("launch/train.sbatch").path,
            "--config", "configs/synthetic-tiny.yaml", "--set", "data.path=\(data)", "--set", "train.steps=6",
            "--set", "train.batch_size=4", "--set", "model.width=4", "--set", "model.head_channels=8",
            "--set", "log.every=1", "--set", "train.eval_every=0", "--set", "checkpoint.every=0",
        ], timeout: 30, launcherFree: true, directory: root)
        XCTAssertEqual(submit.status, 0, submit.err)
        let job = submit.out.trimmingCharacters(in: .whitespacesAndNewlines)
        let finished = try waitForJob(job, seconds: 180)
        let log = (try? String(contentsOf: output, encoding: .utf8)) ?? "(no job output)"
        if !finished { _ = try? runProcess(["scancel", job], timeout: 10, launcherFree: true) }
        XCTAssertTrue(finished, "job \(job) still running after 180 s:\n\(log)")
        XCTAssertTrue(log.contains("on 2 rank(s)"), log)
        let files = (try? FileManager.default.contentsOfDirectory(atPath: runDir.path).sorted()) ?? []
        XCTAssertEqual(files, [".lock", "checkpoints", "config.yaml", "metrics.jsonl", "train.log"], log)
        let metrics = (try? String(contentsOf: runDir.appendingPathComponent("metrics.jsonl"), encoding: .utf8)) ?? ""
        XCTAssertEqual(metrics.split(separator: "\n").filter { $0.contains("\"kind\":\"train\"") }.count, 6, log)
        XCTAssertTrue(metrics.contains("\"kind\":\"eval\""), log)
        XCTAssertTrue(FileManager.default.fileExists(atPath: runDir.appendingPathComponent("checkpoints/step-00000006.h5").path), log)
    }

    func testTrainSbatchTwoTasksSrunAndMpirun() throws {
        let root = URL(fileURLWithPath: packageRoot)
        let (work, teardown) = try startLocalSlurm()
        defer { teardown() }

        // The stand-in for mtl: every rank runs the full commcheck, rank 0 then writes the run dir.
        let fake = work.appendingPathComponent("fake-mtl")
        try """
        #!/bin/bash
        run_dir=""; prev=""
        for a in "$@"; do [ "$prev" = --run-dir ] && run_dir=$a; prev=$a; done
        \(try commcheck()) --expect-size 2 || exit $?
        if [ "${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-0}}" = 0 ]; then
            mkdir -p "$run_dir"
            { echo "$*"; echo "threads=$OMP_NUM_THREADS"; } > "$run_dir/args"
        fi
        """.write(to: fake, atomically: true, encoding: .utf8)
        XCTAssertEqual(chmod(fake.path, 0o755), 0)

        for launcher in ["srun", "mpirun"] {
            let runDir = work.appendingPathComponent("run-\(launcher)")
            let output = work.appendingPathComponent("job-\(launcher).out")
            let submit = try runProcess([
                "sbatch", "--parsable", "--time=00:05:00", "-o", output.path,
                "--export=ALL,MTL_BIN=\(fake.path),MTL_LAUNCHER=\(launcher),RUN_DIR=\(runDir.path)",
                root.appendingPathComponent("launch/train.sbatch").path,
                "--config", "configs/synthetic-tiny.yaml",
            ], timeout: 30, launcherFree: true, directory: root)
            XCTAssertEqual(submit.status, 0, submit.err)
            let job = submit.out.trimmingCharacters(in: .whitespacesAndNewlines)
            XCTAssertFalse(job.isEmpty, "sbatch printed no job id: \(submit.err)")

            let finished = try waitForJob(job, seconds: 120)
            let log = (try? String(contentsOf: output, encoding: .utf8)) ?? "(no job output)"
            if !finished { _ = try? runProcess(["scancel", job], timeout: 10, launcherFree: true) }
            XCTAssertTrue(finished, "\(launcher): job \(job) still queued or running after 120 s:\n\(log)")

            let show = try runProcess(["scontrol", "show", "job", job], timeout: 10, launcherFree: true)
            XCTAssertTrue(show.out.contains("JobState=COMPLETED"), "\(launcher):\n\(show.out)\n\(log)")
            XCTAssertTrue(show.out.contains("ExitCode=0:0"), "\(launcher):\n\(show.out)\n\(log)")
            XCTAssertTrue(log.contains("[mtl] training exited with status 0"), log)
            assertAllOK(ProcessResult(command: "sbatch (\(launcher))", status: 0, out: log, err: "", seconds: 0), size: 2)

            let args = (try? String(contentsOf: runDir.appendingPathComponent("args"), encoding: .utf8)) ?? ""
            XCTAssertEqual(args, "train --config configs/synthetic-tiny.yaml --run-dir \(runDir.path) --resume auto\n"
                + "threads=1\n", "\(launcher): run directory\n\(log)")
        }
    }
}
