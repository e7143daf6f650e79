import CZlib
import Foundation
import MTLCore
@testable import MTLConvert
import XCTest

/// A fresh temporary directory per test.
func makeTempDir(_ name: String) -> String {
    let p = NSTemporaryDirectory() + "mtlconvert-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try! FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
    return p
}

func mkdirs(_ p: String) { try! FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true) }

func writeText(_ path: String, _ s: String) { FileManager.default.createFile(atPath: path, contents: s.data(using: .utf8)) }

func pythonHas(_ module: String) -> Bool {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["python3", "-c", "import \(module)"]
    p.standardOutput = FileHandle.nullDevice; p.standardError = FileHandle.nullDevice
    do { try p.run() } catch { return false }
    p.waitUntilExit()
    return p.terminationStatus == 0
}

func runPython(_ script: String) throws {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["python3", "-c", script]
    let err = Pipe(); p.standardError = err
    try p.run(); p.waitUntilExit()
    if p.terminationStatus != 0 {
        throw MTLError("python failed: " + String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
    }
}

/// A MAT-file level-5 writer, byte by byte from the MathWorks "MAT-File Format" document, independent of
/// the reader under test: 128-byte header, data elements with 8-byte tags padded to 8 bytes, small data
/// elements for ≤4 bytes, miCOMPRESSED via zlib's compress2.
enum MatWriter {
    static func le32(_ v: Int) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    static func header() -> [UInt8] {
        var t = Array("MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: test fixture".utf8)
        t += [UInt8](repeating: 0x20, count: 116 - t.count)
        return t + [UInt8](repeating: 0, count: 8) + [0x00, 0x01] + Array("IM".utf8)
    }
    static func element(_ type: Int, _ data: [UInt8], small: Bool = true) -> [UInt8] {
        if small && data.count <= 4 {
            return [UInt8(type & 0xFF), UInt8(type >> 8), UInt8(data.count), 0] + data + [UInt8](repeating: 0, count: 4 - data.count)
        }
        let pad = (8 - data.count % 8) % 8
        return le32(type) + le32(data.count) + data + [UInt8](repeating: 0, count: pad)
    }
    /// miMATRIX with flags/class, dims, name and the already-encoded body sub-elements.
    static func matrix(_ name: String, cls: Int, dims: [Int], body: [UInt8], logical: Bool = false) -> [UInt8] {
        var d: [UInt8] = []
        d += element(6, le32(cls | (logical ? 0x200 : 0)) + le32(0), small: false)
        d += element(5, dims.flatMap { le32($0) }, small: false)
        d += element(1, Array(name.utf8))
        d += body
        return element(14, d, small: false)
    }
    static func uint8(_ name: String, dims: [Int], _ v: [UInt8]) -> [UInt8] { matrix(name, cls: 9, dims: dims, body: element(2, v)) }
    static func uint16(_ name: String, dims: [Int], _ v: [UInt16]) -> [UInt8] {
        matrix(name, cls: 11, dims: dims, body: element(4, v.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }))
    }
    /// A double array whose values are stored as miUINT8 (MATLAB's own space saving), or as miDOUBLE.
    static func double(_ name: String, dims: [Int], _ v: [Double], storeAsUInt8: Bool = false) -> [UInt8] {
        if storeAsUInt8 { return matrix(name, cls: 6, dims: dims, body: element(2, v.map { UInt8($0) })) }
        return matrix(name, cls: 6, dims: dims, body: element(9, v.flatMap { withUnsafeBytes(of: $0) { Array($0) } }))
    }
    static func char(_ name: String, _ s: String) -> [UInt8] {
        let u = Array(s.utf16)
        return matrix(name, cls: 4, dims: [1, u.count], body: element(4, u.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }))
    }
    /// Struct array; `elements[i][f]` is an encoded miMATRIX (its name is ignored by MATLAB).
    static func structure(_ name: String, dims: [Int], fields: [String], elements: [[[UInt8]]]) -> [UInt8] {
        let len = 32
        var body = element(5, le32(len))
        body += element(1, fields.flatMap { Array($0.utf8) + [UInt8](repeating: 0, count: len - $0.utf8.count) })
        for e in elements { for f in e { body += f } }
        return matrix(name, cls: 2, dims: dims, body: body)
    }
    static func cell(_ name: String, dims: [Int], _ elements: [[UInt8]]) -> [UInt8] {
        matrix(name, cls: 1, dims: dims, body: elements.flatMap { $0 })
    }
    static func compressed(_ el: [UInt8]) -> [UInt8] {
        var destLen = compressBound(UInt(el.count))
        var dest = [UInt8](repeating: 0, count: Int(destLen))
        _ = compress2(&dest, &destLen, el, UInt(el.count), 6)
        let c = Array(dest[0..<Int(destLen)])
        return le32(15) + le32(c.count) + c
    }
    static func file(_ path: String, _ elements: [[UInt8]]) {
        FileManager.default.createFile(atPath: path, contents: Data(header() + elements.flatMap { $0 }))
    }
}

/// Column-major (MATLAB) copy of a row-major H×W array.
func colMajor<T>(_ v: [T], h: Int, w: Int) -> [T] {
    var o = v
    for y in 0..<h { for x in 0..<w { o[x * h + y] = v[y * w + x] } }
    return o
}
