import Foundation
import XCTest
import MTLCore
@testable import MTLNN
import MTLTestSupport

/// An all-reduce between two "ranks" running on two threads: each call blocks until both
/// have contributed, then both receive the sum (like MPI_Allreduce).
final class TwoRankSum {
    private let condition = NSCondition()
    private var accumulator: [Double] = []
    private var result: [Double] = []
    private var arrived = 0
    private var generation = 0
    private(set) var calls = 0

    func sum(_ values: UnsafeMutableBufferPointer<Double>) {
        condition.lock()
        defer { condition.unlock() }
        let myGeneration = generation
        if arrived == 0 {
            accumulator = Array(values)
        } else {
            precondition(accumulator.count == values.count, "ranks reduce different counts")
            for i in 0..<values.count { accumulator[i] += values[i] }
        }
        arrived += 1
        if arrived == 2 {
            result = accumulator
            arrived = 0
            generation += 1
            calls += 1
            condition.broadcast()
        } else {
            while generation == myGeneration { condition.wait() }
        }
        for i in 0..<values.count { values[i] = result[i] }
    }
}

final class RankReducer: SumReducer {
    let shared: TwoRankSum
    init(_ shared: TwoRankSum) { self.shared = shared }
    func sumInPlace(_ values: UnsafeMutableBufferPointer<Double>) { shared.sum(values) }
}

/// Copies samples [from, to) of an NCHW tensor.
func samples(_ t: Tensor, _ from: Int, _ to: Int) -> Tensor {
    let per = t.count / t.n
    var shape = t.shape
    shape[0] = to - from
    return Tensor(shape, Array(t.array[from * per..<to * per]))
}

final class BatchNormTests: XCTestCase {
    func makeBN(_ c: Int, _ rng: inout Philox) -> BatchNorm2d {
        let bn = BatchNorm2d("bn", channels: c)
        for i in 0..<c {
            bn.weight.value[i] = 0.5 + rng.uniform()
            bn.bias.value[i] = rng.uniform() - 0.5
        }
        return bn
    }

    func testTrainingGradients() {
        var rng = Philox(seed: 1, stream: 1)
        let bn = makeBN(3, &rng)
        let x = randomTensor([3, 3, 5, 3], &rng, scale: 2)
        for i in 0..<x.count { x.data[i] += Float(i % 3) }   // non-zero means
        let y = bn.forward(x)
        let r = randomTensor(y.shape, &rng)
        bn.zeroGrad()
        let dx = bn.backward(r).array
        let f = { functional(bn.forward(x), r) }
        checkGradient("bn train dx", x: x, analytic: dx, eps: 3e-3, f)
        checkGradient("bn train dgamma", x: bn.weight.value, analytic: bn.weight.grad.array, eps: 3e-3, f)
        checkGradient("bn train dbeta", x: bn.bias.value, analytic: bn.bias.grad.array, eps: 3e-3, f)
    }

    func testEvalGradientsAndValues() {
        var rng = Philox(seed: 2, stream: 1)
        let bn = makeBN(2, &rng)
        bn.runningMean.value[0] = 0.5; bn.runningMean.value[1] = -1
        bn.runningVar.value[0] = 4; bn.runningVar.value[1] = 0.25
        bn.training = false
        let x = randomTensor([2, 2, 3, 4], &rng)
        let y = bn.forward(x)
        // y = (x − rm)/sqrt(rv + eps)·γ + β, element (sample 1, channel 1, pixel 5)
        let i = (1 * 2 + 1) * 12 + 5
        let expected = (x[i] + 1) / (0.25 + 1e-5).squareRoot() * bn.weight.value[1] + bn.bias.value[1]
        XCTAssertEqual(y[i], expected, accuracy: 1e-5)
        XCTAssertEqual(bn.numBatchesTracked.value[0], 0, "eval must not count batches")
        XCTAssertEqual(bn.runningMean.value.array, [0.5, -1], "eval must not touch running stats")
        let r = randomTensor(y.shape, &rng)
        bn.zeroGrad()
        let dx = bn.backward(r).array
        let f = { functional(bn.forward(x), r) }
        checkGradient("bn eval dx", x: x, analytic: dx, f)
        checkGradient("bn eval dgamma", x: bn.weight.value, analytic: bn.weight.grad.array, f)
        checkGradient("bn eval dbeta", x: bn.bias.value, analytic: bn.bias.grad.array, f)
    }

    func testRunningStatisticsByHand() {
        // Channel 0 holds 1, 2 | 3, 4: mean 2.5, biased var 1.25, unbiased 5/3.
        // Channel 1 holds 0, 0 | 0, 4: mean 1, biased var 3, unbiased 4.
        let x = Tensor([2, 2, 1, 2], [1, 2, 0, 0,
                                      3, 4, 0, 4])
        let bn = BatchNorm2d("encoder.bn1", channels: 2)
        XCTAssertEqual(bn.weight.name, "encoder.bn1.weight")
        XCTAssertEqual(bn.runningMean.name, "encoder.bn1.running_mean")
        XCTAssertEqual(bn.runningVar.name, "encoder.bn1.running_var")
        XCTAssertEqual(bn.numBatchesTracked.name, "encoder.bn1.num_batches_tracked")
        XCTAssertEqual(bn.numBatchesTracked.value.shape, [])
        let y = bn.forward(x)
        assertClose(bn.runningMean.value.array, [0.25, 0.1], tol: 1e-6, "running_mean")
        assertClose(bn.runningVar.value.array, [0.9 + 0.1 * 5 / 3, 0.9 + 0.1 * 4], tol: 1e-6, "running_var")
        XCTAssertEqual(bn.numBatchesTracked.value[0], 1)
        // Normalised with the biased variance.
        let s0 = 1 / (1.25 + 1e-5 as Float).squareRoot(), s1 = 1 / (3 + 1e-5 as Float).squareRoot()
        assertClose(y.array, [-1.5 * s0, -0.5 * s0, -1 * s1, -1 * s1,
                              0.5 * s0, 1.5 * s0, -1 * s1, 3 * s1], tol: 1e-5, "normalised output")
        _ = bn.forward(x)
        assertClose(bn.runningMean.value.array, [0.9 * 0.25 + 0.25, 0.9 * 0.1 + 0.1], tol: 1e-6, "running_mean, 2 steps")
        XCTAssertEqual(bn.numBatchesTracked.value[0], 2)
    }

