#if canImport(Glibc)
import Glibc
#endif

/// What one segment file holds, as `sluice wal ls` shows it.
public struct SegmentSummary: Sendable, Equatable, Codable {
    public enum State: String, Sendable, Codable {
        /// Finished, with a valid footer.
        case sealed
        /// The segment the writer appends to.
        case active
        /// Finished without a footer (the writer crashed or abandoned it after an I/O error);
        /// readable, found by a scan.
        case unsealed
    }

    public var name: String
    public var firstLSN: LSN
    /// The LSN after the segment's last event.
    public var nextLSN: LSN
    public var records: UInt64
    /// Where the data frames end (the footer or the unwritten space starts).
    public var dataEnd: Int64
    /// Bytes the file occupies, preallocation included.
    public var fileBytes: Int64
    public var minTimestampNanos: UInt64?
    public var maxTimestampNanos: UInt64?
    public var state: State
    /// Damaged stretches found while scanning (empty for footer-only reads).
    public var damage: [Damage]
    /// Set when the segment ends in bytes that are not a complete frame: a write cut short.
    public var tornTail: String?
    /// Set when the 64-byte header is unreadable. The frames were then read from the first
    /// LSN in the file name (they carry their own magic, LSN and checksums), so only the
    /// header is lost; the writer never appends to such a segment again.
    public var headerDamage: String? = nil
    /// Set when a sealed segment's footer is unreadable. Every frame before it was read and
    /// is intact; the segment is treated as unsealed (scanned rather than summarised).
    public var footerDamage: String? = nil

    public var events: UInt64 { self.nextLSN - self.firstLSN }
}

/// Segment file names: the first LSN, zero-padded to 20 digits, so `ls` sorts them by LSN
/// and tells an operator which file holds a given LSN.
enum SegmentName {
    static let suffix = ".wal"

    static func make(_ lsn: LSN) -> String {
        let digits = String(lsn.rawValue)
        return String(repeating: "0", count: max(0, 20 - digits.count)) + digits + Self.suffix
    }

    static func parse(_ name: String) -> LSN? {
        guard name.hasSuffix(Self.suffix), name.utf8.count == 20 + Self.suffix.utf8.count,
            let value = UInt64(name.dropLast(Self.suffix.count))
        else { return nil }
        return LSN(value)
    }
}

/// Reading a whole segment into a ``SegmentSummary``.
enum SegmentScan {
    struct Result {
        var summary: SegmentSummary
        var header: SegmentHeader
        /// How the frames ended.
        var end: SegmentReader.End
        /// Writer tags of the frames read (empty for footer-only reads).
        var writerTags: Set<UInt16> = []
    }

