import Foundation
import MTLCore
import XCTest
@testable import MTLTrain

final class ConfigTests: XCTestCase {
    /// The error message of `body`, failing the test if it does not throw an MTLError.
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

    func testDefaults() throws {
        let c = try parse("")
        XCTAssertEqual(c, Config())
        XCTAssertEqual(c.data.path, "")
        XCTAssertEqual(c.data.trainSplit, "train")
        XCTAssertEqual(c.data.cache, false)
        XCTAssertEqual(c.model.encoder, "resnet18")
        XCTAssertEqual(c.model.width, 64)
        XCTAssertEqual(c.model.outputStride, 8)
        XCTAssertEqual(c.model.headChannels, 256)
        XCTAssertEqual(c.model.syncBN, false)
        XCTAssertEqual(c.tasks.map { $0.name }, ["seg", "depth", "normals"])
        XCTAssertEqual(c.tasks.map { $0.role }, [.primary, .auxiliary, .auxiliary])
        XCTAssertEqual(c.tasks.map { $0.loss }, ["ce", "l1", "cosine"])
        XCTAssertEqual(c.tasks[0].classes, 0)
        XCTAssertEqual(c.tasks[0].weight, 1.0)
        XCTAssertEqual(c.train.steps, 1000)
        XCTAssertEqual(c.train.batchSize, 8)
        XCTAssertEqual(c.train.nanPolicy, "stop")
        XCTAssertEqual(c.optim.name, "adam")
        XCTAssertEqual(c.optim.lr, 1e-4)
        XCTAssertEqual(c.optim.beta2, 0.999)
        XCTAssertEqual(c.optim.eps, 1e-8)
        XCTAssertEqual(c.schedule.name, "constant")
        XCTAssertEqual(c.schedule.warmupFactor, 0.001)
        XCTAssertEqual(c.log.every, 10)
        XCTAssertEqual(c.checkpoint.keep, 3)
        XCTAssertEqual(c.method.name, "ew")
        XCTAssertEqual(c.method.level, "representation")
        XCTAssertEqual(c.method.params, [:])
        // empty sections and a task written with no body take the defaults
        let d = try parse("log:\ntasks:\n  edges:\n  seg: {role: primary}\n")
        XCTAssertEqual(d.log.every, 10)
        XCTAssertEqual(d.tasks.map { $0.name }, ["edges", "seg"])   // file order
        XCTAssertEqual(d.tasks[0].loss, "bce")
        XCTAssertEqual(d.tasks[0].role, .auxiliary)
        XCTAssertEqual(d.tasks[0].posWeight, 1.0)
        XCTAssertEqual(d.primaryTask?.name, "seg")
    }

