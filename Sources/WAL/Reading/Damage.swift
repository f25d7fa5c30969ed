#if canImport(Glibc)
import Glibc
#endif

/// A damaged stretch of a segment: bytes that hold no valid frame, between valid ones.
public struct Damage: Sendable, Equatable, Codable, CustomStringConvertible {
    /// The segment file's name.
    public var segment: String
    public var startOffset: Int64
    /// Where the next valid frame starts (or the end of the data when none follows).
    public var endOffset: Int64
    /// The LSNs whose events were in the damaged bytes: `firstLostLSN ..< resumeLSN`.
    public var firstLostLSN: LSN
    public var resumeLSN: LSN
    public var reason: String

    public var lostEvents: UInt64 { self.resumeLSN - self.firstLostLSN }

    public var description: String {
        let lsns =
            self.lostEvents == 0
            ? "no events lost" : "LSN \(self.firstLostLSN)...\(self.resumeLSN.rawValue - 1) (\(self.lostEvents) events)"
        return "\(self.segment) bytes \(self.startOffset)..<\(self.endOffset): \(self.reason); \(lsns)"
    }
}
