import CoreMetrics
import Dispatch
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Where an append landed: its events are durable at `firstLSN ..< firstLSN + eventCount`.
public struct AppendReceipt: Sendable, Equatable {
    public var firstLSN: LSN
    public var eventCount: Int
}

/// What start-up found and did: torn tails truncated, damage quarantined.
public struct RecoveryReport: Sendable, Equatable {
    /// Damaged stretches found in the segments that were scanned; each was quarantined.
    public var damage: [Damage] = []
    /// Bytes of an incomplete last write that were cut off (never acknowledged).
    public var truncatedTailBytes: Int64 = 0
    /// Segments read entirely because they had no footer.
    public var scannedSegments: [String] = []
    /// Segment files that could not be read at all and were moved to `quarantine/`.
    public var quarantinedSegments: [String] = []
    /// Segments whose header or footer is damaged but whose frames were read and kept; the
    /// damage is in ``damage``.
    public var damagedSegments: [String] = []
    /// How long recovery took.
    public var durationNanos: UInt64 = 0
}

/// A segmented, checksummed write-ahead log whose appends return only once durable.
///
/// ``append(_:)`` encodes the events as one record and queues it for the writer thread,
/// which writes every queued record in one `pwrite` and one `fdatasync` (group commit) and
/// then resumes the appenders. The writer is a dedicated thread, so `fdatasync` never runs on
/// Swift's cooperative pool.
///
/// Consumers read with ``tail(from:)`` (durable records only) and record progress with
/// ``commitCursor(_:to:)``; segments every cursor has passed are deleted (or kept for
/// ``WALConfiguration/keepConsumed``).
///
/// - Important: one process owns a WAL directory at a time (a `flock` on the directory and
///   on `wal.lock` enforces it; see ``WriterLock``). Call ``close()`` before dropping the
///   last reference.
public final class WAL: Sendable {
    struct PendingAppend {
        var payload: [UInt8]
        var payloadCRC: UInt32
        var completion: @Sendable (Result<AppendReceipt, WALError>) -> Void
    }

    /// Shared with tails and the operator views; guarded by a mutex.
    struct Shared {
        var catalog: Catalog
        var pressure: Pressure = .normal
        var volumeAvailable: Int64 = .max
        var closed = false
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextWaiterID: UInt64 = 0
        var quarantined: Set<String> = []
        var lastWriteError: String?
        /// Why the writer stopped for good (its lock was lost); nil while it holds it.
        var halted: String?
        /// What raises the pressure above normal, in words; nil at normal pressure.
        var pressureReason: String?
        /// Callers of ``runMaintenance()`` waiting for a pass that starts after they asked.
        var maintenanceWaiters: [CheckedContinuation<Void, Never>] = []
    }

    /// State only the writer thread touches.
    final class WriterContext: @unchecked Sendable {
        var fd: Int32 = -1
        var path = ""
        var buffer: [UInt8] = []
        /// Segment creations that failed since the last one that worked, and since the last
        /// log line about them: a full disk fails every append's roll, and one `error` line
        /// per refused request would flood the log.
        var failedRolls = 0
        var failedRollsUnlogged = 0
        var failedRollLoggedAt: UInt64 = 0
        /// This run's writer tag, stamped into every frame (see ``FrameHeader/writerTag``).
        var tag: UInt16 = 1
    }

    public let configuration: WALConfiguration
    public let recovery: RecoveryReport
    let logger: Logger
    private let fileSystem: any WALFileSystem
    private let state: Mutex<GroupCommit<PendingAppend>>
    private let shared: Mutex<Shared>
    private let cursors: Mutex<[String: CursorFile]>
    private let wake = DispatchSemaphore(value: 0)
    private let writerFinished = DispatchSemaphore(value: 0)
    private let maintenanceRequested = Atomic<Bool>(false)
    /// Set at open: the spare segment is prepared after the first batch is durable.
    private let spareDeferred = Atomic<Bool>(false)
    private let closed = Atomic<Bool>(false)
    private let writer: WriterContext
    private let lock: WriterLock
    private let metrics = WALMetrics()
    private let retention: RetentionPolicy
    private let spare = Mutex<SpareState>(.none)
    /// Dispatch sources are thread-safe; the type just does not say so.
    nonisolated(unsafe) private let watchdog: (any DispatchSourceTimer)?
    /// Re-checks ``WriterLock`` every ``WALConfiguration/lockCheckInterval``.
    nonisolated(unsafe) private let lockWatch: any DispatchSourceTimer

    private let preparer = DispatchQueue(label: "sluice.wal.segment-preparer")

    /// The next segment, zero-filled ahead of time by a background thread.
    ///
    /// Writing into preallocated-but-unwritten extents makes every `fdatasync` also commit
    /// the file system's extent conversion (a journal write): measured here, it halves the
    /// group-commit rate. Filling the file with zeros first (PostgreSQL's `wal_init_zero`)
    /// makes appends plain overwrites; doing it in the background keeps it off the ack path.
    enum SpareState { case none, preparing, ready }

    static let spareName = "next-segment.spare"
    private let counters = Counters()

    final class Counters: Sendable {
        let records = Atomic<UInt64>(0)
        let events = Atomic<UInt64>(0)
        let bytes = Atomic<UInt64>(0)
        let batches = Atomic<UInt64>(0)
        let failedBatches = Atomic<UInt64>(0)
        let fsyncNanos = Atomic<UInt64>(0)
    }

