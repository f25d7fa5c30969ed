#if canImport(Glibc)
import Glibc
#endif

/// What one segment file holds, as `sluice wal ls` shows it.
public struct SegmentSummary: Sendable, Equatable, Codable {
    public enum State: String, Sendable, Codable {
        /// Finished, with a valid footer.
        case sealed
        /// The segment the writer appends to.
        case active
        /// Finished without a footer (the writer crashed or abandoned it after an I/O error);
        /// readable, found by a scan.
        case unsealed
    }

    public var name: String
    public var firstLSN: LSN
    /// The LSN after the segment's last event.
    public var nextLSN: LSN
    public var records: UInt64
    /// Where the data frames end (the footer or the unwritten space starts).
    public var dataEnd: Int64
    /// Bytes the file occupies, preallocation included.
    public var fileBytes: Int64
    public var minTimestampNanos: UInt64?
    public var maxTimestampNanos: UInt64?
    public var state: State
    /// Damaged stretches found while scanning (empty for footer-only reads).
    public var damage: [Damage]
    /// Set when the segment ends in bytes that are not a complete frame: a write cut short.
    public var tornTail: String?
    /// Set when the 64-byte header is unreadable. The frames were then read from the first
    /// LSN in the file name (they carry their own magic, LSN and checksums), so only the
    /// header is lost; the writer never appends to such a segment again.
    public var headerDamage: String? = nil
    /// Set when a sealed segment's footer is unreadable. Every frame before it was read and
    /// is intact; the segment is treated as unsealed (scanned rather than summarised).
    public var footerDamage: String? = nil
    /// The id of the key its records are encrypted under (`wal.encryption`); nil in the clear.
    public var keyID: String? = nil

    public var events: UInt64 { self.nextLSN - self.firstLSN }
}
