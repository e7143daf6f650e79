import CHDF5
import Foundation
import MTLCore
import MTLTestSupport
import XCTest
@testable import MTLData

/// Files written by h5py store list attributes (`tasks`, `class_names`) as arrays of
/// variable-length strings and may use fixed-length strings; the reader must handle both.
final class AttributeTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = makeTemporaryDirectory("mtldata-\(name)") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// Writes, with the C API, a vlen string-array attribute and a fixed-length string attribute.
    func addH5pyStyleAttributes(_ path: String, object: String) {
        let f = H5Fopen(path, mtl_h5f_acc_rdwr(), mtl_h5p_default())
        XCTAssertGreaterThanOrEqual(f, 0)
        defer { H5Fclose(f) }
        let o = H5Oopen(f, object, mtl_h5p_default())
        defer { H5Oclose(o) }

        let vlen = H5Tcopy(mtl_c_s1())
        H5Tset_size(vlen, mtl_h5t_variable())
        H5Tset_cset(vlen, H5T_CSET_UTF8)
        defer { H5Tclose(vlen) }
        var dims = [hsize_t(3)]
        let space = H5Screate_simple(1, &dims, nil)
        defer { H5Sclose(space) }
        let labels: [String] = ["floor", "wall", "chair"]
        let names = labels.map { strdup($0) }
        defer { names.forEach { free($0) } }
        var pointers: [UnsafePointer<CChar>?] = names.map { UnsafePointer($0) }
        let a = H5Acreate2(o, "class_names", vlen, space, mtl_h5p_default(), mtl_h5p_default())
        XCTAssertGreaterThanOrEqual(H5Awrite(a, vlen, &pointers), 0)
        H5Aclose(a)

        let fixed = H5Tcopy(mtl_c_s1())
        H5Tset_size(fixed, 8)
        defer { H5Tclose(fixed) }
        let scalar = H5Screate(H5S_SCALAR)
        defer { H5Sclose(scalar) }
        var text = Array("metric".utf8CString) + [0, 0]
        let b = H5Acreate2(o, "depth_kind", fixed, scalar, mtl_h5p_default(), mtl_h5p_default())
        XCTAssertGreaterThanOrEqual(H5Awrite(b, fixed, &text), 0)
        H5Aclose(b)
    }

    func testStringArraysFixedStringsAndNumbers() throws {
        let path = try TinyFile.write(dir + "/tiny.h5")
        addH5pyStyleAttributes(path, object: "/")
        addH5pyStyleAttributes(path, object: "/train/seg")
        let attrs = try H5RawReader(path: path).attributes("/")
        XCTAssertEqual(attrs["class_names"], .strings(["floor", "wall", "chair"]))
        XCTAssertEqual(attrs["depth_kind"], .string("metric"))
        XCTAssertEqual(attrs["format_version"], .numbers([1]))
        XCTAssertEqual(attrs["format"], .string("mtdp-hdf5"))
        XCTAssertEqual(H5AttributeValue.string("[\"a\", \"b\"]").stringList, ["a", "b"])
        XCTAssertEqual(H5AttributeValue.string("seg, depth").stringList, ["seg", "depth"])
        XCTAssertEqual(H5AttributeValue.string("1").number, 1)

        let ds = try MTDataset(path: path, split: "train", tasks: ["seg"])
        XCTAssertEqual(ds.attributes["class_names"], "[floor, wall, chair]")
        XCTAssertEqual(ds.attributes["format_version"], "1")
        let text = try DatasetInspector.describe(path)
        XCTAssertTrue(text.contains("0 floor"), text)
        XCTAssertTrue(text.contains("1 wall"), text)
    }
}