    /// SyncBN: two ranks with half the batch each, summing statistics through a reducer,
    /// give the single-process full-batch outputs, input gradients and running stats; their
    /// local parameter gradients add up to the full-batch ones.
    func testTwoRankReducerMatchesFullBatch() {
        var rng = Philox(seed: 3, stream: 1)
        let c = 3
        let full = makeBN(c, &rng)
        let x = randomTensor([4, c, 3, 5], &rng, scale: 2)
        for i in 0..<x.count { x.data[i] += 0.5 }
        let r = randomTensor(x.shape, &rng)
        let y = full.forward(x).array
        full.zeroGrad()
        let dx = full.backward(r).array

        let shared = TwoRankSum()
        var halves: [BatchNorm2d] = []
        for _ in 0..<2 {
            let bn = BatchNorm2d("bn", channels: c)
            bn.weight.value.copy(from: full.weight.value)
            bn.bias.value.copy(from: full.bias.value)
            bn.reducer = RankReducer(shared)
            bn.zeroGrad()
            halves.append(bn)
        }
        final class Results { var outputs: [[Float]] = [[], []], grads: [[Float]] = [[], []] }
        let results = Results()
        let done = DispatchGroup()
        let lock = NSLock()
        for rank in 0..<2 {
            done.enter()
            let xs = samples(x, 2 * rank, 2 * rank + 2), rs = samples(r, 2 * rank, 2 * rank + 2)
            let bn = halves[rank]
            let thread = Thread {
                let out = bn.forward(xs).array
                let g = bn.backward(rs).array
                lock.lock(); results.outputs[rank] = out; results.grads[rank] = g; lock.unlock()
                done.leave()
            }
            thread.start()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 30), .success, "ranks deadlocked")
        XCTAssertEqual(shared.calls, 2, "one reduction in forward and one in backward")
        let outputs = results.outputs, grads = results.grads
        assertClose(outputs[0] + outputs[1], y, tol: 1e-5, "SyncBN outputs")
        assertClose(grads[0] + grads[1], dx, tol: 1e-5, "SyncBN input gradients")
        for bn in halves {
            assertClose(bn.runningMean.value.array, full.runningMean.value.array, tol: 1e-6, "running_mean")
            assertClose(bn.runningVar.value.array, full.runningVar.value.array, tol: 1e-6, "running_var")
        }
        let gw = zip(halves[0].weight.grad.array, halves[1].weight.grad.array).map { $0 + $1 }
        let gb = zip(halves[0].bias.grad.array, halves[1].bias.grad.array).map { $0 + $1 }
        assertClose(gw, full.weight.grad.array, tol: 1e-5, "dgamma local sums add up")
        assertClose(gb, full.bias.grad.array, tol: 1e-5, "dbeta local sums add up")

        // Without the reducer each half normalises with its own statistics: different outputs.
        let alone = BatchNorm2d("bn", channels: c)
        alone.weight.value.copy(from: full.weight.value)
        alone.bias.value.copy(from: full.bias.value)
        let lone = alone.forward(samples(x, 0, 2)).array
        let gap = zip(lone, y.prefix(lone.count)).map { abs($0 - $1) }.max()!
        XCTAssertGreaterThan(gap, 1e-3, "the test data must make per-rank statistics differ")
    }

    func testBackwardRepeatable() {
        var rng = Philox(seed: 4, stream: 1)
        let bn = makeBN(2, &rng)
        let x = randomTensor([2, 2, 3, 3], &rng)
        let r = randomTensor(x.shape, &rng)
        _ = bn.forward(x)
        bn.zeroGrad()
        let a = bn.backward(r).array, ga = bn.weight.grad.array
        bn.zeroGrad()
        XCTAssertEqual(bn.backward(r).array, a)
        XCTAssertEqual(bn.weight.grad.array, ga)
    }

    /// The in-place backward (dx over dy) gives the same bits as the out-of-place one, in training
    /// and in eval mode, and returns dy's own buffer.
    func testBackwardInPlace() {
        var rng = Philox(seed: 5, stream: 1)
        let bn = makeBN(3, &rng)
        let x = randomTensor([2, 3, 4, 5], &rng)
        let r = randomTensor(x.shape, &rng)
        for training in [true, false] {
            bn.training = training
            _ = bn.forward(x)
            bn.zeroGrad()
            let expected = bn.backward(r).array, gw = bn.weight.grad.array, gb = bn.bias.grad.array
            bn.zeroGrad()
            let dy = Tensor(r.shape, r.array)
            let dx = bn.backward(dy, inPlace: true)
            XCTAssertTrue(dx === dy, "training \(training): dx is not written over dy")
            XCTAssertEqual(dx.array, expected, "training \(training)")
            XCTAssertEqual(bn.weight.grad.array, gw)
            XCTAssertEqual(bn.bias.grad.array, gb)
        }
    }
}
