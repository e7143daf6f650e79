import CZlib
import Foundation
import MTLCore

/// A value read from a MATLAB level-5 MAT-file. Arrays are kept in MATLAB's column-major order
/// with MATLAB's dimensions (e.g. a 480×640 image has dims [480, 640] and element (r, c) at r + 480·c).
public indirect enum MatValue {
    case numeric(dims: [Int], values: [Double], matlabClass: String)
    case char(dims: [Int], text: String)
    case cell(dims: [Int], elements: [MatValue])
    case structure(dims: [Int], fields: [String], elements: [[String: MatValue]])
    case unsupported(String)

    public var dims: [Int] {
        switch self {
        case .numeric(let d, _, _), .char(let d, _), .cell(let d, _), .structure(let d, _, _): return d
        case .unsupported: return []
        }
    }
    public var numbers: [Double]? { if case .numeric(_, let v, _) = self { return v }; return nil }
    public var text: String? { if case .char(_, let t) = self { return t }; return nil }
    /// Field `name` of struct element `i`.
    public func field(_ name: String, _ i: Int = 0) -> MatValue? {
        if case .structure(_, _, let els) = self, i < els.count { return els[i][name] }
        return nil
    }
    public var count: Int { dims.reduce(1, *) }
}

/// Reader for MAT-file level 5 (MATLAB v5/v6/v7 "-v7" without HDF5): 128-byte header, then data
/// elements. Supports what NYUv2's splits.mat / classMapping40.mat / class13Mapping.mat and
/// PASCAL-Part / PASCAL-Context annotation files use: miMATRIX of numeric classes (all mi* element
/// types, real part; logical), char (miUTF8/miUINT16/miUINT8...), cell and struct arrays (nested),
/// and miCOMPRESSED (zlib) elements. Sparse, object and function-handle arrays are returned as
/// `.unsupported`; complex arrays keep their real part. v7.3 files are HDF5: use H5File for those.
public enum MatV5 {
    public static func read(_ path: String) throws -> [String: MatValue] {
        let b = try readFileBytes(path)
        return try parse(b, path: path)
    }

    public static func parse(_ b: [UInt8], path: String) throws -> [String: MatValue] {
        guard b.count >= 128 else { throw MTLError("\(path): not a MAT-file (expected a 128-byte header, found \(b.count) bytes)") }
        if b.count >= 520, Array(b[512..<520]) == [0x89, 0x48, 0x44, 0x46, 0x0D, 0x0A, 0x1A, 0x0A] {
            throw MTLError("\(path): this is a MATLAB v7.3 (HDF5) MAT-file, expected level 5 (save with -v7)")
        }
        let text = String(decoding: b[0..<116], as: UTF8.self)
        guard text.hasPrefix("MATLAB 5.0 MAT-file") || (b[126] == 0x49 && b[127] == 0x4D) else {
            throw MTLError("\(path): not a MATLAB level-5 MAT-file (header text '\(text.prefix(20))', endian '\(String(decoding: b[126..<128], as: UTF8.self))')")
        }
        guard b[126] == 0x49, b[127] == 0x4D else {
            throw MTLError("\(path): big-endian MAT-file is not supported (endian indicator 'MI', expected 'IM')")
        }
        var out: [String: MatValue] = [:]
        var r = Reader(bytes: b, pos: 128, end: b.count, path: path)
        while r.pos + 8 <= r.end {
            if let (name, v) = try r.element() { out[name] = v }
        }
        return out
    }

    static let miINT8 = 1, miUINT8 = 2, miINT16 = 3, miUINT16 = 4, miINT32 = 5, miUINT32 = 6, miSINGLE = 7,
               miDOUBLE = 9, miINT64 = 12, miUINT64 = 13, miMATRIX = 14, miCOMPRESSED = 15, miUTF8 = 16,
               miUTF16 = 17, miUTF32 = 18
    static let classNames = [1: "cell", 2: "struct", 3: "object", 4: "char", 5: "sparse", 6: "double", 7: "single",
                             8: "int8", 9: "uint8", 10: "int16", 11: "uint16", 12: "int32", 13: "uint32",
                             14: "int64", 15: "uint64"]

