import Foundation
import MTLCore
import XCTest
@testable import MTLTrain

/// model.decoder: tif (on neck saff), the model.tif.* switches and the ATRC losses of the TIF configs.
final class TIFConfigTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path

    func message(_ body: () throws -> Any, file: StaticString = #filePath, line: UInt = #line) -> String {
        do {
            _ = try body()
            XCTFail("expected an MTLError", file: file, line: line)
        } catch let e as MTLError {
            XCTAssertFalse(e.message.contains("\n"), "not one line: \(e.message)", file: file, line: line)
            return e.message
        } catch { XCTFail("expected an MTLError, got \(error)", file: file, line: line) }
        return ""
    }

    let yaml = "model: {encoder: hrnet18s, decoder: tif}\n"

    func testSwitchesParseAndRoundTrip() throws {
        let c = try Config.parse(yaml: yaml, source: "c.yaml", overrides: ["model.tif.lthd=false", "model.tif.sfd_scale=true"])
        XCTAssertEqual(c.model.decoder, "tif")
        XCTAssertEqual(c.model.neck, "saff")   // the decoder's own neck when model.neck is not set
        XCTAssertEqual(c.model.tif.saff, true)
        XCTAssertEqual(c.model.tif.lthd, false)
        XCTAssertEqual(c.model.tif.sfdScale, true)
        let again = try Config.parse(yaml: c.yaml(), source: "config.yaml")
        XCTAssertEqual(again, c)
        XCTAssertTrue(c.yaml().contains("  tif:\n    saff: true\n    sfd: true\n    lthd: false\n"), c.yaml())
        // Other decoders write no tif section (it would not parse back).
        XCTAssertFalse(Config().yaml().contains("tif:"))
    }

    func testBadInputIsOneLineNamingTheKey() {
        XCTAssertTrue(message { try Config.parse(yaml: self.yaml, source: "c.yaml", overrides: ["model.tif.lthdd=false"]) }
            .contains("unknown key 'model.tif.lthdd' (did you mean 'model.tif.lthd'?)"))
        XCTAssertTrue(message { try Config.parse(yaml: "model: {encoder: hrnet18s, decoder: tif, tif: {sfd: maybe}}\n", source: "c.yaml") }
            .contains("model.tif.sfd: expected true or false, found"))
        XCTAssertTrue(message { try Config.parse(yaml: "model: {encoder: hrnet18s, decoder: multiscale, tif: {sfd: false}}\n", source: "c.yaml") }
            .contains("model.tif: parameters of neck saff and decoder tif, but model.neck is none, model.decoder is multiscale (did you mean model.decoder=tif?)"))
        XCTAssertTrue(message { try Config.parse(yaml: "model: {encoder: hrnet18s, decoder: tif, tif: {sfd: false, lthd: true}}\n", source: "c.yaml") }
            .contains("model.tif.lthd: expected false with model.tif.sfd false"))
        XCTAssertTrue(message { try Config.parse(yaml: "tasks: {edges: {loss: balanced_bce}}\n", source: "c.yaml") }
            .contains("tasks.edges.pos_weight: expected a number in (0, 1) with loss balanced_bce"))
    }

    func testTheTIFConfigsParse() throws {
        for name in ["tif-hrnet18-nyud", "tif-swin_t-nyud", "tif-hrnet18-pascal"] {
            let c = try Config.load(path: Self.root + "/configs/\(name).yaml")
            XCTAssertEqual(c.model.decoder, "tif", name)
            XCTAssertEqual(c.model.neck, "saff", name)
            XCTAssertEqual(c.train.steps, 50000, name)
            XCTAssertEqual(c.train.batchSize, 8, name)
            XCTAssertEqual(c.optim.name, "sgd", name)
            XCTAssertEqual(c.optim.weightDecay, 5e-4, name)
            XCTAssertEqual(c.schedule.name, "poly", name)
            XCTAssertEqual(c.task(named: "normals")?.loss, "normal_l1", name)
            XCTAssertEqual(c.task(named: "normals")?.weight, 10, name)
            XCTAssertEqual(c.task(named: "edges")?.weight, 50, name)
        }
        XCTAssertEqual(try Config.load(path: Self.root + "/configs/tif-hrnet18-nyud.yaml").optim.lr, 0.01)
        XCTAssertEqual(try Config.load(path: Self.root + "/configs/tif-swin_t-nyud.yaml").optim.lr, 0.001)
        XCTAssertEqual(try Config.load(path: Self.root + "/configs/tif-hrnet18-pascal.yaml").optim.lr, 1e-4)
        XCTAssertEqual(try Config.load(path: Self.root + "/configs/tif-hrnet18-pascal.yaml").task(named: "edges")?.posWeight, 0.95)
    }
}