    /// Summarises a segment: from its footer alone when it is sealed (unless `deep`), by a
    /// full scan otherwise.
    static func summarize(
        path: String,
        fileSystem: any WALFileSystem,
        deep: Bool = false,
        onRecord: ((WALRecord) -> Void)? = nil
    ) throws -> Result {
        var reader = try SegmentReader(path: path, fileSystem: fileSystem)
        defer { reader.close() }
        let header: SegmentHeader
        var headerDamage: Damage?
        do {
            header = try reader.header()
        } catch let error as WALError where error.code == .corruptSegment {
            // The header only repeats what the name says; the frames carry magic, LSN and
            // checksums of their own. Read them from the name's LSN rather than lose them all.
            guard let firstLSN = SegmentName.parse(reader.name) else { throw error }
            header = SegmentHeader(firstLSN: firstLSN, createdNanos: 0, writerID: 0)
            headerDamage = Damage(
                segment: reader.name,
                startOffset: 0,
                endOffset: min(Int64(SegmentHeader.size), reader.fileSize),
                firstLostLSN: firstLSN,
                resumeLSN: firstLSN,
                reason: "segment header damaged (\(error.message)); the frames were read from the file name's LSN"
            )
        }
        if !deep, onRecord == nil, let footer = try reader.footer() {
            let summary = SegmentSummary(
                name: reader.name,
                firstLSN: header.firstLSN,
                nextLSN: footer.nextLSN,
                records: footer.recordCount,
                dataEnd: Int64(footer.dataEnd),
                fileBytes: reader.fileSize,
                minTimestampNanos: footer.recordCount > 0 ? footer.minTimestampNanos : nil,
                maxTimestampNanos: footer.recordCount > 0 ? footer.maxTimestampNanos : nil,
                state: .sealed,
                damage: headerDamage.map { [$0] } ?? [],
                tornTail: nil,
                headerDamage: headerDamage?.reason
            )
            return Result(summary: summary, header: header, end: .footer(footer))
        }
        var summary = SegmentSummary(
            name: reader.name,
            firstLSN: header.firstLSN,
            nextLSN: header.firstLSN,
            records: 0,
            dataEnd: Int64(SegmentHeader.size),
            fileBytes: reader.fileSize,
            minTimestampNanos: nil,
            maxTimestampNanos: nil,
            state: .unsealed,
            damage: headerDamage.map { [$0] } ?? [],
            tornTail: nil,
            headerDamage: headerDamage?.reason
        )
        var offset = Int64(SegmentHeader.size)
        var expected = header.firstLSN
        // One writer run appends after the previous one, so each tag forms one stretch; a tag
        // that comes back after another means two writers appended at the same time.
        var currentTag: UInt16 = 0
        var finishedTags: Set<UInt16> = []
        var tags: Set<UInt16> = []
        while true {
            let (item, next) = try reader.next(at: offset, expected: expected)
            switch item {
            case .record(let record):
                if record.writerTag != 0 && record.writerTag != currentTag {
                    if finishedTags.contains(record.writerTag) {
                        summary.damage.append(
                            Damage(
                                segment: reader.name,
                                startOffset: offset,
                                endOffset: next,
                                firstLostLSN: record.lsn,
                                resumeLSN: record.lsn,
                                reason:
                                    "overwritten: frames of two writers interleave (writer \(record.writerTag) again at "
                                    + "LSN \(record.lsn)...\(record.nextLSN.rawValue - 1) after writer \(currentTag)); "
                                    + "two writers appended to this segment at once, so events of one were written over"
                            )
                        )
                    }
                    if currentTag != 0 { finishedTags.insert(currentTag) }
                    currentTag = record.writerTag
                    tags.insert(record.writerTag)
                }
                summary.records += 1
                summary.minTimestampNanos = min(summary.minTimestampNanos ?? .max, record.timestampNanos)
                summary.maxTimestampNanos = max(summary.maxTimestampNanos ?? 0, record.timestampNanos)
                expected = record.nextLSN
                summary.nextLSN = expected
                summary.dataEnd = next
                onRecord?(record)
            case .damaged(let damage):
                summary.damage.append(damage)
                // An overwritten frame reports LSNs behind the chain: never step back.
                expected = max(expected, damage.resumeLSN)
                summary.nextLSN = expected
                summary.dataEnd = next
            case .end(let end):
                switch end {
                case .footer(let footer):
                    summary.state = .sealed
                    if footer.nextLSN > summary.nextLSN {
                        // Events the footer promises but no frame holds: damage at the end.
                        summary.damage.append(
                            Damage(
                                segment: reader.name,
                                startOffset: summary.dataEnd,
                                endOffset: Int64(footer.dataEnd),
                                firstLostLSN: summary.nextLSN,
                                resumeLSN: footer.nextLSN,
                                reason: "frames missing before the footer"
                            )
                        )
                        summary.nextLSN = footer.nextLSN
                    }
                case .tornTail(let reason)
                where reader.fileSize - summary.dataEnd == Int64(SegmentFooter.frameLength):
                    // Exactly a footer's length of bad bytes at the very end: a sealed segment
                    // (trimmed to data + footer) whose footer is damaged, not a write cut
                    // short in preallocated space. Every record before it was read.
                    let reason = "footer damaged (\(reason)); all \(summary.records) records before it are intact"
                    summary.footerDamage = reason
                    summary.damage.append(
                        Damage(
                            segment: reader.name,
                            startOffset: summary.dataEnd,
                            endOffset: reader.fileSize,
                            firstLostLSN: summary.nextLSN,
                            resumeLSN: summary.nextLSN,
                            reason: reason
                        )
                    )
                case .tornTail(let reason):
                    summary.tornTail = reason
                case .zeros, .endOfFile, .limit:
                    break
                }
                return Result(summary: summary, header: header, end: end, writerTags: tags)
            }
            offset = next
        }
    }
}

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

/// Unix time in nanoseconds from the real-time clock.
public enum WallClock {
    @Sendable public static func now() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
    }

    /// A monotonic reading in nanoseconds, for durations.
    @Sendable public static func monotonic() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
    }
}