    /// Totals since this WAL was opened.
    public struct Statistics: Sendable, Equatable {
        public var records: UInt64
        public var events: UInt64
        public var bytes: UInt64
        /// Group commits: one write and one `fdatasync` each.
        public var batches: UInt64
        public var failedBatches: UInt64
        /// Time spent in `fdatasync` of successful batches.
        public var fsyncNanos: UInt64
    }

    public var statistics: Statistics {
        Statistics(
            records: self.counters.records.load(ordering: .relaxed),
            events: self.counters.events.load(ordering: .relaxed),
            bytes: self.counters.bytes.load(ordering: .relaxed),
            batches: self.counters.batches.load(ordering: .relaxed),
            failedBatches: self.counters.failedBatches.load(ordering: .relaxed),
            fsyncNanos: self.counters.fsyncNanos.load(ordering: .relaxed)
        )
    }

    var segmentDirectory: String { self.configuration.directory }
    var cursorDirectory: String { self.configuration.directory + "/cursors" }

    /// Opens (creating if needed) the WAL in `configuration.directory`, recovering from any
    /// crash, and starts its writer thread.
    ///
    /// - Throws: ``WALError/Code/locked`` when another process owns the directory, or an
    ///   I/O error when it cannot be read.
    public static func open(
        _ configuration: WALConfiguration,
        logger: Logger = Logger(label: "sluice.wal")
    ) async throws
        -> WAL
    {
        try await BlockingIO.run { try WAL(configuration: configuration, logger: logger) }
    }

