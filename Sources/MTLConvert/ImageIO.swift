import CJPEG
import CPNG
import Foundation
import MTLCore

/// A decoded raster, row-major, `channels` interleaved values per pixel.
public struct Raster<T> {
    public var width: Int
    public var height: Int
    public var channels: Int
    public var pixels: [T]
    public init(width: Int, height: Int, channels: Int, pixels: [T]) {
        self.width = width; self.height = height; self.channels = channels; self.pixels = pixels
    }
}

/// Reads a whole file, or throws a one-line error naming it.
func readFileBytes(_ path: String) throws -> [UInt8] {
    guard let d = FileManager.default.contents(atPath: path) else {
        if FileManager.default.fileExists(atPath: path) { throw MTLError("\(path): cannot read file") }
        throw MTLError("\(path): file not found")
    }
    return [UInt8](d)
}

// MARK: - PNG (libpng's simplified API: it catches libpng's longjmp errors itself, so a
// corrupt file becomes an error message instead of a process abort — Swift cannot setjmp).

public enum PNG {
    /// IHDR fields read from the bytes (validated signature).
    struct Header { var width: Int; var height: Int; var bitDepth: Int; var colorType: Int }

    static func header(_ b: [UInt8], _ path: String) throws -> Header {
        let sig: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        guard b.count >= 33, Array(b[0..<8]) == sig, b[12] == 0x49, b[13] == 0x48, b[14] == 0x44, b[15] == 0x52 else {
            throw MTLError("\(path): not a PNG file (expected the PNG signature and an IHDR chunk, found \(b.count) bytes that do not start like a PNG)")
        }
        func be32(_ o: Int) -> Int { Int(b[o]) << 24 | Int(b[o + 1]) << 16 | Int(b[o + 2]) << 8 | Int(b[o + 3]) }
        return Header(width: be32(16), height: be32(20), bitDepth: Int(b[24]), colorType: Int(b[25]))
    }

    /// Drops the colour-management chunks (gAMA, sRGB, iCCP, cHRM) so that libpng returns the stored
    /// sample values unchanged: our PNGs hold labels, disparities and normals, which are data, not colours
    /// (this is also what PIL-based loaders see). Each chunk carries its own CRC, so the rest stays valid.
    static func stripColorChunks(_ b: [UInt8]) -> [UInt8] {
        if b.count < 8 { return b }
        var out = [UInt8](b[0..<8]); out.reserveCapacity(b.count)
        var o = 8
        while o + 12 <= b.count {
            let len = Int(b[o]) << 24 | Int(b[o + 1]) << 16 | Int(b[o + 2]) << 8 | Int(b[o + 3])
            let end = o + 12 + len
            if len < 0 || end > b.count { out += b[o...]; return out }  // truncated: let libpng report it
            let type = String(decoding: b[(o + 4)..<(o + 8)], as: UTF8.self)
            if !["gAMA", "sRGB", "iCCP", "cHRM"].contains(type) { out += b[o..<end] }
            o = end
        }
        if o < b.count { out += b[o...] }
        return out
    }

