#if canImport(Glibc)
import Glibc
#endif

/// The result of ``WALInspector/verify()``.
public struct VerifyReport: Sendable, Codable {
    public struct Problem: Sendable, Codable {
        public var segment: String?
        public var detail: String
        public var firstLSN: LSN?
        public var lastLSN: LSN?
    }

    public var directory: String
    public var segments = 0
    public var records: UInt64 = 0
    /// Damage: lost or unreadable data. Non-empty means `wal verify` exits 1.
    public var problems: [Problem] = []
    /// Facts worth knowing that lose nothing (an unacknowledged torn tail, an unsealed segment).
    public var notes: [String] = []

    public var isClean: Bool { self.problems.isEmpty }
}
