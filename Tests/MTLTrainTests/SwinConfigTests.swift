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
        XCTAssertEqual(d.model.dropPathRate, 0)
        XCTAssertEqual(d.model.swinWindow, 7)
        XCTAssertEqual(d.model.swinShiftRule, "dense")
        let c = try parse("model:\n  encoder: swin_t\n  drop_path_rate: 0.2\n  swin:\n    window: 12\n",
                          ["model.swin.shift_rule=classification"])
        XCTAssertEqual(c.model.dropPathRate, 0.2)
        XCTAssertEqual(c.model.swinWindow, 12)
        XCTAssertEqual(c.model.swinShiftRule, "classification")
        let again = try parse(c.yaml())
        XCTAssertEqual(again, c)
        XCTAssertTrue(c.yaml().contains("  swin:\n    window: 12\n    shift_rule: classification\n"), c.yaml())
        XCTAssertEqual(try parse("", ["model.swin.window=5"]).model.swinWindow, 5)
    }

    func testTheSwinConfigLoads() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let c = try Config.load(path: root.appendingPathComponent("configs/nyud-swin_t-baseline.yaml").path)
        XCTAssertEqual(c.model.encoder, "swin_t")
        XCTAssertEqual(c.model.swinWindow, 7)
        XCTAssertEqual(c.model.swinShiftRule, "dense")
        XCTAssertEqual(c.model.dropPathRate, 0)
    }

    func testBadValuesAreOneLineErrors() {
        XCTAssertEqual(message { try self.parse("model:\n  drop_path_rate: 1.0\n") },
                       "config.yaml: model.drop_path_rate: expected a number in [0, 1), found 1.0")
        XCTAssertEqual(message { try self.parse("model:\n  swin:\n    window: 1\n") },
                       "config.yaml: model.swin.window: expected an integer >= 2, found 1")
        XCTAssertEqual(message { try self.parse("model:\n  swin:\n    shift_rule: timm\n") },
                       "config.yaml: model.swin.shift_rule: expected one of dense|classification, found 'timm'")
        XCTAssertEqual(message { try self.parse("model:\n  swin:\n    windw: 7\n") },
                       "config.yaml: unknown key 'model.swin.windw' (did you mean 'model.swin.window'?)")
        XCTAssertEqual(message { try self.parse("", ["model.swin.shift=1"]) },
                       "override 'model.swin.shift=1': unknown key 'model.swin.shift' (did you mean 'model.swin.shift_rule'?)")
        XCTAssertEqual(message { try self.parse("model:\n  swin: 7\n") },
                       "config.yaml: model.swin: expected a mapping, found '7'")
    }
}
