import CoreMetrics
import Dispatch
import Logging
import Synchronization

/// Disk pressure and retention: the writer re-evaluates both on its maintenance passes (when
/// idle, after a cursor moves, after a failed roll), and deletes what every cursor passed.
extension WAL {
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

    func refreshPressure() {
        let volume = try? self.fileSystem.volumeSpace(self.configuration.directory)
        let budget = self.configuration.budget
        let spareBytes = self.writer.spareBytes
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
    func performMaintenance() {
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
}
