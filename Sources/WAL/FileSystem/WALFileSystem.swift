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
