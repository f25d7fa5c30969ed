import Encryption
import SluiceCore

extension WALConfiguration {
    /// The `wal.*` keys (docs/configuration.md); their defaults are this struct's (the
    /// directory's is the executable's, the struct has none).
    package static let keys: [ConfigurationKey<WALConfiguration>] =
        [
            .string("wal.directory", \.directory, help: "the WAL directory"),
            .integer("wal.segment_bytes", \.segmentBytes, range: 65536...(1 << 32), help: "segment size"),
            .duration("wal.segment_max_age", \.segmentMaxAge, help: "seal a segment this old"),
            .integer("wal.max_bytes", \.budget.maxBytes, range: 131072...Int64.max, help: "disk budget for segments"),
            .number(
                "wal.soft_watermark",
                \.budget.softFraction,
                range: 0.01...1,
                help: "fraction of max_bytes that alarms"
            ),
            .number(
                "wal.hard_watermark",
                \.budget.hardFraction,
                range: 0.01...1,
                help: "fraction of max_bytes that refuses writes"
            ),
            .integer("wal.min_free_bytes", \.budget.minFreeBytes, help: "free space to leave on the volume"),
            .duration("wal.keep_consumed", \.keepConsumed, help: "keep forwarded segments for local replay"),
        ] + EncryptionConfiguration.keys(prefix: "wal.encryption").map { $0.lifted(\.encryption) }
}
