import Encryption
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

extension WAL {
    struct Recovered {
        var segments: [SegmentSummary]
        var active: GroupCommit<PendingAppend>.ActiveSegment?
        var nextLSN: LSN
        /// Writer tags already in the active segment: this run must use another.
        var activeTags: Set<UInt16> = []
    }

    /// Scans every segment, decides with a ``RecoveryPlan``, and carries the plan out: unlinks
    /// incomplete segments, quarantines unreadable ones and damaged stretches, truncates a torn
    /// tail and reopens the active segment into `writer`.
    static func recover(
        configuration: WALConfiguration,
        writer: SegmentWriter,
        keyring: Keyring?,
        report: inout RecoveryReport,
        logger: Logger
    ) throws -> Recovered {
        let fileSystem = configuration.fileSystem
        let directory = configuration.directory
        let names = try fileSystem.listDirectory(directory)
            .compactMap { name in SegmentName.parse(name).map { (name, $0) } }
            .sorted { $0.1 < $1.1 }
            .map(\.0)
        let scans = try names.map { name in
            let path = directory + "/" + name
            let scan = try SegmentScan.summarize(path: path, fileSystem: fileSystem, keyring: keyring)
            // The one fact the plan needs beyond the scan, read only for the case that asks it.
            var allZeros: Bool?
            if scan.summary.headerDamage != nil && scan.summary.records == 0 {
                allZeros = try Self.isAllZeros(path: path, fileSystem: fileSystem)
            }
            return RecoveryPlan.Scanned(
                name: name,
                summary: scan.summary,
                createdNanos: scan.header.createdNanos,
                writerTags: scan.writerTags,
                allZeros: allZeros
            )
        }
        let plan = RecoveryPlan(scans)
        report.scannedSegments = plan.scannedSegments
        report.damagedSegments = plan.damagedSegments
        var segments = plan.segments
        for decision in plan.decisions {
            let path = directory + "/" + decision.name
            switch decision.disposition {
            case .removeIncomplete:
                try fileSystem.unlink(path)
                try fileSystem.syncDirectory(directory)
                logger.warning("wal.incomplete_segment_removed", metadata: ["wal.segment": "\(decision.name)"])
                continue
            case .quarantine(let reason):
                try fileSystem.rename(path, to: directory + "/" + Quarantine.directoryName + "/" + decision.name)
                try fileSystem.syncDirectory(directory)
                report.quarantinedSegments.append(decision.name)
                logger.error(
                    "wal.segment_quarantined",
                    metadata: ["wal.segment": "\(decision.name)", "error": "\(WALError(.corruptSegment, reason))"]
                )
                continue
            case .keep, .closeDamaged, .reopen:
                break
            }
            for damage in decision.damage {
                try Quarantine.save(
                    damage,
                    segmentPath: path,
                    walDirectory: directory,
                    detectedNanos: configuration.wallClock(),
                    fileSystem: fileSystem
                )
                report.damage.append(damage)
            }
            if decision.disposition == .closeDamaged {
                logger.warning("wal.damaged_segment_closed", metadata: ["wal.segment": "\(decision.name)"])
            }
        }
        var active: GroupCommit<PendingAppend>.ActiveSegment?
        if let reopen = plan.active {
            let path = directory + "/" + reopen.name
            let header: SegmentHeader
            do {
                let reader = try SegmentReader(path: path, fileSystem: fileSystem)
                defer { reader.close() }
                header = try reader.header()
            }
            let cipher = try RecordCipher.forSegment(header, keyring: keyring, name: reopen.name)
            let fd = try fileSystem.open(path, flags: O_RDWR, mode: 0)
            writer.adopt(fd: fd, path: path, cipher: cipher)
            try fileSystem.tryLock(fd, path: path)
            if let torn = reopen.tornTail {
                try fileSystem.truncate(fd, to: torn.offset, path: path)
                try fileSystem.allocate(
                    fd,
                    offset: torn.offset,
                    length: max(0, configuration.segmentBytes - torn.offset),
                    path: path
                )
                try fileSystem.fdatasync(fd, path: path)
                report.truncatedTailBytes += torn.bytes
                logger.warning(
                    "wal.torn_tail_truncated",
                    metadata: [
                        "wal.segment": "\(reopen.name)", "wal.offset": "\(torn.offset)", "wal.reason": "\(torn.reason)",
                    ]
                )
                let fileBytes = try fileSystem.fileSize(fd, path: path)
                if let index = segments.lastIndex(where: { $0.name == reopen.name }) {
                    segments[index].fileBytes = fileBytes
                }
            }
            let summary = reopen.summary
            active = .init(
                firstLSN: summary.firstLSN,
                nextLSN: summary.nextLSN,
                dataEnd: summary.dataEnd,
                records: summary.records,
                createdNanos: reopen.createdNanos,
                minTimestampNanos: summary.minTimestampNanos ?? 0,
                maxTimestampNanos: summary.maxTimestampNanos ?? 0,
                broken: false,
                retired: cipher?.keyID != keyring?.current?.id
            )
            if cipher?.keyID != keyring?.current?.id {
                logger.info(
                    "wal.segment_retired",
                    metadata: [
                        "wal.segment": "\(reopen.name)",
                        "wal.reason": "written under another wal.encryption setting; sealed before the next append",
                    ]
                )
            }
        }
        return Recovered(
            segments: segments,
            active: active,
            nextLSN: plan.nextLSN,
            activeTags: plan.active?.writerTags ?? []
        )
    }

    static func isAllZeros(path: String, fileSystem: any WALFileSystem) throws -> Bool {
        var reader = try SegmentReader(path: path, fileSystem: fileSystem)
        defer { reader.close() }
        var offset: Int64 = 0
        while offset < reader.fileSize {
            let chunk = try reader.bytes(at: offset, count: SegmentReader.windowSize)
            if chunk.isEmpty { break }
            if chunk.contains(where: { $0 != 0 }) { return false }
            offset += Int64(chunk.count)
        }
        return true
    }
}
