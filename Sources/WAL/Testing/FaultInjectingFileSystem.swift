import Dispatch
import SluiceCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A file system that forwards to another one and fails chosen calls on request: the way
/// tests make a disk return ENOSPC or EIO at a precise moment.
@_spi(Testing)
public final class FaultInjectingFileSystem: WALFileSystem {
    /// The calls a fault can target.
    public enum Operation: Sendable, Hashable {
        case pwrite, fdatasync, allocate, open, syncDirectory, unlink, truncate, rename, makeDirectory
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
            usleep(UInt32(clamping: delay.nanoseconds / 1000))
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
        try self.check(.truncate, path: path)
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
    public func rename(_ from: String, to: String) throws {
        try self.check(.rename, path: to)
        try self.base.rename(from, to: to)
    }
    public func makeDirectory(_ path: String) throws {
        try self.check(.makeDirectory, path: path)
        try self.base.makeDirectory(path)
    }
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