    static func inflate(_ src: ArraySlice<UInt8>, path: String) throws -> [UInt8] {
        var strm = z_stream()
        guard inflateInit_(&strm, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw MTLError("\(path): zlib init failed")
        }
        defer { inflateEnd(&strm) }
        var out = [UInt8](repeating: 0, count: max(1024, src.count * 4))
        var produced = 0
        let input = Array(src)
        var status: Int32 = Z_OK
        input.withUnsafeBufferPointer { ip in
            strm.next_in = UnsafeMutablePointer(mutating: ip.baseAddress)
            strm.avail_in = UInt32(ip.count)
            repeat {
                if produced == out.count { out += [UInt8](repeating: 0, count: out.count) }
                out.withUnsafeMutableBufferPointer { op in
                    strm.next_out = op.baseAddress! + produced
                    strm.avail_out = UInt32(op.count - produced)
                    status = CZlib.inflate(&strm, Z_NO_FLUSH)
                    produced = op.count - Int(strm.avail_out)
                }
            } while status == Z_OK && (strm.avail_in > 0 || produced == out.count)
        }
        guard status == Z_STREAM_END || status == Z_OK || status == Z_BUF_ERROR else {
            throw MTLError("\(path): corrupt miCOMPRESSED element (zlib status \(status))")
        }
        if status != Z_STREAM_END && strm.avail_in == 0 && produced == 0 {
            throw MTLError("\(path): truncated miCOMPRESSED element")
        }
        return Array(out[0..<produced])
    }

    struct Reader {
        let bytes: [UInt8]
        var pos: Int
        let end: Int
        let path: String

        func u32(_ o: Int) -> Int { Int(bytes[o]) | Int(bytes[o + 1]) << 8 | Int(bytes[o + 2]) << 16 | Int(bytes[o + 3]) << 24 }

        /// Reads a tag; returns (type, byte count, data start) and advances past the (padded) element.
        mutating func tag() throws -> (Int, Int, Int) {
            guard pos + 8 <= end else { throw MTLError("\(path): truncated MAT-file (data element tag at byte \(pos))") }
            let first = u32(pos)
            if first >> 16 != 0 {  // small data element: 2-byte count, 2-byte type, data in the next 4 bytes
                let type = first & 0xFFFF, n = first >> 16
                guard n <= 4 else { throw MTLError("\(path): corrupt small data element at byte \(pos)") }
                let start = pos + 4
                pos += 8
                return (type, n, start)
            }
            let n = u32(pos + 4)
            let start = pos + 8
            guard start + n <= end else {
                throw MTLError("\(path): truncated MAT-file (element at byte \(pos) needs \(n) bytes, \(end - start) left)")
            }
            let type = first
            pos = start + (type == MatV5.miCOMPRESSED ? n : (n + 7) / 8 * 8)
            pos = min(pos, end)
            return (type, n, start)
        }

        /// One top-level element → (name, value), nil for skipped kinds.
        mutating func element() throws -> (String, MatValue)? {
            let (type, n, start) = try tag()
            if type == MatV5.miCOMPRESSED {
                let inner = try MatV5.inflate(bytes[start..<(start + n)], path: path)
                var sub = Reader(bytes: inner, pos: 0, end: inner.count, path: path)
                return try sub.element()
            }
            if type == MatV5.miMATRIX {
                var sub = Reader(bytes: bytes, pos: start, end: start + n, path: path)
                return try sub.matrix()
            }
            return nil
        }

        func numbers(_ type: Int, _ n: Int, _ start: Int) throws -> [Double] {
            let size: Int
            switch type {
            case MatV5.miINT8, MatV5.miUINT8, MatV5.miUTF8: size = 1
            case MatV5.miINT16, MatV5.miUINT16, MatV5.miUTF16: size = 2
            case MatV5.miINT32, MatV5.miUINT32, MatV5.miSINGLE, MatV5.miUTF32: size = 4
            case MatV5.miDOUBLE, MatV5.miINT64, MatV5.miUINT64: size = 8
            default: throw MTLError("\(path): unsupported MAT data type \(type) at byte \(start)")
            }
            let count = n / size
            var out = [Double](repeating: 0, count: count)
            bytes.withUnsafeBytes { raw in
                let base = start
                switch type {
                case MatV5.miINT8: for i in 0..<count { out[i] = Double(Int8(bitPattern: raw[base + i])) }
                case MatV5.miUINT8, MatV5.miUTF8: for i in 0..<count { out[i] = Double(raw[base + i]) }
                case MatV5.miINT16: for i in 0..<count { out[i] = Double(raw.loadUnaligned(fromByteOffset: base + 2 * i, as: Int16.self)) }
                case MatV5.miUINT16, MatV5.miUTF16: for i in 0..<count { out[i] = Double(raw.loadUnaligned(fromByteOffset: base + 2 * i, as: UInt16.self)) }
                case MatV5.miINT32: for i in 0..<count { out[i] = Double(raw.loadUnaligned(fromByteOffset: base + 4 * i, as: Int32.self)) }
                case MatV5.miUINT32, MatV5.miUTF32: for i in 0..<count { out[i] = Double(raw.loadUnaligned(fromByteOffset: base + 4 * i, as: UInt32.self)) }
                case MatV5.miSINGLE: for i in 0..<count { out[i] = Double(raw.loadUnaligned(fromByteOffset: base + 4 * i, as: Float.self)) }
                case MatV5.miDOUBLE: for i in 0..<count { out[i] = raw.loadUnaligned(fromByteOffset: base + 8 * i, as: Double.self) }
                case MatV5.miINT64: for i in 0..<count { out[i] = Double(raw.loadUnaligned(fromByteOffset: base + 8 * i, as: Int64.self)) }
                case MatV5.miUINT64: for i in 0..<count { out[i] = Double(raw.loadUnaligned(fromByteOffset: base + 8 * i, as: UInt64.self)) }
                default: break
                }
            }
            return out
        }