    func testRepositoryConfigsLoad() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let tiny = try Config.load(path: root.appendingPathComponent("configs/synthetic-tiny.yaml").path, overrides: [])
        XCTAssertEqual(tiny.model.width, 16)
        XCTAssertEqual(tiny.schedule.name, "cosine")
        XCTAssertEqual(tiny.schedule.warmupSteps, 10)
        XCTAssertEqual(tiny.optim.lr, 0.002)
        XCTAssertEqual(tiny.tasks.map { $0.name }, ["seg", "depth", "normals"])
        let nyu = try Config.load(path: root.appendingPathComponent("configs/nyuv2-resnet50.yaml").path, overrides: [])
        XCTAssertEqual(nyu.model.encoder, "resnet50")
        XCTAssertEqual(nyu.model.syncBN, true)
        XCTAssertEqual(nyu.tasks[0].classes, 13)
        XCTAssertEqual(nyu.method.name, "ial")
        XCTAssertTrue(message { try Config.load(path: "/nonexistent/x.yaml", overrides: []) }.hasPrefix("/nonexistent/x.yaml: "))
    }

    func testYAMLRoundTrip() throws {
        let text = """
        data: {path: "dir with space/it's \\"q\\".h5", train_split: "123", val_split: "yes", cache: true}
        model: {encoder: resnet101, width: 32, output_stride: 16, head: bench, head_channels: 48, pretrained: /abs/w.h5, sync_bn: on}
        tasks:
          normals: {role: auxiliary, weight: 0.25, frozen: true}
          saliency: {role: primary, pos_weight: 2.5}
          seg: {classes: 21, loss: ce}
        train: {steps: 7, batch_size: 3, seed: 42, eval_every: 5, threads: 2, nan_policy: skip}
        optim: {name: sgd, lr: 3.0e-3, momentum: 0.95, nesterov: true, weight_decay: 1e-5, beta1: 0.5, beta2: 0.25, eps: 1e-10}
        schedule: {name: poly, warmup_steps: 3, warmup_factor: 0.1, step_size: 2, gamma: 0.5, power: 0.9, min_lr: 1e-7}
        log: {every: 1}
        checkpoint: {every: 2, keep: 0}
        method:
          name: ial
          level: parameters
          ial: {lr: 0.01, init: 5, f: "tanh", source: none}
        """
        let c = try parse(text)
        XCTAssertEqual(c.data.path, "dir with space/it's \"q\".h5")
        XCTAssertEqual(c.data.trainSplit, "123")
        XCTAssertEqual(c.model.syncBN, true)
        XCTAssertEqual(c.optim.lr, 0.003)
        XCTAssertEqual(c.optim.weightDecay, 1e-5)
        XCTAssertEqual(c.schedule.minLR, 1e-7)
        XCTAssertEqual(c.method.params, ["ial": ["lr": "0.01", "init": "5", "f": "tanh", "source": "none"]])
        let out = c.yaml()
        let again = try parse(out)
        XCTAssertEqual(again, c)
        XCTAssertEqual(again.yaml(), out)   // emitting is a fixed point
        XCTAssertEqual(try parse(Config().yaml()), Config())
        XCTAssertTrue(out.contains("  eps: 1.0e-10\n"), out)   // YAML-1.1-readable float
        XCTAssertTrue(out.contains("  train_split: \"123\"\n"), out)   // a string that looks like a number is quoted
    }

    func testOverrides() throws {
        let base = "tasks:\n  seg: {role: primary}\n  depth: {}\nmethod: {name: ew}\n"
        let c = try parse(base, ["train.steps=50", "tasks.depth.role=primary", "tasks.seg.role=auxiliary",
                                 "method.name=ial", "method.ial.lr=0.01", "method.ial.f=exp",
                                 "tasks.edges.pos_weight=2", "data.path=\"a b.h5\"", "model.pretrained=",
                                 "optim.lr = 5e-4", "model.sync_bn=true"])
        XCTAssertEqual(c.train.steps, 50)
        XCTAssertEqual(c.tasks.map { $0.name }, ["seg", "depth", "edges"])
        XCTAssertEqual(c.tasks.map { $0.role }, [.auxiliary, .primary, .auxiliary])
        XCTAssertEqual(c.tasks[2].loss, "bce")
        XCTAssertEqual(c.tasks[2].posWeight, 2)
        XCTAssertEqual(c.method.name, "ial")
        XCTAssertEqual(c.method.params, ["ial": ["lr": "0.01", "f": "exp"]])
        XCTAssertEqual(c.data.path, "a b.h5")
        XCTAssertEqual(c.model.pretrained, "")
        XCTAssertEqual(c.optim.lr, 5e-4)
        XCTAssertEqual(c.model.syncBN, true)
        // a whole mapping replaces the tasks (choosing a subset for a single-task baseline)
        let single = try parse(base, ["tasks={depth: {role: primary}}"])
        XCTAssertEqual(single.tasks.map { $0.name }, ["depth"])
        // later overrides win
        XCTAssertEqual(try parse("", ["train.seed=1", "train.seed=2"]).train.seed, 2)
    }

    func testUnknownKeySuggestsNearest() {
        XCTAssertEqual(message { try self.parse("train:\n  batchsize: 4\n") },
                       "config.yaml: unknown key 'train.batchsize' (did you mean 'train.batch_size'?)")
        XCTAssertEqual(message { try self.parse("train: {lr: 0.1}") },
                       "config.yaml: unknown key 'train.lr' (did you mean 'optim.lr'?)")
        XCTAssertEqual(message { try self.parse("trian: {steps: 3}") },
                       "config.yaml: unknown key 'trian' (did you mean 'train'?)")
        XCTAssertEqual(message { try self.parse("tasks: {seg: {clases: 3}}") },
                       "config.yaml: unknown key 'tasks.seg.clases' (did you mean 'tasks.seg.classes'?)")
        XCTAssertEqual(message { try self.parse("tasks: {segm: {}}") },
                       "config.yaml: unknown key 'tasks.segm' (did you mean 'tasks.seg'?)")
        XCTAssertEqual(message { try self.parse("method: {nmae: ial}") },
                       "config.yaml: unknown key 'method.nmae' (did you mean 'method.name'?)")
        XCTAssertEqual(message { try self.parse("schedule: {warmup: 3}") },
                       "config.yaml: unknown key 'schedule.warmup' (did you mean 'schedule.warmup_steps'?)")
    }

    func testWrongTypes() {
        XCTAssertEqual(message { try self.parse("train: {batch_size: eight}") },
                       "config.yaml: train.batch_size: expected an integer, found 'eight'")
        XCTAssertEqual(message { try self.parse("optim: {lr: fast}") },
                       "config.yaml: optim.lr: expected a number, found 'fast'")
        XCTAssertEqual(message { try self.parse("data: {cache: maybe}") },
                       "config.yaml: data.cache: expected true or false, found 'maybe'")
        XCTAssertEqual(message { try self.parse("model: 5") },
                       "config.yaml: model: expected a mapping, found '5'")
        XCTAssertEqual(message { try self.parse("train: {steps: [1, 2]}") },
                       "config.yaml: train.steps: expected an integer, found a list")
        XCTAssertEqual(message { try self.parse("method: {ial: {lr: [1]}}") },
                       "config.yaml: method.ial.lr: expected a scalar, found a list")
        XCTAssertEqual(message { try self.parse("train: {steps: 2.5}") },
                       "config.yaml: train.steps: expected an integer, found '2.5'")
    }

    func testBadEnumsAndRanges() {
        XCTAssertEqual(message { try self.parse("optim: {name: adagrad}") },
                       "config.yaml: optim.name: expected one of adam|adamw|sgd, found 'adagrad'")
        XCTAssertEqual(message { try self.parse("model: {encoder: vgg16}") },
                       "config.yaml: model.encoder: expected one of resnet18|resnet34|resnet50|resnet101|bench|hrnet18s|hrnet18|swin_t|swin_s|swin_b, found 'vgg16'")
        XCTAssertEqual(message { try self.parse("model: {fuse_upsample: bicubic}") },
                       "config.yaml: model.fuse_upsample: expected one of bilinear|nearest, found 'bicubic'")
        XCTAssertEqual(message { try self.parse("model: {output_stride: 32}") },
                       "config.yaml: model.output_stride: expected one of 8|16, found 32")
        XCTAssertEqual(message { try self.parse("tasks: {seg: {role: main}}") },
                       "config.yaml: tasks.seg.role: expected one of primary|auxiliary, found 'main'")
        XCTAssertEqual(message { try self.parse("tasks: {depth: {loss: l2}}") },
                       "config.yaml: tasks.depth.loss: expected one of ce|l1|cosine|bce|normal_l1|balanced_bce|saliency_ce|normal_mse, found 'l2'")
        XCTAssertEqual(message { try self.parse("tasks: {depth: {loss: ce}}") },
                       "config.yaml: tasks.depth.loss: expected one of l1 for task depth, found 'ce'")
        XCTAssertEqual(message { try self.parse("schedule: {name: linear}") },
                       "config.yaml: schedule.name: expected one of constant|step|poly|cosine, found 'linear'")
        XCTAssertEqual(message { try self.parse("method: {level: param}") },
                       "config.yaml: method.level: expected one of representation|parameters, found 'param'")
        XCTAssertEqual(message { try self.parse("train: {batch_size: 0}") },
                       "config.yaml: train.batch_size: expected an integer >= 1, found 0")
        XCTAssertEqual(message { try self.parse("train: {steps: -5}") },
                       "config.yaml: train.steps: expected an integer >= 1, found -5")
        XCTAssertEqual(message { try self.parse("optim: {lr: 0}") },
                       "config.yaml: optim.lr: expected a number > 0, found 0")
        XCTAssertEqual(message { try self.parse("tasks: {}") },
                       "config.yaml: tasks: expected at least one task (one of seg|depth|normals|edges|parts|saliency), found none")
        XCTAssertEqual(message { try self.parse("tasks: {seg: {role: primary}, depth: {role: primary}}") },
                       "config.yaml: tasks: expected at most one task with role primary, found 2 (seg, depth)")
    }

    func testBadOverrides() {
        XCTAssertEqual(message { try self.parse("", ["train.steps"]) },
                       "override 'train.steps': expected key=value (e.g. train.steps=100)")
        XCTAssertEqual(message { try self.parse("", ["train.batchsize=4"]) },
                       "override 'train.batchsize=4': unknown key 'train.batchsize' (did you mean 'train.batch_size'?)")
        XCTAssertEqual(message { try self.parse("", ["tasks.dept.role=primary"]) },
                       "override 'tasks.dept.role=primary': unknown key 'tasks.dept.role' (did you mean 'tasks.depth.role'?)")
        XCTAssertEqual(message { try self.parse("", ["method.ial.lr.x=1"]) },
                       "override 'method.ial.lr.x=1': unknown key 'method.ial.lr.x' (did you mean 'method.ial.lr'?)")
        XCTAssertEqual(message { try self.parse("", ["train..steps=1"]) },
                       "override 'train..steps=1': malformed key 'train..steps' (expected section.key, e.g. train.steps)")
        // the type error names the override, not the file
        XCTAssertEqual(message { try self.parse("train: {steps: 10}", ["train.steps=abc"]) },
                       "override 'train.steps=abc': train.steps: expected an integer, found 'abc'")
        XCTAssertTrue(message { try self.parse("", ["train.steps=[1"]) }.hasPrefix("override 'train.steps=[1': invalid YAML: "))
    }

    func testSyntaxErrorsAreOneLine() {
        let m = message { try self.parse("train:\n  steps: [1, 2\n  seed: 3\n") }
        XCTAssertTrue(m.hasPrefix("config.yaml: invalid YAML: "), m)
        XCTAssertTrue(m.contains("line"), m)
        XCTAssertEqual(message { try self.parse("train: {steps: 1, steps: 2}") }, "config.yaml: duplicate key 'train.steps'")
        XCTAssertEqual(message { try self.parse("- a\n- b\n") },
                       "config.yaml: expected a mapping of sections (data, model, tasks, ...), found a list")
    }

    /// A `method.<group>` of another method, or a misspelt group, was silently ignored (issue 11):
    /// now an error naming the group, the chosen method and the nearest valid group.
    func testMethodGroupsMustBelongToTheChosenMethod() throws {
        XCTAssertEqual(message { try self.parse("", ["method.name=ial", "method.iall.lr=5"]) },
                       "override 'method.iall.lr=5': method.iall: no method is called 'iall' (did you mean 'method.ial'?); "
                       + "method.name is ial, whose hyperparameters go under method.ial")
        XCTAssertEqual(message { try self.parse("method: {name: imtl-l, pcgrad: {foo: 1}}") },
                       "config.yaml: method.pcgrad: hyperparameters of method pcgrad, but method.name is imtl-l "
                       + "(its hyperparameters go under method.imtl-l or method.imtl; did you mean method.name=pcgrad?)")
        // the default method (ew) too
        XCTAssertTrue(message { try self.parse("method: {ial: {lr: 0.1}}") }
            .hasPrefix("config.yaml: method.ial: hyperparameters of method ial, but method.name is ew"))
        // an alias group is the method's own: imtl for the IMTL variants, auto-lambda for autol
        let imtl = try parse("method: {name: imtl-l, imtl: {lr: 0.5}}")
        XCTAssertEqual(imtl.method.params, ["imtl": ["lr": "0.5"]])
        XCTAssertNoThrow(try parse("", ["method.name=imtl-l", "method.imtl-l.lr=0.5"]))
        XCTAssertNoThrow(try parse("", ["method.name=autol", "method.auto-lambda.lr=0.001"]))
        XCTAssertNoThrow(try parse("", ["method.name=auto-lambda", "method.autol.lr=0.001"]))
        XCTAssertEqual(message { try self.parse("method: {name: imtl-l, imtl: {lr: 0.5}, imtl-l: {lr: 0.1}}") },
                       "config.yaml: method.imtl.lr: also set as method.imtl-l.lr; set it once")
    }

    /// The keys inside the chosen method's group and the method name are checked when the config is
    /// read (before, only when the trainer built the method, after loading the data).
    func testMethodKeysAndNameAreCheckedAtTheConfigLevel() {
        XCTAssertEqual(message { try self.parse("", ["method.name=ial", "method.ial.lrr=5"]) },
                       "override 'method.ial.lrr=5': method.ial.lrr: unknown key (did you mean 'lr'?); valid keys: alpha, eps, f, init, lr, source")
        XCTAssertEqual(message { try self.parse("method: {name: ial, ial: {lr: fast}}") },
                       "config.yaml: method.ial.lr: expected a number, found 'fast'")
        XCTAssertTrue(message { try self.parse("method: {name: pcgard}") }
            .hasPrefix("config.yaml: method.name: unknown method 'pcgard' (did you mean 'pcgrad'?)"))
        XCTAssertTrue(message { try self.parse("method: {name: imtl-l, imtl: {foo: 1}}") }
            .hasPrefix("config.yaml: method.imtl.foo: unknown key"))
        // a method that needs one primary task, and the config has none
        XCTAssertTrue(message { try self.parse("tasks: {depth: {}, normals: {}}\nmethod: {name: gcs}") }
            .contains("needs exactly one primary task"))
    }

    /// `tasks` is the other keyed group: a task name must be one of the known tasks.
    func testTaskGroupNamesAreChecked() {
        XCTAssertEqual(message { try self.parse("tasks: {seg: {role: primary}, dpeth: {}}") },
                       "config.yaml: unknown key 'tasks.dpeth' (did you mean 'tasks.depth'?)")
        XCTAssertEqual(message { try self.parse("", ["tasks.normal.weight=2"]) },
                       "override 'tasks.normal.weight=2': unknown key 'tasks.normal.weight' (did you mean 'tasks.normals.weight'?)")
    }
}
