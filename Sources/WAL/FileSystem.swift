import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The system calls the WAL makes, behind a protocol so tests can make any of them fail
/// (ENOSPC, EIO) the way a real disk does.
///
/// Every method throws ``WALError`` with the `errno` of the failing call. All of them block:
/// call them only from the WAL's writer thread or a blocking-I/O thread, never from the
/// cooperative pool.
public protocol WALFileSystem: Sendable {
    func open(_ path: String, flags: Int32, mode: mode_t) throws -> Int32
    func close(_ fd: Int32)
    func pwrite(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int64, path: String) throws
    /// Reads up to `buffer.count` bytes; returns fewer only at end of file.
    func pread(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: Int64, path: String) throws -> Int
    func fdatasync(_ fd: Int32, path: String) throws
    /// Reserves `length` bytes from `offset`, extending the file (posix_fallocate).
    func allocate(_ fd: Int32, offset: Int64, length: Int64, path: String) throws
    func truncate(_ fd: Int32, to length: Int64, path: String) throws
    func fileSize(_ fd: Int32, path: String) throws -> Int64
    /// fsyncs a directory so that creates, renames and unlinks in it are durable.
    func syncDirectory(_ path: String) throws
    func unlink(_ path: String) throws
    func rename(_ from: String, to: String) throws
    func makeDirectory(_ path: String) throws
    func listDirectory(_ path: String) throws -> [String]
    func fileExists(_ path: String) -> Bool
    /// Bytes available to an unprivileged writer, and the volume's size.
    func volumeSpace(_ path: String) throws -> (available: Int64, total: Int64)
    /// Takes an exclusive `flock` on `path` (created if missing) and returns the descriptor
    /// that holds it, or throws ``WALError/Code/locked`` once `waitMilliseconds` have passed.
    func lockExclusive(_ path: String, waitMilliseconds: Int) throws -> Int32
    /// Takes an exclusive `flock` on the directory itself (an `O_RDONLY | O_DIRECTORY`
    /// descriptor) and returns that descriptor, or throws ``WALError/Code/locked`` once
    /// `waitMilliseconds` have passed. Unlike a lock file, a directory cannot be unlinked and
    /// recreated under a writer that holds it.
    func lockDirectory(_ path: String, waitMilliseconds: Int) throws -> Int32
    /// Takes an exclusive `flock` on an open file without waiting, or throws
    /// ``WALError/Code/locked``.
    func tryLock(_ fd: Int32, path: String) throws
    /// Device and inode of an open descriptor, and its link count (0 once unlinked).
    func identity(of fd: Int32, path: String) throws -> FileIdentity
    /// Device and inode of the file at `path` now; nil when nothing is there.
    func identity(atPath path: String) throws -> FileIdentity?
}

/// Which file a path or descriptor is: device and inode, and how many names it has.
public struct FileIdentity: Sendable, Equatable {
    public var device: UInt64
    public var inode: UInt64
    /// Hard links; 0 for a file that was unlinked while open.
    public var links: UInt64

    /// Whether two identities name the same file (the link count aside).
    public func isSameFile(as other: FileIdentity) -> Bool {
        self.device == other.device && self.inode == other.inode
    }

    init(_ info: stat) {
        self.device = UInt64(info.st_dev)
        self.inode = UInt64(info.st_ino)
        self.links = UInt64(info.st_nlink)
    }
}

extension WALFileSystem {
    /// Replaces the file at `path` with `bytes` so that a reader finds the old file or the new
    /// one, never a mix: a temporary file beside it is renamed over it. With `durable`, the
    /// data is fdatasync'd before the rename and `directory` fsync'd after it, so that the new
    /// file is the one found after a crash.
    func replaceFile(_ path: String, with bytes: [UInt8], in directory: String, durable: Bool) throws {
        let temporary = path + ".tmp"
        if self.fileExists(temporary) { try self.unlink(temporary) }
        let fd = try self.open(temporary, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
        do {
            try bytes.withUnsafeBytes { try self.pwrite(fd, $0, at: 0, path: temporary) }
            if durable { try self.fdatasync(fd, path: temporary) }
            self.close(fd)
        } catch {
            self.close(fd)
            try? self.unlink(temporary)
            throw error
        }
        try self.rename(temporary, to: path)
        if durable { try self.syncDirectory(directory) }
    }
}

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

/// A file system that forwards to another one and fails chosen calls on request: the way
/// tests make a disk return ENOSPC or EIO at a precise moment.
@_spi(Testing)
public final class FaultInjectingFileSystem: WALFileSystem {
    /// The calls a fault can target.
    public enum Operation: Sendable, Hashable {
        case pwrite, fdatasync, allocate, open, syncDirectory, unlink
    }

    private struct Fault {
        var errno: Int32
        /// nil: fail until cleared.
        var remaining: Int?
        var pathContains: String?
    }

    private let base: any WALFileSystem
    private let faults = Mutex<[Operation: Fault]>([:])
    private let delays = Mutex<[Operation: Duration]>([:])
    private let stalls = Mutex<[Operation: Stall]>([:])

    /// Calls of one operation held until released: a disk that stops answering for exactly
    /// as long as a test wants, instead of a fixed delay the test must sleep out.
    private final class Stall: Sendable {
        let pathContains: String?
        let held = Atomic<Int>(0)
        let gate = DispatchSemaphore(value: 0)
        init(pathContains: String?) { self.pathContains = pathContains }
    }

    public init(base: any WALFileSystem = SystemFileSystem()) { self.base = base }