        /// The body of an miMATRIX element (reader positioned at its first sub-element).
        mutating func matrix() throws -> (String, MatValue) {
            if pos >= end { return ("", .numeric(dims: [0, 0], values: [], matlabClass: "double")) }  // empty []
            let (ft, _, fs) = try tag()
            guard ft == MatV5.miUINT32 else { throw MTLError("\(path): corrupt miMATRIX (array flags of type \(ft))") }
            let flags = u32(fs)
            let cls = flags & 0xFF
            let isComplex = flags & 0x800 != 0
            let isLogical = flags & 0x200 != 0
            let (dt, dn, ds) = try tag()
            guard dt == MatV5.miINT32 else { throw MTLError("\(path): corrupt miMATRIX (dimensions of type \(dt))") }
            let dims = try numbers(dt, dn, ds).map { Int($0) }
            let (nt, nn, ns) = try tag()
            let name = String(decoding: bytes[ns..<(ns + nn)], as: UTF8.self)
            _ = nt
            let count = dims.reduce(1, *)
            switch cls {
            case 6...15:
                let (t, n, s) = try tag()
                var values = try numbers(t, n, s)
                if values.count < count { values += [Double](repeating: 0, count: count - values.count) }
                if isComplex, pos < end { _ = try tag() }
                return (name, .numeric(dims: dims, values: values, matlabClass: isLogical ? "logical" : MatV5.classNames[cls]!))
            case 4:
                if count == 0 { return (name, .char(dims: dims, text: "")) }
                let (t, n, s) = try tag()
                let text: String
                if t == MatV5.miUTF8 || t == MatV5.miUINT8 || t == MatV5.miINT8 {
                    text = String(decoding: bytes[s..<(s + n)], as: UTF8.self)
                } else {
                    let codes = try numbers(t, n, s)
                    text = String(String.UnicodeScalarView(codes.compactMap { Unicode.Scalar(UInt32($0)) }))
                }
                return (name, .char(dims: dims, text: text))
            case 1:
                var els: [MatValue] = []
                for _ in 0..<count {
                    let (t, n, s) = try tag()
                    guard t == MatV5.miMATRIX else { throw MTLError("\(path): corrupt cell element (type \(t))") }
                    var sub = Reader(bytes: bytes, pos: s, end: s + n, path: path)
                    els.append(try sub.matrix().1)
                }
                return (name, .cell(dims: dims, elements: els))
            case 2, 3:
                if cls == 3 { _ = try tag() }  // class name
                let (_, ln, ls) = try tag()
                let fieldLen = ln == 4 ? u32(ls) : Int(bytes[ls])
                let (_, fnn, fns) = try tag()
                let nf = fieldLen > 0 ? fnn / fieldLen : 0
                let fields = (0..<nf).map { i -> String in
                    let s = fns + i * fieldLen
                    return String(decoding: bytes[s..<(s + fieldLen)].prefix { $0 != 0 }, as: UTF8.self)
                }
                var els: [[String: MatValue]] = []
                for _ in 0..<count {
                    var e: [String: MatValue] = [:]
                    for f in fields {
                        let (t, n, s) = try tag()
                        guard t == MatV5.miMATRIX else { throw MTLError("\(path): corrupt struct field \(f) (type \(t))") }
                        var sub = Reader(bytes: bytes, pos: s, end: s + n, path: path)
                        e[f] = try sub.matrix().1
                    }
                    els.append(e)
                }
                if cls == 3 { return (name, .unsupported("object")) }
                return (name, .structure(dims: dims, fields: fields, elements: els))
            default:
                return (name, .unsupported(MatV5.classNames[cls] ?? "class \(cls)"))
            }
        }
    }
}
