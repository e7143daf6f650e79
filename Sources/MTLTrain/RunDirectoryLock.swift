import Foundation
import MTLCore
#if canImport(Glibc)
import Glibc
#endif

/// One owner per run directory: an exclusive `flock` on `<run>/.lock`, held for the life of the
/// process. The kernel drops it when the process ends however it ends (kill -9, a crash, a node
/// reboot), so a later `--resume auto` takes it again without any cleanup; a second job on the
/// same directory while the first runs gets a one-line error naming the owner.
///
/// The file holds "pid P host H since T" for that message only; the lock is the flock, never the
/// file's existence. File systems without flock (NFS without lockd, some Lustre mounts) make
/// `acquire` fail with a message that says so; `MTL_RUN_LOCK=off` skips the lock for users who
/// guarantee one job per directory themselves (docs/DISTRIBUTED.md).
public final class RunDirectoryLock {
    public let path: String
    private let fd: Int32

    private init(path: String, fd: Int32) {
        self.path = path
        self.fd = fd
    }

    deinit { close(fd) }   // closing the descriptor releases the flock

    /// Creates `directory` if needed and takes its lock, or throws naming the job that holds it.
    /// Returns nil when locking is switched off with MTL_RUN_LOCK=off.
    public static func acquire(directory: String) throws -> RunDirectoryLock? {
        if ProcessInfo.processInfo.environment["MTL_RUN_LOCK"] == "off" { return nil }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw MTLError("\(directory): cannot create the run directory (\(error.localizedDescription))")
        }
        let path = directory + "/.lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        if fd < 0 { throw MTLError("\(path): cannot open the run directory's lock file (\(osReason(errno)))") }
        var injected = WriteFaultInjection.error(forWriteTo: path + "#flock")
        if injected == nil, flock(fd, LOCK_EX | LOCK_NB) != 0 { injected = errno }
        if let code = injected {
            let owner = String(decoding: readAll(fd), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            close(fd)
            if code == EWOULDBLOCK || code == EAGAIN {
                let who = owner.isEmpty ? "another process (it has not written its name yet)" : owner
                throw MTLError("run directory \(directory) is in use by \(who); use another --run-dir, or stop that job first")
            }
            throw MTLError("\(path): cannot lock the run directory (\(osReason(code))): this file system has no working flock "
                           + "(NFS without lockd, some Lustre mounts); put the run directory on one that has, or set "
                           + "MTL_RUN_LOCK=off if you make sure that only one job uses \(directory)")
        }
        // Overwrite in place, then cut: on a full disk this needs no new block when the file held a name before.
        let stamp = ISO8601DateFormatter().string(from: Date())
        let line = "PID \(getpid()) on \(hostName()) since \(stamp)\n"
        let code = Array(line.utf8).withUnsafeBytes { bytes -> Int32 in
            lseek(fd, 0, SEEK_SET)
            return writeAll(fd, bytes, path: path)
        }
        if code != 0 {
            close(fd)
            throw MTLError("\(path): cannot write the run directory's lock file (\(osReason(code)))")
        }
        _ = ftruncate(fd, off_t(line.utf8.count))
        return RunDirectoryLock(path: path, fd: fd)
    }

    static func hostName() -> String {
        var buf = [CChar](repeating: 0, count: 256)
        return gethostname(&buf, buf.count) == 0 ? String(cString: buf) : "?"
    }

    private static func readAll(_ fd: Int32) -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 512)
        var offset: off_t = 0
        while out.count < 4096 {
            let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, offset) }
            if n <= 0 { break }
            out += buf[0..<n]
            offset += off_t(n)
        }
        return out
    }
}
