#if canImport(Glibc)
import Glibc
#endif

/// The single-writer guarantee of a WAL directory, and the check that it still holds.
///
/// Two locks, taken in this order:
/// 1. an exclusive `flock` on the directory itself. It does not depend on any file existing:
///    deleting `wal.lock` (an operator "cleaning a stale lock", a tmp reaper, a restored
///    backup) cannot let a second writer in, because the directory cannot be swapped under
///    an open descriptor without the path then naming a different inode;
/// 2. an exclusive `flock` on `wal.lock`, which holds the writer's pid for operators and
///    keeps out tools that only know the lock file.
///
/// The active segment is locked too (by the writer, when it opens it), so nothing else
/// that honours `flock` can append to it.
///
/// ``check(fileSystem:)`` compares the locked descriptors with what the paths name now; the
/// WAL runs it on a timer (never per append). A writer whose lock file was deleted or
/// replaced, or whose directory was moved or replaced, can no longer prove it is alone, so
/// it stops accepting appends.
struct WriterLock {
    static let fileName = "wal.lock"

    let directory: String
    let directoryFD: Int32
    let fileFD: Int32
    let directoryIdentity: FileIdentity
    let fileIdentity: FileIdentity

    var lockPath: String { self.directory + "/" + Self.fileName }

    /// Takes both locks, the directory's first (so a refused writer never touches `wal.lock`).
    static func acquire(directory: String, fileSystem: any WALFileSystem, waitMilliseconds: Int) throws -> WriterLock {
        let directoryFD: Int32
        do {
            directoryFD = try fileSystem.lockDirectory(directory, waitMilliseconds: waitMilliseconds)
        } catch let error as WALError where error.code == .locked {
            let pid =
                Self.holderPID(directory: directory)
                ?? WriterSettings.read(directory: directory, fileSystem: fileSystem)?.pid
            let holder = pid.map { "process \($0)" } ?? "another process"
            throw WALError(
                .locked,
                "\(directory) is locked by \(holder); a WAL directory has one writer at a time"
                    + " (the directory itself is locked, whether or not \(Self.fileName) exists)"
            )
        }
        do {
            let path = directory + "/" + Self.fileName
            let fileFD = try fileSystem.lockExclusive(path, waitMilliseconds: waitMilliseconds)
            do {
                return WriterLock(
                    directory: directory,
                    directoryFD: directoryFD,
                    fileFD: fileFD,
                    directoryIdentity: try fileSystem.identity(of: directoryFD, path: directory),
                    fileIdentity: try fileSystem.identity(of: fileFD, path: path)
                )
            } catch {
                fileSystem.close(fileFD)
                throw error
            }
        } catch {
            fileSystem.close(directoryFD)
            throw error
        }
    }

    /// The pid written in `wal.lock`, if the file is there and holds one.
    static func holderPID(directory: String) -> Int32? {
        let fd = open(directory + "/" + Self.fileName, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        return Int32(String(decoding: buffer[0..<n], as: UTF8.self).trimmingWhitespace())
    }

    /// Why the lock no longer guarantees a single writer, or nil while it does. Two `stat`s
    /// and an `fstat`: cheap enough for a timer, too dear for every append.
    func check(fileSystem: any WALFileSystem) -> String? {
        do {
            guard let now = try fileSystem.identity(atPath: self.directory),
                now.isSameFile(as: self.directoryIdentity)
            else {
                return "the WAL directory \(self.directory) was moved, deleted or replaced while this writer used it"
            }
            let held = try fileSystem.identity(of: self.fileFD, path: self.lockPath)
            guard let current = try fileSystem.identity(atPath: self.lockPath) else {
                return "\(self.lockPath) was deleted while this writer held it"
            }
            guard current.isSameFile(as: held) else {
                return "\(self.lockPath) was replaced by another file while this writer held it"
            }
            if held.links == 0 { return "\(self.lockPath) was deleted while this writer held it" }
            return nil
        } catch {
            // A failing stat proves nothing either way; the next check tries again.
            return nil
        }
    }

    func release(fileSystem: any WALFileSystem) {
        fileSystem.close(self.fileFD)
        fileSystem.close(self.directoryFD)
    }
}
