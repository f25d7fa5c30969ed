import CoreMetrics
import Metrics

/// The WAL's metrics, created once. Names follow Prometheus conventions (`sluice_wal_…`,
/// units in the name); timers are exported as histograms in seconds.
struct WALMetrics: Sendable {
    let appendedRecords = Counter(label: "sluice_wal_appended_records_total")
    let appendedEvents = Counter(label: "sluice_wal_appended_events_total")
    let appendedBytes = Counter(label: "sluice_wal_appended_bytes_total")
    let rejectedAppends: @Sendable (String) -> Counter = { reason in
        Counter(label: "sluice_wal_rejected_appends_total", dimensions: [("reason", reason)])
    }
    let appendDuration = Metrics.Timer(label: "sluice_wal_append_duration_seconds")
    let fsyncDuration = Metrics.Timer(label: "sluice_wal_fsync_duration_seconds")
    let groupCommitRecords = Recorder(label: "sluice_wal_group_commit_records")
    let groupCommitBytes = Recorder(label: "sluice_wal_group_commit_bytes")
    let ioErrors: @Sendable (String) -> Counter = { operation in
        Counter(label: "sluice_wal_io_errors_total", dimensions: [("operation", operation)])
    }
    let bytes = Gauge(label: "sluice_wal_bytes")
    let segments = Gauge(label: "sluice_wal_segments")
    /// `wal.max_bytes`, so alerts compare `sluice_wal_bytes` with the budget actually set.
    let maxBytes = Gauge(label: "sluice_wal_max_bytes")
    let volumeAvailableBytes = Gauge(label: "sluice_wal_volume_available_bytes")
    let pressure = Gauge(label: "sluice_wal_pressure_level")
    let durableLSN = Gauge(label: "sluice_wal_durable_lsn")
    let damagedEvents = Counter(label: "sluice_wal_damaged_events_total")
    let truncatedTailBytes = Counter(label: "sluice_wal_truncated_tail_bytes_total")
    let deletedSegments = Counter(label: "sluice_wal_deleted_segments_total")
    let cursorLSN: @Sendable (String) -> Gauge = { name in
        Gauge(label: "sluice_wal_cursor_lsn", dimensions: [("cursor", name)])
    }
}
