#if canImport(Glibc)
import Glibc
#endif

/// The budget the running writer enforces, written to `wal.settings` in the WAL directory
/// when it opens, so `sluice wal stat` computes pressure with the writer's numbers rather
/// than its own defaults.
///
/// A small flat JSON object; informational only (nothing in the WAL depends on reading it
/// back), so it is replaced with a rename but not fsync'd.
public struct WriterSettings: Sendable, Equatable, Codable {
    static let fileName = "wal.settings"

    /// The writer's process id.
    public var pid: Int32
    public var segmentBytes: Int64
    public var budget: DiskBudget
    /// When the writer opened the WAL (unix nanoseconds).
    public var openedNanos: UInt64

    public init(pid: Int32, segmentBytes: Int64, budget: DiskBudget, openedNanos: UInt64) {
        self.pid = pid
        self.segmentBytes = segmentBytes
        self.budget = budget
        self.openedNanos = openedNanos
    }

    func encoded() -> String {
        "{\"pid\":\(self.pid),\"segment_bytes\":\(self.segmentBytes),\"max_bytes\":\(self.budget.maxBytes),"
            + "\"soft_fraction\":\(self.budget.softFraction),\"hard_fraction\":\(self.budget.hardFraction),"
            + "\"min_free_bytes\":\(self.budget.minFreeBytes),\"opened_unix_ns\":\(self.openedNanos)}\n"
    }

    /// Parses what ``encoded()`` wrote; nil when a field is missing or malformed.
    static func decode(_ text: String) -> WriterSettings? {
        var fields: [String: String] = [:]
        let body = text.trimmingWhitespace()
        guard body.hasPrefix("{"), body.hasSuffix("}") else { return nil }
        for pair in body.dropFirst().dropLast().split(separator: ",") {
            let parts = pair.split(separator: ":", maxSplits: 1)
            guard parts.count == 2 else { return nil }
            let key = parts[0].trimmingCharacters(of: "\" ")
            fields[key] = parts[1].trimmingCharacters(of: " ")
        }
        guard let pid = fields["pid"].flatMap({ Int32($0) }),
            let segmentBytes = fields["segment_bytes"].flatMap({ Int64($0) }),
            let maxBytes = fields["max_bytes"].flatMap({ Int64($0) }),
            let soft = fields["soft_fraction"].flatMap({ Double($0) }),
            let hard = fields["hard_fraction"].flatMap({ Double($0) }),
            let minFree = fields["min_free_bytes"].flatMap({ Int64($0) }),
            let opened = fields["opened_unix_ns"].flatMap({ UInt64($0) })
        else { return nil }
        return WriterSettings(
            pid: pid,
            segmentBytes: segmentBytes,
            budget: DiskBudget(maxBytes: maxBytes, softFraction: soft, hardFraction: hard, minFreeBytes: minFree),
            openedNanos: opened
        )
    }

    /// Replaces `wal.settings` in `directory` (temporary file, then rename).
    func write(directory: String, fileSystem: any WALFileSystem) throws {
        // Not durable: it describes the running writer, which writes it again at every open.
        try fileSystem.replaceFile(
            directory + "/" + Self.fileName,
            with: Array(self.encoded().utf8),
            in: directory,
            durable: false
        )
    }

    /// Reads `wal.settings` from `directory`; nil when absent or unreadable.
    static func read(directory: String, fileSystem: any WALFileSystem) -> WriterSettings? {
        let path = directory + "/" + Self.fileName
        guard let fd = try? fileSystem.open(path, flags: O_RDONLY, mode: 0) else { return nil }
        defer { fileSystem.close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        guard let count = try? buffer.withUnsafeMutableBytes({ try fileSystem.pread(fd, into: $0, at: 0, path: path) })
        else { return nil }
        return Self.decode(String(decoding: buffer[0..<count], as: UTF8.self))
    }
}

extension Substring {
    func trimmingCharacters(of set: String) -> String {
        var result = self
        while let first = result.first, set.contains(first) { result = result.dropFirst() }
        while let last = result.last, set.contains(last) { result = result.dropLast() }
        return String(result)
    }
}
