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
    /// Longest an append may wait for its outcome (monotonic nanoseconds); nil waits as long
    /// as the disk takes. See ``WALConfiguration/ackTimeout``.
    var ackTimeoutNanos: UInt64? = nil

    /// The largest frame that fits a segment beside its header and footer.
    static func frameCapacity(segmentBytes: Int64) -> Int {
        Int(segmentBytes) - SegmentHeader.maximumSize - SegmentFooter.frameLength
    }
}
