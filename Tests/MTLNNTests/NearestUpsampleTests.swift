import XCTest
import MTLCore
@testable import MTLNN
import MTLTestSupport

final class NearestUpsampleTests: XCTestCase {
    /// PyTorch's source indices: floor(dst·in/out) (in Float), clamped; ×2 repeats every pixel.
    func testSourceIndices() {
        XCTAssertEqual(NearestUpsample.table(input: 3, output: 6), [0, 0, 1, 1, 2, 2])
        XCTAssertEqual(NearestUpsample.table(input: 5, output: 7), [0, 0, 1, 2, 2, 3, 4])   // torch: floor(d·5/7)
        XCTAssertEqual(NearestUpsample.table(input: 7, output: 3), [0, 2, 4])               // downsizing
        let up = NearestUpsample()
        let x = Tensor([1, 1, 2, 2], [1, 2, 3, 4])
        XCTAssertEqual(up.forward(x, height: 4, width: 4).array, [1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4])
    }

    /// Backward is the adjoint of forward (central differences are exact for a piecewise-constant
    /// copy as long as no index changes, which a perturbation of the values cannot cause).
    func testGradientAgainstFiniteDifferences() {
        var rng = Philox(seed: 3, stream: 1)
        for (h, w, ho, wo) in [(3, 4, 6, 8), (5, 3, 7, 11), (4, 4, 3, 5)] {
            let up = NearestUpsample()
            let x = randomTensor([2, 3, h, w], &rng)
            let y = up.forward(x, height: ho, width: wo)
            XCTAssertEqual(y.shape, [2, 3, ho, wo])
            let r = randomTensor(y.shape, &rng)
            let dx = up.backward(r).array
            checkGradient("nearest \(h)x\(w)→\(ho)x\(wo)", x: x, analytic: dx, tolerance: 1e-4) {
                functional(up.forward(x, height: ho, width: wo), r)
            }
        }
    }
}
