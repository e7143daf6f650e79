import Foundation
import MTLCore
import MTLModels
import XCTest
@testable import MTLTrain

/// The key declarations (one per key: name, type, default, range, help) and the component groups
/// `model.<group>.*` they give the model's registry.
final class ConfigKeyTests: XCTestCase {
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

    func parse(_ yaml: String, _ overrides: [String] = []) throws -> Config {
        try Config.parse(yaml: yaml, source: "config.yaml", overrides: overrides)
    }

    /// (dotted name, key) of every declared key, with the value it is written from.
    func everyKey() -> [(String, help: String, expected: String, roundTrip: () throws -> (String, String))] {
        var out: [(String, help: String, expected: String, roundTrip: () throws -> (String, String))] = []
        func add<R>(_ prefix: String, _ keys: [ConfigKey<R>], _ value: R) {
            for k in keys {
                out.append(("\(prefix).\(k.name)", k.help, k.expected, {
                    // the default's text reads back into a fresh value and writes the same text
                    var fresh = value
                    let text = k.write(value)
                    let yaml = try YValue.compose("k: \(text)", source: "t")
                    guard case .map(let e) = yaml else { return (text, "not a mapping") }
                    try k.read(e[0].value.raw, into: &fresh)
                    return (text, k.write(fresh))
                }))
            }
        }
        for s in Config.sections { add(s.name, s.keys, Config()) }
        for (g, keys) in ModelConfig.groups { add("model.\(g)", keys, ModelConfig()) }
        for name in TaskConfig.names { add("tasks.\(name)", TaskConfig.keys, TaskConfig(name: name)) }
        return out
    }

    func testEveryKeyHasHelpAnExpectationAndADefaultThatReadsBack() throws {
        let keys = everyKey()
        XCTAssertGreaterThan(keys.count, 80)
        XCTAssertEqual(Set(keys.map { $0.0 }).count, keys.count, "a key declared twice")
        for k in keys {
            XCTAssertFalse(k.help.isEmpty, "\(k.0) has no help")
            XCTAssertFalse(k.expected.isEmpty, "\(k.0)")
            let (written, again) = try k.roundTrip()
            XCTAssertFalse(written.isEmpty, "\(k.0) has no default text")
            XCTAssertEqual(written, again, k.0)
        }
        // `mtl keys` lists every section key and group key once
        let listing = Config.keyListing()
        for k in keys where !k.0.hasPrefix("tasks.") {
            XCTAssertEqual(listing.components(separatedBy: "\n").filter { $0.hasPrefix(k.0 + " ") }.count, 1, k.0)
        }
        XCTAssertTrue(listing.contains("tasks.<task>.pos_weight"))
    }

    /// Each stored field of a section struct is set by a key (the names compared without case and
    /// underscores: syncBN ~ sync_bn), so a new field cannot be left out of reading and config.yaml.
    func testEverySectionFieldHasAKey() {
        func fields(_ v: Any) -> [String] { Mirror(reflecting: v).children.compactMap { $0.label } }
        func norm(_ s: String) -> String { s.lowercased().replacingOccurrences(of: "_", with: "") }
        func check(_ section: String, _ value: Any, _ keys: [String], except: [String] = []) {
            let names = Set(keys.map(norm))
            for f in fields(value) where !except.contains(f) {
                XCTAssertTrue(names.contains(norm(f)), "\(section).\(f) has no key")
            }
        }
        let c = Config()
        for s in Config.sections where s.name != "tasks" && s.name != "model" && s.name != "method" {
            let value: Any = Mirror(reflecting: c).children.first { $0.label == s.name }!.value
            check(s.name, value, s.keys.map { $0.name })
        }
        check("model", c.model, ModelConfig.keys.map { $0.name } + ModelConfig.groups.map { $0.name })
        check("method", c.method, MethodConfig.keys.map { $0.name }, except: ["params"])
        check("tasks", TaskConfig(name: "seg"), Config.taskKeys, except: ["name"])
        check("model.swin", SwinOptions(), SwinOptions.configKeys.map { $0.name } + ["drop_path_rate"])
        check("model.kem", KEMOptions(), KEMOptions.configKeys.map { $0.name })
        // TIF's FFN ratio and width cap are the architecture's, not switches
        check("model.tif", TIFOptions(), TIFOptions.configKeys.map { $0.name }, except: ["ffnRatio", "widthCap"])
    }

