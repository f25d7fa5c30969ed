import Foundation
import Logging
import SluiceCore
import Synchronization

#if canImport(Glibc)
// `stat` is seen through CoreFoundation as well once other files of the module import it.
import CoreFoundation
import Glibc
#endif

/// API keys in a JSON file (`auth.api_keys.file`): the single-gateway store, needing no database.
///
/// The gateway side answers ``lookup(sha256:)`` from memory. ``run()`` checks the file's
/// identity (inode, size, mtime, ctime) every `pollInterval` (1 s) and reloads it when it
/// changed; ``reload()`` does the same on demand (SIGHUP). A file that fails to parse or to
/// validate is refused with one log line and the last good copy stays in use; so does a file
/// that disappears. Last-used times are noted in memory and written at most once per
/// `lastUsedFlushInterval` (one minute).
///
/// The admin side (`sluice keys`) changes the file under an advisory lock (`<file>.lock`) and
/// replaces it crash-safely: write a temporary file, fsync, rename, fsync the directory; mode 0600.
public final class FileKeyStore: APIKeyLookup, APIKeyAdministration {
    /// The file's path.
    public let path: String
    public let pollInterval: Duration
    public let lastUsedFlushInterval: Duration
    private let logger: Logger
    private let cache = KeyStoreCache(store: "file")
    private let watch = Mutex(WatchState())
    private let writes = Atomic<Int>(0)

    private struct WatchState {
        /// The identity of the file the cache holds (nil: no file yet).
        var loaded: KeyFileIdentity?
        /// The identity of a file that was refused, so that it is logged once.
        var refused: KeyFileIdentity?
        var missingLogged = false
    }

    /// Opens the store and loads the file. A missing file is an empty store (it may be created
    /// later by `sluice keys create`); a file that does not parse throws, so that a gateway does
    /// not start with a broken key file.
    public init(
        path: String,
        logger: Logger = Logger(label: "sluice.auth.keys"),
        pollInterval: Duration = .seconds(1),
        lastUsedFlushInterval: Duration = .seconds(60)
    ) throws(KeyStoreError) {
        self.path = path
        self.logger = logger
        self.pollInterval = pollInterval
        self.lastUsedFlushInterval = lastUsedFlushInterval
        let identity = KeyFileIdentity(path: path)
        if identity == nil {
            self.cache.replace(with: APIKeyRing())
            return
        }
        let ring = try Self.read(path)
        self.cache.replace(with: ring)
        self.watch.withLock { $0.loaded = identity }
    }

    // MARK: Gateway side

    public func lookup(sha256: String) -> StoredAPIKey? { self.cache.lookup(sha256: sha256) }

    public func noteUsed(id: String, at date: Date) { self.cache.noteUsed(id: id, at: date) }

    /// Every key in the in-memory copy.
    public var snapshot: [StoredAPIKey] { self.cache.ring.keys }

    /// How many times this instance wrote the file (admin changes and last-used flushes).
    public var fileWrites: Int { self.writes.load(ordering: .relaxed) }

    /// Rereads the file now (for SIGHUP). Returns true when the copy in memory now matches the
    /// file; false when the file is missing or was refused (the last good copy stays).
    @discardableResult
    public func reload() -> Bool { self.load(onlyIfChanged: false) }

    /// Rereads the file if its identity changed since the last load; what ``run()`` does every
    /// `pollInterval`.
    @discardableResult
    public func reloadIfChanged() -> Bool { self.load(onlyIfChanged: true) }

    /// Watches the file and flushes last-used times until the task is cancelled; then flushes
    /// once more and returns. Run it beside the gateway (for example in a `Service`).
    public func run() async throws {
        var lastFlush = ContinuousClock.now
        while !Task.isCancelled {
            do { try await Task.sleep(for: self.pollInterval) } catch { break }
            _ = await offPool { self.reloadIfChanged() }
            if ContinuousClock.now - lastFlush >= self.lastUsedFlushInterval {
                lastFlush = .now
                _ = try? await offPool { try self.flushLastUsed() }
            }
        }
        _ = try? await offPool { try self.flushLastUsed() }
    }

    /// Writes the noted last-used times to the file now, if there are any. Returns whether the
    /// file was written. On failure the times are kept for the next flush.
    @discardableResult
    public func flushLastUsed() throws(KeyStoreError) -> Bool {
        let used = self.cache.takePendingUse()
        guard !used.isEmpty else { return false }
        do {
            return try self.modify { ring throws(KeyStoreError) in !ring.noteUsed(used).isEmpty }
        } catch {
            self.cache.restore(used)
            self.logger.warning(
                "could not write API key last-used times; will retry",
                metadata: ["file.path": "\(self.path)", "error.message": "\(error.message)"]
            )
            throw error
        }
    }

    private func load(onlyIfChanged: Bool) -> Bool {
        guard let identity = KeyFileIdentity(path: self.path) else {
            let first = self.watch.withLock { state in
                defer { state.missingLogged = true }
                return !state.missingLogged && state.loaded != nil
            }
            if first {
                self.logger.error(
                    "API key file is missing; keeping the last good copy",
                    metadata: ["file.path": "\(self.path)"]
                )
            }
            return false
        }
        let (loaded, refused) = self.watch.withLock { ($0.loaded, $0.refused) }
        if onlyIfChanged && (identity == loaded || identity == refused) {
            if identity == loaded { self.cache.confirm() }
            return identity == loaded
        }
        do {
            let ring = try Self.read(self.path)
            self.cache.replace(with: ring)
            self.watch.withLock {
                $0.loaded = identity
                $0.refused = nil
                $0.missingLogged = false
            }
            self.logger.info(
                "API key file loaded",
                metadata: ["file.path": "\(self.path)", "keys": "\(ring.keys.count)"]
            )
            return true
        } catch {
            let first = self.watch.withLock { state in
                defer { state.refused = identity }
                return state.refused != identity
            }
            if first {
                self.logger.error(
                    "API key file refused; keeping the last good copy",
                    metadata: ["file.path": "\(self.path)", "error.message": "\(error.message)"]
                )
            }
            return false
        }
    }