    /// Makes `operation` fail with `errno`, `times` times (or until ``clear(_:)`` when nil),
    /// optionally only on paths containing `pathContains`.
    public func inject(_ operation: Operation, errno: Int32, times: Int? = nil, pathContains: String? = nil) {
        self.faults.withLock { $0[operation] = Fault(errno: errno, remaining: times, pathContains: pathContains) }
    }

    /// Makes every `operation` take `delay` longer (a stalled disk), until cleared with nil.
    public func delay(_ operation: Operation, by delay: Duration?) {
        self.delays.withLock { $0[operation] = delay }
    }

    /// Makes every call of `operation` (optionally only on paths containing `pathContains`)
    /// block until ``release(_:)``: a disk that hangs. Calls that started earlier are not held.
    public func stall(_ operation: Operation, pathContains: String? = nil) {
        self.stalls.withLock { $0[operation] = Stall(pathContains: pathContains) }
    }

    /// How many calls of `operation` are blocked by ``stall(_:pathContains:)`` right now.
    public func stalledCalls(_ operation: Operation) -> Int {
        self.stalls.withLock { $0[operation]?.held.load(ordering: .relaxed) ?? 0 }
    }

    /// Lets the held calls of `operation` proceed (they then run normally) and stops holding new ones.
    public func release(_ operation: Operation) {
        // Each released call lets the next one go, so one signal frees them all.
        self.stalls.withLock { $0.removeValue(forKey: operation) }?.gate.signal()
    }

    public func clear(_ operation: Operation? = nil) {
        self.faults.withLock { faults in
            if let operation { faults[operation] = nil } else { faults.removeAll() }
        }
    }

    private func check(_ operation: Operation, path: String) throws {
        if let stall = self.stalls.withLock({ $0[operation] }),
            stall.pathContains.map({ path.contains($0) }) ?? true
        {
            stall.held.add(1, ordering: .relaxed)
            stall.gate.wait()
            stall.held.subtract(1, ordering: .relaxed)
            stall.gate.signal()
        }
        if let delay = self.delays.withLock({ $0[operation] }) {
            let (seconds, attoseconds) = delay.components
            usleep(UInt32(seconds * 1_000_000 + attoseconds / 1_000_000_000_000))
        }
        let error: Int32? = self.faults.withLock { faults in
            guard var fault = faults[operation] else { return nil }
            if let filter = fault.pathContains, !path.contains(filter) { return nil }
            if let remaining = fault.remaining {
                if remaining <= 1 {
                    faults[operation] = nil
                } else {
                    fault.remaining = remaining - 1
                    faults[operation] = fault
                }
            }
            return fault.errno
        }
        if let error { throw WALError.syscall("\(operation) (injected)", path: path, errno: error) }
    }

    public func open(_ path: String, flags: Int32, mode: mode_t) throws -> Int32 {
        if flags & O_CREAT != 0 { try self.check(.open, path: path) }
        return try self.base.open(path, flags: flags, mode: mode)
    }
    public func close(_ fd: Int32) { self.base.close(fd) }
    public func pwrite(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int64, path: String) throws {
        try self.check(.pwrite, path: path)
        try self.base.pwrite(fd, bytes, at: offset, path: path)
    }
    public func pread(
        _ fd: Int32,
        into buffer: UnsafeMutableRawBufferPointer,
        at offset: Int64,
        path: String
    )
        throws -> Int
    { try self.base.pread(fd, into: buffer, at: offset, path: path) }
    public func fdatasync(_ fd: Int32, path: String) throws {
        try self.check(.fdatasync, path: path)
        try self.base.fdatasync(fd, path: path)
    }
    public func allocate(_ fd: Int32, offset: Int64, length: Int64, path: String) throws {
        try self.check(.allocate, path: path)
        try self.base.allocate(fd, offset: offset, length: length, path: path)
    }
    public func truncate(_ fd: Int32, to length: Int64, path: String) throws {
        try self.base.truncate(fd, to: length, path: path)
    }
    public func fileSize(_ fd: Int32, path: String) throws -> Int64 { try self.base.fileSize(fd, path: path) }
    public func syncDirectory(_ path: String) throws {
        try self.check(.syncDirectory, path: path)
        try self.base.syncDirectory(path)
    }
    public func unlink(_ path: String) throws {
        try self.check(.unlink, path: path)
        try self.base.unlink(path)
    }
    public func rename(_ from: String, to: String) throws { try self.base.rename(from, to: to) }
    public func makeDirectory(_ path: String) throws { try self.base.makeDirectory(path) }
    public func listDirectory(_ path: String) throws -> [String] { try self.base.listDirectory(path) }
    public func fileExists(_ path: String) -> Bool { self.base.fileExists(path) }
    public func volumeSpace(_ path: String) throws -> (available: Int64, total: Int64) {
        try self.base.volumeSpace(path)
    }
    public func lockExclusive(_ path: String, waitMilliseconds: Int) throws -> Int32 {
        try self.base.lockExclusive(path, waitMilliseconds: waitMilliseconds)
    }
    public func lockDirectory(_ path: String, waitMilliseconds: Int) throws -> Int32 {
        try self.base.lockDirectory(path, waitMilliseconds: waitMilliseconds)
    }
    public func tryLock(_ fd: Int32, path: String) throws { try self.base.tryLock(fd, path: path) }
    public func identity(of fd: Int32, path: String) throws -> FileIdentity {
        try self.base.identity(of: fd, path: path)
    }
    public func identity(atPath path: String) throws -> FileIdentity? { try self.base.identity(atPath: path) }
}
