import Encryption

#if canImport(Glibc)
import Glibc
#endif

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
        keyring: Keyring? = nil,
        deep: Bool = false,
        onRecord: ((WALRecord) -> Void)? = nil
    ) throws -> Result {
        var reader = try SegmentReader(path: path, fileSystem: fileSystem, keyring: keyring)
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
                headerDamage: headerDamage?.reason,
                keyID: header.keyBlock?.keyID
            )
            return Result(summary: summary, header: header, end: .footer(footer))
        }
        var summary = SegmentSummary(
            name: reader.name,
            firstLSN: header.firstLSN,
            nextLSN: header.firstLSN,
            records: 0,
            dataEnd: reader.dataStart,
            fileBytes: reader.fileSize,
            minTimestampNanos: nil,
            maxTimestampNanos: nil,
            state: .unsealed,
            damage: headerDamage.map { [$0] } ?? [],
            tornTail: nil,
            headerDamage: headerDamage?.reason,
            keyID: header.keyBlock?.keyID
        )
        var offset = reader.dataStart
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
