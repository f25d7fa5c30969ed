import Encryption

#if canImport(Glibc)
import Glibc
#endif

/// Read-only views of a WAL directory for operators: segments, cursors and their lag,
/// records, and a full verification.
///
/// Everything here opens files read-only and takes no lock, so it is safe while a gateway
/// writes. The one exception, ``setCursor(_:to:)``, takes the writer lock and refuses to run
/// beside a live writer.
public struct WALInspector: Sendable {
    public let directory: String
    private let fileSystem: any WALFileSystem
    /// The `wal.encryption` keys: what reads the records of encrypted segments.
    let keyring: Keyring?

    /// - Throws: ``WALError/Code/notFound`` when `directory` does not exist or holds no WAL.
    public init(directory: String, fileSystem: any WALFileSystem = SystemFileSystem()) throws {
        try self.init(directory: directory, fileSystem: fileSystem, keyring: nil)
    }

    /// - Parameter keyring: the keys of `wal.encryption`, to read encrypted segments' records.
    package init(directory: String, fileSystem: any WALFileSystem = SystemFileSystem(), keyring: Keyring?) throws {
        self.keyring = keyring
        guard fileSystem.fileExists(directory) else {
            throw WALError(.notFound, "\(directory) does not exist")
        }
        let names = try fileSystem.listDirectory(directory)
        guard
            names.contains(WriterLock.fileName) || names.contains(WriterSettings.fileName)
                || names.contains(where: { SegmentName.parse($0) != nil })
        else {
            throw WALError(.notFound, "\(directory) is not a Sluice WAL directory (no wal.lock, no segments)")
        }
        self.directory = directory
        self.fileSystem = fileSystem
    }

    private func segmentNames() throws -> [String] {
        try self.fileSystem.listDirectory(self.directory)
            .filter { SegmentName.parse($0) != nil }
            .sorted()
    }

    /// The ids of keys that encrypted segments here were written under and that this
    /// inspector was not given, with the first segment of each: what an operator must add
    /// before records can be read.
    package func missingKeys() throws -> [(keyID: String, segment: String)] {
        var missing: [(keyID: String, segment: String)] = []
        for name in try self.segmentNames() {
            let reader = try SegmentReader(path: self.directory + "/" + name, fileSystem: self.fileSystem)
            defer { reader.close() }
            guard let id = (try? reader.header())?.keyBlock?.keyID else { continue }
            if (try? self.keyring?.key(id)) == nil && !missing.contains(where: { $0.keyID == id }) {
                missing.append((id, name))
            }
        }
        return missing
    }

    /// The segments, oldest first. Sealed segments are summarised from their footers unless
    /// `deep`; the others are scanned.
    public func segments(deep: Bool = false) throws -> [SegmentSummary] {
        let names = try self.segmentNames()
        var result: [SegmentSummary] = []
        for (index, name) in names.enumerated() {
            var summary = try SegmentScan.summarize(
                path: self.directory + "/" + name,
                fileSystem: self.fileSystem,
                keyring: self.keyring,
                deep: deep
            ).summary
            if index == names.count - 1 && summary.state == .unsealed && summary.headerDamage == nil
                && summary.footerDamage == nil
            {
                summary.state = .active
            }
            result.append(summary)
        }
        return result
    }

    /// The process holding the writer lock, if any.
    ///
    /// A writer locks the directory itself (see ``WriterLock``), so this holds even when
    /// `wal.lock` was deleted; the pid comes from `wal.lock`, else from `wal.settings`, else -1.
    public func writerPID() -> Int32? {
        do {
            let fd = try self.fileSystem.lockDirectory(self.directory, waitMilliseconds: 0)
            self.fileSystem.close(fd)
            return nil
        } catch let error as WALError where error.code == .locked {
            return WriterLock.holderPID(directory: self.directory)
                ?? WriterSettings.read(directory: self.directory, fileSystem: self.fileSystem)?.pid ?? -1
        } catch {
            return nil
        }
    }

    /// The budget the last writer to open this directory enforced (from `wal.settings`; the
    /// running one's, when ``writerPID()`` is not nil), or nil when none recorded one.
    public func writerSettings() -> WriterSettings? {
        WriterSettings.read(directory: self.directory, fileSystem: self.fileSystem)
    }

    public func cursors() throws -> [CursorPosition] {
        let directory = self.directory + "/cursors"
        guard self.fileSystem.fileExists(directory) else { return [] }
        return try self.fileSystem.listDirectory(directory)
            .filter { $0.hasSuffix(CursorFile.suffix) }
            .sorted()
            .map { name in
                try CursorFile.read(
                    path: directory + "/" + name,
                    name: String(name.dropLast(CursorFile.suffix.count)),
                    fileSystem: self.fileSystem
                )
            }
    }

