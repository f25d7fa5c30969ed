import Encryption
import SluiceCore

/// Settings of one WAL directory.
public struct WALConfiguration: Sendable {
    /// The directory holding segments, cursors and the lock. Created when missing (mode 0700).
    public var directory: String
    /// Size at which a segment is sealed and a new one started; each segment is
    /// preallocated to this size. Default: 64 MiB.
    public var segmentBytes: Int64 = 64 << 20
    /// A non-empty segment older than this is sealed at the next append; nil disables age
    /// rolling. Default: 1 hour.
    public var segmentMaxAge: Duration? = .seconds(3600)
    /// Largest record (all events of one append, framing included). Capped by the segment
    /// size. Default: 8 MiB.
    public var maxRecordBytes: Int = 8 << 20
    /// Most bytes one group commit writes before syncing. Default: 4 MiB.
    public var maxBatchBytes: Int = 4 << 20
    /// Most records one group commit writes before syncing. Default: 4096.
    public var maxBatchRecords: Int = 4096
    /// Bytes that may wait for the disk before appends are refused as overloaded. Default: 64 MiB.
    public var maxQueuedBytes: Int = 64 << 20
    /// Space the WAL may use and watermarks. Default: ``DiskBudget/init(maxBytes:softFraction:hardFraction:minFreeBytes:)``.
    public var budget = DiskBudget()
    /// Keep segments every cursor has passed this long, for local replay; they are evicted
    /// first under pressure. Default: zero (delete at once).
    public var keepConsumed: Duration = .zero
    /// Longest an append may wait for its acknowledgement. Past it, an append still queued
    /// fails with ``WALError/Code/overloaded`` (not stored) and one already being written with
    /// ``WALError/Code/timedOut`` (outcome unknown), so a stalled disk yields errors instead of
    /// hung callers. nil waits as long as the disk takes. Default: nil.
    public var ackTimeout: Duration?
    /// How often the writer re-checks disk pressure and retention when idle. Default: 1 s.
    public var maintenanceInterval: Duration = .seconds(1)
    /// How often the writer checks that its lock still holds (the lock file and the
    /// directory are the ones it locked; see ``WriterLock``). Default: 1 s.
    public var lockCheckInterval: Duration = .seconds(1)
    /// `wal.encryption.*`: AES-256-GCM for every record of new segments, with a data key per
    /// segment wrapped by the configured key; older keys keep older segments readable.
    /// Default: off.
    package var encryption = EncryptionConfiguration()
    /// The system calls, replaceable to inject faults in tests.
    public var fileSystem: any WALFileSystem = SystemFileSystem()
    /// Unix time in nanoseconds; injectable so tests control record and segment ages.
    public var wallClock: @Sendable () -> UInt64 = WallClock.now
    /// Monotonic nanoseconds, for the acknowledgement deadline and the durations the WAL
    /// measures (fsync and append latency, recovery time, log throttling); injectable so tests
    /// move the deadline by hand instead of sleeping past it. Never compared with
    /// ``wallClock``.
    public var monotonicClock: @Sendable () -> UInt64 = WallClock.monotonic

    public init(directory: String) { self.directory = directory }

    /// Throws an error naming the setting when a value cannot work.
    public func validate() throws {
        guard !self.directory.isEmpty else { throw WALError(.invalidArgument, "the WAL directory must not be empty") }
        guard self.segmentBytes >= 64 << 10 else {
            throw WALError(.invalidArgument, "segment size \(self.segmentBytes) is below the minimum of 65536 bytes")
        }
        guard self.maxRecordBytes >= 64 else {
            throw WALError(.invalidArgument, "maximum record size \(self.maxRecordBytes) is below 64 bytes")
        }
        guard self.maxBatchBytes > 0, self.maxBatchRecords > 0, self.maxQueuedBytes > 0 else {
            throw WALError(.invalidArgument, "batch and queue limits must be positive")
        }
        try self.budget.validate(segmentBytes: self.segmentBytes)
        // The key files are read here too, so `sluice config check` finds a missing or
        // exposed key before a gateway starts.
        do {
            _ = try self.encryption.keyring(prefix: "wal.encryption", origin: "wal")
        } catch {
            throw WALError(.invalidArgument, error.description)
        }
    }

    var limits: GroupCommitLimits {
        .init(
            segmentBytes: self.segmentBytes,
            segmentMaxAgeNanos: self.segmentMaxAge.map { UInt64($0.nanoseconds) },
            maxFrameBytes: min(self.maxRecordBytes, GroupCommitLimits.frameCapacity(segmentBytes: self.segmentBytes)),
            maxBatchBytes: self.maxBatchBytes,
            maxBatchRecords: self.maxBatchRecords,
            maxQueuedBytes: self.maxQueuedBytes,
            ackTimeoutNanos: self.ackTimeout.map { UInt64(max($0.nanoseconds, 0)) }
        )
    }
}
