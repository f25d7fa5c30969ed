#if canImport(Glibc)
import Glibc
#endif

/// A consumer's durable position in the WAL: every event below ``lsn`` is consumed.
public struct CursorPosition: Sendable, Equatable, Codable {
    public var name: String
    /// The next LSN the consumer needs.
    public var lsn: LSN
    /// Bumped by every store; the valid slot with the highest generation wins.
    public var generation: UInt64
    /// When it was stored (unix nanoseconds).
    public var updatedNanos: UInt64
}