    // MARK: Admin side

    public func create(_ request: NewAPIKey, now: Date) async throws -> IssuedAPIKey {
        try await offPool {
            try self.modify { ring throws(KeyStoreError) in try ring.create(request, now: now) }
        }
    }

    public func list() async throws -> [StoredAPIKey] {
        try await offPool {
            guard KeyFileIdentity(path: self.path) != nil else { return [] }
            return try Self.read(self.path).keys
        }
    }

    public func revoke(name: String, now: Date) async throws -> [StoredAPIKey] {
        try await offPool {
            try self.modify { ring throws(KeyStoreError) in try ring.revoke(name: name, now: now) }
        }
    }

    public func roll(name: String, grace: Duration, now: Date) async throws -> IssuedAPIKey {
        try await offPool {
            try self.modify { ring throws(KeyStoreError) in try ring.roll(name: name, grace: grace, now: now) }
        }
    }

    /// Read, change, write back under the lock; the cache follows.
    private func modify<T>(_ change: (inout APIKeyRing) throws(KeyStoreError) -> T) throws(KeyStoreError) -> T {
        let lock = try KeyFileIO.lock(self.path + ".lock")
        defer { KeyFileIO.unlock(lock) }
        var original = APIKeyRing()
        if KeyFileIdentity(path: self.path) != nil { original = try Self.read(self.path) }
        var ring = original
        let result = try change(&ring)
        if ring != original {
            let data: Data
            do { data = try KeyStoreCodec.encodeFile(ring) } catch {
                throw KeyStoreError(.invalidStore, "could not encode the key file")
            }
            try KeyFileIO.replaceFile(self.path, with: data)
            self.writes.add(1, ordering: .relaxed)
            self.cache.replace(with: ring)
            let identity = KeyFileIdentity(path: self.path)
            self.watch.withLock {
                $0.loaded = identity
                $0.refused = nil
            }
        }
        return result
    }

    private static func read(_ path: String) throws(KeyStoreError) -> APIKeyRing {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw KeyStoreError(.io, "cannot read the key file \(path)")
        }
        do { return try KeyStoreCodec.decodeFile(data) } catch {
            throw KeyStoreError(.invalidStore, "the key file \(path) \(error.message)")
        }
    }
}

/// Enough of `stat` to tell that a file was replaced or edited.
struct KeyFileIdentity: Equatable, Sendable {
    var device: UInt64
    var inode: UInt64
    var size: Int64
    var modified: timespec
    var changed: timespec

    init?(path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        self.device = UInt64(info.st_dev)
        self.inode = UInt64(info.st_ino)
        self.size = Int64(info.st_size)
        self.modified = info.st_mtim
        self.changed = info.st_ctim
    }

    static func == (a: KeyFileIdentity, b: KeyFileIdentity) -> Bool {
        a.device == b.device && a.inode == b.inode && a.size == b.size
            && a.modified.tv_sec == b.modified.tv_sec && a.modified.tv_nsec == b.modified.tv_nsec
            && a.changed.tv_sec == b.changed.tv_sec && a.changed.tv_nsec == b.changed.tv_nsec
    }
}

/// The key file's system calls: crash-safe replacement and the advisory lock.
enum KeyFileIO {
    /// Replaces `path` with `bytes` so that a crash leaves the old or the new file, never a
    /// mix (temporary file, fsync, rename, fsync of the directory; mode 0600), creating its
    /// directory (0700) when missing.
    static func replaceFile(_ path: String, with bytes: Data) throws(KeyStoreError) {
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        do {
            try FileManager.default.createDirectory(
                atPath: directory,
                withIntermediateDirectories: true,
                attributes: [.posixPermissions: 0o700]
            )
        } catch {
            throw KeyStoreError(.io, "cannot create the directory \(directory)")
        }
        // The module's one crash-safe writer (also the authorization server's files).
        do {
            try AuthorizationServerFile.write(Array(bytes), to: path)
        } catch let error as AuthorizationServerError {
            throw KeyStoreError(.io, error.message)
        } catch {
            throw KeyStoreError(.io, "cannot replace \(path): \(error)")
        }
    }

    /// Takes an exclusive `flock` on `path` (created 0600 if missing), waiting for other writers.
    static func lock(_ path: String) throws(KeyStoreError) -> Int32 {
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        try? FileManager.default.createDirectory(
            atPath: directory,
            withIntermediateDirectories: true,
            attributes: [.posixPermissions: 0o700]
        )
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Self.failure("open", path) }
        while flock(fd, LOCK_EX) != 0 {
            if errno == EINTR { continue }
            let failure = Self.failure("lock", path)
            _ = close(fd)
            throw failure
        }
        return fd
    }

    static func unlock(_ fd: Int32) {
        _ = flock(fd, LOCK_UN)
        _ = close(fd)
    }

    private static func failure(_ operation: String, _ path: String) -> KeyStoreError {
        KeyStoreError(.io, "cannot \(operation) \(path): \(String(cString: strerror(errno)))")
    }
}
