import WAL

/// Which WAL events are in Kafka, and how far the cursor may move. Pure: no I/O, no clock.
///
/// The forwarder registers each record it sends, one Kafka message per event, the message
/// id being the event's LSN. Delivery reports arrive in any order; the cursor may only
/// advance over the contiguous prefix of records whose every event was acknowledged
/// (acks=all), so a crash can duplicate events in Kafka but never lose one.
struct DeliveryTracker {
    struct Record {
        var lsn: LSN
        var events: [[UInt8]]
        /// Per event: delivered yet?
        var done: [Bool]
        var remaining: Int
        /// When the WAL writer appended it, and its size on disk: for the lag metrics.
        var timestampNanos: UInt64
        var bytes: Int

        var nextLSN: LSN { self.lsn + UInt64(self.events.count) }
    }

    /// Records sent and not yet all delivered, oldest first (the front may be fully done
    /// until ``advance()`` drops it).
    private var records: [Record] = []
    private var head = 0
    /// Where the cursor may go: every event below it is in Kafka.
    private(set) var committable: LSN
    /// Events sent and not yet acknowledged.
    private(set) var inFlight = 0
    /// WAL bytes of the records not yet wholly acknowledged.
    private(set) var inFlightBytes = 0

    /// When the oldest record not yet wholly acknowledged was appended (unix nanoseconds).
    var oldestTimestampNanos: UInt64? {
        self.head < self.records.count ? self.records[self.head].timestampNanos : nil
    }

    init(cursor: LSN) { self.committable = cursor }

    /// Registers a record about to be sent; events below `from` (already forwarded) are
    /// treated as delivered.
    mutating func sent(lsn: LSN, events: [[UInt8]], from: LSN, timestampNanos: UInt64 = 0, bytes: Int = 0) {
        var done = [Bool](repeating: false, count: events.count)
        var remaining = events.count
        for index in events.indices where lsn + UInt64(index) < from {
            done[index] = true
            remaining -= 1
        }
        self.records.append(
            Record(
                lsn: lsn,
                events: events,
                done: done,
                remaining: remaining,
                timestampNanos: timestampNanos,
                bytes: bytes
            )
        )
        self.inFlight += remaining
        self.inFlightBytes += bytes
        self.advance()
    }

    /// The event sent as message `lsn` is in Kafka. Returns false for an unknown or repeated
    /// report (ignored).
    @discardableResult
    mutating func delivered(_ lsn: LSN) -> Bool {
        guard let (recordIndex, eventIndex) = self.locate(lsn), !self.records[recordIndex].done[eventIndex] else {
            return false
        }
        self.records[recordIndex].done[eventIndex] = true
        self.records[recordIndex].remaining -= 1
        self.inFlight -= 1
        self.advance()
        return true
    }

    /// The bytes of event `lsn`, to send again after a retriable failure.
    func event(_ lsn: LSN) -> [UInt8]? {
        guard let (recordIndex, eventIndex) = self.locate(lsn), !self.records[recordIndex].done[eventIndex] else {
            return nil
        }
        return self.records[recordIndex].events[eventIndex]
    }

    private func locate(_ lsn: LSN) -> (Int, Int)? {
        var low = self.head
        var high = self.records.count
        while low < high {
            let middle = (low + high) / 2
            if self.records[middle].nextLSN <= lsn { low = middle + 1 } else { high = middle }
        }
        guard low < self.records.count, self.records[low].lsn <= lsn else { return nil }
        return (low, Int(lsn - self.records[low].lsn))
    }

    private mutating func advance() {
        while self.head < self.records.count, self.records[self.head].remaining == 0 {
            self.committable = max(self.committable, self.records[self.head].nextLSN)
            self.inFlightBytes -= self.records[self.head].bytes
            self.head += 1
        }
        if self.head < self.records.count {
            // Across a gap between segments the cursor may move to where the next record starts.
            self.committable = max(self.committable, self.records[self.head].lsn)
        }
        if self.head > 1024 || self.head == self.records.count {
            self.records.removeFirst(self.head)
            self.head = 0
        }
    }
}
