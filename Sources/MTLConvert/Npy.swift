import Foundation
import MTLCore

/// NumPy `.npy` files (format versions 1.0, 2.0, 3.0): magic "\x93NUMPY", version, a little-endian
/// header length, then a Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (H, W, 3), }
/// padded with spaces, then the raw C-order data.
public enum Npy {
    public enum DType: String, CaseIterable {
        case f4 = "<f4", f8 = "<f8", i8 = "<i8", i4 = "<i4", i2 = "<i2", u2 = "<u2", u1 = "|u1", b1 = "|b1"
        var size: Int { switch self { case .f4, .i4: return 4; case .f8, .i8: return 8; case .i2, .u2: return 2; case .u1, .b1: return 1 } }
    }

    public struct Array {
        public var dtype: DType
        public var shape: [Int]
        public var data: [UInt8]   // raw little-endian bytes, C order
        public var count: Int { shape.reduce(1, *) }

        /// Values converted to Float (the MTAN files are float64 or float32 in practice; bool is 0/1).
        public func floats() -> [Float] {
            var out = [Float](repeating: 0, count: count)
            data.withUnsafeBytes { raw in
                switch dtype {
                case .f4: for i in 0..<count { out[i] = raw.loadUnaligned(fromByteOffset: 4 * i, as: Float.self) }
                case .f8: for i in 0..<count { out[i] = Float(raw.loadUnaligned(fromByteOffset: 8 * i, as: Double.self)) }
                case .i8: for i in 0..<count { out[i] = Float(raw.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self)) }
                case .i4: for i in 0..<count { out[i] = Float(raw.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)) }
                case .i2: for i in 0..<count { out[i] = Float(raw.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self)) }
                case .u2: for i in 0..<count { out[i] = Float(raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
                case .u1: for i in 0..<count { out[i] = Float(raw[i]) }
                case .b1: for i in 0..<count { out[i] = raw[i] != 0 ? 1 : 0 }  // numpy bool: one byte, 0 or 1
                }
            }
            return out
        }
    }

    public static func read(_ path: String) throws -> Array {
        let b = try readFileBytes(path)
        let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]
        guard b.count >= 10, Swift.Array(b[0..<6]) == magic else {
            throw MTLError("\(path): not a .npy file (expected magic \\x93NUMPY, found \(b.count) bytes without it)")
        }
        let major = Int(b[6])
        let headerLen: Int, start: Int
        switch major {
        case 1: headerLen = Int(b[8]) | Int(b[9]) << 8; start = 10
        case 2, 3:
            guard b.count >= 12 else { throw MTLError("\(path): truncated .npy header") }
            headerLen = Int(b[8]) | Int(b[9]) << 8 | Int(b[10]) << 16 | Int(b[11]) << 24; start = 12
        default: throw MTLError("\(path): unsupported .npy version \(major).\(b[7]) (expected 1.0, 2.0 or 3.0)")
        }
        guard start + headerLen <= b.count else { throw MTLError("\(path): truncated .npy header (needs \(headerLen) bytes)") }
        let header = String(decoding: b[start..<(start + headerLen)], as: UTF8.self)
        func value(_ key: String) -> String? {
            guard let r = header.range(of: "'\(key)':") else { return nil }
            return String(header[r.upperBound...]).trimmingCharacters(in: .whitespaces)
        }
        guard let d = value("descr"), let q1 = d.firstIndex(of: "'"),
              let q2 = d[d.index(after: q1)...].firstIndex(of: "'") else {
            throw MTLError("\(path): .npy header has no 'descr' (found: \(header.trimmingCharacters(in: .whitespacesAndNewlines)))")
        }
        var descr = String(d[d.index(after: q1)..<q2])
        if descr == "<u1" { descr = "|u1" }
        if descr == "<b1" || descr == "?" { descr = "|b1" }
        if descr == "=f4" || descr == "=f8" || descr == "=i8" || descr == "=i4" || descr == "=i2" { descr = "<" + descr.dropFirst() } // native = little here
        guard let dtype = DType(rawValue: descr) else {
            let why = descr.hasPrefix(">") ? "big-endian data is not supported" : "unsupported dtype"
            throw MTLError("\(path): \(why): descr '\(descr)' (expected one of \(DType.allCases.map { $0.rawValue }.joined(separator: ", ")))")
        }
        guard let f = value("fortran_order") else { throw MTLError("\(path): .npy header has no 'fortran_order'") }
        if f.hasPrefix("True") { throw MTLError("\(path): fortran_order True is not supported (expected C order; save with np.ascontiguousarray)") }
        guard let s = value("shape"), let p1 = s.firstIndex(of: "("), let p2 = s.firstIndex(of: ")") else {
            throw MTLError("\(path): .npy header has no 'shape'")
        }
        let shape = s[s.index(after: p1)..<p2].split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        let n = shape.reduce(1, *)
        let dataStart = start + headerLen
        guard b.count - dataStart >= n * dtype.size else {
            throw MTLError("\(path): truncated .npy data (shape \(shape) \(descr) needs \(n * dtype.size) bytes, found \(b.count - dataStart))")
        }
        return Array(dtype: dtype, shape: shape, data: Swift.Array(b[dataStart..<(dataStart + n * dtype.size)]))
    }

    /// Writes a version 1.0 .npy file (C order, little-endian).
    public static func write(_ path: String, dtype: DType, shape: [Int], bytes: [UInt8]) throws {
        precondition(bytes.count == shape.reduce(1, *) * dtype.size)
        let shapeText = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        var header = "{'descr': '\(dtype.rawValue)', 'fortran_order': False, 'shape': \(shapeText), }"
        let total = 10 + header.utf8.count + 1
        header += String(repeating: " ", count: (64 - total % 64) % 64) + "\n"
        var out: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0]
        let hl = header.utf8.count
        out += [UInt8(hl & 0xFF), UInt8(hl >> 8)]
        out += Swift.Array(header.utf8)
        out += bytes
        guard FileManager.default.createFile(atPath: path, contents: Data(out)) else { throw MTLError("\(path): cannot write .npy") }
    }

    public static func write(_ path: String, floats: [Float], shape: [Int]) throws {
        try write(path, dtype: .f4, shape: shape, bytes: floats.withUnsafeBytes { Swift.Array($0) })
    }
    public static func write(_ path: String, doubles: [Double], shape: [Int]) throws {
        try write(path, dtype: .f8, shape: shape, bytes: doubles.withUnsafeBytes { Swift.Array($0) })
    }
}
