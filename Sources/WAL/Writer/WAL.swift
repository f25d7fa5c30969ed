import CoreMetrics
import Dispatch
import Encryption
import Logging
import ServiceLifecycle
import SluiceCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

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
/// Lifecycle: ``open(_:logger:)`` recovers the directory and takes its lock, and starts
/// nothing; ``run()`` (the WAL is a `Service`, run in the process's service group) starts the
/// writer thread, the acknowledgement watchdog and the lock check, and on graceful shutdown
/// closes the WAL once the services listed after it (the HTTP server) have stopped. Appends
/// made before `run()` starts wait in the queue.
///
/// - Important: one process owns a WAL directory at a time (a `flock` on the directory and
///   on `wal.lock` enforces it; see ``WriterLock``). Call ``close()`` before dropping the
///   last reference.
public final class WAL: Service, Sendable {
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

    public let configuration: WALConfiguration
    public let recovery: RecoveryReport
    /// The `wal.encryption` keys: new segments are encrypted under its current key, and
    /// segments written under any of its keys are readable.
    package let keyring: Keyring?
    let logger: Logger
    let fileSystem: any WALFileSystem
    let state: Mutex<GroupCommit<PendingAppend>>
    let shared: Mutex<Shared>
    let cursors: Mutex<[String: CursorFile]>
    let wake = DispatchSemaphore(value: 0)
    let writerFinished = DispatchSemaphore(value: 0)
    let maintenanceRequested = Atomic<Bool>(false)
    /// Set at open: the spare segment is prepared after the first batch is durable.
    let spareDeferred = Atomic<Bool>(false)
    let closed = Atomic<Bool>(false)
    /// The writer thread and timers were started (by ``run()``, ``start()`` or ``close()``).
    let started = Atomic<Bool>(false)
    /// The writer thread's files.
    let writer: SegmentWriter
    let lock: WriterLock
    let metrics = WALMetrics()
    /// Told of each damaged range a reader finds (once per range): the forwarder's ledger.
    let damageObservers = Mutex<[@Sendable (Damage) -> Void]>([])
    let retention: RetentionPolicy
    /// Dispatch sources are thread-safe; the type just does not say so.
    nonisolated(unsafe) private let watchdog: (any DispatchSourceTimer)?
    /// Re-checks ``WriterLock`` every ``WALConfiguration/lockCheckInterval``.
    nonisolated(unsafe) private let lockWatch: any DispatchSourceTimer

    let counters = Counters()

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
    /// crash. Nothing runs until ``run()`` (or, for tools that own the WAL's lifetime,
    /// ``start()``).
    ///
    /// - Throws: ``WALError/Code/locked`` when another process owns the directory, or an
    ///   I/O error when it cannot be read.
    public static func open(
        _ configuration: WALConfiguration,
        logger: Logger = Logger(label: "sluice.wal")
    ) async throws
        -> WAL
    {
        try await offPool { try WAL(configuration: configuration, logger: logger) }
    }

    /// ``open(_:logger:)`` and then ``start()``: for the tools, benchmarks and tests that own
    /// the WAL's lifetime (and ``close()`` it themselves) instead of running it in a service
    /// group.
    package static func openAndStart(
        _ configuration: WALConfiguration,
        logger: Logger = Logger(label: "sluice.wal")
    ) async throws -> WAL {
        let wal = try await Self.open(configuration, logger: logger)
        wal.start()
        return wal
    }

