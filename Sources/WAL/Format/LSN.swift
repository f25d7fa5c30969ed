/// A log sequence number: the position of one event in the WAL.
///
/// LSNs grow by one per *event*, not per record: a record holding `n` events at LSN `x`
/// covers `x ..< x + n`, so event `i` of that record is addressable as `x + i`. LSNs are never
/// reused; they may skip (after a failed fsync the next segment starts past the lost batch).
public struct LSN: RawRepresentable, Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    public var rawValue: UInt64

    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ value: UInt64) { self.rawValue = value }

    public static let zero = LSN(0)

    public static func < (lhs: LSN, rhs: LSN) -> Bool { lhs.rawValue < rhs.rawValue }

    public static func + (lhs: LSN, rhs: UInt64) -> LSN { LSN(lhs.rawValue + rhs) }

    /// Events between `rhs` and `lhs`, zero when `lhs` is not past `rhs`.
    public static func - (lhs: LSN, rhs: LSN) -> UInt64 {
        lhs.rawValue > rhs.rawValue ? lhs.rawValue - rhs.rawValue : 0
    }

    public var description: String { String(self.rawValue) }

    public init(from decoder: any Decoder) throws {
        self.rawValue = try decoder.singleValueContainer().decode(UInt64.self)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(self.rawValue)
    }
}
