/// The pure state of the WAL writer: queued appends, LSN assignment, batch formation,
/// segment rolling, the batch being written and the acknowledgement deadline. It does no I/O
/// and reads no clock; the writer thread feeds it events, performs the actions it returns,
/// and reports how they went, and the watchdog asks it which appends are late.
///
/// Every append has exactly one owner at a time: the queue, the in-flight batch (the writer
/// state ``Writer/writing(_:)``), or whoever took it out through ``written()``,
/// ``writeFailed()``, ``expire(now:)``, ``rollFailed(previousClosed:)`` or ``halt(_:)``. So an
/// append is completed once, by whichever of the writer and the watchdog gets there first.
///
/// Group commit falls out of the shape: appends queue while the writer is busy writing and
/// syncing the previous batch, and the next ``nextStep(now:)`` takes all of them (up to the
/// batch limits) as one write and one `fdatasync`.
struct GroupCommit<Item> {
    typealias Limits = GroupCommitLimits

    /// The segment appends currently go to.
    struct ActiveSegment: Equatable, Sendable {
        var firstLSN: LSN
        var nextLSN: LSN
        /// Where the next frame goes; everything before it is written (or being written).
        var dataEnd: Int64
        var records: UInt64
        var createdNanos: UInt64
        var minTimestampNanos: UInt64
        var maxTimestampNanos: UInt64
        /// A write or fsync failed here: never write to it again, never seal it.
        var broken: Bool
        /// Written under another `wal.encryption` setting than this run's (encrypted or not,
        /// another key): sealed and replaced before the first append, so that what is appended
        /// from now on is protected as configured.
        var retired = false

        var footer: SegmentFooter {
            SegmentFooter(
                recordCount: self.records,
                firstLSN: self.firstLSN,
                nextLSN: self.nextLSN,
                minTimestampNanos: self.minTimestampNanos,
                maxTimestampNanos: self.maxTimestampNanos,
                dataEnd: UInt64(self.dataEnd)
            )
        }
    }

    struct Queued {
        var item: Item
        var frameLength: Int
        var eventCount: UInt32
        /// Monotonic nanoseconds when the append arrived.
        var enqueuedAt: UInt64
    }

    /// An append with its place in the log.
    struct Placed {
        var item: Item
        var lsn: LSN
        var eventCount: UInt32
        var frameLength: Int
        /// Monotonic nanoseconds when the append arrived.
        var enqueuedAt: UInt64 = 0
    }

    /// Frames to write contiguously at `offset` of the active segment, then fsync.
    struct Batch {
        var segmentFirstLSN: LSN
        var offset: Int64
        var length: Int
        var timestampNanos: UInt64
        var records: [Placed]
        var nextLSN: LSN
        /// The active segment as it stands once this batch is durable: what the catalog
        /// shows after ``Catalog/applied(_:)``, so both count records and bytes the same way.
        var segmentAfter: ActiveSegment
    }

    /// The batch between ``Step/write(_:)`` and its outcome.
    struct InFlight {
        var segmentFirstLSN: LSN
        /// The appends still waiting for this batch's outcome; emptied when the deadline
        /// fails them first.
        var records: [Placed]
        /// The earliest arrival among `records`; the deadline is measured from it.
        var oldestEnqueuedAt: UInt64
    }

    /// The appends the acknowledgement deadline took away.
    struct Expired {
        /// Still queued, never written: certainly not stored.
        var queued: [Item] = []
        /// In a write or fsync that has not returned: maybe stored.
        var inFlight: [Placed] = []

        var isEmpty: Bool { self.queued.isEmpty && self.inFlight.isEmpty }
    }

    enum Step {
        /// Nothing queued: wait for ``enqueue(_:frameLength:eventCount:)`` to ask for a wake-up.
        case sleep
        /// Seal `sealing` (when given and healthy) and open a new segment starting at `firstLSN`.
        case roll(sealing: ActiveSegment?, closing: ActiveSegment?, firstLSN: LSN)
        case write(Batch)
        /// Closed and drained: release the active segment and end the writer.
        case stop(ActiveSegment?)
    }

    enum Enqueue {
        case accepted(wakeWriter: Bool)
        case rejected(WALError)
    }

    /// What the writer thread is doing, as far as the machine knows.
    enum Writer {
        case sleeping
        case running
        /// Writing and syncing a batch; its outcome is reported with ``written()`` or
        /// ``writeFailed()``.
        case writing(InFlight)
        case stopped
    }