    private init(configuration: WALConfiguration, logger: Logger) throws {
        try configuration.validate()
        let started = configuration.monotonicClock()
        let fileSystem = configuration.fileSystem
        let directory = configuration.directory
        try fileSystem.makeDirectory(directory)
        try fileSystem.makeDirectory(directory + "/cursors")
        try fileSystem.makeDirectory(directory + "/" + Quarantine.directoryName)
        let lock = try WriterLock.acquire(directory: directory, fileSystem: fileSystem, waitMilliseconds: 1000)
        // A spare left by an earlier run may be half-filled: start over.
        if fileSystem.fileExists(directory + "/" + Self.spareName) {
            try? fileSystem.unlink(directory + "/" + Self.spareName)
        }
        let writer = WriterContext()
        do {
            var report = RecoveryReport()
            let recovered = try Self.recover(
                configuration: configuration,
                writer: writer,
                report: &report,
                logger: logger
            )
            var cursors: [String: CursorFile] = [:]
            for name in try fileSystem.listDirectory(directory + "/cursors") where name.hasSuffix(CursorFile.suffix) {
                let cursorName = String(name.dropLast(CursorFile.suffix.count))
                cursors[cursorName] = try CursorFile(
                    path: directory + "/cursors/" + name,
                    name: cursorName,
                    fileSystem: fileSystem
                )
            }
            repeat {
                writer.tag = UInt16.random(in: 1...UInt16.max)
            } while recovered.activeTags.contains(writer.tag)
            // LSNs never go backwards, even if every segment was removed by hand.
            let highestCursor = cursors.values.map(\.position.lsn).max() ?? .zero
            let nextLSN = max(recovered.nextLSN, highestCursor)
            report.durationNanos = configuration.monotonicClock() &- started
            self.recovery = report
            self.configuration = configuration
            self.logger = logger
            self.fileSystem = fileSystem
            self.lock = lock
            self.writer = writer
            self.cursors = Mutex(cursors)
            self.retention = RetentionPolicy(keepConsumedNanos: UInt64(configuration.keepConsumed.nanoseconds))
            var active = recovered.active
            var segments = recovered.segments
            if let segment = active, segment.nextLSN < nextLSN {
                // Cursors are ahead of the data (segments removed by hand): appending here would
                // put LSNs the cursors already passed into it, so start a new segment instead.
                active = nil
                fileSystem.close(writer.fd)
                writer.fd = -1
                if let index = segments.lastIndex(where: { $0.firstLSN == segment.firstLSN }) {
                    segments[index].state = .unsealed
                }
                logger.warning(
                    "wal.cursor_ahead_of_data",
                    metadata: ["wal.cursor_lsn": "\(highestCursor)", "wal.data_next_lsn": "\(segment.nextLSN)"]
                )
            }
            self.state = Mutex(GroupCommit(limits: configuration.limits, nextLSN: nextLSN, segment: active))
            self.watchdog = configuration.ackTimeout.map { _ in
                DispatchSource.makeTimerSource(queue: DispatchQueue(label: "sluice.wal.watchdog"))
            }
            self.shared = Mutex(Shared(catalog: Catalog(segments: segments, durableNextLSN: nextLSN)))
            self.lockWatch = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "sluice.wal.lock-check"))
        } catch {
            if writer.fd >= 0 { fileSystem.close(writer.fd) }
            lock.release(fileSystem: fileSystem)
            throw error
        }
        self.metrics.truncatedTailBytes.increment(by: Int64(self.recovery.truncatedTailBytes))
        self.metrics.damagedEvents.increment(
            by: Int64(self.recovery.damage.reduce(UInt64(0)) { $0 + $1.lostEvents })
        )
        for name in self.cursors.withLock({ Array($0.keys) }) {
            self.metrics.cursorLSN(name).record(Int64(self.cursor(name)?.lsn.rawValue ?? 0))
        }
        self.refreshPressure()
        do {
            try WriterSettings(
                pid: getpid(),
                segmentBytes: configuration.segmentBytes,
                budget: configuration.budget,
                openedNanos: configuration.wallClock()
            ).write(directory: directory, fileSystem: fileSystem)
        } catch {
            logger.warning("wal.settings_write_failed", metadata: ["error": "\(error)"])
        }
        if let volume = try? fileSystem.volumeSpace(directory), volume.available < 2 * configuration.budget.minFreeBytes
        {
            // Say so now, in the setting's name: otherwise a small volume only shows up as
            // refused events with a WAL that holds nothing.
            logger.warning(
                "wal.free_space_low",
                metadata: [
                    "wal.min_free_bytes": "\(configuration.budget.minFreeBytes)",
                    "wal.volume_bytes": "\(volume.total)",
                    "wal.volume_available_bytes": "\(volume.available)",
                    "wal.pressure": "\(self.pressure)",
                    "wal.reason": "\(self.pressureReason ?? "")",
                ]
            )
        }
        var metadata: Logger.Metadata = [
            "wal.directory": "\(directory)",
            "wal.next_lsn": "\(self.durableNextLSN)",
            "wal.recovery_ms": "\(Double(self.recovery.durationNanos) / 1e6)",
        ]
        if self.recovery.truncatedTailBytes > 0 {
            metadata["wal.truncated_tail_bytes"] = "\(self.recovery.truncatedTailBytes)"
        }
        logger.info("wal.opened", metadata: metadata)
        for damage in self.recovery.damage {
            logger.error("wal.damage", metadata: ["wal.damage": "\(damage)"])
        }
        // The spare segment is not prepared now: zero-filling a segment's worth of pages
        // competes with the first appends' fdatasyncs (on ext4 a journal commit flushes other
        // files' dirty data too), and the first acknowledgement after a start must not wait
        // for it. The first batch that reaches the disk asks for it instead.
        self.spareDeferred.store(self.state.withLock { $0.segment != nil }, ordering: .relaxed)
        // A dedicated serial queue: its thread is owned by the writer loop for the WAL's
        // lifetime, so fdatasync never blocks a cooperative-pool thread.
        DispatchQueue(label: "sluice.wal.writer", qos: .userInitiated).async { self.writerLoop() }
        if let watchdog = self.watchdog, let timeout = configuration.ackTimeout {
            let interval = max(Int(timeout.nanoseconds / 5), 2_000_000)
            watchdog.schedule(deadline: .now() + .nanoseconds(interval), repeating: .nanoseconds(interval))
            watchdog.setEventHandler { [weak self] in self?.expireLateAppends(timeout: timeout) }
            watchdog.resume()
        }
        let lockInterval = max(Int(configuration.lockCheckInterval.nanoseconds), 1_000_000)
        self.lockWatch.schedule(deadline: .now() + .nanoseconds(lockInterval), repeating: .nanoseconds(lockInterval))
        self.lockWatch.setEventHandler { [weak self] in self?.checkLock() }
        self.lockWatch.resume()
    }

    /// Stops the writer for good when its lock no longer proves it is alone: appends are
    /// refused (the gateway answers 503), ``isWritable`` turns false, and nothing more is
    /// written or deleted in the directory.
    private func checkLock() {
        guard self.shared.withLock({ $0.halted == nil && !$0.closed }),
            let problem = self.lock.check(fileSystem: self.fileSystem)
        else { return }
        let reason =
            problem + "; another writer may be using the directory, so this one stopped accepting events."
            + " Restart the gateway once the directory is sound"
        self.shared.withLock { $0.halted = reason }
        let refused = self.state.withLock { $0.halt(WALError(.locked, reason)) }
        self.logger.critical(
            "wal.lock_lost",
            metadata: ["wal.directory": "\(self.configuration.directory)", "wal.reason": "\(reason)"]
        )
        for item in refused { item.completion(.failure(WALError(.locked, reason))) }
    }

    // MARK: - Appending

    /// Appends `events` as one record and returns once it is durable (written and
    /// `fdatasync`'d, and for a new segment the directory fsync'd).
    ///
    /// Events get consecutive LSNs from the receipt's `firstLSN`. The call is not cancellable
    /// once queued: the record may be on disk even if the caller stopped waiting.
    ///
    /// - Throws: ``WALError`` with code ``WALError/Code/diskFull`` (hard watermark or
    ///   ENOSPC), ``WALError/Code/overloaded`` (too much queued), ``WALError/Code/fsyncFailed``
    ///   or ``WALError/Code/io`` (the batch failed; nothing was acknowledged),
    ///   ``WALError/Code/recordTooLarge`` or ``WALError/Code/closed``.
    public func append(_ events: [[UInt8]]) async throws -> AppendReceipt {
        try await withCheckedThrowingContinuation { continuation in
            self.append(events) { continuation.resume(with: $0) }
        }
    }

    /// Appends `events` as one record and calls `completion` once it is durable, or with the
    /// reason it is not; see ``append(_:)``.
    ///
    /// `completion` runs on the WAL's writer thread (or the caller's, for an immediate
    /// refusal): it must return quickly and never block.
    public func append(_ events: [[UInt8]], completion: @escaping @Sendable (Result<AppendReceipt, WALError>) -> Void) {
        guard !events.isEmpty else {
            completion(.failure(WALError(.invalidArgument, "an append needs at least one event")))
            return
        }
        guard events.count <= Int(UInt32.max) else {
            completion(.failure(WALError(.recordTooLarge, "too many events in one append")))
            return
        }
        let payload = EventPayload.encode(events)
        let pending = PendingAppend(payload: payload, payloadCRC: CRC32C.checksum(payload), completion: completion)
        let frameLength = alignedTo8(FrameHeader.size + payload.count)
        let enqueuedAt = self.configuration.monotonicClock()
        let result = self.state.withLock {
            $0.enqueue(pending, frameLength: frameLength, eventCount: UInt32(events.count), enqueuedAt: enqueuedAt)
        }
        switch result {
        case .accepted(let wakeWriter):
            if wakeWriter { self.wake.signal() }
        case .rejected(let error):
            self.metrics.rejectedAppends(error.code.description).increment()
            completion(.failure(error))
        }
    }

    private func writerLoop() {
        while true {
            let now = self.configuration.wallClock()
            let step = self.state.withLock { $0.nextStep(now: now) }
            switch step {
            case .sleep:
                let interval = self.configuration.maintenanceInterval
                if self.wake.wait(timeout: .now() + .nanoseconds(Int(interval.nanoseconds))) == .timedOut {
                    self.maintenanceRequested.store(true, ordering: .relaxed)
                }
            case .write(let batch):
                self.write(batch)
            case .roll(let sealing, let closing, let firstLSN):
                self.roll(sealing: sealing, closing: closing, firstLSN: firstLSN, now: now)
            case .stop:
                if self.writer.fd >= 0 {
                    // Appends were each synced; this only makes the close tidy.
                    try? self.fileSystem.fdatasync(self.writer.fd, path: self.writer.path)
                    self.fileSystem.close(self.writer.fd)
                    self.writer.fd = -1
                }
                self.writerFinished.signal()
                return
            }
            if self.maintenanceRequested.exchange(false, ordering: .relaxed) {
                let waiters = self.shared.withLock { shared in
                    defer { shared.maintenanceWaiters.removeAll() }
                    return shared.maintenanceWaiters
                }
                self.performMaintenance()
                for waiter in waiters { waiter.resume() }
            }
        }
    }

    private func write(_ batch: GroupCommit<PendingAppend>.Batch) {
        let buffer = self.encode(batch)
        let fsyncStarted: UInt64
        do {
            try buffer.withUnsafeBytes {
                try self.fileSystem.pwrite(self.writer.fd, $0, at: batch.offset, path: self.writer.path)
            }
            fsyncStarted = self.configuration.monotonicClock()
            do {
                try self.fileSystem.fdatasync(self.writer.fd, path: self.writer.path)
            } catch let error as WALError {
                self.metrics.ioErrors("fdatasync").increment()
                // fsyncgate: after a failed fsync the kernel may have dropped the dirty pages
                // and reports success next time. The segment is abandoned, never trusted again.
                throw WALError(
                    error.code == .diskFull ? .diskFull : .fsyncFailed,
                    "the batch at LSN \(batch.records.first?.lsn ?? .zero) was not made durable",
                    errno: error.errno,
                    cause: error
                )
            }
        } catch {
            let walError = (error as? WALError) ?? WALError(.io, "write failed", cause: nil)
            if walError.code != .fsyncFailed { self.metrics.ioErrors("pwrite").increment() }
            let failed = self.state.withLock { $0.writeFailed() }
            self.shared.withLock { $0.lastWriteError = walError.description }
            self.logger.error(
                "wal.batch_failed",
                metadata: [
                    "wal.segment": "\(self.writer.path)", "wal.records": "\(batch.records.count)",
                    "error": "\(walError)",
                ]
            )
            self.counters.failedBatches.add(1, ordering: .relaxed)
            for record in failed { record.item.completion(.failure(walError)) }
            if walError.code == .diskFull { self.maintenanceRequested.store(true, ordering: .relaxed) }
            return
        }
        let finished = self.configuration.monotonicClock()
        self.metrics.fsyncDuration.recordNanoseconds(Int64(finished - fsyncStarted))
        self.metrics.groupCommitRecords.record(batch.records.count)
        self.metrics.groupCommitBytes.record(batch.length)
        let waiters = self.shared.withLock { shared -> [CheckedContinuation<Void, Never>] in
            shared.lastWriteError = nil
            shared.catalog.applied(batch)
            let waiters = Array(shared.waiters.values)
            shared.waiters.removeAll()
            return waiters
        }
        for waiter in waiters { waiter.resume() }
        var events = 0
        let completed = self.state.withLock { $0.written() }
        for record in completed {
            self.metrics.appendDuration.recordNanoseconds(Int64(finished &- record.enqueuedAt))
            record.item.completion(
                .success(AppendReceipt(firstLSN: record.lsn, eventCount: Int(record.eventCount)))
            )
        }
        for record in batch.records { events += Int(record.eventCount) }
        self.counters.records.add(UInt64(batch.records.count), ordering: .relaxed)
        self.counters.events.add(UInt64(events), ordering: .relaxed)
        self.counters.bytes.add(UInt64(batch.length), ordering: .relaxed)
        self.counters.batches.add(1, ordering: .relaxed)
        self.counters.fsyncNanos.add(finished - fsyncStarted, ordering: .relaxed)
        self.metrics.appendedRecords.increment(by: Int64(batch.records.count))
        self.metrics.appendedEvents.increment(by: Int64(events))
        self.metrics.appendedBytes.increment(by: Int64(batch.length))
        self.metrics.durableLSN.record(Int64(batch.nextLSN.rawValue))
        if self.spareDeferred.load(ordering: .relaxed) && self.spareDeferred.exchange(false, ordering: .relaxed) {
            self.requestSpare()
        }
    }

    /// Fails appends that outlived the acknowledgement deadline, as ``GroupCommit/expire(now:)``
    /// decides: still queued (never written, so not stored) or stuck in a write or fsync that
    /// has not returned (outcome unknown).
    private func expireLateAppends(timeout: Duration) {
        let now = self.configuration.monotonicClock()
        let expired = self.state.withLock { $0.expire(now: now) }
        guard !expired.isEmpty else { return }
        self.logger.warning(
            "wal.ack_deadline_missed",
            metadata: [
                "wal.queued_failed": "\(expired.queued.count)", "wal.in_flight_failed": "\(expired.inFlight.count)",
            ]
        )
        let notStored = WALError(.overloaded, "the disk did not take the write within \(timeout); it was not stored")
        for item in expired.queued {
            self.metrics.rejectedAppends("deadline_queued").increment()
            item.completion(.failure(notStored))
        }
        let unknown = WALError(
            .timedOut,
            "the disk did not confirm the write within \(timeout); it may or may not be stored"
        )
        for record in expired.inFlight {
            self.metrics.rejectedAppends("deadline_in_flight").increment()
            record.item.completion(.failure(unknown))
        }
    }

    private func encode(_ batch: GroupCommit<PendingAppend>.Batch) -> [UInt8] {
        var buffer = self.writer.buffer
        buffer.removeAll(keepingCapacity: true)
        buffer.reserveCapacity(batch.length)
        for record in batch.records {
            let payload = record.item.payload
            let header = FrameHeader(
                payloadLength: UInt32(payload.count),
                payloadCRC: record.item.payloadCRC,
                lsn: record.lsn,
                timestampNanos: batch.timestampNanos,
                eventCount: record.eventCount,
                type: .data,
                writerTag: self.writer.tag
            )
            let start = buffer.count
            buffer.append(contentsOf: repeatElement(0, count: FrameHeader.size))
            buffer.withUnsafeMutableBytes { raw in
                header.write(into: UnsafeMutableRawBufferPointer(rebasing: raw[start..<start + FrameHeader.size]))
            }
            buffer.append(contentsOf: payload)
            buffer.append(contentsOf: repeatElement(0, count: record.frameLength - FrameHeader.size - payload.count))
        }
        self.writer.buffer = buffer
        return buffer
    }

    private func roll(
        sealing: GroupCommit<PendingAppend>.ActiveSegment?,
        closing: GroupCommit<PendingAppend>.ActiveSegment?,
        firstLSN: LSN,
        now: UInt64
    ) {
        if closing != nil, self.writer.fd >= 0 {
            self.seal(sealing)
            self.fileSystem.close(self.writer.fd)
            self.writer.fd = -1
        }
        let name = SegmentName.make(firstLSN)
        let path = self.segmentDirectory + "/" + name
        var created = false
        do {
            let fd: Int32
            if self.takeSpare() {
                try self.fileSystem.rename(self.segmentDirectory + "/" + Self.spareName, to: path)
                created = true
                fd = try self.fileSystem.open(path, flags: O_RDWR, mode: 0)
            } else {
                fd = try self.fileSystem.open(path, flags: O_RDWR | O_CREAT | O_EXCL, mode: 0o600)
                created = true
                // Preallocating moves ENOSPC to this clean point, before any append depends on it.
                try self.fileSystem.allocate(fd, offset: 0, length: self.configuration.segmentBytes, path: path)
            }
            self.writer.fd = fd
            self.writer.path = path
            try self.fileSystem.tryLock(fd, path: path)
            let header = SegmentHeader(
                firstLSN: firstLSN,
                createdNanos: now,
                writerID: UInt64.random(in: 1...UInt64.max)
            )
            try header.encoded().withUnsafeBytes { try self.fileSystem.pwrite(fd, $0, at: 0, path: path) }
            try self.fileSystem.fdatasync(fd, path: path)
            try self.fileSystem.syncDirectory(self.segmentDirectory)
        } catch {
            let walError = (error as? WALError) ?? WALError(.io, "creating \(path) failed")
            self.metrics.ioErrors("create_segment").increment()
            if self.writer.fd >= 0 {
                self.fileSystem.close(self.writer.fd)
                self.writer.fd = -1
            }
            if created { try? self.fileSystem.unlink(path) }
            let failed = self.state.withLock { $0.rollFailed(previousClosed: closing != nil) }
            self.shared.withLock {
                $0.lastWriteError = walError.description
                $0.catalog.rollFailed(previousClosed: closing != nil)
            }
            self.writer.failedRolls += 1
            self.writer.failedRollsUnlogged += 1
            let monotonic = self.configuration.monotonicClock()
            if self.writer.failedRolls == 1 || monotonic - self.writer.failedRollLoggedAt >= 60_000_000_000 {
                self.logger.error(
                    "wal.segment_create_failed",
                    metadata: [
                        "wal.segment": "\(name)", "error": "\(walError)", "wal.failed_appends": "\(failed.count)",
                        "wal.failures_since_last_log": "\(self.writer.failedRollsUnlogged)",
                    ]
                )
                self.writer.failedRollLoggedAt = monotonic
                self.writer.failedRollsUnlogged = 0
            }
            for item in failed { item.completion(.failure(walError)) }
            self.maintenanceRequested.store(true, ordering: .relaxed)
            return
        }
        if self.writer.failedRolls > 0 {
            self.logger.info(
                "wal.segment_create_recovered",
                metadata: ["wal.segment": "\(name)", "wal.failed_attempts": "\(self.writer.failedRolls)"]
            )
            self.writer.failedRolls = 0
            self.writer.failedRollsUnlogged = 0
        }
        self.state.withLock { $0.rolled(firstLSN: firstLSN, now: now) }
        let segmentBytes = self.configuration.segmentBytes
        self.shared.withLock {
            $0.catalog.rolled(sealed: sealing != nil, name: name, firstLSN: firstLSN, fileBytes: segmentBytes)
        }
        self.logger.debug("wal.segment_created", metadata: ["wal.segment": "\(name)"])
        self.refreshPressure()
        self.requestSpare()
    }

    /// Writes the footer and trims the preallocated space. A failure leaves the segment
    /// unsealed, which costs one scan at the next start-up and nothing else.
    private func seal(_ segment: GroupCommit<PendingAppend>.ActiveSegment?) {
        guard let segment else { return }
        let footer = segment.footer.encodedFrame()
        do {
            try footer.withUnsafeBytes {
                try self.fileSystem.pwrite(self.writer.fd, $0, at: segment.dataEnd, path: self.writer.path)
            }
            try self.fileSystem.truncate(
                self.writer.fd,
                to: segment.dataEnd + Int64(footer.count),
                path: self.writer.path
            )
            try self.fileSystem.fdatasync(self.writer.fd, path: self.writer.path)
        } catch {
            self.logger.warning(
                "wal.seal_failed",
                metadata: ["wal.segment": "\(self.writer.path)", "error": "\(error)"]
            )
        }
    }

    private func takeSpare() -> Bool {
        self.spare.withLock { state in
            guard case .ready = state else { return false }
            state = .none
            return true
        }
    }

    /// Starts zero-filling the next segment in the background unless one is ready or under way,
    /// or space is short: a spare would take the room the budget keeps free.
    private func requestSpare() {
        guard self.shared.withLock({ $0.pressure == .normal && $0.halted == nil }) else { return }
        let start = self.spare.withLock { state -> Bool in
            guard case .none = state else { return false }
            state = .preparing
            return true
        }
        guard start else { return }
        self.preparer.async { self.prepareSpare() }
    }

    private func prepareSpare() {
        let path = self.segmentDirectory + "/" + Self.spareName
        let size = self.configuration.segmentBytes
        let chunk = 1 << 20
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        defer { zeros.deallocate() }
        var fd: Int32 = -1
        do {
            if self.fileSystem.fileExists(path) { try self.fileSystem.unlink(path) }
            // Buffered on purpose: O_DIRECT zeros were measured slower, because the appends'
            // partial-page writes then read the pages back from disk first.
            fd = try self.fileSystem.open(path, flags: O_RDWR | O_CREAT | O_EXCL, mode: 0o600)
            try self.fileSystem.allocate(fd, offset: 0, length: size, path: path)
            var offset: Int64 = 0
            while offset < size {
                let count = Int(min(Int64(chunk), size - offset))
                try self.fileSystem.pwrite(
                    fd,
                    UnsafeRawBufferPointer(rebasing: zeros[0..<count]),
                    at: offset,
                    path: path
                )
                offset += Int64(count)
            }
            try self.fileSystem.fdatasync(fd, path: path)
            self.fileSystem.close(fd)
            self.spare.withLock { $0 = .ready }
        } catch {
            if fd >= 0 { self.fileSystem.close(fd) }
            try? self.fileSystem.unlink(path)
            self.spare.withLock { $0 = .none }
            self.logger.debug("wal.spare_segment_failed", metadata: ["error": "\(error)"])
        }
    }

    // MARK: - Pressure and retention

    /// The current disk pressure; ``Pressure/hard`` means appends are refused.
    public var pressure: Pressure { self.shared.withLock { $0.pressure } }

    /// Whether appends can currently succeed: below the hard watermark and the last write
    /// did not fail. The gateway's readiness follows this.
    public var isWritable: Bool {
        self.shared.withLock { $0.pressure < .hard && $0.lastWriteError == nil && !$0.closed && $0.halted == nil }
    }

    /// Why appends cannot succeed right now, in words for an operator (the gateway's
    /// `/readyz` shows it); nil while ``isWritable``.
    public var unavailableReason: String? {
        self.shared.withLock { shared in
            if let halted = shared.halted { return halted }
            if shared.closed { return "the WAL is closed" }
            if shared.pressure == .hard {
                return shared.pressureReason ?? "the WAL is over its hard watermark"
            }
            return shared.lastWriteError
        }
    }

    /// What raises the disk pressure above normal (the volume's free space, or the WAL's own
    /// size against its budget), in words; nil at normal pressure.
    public var pressureReason: String? { self.shared.withLock { $0.pressureReason } }

    /// The last write error, cleared by the next successful write.
    public var lastWriteError: String? { self.shared.withLock { $0.lastWriteError } }

    private func refreshPressure() {
        let volume = try? self.fileSystem.volumeSpace(self.configuration.directory)
        let budget = self.configuration.budget
        let spareBytes: Int64 = self.spare.withLock {
            if case .none = $0 { 0 } else { self.configuration.segmentBytes }
        }
        let (old, new, bytes, reason) = self.shared.withLock { shared -> (Pressure, Pressure, Int64, String?) in
            let old = shared.pressure
            shared.volumeAvailable = volume?.available ?? shared.volumeAvailable
            let bytes = shared.catalog.walBytes + spareBytes
            shared.pressure = budget.pressure(walBytes: bytes, volumeAvailable: shared.volumeAvailable)
            shared.pressureReason = budget.pressureReason(walBytes: bytes, volumeAvailable: shared.volumeAvailable)
            return (old, shared.pressure, bytes, shared.pressureReason)
        }
        let refusal: WALError? =
            new == .hard
            ? WALError(
                .diskFull,
                "the WAL refuses events: \(reason ?? "it is over its hard watermark"); it accepts again once "
                    + "there is room (the forwarder frees space as it catches up)"
            ) : nil
        self.state.withLock { $0.refusal = refusal }
        self.metrics.bytes.record(bytes)
        self.metrics.pressure.record(new == .normal ? 0 : new == .soft ? 1 : 2)
        self.metrics.segments.record(self.shared.withLock { $0.catalog.segments.count })
        self.metrics.maxBytes.record(budget.maxBytes)
        if let volume { self.metrics.volumeAvailableBytes.record(volume.available) }
        if old != new {
            var metadata: Logger.Metadata = ["wal.pressure": "\(new)", "wal.bytes": "\(bytes)"]
            if let reason { metadata["wal.reason"] = "\(reason)" }
            if let volume { metadata["wal.volume_available_bytes"] = "\(volume.available)" }
            if new > old {
                self.logger.warning("wal.pressure_rising", metadata: metadata)
            } else {
                self.logger.info("wal.pressure_falling", metadata: metadata)
            }
        }
    }

    /// Deletes segments every cursor has passed (cursor durable → unlink → directory fsync)
    /// and re-evaluates disk pressure. Runs on the writer thread.
    private func performMaintenance() {
        self.refreshPressure()
        // A writer that lost its lock deletes nothing: the paths may name another writer's files.
        guard self.shared.withLock({ $0.halted == nil }) else { return }
        let consumedBefore = self.cursors.withLock { $0.values.map(\.position.lsn).min() }
        let now = self.configuration.wallClock()
        let (pressure, candidates) = self.shared.withLock { shared in
            (
                shared.pressure,
                shared.catalog.segments.filter { $0.state != .active }.map {
                    RetentionPolicy.Candidate(
                        firstLSN: $0.firstLSN,
                        nextLSN: $0.nextLSN,
                        maxTimestampNanos: $0.maxTimestampNanos ?? 0
                    )
                }
            )
        }
        let doomed = self.retention.deletable(
            sealed: candidates,
            consumedBefore: consumedBefore,
            now: now,
            pressure: pressure
        )
        guard !doomed.isEmpty else { return }
        var deleted: [LSN] = []
        for segment in doomed {
            let path = self.segmentDirectory + "/" + SegmentName.make(segment.firstLSN)
            do {
                try self.fileSystem.unlink(path)
                deleted.append(segment.firstLSN)
            } catch {
                self.logger.warning(
                    "wal.segment_delete_failed",
                    metadata: ["wal.segment": "\(path)", "error": "\(error)"]
                )
                break
            }
        }
        do {
            try self.fileSystem.syncDirectory(self.segmentDirectory)
        } catch {
            self.logger.warning("wal.directory_sync_failed", metadata: ["error": "\(error)"])
        }
        self.shared.withLock { $0.catalog.deleted(deleted) }
        self.metrics.deletedSegments.increment(by: Int64(deleted.count))
        self.logger.debug("wal.segments_deleted", metadata: ["wal.count": "\(deleted.count)"])
        self.refreshPressure()
    }

    /// Asks the writer to re-check pressure and retention now rather than within a second.
    public func requestMaintenance() {
        self.maintenanceRequested.store(true, ordering: .relaxed)
        self.wake.signal()
    }

    /// Asks for a maintenance pass and returns once one that started after the call has
    /// finished (segments every cursor passed are deleted, pressure re-evaluated), or the WAL
    /// closed. Lets a test check what maintenance did, or did not do, without sleeping.
    func runMaintenance() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let closed = self.shared.withLock { shared -> Bool in
                if shared.closed { return true }
                shared.maintenanceWaiters.append(continuation)
                return false
            }
            if closed {
                continuation.resume()
            } else {
                self.requestMaintenance()
            }
        }
    }

    // MARK: - Cursors

    /// The durable position of cursor `name`, or nil when it does not exist.
    public func cursor(_ name: String) -> CursorPosition? {
        self.cursors.withLock { $0[name]?.position }
    }

    /// All cursors, by name.
    public var cursorPositions: [CursorPosition] {
        self.cursors.withLock { $0.values.map(\.position) }.sorted { $0.name < $1.name }
    }

    /// Returns cursor `name`, creating it at `initialLSN` (default: the oldest LSN still in
    /// the WAL) when it does not exist yet.
    public func openCursor(_ name: String, at initialLSN: LSN? = nil) async throws -> CursorPosition {
        try CursorFile.validate(name: name)
        if let existing = self.cursor(name) { return existing }
        let start = initialLSN ?? self.oldestLSN
        let directory = self.cursorDirectory
        let fileSystem = self.fileSystem
        let now = self.configuration.wallClock()
        return try await BlockingIO.run {
            try self.cursors.withLock { cursors in
                if let existing = cursors[name] { return existing.position }
                if initialLSN == nil && start > .zero && start < self.durableNextLSN {
                    // Segments below `start` were deleted, which only a consumer's cursor
                    // allows: this cursor existed and its file is gone. Say so: whatever it had
                    // consumed beyond `start` is read (and sent) again.
                    self.logger.warning(
                        "wal.cursor_missing",
                        metadata: [
                            "wal.cursor": "\(name)", "wal.cursor_lsn": "\(start)",
                            "wal.reason":
                                "no cursor file, but segments below LSN \(start) were deleted, so a consumer existed; starting at the oldest LSN still held, events from there on may be sent again",
                        ]
                    )
                }
                try CursorFile.create(directory: directory, name: name, lsn: start, now: now, fileSystem: fileSystem)
                let file = try CursorFile(
                    path: directory + "/" + name + CursorFile.suffix,
                    name: name,
                    fileSystem: fileSystem
                )
                cursors[name] = file
                return file.position
            }
        }
    }

    /// Durably moves cursor `name` to `lsn` (every event below it is consumed), then lets the
    /// writer delete segments all cursors have passed.
    ///
    /// - Throws: ``WALError/Code/notFound`` for an unknown cursor, and
    ///   ``WALError/Code/invalidArgument`` when `lsn` is behind the cursor or past the
    ///   durable end of the WAL.
    public func commitCursor(_ name: String, to lsn: LSN) async throws {
        let durable = self.durableNextLSN
        guard lsn <= durable else {
            throw WALError(.invalidArgument, "cursor \(name) cannot move to \(lsn), past the durable end \(durable)")
        }
        let now = self.configuration.wallClock()
        guard self.shared.withLock({ $0.halted == nil }) else {
            // The directory may be another writer's now: write nothing into it.
            throw WALError(.locked, "cursor \(name) not stored: \(self.unavailableReason ?? "the WAL stopped")")
        }
        let recreated = try await BlockingIO.run {
            try self.cursors.withLock { cursors -> String? in
                guard var file = cursors[name] else {
                    throw WALError(.notFound, "no cursor named \(name); open it first")
                }
                guard lsn >= file.position.lsn else {
                    throw WALError(
                        .invalidArgument,
                        "cursor \(name) cannot move back from \(file.position.lsn) to \(lsn)"
                    )
                }
                if lsn == file.position.lsn { return nil }
                let problem = try file.store(lsn: lsn, now: now)
                cursors[name] = file
                return problem
            }
        }
        if let recreated {
            self.logger.warning(
                "wal.cursor_file_recreated",
                metadata: ["wal.cursor": "\(name)", "wal.cursor_lsn": "\(lsn)", "wal.reason": "\(recreated)"]
            )
        }
        self.metrics.cursorLSN(name).record(Int64(lsn.rawValue))
        self.requestMaintenance()
    }

    // MARK: - Reading

    /// The LSN after the last durable event: what a reader can see.
    public var durableNextLSN: LSN { self.shared.withLock { $0.catalog.durableNextLSN } }

    /// The first LSN still held in a segment.
    public var oldestLSN: LSN {
        self.shared.withLock { $0.catalog.segments.first?.firstLSN ?? $0.catalog.durableNextLSN }
    }

    /// The segments, oldest first, as the writer sees them right now.
    public var segments: [SegmentSummary] { self.shared.withLock { $0.catalog.segments } }

    /// A reader of durable records from `lsn` on; see ``WALTail``.
    public func tail(from lsn: LSN) -> WALTail { WALTail(wal: self, position: lsn) }

    struct TailSnapshot {
        var segments: [SegmentSummary]
        var durableNextLSN: LSN
        var closed: Bool
    }

    func tailSnapshot() -> TailSnapshot {
        self.shared.withLock {
            TailSnapshot(
                segments: $0.catalog.segments,
                durableNextLSN: $0.catalog.durableNextLSN,
                closed: $0.closed
            )
        }
    }

    /// Returns once the durable end passes `lsn`, or the WAL closes, or the task is cancelled.
    func waitForDurable(beyond lsn: LSN) async {
        let id = self.shared.withLock { shared -> UInt64 in
            shared.nextWaiterID += 1
            return shared.nextWaiterID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = self.shared.withLock { shared -> Bool in
                    if shared.catalog.durableNextLSN > lsn || shared.closed || Task.isCancelled { return true }
                    shared.waiters[id] = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            let waiter = self.shared.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume()
        }
    }

    /// Records damage a reader found at run time: quarantined once, logged, counted.
    func report(_ damage: Damage, segmentPath: String) {
        let key = damage.segment + "@" + String(damage.startOffset)
        let isNew = self.shared.withLock { $0.quarantined.insert(key).inserted }
        guard isNew else { return }
        self.metrics.damagedEvents.increment(by: Int64(damage.lostEvents))
        self.logger.error("wal.damage", metadata: ["wal.damage": "\(damage)"])
        do {
            try Quarantine.save(
                damage,
                segmentPath: segmentPath,
                walDirectory: self.configuration.directory,
                detectedNanos: self.configuration.wallClock(),
                fileSystem: self.fileSystem
            )
        } catch {
            self.logger.error("wal.quarantine_failed", metadata: ["error": "\(error)"])
        }
    }

    // MARK: - Closing

    /// Stops intake, lets the writer finish what is queued, closes the files and releases the
    /// directory lock. Idempotent.
    public func close() async {
        guard !self.closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        self.watchdog?.cancel()
        if self.state.withLock({ $0.close() }) { self.wake.signal() }
        let finished = self.writerFinished
        let preparer = self.preparer
        await BlockingIO.run {
            finished.wait()
            preparer.sync {}
        }
        let waiters = self.shared.withLock { shared -> [CheckedContinuation<Void, Never>] in
            shared.closed = true
            let waiters = Array(shared.waiters.values) + shared.maintenanceWaiters
            shared.waiters.removeAll()
            shared.maintenanceWaiters.removeAll()
            return waiters
        }
        for waiter in waiters { waiter.resume() }
        self.cursors.withLock { cursors in
            for file in cursors.values { file.close() }
            cursors.removeAll()
        }
        self.lockWatch.cancel()
        self.lock.release(fileSystem: self.fileSystem)
        self.logger.info("wal.closed", metadata: ["wal.next_lsn": "\(self.durableNextLSN)"])
    }
}

/// Runs blocking work (file reads, fsync of cursor files) on threads outside Swift's
/// cooperative pool.
enum BlockingIO {
    private static let queue = DispatchQueue(label: "sluice.wal.blocking-io", attributes: .concurrent)

    static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            self.queue.async { continuation.resume(with: Result { try body() }) }
        }
    }

    static func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            self.queue.async { continuation.resume(returning: body()) }
        }
    }
}
