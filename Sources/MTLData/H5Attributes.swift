import CHDF5
import Foundation
import MTLCore

/// An attribute value of any shape: files written by h5py store `class_names` or `tasks`
/// as arrays of variable-length strings, which MTLCore's scalar `stringAttribute` cannot
/// read safely (it reads into room for one pointer). This reader looks at the stored
/// type and extent first, then reads into a buffer of the right size.
enum H5AttributeValue: Equatable {
    case string(String)
    case strings([String])
    case numbers([Double])
    case unsupported(String)

    /// A one-line rendering: scalars as themselves, arrays as [a, b, c].
    var text: String {
        switch self {
        case .string(let s): return s
        case .strings(let a): return "[" + a.joined(separator: ", ") + "]"
        case .numbers(let a):
            let parts = a.map(formatNumber)
            return a.count == 1 ? parts[0] : "[" + parts.joined(separator: ", ") + "]"
        case .unsupported(let what): return "<\(what)>"
        }
    }

    var numbers: [Double]? { if case .numbers(let a) = self { return a } else { return nil } }

    /// A scalar number, also from a numeric string ("1"), which some writers produce.
    var number: Double? {
        switch self {
        case .numbers(let a): return a.count == 1 ? a[0] : nil
        case .string(let s): return Double(s.trimmingCharacters(in: .whitespaces))
        default: return nil
        }
    }

    /// A list of names from a string array, a JSON array string, or a comma-separated string.
    var stringList: [String]? {
        switch self {
        case .strings(let a): return a
        case .string(let s):
            let trimmed = s.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("["), let data = trimmed.data(using: .utf8),
               let list = try? JSONSerialization.jsonObject(with: data) as? [Any] {
                return list.map { "\($0)" }
            }
            return trimmed.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        default: return nil
        }
    }
}

func formatNumber(_ v: Double) -> String {
    if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
    return String(format: "%.6g", v)
}

/// A second, read-only handle on a file for what MTLCore's H5File does not expose:
/// attributes of any type and extent, and a dataset's chunk shape and filters.
/// HDF5 shares one underlying file between handles opened with the same flags.
final class H5RawReader {
    let path: String
    private let fid: hid_t

    init(path: String) throws {
        mtl_h5_silence()
        let f = H5Fopen(path, mtl_h5f_acc_rdonly(), mtl_h5p_default())
        if f < 0 { throw MTLError("\(path): cannot open HDF5 file (truncated, corrupt, or locked)") }
        self.path = path
        self.fid = f
    }

    deinit { H5Fclose(fid) }

    /// Creates (truncates) a file holding the given empty groups, created without modification
    /// times: MTLCore's `H5File.createGroup` uses the default group creation properties, which
    /// record the time, so two otherwise identical files would differ in those bytes.
    /// `strings` are 1-D variable-length UTF-8 string datasets (like `ids`) written the same way,
    /// for the same reason (MTLCore's `writeStrings` uses the default dataset properties).
    static func createFile(_ path: String, groups: [String], strings: [(String, [String])] = []) throws {
        mtl_h5_silence()
        let f = H5Fcreate(path, mtl_h5f_acc_trunc(), mtl_h5p_default(), mtl_h5p_default())
        if f < 0 { throw MTLError("\(path): cannot create HDF5 file") }
        defer { H5Fclose(f) }
        H5open()  // initialises the property-list class ids read below (the H5P_GROUP_CREATE macro does the same)
        let gcpl = H5Pcreate(H5P_CLS_GROUP_CREATE_ID_g)
        defer { H5Pclose(gcpl) }
        H5Pset_obj_track_times(gcpl, false)
        for g in groups {
            let id = H5Gcreate2(f, g, mtl_h5p_default(), gcpl, mtl_h5p_default())
            if id < 0 { throw MTLError("\(path): cannot create group \(g)") }
            H5Gclose(id)
        }
        let dcpl = H5Pcreate(mtl_h5p_dataset_create())
        defer { H5Pclose(dcpl) }
        H5Pset_obj_track_times(dcpl, false)
        let type = H5Tcopy(mtl_c_s1())
        H5Tset_size(type, mtl_h5t_variable())
        H5Tset_cset(type, H5T_CSET_UTF8)
        defer { H5Tclose(type) }
        for (name, values) in strings {
            var dims = [hsize_t(values.count)]
            let space = H5Screate_simple(1, &dims, nil)
            defer { H5Sclose(space) }
            let d = H5Dcreate2(f, name, type, space, mtl_h5p_default(), dcpl, mtl_h5p_default())
            if d < 0 { throw MTLError("\(path): cannot create string dataset \(name)") }
            defer { H5Dclose(d) }
            let copies = values.map { strdup($0) }
            defer { copies.forEach { free($0) } }
            var pointers: [UnsafePointer<CChar>?] = copies.map { UnsafePointer($0) }
            if !values.isEmpty, H5Dwrite(d, type, mtl_h5s_all(), mtl_h5s_all(), mtl_h5p_default(), &pointers) < 0 {
                throw MTLError("\(path): cannot write string dataset \(name)")
            }
        }
    }