    private static func message(_ image: inout png_image) -> String {
        withUnsafeBytes(of: &image.message) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// Decodes with libpng into `format`; `T` is UInt8 or UInt16 (linear formats).
    private static func decode<T>(_ path: String, bytes: [UInt8], format: UInt32, flags: UInt32 = 0,
                                  colormapped: Bool = false, as: T.Type) throws -> (Raster<T>, [UInt8]) {
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        let ok = bytes.withUnsafeBytes { png_image_begin_read_from_memory(&image, $0.baseAddress, $0.count) }
        if ok == 0 {
            let m = message(&image); png_image_free(&image)
            throw MTLError("\(path): unreadable PNG (libpng: \(m))")
        }
        image.format = format
        image.flags |= flags
        let w = Int(image.width), h = Int(image.height)
        let channels = colormapped ? 1 : Int((format & UInt32(PNG_FORMAT_FLAG_COLOR)) != 0 ? 3 : 1)
        var pixels = [T](unsafeUninitializedCapacity: w * h * channels) { _, n in n = w * h * channels }
        var colormap = [UInt8](repeating: 0, count: colormapped ? 256 * 3 : 0)
        let done = pixels.withUnsafeMutableBytes { px in
            colormap.withUnsafeMutableBytes { cm in
                bytes.withUnsafeBytes { _ in
                    png_image_finish_read(&image, nil, px.baseAddress, Int32(w * channels), colormapped ? cm.baseAddress : nil)
                }
            }
        }
        if done == 0 {
            let m = message(&image); png_image_free(&image)
            throw MTLError("\(path): unreadable PNG (libpng: \(m))")
        }
        png_image_free(&image)
        return (Raster(width: w, height: h, channels: channels, pixels: pixels), colormap)
    }

    /// An RGB photo as 8-bit RGB (gray and palette images are expanded; 16-bit scaled down; alpha dropped).
    public static func readRGB8(_ path: String) throws -> Raster<UInt8> {
        let b = stripColorChunks(try readFileBytes(path))
        _ = try header(b, path)
        // 16BIT_sRGB: a 16-bit photo is scaled to 8 bits, not gamma-encoded as if it were linear light.
        return try decode(path, bytes: b, format: UInt32(PNG_FORMAT_RGB), flags: UInt32(PNG_IMAGE_FLAG_16BIT_sRGB), as: UInt8.self).0
    }

    /// A single-channel 16-bit map (e.g. Cityscapes disparity) with its stored values unchanged.
    /// 8-bit gray files are accepted and returned as 0..255.
    public static func readGray16(_ path: String) throws -> Raster<UInt16> {
        let b = stripColorChunks(try readFileBytes(path))
        let hd = try header(b, path)
        guard hd.colorType == 0 else {
            throw MTLError("\(path): expected a grayscale PNG (color type 0), found color type \(hd.colorType)")
        }
        if hd.bitDepth == 16 {
            return try decode(path, bytes: b, format: UInt32(PNG_FORMAT_LINEAR_Y), as: UInt16.self).0
        }
        let r = try decode(path, bytes: b, format: UInt32(PNG_FORMAT_GRAY), as: UInt8.self).0
        return Raster(width: r.width, height: r.height, channels: 1, pixels: r.pixels.map { UInt16($0) })
    }

    /// A label map: palette PNGs give their palette indices (VOC style), gray PNGs their values
    /// (8- or 16-bit; 1/2/4-bit gray is expanded to 0..255 by libpng). RGB label files are rejected.
    public static func readLabels(_ path: String) throws -> Raster<UInt16> {
        let b = stripColorChunks(try readFileBytes(path))
        let hd = try header(b, path)
        switch hd.colorType {
        case 3:
            let (r, _) = try decode(path, bytes: b, format: UInt32(PNG_FORMAT_RGB | PNG_FORMAT_FLAG_COLORMAP),
                                    colormapped: true, as: UInt8.self)
            return Raster(width: r.width, height: r.height, channels: 1, pixels: r.pixels.map { UInt16($0) })
        case 0:
            return try readGray16(path)
        default:
            throw MTLError("\(path): expected a label PNG (gray or palette), found color type \(hd.colorType) (\(hd.colorType == 2 ? "RGB" : "with alpha"))")
        }
    }

    // MARK: encoding (test fixtures, and any tool that wants to write a PNG)

    private static func write(_ path: String, width: Int, height: Int, format: UInt32, pixels: UnsafeRawPointer,
                              rowStride: Int, colormap: UnsafeRawPointer?, entries: Int = 0) throws {
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        image.width = UInt32(width); image.height = UInt32(height); image.format = format
        image.colormap_entries = UInt32(entries)
        if png_image_write_to_file(&image, path, 0, pixels, Int32(rowStride), colormap) == 0 {
            let m = message(&image); png_image_free(&image)
            throw MTLError("\(path): cannot write PNG (libpng: \(m))")
        }
        png_image_free(&image)
    }

    public static func writeGray8(_ path: String, width: Int, height: Int, _ px: [UInt8]) throws {
        try px.withUnsafeBytes { try write(path, width: width, height: height, format: UInt32(PNG_FORMAT_GRAY), pixels: $0.baseAddress!, rowStride: width, colormap: nil) }
    }
    /// 16-bit gray, values stored as given (linear format: no gamma applied on write).
    public static func writeGray16(_ path: String, width: Int, height: Int, _ px: [UInt16]) throws {
        try px.withUnsafeBytes { try write(path, width: width, height: height, format: UInt32(PNG_FORMAT_LINEAR_Y), pixels: $0.baseAddress!, rowStride: width, colormap: nil) }
    }
    public static func writeRGB8(_ path: String, width: Int, height: Int, _ px: [UInt8]) throws {
        try px.withUnsafeBytes { try write(path, width: width, height: height, format: UInt32(PNG_FORMAT_RGB), pixels: $0.baseAddress!, rowStride: width * 3, colormap: nil) }
    }
    /// A palette PNG: `indices` into `palette` (RGB triples).
    public static func writePalette(_ path: String, width: Int, height: Int, _ indices: [UInt8], palette: [UInt8]) throws {
        try indices.withUnsafeBytes { ip in
            try palette.withUnsafeBytes { cp in
                try write(path, width: width, height: height, format: UInt32(PNG_FORMAT_RGB | PNG_FORMAT_FLAG_COLORMAP),
                          pixels: ip.baseAddress!, rowStride: width, colormap: cp.baseAddress!, entries: palette.count / 3)
            }
        }
    }
}

// MARK: - JPEG (libjpeg-turbo)

/// libjpeg reports fatal errors through `error_exit`, which must not return, and Swift cannot
/// `setjmp`. So the file's marker structure is checked first (signature, frame type, precision,
/// components, segment lengths, EOI present), which turns the usual bad inputs (not a JPEG,
/// truncated file, unsupported coding) into an MTLError; corrupt entropy-coded data is only a
/// libjpeg warning, which we count and report as an error. A fatal libjpeg error that gets past
/// this check prints one line naming the file and exits the process with status 1.
public enum JPEG {
    final class Context { let path: String; var warnings = 0; var lastWarning = ""; init(_ p: String) { path = p } }

