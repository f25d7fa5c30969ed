/// One data record as read back from the WAL.
public struct WALRecord: Sendable, Equatable {
    /// LSN of the record's first event; event `i` is at `lsn + i`.
    public var lsn: LSN
    /// When the writer appended it (unix nanoseconds).
    public var timestampNanos: UInt64
    /// The events, in the order they were appended.
    public var events: [[UInt8]]
    /// Bytes the record occupies on disk, frame header and padding included.
    public var frameLength: Int
    /// The tag of the writer run that wrote it (0: written before tags existed).
    var writerTag: UInt16 = 0

    public var eventCount: Int { self.events.count }
    public var nextLSN: LSN { self.lsn + UInt64(self.events.count) }
}
