#if canImport(Glibc)
import Glibc
#endif

/// Damaged bytes are copied here before anything else happens to them, with a JSON note
/// saying where they came from, so nothing is silently discarded.
enum Quarantine {
    static let directoryName = "quarantine"

    static func save(
        _ damage: Damage,
        segmentPath: String,
        walDirectory: String,
        detectedNanos: UInt64,
        fileSystem: any WALFileSystem
    ) throws {
        let directory = walDirectory + "/" + Self.directoryName
        let base = directory + "/" + damage.segment + "-" + String(damage.startOffset)
        if fileSystem.fileExists(base + ".json") { return }
        let length = max(0, Int(damage.endOffset - damage.startOffset))
        var bytes = [UInt8](repeating: 0, count: length)
        if length > 0 {
            let source = try fileSystem.open(segmentPath, flags: O_RDONLY, mode: 0)
            defer { fileSystem.close(source) }
            let read = try bytes.withUnsafeMutableBytes {
                try fileSystem.pread(source, into: $0, at: damage.startOffset, path: segmentPath)
            }
            bytes.removeLast(length - read)
        }
        try Self.write(bytes, to: base + ".bin", fileSystem: fileSystem)
        let note =
            "{\"segment\":\"\(damage.segment)\",\"start_offset\":\(damage.startOffset),"
            + "\"end_offset\":\(damage.endOffset),\"first_lost_lsn\":\(damage.firstLostLSN),"
            + "\"resume_lsn\":\(damage.resumeLSN),\"lost_events\":\(damage.lostEvents),"
            + "\"reason\":\"\(damage.reason.replacingQuotes())\",\"detected_unix_ns\":\(detectedNanos)}\n"
        try Self.write(Array(note.utf8), to: base + ".json", fileSystem: fileSystem)
        try fileSystem.syncDirectory(directory)
    }

    private static func write(_ bytes: [UInt8], to path: String, fileSystem: any WALFileSystem) throws {
        let fd = try fileSystem.open(path, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        defer { fileSystem.close(fd) }
        if !bytes.isEmpty { try bytes.withUnsafeBytes { try fileSystem.pwrite(fd, $0, at: 0, path: path) } }
        try fileSystem.fdatasync(fd, path: path)
    }
}

extension String {
    func replacingQuotes() -> String {
        String(self.map { $0 == "\"" || $0 == "\\" ? "'" : $0 })
    }
}
