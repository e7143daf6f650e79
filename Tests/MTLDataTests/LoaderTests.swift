import Foundation
import MTLCore
import MTLTestSupport
import XCTest
@testable import MTLData

/// A small synthetic file (all six tasks) for loader tests.
func makeSynthFile(_ dir: String, samples: Int = 24, height: Int = 32, width: Int = 32) throws -> String {
    var o = SynthOptions()
    o.samples = samples
    o.valSamples = 0
    o.height = height
    o.width = width
    o.tasks = knownTasks
    o.seed = 7
    let path = dir + "/synth.h5"
    try Synth.write(to: path, options: o)
    return path
}

/// Every tensor of a batch, flattened in a fixed order (for bitwise comparisons).
func batchValues(_ b: Batch) -> [Float] {
    var out = b.images.array
    for key in b.targets.keys.sorted() { out += b.targets[key]!.array }
    return out
}

/// Runs `body` on another thread and fails (instead of hanging) if it takes more than `seconds`.
func withTimeout(_ seconds: Double, file: StaticString = #filePath, line: UInt = #line, _ body: @escaping () -> Void) {
    let done = DispatchSemaphore(value: 0)
    Thread { body(); done.signal() }.start()
    if done.wait(timeout: .now() + seconds) == .timedOut {
        XCTFail("timed out after \(seconds) s (hang)", file: file, line: line)
    }
}