    /// Files in `quarantine/` (damaged bytes and their JSON notes).
    public func quarantine() throws -> [String] {
        let directory = self.directory + "/" + Quarantine.directoryName
        guard self.fileSystem.fileExists(directory) else { return [] }
        return try self.fileSystem.listDirectory(directory).sorted()
    }

    /// Calls `body` for each record holding an event at or after `from`, in LSN order, and
    /// for each damaged stretch met on the way; stops when `body` returns false.
    public func records(from: LSN, _ body: (DumpItem) throws -> Bool) throws {
        let segments = try self.segments()
        guard let startIndex = segments.lastIndex(where: { $0.firstLSN <= from }) ?? (segments.isEmpty ? nil : 0)
        else { return }
        for segment in segments[startIndex...] where segment.nextLSN > from || segment.state == .active {
            var reader = try SegmentReader(
                path: self.directory + "/" + segment.name,
                fileSystem: self.fileSystem,
                keyring: self.keyring
            )
            defer { reader.close() }
            var offset = reader.dataStart
            var expected = segment.firstLSN
            scan: while true {
                let (item, next) = try reader.next(at: offset, expected: expected)
                switch item {
                case .record(let record):
                    expected = record.nextLSN
                    if record.nextLSN > from {
                        guard try body(.record(record, segment: segment.name, offset: offset)) else { return }
                    }
                case .damaged(let damage):
                    expected = max(expected, damage.resumeLSN)
                    guard try body(.damage(damage)) else { return }
                case .end:
                    break scan
                }
                offset = next
            }
        }
    }

    /// One item of ``records(from:_:)``.
    public enum DumpItem: Sendable {
        case record(WALRecord, segment: String, offset: Int64)
        case damage(Damage)
    }

    /// Totals, pressure and cursor lag.
    public func stat(budget: DiskBudget = DiskBudget(), now: UInt64 = WallClock.now()) throws -> WALStat {
        let segments = try self.segments()
        let cursors = try self.cursors()
        let bytes = segments.reduce(Int64(0)) { $0 + $1.fileBytes }
        let available = (try? self.fileSystem.volumeSpace(self.directory).available) ?? .max
        let firstLSN = segments.first?.firstLSN ?? .zero
        let nextLSN = segments.last?.nextLSN ?? cursors.map(\.lsn).max() ?? .zero
        var lags: [WALStat.CursorLag] = []
        for cursor in cursors {
            var lag = WALStat.CursorLag(
                name: cursor.name,
                lsn: cursor.lsn,
                updatedNanos: cursor.updatedNanos,
                lagEvents: nextLSN - cursor.lsn,
                lagBytes: 0,
                oldestUnconsumedAgeSeconds: nil
            )
            if lag.lagEvents > 0 {
                var found = false
                for segment in segments where segment.nextLSN > cursor.lsn {
                    if found {
                        lag.lagBytes += segment.dataEnd - Int64(SegmentHeader.size)
                        continue
                    }
                    try self.records(from: cursor.lsn) { item in
                        if case .record(let record, let name, let offset) = item {
                            lag.lagBytes += segment.dataEnd - offset
                            lag.oldestUnconsumedAgeSeconds =
                                now > record.timestampNanos ? Double(now - record.timestampNanos) / 1e9 : 0
                            _ = name
                        }
                        return false
                    }
                    found = true
                }
            }
            lags.append(lag)
        }
        return WALStat(
            directory: self.directory,
            segments: segments.count,
            bytes: bytes,
            firstLSN: firstLSN,
            nextLSN: nextLSN,
            records: segments.reduce(0) { $0 + $1.records },
            volumeAvailableBytes: available,
            budgetBytes: budget.maxBytes,
            minFreeBytes: budget.minFreeBytes,
            pressure: budget.pressure(walBytes: bytes, volumeAvailable: available),
            pressureReason: budget.pressureReason(walBytes: bytes, volumeAvailable: available),
            writerPID: self.writerPID(),
            budgetSource: nil,
            cursors: lags,
            quarantinedFiles: try self.quarantine().count
        )
    }