    /// All attributes of the object at `objectPath` ("/" for the root), by name.
    func attributes(_ objectPath: String) -> [String: H5AttributeValue] {
        let o = H5Oopen(fid, objectPath, mtl_h5p_default())
        if o < 0 { return [:] }
        defer { H5Oclose(o) }
        var info = H5O_info_t()
        if H5Oget_info2(o, &info, UInt32(H5O_INFO_NUM_ATTRS)) < 0 { return [:] }
        var out: [String: H5AttributeValue] = [:]
        for i in 0..<info.num_attrs {
            let a = H5Aopen_by_idx(o, ".", H5_INDEX_NAME, H5_ITER_INC, i, mtl_h5p_default(), mtl_h5p_default())
            if a < 0 { continue }
            defer { H5Aclose(a) }
            let len = H5Aget_name(a, 0, nil)
            if len < 0 { continue }
            var nameBuf = [CChar](repeating: 0, count: Int(len) + 1)
            H5Aget_name(a, Int(len) + 1, &nameBuf)
            out[String(cString: nameBuf)] = H5RawReader.readAttribute(a)
        }
        return out
    }

    private static func readAttribute(_ a: hid_t) -> H5AttributeValue {
        let ftype = H5Aget_type(a)
        defer { H5Tclose(ftype) }
        let space = H5Aget_space(a)
        defer { H5Sclose(space) }
        let isScalar = H5Sget_simple_extent_type(space) == H5S_SCALAR
        let n = Int(H5Sget_simple_extent_npoints(space))
        if n < 0 { return .unsupported("unreadable extent") }
        switch H5Tget_class(ftype) {
        case H5T_INTEGER, H5T_FLOAT:
            var values = [Double](repeating: 0, count: max(n, 1))
            if n > 0, H5Aread(a, mtl_native_double(), &values) < 0 { return .unsupported("unreadable number") }
            return .numbers(Array(values.prefix(n)))
        case H5T_STRING:
            var strings: [String] = []
            if H5Tis_variable_str(ftype) > 0 {
                let memType = H5Tcopy(mtl_c_s1())
                H5Tset_size(memType, mtl_h5t_variable())
                H5Tset_cset(memType, H5Tget_cset(ftype))  // HDF5 does not convert ASCII <-> UTF-8
                defer { H5Tclose(memType) }
                var pointers = [UnsafeMutablePointer<CChar>?](repeating: nil, count: max(n, 1))
                if n > 0, H5Aread(a, memType, &pointers) < 0 { return .unsupported("unreadable string") }
                for p in pointers.prefix(n) {
                    strings.append(p.map { String(cString: $0) } ?? "")
                    if let p { H5free_memory(p) }
                }
            } else {
                let size = H5Tget_size(ftype)
                var buf = [CChar](repeating: 0, count: max(n, 1) * size + 1)
                if n > 0, H5Aread(a, ftype, &buf) < 0 { return .unsupported("unreadable string") }
                for i in 0..<n {
                    let bytes = buf[(i * size)..<((i + 1) * size)].prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
                    strings.append(String(decoding: bytes, as: UTF8.self))
                }
            }
            return isScalar && strings.count == 1 ? .string(strings[0]) : .strings(strings)
        default:
            return .unsupported("type class \(H5Tget_class(ftype).rawValue)")
        }
    }

    /// Chunk shape (nil when contiguous/compact) and filter names of a dataset.
    func storage(_ datasetPath: String) -> (chunks: [Int]?, filters: [String]) {
        let d = H5Dopen2(fid, datasetPath, mtl_h5p_default())
        if d < 0 { return (nil, []) }
        defer { H5Dclose(d) }
        let plist = H5Dget_create_plist(d)
        defer { H5Pclose(plist) }
        var chunks: [Int]? = nil
        if H5Pget_layout(plist) == H5D_CHUNKED {
            var dims = [hsize_t](repeating: 0, count: 32)
            let rank = Int(H5Pget_chunk(plist, 32, &dims))
            if rank > 0 { chunks = dims.prefix(rank).map { Int($0) } }
        }
        var filters: [String] = []
        let nf = H5Pget_nfilters(plist)
        for i in 0..<max(0, nf) {
            var flags: UInt32 = 0
            var nElements = 8
            var values = [UInt32](repeating: 0, count: 8)
            var name = [CChar](repeating: 0, count: 64)
            var config: UInt32 = 0
            let id = H5Pget_filter2(plist, UInt32(i), &flags, &nElements, &values, 64, &name, &config)
            switch id {
            case H5Z_FILTER_DEFLATE: filters.append("deflate(\(nElements > 0 ? values[0] : 0))")
            case H5Z_FILTER_SHUFFLE: filters.append("shuffle")
            case H5Z_FILTER_FLETCHER32: filters.append("fletcher32")
            default: filters.append(String(cString: name).isEmpty ? "filter#\(id)" : String(cString: name))
            }
        }
        return (chunks, filters)
    }
}