    private init(configuration: WALConfiguration, logger: Logger) throws {
        try configuration.validate()
        let keyring: Keyring?
        do {
            keyring = try configuration.encryption.keyring(prefix: "wal.encryption", origin: "wal")
        } catch {
            throw WALError(.invalidArgument, error.description)
        }
        let started = configuration.monotonicClock()
        let fileSystem = configuration.fileSystem
        let directory = configuration.directory
        try fileSystem.makeDirectory(directory)
        try fileSystem.makeDirectory(directory + "/cursors")
        try fileSystem.makeDirectory(directory + "/" + Quarantine.directoryName)
        let lock = try WriterLock.acquire(directory: directory, fileSystem: fileSystem, waitMilliseconds: 1000)
        let writer = SegmentWriter(
            fileSystem: fileSystem,
            directory: directory,
            segmentBytes: configuration.segmentBytes,
            keyring: keyring,
            logger: logger
        )
        writer.removeLeftoverSpare()
        do {
            var report = RecoveryReport()
            let recovered = try Self.recover(
                configuration: configuration,
                writer: writer,
                keyring: keyring,
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
            self.keyring = keyring
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
                writer.closeSegment()
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
            writer.closeSegment()
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
    }

    /// Runs the WAL in a service group: starts it, and closes it on graceful shutdown or
    /// cancellation. List it before the services that append (the HTTP server), so it stops
    /// after them: no request is left waiting on a closed log.
    public func run() async throws {
        self.start()
        try? await gracefulShutdown()
        await self.close()
    }

    /// Starts the writer thread, the acknowledgement watchdog and the lock check; once only.
    /// ``run()`` calls it; tools and tests that own the WAL's lifetime call it themselves
    /// (and ``close()`` at the end).
    package func start() {
        guard !self.started.exchange(true, ordering: .acquiringAndReleasing) else { return }
        // A dedicated serial queue: its thread is owned by the writer loop for the WAL's
        // lifetime, so fdatasync never blocks a cooperative-pool thread.
        DispatchQueue(label: "sluice.wal.writer", qos: .userInitiated).async { self.writerLoop() }
        if let watchdog = self.watchdog, let timeout = self.configuration.ackTimeout {
            let interval = max(Int(timeout.nanoseconds / 5), 2_000_000)
            watchdog.schedule(deadline: .now() + .nanoseconds(interval), repeating: .nanoseconds(interval))
            watchdog.setEventHandler { [weak self] in self?.expireLateAppends(timeout: timeout) }
            watchdog.resume()
        }
        let lockInterval = max(Int(self.configuration.lockCheckInterval.nanoseconds), 1_000_000)
        self.lockWatch.schedule(deadline: .now() + .nanoseconds(lockInterval), repeating: .nanoseconds(lockInterval))
        self.lockWatch.setEventHandler { [weak self] in self?.checkLock() }
        self.lockWatch.resume()
    }

    deinit {
        // A WAL opened and dropped without running or closing (a tool that only read it):
        // Dispatch traps on releasing a timer source that was never activated, and the
        // directory's lock would stay held until the process exits. (A started WAL cannot
        // get here before it is closed: its writer thread holds a reference.)
        if !self.started.load(ordering: .acquiring) {
            self.watchdog?.activate()
            self.watchdog?.cancel()
            self.lockWatch.activate()
            self.lockWatch.cancel()
            self.writer.closeSegment()
            self.cursors.withLock { cursors in
                for file in cursors.values { file.close() }
            }
            self.lock.release(fileSystem: self.fileSystem)
        }
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
        // Sealed records get their CRC from the writer, over the sealed bytes.
        let overhead = self.writer.payloadOverhead
        let pending = PendingAppend(
            payload: payload,
            payloadCRC: overhead == 0 ? CRC32C.checksum(payload) : 0,
            completion: completion
        )
        let frameLength = alignedTo8(FrameHeader.size + payload.count + overhead)
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
                // Appends were each synced; this only makes the close tidy.
                self.writer.closeSegment(sync: true)
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
        let fsyncStarted: UInt64
        do {
            try self.writer.write(batch)
            fsyncStarted = self.configuration.monotonicClock()
            do {
                try self.writer.sync()
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
        // The totals count the batch before its appenders resume, so whoever holds a receipt
        // sees it counted (the group-commit test read 111 of 400 records once on a loaded CI
        // machine when the counters came after the completions).
        var events = 0
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
        let completed = self.state.withLock { $0.written() }
        for record in completed {
            self.metrics.appendDuration.recordNanoseconds(Int64(finished &- record.enqueuedAt))
            record.item.completion(
                .success(AppendReceipt(firstLSN: record.lsn, eventCount: Int(record.eventCount)))
            )
        }
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

    private func roll(
        sealing: GroupCommit<PendingAppend>.ActiveSegment?,
        closing: GroupCommit<PendingAppend>.ActiveSegment?,
        firstLSN: LSN,
        now: UInt64
    ) {
        if closing != nil, self.writer.isOpen {
            if let sealing {
                do {
                    try self.writer.seal(sealing)
                } catch {
                    // Left unsealed: that costs one scan at the next start-up and nothing else.
                    self.logger.warning(
                        "wal.seal_failed",
                        metadata: ["wal.segment": "\(self.writer.path)", "error": "\(error)"]
                    )
                }
            }
            self.writer.closeSegment()
        }
        let name = SegmentName.make(firstLSN)
        let dataStart: Int64
        do {
            dataStart = try self.writer.create(firstLSN: firstLSN, now: now).dataStart
        } catch {
            let walError = (error as? WALError) ?? WALError(.io, "creating \(name) failed")
            self.metrics.ioErrors("create_segment").increment()
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
        self.state.withLock { $0.rolled(firstLSN: firstLSN, now: now, dataStart: dataStart) }
        let keyID = self.writer.cipher?.keyID
        let segmentBytes = self.configuration.segmentBytes
        self.shared.withLock {
            $0.catalog.rolled(
                sealed: sealing != nil,
                name: name,
                firstLSN: firstLSN,
                fileBytes: segmentBytes,
                dataStart: dataStart,
                keyID: keyID
            )
        }
        self.logger.debug("wal.segment_created", metadata: ["wal.segment": "\(name)"])
        self.refreshPressure()
        self.requestSpare()
    }

    /// Starts zero-filling the next segment in the background unless one is ready or under way,
    /// or space is short: a spare would take the room the budget keeps free.
    private func requestSpare() {
        guard self.shared.withLock({ $0.pressure == .normal && $0.halted == nil }) else { return }
        self.writer.requestSpare()
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
    /// Calls `observer` with each damaged range found from now on by a reader of this WAL
    /// (damage found at recovery is in ``recovery``).
    public func observeDamage(_ observer: @escaping @Sendable (Damage) -> Void) {
        self.damageObservers.withLock { $0.append(observer) }
    }

    func report(_ damage: Damage, segmentPath: String) {
        let key = damage.segment + "@" + String(damage.startOffset)
        let isNew = self.shared.withLock { $0.quarantined.insert(key).inserted }
        guard isNew else { return }
        for observer in self.damageObservers.withLock({ $0 }) { observer(damage) }
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
        // Never started: the writer still drains what was queued, and a suspended timer
        // source must be resumed before it may be cancelled (Dispatch's rule).
        self.start()
        self.watchdog?.cancel()
        if self.state.withLock({ $0.close() }) { self.wake.signal() }
        let finished = self.writerFinished
        let writer = self.writer
        await offPool {
            finished.wait()
            writer.waitForSpare()
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