    /// Reads every frame of every segment and checks checksums, LSN continuity, footers and
    /// cursors.
    public func verify() throws -> VerifyReport {
        var report = VerifyReport(directory: self.directory)
        let names = try self.segmentNames()
        var previous: SegmentSummary?
        for (index, name) in names.enumerated() {
            let isLast = index == names.count - 1
            let summary: SegmentSummary
            do {
                summary = try SegmentScan.summarize(
                    path: self.directory + "/" + name,
                    fileSystem: self.fileSystem,
                    keyring: self.keyring,
                    deep: true
                )
                .summary
            } catch let error as WALError where error.code == .corruptSegment {
                report.problems.append(.init(segment: name, detail: error.message, firstLSN: nil, lastLSN: nil))
                continue
            }
            report.segments += 1
            report.records += summary.records
            for damage in summary.damage {
                report.problems.append(
                    .init(
                        segment: name,
                        detail: "\(damage.reason) at bytes \(damage.startOffset)..<\(damage.endOffset)",
                        firstLSN: damage.lostEvents > 0 ? damage.firstLostLSN : nil,
                        lastLSN: damage.lostEvents > 0 ? LSN(damage.resumeLSN.rawValue - 1) : nil
                    )
                )
            }
            if let tail = summary.tornTail {
                // The active segment's tail may be a write in progress; elsewhere it is what
                // a crash or a failed write left, never acknowledged.
                report.notes.append(
                    "\(name): incomplete write at byte \(summary.dataEnd) (\(tail)); never acknowledged"
                )
            }
            if !isLast && summary.state != .sealed && summary.footerDamage == nil {
                report.notes.append("\(name): not sealed (the writer stopped or abandoned it); fully scanned")
            }
            if let previous, summary.firstLSN < previous.nextLSN {
                report.problems.append(
                    .init(
                        segment: name,
                        detail:
                            "starts at LSN \(summary.firstLSN), inside \(previous.name) (ends at \(previous.nextLSN))",
                        firstLSN: summary.firstLSN,
                        lastLSN: LSN(previous.nextLSN.rawValue - 1)
                    )
                )
            }
            previous = summary
        }
        // Whole segments a writer moved aside at start-up (not one intact frame in them) are
        // no longer in the directory's LSN chain; say so, or verify would look clean.
        for file in try self.quarantine() where SegmentName.parse(file) != nil {
            report.notes.append(
                "\(Quarantine.directoryName)/\(file): a whole segment moved aside at start-up (no intact frame in it)"
            )
        }
        let cursorDirectory = self.directory + "/cursors"
        if self.fileSystem.fileExists(cursorDirectory) {
            for file in try self.fileSystem.listDirectory(cursorDirectory) where file.hasSuffix(CursorFile.suffix) {
                let name = String(file.dropLast(CursorFile.suffix.count))
                do {
                    let cursor = try CursorFile.read(
                        path: cursorDirectory + "/" + file,
                        name: name,
                        fileSystem: self.fileSystem
                    )
                    if let end = previous?.nextLSN, cursor.lsn > end {
                        report.problems.append(
                            .init(
                                segment: nil,
                                detail: "cursor \(name) at \(cursor.lsn) is past the end of the WAL (\(end))",
                                firstLSN: nil,
                                lastLSN: nil
                            )
                        )
                    }
                } catch {
                    report.problems.append(
                        .init(segment: nil, detail: "cursor \(name): \(error)", firstLSN: nil, lastLSN: nil)
                    )
                }
            }
        }
        return report
    }

    /// Moves cursor `name` (creating it if needed). Refuses while a writer holds the lock:
    /// the writer keeps cursors in memory and would overwrite the change.
    public func setCursor(_ name: String, to lsn: LSN, now: UInt64 = WallClock.now()) throws -> CursorPosition {
        try CursorFile.validate(name: name)
        let lock = try WriterLock.acquire(
            directory: self.directory,
            fileSystem: self.fileSystem,
            waitMilliseconds: 1000
        )
        defer { lock.release(fileSystem: self.fileSystem) }
        let cursorDirectory = self.directory + "/cursors"
        try self.fileSystem.makeDirectory(cursorDirectory)
        let path = cursorDirectory + "/" + name + CursorFile.suffix
        if !self.fileSystem.fileExists(path) {
            try CursorFile.create(
                directory: cursorDirectory,
                name: name,
                lsn: lsn,
                now: now,
                fileSystem: self.fileSystem
            )
        } else {
            var file = try CursorFile(path: path, name: name, fileSystem: self.fileSystem)
            defer { file.close() }
            _ = try file.store(lsn: lsn, now: now)
        }
        return try CursorFile.read(path: path, name: name, fileSystem: self.fileSystem)
    }
}
