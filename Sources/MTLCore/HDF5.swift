import CHDF5
import Foundation

/// Element types mtl reads and writes through HDF5. HDF5 converts between numeric
/// types on read, so an int16 label dataset can be read straight into Float.
public protocol H5Scalar {
    static var h5MemoryType: hid_t { get }
    static var h5FileType: hid_t { get }
    static var h5Name: String { get }
}
extension Float: H5Scalar {
    public static var h5MemoryType: hid_t { mtl_native_float() }
    public static var h5FileType: hid_t { mtl_ieee_f32le() }
    public static var h5Name: String { "float32" }
}
extension Double: H5Scalar {
    public static var h5MemoryType: hid_t { mtl_native_double() }
    public static var h5FileType: hid_t { mtl_ieee_f64le() }
    public static var h5Name: String { "float64" }
}
extension UInt8: H5Scalar {
    public static var h5MemoryType: hid_t { mtl_native_uint8() }
    public static var h5FileType: hid_t { mtl_std_u8le() }
    public static var h5Name: String { "uint8" }
}
extension Int16: H5Scalar {
    public static var h5MemoryType: hid_t { mtl_native_int16() }
    public static var h5FileType: hid_t { mtl_std_i16le() }
    public static var h5Name: String { "int16" }
}
extension Int32: H5Scalar {
    public static var h5MemoryType: hid_t { mtl_native_int32() }
    public static var h5FileType: hid_t { mtl_std_i32le() }
    public static var h5Name: String { "int32" }
}
extension Int64: H5Scalar {
    public static var h5MemoryType: hid_t { mtl_native_int64() }
    public static var h5FileType: hid_t { mtl_std_i64le() }
    public static var h5Name: String { "int64" }
}
extension UInt16: H5Scalar {
    public static var h5MemoryType: hid_t { mtl_native_uint16() }
    public static var h5FileType: hid_t { H5Tcopy(mtl_native_uint16()) }
    public static var h5Name: String { "uint16" }
}

/// The stored element type of a dataset, as a short name ("float32", "int16", "string", ...).
public enum H5TypeClass: String, Sendable {
    case float32, float64, int8, uint8, int16, uint16, int32, uint32, int64, uint64, string, other
}

/// A small, explicit wrapper over libhdf5's C API: files, groups, datasets
/// (whole or by hyperslab), string/number attributes. Every failure is an
/// `MTLError` naming the file and the object.
public final class H5File: @unchecked Sendable {
    public let path: String
    let id: hid_t
    private var openDatasets: [String: hid_t] = [:]
    /// Datasets created in this file get Fletcher-32 checksums (see `create(_:checksummed:)`).
    let checksummed: Bool
    private var closed = false

    private init(path: String, id: hid_t, checksummed: Bool = false) {
        self.path = path
        self.id = id
        self.checksummed = checksummed
    }

    /// " (reason)" for the HDF5 call that just failed when HDF5 recorded an OS error (e.g.
    /// " (No space left on device)"), else "". Must be called right after the failing call.
    public static func failureReason() -> String {
        var buf = [CChar](repeating: 0, count: 256)
        return mtl_h5_os_reason(&buf, buf.count) != 0 ? " (\(String(cString: buf)))" : ""
    }

    static let silenced: Void = { mtl_h5_silence() }()

    /// Opens an existing file. `readOnly` for datasets and checkpoints being read.
    public static func open(_ path: String, readOnly: Bool = true) throws -> H5File {
        _ = silenced
        guard FileManager.default.fileExists(atPath: path) else {
            throw MTLError("\(path): file not found")
        }
        if H5Fis_hdf5(path) <= 0 {
            throw MTLError("\(path): not an HDF5 file (or truncated/corrupt: no valid HDF5 superblock)")
        }
        let fid = H5Fopen(path, readOnly ? mtl_h5f_acc_rdonly() : mtl_h5f_acc_rdwr(), mtl_h5p_default())
        if fid < 0 { throw MTLError("\(path): cannot open HDF5 file (truncated, corrupt, or locked; on shared filesystems set HDF5_USE_FILE_LOCKING=FALSE)") }
        return H5File(path: path, id: fid)
    }

