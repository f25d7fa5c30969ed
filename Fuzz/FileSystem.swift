import WAL

#if canImport(Glibc)
import Glibc
#endif

/// A read-only directory in memory holding one segment file: the WAL's readers run over it
/// exactly as over a disk, without a system call per input. Writes are refused as a read-only
/// mount would refuse them.
final class OneSegmentFileSystem: WALFileSystem, @unchecked Sendable {
    let directory: String
    let name: String
    let bytes: [UInt8]

    init(directory: String, name: String, bytes: [UInt8]) {
        self.directory = directory
        self.name = name
        self.bytes = bytes
    }

    private var path: String { self.directory + "/" + self.name }

    private func refuse(_ call: String, _ path: String) -> WALError {
        WALError(.io, "\(call) failed on \(path)", errno: EROFS)
    }

    private func missing(_ call: String, _ path: String) -> WALError {
        WALError(.notFound, "\(call) failed on \(path)", errno: ENOENT)
    }

    func open(_ path: String, flags: Int32, mode: mode_t) throws -> Int32 {
        guard path == self.path, flags & O_ACCMODE == O_RDONLY, flags & O_CREAT == 0 else {
            throw path == self.path ? self.refuse("open", path) : self.missing("open", path)
        }
        return 3
    }

    func close(_ fd: Int32) {}

    func pwrite(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int64, path: String) throws {
        throw self.refuse("pwrite", path)
    }

    func pread(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: Int64, path: String) throws -> Int {
        guard offset >= 0 else { throw WALError(.invalidArgument, "pread at \(offset) on \(path)", errno: EINVAL) }
        guard offset < Int64(self.bytes.count) else { return 0 }
        let count = min(buffer.count, self.bytes.count - Int(offset))
        self.bytes.withUnsafeBytes { source in
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[Int(offset)..<Int(offset) + count]))
        }
        return count
    }

    func fdatasync(_ fd: Int32, path: String) throws { throw self.refuse("fdatasync", path) }
    func allocate(_ fd: Int32, offset: Int64, length: Int64, path: String) throws {
        throw self.refuse("fallocate", path)
    }
    func truncate(_ fd: Int32, to length: Int64, path: String) throws { throw self.refuse("ftruncate", path) }
    func fileSize(_ fd: Int32, path: String) throws -> Int64 { Int64(self.bytes.count) }
    func syncDirectory(_ path: String) throws { throw self.refuse("fsync", path) }
    func unlink(_ path: String) throws { throw self.refuse("unlink", path) }
    func rename(_ from: String, to: String) throws { throw self.refuse("rename", from) }
    func makeDirectory(_ path: String) throws { throw self.refuse("mkdir", path) }

    func listDirectory(_ path: String) throws -> [String] {
        guard path == self.directory else { throw self.missing("opendir", path) }
        return [self.name]
    }

    func fileExists(_ path: String) -> Bool { path == self.directory || path == self.path }
    func volumeSpace(_ path: String) throws -> (available: Int64, total: Int64) { (0, Int64(self.bytes.count)) }

    func lockExclusive(_ path: String, waitMilliseconds: Int) throws -> Int32 { throw self.refuse("flock", path) }
    func lockDirectory(_ path: String, waitMilliseconds: Int) throws -> Int32 { throw self.refuse("flock", path) }
    func tryLock(_ fd: Int32, path: String) throws { throw self.refuse("flock", path) }
    func identity(of fd: Int32, path: String) throws -> FileIdentity { throw self.refuse("fstat", path) }
    func identity(atPath path: String) throws -> FileIdentity? { nil }
}
