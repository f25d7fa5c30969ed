import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The real file system.
public struct SystemFileSystem: WALFileSystem {
    public init() {}

    public func open(_ path: String, flags: Int32, mode: mode_t) throws -> Int32 {
        let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
        guard fd >= 0 else { throw WALError.syscall("open", path: path, errno: errno) }
        return fd
    }

    public func close(_ fd: Int32) { _ = Glibc.close(fd) }

    public func pwrite(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int64, path: String) throws {
        var done = 0
        while done < bytes.count {
            let n = Glibc.pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw WALError.syscall("pwrite", path: path, errno: errno)
            }
            if n == 0 { throw WALError(.io, "pwrite wrote nothing on \(path)") }
            done += n
        }
    }

    public func pread(
        _ fd: Int32,
        into buffer: UnsafeMutableRawBufferPointer,
        at offset: Int64,
        path: String
    )
        throws -> Int
    {
        var done = 0
        while done < buffer.count {
            let n = Glibc.pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw WALError.syscall("pread", path: path, errno: errno)
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    public func fdatasync(_ fd: Int32, path: String) throws {
        guard Glibc.fdatasync(fd) == 0 else { throw WALError.syscall("fdatasync", path: path, errno: errno) }
    }

    public func allocate(_ fd: Int32, offset: Int64, length: Int64, path: String) throws {
        let result = posix_fallocate(fd, off_t(offset), off_t(length))
        if result == 0 { return }
        if result == EOPNOTSUPP || result == EINVAL {
            // File systems without fallocate: extend the file so the size is right at least.
            guard ftruncate(fd, off_t(offset + length)) == 0 else {
                throw WALError.syscall("ftruncate", path: path, errno: errno)
            }
            return
        }
        throw WALError.syscall("posix_fallocate", path: path, errno: result)
    }

    public func truncate(_ fd: Int32, to length: Int64, path: String) throws {
        guard ftruncate(fd, off_t(length)) == 0 else { throw WALError.syscall("ftruncate", path: path, errno: errno) }
    }

    public func fileSize(_ fd: Int32, path: String) throws -> Int64 {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw WALError.syscall("fstat", path: path, errno: errno) }
        return Int64(info.st_size)
    }

    public func syncDirectory(_ path: String) throws {
        let fd = Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw WALError.syscall("open", path: path, errno: errno) }
        defer { _ = Glibc.close(fd) }
        guard fsync(fd) == 0 else { throw WALError.syscall("fsync", path: path, errno: errno) }
    }

    public func unlink(_ path: String) throws {
        guard Glibc.unlink(path) == 0 else { throw WALError.syscall("unlink", path: path, errno: errno) }
    }

    public func rename(_ from: String, to: String) throws {
        guard Glibc.rename(from, to) == 0 else { throw WALError.syscall("rename", path: from, errno: errno) }
    }

    public func makeDirectory(_ path: String) throws {
        var partial = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            partial += "/" + component
            if Glibc.mkdir(partial, 0o700) != 0 && errno != EEXIST {
                throw WALError.syscall("mkdir", path: partial, errno: errno)
            }
        }
    }

    public func listDirectory(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else { throw WALError.syscall("opendir", path: path, errno: errno) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    public func fileExists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    public func volumeSpace(_ path: String) throws -> (available: Int64, total: Int64) {
        var info = statvfs()
        guard statvfs(path, &info) == 0 else { throw WALError.syscall("statvfs", path: path, errno: errno) }
        return (Int64(info.f_bavail) * Int64(info.f_frsize), Int64(info.f_blocks) * Int64(info.f_frsize))
    }

    public func lockExclusive(_ path: String, waitMilliseconds: Int) throws -> Int32 {
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw WALError.syscall("open", path: path, errno: errno) }
        if !Self.flockWaiting(fd, milliseconds: waitMilliseconds) {
            let error = errno
            var holder = ""
            var buffer = [UInt8](repeating: 0, count: 32)
            let n = buffer.withUnsafeMutableBytes { Glibc.pread(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 { holder = String(decoding: buffer[0..<n], as: UTF8.self).trimmingWhitespace() }
            _ = Glibc.close(fd)
            if error == EWOULDBLOCK {
                let who = holder.isEmpty ? "another process" : "process \(holder)"
                throw WALError(.locked, "\(path) is locked by \(who); a WAL directory has one writer at a time")
            }
            throw WALError.syscall("flock", path: path, errno: error)
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { Glibc.pwrite(fd, $0.baseAddress, $0.count, 0) }
        return fd
    }

    public func lockDirectory(_ path: String, waitMilliseconds: Int) throws -> Int32 {
        let fd = Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw WALError.syscall("open", path: path, errno: errno) }
        if !Self.flockWaiting(fd, milliseconds: waitMilliseconds) {
            let error = errno
            _ = Glibc.close(fd)
            if error == EWOULDBLOCK {
                throw WALError(.locked, "\(path) is locked by another writer; a WAL directory has one writer at a time")
            }
            throw WALError.syscall("flock", path: path, errno: error)
        }
        return fd
    }

    /// Takes an exclusive `flock` on `fd`, retrying for up to `milliseconds`: a lock can
    /// outlive its holder by a moment (an exiting process, or a child forked elsewhere in the
    /// process before exec closes descriptors). False with `errno` set when it was not taken.
    private static func flockWaiting(_ fd: Int32, milliseconds: Int) -> Bool {
        var waited = 0
        while flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK && waited < milliseconds {
            usleep(20_000)
            waited += 20
        }
        return flock(fd, LOCK_EX | LOCK_NB) == 0
    }

    public func tryLock(_ fd: Int32, path: String) throws {
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            if errno == EWOULDBLOCK {
                throw WALError(.locked, "\(path) is locked by another writer; a segment has one writer at a time")
            }
            throw WALError.syscall("flock", path: path, errno: errno)
        }
    }

    public func identity(of fd: Int32, path: String) throws -> FileIdentity {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw WALError.syscall("fstat", path: path, errno: errno) }
        return FileIdentity(info)
    }

    public func identity(atPath path: String) throws -> FileIdentity? {
        var info = stat()
        guard stat(path, &info) == 0 else {
            if errno == ENOENT { return nil }
            throw WALError.syscall("stat", path: path, errno: errno)
        }
        return FileIdentity(info)
    }
}

extension String {
    func trimmingWhitespace() -> String {
        let scalars = self.unicodeScalars
        guard let start = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
            let end = scalars.lastIndex(where: { !$0.properties.isWhitespace })
        else { return "" }
        return String(scalars[start...end])
    }
}