    /// Creates (truncates) a file. `checksummed`: the HDF5 1.10 file format (h5py reads it), whose
    /// superblock and object headers carry checksums, the root group's links in its object header,
    /// string attributes stored inline (not in the unchecksummed global heap) and Fletcher-32 on
    /// every non-empty dataset, so that a flipped byte makes reading fail instead of returning wrong
    /// numbers or names (checkpoints).
    public static func create(_ path: String, checksummed: Bool = false) throws -> H5File {
        _ = silenced
        let fapl = checksummed ? mtl_h5f_latest_format_fapl() : mtl_h5p_default()
        let fcpl = checksummed ? mtl_h5f_compact_links_fcpl() : mtl_h5p_default()
        defer { if checksummed { H5Pclose(fapl); H5Pclose(fcpl) } }
        let fid = H5Fcreate(path, mtl_h5f_acc_trunc(), fcpl, fapl)
        if fid < 0 { throw MTLError("\(path): cannot create HDF5 file\(H5File.failureReason())") }
        return H5File(path: path, id: fid, checksummed: checksummed)
    }

    public func close() {
        guard !closed else { return }
        closed = true
        for (_, d) in openDatasets { H5Dclose(d) }
        openDatasets.removeAll()
        if id >= 0 { H5Fclose(id) }
    }

    /// Flushes and closes, reporting a failure (HDF5 writes metadata and buffered data only here,
    /// so a full disk often shows up at this point and nowhere earlier).
    public func closeChecked() throws {
        guard !closed else { return }
        closed = true
        var failure: String? = nil
        for (name, d) in openDatasets where H5Dclose(d) < 0 && failure == nil {
            failure = "cannot close dataset \(name)\(H5File.failureReason())"
        }
        openDatasets.removeAll()
        if H5Fflush(id, H5F_SCOPE_GLOBAL) < 0, failure == nil { failure = "cannot write\(H5File.failureReason())" }
        if H5Fclose(id) < 0, failure == nil { failure = "cannot write\(H5File.failureReason())" }
        if let failure { throw MTLError("\(path): \(failure)") }
    }

    /// Flushes HDF5's buffers to the OS (use before fsync + rename).
    public func flush() { H5Fflush(id, H5F_SCOPE_GLOBAL) }

    // MARK: groups and links

    public func exists(_ objectPath: String) -> Bool {
        // Check each component so that a missing parent is not an HDF5 error.
        var partial = ""
        for comp in objectPath.split(separator: "/") {
            partial += "/" + comp
            if H5Lexists(id, partial, mtl_h5p_default()) <= 0 { return false }
        }
        return true
    }

    /// Creates a group and any missing parents.
    public func createGroup(_ groupPath: String) throws {
        var partial = ""
        for comp in groupPath.split(separator: "/") {
            partial += "/" + comp
            if H5Lexists(id, partial, mtl_h5p_default()) > 0 { continue }
            let gcpl = H5Pcreate(mtl_h5p_group_create())
            H5Pset_obj_track_times(gcpl, false)  // byte-reproducible files
            let g = H5Gcreate2(id, partial, mtl_h5p_default(), gcpl, mtl_h5p_default())
            H5Pclose(gcpl)
            if g < 0 { throw MTLError("\(path): cannot create group \(partial)") }
            H5Gclose(g)
        }
    }

