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