    /// The resolved config.yaml has every key of every section and of the selected components'
    /// groups, and reads back equal — for every config in the repository and for non-default groups.
    func testResolvedConfigHasEveryKeyAndRoundTrips() throws {
        let files = try FileManager.default.subpathsOfDirectory(atPath: Self.root + "/configs").filter { $0.hasSuffix(".yaml") }
        XCTAssertGreaterThan(files.count, 10)
        for f in files {
            let c = try Config.load(path: Self.root + "/configs/" + f)
            XCTAssertEqual(try parse(c.yaml()), c, f)
            XCTAssertEqual(try parse(c.yaml()).yaml(), c.yaml(), f)
        }
        let kem = try parse("model: {encoder: swin_t, decoder: kem, kem: {slots: 5, topk: 2, lambda: 0.5, etf_seed: 7}}",
                            ["model.swin.window=5", "model.drop_path_rate=0.1"])
        let tif = try parse("model: {encoder: hrnet18s, decoder: tif, tif: {sfd: false, kv_single: true}}")
        XCTAssertFalse(tif.model.tif.lthd)   // SFD off turns LTHD off, and the resolved file says so
        for c in [Config(), kem, tif] {
            let flat = Dictionary(Config.flatten(c.yaml()), uniquingKeysWith: { a, _ in a })
            for s in Config.sections where s.name != "tasks" {
                for k in s.keys { XCTAssertNotNil(flat["\(s.name).\(k.name)"], "\(s.name).\(k.name) missing") }
            }
            for g in c.model.selectedGroups {
                for k in Config.ModelGroups.keys(g)! { XCTAssertNotNil(flat["model.\(g).\(k.name)"], "model.\(g).\(k.name)") }
            }
            for t in c.tasks { for k in Config.taskKeys { XCTAssertNotNil(flat["tasks.\(t.name).\(k)"]) } }
            XCTAssertEqual(try parse(c.yaml()), c)
        }
        XCTAssertEqual(kem.model.selectedGroups, ["swin", "kem"])
        XCTAssertEqual(tif.model.selectedGroups, ["tif"])
        XCTAssertEqual(Config().model.selectedGroups, [])
        XCTAssertEqual(try parse(kem.yaml()).model.kem.etfSeed, 7)
        XCTAssertEqual(try parse(kem.yaml()).model.swin.dropPathRate, 0.1)
        XCTAssertEqual(try parse(tif.yaml()).model.tif.kvSingle, true)
    }

    /// A group of a component that is not selected is an error naming the selected one (as
    /// method.<group> of another method is).
    func testGroupOfAnUnselectedComponentNamesTheSelectedOne() {
        XCTAssertEqual(message { try self.parse("model: {encoder: hrnet18s, decoder: multiscale, kem: {slots: 4}}") },
                       "config.yaml: model.kem: parameters of decoder kem, but model.decoder is multiscale (did you mean model.decoder=kem?)")
        XCTAssertEqual(message { try self.parse("", ["model.swin.window=5"]) },
                       "override 'model.swin.window=5': model.swin: parameters of encoder swin_t|swin_s|swin_b, but model.encoder is resnet18 (did you mean model.encoder=swin_t?)")
        XCTAssertEqual(message { try self.parse("model: {encoder: swin_t, decoder: multiscale}", ["model.tif.sfd=false"]) },
                       "override 'model.tif.sfd=false': model.tif: parameters of neck saff and decoder tif, but model.neck is none, model.decoder is multiscale (did you mean model.decoder=tif?)")
        // the neck alone selects the tif group
        XCTAssertNoThrow(try parse("model: {encoder: swin_t, neck: saff, decoder: multiscale, tif: {kv_single: true}}"))
    }

    func testGroupKeysAreTypedRangedAndSuggested() {
        let kem = "model: {encoder: swin_s, decoder: kem}"
        XCTAssertEqual(message { try self.parse(kem, ["model.kem.slots=many"]) },
                       "override 'model.kem.slots=many': model.kem.slots: expected an integer, found 'many'")
        XCTAssertEqual(message { try self.parse(kem, ["model.kem.lambda=-1"]) },
                       "override 'model.kem.lambda=-1': model.kem.lambda: expected a number >= 0, found -1")
        XCTAssertEqual(message { try self.parse(kem, ["model.kem.etf_seed=-1"]) },
                       "override 'model.kem.etf_seed=-1': model.kem.etf_seed: expected an integer, found '-1'")
        XCTAssertEqual(message { try self.parse(kem, ["model.kem.stable=2"]) },
                       "override 'model.kem.stable=2': model.kem.stable: expected true or false, found '2'")
        XCTAssertEqual(message { try self.parse(kem, ["model.kem.slts=3"]) },
                       "override 'model.kem.slts=3': unknown key 'model.kem.slts' (did you mean 'model.kem.slots'?)")
        XCTAssertEqual(message { try self.parse("model: {encoder: swin_s, decoder: kem, kem: {etf_rol: slots}}") },
                       "config.yaml: unknown key 'model.kem.etf_rol' (did you mean 'model.kem.etf_role'?)")
        XCTAssertEqual(message { try self.parse("", ["model.decodr=tif"]) },
                       "override 'model.decodr=tif': unknown key 'model.decodr' (did you mean 'model.decoder'?)")
        XCTAssertEqual(message { try self.parse("model: {kme: {slots: 3}}") },
                       "config.yaml: unknown key 'model.kme' (did you mean 'model.kem'?)")
        XCTAssertEqual(message { try self.parse("model: {decoder: mtl}") },
                       "config.yaml: model.decoder: expected one of \(ModelRegistry.decoders.map { $0.name }.joined(separator: "|")), found 'mtl'")
        XCTAssertEqual(message { try self.parse("model: {neck: fpn2}") },
                       "config.yaml: model.neck: expected one of \(ModelRegistry.necks.map { $0.name }.joined(separator: "|")), found 'fpn2'")
    }