    /// Names of the members of a group, sorted.
    public func children(_ groupPath: String = "/") throws -> [String] {
        let g = H5Gopen2(id, groupPath, mtl_h5p_default())
        if g < 0 { throw MTLError("\(path): no group \(groupPath)") }
        defer { H5Gclose(g) }
        var info = H5G_info_t()
        H5Gget_info(g, &info)
        var names: [String] = []
        for i in 0..<info.nlinks {
            let len = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, nil, 0, mtl_h5p_default())
            if len < 0 { continue }
            var buf = [CChar](repeating: 0, count: Int(len) + 1)
            H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, &buf, Int(len) + 1, mtl_h5p_default())
            names.append(String(cString: buf))
        }
        return names.sorted()
    }

    public func isGroup(_ objectPath: String) -> Bool {
        guard exists(objectPath) else { return false }
        var info = H5O_info_t()
        if H5Oget_info_by_name2(id, objectPath, &info, UInt32(H5O_INFO_BASIC), mtl_h5p_default()) < 0 { return false }
        return info.type == H5O_TYPE_GROUP
    }

    // MARK: datasets

    private func dataset(_ name: String) throws -> hid_t {
        if let d = openDatasets[name] { return d }
        guard exists(name) else { throw MTLError("\(path): missing dataset \(name)") }
        let d = H5Dopen2(id, name, mtl_h5p_default())
        if d < 0 { throw MTLError("\(path): cannot open dataset \(name) (corrupt file?)") }
        openDatasets[name] = d
        return d
    }

    public func shape(_ name: String) throws -> [Int] {
        let d = try dataset(name)
        let s = H5Dget_space(d)
        defer { H5Sclose(s) }
        let rank = Int(H5Sget_simple_extent_ndims(s))
        if rank <= 0 { return [] }
        var dims = [hsize_t](repeating: 0, count: rank)
        H5Sget_simple_extent_dims(s, &dims, nil)
        return dims.map { Int($0) }
    }

    public func typeClass(_ name: String) throws -> H5TypeClass {
        let d = try dataset(name)
        let t = H5Dget_type(d)
        defer { H5Tclose(t) }
        return H5File.classify(t)
    }

    static func classify(_ t: hid_t) -> H5TypeClass {
        let cls = H5Tget_class(t)
        let size = H5Tget_size(t)
        switch cls {
        case H5T_FLOAT: return size == 4 ? .float32 : (size == 8 ? .float64 : .other)
        case H5T_INTEGER:
            let signed = H5Tget_sign(t) == H5T_SGN_2
            switch size {
            case 1: return signed ? .int8 : .uint8
            case 2: return signed ? .int16 : .uint16
            case 4: return signed ? .int32 : .uint32
            case 8: return signed ? .int64 : .uint64
            default: return .other
            }
        case H5T_STRING: return .string
        default: return .other
        }
    }

    /// Writes a whole dataset (created, or replaced if it exists with the same shape).
    /// `chunks` enables chunked layout; `deflate` (1–9) adds shuffle + gzip.
    public func write<T: H5Scalar>(_ name: String, _ values: UnsafeBufferPointer<T>, shape: [Int],
                                   chunks: [Int]? = nil, deflate: Int? = nil) throws {
        precondition(values.count == shape.reduce(1, *), "write \(name): \(values.count) values for shape \(shape)")
        try createDataset(name, type: T.self, shape: shape, chunks: chunks, deflate: deflate)
        let d = try dataset(name)
        if values.count > 0,
           H5Dwrite(d, T.h5MemoryType, mtl_h5s_all(), mtl_h5s_all(), mtl_h5p_default(), values.baseAddress) < 0 {
            throw MTLError("\(path): cannot write dataset \(name)\(H5File.failureReason())")
        }
    }

    public func write<T: H5Scalar>(_ name: String, _ values: [T], shape: [Int]? = nil,
                                   chunks: [Int]? = nil, deflate: Int? = nil) throws {
        try values.withUnsafeBufferPointer {
            try write(name, $0, shape: shape ?? [values.count], chunks: chunks, deflate: deflate)
        }
    }

    public func write(_ name: String, _ tensor: Tensor) throws {
        try write(name, UnsafeBufferPointer(tensor.buffer), shape: tensor.shape)
    }

    /// Creates an empty dataset of fixed shape, to be filled with `writeSlab` (streaming writers).
    public func createDataset<T: H5Scalar>(_ name: String, type: T.Type, shape: [Int],
                                           chunks: [Int]? = nil, deflate: Int? = nil) throws {
        if let parent = name.split(separator: "/").dropLast().joined(separator: "/") as String?, !parent.isEmpty {
            try createGroup(parent)
        }
        if exists(name) {
            if let d = openDatasets.removeValue(forKey: name) { H5Dclose(d) }
            H5Ldelete(id, name, mtl_h5p_default())
        }
        var dims = shape.map { hsize_t($0) }
        let space = shape.isEmpty ? H5Screate(H5S_SCALAR) : H5Screate_simple(Int32(shape.count), &dims, nil)
        defer { H5Sclose(space) }
        let dcpl = H5Pcreate(mtl_h5p_dataset_create())
        defer { H5Pclose(dcpl) }
        if let chunks, !shape.isEmpty, shape.allSatisfy({ $0 > 0 }) {
            var c = zip(chunks, shape).map { hsize_t(max(1, min($0, $1))) }
            H5Pset_chunk(dcpl, Int32(c.count), &c)
            if let level = deflate {
                H5Pset_shuffle(dcpl)
                H5Pset_deflate(dcpl, UInt32(level))
            }
            if checksummed { H5Pset_fletcher32(dcpl) }
        } else if checksummed, !shape.isEmpty, shape.allSatisfy({ $0 > 0 }) {
            // One chunk (the filter needs a chunked layout); chunks are limited to 4 GB and 2^32 - 1 elements.
            let total = shape.reduce(1, *)
            if total * 8 < Int(UInt32.max) {
                var c = shape.map { hsize_t($0) }
                H5Pset_chunk(dcpl, Int32(c.count), &c)
                H5Pset_fletcher32(dcpl)
            }
        }
        H5Pset_obj_track_times(dcpl, false)  // byte-reproducible files
        let ftype = T.h5FileType
        let d = H5Dcreate2(id, name, ftype, space, mtl_h5p_default(), dcpl, mtl_h5p_default())
        if d < 0 { throw MTLError("\(path): cannot create dataset \(name) \(shape)\(H5File.failureReason())") }
        openDatasets[name] = d
    }

    /// Reads a whole dataset, converting to T.
    public func read<T: H5Scalar>(_ name: String, as: T.Type = T.self) throws -> [T] {
        let n = try shape(name).reduce(1, *)
        var out = [T](unsafeUninitializedCapacity: n) { _, count in count = n }
        if n == 0 { return out }
        let d = try dataset(name)
        let ok = out.withUnsafeMutableBytes {
            H5Dread(d, T.h5MemoryType, mtl_h5s_all(), mtl_h5s_all(), mtl_h5p_default(), $0.baseAddress)
        }
        if ok < 0 { throw MTLError("\(path): cannot read dataset \(name) as \(T.h5Name) (corrupt data or incompatible type)") }
        return out
    }

    /// Reads a dataset into a tensor (resized to the dataset's shape).
    public func read(_ name: String, into tensor: Tensor) throws {
        let s = try shape(name)
        tensor.resize(s)
        let d = try dataset(name)
        if tensor.count > 0,
           H5Dread(d, mtl_native_float(), mtl_h5s_all(), mtl_h5s_all(), mtl_h5p_default(), tensor.data) < 0 {
            throw MTLError("\(path): cannot read dataset \(name) as float32 (corrupt data?)")
        }
    }

    /// Reads the hyperslab [start, start+count) into `dest` (C order, count.product elements).
    public func readSlab<T: H5Scalar>(_ name: String, start: [Int], count: [Int],
                                      into dest: UnsafeMutablePointer<T>) throws {
        let d = try dataset(name)
        let fspace = H5Dget_space(d)
        defer { H5Sclose(fspace) }
        var st = start.map { hsize_t($0) }, ct = count.map { hsize_t($0) }
        if H5Sselect_hyperslab(fspace, H5S_SELECT_SET, &st, nil, &ct, nil) < 0 {
            throw MTLError("\(path): \(name): slab \(start)+\(count) out of range")
        }
        let mspace = H5Screate_simple(Int32(ct.count), &ct, nil)
        defer { H5Sclose(mspace) }
        if H5Dread(d, T.h5MemoryType, mspace, fspace, mtl_h5p_default(), dest) < 0 {
            throw MTLError("\(path): cannot read \(name)[\(start.first ?? 0)] (corrupt or truncated data)")
        }
    }

    /// Writes the hyperslab [start, start+count) from `src`.
    public func writeSlab<T: H5Scalar>(_ name: String, start: [Int], count: [Int],
                                       from src: UnsafePointer<T>) throws {
        let d = try dataset(name)
        let fspace = H5Dget_space(d)
        defer { H5Sclose(fspace) }
        var st = start.map { hsize_t($0) }, ct = count.map { hsize_t($0) }
        if H5Sselect_hyperslab(fspace, H5S_SELECT_SET, &st, nil, &ct, nil) < 0 {
            throw MTLError("\(path): \(name): slab \(start)+\(count) out of range")
        }
        let mspace = H5Screate_simple(Int32(ct.count), &ct, nil)
        defer { H5Sclose(mspace) }
        if H5Dwrite(d, T.h5MemoryType, mspace, fspace, mtl_h5p_default(), src) < 0 {
            throw MTLError("\(path): cannot write \(name)[\(start.first ?? 0)]")
        }
    }

    /// Writes a 1-D dataset of variable-length UTF-8 strings.
    public func writeStrings(_ name: String, _ values: [String]) throws {
        if let parent = name.split(separator: "/").dropLast().joined(separator: "/") as String?, !parent.isEmpty {
            try createGroup(parent)
        }
        if exists(name) { H5Ldelete(id, name, mtl_h5p_default()) }
        let t = H5Tcopy(mtl_c_s1())
        H5Tset_size(t, mtl_h5t_variable())
        H5Tset_cset(t, H5T_CSET_UTF8)
        defer { H5Tclose(t) }
        var dims = [hsize_t(values.count)]
        let space = H5Screate_simple(1, &dims, nil)
        defer { H5Sclose(space) }
        let dcpl = H5Pcreate(mtl_h5p_dataset_create())
        H5Pset_obj_track_times(dcpl, false)  // byte-reproducible files
        defer { H5Pclose(dcpl) }
        let d = H5Dcreate2(id, name, t, space, mtl_h5p_default(), dcpl, mtl_h5p_default())
        if d < 0 { throw MTLError("\(path): cannot create string dataset \(name)") }
        defer { H5Dclose(d) }
        let cstrs = values.map { strdup($0) }
        defer { cstrs.forEach { free($0) } }
        var ptrs: [UnsafePointer<CChar>?] = cstrs.map { UnsafePointer($0) }
        if values.count > 0, H5Dwrite(d, t, mtl_h5s_all(), mtl_h5s_all(), mtl_h5p_default(), &ptrs) < 0 {
            throw MTLError("\(path): cannot write string dataset \(name)")
        }
    }

    /// Reads a 1-D dataset of strings (variable or fixed length).
    public func readStrings(_ name: String) throws -> [String] {
        let d = try dataset(name)
        let n = try shape(name).reduce(1, *)
        let ftype = H5Dget_type(d)
        defer { H5Tclose(ftype) }
        if H5Tget_class(ftype) != H5T_STRING { throw MTLError("\(path): \(name): expected strings, found \(H5File.classify(ftype).rawValue)") }
        if H5Tis_variable_str(ftype) > 0 {
            let t = H5Tcopy(mtl_c_s1())
            H5Tset_size(t, mtl_h5t_variable())
            H5Tset_cset(t, H5Tget_cset(ftype))  // HDF5 does not convert between ASCII and UTF-8
            defer { H5Tclose(t) }
            var ptrs = [UnsafeMutablePointer<CChar>?](repeating: nil, count: n)
            if n > 0, H5Dread(d, t, mtl_h5s_all(), mtl_h5s_all(), mtl_h5p_default(), &ptrs) < 0 {
                throw MTLError("\(path): cannot read strings \(name)")
            }
            let out = ptrs.map { $0.map { String(cString: $0) } ?? "" }
            for p in ptrs { free(p) }
            return out
        }
        let size = H5Tget_size(ftype)
        var buf = [CChar](repeating: 0, count: n * size + 1)
        if n > 0, H5Dread(d, ftype, mtl_h5s_all(), mtl_h5s_all(), mtl_h5p_default(), &buf) < 0 {
            throw MTLError("\(path): cannot read strings \(name)")
        }
        return (0..<n).map { i in
            let bytes = buf[(i * size)..<((i + 1) * size)].prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
            return String(decoding: bytes, as: UTF8.self)
        }
    }

    // MARK: attributes (on a group or dataset at `objectPath`; "/" is the root)

    public func attributeNames(_ objectPath: String) -> [String] {
        let o = H5Oopen(id, objectPath, mtl_h5p_default())
        if o < 0 { return [] }
        defer { H5Oclose(o) }
        var info = H5O_info_t()
        H5Oget_info2(o, &info, UInt32(H5O_INFO_NUM_ATTRS))
        var names: [String] = []
        for i in 0..<info.num_attrs {
            let len = H5Aget_name_by_idx(o, ".", H5_INDEX_NAME, H5_ITER_INC, i, nil, 0, mtl_h5p_default())
            if len < 0 { continue }
            var buf = [CChar](repeating: 0, count: Int(len) + 1)
            H5Aget_name_by_idx(o, ".", H5_INDEX_NAME, H5_ITER_INC, i, &buf, Int(len) + 1, mtl_h5p_default())
            names.append(String(cString: buf))
        }
        return names
    }

    private func withObject<R>(_ objectPath: String, _ body: (hid_t) throws -> R) throws -> R {
        let o = H5Oopen(id, objectPath, mtl_h5p_default())
        if o < 0 { throw MTLError("\(path): no object \(objectPath)") }
        defer { H5Oclose(o) }
        return try body(o)
    }

    public func setAttribute(_ objectPath: String, _ name: String, _ value: String) throws {
        try withObject(objectPath) { o in
            if H5Aexists(o, name) > 0 { H5Adelete(o, name) }
            // Fixed-length strings live in the object header; an attribute there is limited to 64 KB.
            let bytes = Array(value.utf8)
            let inline = checksummed && bytes.count < 60_000
            let t = H5Tcopy(mtl_c_s1())
            H5Tset_size(t, inline ? max(1, bytes.count) : mtl_h5t_variable())
            H5Tset_cset(t, H5T_CSET_UTF8)
            defer { H5Tclose(t) }
            let space = H5Screate(H5S_SCALAR)
            defer { H5Sclose(space) }
            let a = H5Acreate2(o, name, t, space, mtl_h5p_default(), mtl_h5p_default())
            if a < 0 { throw MTLError("\(path): cannot create attribute \(objectPath)@\(name)") }
            defer { H5Aclose(a) }
            let c = strdup(value)
            defer { free(c) }
            var p: UnsafePointer<CChar>? = UnsafePointer(c)
            let written = inline
                ? (bytes.isEmpty ? [UInt8(0)] : bytes).withUnsafeBytes { H5Awrite(a, t, $0.baseAddress) }
                : H5Awrite(a, t, &p)
            if written < 0 {
                throw MTLError("\(path): cannot write attribute \(objectPath)@\(name)\(H5File.failureReason())")
            }
        }
    }

    public func setAttribute<T: H5Scalar>(_ objectPath: String, _ name: String, _ values: [T]) throws {
        try withObject(objectPath) { o in
            if H5Aexists(o, name) > 0 { H5Adelete(o, name) }
            var dims = [hsize_t(values.count)]
            let space = H5Screate_simple(1, &dims, nil)
            defer { H5Sclose(space) }
            let a = H5Acreate2(o, name, T.h5FileType, space, mtl_h5p_default(), mtl_h5p_default())
            if a < 0 { throw MTLError("\(path): cannot create attribute \(objectPath)@\(name)") }
            defer { H5Aclose(a) }
            if values.withUnsafeBytes({ H5Awrite(a, T.h5MemoryType, $0.baseAddress) }) < 0 {
                throw MTLError("\(path): cannot write attribute \(objectPath)@\(name)\(H5File.failureReason())")
            }
        }
    }

    public func setAttribute(_ objectPath: String, _ name: String, _ value: Int) throws {
        try setAttribute(objectPath, name, [Int64(value)])
    }

    public func setAttribute(_ objectPath: String, _ name: String, _ value: Double) throws {
        try setAttribute(objectPath, name, [value])
    }

    /// A string attribute, or nil if absent or not a string.
    public func stringAttribute(_ objectPath: String, _ name: String) -> String? {
        guard exists(objectPath) || objectPath == "/" else { return nil }
        return try? withObject(objectPath) { o -> String? in
            if H5Aexists(o, name) <= 0 { return nil }
            let a = H5Aopen(o, name, mtl_h5p_default())
            defer { H5Aclose(a) }
            let ftype = H5Aget_type(a)
            defer { H5Tclose(ftype) }
            if H5Tget_class(ftype) != H5T_STRING { return nil }
            // A string or an array of strings (h5py writes lists that way): the elements joined by ",".
            let space = H5Aget_space(a)
            defer { H5Sclose(space) }
            let n = max(1, Int(H5Sget_simple_extent_npoints(space)))
            if H5Tis_variable_str(ftype) > 0 {
                let t = H5Tcopy(mtl_c_s1())
                H5Tset_size(t, mtl_h5t_variable())
                H5Tset_cset(t, H5Tget_cset(ftype))  // HDF5 does not convert between ASCII and UTF-8
                defer { H5Tclose(t) }
                var ptrs = [UnsafeMutablePointer<CChar>?](repeating: nil, count: n)
                if H5Aread(a, t, &ptrs) < 0 { return nil }
                defer { for p in ptrs { free(p) } }
                return ptrs.map { $0.map { String(cString: $0) } ?? "" }.joined(separator: ",")
            }
            let size = H5Tget_size(ftype)
            var buf = [CChar](repeating: 0, count: n * size + 1)
            if H5Aread(a, ftype, &buf) < 0 { return nil }
            return (0..<n).map { i in
                String(decoding: buf[(i * size)..<((i + 1) * size)].prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }.joined(separator: ",")
        } ?? nil
    }

    /// A numeric attribute (any numeric type, converted), or nil if absent or not numeric.
    public func numericAttribute(_ objectPath: String, _ name: String) -> [Double]? {
        guard exists(objectPath) || objectPath == "/" else { return nil }
        return try? withObject(objectPath) { o -> [Double]? in
            if H5Aexists(o, name) <= 0 { return nil }
            let a = H5Aopen(o, name, mtl_h5p_default())
            defer { H5Aclose(a) }
            let ftype = H5Aget_type(a)
            defer { H5Tclose(ftype) }
            let cls = H5Tget_class(ftype)
            if cls != H5T_INTEGER && cls != H5T_FLOAT { return nil }
            let space = H5Aget_space(a)
            defer { H5Sclose(space) }
            let n = max(1, Int(H5Sget_simple_extent_npoints(space)))
            var out = [Double](repeating: 0, count: n)
            if H5Aread(a, mtl_native_double(), &out) < 0 { return nil }
            return out
        } ?? nil
    }

    public func intAttribute(_ objectPath: String, _ name: String) -> Int? {
        numericAttribute(objectPath, name).flatMap { $0.first }.map { Int($0) }
    }

    public func doubleAttribute(_ objectPath: String, _ name: String) -> Double? {
        numericAttribute(objectPath, name)?.first
    }
}

public enum HDF5Library {
    /// The version of the loaded libhdf5, e.g. "1.10.8".
    public static var version: String {
        var major: UInt32 = 0, minor: UInt32 = 0, release: UInt32 = 0
        _ = H5get_libversion(&major, &minor, &release)
        return "\(major).\(minor).\(release)"
    }
}
