import Logging
import SluiceCore
import Synchronization

/// Reads durable records from the WAL in LSN order, waiting for new ones at the end: what
/// the forwarder drains.
///
/// A tail never sees a record before its `fdatasync` completed, so nothing it hands out can
/// vanish in a crash. Damaged records are skipped, reported by LSN range and quarantined.
/// The first record returned may start before the requested LSN (a record is read whole);
/// consumers skip events below their position.
///
/// - Important: use a tail from one task at a time.
public final class WALTail: @unchecked Sendable {
    private let wal: WAL
    /// The next LSN to hand out.
    public private(set) var position: LSN
    private var reader: SegmentReader?
    private var segmentFirstLSN: LSN?
    private var offset: Int64 = 0
    private var expected: LSN = .zero
    /// Where reading stands (segment, byte offset), for ``unreadBytes()`` from other tasks.
    private let readPosition = Mutex<(segment: LSN?, offset: Int64, position: LSN)>((nil, 0, .zero))

    init(wal: WAL, position: LSN) {
        self.wal = wal
        self.position = position
        self.readPosition.withLock { $0.position = position }
    }

    deinit { self.reader?.close() }

    /// The next durable records from ``position``, waiting until at least one exists.
    ///
    /// - Returns: up to `maxRecords` records (and roughly `maxBytes`); empty only when the
    ///   WAL closed or the task was cancelled.
    public func next(maxRecords: Int = 1024, maxBytes: Int = 4 << 20) async throws -> [WALRecord] {
        while !Task.isCancelled {
            let snapshot = self.wal.tailSnapshot()
            if self.position >= snapshot.durableNextLSN {
                if snapshot.closed { return [] }
                await self.wal.waitForDurable(beyond: self.position)
                continue
            }
            let before = self.position
            let records = try await offPool {
                defer {
                    self.readPosition.withLock { $0 = (self.segmentFirstLSN, self.offset, self.position) }
                }
                return try self.read(snapshot, maxRecords: maxRecords, maxBytes: maxBytes)
            }
            if !records.isEmpty { return records }
            if self.position == before {
                // Durable data exists but could not be read yet (a segment being created or
                // removed under us): back off briefly instead of spinning.
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        return []
    }

    /// Reads what the snapshot says is durable; runs on a blocking thread.
    private func read(_ snapshot: WAL.TailSnapshot, maxRecords: Int, maxBytes: Int) throws -> [WALRecord] {
        var records: [WALRecord] = []
        var bytes = 0
        while records.count < maxRecords && bytes < maxBytes && self.position < snapshot.durableNextLSN {
            // The reader serves cached bytes only up to the limit they were read under, so a
            // segment that grew (or was sealed) since is read again where it is new.
            guard let segment = try self.positionReader(in: snapshot) else { break }
            let limit = segment.dataEnd
            let (item, next) = try self.reader!.next(at: self.offset, expected: self.expected, limit: limit)
            switch item {
            case .record(let record):
                self.offset = next
                self.expected = record.nextLSN
                if record.nextLSN > self.position {
                    records.append(record)
                    bytes += record.frameLength
                    self.position = record.nextLSN
                }
            case .damaged(let damage):
                self.wal.report(damage, segmentPath: self.wal.segmentDirectory + "/" + segment.name)
                self.offset = next
                self.expected = max(self.expected, damage.resumeLSN)
                self.position = max(self.position, damage.resumeLSN)
            case .end(let end):
                if case .tornTail(let reason) = end {
                    // Inside the durable range this is damage at the end of the segment.
                    let damage = Damage(
                        segment: segment.name,
                        startOffset: self.offset,
                        endOffset: limit,
                        firstLostLSN: self.expected,
                        resumeLSN: segment.nextLSN,
                        reason: reason
                    )
                    if damage.lostEvents > 0 {
                        self.wal.report(damage, segmentPath: self.wal.segmentDirectory + "/" + segment.name)
                    }
                }
                if segment.state == .active && segment.nextLSN == snapshot.durableNextLSN {
                    return records  // caught up with the writer
                }
                // Done with this segment: continue at the next one.
                self.position = max(self.position, segment.nextLSN)
                self.closeReader()
                guard let following = snapshot.segments.first(where: { $0.firstLSN > segment.firstLSN }) else {
                    return records
                }
                self.position = max(self.position, following.firstLSN)
            }
        }
        return records
    }

    /// Durable bytes (frames) this tail has not read yet: how far it is behind the writer.
    /// Safe to call from any task.
    public func unreadBytes() -> Int64 {
        let (segment, offset, position) = self.readPosition.withLock { $0 }
        let snapshot = self.wal.tailSnapshot()
        var total: Int64 = 0
        for summary in snapshot.segments {
            if let segment, summary.firstLSN < segment { continue }
            if summary.firstLSN == segment {
                total += max(0, summary.dataEnd - offset)
            } else if summary.nextLSN > position {
                total += max(0, summary.dataEnd - Int64(SegmentHeader.size))
            }
        }
        return total
    }

    /// Makes sure the reader is open on the segment holding ``position``.
    private func positionReader(in snapshot: WAL.TailSnapshot) throws -> SegmentSummary? {
        if let first = self.segmentFirstLSN, self.reader != nil,
            let segment = snapshot.segments.first(where: { $0.firstLSN == first }),
            self.position < segment.nextLSN || segment.state == .active
        {
            return segment
        }
        self.closeReader()
        guard !snapshot.segments.isEmpty else { return nil }
        // The last segment starting at or before the position; if retention already removed
        // it, the oldest one left.
        let segment =
            snapshot.segments.last(where: {
                $0.firstLSN <= self.position && self.position < max($0.nextLSN, $0.firstLSN + 1)
            })
            ?? snapshot.segments.first(where: { $0.firstLSN >= self.position })
            ?? snapshot.segments.last!
        if segment.firstLSN > self.position {
            self.wal.logger.warning(
                "wal.tail_gap",
                metadata: ["wal.position": "\(self.position)", "wal.oldest_available": "\(segment.firstLSN)"]
            )
            self.position = segment.firstLSN
        }
        self.reader = try SegmentReader(
            path: self.wal.segmentDirectory + "/" + segment.name,
            fileSystem: self.wal.configuration.fileSystem,
            keyring: self.wal.keyring
        )
        self.segmentFirstLSN = segment.firstLSN
        self.offset = self.reader?.dataStart ?? Int64(SegmentHeader.size)
        self.expected = segment.firstLSN
        return segment
    }

    private func closeReader() {
        self.reader?.close()
        self.reader = nil
        self.segmentFirstLSN = nil
    }
}
