import SluiceCore

extension ClickHouseConfiguration {
    /// The `clickhouse.*` keys (docs/configuration.md); their defaults are this struct's (the
    /// URL's is the executable's, the struct has none).
    package static let keys: [ConfigurationKey<ClickHouseConfiguration>] = [
        ConfigurationKey(
            path: "clickhouse.url",
            kind: .string,
            help: "ClickHouse HTTP(S) URL",
            read: { $0.url },
            apply: { configuration, value, key in
                guard value.text.hasPrefix("http://") || value.text.hasPrefix("https://") else {
                    throw value.fail(key.path, "an http:// or https:// URL, e.g. http://127.0.0.1:8123")
                }
                configuration.url = value.text
            }
        ),
        .string("clickhouse.user", \.user, computedDefault: "the server's default user", help: "ClickHouse user"),
        ConfigurationKey(
            path: "clickhouse.password",
            kind: .string,
            help: "ClickHouse password (never logged; prefer password_file)",
            read: { $0.passwordFile == nil ? $0.password : nil },
            apply: { configuration, value, key in
                // The value is a secret: the error names the keys, never the value.
                guard configuration.passwordFile == nil else {
                    throw ConfigurationError(
                        description:
                            "\(value.origin): set clickhouse.password or clickhouse.password_file, not both"
                    )
                }
                configuration.password = value.text
            }
        ),
        ConfigurationKey(
            path: "clickhouse.password_file",
            kind: .string,
            help: "file holding the ClickHouse password (mode 0600; one line)",
            read: { $0.passwordFile },
            apply: { configuration, value, key in
                guard configuration.password == nil || configuration.passwordFile != nil else {
                    throw ConfigurationError(
                        description:
                            "\(value.origin): set clickhouse.password or clickhouse.password_file, not both"
                    )
                }
                configuration.password = try SecretFile.read(value.text, key: key.path, origin: value.origin)
                configuration.passwordFile = value.text
            }
        ),
        .string("clickhouse.ca_file", \.caFile, help: "PEM CA bundle to verify an https ClickHouse"),
        .string(
            "clickhouse.client_certificate_file",
            \.clientCertificateFile,
            help: "PEM client certificate, for ClickHouse servers that verify clients"
        ),
        .string("clickhouse.client_key_file", \.clientKeyFile, help: "PEM private key of the client certificate"),
        .integer(
            "clickhouse.compress_above_bytes",
            \.compressRequestsAbove,
            range: 0...(1 << 31),
            computedDefault: "off",
            help: "gzip insert bodies larger than this (pays on real networks, not on loopback)"
        ),
        .duration("clickhouse.timeout", \.timeout, help: "per-request timeout"),
    ]
}