    static func validate(_ b: [UInt8], _ path: String) throws {
        guard b.count >= 4, b[0] == 0xFF, b[1] == 0xD8 else {
            throw MTLError("\(path): not a JPEG file (expected SOI marker FF D8, found \(b.prefix(2).map { String(format: "%02X", $0) }.joined(separator: " ")))")
        }
        var o = 2
        var sawFrame = false
        while o + 4 <= b.count {
            guard b[o] == 0xFF else { throw MTLError("\(path): corrupt JPEG (expected a marker at byte \(o), found 0x\(String(format: "%02X", b[o])))") }
            var m = b[o + 1]
            while m == 0xFF, o + 2 < b.count { o += 1; m = b[o + 1] }  // fill bytes
            if m == 0xD9 { break }
            if m == 0x01 || (m >= 0xD0 && m <= 0xD7) { o += 2; continue }
            let len = Int(b[o + 2]) << 8 | Int(b[o + 3])
            guard len >= 2, o + 2 + len <= b.count else {
                throw MTLError("\(path): truncated JPEG (segment 0x\(String(format: "%02X", m)) at byte \(o) needs \(len) bytes, file has \(b.count - o - 2) left)")
            }
            if m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC {
                guard [0xC0, 0xC1, 0xC2, 0xC9, 0xCA].contains(m) else {
                    throw MTLError("\(path): unsupported JPEG coding (SOF 0x\(String(format: "%02X", m)); expected baseline, extended or progressive)")
                }
                let precision = b[o + 4], comps = b[o + 9]
                guard precision == 8, comps == 1 || comps == 3 else {
                    throw MTLError("\(path): unsupported JPEG (expected 8-bit gray or YCbCr, found \(precision)-bit with \(comps) components)")
                }
                sawFrame = true
            }
            o += 2 + len
            if m == 0xDA {  // entropy-coded data up to the next marker that is not a stuffed 00 or RSTn
                while o + 1 < b.count {
                    if b[o] == 0xFF, b[o + 1] != 0, !(b[o + 1] >= 0xD0 && b[o + 1] <= 0xD7), b[o + 1] != 0xFF { break }
                    o += 1
                }
                if o + 1 >= b.count { throw MTLError("\(path): truncated JPEG (entropy-coded data runs to the end of the file, no EOI marker)") }
            }
        }
        guard sawFrame else { throw MTLError("\(path): corrupt JPEG (no frame header SOFn)") }
        guard o + 2 <= b.count, b[o] == 0xFF, b[o + 1] == 0xD9 else {
            throw MTLError("\(path): truncated JPEG (no EOI marker)")
        }
    }

