import MTLCore
@testable import MTLDist
import XCTest

/// In-process checks of the world of one and of how the factory reads the environment.
/// (MPI itself is tested through real mpirun runs in MPIRunTests.)
final class SingleProcessCommunicatorTests: XCTestCase {
    func testIdentityCollectives() throws {
        let comm = SingleProcessCommunicator()
        XCTAssertEqual([comm.rank, comm.size, comm.localRank, comm.localSize], [0, 1, 0, 1])
        XCTAssertTrue(comm.isRoot)

        var f: [Float] = [1.5, -2, 3]
        f.withUnsafeMutableBufferPointer { comm.allReduceSum($0) }
        XCTAssertEqual(f, [1.5, -2, 3])
        var d: [Double] = [0.25, 7]
        d.withUnsafeMutableBufferPointer { comm.allReduceSum($0) }
        XCTAssertEqual(d, [0.25, 7])
        d.withUnsafeMutableBufferPointer { comm.allReduceMax($0) }
        XCTAssertEqual(d, [0.25, 7])
        d.withUnsafeMutableBufferPointer { (comm as SumReducer).sumInPlace($0) }
        XCTAssertEqual(d, [0.25, 7])

        let pending = f.withUnsafeMutableBufferPointer { comm.startAllReduceSum($0) }
        XCTAssertTrue(pending.test())
        pending.wait()
        XCTAssertEqual(f, [1.5, -2, 3])

        f.withUnsafeMutableBufferPointer { comm.broadcast($0, root: 0) }
        XCTAssertEqual(f, [1.5, -2, 3])
        var bytes: [UInt8] = Array("abc".utf8)
        comm.broadcast(bytes: &bytes, root: 0)
        XCTAssertEqual(bytes, Array("abc".utf8))

        try comm.barrier(timeoutSeconds: 0)
    }

    /// reduce-scatter and all-gather with distinct buffers are copies of the whole vector.
    func testReduceScatterAndAllGatherCopy() {
        let comm = SingleProcessCommunicator()
        let send: [Float] = [1, 2, 3, 4, 5]
        var recv = [Float](repeating: -1, count: 5)
        send.withUnsafeBufferPointer { s in recv.withUnsafeMutableBufferPointer { comm.reduceScatterSum(s, $0) } }
        XCTAssertEqual(recv, send)
        var gathered = [Float](repeating: -1, count: 5)
        recv.withUnsafeBufferPointer { s in gathered.withUnsafeMutableBufferPointer { comm.allGather(s, $0) } }
        XCTAssertEqual(gathered, send)
    }

    func testFactoryChoosesFromEnvironment() throws {
        XCTAssertTrue(try CommunicatorFactory.make(environment: [:]) is SingleProcessCommunicator)
        XCTAssertTrue(try CommunicatorFactory.make(environment: ["SLURM_STEP_NUM_TASKS": "1", "PATH": "/usr/bin"])
            is SingleProcessCommunicator)
        // MTL_FORCE_SINGLE wins over a launcher.
        XCTAssertTrue(try CommunicatorFactory.make(environment: ["MTL_FORCE_SINGLE": "1", "OMPI_COMM_WORLD_SIZE": "2"])
            is SingleProcessCommunicator)

        XCTAssertFalse(CommunicatorFactory.launcherDetected([:]))
        XCTAssertFalse(CommunicatorFactory.launcherDetected(["SLURM_STEP_NUM_TASKS": "1", "SLURM_JOB_ID": "7"]))
        for (key, value) in [("OMPI_COMM_WORLD_SIZE", "2"), ("PMIX_RANK", "0"), ("PMI_RANK", "1"),
                             ("PMI_SIZE", "4"), ("SLURM_STEP_NUM_TASKS", "2")] {
            XCTAssertTrue(CommunicatorFactory.launcherDetected([key: value]), key)
        }
    }

    /// The placement of the one process, and the summary line train.log writes for a 2-host job.
    func testPlacementsAndSummary() throws {
        let p = SingleProcessCommunicator().placements(threads: 3)
        XCTAssertEqual(p.count, 1)
        XCTAssertEqual(p[0].rank, 0)
        XCTAssertEqual(p[0].localRank, 0)
        XCTAssertEqual(p[0].localSize, 1)
        XCTAssertEqual(p[0].threads, 3)
        var name = [CChar](repeating: 0, count: 256)
        XCTAssertEqual(gethostname(&name, 255), 0)
        XCTAssertEqual(p[0].host, String(cString: name))
        let two = [RankPlacement(rank: 0, host: "a", localRank: 0, localSize: 2, threads: 1),
                   RankPlacement(rank: 1, host: "a", localRank: 1, localSize: 2, threads: 1),
                   RankPlacement(rank: 2, host: "b", localRank: 0, localSize: 2, threads: 2),
                   RankPlacement(rank: 3, host: "b", localRank: 1, localSize: 2, threads: 2)]
        XCTAssertEqual(RankPlacement.summary(two),
                       "2 host(s): a ranks 0,1 (local 0,1 of 2; threads 1,1); b ranks 2,3 (local 0,1 of 2; threads 2,2)")
    }
}
