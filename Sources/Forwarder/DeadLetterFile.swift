import Dispatch
import EventModel
import Logging
import WAL

#if canImport(Glibc)
import Glibc
#endif

/// Where the forwarder keeps the events Kafka will never take (too large, corrupt, invalid
/// topic): `<wal>/forwarder/dead-letters.ndjson`, one JSON object per line with the reason,
/// the WAL LSN and the event, so an operator can fix and resend them.
///
/// The forwarder's own directory inside the WAL directory: the WAL ignores it (it reads only
/// segments, `cursors/` and `quarantine/`), it moves with the WAL's volume, and it is the
/// forwarder's alone. Earlier versions wrote `<wal>/dead-letters.ndjson`; ``prepare()`` moves
/// such a file here.
///
/// Every write goes through the WAL's file-system seam (``WALFileSystem``, so tests can make
/// it fail like a full or broken disk) and is `fdatasync`'d before it counts: only then may
/// the cursor pass the event. All file work runs on one serial queue of its own, never on
/// the cooperative pool or on librdkafka's poll thread.
final class DeadLetterFile: Sendable {
    static let directoryName = "forwarder"
    static let fileName = "dead-letters.ndjson"

    let walDirectory: String
    /// `<wal>/forwarder`.
    let directory: String
    /// `<wal>/forwarder/dead-letters.ndjson`.
    let path: String
    /// Where Sluice kept the file before it had a directory of its own.
    let legacyPath: String
    private let fileSystem: any WALFileSystem
    private let logger: Logger
    private let queue = DispatchQueue(label: "sluice.forwarder.dead-letters")

    init(walDirectory: String, fileSystem: any WALFileSystem, logger: Logger) {
        self.walDirectory = walDirectory
        self.directory = walDirectory + "/" + Self.directoryName
        self.path = self.directory + "/" + Self.fileName
        self.legacyPath = walDirectory + "/" + Self.fileName
        self.fileSystem = fileSystem
        self.logger = logger
    }

    /// The line kept for one event: `{"reason":…,"wal_lsn":…,"event":"<the event JSON>"}`.
    static func line(lsn: LSN, event: [UInt8], reason: String) -> [UInt8] {
        var writer = JSONWriter()
        writer.raw("{")
        writer.member("reason", reason, first: true)
        writer.raw(",\"wal_lsn\":\(lsn.rawValue),\"event\":")
        writer.string(String(decoding: event, as: UTF8.self))
        writer.raw("}\n")
        return writer.bytes
    }

    /// Moves a dead-letter file an older Sluice left at ``legacyPath`` to ``path``, so that
    /// operators find every dead letter in one place. When both exist the old one stays
    /// (merging could reorder lines an operator is working through) and a warning says so.
    func prepare() async {
        await self.run {
            guard self.fileSystem.fileExists(self.legacyPath) else { return }
            guard !self.fileSystem.fileExists(self.path) else {
                self.logger.warning(
                    "forwarder.dead_letters_legacy_file",
                    metadata: ["path": "\(self.legacyPath)", "current": "\(self.path)"]
                )
                return
            }
            do {
                try self.fileSystem.makeDirectory(self.directory)
                try self.fileSystem.rename(self.legacyPath, to: self.path)
                try self.fileSystem.syncDirectory(self.directory)
                try self.fileSystem.syncDirectory(self.walDirectory)
                self.logger.notice(
                    "forwarder.dead_letters_moved",
                    metadata: ["from": "\(self.legacyPath)", "path": "\(self.path)"]
                )
            } catch {
                self.logger.error(
                    "forwarder.dead_letters_move_failed",
                    metadata: ["from": "\(self.legacyPath)", "error": "\(error)"]
                )
            }
        }
    }

    /// Appends and fsyncs the dead letter of event `lsn` on the file's own queue, then calls
    /// `completion` there with whether it is durable.
    func write(
        lsn: LSN,
        event: [UInt8],
        reason: String,
        completion: @escaping @Sendable (Bool) -> Void
    ) {
        self.queue.async {
            let line = Self.line(lsn: lsn, event: event, reason: reason)
            do {
                try self.append(line)
                self.logger.error("forwarder.dead_letter", metadata: ["wal.lsn": "\(lsn)", "error": "\(reason)"])
                completion(true)
            } catch {
                self.logger.error(
                    "forwarder.dead_letter_failed",
                    metadata: ["wal.lsn": "\(lsn)", "path": "\(self.path)", "error": "\(error)"]
                )
                completion(false)
            }
        }
    }

    /// Returns once every write queued before the call has finished (and called back).
    func flush() async {
        await self.run {}
    }

    /// Appends `line` and makes it durable; on failure the file is cut back to whole lines.
    /// Blocking: only on ``queue``.
    func append(_ line: [UInt8]) throws {
        let created = !self.fileSystem.fileExists(self.path)
        if created { try self.fileSystem.makeDirectory(self.directory) }
        let fd = try self.fileSystem.open(self.path, flags: O_WRONLY | O_CREAT, mode: 0o600)
        defer { self.fileSystem.close(fd) }
        let end = try self.fileSystem.fileSize(fd, path: self.path)
        do {
            try line.withUnsafeBytes { try self.fileSystem.pwrite(fd, $0, at: end, path: self.path) }
            try self.fileSystem.fdatasync(fd, path: self.path)
        } catch {
            try? self.fileSystem.truncate(fd, to: end, path: self.path)
            throw error
        }
        if created {
            // The new file's name (and the directory's) must survive a crash too.
            try self.fileSystem.syncDirectory(self.directory)
            try self.fileSystem.syncDirectory(self.walDirectory)
        }
    }

    private func run(_ body: @escaping @Sendable () -> Void) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            self.queue.async {
                body()
                continuation.resume()
            }
        }
    }
}
