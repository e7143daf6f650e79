import Foundation
import MTLCore

/// Tensors exchanged with a PyTorch reference script in a python3 subprocess: raw little-endian
/// float32 files plus a shape list, in a temporary directory. Scripts begin with `preamble`, which
/// exits with status 77 when torch (or what `imports` names) cannot be imported, so that the
/// tests can skip with a message.
public final class TorchExchange {
    public let dir: URL
    private var shapes: [String: [Int]] = [:]

    public init() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("mtl-torch-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: dir) }

    public func put(_ name: String, _ t: Tensor) throws {
        shapes[name] = t.shape
        try Data(buffer: UnsafeBufferPointer(t.buffer)).write(to: dir.appendingPathComponent(name + ".bin"))
    }

    public func get(_ name: String) throws -> [Float] {
        let data = try Data(contentsOf: dir.appendingPathComponent(name + ".out"))
        return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    /// Writes the shape list and `preamble(imports) + body` and runs it on the directory.
    public func run(imports: String = "", _ body: String) throws -> (status: Int32, log: String) {
        try shapes.map { ([$0.key] + $0.value.map(String.init)).joined(separator: " ") }.joined(separator: "\n")
            .write(to: dir.appendingPathComponent("shapes.txt"), atomically: true, encoding: .utf8)
        let script = dir.appendingPathComponent("ref.py")
        try (TorchExchange.preamble(imports: imports) + body).write(to: script, atomically: true, encoding: .utf8)
        return TorchExchange.python([script.path, dir.path])
    }

    /// Loads every tensor as float64 into T; out(name, t) writes a result; leaf(name) is a copy that
    /// requires grad.
    public static func preamble(imports: String) -> String {
        """
        import sys, os
        try:
            import numpy as np, torch, torch.nn.functional as F
            \(imports)
        except ImportError as e:
            print(e); sys.exit(77)
        torch.set_num_threads(1)
        d = sys.argv[1]
        T = {}
        for line in open(os.path.join(d, "shapes.txt")):
            parts = line.split()
            if parts: T[parts[0]] = torch.from_numpy(np.fromfile(os.path.join(d, parts[0] + ".bin"), dtype="<f4").reshape([int(s) for s in parts[1:]])).double()
        def out(name, t): t.detach().double().numpy().astype("<f4").tofile(os.path.join(d, name + ".out"))
        def leaf(name): return T[name].clone().requires_grad_(True)

        """
    }

    /// python3 with `args`, stdout and stderr together; OMP_NUM_THREADS=1 so that torch does not
    /// compete with the test for the cores.
    public static func python(_ args: [String]) -> (status: Int32, log: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3"] + args
        var env = ProcessInfo.processInfo.environment
        env["OMP_NUM_THREADS"] = "1"
        p.environment = env
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        do { try p.run() } catch { return (-1, "\(error)") }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