final class LoaderTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = makeTemporaryDirectory("mtldata-\(name)") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// Steps come in order from startStep, and the batches equal a direct load (+ augmentation)
    /// whatever the depth: depth 1 and depth 3 give bit-identical batches.
    func testPrefetchOrderAndDeterminism() throws {
        let path = try makeSynthFile(dir)
        let augment = Augmentation(seed: 3, minScale: 0.8, maxScale: 1.5, brightness: 0.2, contrast: 0.2, saturation: 0.2)
        let sampler = try ShardedSampler(count: 24, globalBatch: 4, rank: 0, worldSize: 1, seed: 11)
        let start = 4, steps = 9  // crosses the epoch boundary at step 6
        var byDepth: [[[Float]]] = []
        for depth in [1, 3] {
            let loader = PrefetchLoader(dataset: try MTDataset(path: path, split: "train", tasks: knownTasks),
                                        sampler: sampler, startStep: start, depth: depth, augment: augment)
            var got: [[Float]] = []
            for k in 0..<steps {
                if depth == 3 && k == 2 { Thread.sleep(forTimeInterval: 0.05) }  // let the queue fill up
                let (step, batch) = try loader.next()
                XCTAssertEqual(step, start + k)
                XCTAssertEqual(batch.indices, sampler.localBatch(step: step))
                got.append(batchValues(batch))
            }
            loader.stop()
            XCTAssertTrue(loader.threadFinished)
            byDepth.append(got)
        }
        XCTAssertEqual(byDepth[0], byDepth[1])

        // The same numbers from a direct load + Augmenter on this thread.
        let ds = try MTDataset(path: path, split: "train", tasks: knownTasks)
        let augmenter = Augmenter(augment, imageMean: ds.imageMean, imageStd: ds.imageStd)
        let batch = Batch()
        for k in 0..<steps {
            try ds.load(sampler.localBatch(step: start + k), into: batch)
            augmenter.apply(to: batch, epoch: sampler.epoch(ofStep: start + k))
            XCTAssertEqual(batchValues(batch), byDepth[0][k], "step \(start + k)")
        }
        // And the augmentation did change something (the test is not vacuous).
        try ds.load(sampler.localBatch(step: start), into: batch)
        XCTAssertNotEqual(batchValues(batch), byDepth[0][0])
    }

    /// The pool has depth+1 batches and they are recycled: no new Batch objects in steady state.
    func testBatchesAreRecycled() throws {
        let path = try makeSynthFile(dir)
        let sampler = try ShardedSampler(count: 24, globalBatch: 4, rank: 0, worldSize: 1, seed: 1)
        let loader = PrefetchLoader(dataset: try MTDataset(path: path, split: "train", tasks: ["seg"]),
                                    sampler: sampler, startStep: 0, depth: 2, augment: nil)
        var seen = Set<ObjectIdentifier>()
        // With time to fill the queue between calls, the pool of depth+1 = 3 cycles; never more.
        for _ in 0..<12 {
            seen.insert(ObjectIdentifier(try loader.next().batch))
            Thread.sleep(forTimeInterval: 0.02)
        }
        XCTAssertEqual(seen.count, 3)
        loader.stop()
    }

    /// A corrupt sample mid-way: the batches before it arrive, then next() throws the one-line
    /// error naming the file, dataset and sample; the thread ends; nothing hangs.
    func testErrorPropagatesWithoutHang() throws {
        let path = try makeSynthFile(dir)
        let sampler = try ShardedSampler(count: 24, globalBatch: 4, rank: 0, worldSize: 1, seed: 5)
        let badStep = 3
        let badIndex = sampler.localBatch(step: badStep)[1]
        do {
            let f = try H5File.open(path, readOnly: false)
            let bad = [Int16](repeating: 99, count: 32 * 32)
            try bad.withUnsafeBufferPointer {
                try f.writeSlab("/train/seg", start: [badIndex, 0, 0], count: [1, 32, 32], from: $0.baseAddress!)
            }
            f.close()
        }
        let loader = PrefetchLoader(dataset: try MTDataset(path: path, split: "train", tasks: ["seg", "depth"]),
                                    sampler: sampler, startStep: 0, depth: 2, augment: Augmentation(seed: 1))
        var steps: [Int] = []
        var caught: Error?
        withTimeout(20) {
            do {
                for _ in 0..<10 { steps.append(try loader.next().step) }
            } catch { caught = error }
        }
        XCTAssertEqual(steps, Array(0..<badStep))
        guard let e = caught as? MTLError else { return XCTFail("expected an MTLError, got \(String(describing: caught))") }
        XCTAssertFalse(e.message.contains("\n"))
        for word in [path, "/train/seg", "sample \(badIndex)", "label 99 out of range"] {
            XCTAssertTrue(e.message.contains(word), "\(e.message) lacks \(word)")
        }
        XCTAssertTrue(loader.threadFinished)
        XCTAssertThrowsError(try loader.next())  // and again, not a hang
        loader.stop()
    }

    /// stop() joins a thread that is blocked on a full queue; dropping the loader stops it too.
    func testStopJoins() throws {
        let path = try makeSynthFile(dir)
        let sampler = try ShardedSampler(count: 24, globalBatch: 4, rank: 0, worldSize: 1, seed: 5)
        let loader = PrefetchLoader(dataset: try MTDataset(path: path, split: "train", tasks: ["depth"]),
                                    sampler: sampler, startStep: 0, depth: 2, augment: nil)
        _ = try loader.next()
        Thread.sleep(forTimeInterval: 0.05)  // the thread fills the pool and waits
        withTimeout(10) { loader.stop() }
        XCTAssertTrue(loader.threadFinished)
        assertMTLError(["after stop()"]) { _ = try loader.next() }

        // An end step: the thread finishes by itself and next() says so.
        let bounded = PrefetchLoader(dataset: try MTDataset(path: path, split: "train", tasks: ["depth"]),
                                     sampler: sampler, startStep: 2, depth: 1, augment: nil, endStep: 4)
        XCTAssertEqual(try bounded.next().step, 2)
        XCTAssertEqual(try bounded.next().step, 3)
        assertMTLError(["end step"]) { _ = try bounded.next() }

        // deinit stops the thread (weak reference goes away, process does not hang at exit).
        weak var dropped: PrefetchLoader?
        do {
            let l = PrefetchLoader(dataset: try MTDataset(path: path, split: "train", tasks: ["depth"]),
                                   sampler: sampler, startStep: 0, depth: 2, augment: nil)
            dropped = l
            _ = try l.next()
        }
        XCTAssertNil(dropped)
    }

    /// The in-memory cache gives exactly the disk values, and a split above the limit is refused.
    func testCacheEqualsDiskReads() throws {
        let path = try makeSynthFile(dir)
        let disk = try MTDataset(path: path, split: "train", tasks: knownTasks)
        let memory = try MTDataset(path: path, split: "train", tasks: knownTasks, cache: true)
        XCTAssertFalse(disk.isCached)
        XCTAssertTrue(memory.isCached)
        // images 3 B + seg 2 + depth 4 + normals 12 + edges 1 + parts 2 + saliency 1 = 25 B per pixel.
        XCTAssertEqual(memory.cacheBytes, 24 * 32 * 32 * 25)
        let a = Batch(), b = Batch()
        for indices in [[0, 5, 23, 5], [17, 2], Array(0..<24)] {
            try disk.load(indices, into: a)
            try memory.load(indices, into: b)
            XCTAssertEqual(batchValues(a), batchValues(b))
        }
        assertMTLError([path, "/train", "in-memory cache needs", "cache: false"]) {
            _ = try MTDataset(path: path, split: "train", tasks: knownTasks, cache: true, cacheLimitBytes: 1000)
        }
    }
}