    /// Decodes a JPEG to 8-bit RGB.
    public static func readRGB8(_ path: String) throws -> Raster<UInt8> {
        let bytes = try readFileBytes(path)
        try validate(bytes, path)
        let ctx = Context(path)
        var err = jpeg_error_mgr()
        var cinfo = jpeg_decompress_struct()
        cinfo.err = jpeg_std_error(&err)
        err.error_exit = { c in
            var buf = [CChar](repeating: 0, count: Int(JMSG_LENGTH_MAX))
            c!.pointee.err.pointee.format_message(c, &buf)
            let ctx = Unmanaged<JPEG.Context>.fromOpaque(c!.pointee.client_data!).takeUnretainedValue()
            FileHandle.standardError.write("error: \(ctx.path): JPEG decode failed (libjpeg: \(String(cString: buf)))\n".data(using: .utf8)!)
            exit(1)
        }
        err.emit_message = { c, level in
            guard level < 0 else { return }  // trace messages
            var buf = [CChar](repeating: 0, count: Int(JMSG_LENGTH_MAX))
            c!.pointee.err.pointee.format_message(c, &buf)
            let ctx = Unmanaged<JPEG.Context>.fromOpaque(c!.pointee.client_data!).takeUnretainedValue()
            ctx.warnings += 1; ctx.lastWarning = String(cString: buf)
        }
        jpeg_CreateDecompress(&cinfo, JPEG_LIB_VERSION, MemoryLayout<jpeg_decompress_struct>.size)
        cinfo.client_data = Unmanaged.passUnretained(ctx).toOpaque()
        defer { jpeg_destroy_decompress(&cinfo) }
        return try withExtendedLifetime(ctx) {
            try bytes.withUnsafeBufferPointer { bp in
                jpeg_mem_src(&cinfo, bp.baseAddress, UInt(bp.count))
                jpeg_read_header(&cinfo, 1)
                cinfo.out_color_space = JCS_RGB
                jpeg_start_decompress(&cinfo)
                let w = Int(cinfo.output_width), h = Int(cinfo.output_height)
                var px = [UInt8](repeating: 0, count: w * h * 3)
                px.withUnsafeMutableBufferPointer { p in
                    while cinfo.output_scanline < cinfo.output_height {
                        var row: JSAMPROW? = p.baseAddress! + Int(cinfo.output_scanline) * w * 3
                        jpeg_read_scanlines(&cinfo, &row, 1)
                    }
                }
                jpeg_finish_decompress(&cinfo)
                if ctx.warnings > 0 { throw MTLError("\(path): corrupt JPEG data (libjpeg: \(ctx.lastWarning))") }
                return Raster(width: w, height: h, channels: 3, pixels: px)
            }
        }
    }

    /// Encodes 8-bit RGB to a JPEG file (test fixtures).
    public static func writeRGB8(_ path: String, width: Int, height: Int, _ px: [UInt8], quality: Int = 95) throws {
        var err = jpeg_error_mgr()
        var cinfo = jpeg_compress_struct()
        cinfo.err = jpeg_std_error(&err)
        jpeg_CreateCompress(&cinfo, JPEG_LIB_VERSION, MemoryLayout<jpeg_compress_struct>.size)
        defer { jpeg_destroy_compress(&cinfo) }
        var outBuf: UnsafeMutablePointer<UInt8>? = nil
        var outSize: UInt = 0
        jpeg_mem_dest(&cinfo, &outBuf, &outSize)
        cinfo.image_width = JDIMENSION(width); cinfo.image_height = JDIMENSION(height)
        cinfo.input_components = 3; cinfo.in_color_space = JCS_RGB
        jpeg_set_defaults(&cinfo)
        jpeg_set_quality(&cinfo, Int32(quality), 1)
        jpeg_start_compress(&cinfo, 1)
        px.withUnsafeBufferPointer { p in
            while cinfo.next_scanline < cinfo.image_height {
                var row: JSAMPROW? = UnsafeMutablePointer(mutating: p.baseAddress! + Int(cinfo.next_scanline) * width * 3)
                jpeg_write_scanlines(&cinfo, &row, 1)
            }
        }
        jpeg_finish_compress(&cinfo)
        let data = Data(bytes: outBuf!, count: Int(outSize))
        free(outBuf)
        guard FileManager.default.createFile(atPath: path, contents: data) else { throw MTLError("\(path): cannot write JPEG") }
    }
}
