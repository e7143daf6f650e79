import XCTest
@testable import MTLCore
@testable import MTLModels
@testable import MTLNN

/// Reference numbers printed by torchvision 0.30 (resnet*(replace_stride_with_dilation=[False, True, True]),
/// torchvision.models.segmentation.deeplabv3.DeepLabHead(2048, 13)), fc excluded.
final class ModelTests: XCTestCase {
    func stateCount(_ tensors: [(String, Tensor)]) -> Int { tensors.count }

    func testResNet50MatchesTorchvisionNamesShapesAndCounts() throws {
        let spec = ModelSpec(encoder: "resnet50", width: 64, outputStride: 8, decoder: "deeplab", headChannels: 256,
                             tasks: [("seg", 13)])
        let m = try MultiTaskModel(spec, seed: 0)
        let enc = m.stateTensors().filter { $0.0.hasPrefix("encoder.") }
        XCTAssertEqual(enc.count, 318)
        XCTAssertEqual(m.encoder.parameterCount, 23_508_032)
        let head = m.stateTensors().filter { $0.0.hasPrefix("heads.seg.") }
        XCTAssertEqual(head.count, 44)
        XCTAssertEqual(m.heads[0].parameterCount, 16_128_781)
        let shapes = Dictionary(uniqueKeysWithValues: m.stateTensors().map { ($0.0, $0.1.shape) })
        XCTAssertEqual(shapes["encoder.conv1.weight"], [64, 3, 7, 7])
        XCTAssertEqual(shapes["encoder.layer3.0.conv2.weight"], [256, 256, 3, 3])
        XCTAssertEqual(shapes["encoder.layer4.2.conv3.weight"], [2048, 512, 1, 1])
        XCTAssertEqual(shapes["encoder.layer1.0.downsample.0.weight"], [256, 64, 1, 1])
        XCTAssertEqual(shapes["encoder.layer1.0.bn1.running_mean"], [64])
        XCTAssertNotNil(shapes["encoder.layer1.0.bn1.num_batches_tracked"])
        XCTAssertEqual(shapes["heads.seg.0.convs.4.1.weight"], [256, 2048, 1, 1])
        XCTAssertEqual(shapes["heads.seg.0.project.0.weight"], [256, 1280, 1, 1])
        XCTAssertEqual(shapes["heads.seg.4.weight"], [13, 256, 1, 1])
        XCTAssertEqual(shapes["heads.seg.4.bias"], [13])
        // torchvision's dilations: layer3.0.conv2 1, layer3.1 2, layer4.0 2, layer4.1 4 (output stride 8).
        let blocks = (m.encoder as! ResNetEncoder).blocks.compactMap { $0 as? Bottleneck }
        XCTAssertEqual(blocks.map { $0.conv2.dilation }, [1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 4, 4])
    }

    func testResNet18CountAndOutputStride() throws {
        for os in [8, 16] {
            let spec = ModelSpec(encoder: "resnet18", width: 64, outputStride: os, decoder: "bench", headChannels: 64,
                                 tasks: [("depth", 1)])
            let m = try MultiTaskModel(spec, seed: 0)
            XCTAssertEqual(m.encoder.parameterCount, 11_176_512)
            XCTAssertEqual(m.stateTensors().filter { $0.0.hasPrefix("encoder.") }.count, 120)
            if os == 8 {
                Threads.set(1)
                let small = try MultiTaskModel(ModelSpec(encoder: "resnet18", width: 4, outputStride: 8, decoder: "deeplab",
                                                         headChannels: 4, tasks: [("seg", 5), ("normals", 3)]), seed: 0)
                let x = Tensor([2, 3, 64, 96])
                let z = small.encoder.forward(x)
                XCTAssertEqual(z.map { $0.shape }, [[2, 32, 8, 12]])
                let y = small.heads[0].forward(z, height: 64, width: 96)
                XCTAssertEqual(y.shape, [2, 5, 64, 96])
            }
        }
    }

    func testBenchEncoderDilatesEveryConvOfLayers3And4() throws {
        let m = try MultiTaskModel(ModelSpec(encoder: "bench", width: 8, outputStride: 8, decoder: "bench", headChannels: 64,
                                             tasks: [("seg", 13)]), seed: 0)
        let blocks = (m.encoder as! ResNetEncoder).blocks.compactMap { $0 as? BasicBlock }
        XCTAssertEqual(blocks.map { $0.conv1.dilation }, [1, 1, 1, 1, 2, 2, 4, 4])
        XCTAssertEqual(blocks.map { $0.conv2.dilation }, [1, 1, 1, 1, 2, 2, 4, 4])
        let names = m.heads[0].parameters.map { $0.name }
        XCTAssertEqual(names, ["heads.seg.branches.0.weight", "heads.seg.branches.0.bias", "heads.seg.branches.1.weight",
                               "heads.seg.branches.1.bias", "heads.seg.branches.2.weight", "heads.seg.branches.2.bias",
                               "heads.seg.out.weight", "heads.seg.out.bias"])
    }

    func testSameSeedSameInitialisation() throws {
        let spec = ModelSpec(encoder: "resnet18", width: 8, outputStride: 8, decoder: "deeplab", headChannels: 8,
                             tasks: [("seg", 4)])
        let a = try MultiTaskModel(spec, seed: 9), b = try MultiTaskModel(spec, seed: 9), c = try MultiTaskModel(spec, seed: 10)
        XCTAssertEqual(a.parameters.map { $0.value.array }, b.parameters.map { $0.value.array })
        XCTAssertNotEqual(a.parameters[0].value.array, c.parameters[0].value.array)
        XCTAssertThrowsError(try MultiTaskModel(ModelSpec(encoder: "vgg", width: 8, outputStride: 8, decoder: "deeplab",
                                                          headChannels: 8, tasks: [("seg", 4)]), seed: 0))
    }
}
