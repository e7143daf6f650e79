import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The OS's words for an errno value ("No space left on device").
public func osReason(_ code: Int32) -> String { String(cString: strerror(code)) }

/// Test hook for write failures a real file system cannot be made to produce on demand (EIO from
/// fsync, a failing rename, ...). `MTL_TEST_WRITE_FAULT=<path suffix>:<ERRNO>[:<skip>]` makes the
/// first write to a path ending in the suffix after `skip` successful ones fail with that errno,
/// and every one after it (a broken disk stays broken). Several rules are separated by ','.
/// Unset (the normal case) it costs one dictionary lookup per file, not per write.
public enum WriteFaultInjection {
    struct Rule {
        let suffix: String
        let code: Int32
        let skip: Int
    }

    nonisolated(unsafe) static var rules: [Rule]? = nil
    nonisolated(unsafe) static var passed: [Int] = []
    static let lock = NSLock()

    static let errnoNames: [String: Int32] = ["EIO": EIO, "ENOSPC": ENOSPC, "EDQUOT": EDQUOT, "EROFS": EROFS,
                                              "EACCES": EACCES, "EXDEV": EXDEV, "ENOLCK": ENOLCK]

    static func parse(_ spec: String) -> [Rule] {
        spec.split(separator: ",").compactMap { item in
            let parts = item.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard parts.count >= 2, !parts[0].isEmpty,
                  let code = errnoNames[parts[1]] ?? Int32(parts[1]) else { return nil }
            return Rule(suffix: parts[0], code: code, skip: parts.count > 2 ? Int(parts[2]) ?? 0 : 0)
        }
    }

    /// The errno an injected fault gives for this write to `path`, or nil (write normally).
    public static func error(forWriteTo path: String) -> Int32? {
        lock.lock()
        defer { lock.unlock() }
        if rules == nil {
            rules = parse(ProcessInfo.processInfo.environment["MTL_TEST_WRITE_FAULT"] ?? "")
            passed = [Int](repeating: 0, count: rules!.count)
        }
        for (i, r) in rules!.enumerated() where path.hasSuffix(r.suffix) {
            if passed[i] < r.skip {
                passed[i] += 1
                return nil
            }
            return r.code
        }
        return nil
    }
}

/// Writes all of `bytes` to `fd` (retrying short writes and EINTR); returns 0 or the errno.
public func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) -> Int32 {
    if let code = WriteFaultInjection.error(forWriteTo: path) { return code }
    var done = 0
    while done < bytes.count {
        let n = write(fd, bytes.baseAddress! + done, bytes.count - done)
        if n < 0 {
            if errno == EINTR { continue }
            return errno
        }
        if n == 0 { return EIO }
        done += n
    }
    return 0
}

/// fsync a file or directory by path (a directory fsync makes a rename inside it durable).
public func fsyncPath(_ path: String) throws {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 { throw MTLError("\(path): cannot open for fsync (\(osReason(errno)))") }
    defer { close(fd) }
    if let code = WriteFaultInjection.error(forWriteTo: path + "#fsync") {
        throw MTLError("\(path): fsync failed (\(osReason(code)))")
    }
    if fsync(fd) != 0 { throw MTLError("\(path): fsync failed (\(osReason(errno)))") }
}

/// Writes `path` via `path.tmp` + fsync + rename + fsync(dir): readers see the old or the new
/// contents, never a partial file, and no `.tmp` is left behind when any step fails.
public func writeAtomically(_ path: String, _ contents: String) throws {
    let tmp = path + ".tmp"
    let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    if fd < 0 { throw MTLError("\(tmp): cannot create (\(osReason(errno)))") }
    let bytes = Array(contents.utf8)
    let code = bytes.withUnsafeBytes { writeAll(fd, $0, path: tmp) }
    if code != 0 {
        close(fd)
        unlink(tmp)
        throw MTLError("\(tmp): cannot write (\(osReason(code)))")
    }
    let syncCode = fsync(fd) == 0 ? 0 : errno
    close(fd)
    if syncCode != 0 {
        unlink(tmp)
        throw MTLError("\(tmp): fsync failed (\(osReason(syncCode)))")
    }
    if let injected = WriteFaultInjection.error(forWriteTo: path + "#rename") {
        unlink(tmp)
        throw MTLError("\(path): cannot rename \(tmp) into place (\(osReason(injected)))")
    }
    if rename(tmp, path) != 0 {
        let e = errno
        unlink(tmp)
        throw MTLError("\(path): cannot rename \(tmp) into place (\(osReason(e)))")
    }
    let dir = (path as NSString).deletingLastPathComponent
    try fsyncPath(dir.isEmpty ? "." : dir)
}