    /// Encoder, neck and decoder must fit (scales, the decoder's own neck): checked when the config is read.
    func testComponentsMustFitTogether() throws {
        XCTAssertEqual(message { try self.parse("model: {encoder: hrnet18s}") },
                       "config.yaml: model.decoder: deeplab reads one feature scale, model.encoder hrnet18s gives 4 (use model.decoder: multiscale|tif|kem)")
        XCTAssertEqual(message { try self.parse("model: {encoder: hrnet18s, decoder: tif, neck: none}") },
                       "config.yaml: model.neck: expected saff with model.decoder tif, found none")
        XCTAssertEqual(message { try self.parse("model: {encoder: resnet50, decoder: tif}") },
                       "config.yaml: model.neck: saff needs a 4-scale encoder (hrnet18s|hrnet18|swin_t|swin_s|swin_b), found model.encoder resnet50 with 1 scale(s)")
        XCTAssertEqual(message { try self.parse("model: {encoder: swin_t}", ["model.decoder=bench"]) },
                       "override 'model.decoder=bench': model.decoder: bench reads one feature scale, model.encoder swin_t gives 4 (use model.decoder: multiscale|tif|kem)")
        XCTAssertEqual(try parse("model: {encoder: swin_t, decoder: tif}").model.neck, "saff")
        XCTAssertEqual(try parse("model: {encoder: swin_t, decoder: multiscale}").model.neck, "none")
    }

    /// The list kind (for list-valued component settings such as per-stage depths).
    func testIntegerListKey() throws {
        struct Stages { var depths = [1, 2, 1] }
        let key = ConfigKey<Stages>.ints("depths", \.depths, count: 3, min: 1, "blocks per stage")
        func read(_ text: String) throws -> [Int] {
            guard case .map(let e) = try YValue.compose("k: \(text)", source: "t") else { return [] }
            var s = Stages()
            try key.read(e[0].value.raw, into: &s)
            return s.depths
        }
        XCTAssertEqual(key.write(Stages()), "[1, 2, 1]")
        XCTAssertEqual(try read("[2, 2, 6]"), [2, 2, 6])
        XCTAssertEqual(try read(key.write(Stages())), [1, 2, 1])
        XCTAssertEqual(message { try read("[1, 2]") }, "expected a list of 3 integers >= 1, found a list")
        XCTAssertEqual(message { try read("[1, 0, 2]") }, "expected a list of 3 integers >= 1, found '0' in the list")
        XCTAssertEqual(message { try read("3") }, "expected a list of 3 integers >= 1, found '3'")
    }

    /// `model.head`, the old name of `model.decoder`, is read with a note for train.log.
    func testModelHeadIsReadAsTheDecoder() throws {
        let file = try parse("model: {head: bench}")
        XCTAssertEqual(file.model.decoder, "bench")
        XCTAssertEqual(file.notes.lines, ["config.yaml: model.head is the old name of model.decoder; read as model.decoder"])
        XCTAssertFalse(file.yaml().contains("head:"))
        let set = try parse("model: {decoder: deeplab}", ["model.head=bench"])
        XCTAssertEqual(set.model.decoder, "bench")
        XCTAssertEqual(set.notes.lines.count, 1)
        XCTAssertTrue(set.notes.lines[0].hasPrefix("override 'model.head=bench': "))
        XCTAssertEqual(try parse("", ["model={encoder: resnet34, head: bench}"]).model.decoder, "bench")
        XCTAssertEqual(try parse("").notes.lines, [])
        XCTAssertEqual(message { try self.parse("model: {head: bench, decoder: deeplab}") },
                       "config.yaml: model.head: the old name of model.decoder, and model.decoder is set too; keep model.decoder")
        XCTAssertEqual(message { try self.parse("", ["model.head=fcn"]) },
                       "override 'model.head=fcn': model.decoder: expected one of \(ModelRegistry.decoders.map { $0.name }.joined(separator: "|")), found 'fcn'")
    }
}
