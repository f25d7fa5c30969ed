import SluiceCore

extension LoaderConfiguration {
    /// The `loader.*` keys (docs/configuration.md); their defaults are this struct's.
    /// `loader.routes` is a mapping of mappings, read by the executable into ``routes``.
    package static let keys: [ConfigurationKey<LoaderConfiguration>] = [
        .string("loader.group_id", \.groupID, help: "Kafka consumer group"),
        .integer(
            "loader.batch_rows",
            \.batchRows,
            range: 1...10_000_000,
            help: "insert when a batch has this many rows"
        ),
        .integer("loader.batch_bytes", \.batchBytes, range: 1024...(1 << 31), help: "… or this many bytes"),
        .duration("loader.batch_age", \.batchAge, help: "… or when its oldest row waited this long"),
        .duration("loader.retry_initial", \.retryInitial, help: "first pause after a failed insert"),
        .duration("loader.retry_max", \.retryMax, help: "longest pause between retries, doubling up to it"),
        ConfigurationKey(
            path: "loader.format",
            kind: .string,
            help: "insert format: RowBinary (faster) or JSONEachRow",
            read: { $0.format.rawValue },
            apply: { configuration, value, key in
                guard let format = InsertFormat(name: value.text) else {
                    throw value.fail(key.path, "RowBinary or JSONEachRow")
                }
                configuration.format = format
            }
        ),
    ]
}
