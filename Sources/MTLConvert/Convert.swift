import Foundation
import MTLCore

public struct ConvertOptions {
    public var height: Int? = nil
    public var width: Int? = nil            // optional resize (both or neither)
    public var classes: Int? = nil          // cityscapes: 7 or 19 (default 19); nyuv2: 13 or 40 (default 13); nyud-mt: 40
    public var splitsFile: String? = nil    // nyuv2: splits.mat path (default: <src dir>/splits.mat)
    public var normalsDir: String? = nil    // nyuv2: directory of precomputed normals, else computed from depth
    public var classMapFile: String? = nil  // nyuv2: classMapping40.mat (default: <src dir>/classMapping40.mat)
    public init() {}
}

public enum Converter {
    public static let kinds = ["nyuv2", "nyuv2-mtan", "nyud-mt", "cityscapes", "pascal-context"]
    public static let version = "1.0"

    /// Converts `src` into the mtdp-hdf5 file `out` (written as `out.tmp`, renamed at the end).
    /// Returns a one-paragraph summary.
    public static func run(kind: String, src: String, out: String, options: ConvertOptions,
                           progress: (String) -> Void) throws -> String {
        if (options.height == nil) != (options.width == nil) {
            throw MTLError("convert: --height and --width go together (found only \(options.height == nil ? "--width" : "--height"))")
        }
        if let h = options.height, let w = options.width, h < 1 || w < 1 {
            throw MTLError("convert: resize to \(h)x\(w): expected positive sizes")
        }
        guard FileManager.default.fileExists(atPath: src) else { throw MTLError("\(src): source not found (convert \(kind))") }
        switch kind {
        case "nyuv2": return try NYUv2Converter.run(src: src, out: out, options: options, progress: progress)
        case "nyuv2-mtan": return try MTANConverter.run(src: src, out: out, options: options, progress: progress)
        case "nyud-mt": return try NYUDMTConverter.run(src: src, out: out, options: options, progress: progress)
        case "cityscapes": return try CityscapesConverter.run(src: src, out: out, options: options, progress: progress)
        case "pascal-context": return try PascalConverter.run(src: src, out: out, options: options, progress: progress)
        default: throw MTLError("convert: unknown kind '\(kind)' (expected one of \(kinds.joined(separator: ", ")))")
        }
    }

    static func rootAttrs(dataset: String, variant: String, tasks: [String], source: String) -> [(String, Any)] {
        [("format", "mtdp-hdf5"), ("format_version", 1), ("dataset", dataset), ("variant", variant),
         ("tasks", tasks.joined(separator: ",")), ("converter", "mtl convert"), ("converter_version", version),
         ("created_utc", isoNow()), ("source", source)]
    }

    /// Runs `body` with a writer; removes the temporary file on error.
    static func withWriter(out: String, root: [(String, Any)], _ body: (SchemaWriter) throws -> String) throws -> String {
        let w = try SchemaWriter(out: out, rootAttrs: root)
        do {
            let s = try body(w)
            try w.finish()
            return s
        } catch {
            w.abort()
            throw error
        }
    }
}

func listDir(_ path: String) throws -> [String] {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else {
        throw MTLError("\(path): folder not found")
    }
    return try FileManager.default.contentsOfDirectory(atPath: path).sorted()
}

func isDirectory(_ path: String) -> Bool {
    var isDir: ObjCBool = false
    return FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && isDir.boolValue
}

func requireFile(_ path: String, _ what: String) throws {
    if !FileManager.default.fileExists(atPath: path) { throw MTLError("\(path): missing \(what)") }
}
