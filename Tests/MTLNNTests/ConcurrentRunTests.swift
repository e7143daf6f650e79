import Foundation
import XCTest
@testable import MTLCore
import MTLNN

/// `concurrentRun`, the one hand-off to worker threads: on the main thread libgomp's team (loaded
/// here with oneDNN), elsewhere libdispatch. Every index runs exactly once on every path — a team
/// smaller than asked for (a region inside a region), a thread that is not the main one — and the
/// calling thread takes part.
final class ConcurrentRunTests: XCTestCase {
    override func tearDown() { Threads.set(1) }

    /// Runs `count` indices, recording how often each ran and on which thread.
    private func record(_ count: Int) -> (runs: [Int], threads: [pthread_t]) {
        var runs = [Int](repeating: 0, count: count)
        var threads = [pthread_t](repeating: pthread_self(), count: count)
        runs.withUnsafeMutableBufferPointer { r in
            threads.withUnsafeMutableBufferPointer { t in
                concurrentRun(count) { i in
                    r[i] += 1
                    t[i] = pthread_self()
                    usleep(2000)
                }
            }
        }
        return (runs, threads)
    }

    func testTheMainThreadUsesTheOpenMPTeamAndTakesPart() throws {
        XCTAssertTrue(Thread.isMainThread, "XCTest runs tests on the main thread")
        guard OneDNN.available else { throw XCTSkip("no oneDNN, so no libgomp in this process") }
        XCTAssertNotNil(OpenMPTeam.entryPoints, "libgomp is loaded with oneDNN: GOMP_parallel must be found")
        Threads.set(2)
        let (runs, threads) = record(2)
        XCTAssertEqual(runs, [1, 1])
        XCTAssertTrue(pthread_equal(threads[0], pthread_self()) != 0, "index 0 runs on the calling thread")
        XCTAssertTrue(pthread_equal(threads[1], pthread_self()) == 0, "index 1 runs on a worker")
    }

    func testEveryIndexOnceWhateverTheTeam() {
        for threadCount in [1, 2, 3] {
            Threads.set(threadCount)
            XCTAssertEqual(record(7).runs, [Int](repeating: 1, count: 7), "\(threadCount) threads")
            // A region inside a region: libgomp gives the inner one a team of one thread.
            var runs = [Int](repeating: 0, count: 12)
            runs.withUnsafeMutableBufferPointer { r in
                concurrentRun(3) { i in
                    concurrentRun(4) { j in r[i * 4 + j] += 1 }
                }
            }
            XCTAssertEqual(runs, [Int](repeating: 1, count: 12), "nested, \(threadCount) threads")
        }
        XCTAssertEqual(record(1).runs, [1])
        XCTAssertEqual(record(0).runs, [])
    }

    func testAnotherThreadUsesLibdispatch() {
        Threads.set(2)
        final class Outcome: @unchecked Sendable { var runs: [Int] = [] }
        let done = expectation(description: "loader-like thread"), outcome = Outcome()
        let thread = Thread {
            outcome.runs = self.record(5).runs
            done.fulfill()
        }
        thread.start()
        wait(for: [done], timeout: 30)
        XCTAssertEqual(outcome.runs, [1, 1, 1, 1, 1])
    }

    /// parallelFor's chunks cover 0..<n once each, on the team, for any minChunk.
    func testParallelForCoversEveryIndex() {
        Threads.set(2)
        for (n, minChunk) in [(1, 1), (2, 1), (5, 2), (1000, 64), (3, 4)] {
            var hits = [Int](repeating: 0, count: n)
            hits.withUnsafeMutableBufferPointer { h in parallelFor(n, minChunk: minChunk) { h[$0] += 1 } }
            XCTAssertEqual(hits, [Int](repeating: 1, count: n), "n \(n), minChunk \(minChunk)")
        }
    }
}
