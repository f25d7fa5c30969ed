#if canImport(Glibc)
import Glibc
#endif

/// The result of ``WALInspector/stat(budget:now:)``.
public struct WALStat: Sendable, Codable {
    public struct CursorLag: Sendable, Codable {
        public var name: String
        public var lsn: LSN
        public var updatedNanos: UInt64
        public var lagEvents: UInt64
        public var lagBytes: Int64
        /// Age of the oldest event the cursor has not consumed; nil when caught up.
        public var oldestUnconsumedAgeSeconds: Double?
    }

    public var directory: String
    public var segments: Int
    public var bytes: Int64
    public var firstLSN: LSN
    public var nextLSN: LSN
    public var records: UInt64
    public var volumeAvailableBytes: Int64
    public var budgetBytes: Int64
    /// The free space the budget leaves on the volume (`wal.min_free_bytes`).
    public var minFreeBytes: Int64
    public var pressure: Pressure
    /// What raises the pressure above normal, in words; nil at normal pressure.
    public var pressureReason: String?
    public var writerPID: Int32?
    /// Where the budget came from (the running writer's `wal.settings`, flags, defaults);
    /// set by the caller.
    public var budgetSource: String?
    public var cursors: [CursorLag]
    public var quarantinedFiles: Int
}
