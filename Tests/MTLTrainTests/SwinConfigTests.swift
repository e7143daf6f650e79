import Foundation
import MTLCore
import XCTest
@testable import MTLTrain

/// model.drop_path_rate and model.swin.{window, shift_rule}: parsed, validated, written back.
final class SwinConfigTests: XCTestCase {
    func message(_ body: () throws -> Any, file: StaticString = #filePath, line: UInt = #line) -> String {
        do {
            _ = try body()
            XCTFail("expected an MTLError", file: file, line: line)
            return ""
        } catch let e as MTLError {
            XCTAssertFalse(e.message.contains("\n"), "not one line: \(e.message)", file: file, line: line)
            return e.message
        } catch {
            XCTFail("expected an MTLError, got \(error)", file: file, line: line)
            return ""
        }
    }

    func parse(_ yaml: String, _ overrides: [String] = []) throws -> Config {
        try Config.parse(yaml: yaml, source: "config.yaml", overrides: overrides)
    }

    func testDefaultsFileOverridesAndRoundTrip() throws {
        let d = try parse("")
        XCTAssertEqual(d.model.swin.dropPathRate, 0)
        XCTAssertEqual(d.model.swin.window, 7)
        XCTAssertEqual(d.model.swin.shiftRule, .dense)
        let c = try parse("model:\n  encoder: swin_t\n  decoder: multiscale\n  drop_path_rate: 0.2\n  swin:\n    window: 12\n",
                          ["model.swin.shift_rule=classification"])
        XCTAssertEqual(c.model.swin.dropPathRate, 0.2)
        XCTAssertEqual(c.model.swin.window, 12)
        XCTAssertEqual(c.model.swin.shiftRule, .classification)
        let again = try parse(c.yaml())
        XCTAssertEqual(again, c)
        XCTAssertTrue(c.yaml().contains("  swin:\n    window: 12\n    shift_rule: classification\n"), c.yaml())
        XCTAssertEqual(try parse("", ["model.encoder=swin_s", "model.decoder=multiscale", "model.swin.window=5"]).model.swin.window, 5)
    }

    func testTheSwinConfigLoads() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let c = try Config.load(path: root.appendingPathComponent("configs/nyud-swin_t-baseline.yaml").path)
        XCTAssertEqual(c.model.encoder, "swin_t")
        XCTAssertEqual(c.model.swin.window, 7)
        XCTAssertEqual(c.model.swin.shiftRule, .dense)
        XCTAssertEqual(c.model.swin.dropPathRate, 0)
    }

    func testBadValuesAreOneLineErrors() {
        XCTAssertEqual(message { try self.parse("model:\n  drop_path_rate: 1.0\n") },
                       "config.yaml: model.drop_path_rate: expected a number in [0, 1), found 1.0")
        XCTAssertEqual(message { try self.parse("model:\n  encoder: swin_t\n  decoder: multiscale\n  swin:\n    window: 1\n") },
                       "config.yaml: model.swin.window: expected an integer >= 2, found 1")
        XCTAssertEqual(message { try self.parse("model:\n  encoder: swin_t\n  decoder: multiscale\n  swin:\n    shift_rule: timm\n") },
                       "config.yaml: model.swin.shift_rule: expected one of dense|classification, found 'timm'")
        XCTAssertEqual(message { try self.parse("model:\n  encoder: swin_t\n  decoder: multiscale\n  swin:\n    windw: 7\n") },
                       "config.yaml: unknown key 'model.swin.windw' (did you mean 'model.swin.window'?)")
        XCTAssertEqual(message { try self.parse("model: {encoder: swin_t, decoder: multiscale}", ["model.swin.shift=1"]) },
                       "override 'model.swin.shift=1': unknown key 'model.swin.shift' (did you mean 'model.swin.shift_rule'?)")
        XCTAssertEqual(message { try self.parse("model:\n  encoder: swin_b\n  decoder: multiscale\n  swin: 7\n") },
                       "config.yaml: model.swin: expected a mapping, found '7'")
    }
}
