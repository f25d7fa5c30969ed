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
