/// How close the WAL is to running out of room.
public enum Pressure: String, Sendable, Codable, Comparable {
    /// Plenty of room.
    case normal
    /// Above the soft watermark: alarm, and segments kept only for local replay are evicted.
    case soft
    /// Above the hard watermark: appends are refused (the gateway answers 503 with
    /// `Retry-After`) until the forwarder frees space. Unforwarded data is never dropped.
    case hard

    private var rank: Int {
        switch self {
        case .normal: 0
        case .soft: 1
        case .hard: 2
        }
    }

    public static func < (lhs: Pressure, rhs: Pressure) -> Bool { lhs.rank < rhs.rank }
}

/// The space the WAL may use: a byte budget for its own files, and free space it leaves on
/// the volume for everyone else. Either one can raise the pressure.
public struct DiskBudget: Sendable, Equatable, Codable {
    /// Most bytes the WAL's segment files may occupy. Default: 8 GiB.
    public var maxBytes: Int64
    /// Fraction of ``maxBytes`` that raises ``Pressure/soft``. Default: 0.8.
    public var softFraction: Double
    /// Fraction of ``maxBytes`` that raises ``Pressure/hard``. Default: 0.95.
    public var hardFraction: Double
    /// Free bytes to leave on the volume: below this the pressure is hard, below twice this
    /// it is soft. Default: 256 MiB.
    public var minFreeBytes: Int64

    public init(
        maxBytes: Int64 = 8 << 30,
        softFraction: Double = 0.8,
        hardFraction: Double = 0.95,
        minFreeBytes: Int64 = 256 << 20
    ) {
        self.maxBytes = maxBytes
        self.softFraction = softFraction
        self.hardFraction = hardFraction
        self.minFreeBytes = minFreeBytes
    }

    /// Checks the numbers make sense together; throws an error naming the bad value.
    public func validate(segmentBytes: Int64) throws {
        guard 0 < self.softFraction, self.softFraction <= self.hardFraction, self.hardFraction <= 1 else {
            throw WALError(
                .invalidArgument,
                "watermarks must satisfy 0 < soft (\(self.softFraction)) <= hard (\(self.hardFraction)) <= 1"
            )
        }
        guard self.maxBytes >= 2 * segmentBytes else {
            throw WALError(
                .invalidArgument,
                "the WAL budget (\(self.maxBytes) bytes) must hold at least two segments of \(segmentBytes) bytes"
            )
        }
        guard self.minFreeBytes >= 0 else {
            throw WALError(.invalidArgument, "minimum free bytes must not be negative (\(self.minFreeBytes))")
        }
    }

    /// The pressure for `walBytes` of segment files with `volumeAvailable` bytes free.
    public func pressure(walBytes: Int64, volumeAvailable: Int64) -> Pressure {
        let used = Double(walBytes)
        let budget = Double(self.maxBytes)
        if used >= budget * self.hardFraction || volumeAvailable < self.minFreeBytes { return .hard }
        if used >= budget * self.softFraction || volumeAvailable < 2 * self.minFreeBytes { return .soft }
        return .normal
    }

    /// What puts `walBytes` and `volumeAvailable` above normal pressure, in words an operator
    /// can act on (the volume's free space, the WAL's own size, or both); nil when normal.
    public func pressureReason(walBytes: Int64, volumeAvailable: Int64) -> String? {
        let level = self.pressure(walBytes: walBytes, volumeAvailable: volumeAvailable)
        guard level != .normal else { return nil }
        let fraction = level == .hard ? self.hardFraction : self.softFraction
        var reasons: [String] = []
        let reserve = level == .hard ? self.minFreeBytes : 2 * self.minFreeBytes
        if volumeAvailable < reserve {
            reasons.append(
                "free space on the volume (\(volumeAvailable) bytes) is below "
                    + (level == .hard ? "" : "twice ") + "wal.min_free_bytes (\(self.minFreeBytes))"
            )
        }
        if Double(walBytes) >= Double(self.maxBytes) * fraction {
            reasons.append(
                "the WAL holds \(walBytes) bytes, over \(Int(fraction * 100)) % of wal.max_bytes (\(self.maxBytes))"
            )
        }
        return reasons.joined(separator: ", and ")
    }
}

/// Which sealed segments may go. Pure: the WAL feeds it the catalogue and deletes what it
/// returns, in order, after the cursors that allow it are durable.
struct RetentionPolicy: Sendable, Equatable {
    /// Keep fully consumed segments this long (for local replay); zero deletes at once.
    var keepConsumedNanos: UInt64

    struct Candidate: Equatable, Sendable {
        var firstLSN: LSN
        var nextLSN: LSN
        var maxTimestampNanos: UInt64
    }

    /// Segments to delete, oldest first.
    ///
    /// - Parameters:
    ///   - sealed: sealed segments in LSN order (never the active one).
    ///   - consumedBefore: the lowest cursor over all consumers; nil when there are no
    ///     cursors, in which case nothing is consumed and nothing is deleted.
    ///   - pressure: at soft pressure or above, consumed segments go regardless of age.
    func deletable(sealed: [Candidate], consumedBefore: LSN?, now: UInt64, pressure: Pressure) -> [Candidate] {
        guard let consumedBefore else { return [] }
        var result: [Candidate] = []
        for segment in sealed {
            guard segment.nextLSN <= consumedBefore else { break }
            let expired =
                self.keepConsumedNanos == 0
                || (now >= segment.maxTimestampNanos && now - segment.maxTimestampNanos >= self.keepConsumedNanos)
            guard expired || pressure >= .soft else { break }
            result.append(segment)
        }
        return result
    }
}