    let limits: Limits
    private(set) var nextLSN: LSN
    private(set) var segment: ActiveSegment?
    private var queue: [Queued] = []
    private var queueHead = 0
    private(set) var queuedBytes = 0
    private(set) var writer: Writer = .running
    private(set) var closing = false
    /// Set while the WAL refuses appends (hard watermark, disk full).
    var refusal: WALError?
    /// Set for good once the writer can no longer prove it is alone (its lock was lost):
    /// every append is refused until the process restarts.
    private(set) var halted: WALError?

    init(limits: Limits, nextLSN: LSN, segment: ActiveSegment?) {
        self.limits = limits
        self.nextLSN = nextLSN
        self.segment = segment
    }

    var queuedCount: Int { self.queue.count - self.queueHead }

    mutating func enqueue(_ item: Item, frameLength: Int, eventCount: UInt32, enqueuedAt: UInt64 = 0) -> Enqueue {
        if self.closing { return .rejected(WALError(.closed, "the WAL is closing")) }
        if frameLength > self.limits.maxFrameBytes {
            return .rejected(
                WALError(
                    .recordTooLarge,
                    "record of \(frameLength) bytes exceeds the limit of \(self.limits.maxFrameBytes) bytes"
                )
            )
        }
        if let halted = self.halted { return .rejected(halted) }
        if let refusal = self.refusal { return .rejected(refusal) }
        if self.queuedCount > 0 && self.queuedBytes + frameLength > self.limits.maxQueuedBytes {
            return .rejected(
                WALError(.overloaded, "\(self.queuedBytes) bytes are already waiting for the disk; retry shortly")
            )
        }
        self.queue.append(Queued(item: item, frameLength: frameLength, eventCount: eventCount, enqueuedAt: enqueuedAt))
        self.queuedBytes += frameLength
        if case .sleeping = self.writer {
            self.writer = .running
            return .accepted(wakeWriter: true)
        }
        return .accepted(wakeWriter: false)
    }

    /// What the writer should do next. Call only when the previous step's outcome was reported
    /// (a write with ``written()`` or ``writeFailed()``).
    mutating func nextStep(now: UInt64) -> Step {
        if case .writing(let batch) = self.writer {
            preconditionFailure("next step asked before the batch at \(batch.segmentFirstLSN) was reported")
        }
        guard self.queuedCount > 0 else {
            if self.closing {
                self.writer = .stopped
                return .stop(self.segment)
            }
            self.writer = .sleeping
            return .sleep
        }
        let head = self.queue[self.queueHead]
        if let segment = self.segment, !segment.broken, !self.mustRoll(segment, before: head, now: now) {
            let batch = self.takeBatch(segment: segment, now: now)
            self.writer = .writing(
                InFlight(
                    segmentFirstLSN: batch.segmentFirstLSN,
                    records: batch.records,
                    oldestEnqueuedAt: batch.records.map(\.enqueuedAt).min() ?? 0
                )
            )
            return .write(batch)
        }
        let current = self.segment
        let healthy = current.flatMap { $0.broken ? nil : $0 }
        return .roll(sealing: healthy, closing: current, firstLSN: self.nextLSN)
    }

    private func mustRoll(_ segment: ActiveSegment, before head: Queued, now: UInt64) -> Bool {
        if segment.retired { return true }
        let capacity = self.limits.segmentBytes - Int64(SegmentFooter.frameLength)
        if segment.dataEnd + Int64(head.frameLength) > capacity { return true }
        if let maxAge = self.limits.segmentMaxAgeNanos, segment.records > 0,
            now >= segment.createdNanos && now - segment.createdNanos >= maxAge
        {
            return true
        }
        return false
    }

    private mutating func takeBatch(segment: ActiveSegment, now: UInt64) -> Batch {
        let capacity = self.limits.segmentBytes - Int64(SegmentFooter.frameLength)
        var records: [Placed] = []
        var length = 0
        var lsn = self.nextLSN
        while self.queueHead < self.queue.count, records.count < self.limits.maxBatchRecords {
            let next = self.queue[self.queueHead]
            let fitsBatch = records.isEmpty || length + next.frameLength <= self.limits.maxBatchBytes
            let fitsSegment = segment.dataEnd + Int64(length + next.frameLength) <= capacity
            guard fitsBatch && fitsSegment else { break }
            records.append(
                Placed(
                    item: next.item,
                    lsn: lsn,
                    eventCount: next.eventCount,
                    frameLength: next.frameLength,
                    enqueuedAt: next.enqueuedAt
                )
            )
            length += next.frameLength
            lsn = lsn + UInt64(next.eventCount)
            self.queueHead += 1
        }
        self.queuedBytes -= length
        if self.queueHead == self.queue.count {
            self.queue.removeAll(keepingCapacity: true)
            self.queueHead = 0
        } else if self.queueHead > 4096 {
            self.queue.removeFirst(self.queueHead)
            self.queueHead = 0
        }
        // The LSNs are spent from here on, whatever the outcome: a failed batch leaves a gap
        // rather than reusing numbers that might already be on disk.
        self.nextLSN = lsn
        var updated = segment
        updated.dataEnd += Int64(length)
        updated.nextLSN = lsn
        updated.records += UInt64(records.count)
        if segment.records == 0 { updated.minTimestampNanos = now }
        updated.maxTimestampNanos = max(segment.maxTimestampNanos, now)
        self.segment = updated
        return Batch(
            segmentFirstLSN: segment.firstLSN,
            offset: segment.dataEnd,
            length: length,
            timestampNanos: now,
            records: records,
            nextLSN: lsn,
            segmentAfter: updated
        )
    }

