/// The pure state of the WAL writer: queued appends, LSN assignment, batch formation and
/// segment rolling. It does no I/O and reads no clock; the writer thread feeds it events,
/// performs the actions it returns, and reports how they went.
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
    }

    /// Frames to write contiguously at `offset` of the active segment, then fsync.
    struct Batch {
        var segmentFirstLSN: LSN
        var offset: Int64
        var length: Int
        var timestampNanos: UInt64
        var records: [Placed]
        var nextLSN: LSN
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

    private enum Writer { case sleeping, running, stopped }

    let limits: Limits
    private(set) var nextLSN: LSN
    private(set) var segment: ActiveSegment?
    private var queue: [Queued] = []
    private var queueHead = 0
    private(set) var queuedBytes = 0
    private var writer: Writer = .running
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
        if self.writer == .sleeping {
            self.writer = .running
            return .accepted(wakeWriter: true)
        }
        return .accepted(wakeWriter: false)
    }

    /// What the writer should do next. Call only when the previous step's outcome was reported.
    mutating func nextStep(now: UInt64) -> Step {
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
            return .write(self.takeBatch(segment: segment, now: now))
        }
        let current = self.segment
        let healthy = current.flatMap { $0.broken ? nil : $0 }
        return .roll(sealing: healthy, closing: current, firstLSN: self.nextLSN)
    }

    private func mustRoll(_ segment: ActiveSegment, before head: Queued, now: UInt64) -> Bool {
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
                Placed(item: next.item, lsn: lsn, eventCount: next.eventCount, frameLength: next.frameLength)
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
        let batch = Batch(
            segmentFirstLSN: segment.firstLSN,
            offset: segment.dataEnd,
            length: length,
            timestampNanos: now,
            records: records,
            nextLSN: lsn
        )
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
        return batch
    }

    /// The new segment is created, preallocated, and its header durable.
    mutating func rolled(firstLSN: LSN, now: UInt64) {
        precondition(firstLSN == self.nextLSN, "rolled to \(firstLSN) but the next LSN is \(self.nextLSN)")
        self.segment = ActiveSegment(
            firstLSN: firstLSN,
            nextLSN: firstLSN,
            dataEnd: Int64(SegmentHeader.size),
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

    /// Writing or syncing `batch` failed: its appends fail, and the segment is abandoned so
    /// the same descriptor is never synced and trusted again.
    mutating func writeFailed(segmentFirstLSN: LSN) {
        if self.segment?.firstLSN == segmentFirstLSN { self.segment?.broken = true }
    }

    /// Removes the appends still queued that arrived before `deadline` (the disk is too slow
    /// to take them in time) and returns them; they were never written.
    mutating func expire(enqueuedBefore deadline: UInt64) -> [Item] {
        var expired: [Item] = []
        while self.queueHead < self.queue.count, self.queue[self.queueHead].enqueuedAt < deadline {
            let entry = self.queue[self.queueHead]
            expired.append(entry.item)
            self.queuedBytes -= entry.frameLength
            self.queueHead += 1
        }
        if self.queueHead == self.queue.count {
            self.queue.removeAll(keepingCapacity: true)
            self.queueHead = 0
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
        if self.writer == .sleeping {
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

/// The bounds the writer works within.
struct GroupCommitLimits: Sendable, Equatable {
    var segmentBytes: Int64
    /// Roll a non-empty segment once it is this old; nil disables age rolling.
    var segmentMaxAgeNanos: UInt64?
    /// Largest frame (header + payload + padding) one append may produce.
    var maxFrameBytes: Int
    var maxBatchBytes: Int
    var maxBatchRecords: Int
    /// Bytes that may wait in the queue before appends are refused as overloaded.
    var maxQueuedBytes: Int

    /// The largest frame that fits a segment beside its header and footer.
    static func frameCapacity(segmentBytes: Int64) -> Int {
        Int(segmentBytes) - SegmentHeader.size - SegmentFooter.frameLength
    }
}
