/// What start-up found and did: torn tails truncated, damage quarantined.
public struct RecoveryReport: Sendable, Equatable {
    /// Damaged stretches found in the segments that were scanned; each was quarantined.
    public var damage: [Damage] = []
    /// Bytes of an incomplete last write that were cut off (never acknowledged).
    public var truncatedTailBytes: Int64 = 0
    /// Segments read entirely because they had no footer.
    public var scannedSegments: [String] = []
    /// Segment files that could not be read at all and were moved to `quarantine/`.
    public var quarantinedSegments: [String] = []
    /// Segments whose header or footer is damaged but whose frames were read and kept; the
    /// damage is in ``damage``.
    public var damagedSegments: [String] = []
    /// How long recovery took.
    public var durationNanos: UInt64 = 0
}