    /// The batch is written and synced. Returns the appends it acknowledges: all of them,
    /// less any the deadline already failed.
    mutating func written() -> [Placed] {
        guard case .writing(let batch) = self.writer else { return [] }
        self.writer = .running
        return batch.records
    }

    /// Writing or syncing the in-flight batch failed: its appends fail (they are returned,
    /// less any the deadline already failed), and the segment is abandoned so the same
    /// descriptor is never synced and trusted again.
    mutating func writeFailed() -> [Placed] {
        guard case .writing(let batch) = self.writer else { return [] }
        self.writer = .running
        if self.segment?.firstLSN == batch.segmentFirstLSN { self.segment?.broken = true }
        return batch.records
    }

    /// The new segment is created, preallocated, and its header durable.
    mutating func rolled(firstLSN: LSN, now: UInt64, dataStart: Int64 = Int64(SegmentHeader.size)) {
        precondition(firstLSN == self.nextLSN, "rolled to \(firstLSN) but the next LSN is \(self.nextLSN)")
        self.segment = ActiveSegment(
            firstLSN: firstLSN,
            nextLSN: firstLSN,
            dataEnd: dataStart,
            records: 0,
            createdNanos: now,
            minTimestampNanos: 0,
            maxTimestampNanos: 0,
            broken: false
        )
    }

    /// A new segment could not be created (typically ENOSPC): everything queued fails with
    /// `error`, because waiting would break the ack-time bound. Returns the failed items.
    mutating func rollFailed(previousClosed: Bool) -> [Item] {
        if previousClosed { self.segment = nil }
        return self.drainQueue()
    }

    /// Takes away the appends that have waited longer than ``GroupCommitLimits/ackTimeoutNanos``
    /// at monotonic time `now`: the queued ones that arrived too long ago (the disk is too slow
    /// to take them in time; never written), and the whole in-flight batch when its oldest
    /// append did (stuck in a write or fsync that has not returned; outcome unknown). An
    /// append that has waited exactly the timeout is still in time.
    ///
    /// The in-flight batch stays in flight with no appends left: its outcome, when it comes,
    /// completes nobody.
    mutating func expire(now: UInt64) -> Expired {
        guard let timeout = self.limits.ackTimeoutNanos, now > timeout else { return Expired() }
        let deadline = now - timeout
        var expired = Expired()
        while self.queueHead < self.queue.count, self.queue[self.queueHead].enqueuedAt < deadline {
            let entry = self.queue[self.queueHead]
            expired.queued.append(entry.item)
            self.queuedBytes -= entry.frameLength
            self.queueHead += 1
        }
        if self.queueHead == self.queue.count {
            self.queue.removeAll(keepingCapacity: true)
            self.queueHead = 0
        }
        if case .writing(var batch) = self.writer, !batch.records.isEmpty, batch.oldestEnqueuedAt < deadline {
            expired.inFlight = batch.records
            batch.records = []
            self.writer = .writing(batch)
        }
        return expired
    }

    /// Refuses every append from now on with `error`, and returns the queued ones (never
    /// written) so they fail with it too. The batch being written, if any, completes.
    mutating func halt(_ error: WALError) -> [Item] {
        self.halted = error
        return self.drainQueue()
    }

    /// Stops intake; the writer drains what is queued and then returns ``Step/stop(_:)``.
    /// Returns whether the writer must be woken.
    mutating func close() -> Bool {
        self.closing = true
        if case .sleeping = self.writer {
            self.writer = .running
            return true
        }
        return false
    }

    private mutating func drainQueue() -> [Item] {
        let items = self.queue[self.queueHead...].map(\.item)
        self.queue.removeAll(keepingCapacity: true)
        self.queueHead = 0
        self.queuedBytes = 0
        return items
    }
}
