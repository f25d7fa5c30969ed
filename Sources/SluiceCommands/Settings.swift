import ClickHouse
import EventModel
import Forwarder
import Foundation
import Gateway
import Loader
import Logging
import WAL
import Yams

/// Everything `sluice` can be configured with, from defaults, then a YAML file, then
/// `SLUICE_…` environment variables, then command-line flags (each overriding the last).
struct Settings {
    var gateway = GatewayConfiguration()
    var walDirectory = "./data/wal"
    var wal = WALConfiguration(directory: "./data/wal")
    var logLevel: Logger.Level = .info
    /// Where `sluice loader` and `sluice forwarder` serve `/metrics` (the gateway serves it on
    /// its own port); nil: nowhere.
    var metricsListen: (host: String, port: Int)?
    /// Kafka bootstrap servers; nil runs the gateway without a forwarder.
    var kafkaBootstrap: String?
    /// librdkafka properties passed through as they are (TLS, SASL, tuning).
    var kafkaProperties: [String: String] = [:]
    var routing = TopicRouting()
    var forwarderMaxInFlight = 100_000
    var clickHouse = ClickHouseConfiguration(url: "http://127.0.0.1:8123")
    var loaderGroup = "sluice-loader"
    var loaderBatchRows = 20_000
    var loaderBatchBytes = 16 << 20
    var loaderBatchAge: Duration = .seconds(1)
    var loaderRetryInitial: Duration = .milliseconds(200)
    var loaderRetryMax: Duration = .seconds(30)
    var loaderFormat = LoaderConfiguration.defaultFormat
    /// Where the API keys live: a JSON file (one gateway) or a PostgreSQL URL (a fleet); nil: neither set.
    var apiKeys: (file: String?, postgresURL: String?) = (nil, nil)
    /// Every key set by the file, the environment or a flag: its path, its value (secrets
    /// hidden) and where it came from, in the order applied (`sluice config check`).
    var applied: [(path: String, value: String, origin: String)] = []
    /// `loader.routes.<topic>.<field…>` entries, in file order; turned into routes by ``loaderRoutes()``.
    var routeEntries: [(path: [String], value: SettingValue)] = []
    /// `auth.*` and `rate_limits.*`: credentials, policies, limits.
    var auth = AuthSettings()

    /// The loader's settings; nil without Kafka.
    func loaderConfiguration() throws -> LoaderConfiguration? {
        guard let bootstrap = self.kafkaBootstrap else { return nil }
        var properties = self.kafkaProperties
        properties["bootstrap.servers"] = bootstrap
        var configuration = LoaderConfiguration(kafkaProperties: properties, clickHouse: self.clickHouse)
        configuration.groupID = self.loaderGroup
        configuration.batchRows = self.loaderBatchRows
        configuration.batchBytes = self.loaderBatchBytes
        configuration.batchAge = self.loaderBatchAge
        configuration.retryInitial = self.loaderRetryInitial
        configuration.format = self.loaderFormat
        configuration.retryMax = max(self.loaderRetryMax, self.loaderRetryInitial)
        configuration.routes = try self.loaderRoutes()
        do { try configuration.validate() } catch { throw SettingsError(description: "loader: \(error)") }
        return configuration
    }

    /// Routes from `loader.routes`: one per topic; a route without `columns` takes the
    /// normalized event's columns. None configured: `events` → `sluice.events`.
    func loaderRoutes() throws -> [LoaderRoute] {
        var order: [String] = []
        var entries: [String: [(path: [String], value: SettingValue)]] = [:]
        for entry in self.routeEntries {
            guard let topic = entry.path.first, entry.path.count >= 2 else {
                throw SettingsError(description: "\(entry.value.origin): loader.routes.<topic> must be a mapping")
            }
            if entries[topic] == nil { order.append(topic) }
            entries[topic, default: []].append((Array(entry.path.dropFirst()), entry.value))
        }
        guard !order.isEmpty else { return [.events] }
        return try order.map { topic in
            var table: String?
            var dedup = "event_id"
            var time = "timestamp"
            var orderBy: [String]?
            var deadLetter: String?
            var columnOrder: [String] = []
            var columns: [String: [String: SettingValue]] = [:]
            for (path, value) in entries[topic]! {
                let where_ = "\(value.origin): loader.routes.\(topic).\(path.joined(separator: "."))"
                switch path[0] {
                case "table": table = value.text
                case "dedup_column": dedup = value.text
                case "time_column": time = value.text
                case "order_by": orderBy = value.items
                case "dead_letter_topic": deadLetter = value.text
                case "columns":
                    guard path.count == 3 else {
                        throw SettingsError(
                            description:
                                "\(where_): write columns as <name>: {type: …, field: …, required: …, default: …}"
                        )
                    }
                    if columns[path[1]] == nil { columnOrder.append(path[1]) }
                    columns[path[1], default: [:]][path[2]] = value
                default:
                    throw SettingsError(
                        description:
                            "\(where_): unknown route key '\(path[0])' (expected table, columns, dedup_column, time_column, order_by, dead_letter_topic)"
                    )
                }
            }
            guard let table else {
                throw SettingsError(description: "loader.routes.\(topic) needs a table (database.table)")
            }
            var loaderColumns: [LoaderColumn] = []
            for name in columnOrder {
                let spec = columns[name]!
                for key in spec.keys where !["type", "field", "required", "default"].contains(key) {
                    throw SettingsError(
                        description:
                            "\(spec[key]!.origin): loader.routes.\(topic).columns.\(name).\(key) is unknown (expected type, field, required, default)"
                    )
                }
                guard let typeValue = spec["type"], let kind = LoaderColumn.Kind(rawValue: typeValue.text) else {
                    throw SettingsError(
                        description:
                            "loader.routes.\(topic).columns.\(name).type = '\(spec["type"]?.text ?? "")' is invalid: expected one of \(LoaderColumn.Kind.allCases.map(\.rawValue).joined(separator: ", "))"
                    )
                }
                var required = false
                if let value = spec["required"] {
                    guard let flag = Bool(value.text.lowercased()) else {
                        throw SettingsError(
                            description:
                                "\(value.origin): loader.routes.\(topic).columns.\(name).required = '\(value.text)' is invalid: expected true or false"
                        )
                    }
                    required = flag
                }
                loaderColumns.append(
                    LoaderColumn(
                        name,
                        kind,
                        field: spec["field"]?.text,
                        required: required,
                        defaultValue: spec["default"]?.text
                    )
                )
            }
            return LoaderRoute(
                topic: topic,
                table: table,
                columns: loaderColumns.isEmpty ? LoaderRoute.eventColumns : loaderColumns,
                dedupColumn: dedup,
                timeColumn: time,
                orderBy: orderBy ?? (loaderColumns.isEmpty ? ["action", "event_id"] : nil),
                deadLetterTopic: deadLetter
            )
        }
    }

    var forwarderConfiguration: ForwarderConfiguration? {
        guard let bootstrap = self.kafkaBootstrap else { return nil }
        var properties = self.kafkaProperties
        properties["bootstrap.servers"] = bootstrap
        var configuration = ForwarderConfiguration(kafkaProperties: properties)
        configuration.routing = self.routing
        configuration.maxInFlightEvents = self.forwarderMaxInFlight
        return configuration
    }

    /// Checks the gateway's and the WAL's settings and ties the WAL's ack deadline to the
    /// gateway's append timeout.
    mutating func prepareGateway() throws {
        self.wal.ackTimeout = self.gateway.appendTimeout
        try self.gateway.validate()
        try self.walConfiguration.validate()
    }

    var walConfiguration: WALConfiguration {
        var configuration = self.wal
        configuration.directory = self.walDirectory
        return configuration
    }
}

/// A configuration value that cannot be used; says which key, which value, what was expected
/// and where it came from.
struct SettingsError: Error, CustomStringConvertible {
    var description: String
}

/// One configuration key: its YAML path, its environment variable, how to apply it.
struct SettingKey: Sendable {
    enum Kind: String {
        case string, integer, number, boolean, list, duration
    }

    let path: String
    let kind: Kind
    let help: String
    let run: @Sendable (inout Settings, SettingValue, SettingKey) throws -> Void

    init(
        path: String,
        kind: Kind,
        help: String,
        apply: @escaping @Sendable (inout Settings, SettingValue, SettingKey) throws -> Void
    ) {
        self.path = path
        self.kind = kind
        self.help = help
        self.run = apply
    }

    func apply(_ settings: inout Settings, _ value: SettingValue) throws {
        try self.run(&settings, value, self)
        let path = self.path.hasSuffix(".*") ? String(self.path.dropLast()) + value.subkey : self.path
        settings.applied.removeAll { $0.path == path }
        settings.applied.append((path, self.isSecret(path) ? "(secret)" : value.text, value.origin))
    }

    /// Passwords and keys are never printed.
    func isSecret(_ path: String) -> Bool {
        ["password", "secret", "ssl.key.pem", "sasl.oauthbearer.config", "postgres_url"].contains {
            path.lowercased().contains($0)
        }
    }

    /// `gateway.max_body_bytes` → `SLUICE_GATEWAY_MAX_BODY_BYTES`.
    var environmentName: String { "SLUICE_" + self.path.uppercased().replacingOccurrences(of: ".", with: "_") }
}

/// A raw value and where it was read.
struct SettingValue {
    var text: String
    var list: [String]?
    var origin: String
    /// For keys ending in `.*`: the part of the path the `*` stands for.
    var subkey: String = ""

    func fail(_ key: SettingKey, _ expected: String) -> SettingsError {
        SettingsError(description: "\(self.origin): \(key.path) = '\(self.text)' is invalid: expected \(expected)")
    }

    func integer(_ key: SettingKey, range: ClosedRange<Int64> = 0...Int64.max) throws -> Int64 {
        guard let value = Int64(self.text.replacingOccurrences(of: "_", with: "")), range.contains(value) else {
            throw self.fail(key, "a whole number in \(range.lowerBound)...\(range.upperBound)")
        }
        return value
    }

    func number(_ key: SettingKey, range: ClosedRange<Double>) throws -> Double {
        guard let value = Double(self.text), range.contains(value) else {
            throw self.fail(key, "a number in \(range.lowerBound)...\(range.upperBound)")
        }
        return value
    }

    /// `150ms`, `2s`, `5m`, `1h`, `7d`, or a bare number of seconds.
    func duration(_ key: SettingKey) throws -> Duration {
        let text = self.text.trimmingCharacters(in: .whitespaces)
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            if let value = Double(text.dropLast(suffix.count)), value >= 0 {
                return .milliseconds(Int64(value * scale * 1000))
            }
        }
        if let seconds = Double(text), seconds >= 0 { return .milliseconds(Int64(seconds * 1000)) }
        throw self.fail(key, "a duration such as 150ms, 2s, 5m, 1h or 7d")
    }

    func boolean(_ key: SettingKey) throws -> Bool {
        switch self.text.lowercased() {
        case "true", "yes", "on", "1": return true
        case "false", "no", "off", "0": return false
        default: throw self.fail(key, "true or false")
        }
    }

    var items: [String] {
        self.list
            ?? self.text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }
}

enum SettingsLoader {
    static let keys: [SettingKey] = coreKeys + authKeys

    static let coreKeys: [SettingKey] = [
        SettingKey(path: "gateway.listen", kind: .string, help: "HOST:PORT to listen on (default 127.0.0.1:8080)") {
            settings,
            value,
            key in
            let (host, port) = try parseListen(value.text, origin: value.origin)
            settings.gateway.host = host
            settings.gateway.port = port
        },
        SettingKey(
            path: "gateway.gateway_id",
            kind: .string,
            help: "written into events as gateway_id (default: host name)"
        ) { settings, value, key in settings.gateway.gatewayID = value.text
        },
        SettingKey(
            path: "gateway.max_body_bytes",
            kind: .integer,
            help: "largest body, also after decompression (5 MiB)"
        ) { settings, value, key in
            settings.gateway.maxBodyBytes = Int(
                try value.integer(key, range: 1024...(1 << 30))
            )
        },
        SettingKey(path: "gateway.max_batch_events", kind: .integer, help: "most events in one request (1000)") {
            settings,
            value,
            key in
            settings.gateway.maxBatchEvents = Int(
                try value.integer(key, range: 1...1_000_000)
            )
        },
        SettingKey(path: "gateway.trusted_proxies", kind: .list, help: "peers whose X-Forwarded-For is believed") {
            settings,
            value,
            key in settings.gateway.trustedProxies = value.items
        },
        SettingKey(path: "gateway.cors_allowed_origins", kind: .list, help: "browser origins allowed (* for any)") {
            settings,
            value,
            key in settings.gateway.corsAllowedOrigins = value.items
        },
        SettingKey(path: "gateway.append_timeout", kind: .duration, help: "answer 503 if the WAL takes longer (150ms)")
        { settings, value, key in settings.gateway.appendTimeout = try value.duration(key)
        },
        SettingKey(
            path: "gateway.idle_timeout",
            kind: .duration,
            help: "close a connection that waits this long for its next request (75s)"
        ) { settings, value, key in settings.gateway.idleTimeout = try value.duration(key)
        },
        SettingKey(
            path: "gateway.header_timeout",
            kind: .duration,
            help: "408 when a request's headers take longer from its first byte (10s)"
        ) { settings, value, key in settings.gateway.headerTimeout = try value.duration(key)
        },
        SettingKey(
            path: "gateway.body_timeout",
            kind: .duration,
            help: "408 when a request's whole body takes longer after its headers (60s)"
        ) { settings, value, key in settings.gateway.bodyTimeout = try value.duration(key)
        },
        SettingKey(
            path: "gateway.max_connections",
            kind: .integer,
            help: "most open client connections; more wait in the backlog (10000, capped by the fd limit)"
        ) { settings, value, key in
            settings.gateway.maxConnections = Int(try value.integer(key, range: 1...1_000_000))
        },
        SettingKey(path: "gateway.tls.cert_file", kind: .string, help: "PEM certificate chain: turns on HTTPS") {
            settings,
            value,
            key in settings.gateway.tlsCertFile = value.text.isEmpty ? nil : value.text
        },
        SettingKey(path: "gateway.tls.key_file", kind: .string, help: "PEM private key of cert_file (mode 0600)") {
            settings,
            value,
            key in settings.gateway.tlsKeyFile = value.text.isEmpty ? nil : value.text
        },
        SettingKey(
            path: "gateway.tls.client_ca_file",
            kind: .string,
            help: "PEM CAs client certificates must chain to (mutual TLS)"
        ) { settings, value, key in settings.gateway.tlsClientCAFile = value.text.isEmpty ? nil : value.text
        },
        SettingKey(path: "gateway.tls.client_auth", kind: .string, help: "client certificates: none, optional, require")
        { settings, value, key in
            guard let mode = TLSClientAuth(rawValue: value.text.lowercased()) else {
                throw value.fail(key, "none, optional or require")
            }
            settings.gateway.tlsClientAuth = mode
        },
        SettingKey(
            path: "gateway.tls.reload_interval",
            kind: .duration,
            help: "how often the certificate files are checked for a change (10s)"
        ) { settings, value, key in
            let interval = try value.duration(key)
            guard interval >= .milliseconds(10) else { throw value.fail(key, "a duration of at least 10ms") }
            settings.gateway.tlsReloadInterval = interval
        },
        SettingKey(
            path: "gateway.admin_listen",
            kind: .string,
            help: "HOST:PORT serving /healthz, /readyz, /metrics instead of the API listener"
        ) { settings, value, key in
            if value.text.isEmpty {
                settings.gateway.adminHost = nil
                return
            }
            let (host, port) = try parseListen(value.text, origin: value.origin)
            settings.gateway.adminHost = host
            settings.gateway.adminPort = port
        },
        SettingKey(path: "gateway.properties_max_bytes", kind: .integer, help: "largest properties object (16384)") {
            settings,
            value,
            key in
            settings.gateway.limits.maxPropertiesBytes = Int(
                try value.integer(key, range: 2...(1 << 24))
            )
        },
        SettingKey(path: "gateway.timestamp_max_future", kind: .duration, help: "how far ahead timestamps may be (10m)")
        { settings, value, key in
            let duration = try value.duration(key)
            settings.gateway.limits.maxFutureMillis = duration.components.seconds * 1000
        },
        SettingKey(path: "gateway.timestamp_max_past", kind: .duration, help: "how far back timestamps may be (30d)") {
            settings,
            value,
            key in
            let duration = try value.duration(key)
            settings.gateway.limits.maxPastMillis = duration.components.seconds * 1000
        },
        SettingKey(path: "wal.directory", kind: .string, help: "the WAL directory (./data/wal)") {
            settings,
            value,
            key in
            settings.walDirectory = value.text
        },
        SettingKey(path: "wal.segment_bytes", kind: .integer, help: "segment size (64 MiB)") { settings, value, key in
            settings.wal.segmentBytes = try value.integer(key, range: 65536...(1 << 32))
        },
        SettingKey(path: "wal.segment_max_age", kind: .duration, help: "seal a segment this old (1h)") {
            settings,
            value,
            key in
            settings.wal.segmentMaxAge = try value.duration(key)
        },
        SettingKey(path: "wal.max_bytes", kind: .integer, help: "disk budget for segments (8 GiB)") {
            settings,
            value,
            key in
            settings.wal.budget.maxBytes = try value.integer(key, range: 131072...Int64.max)
        },
        SettingKey(path: "wal.soft_watermark", kind: .number, help: "fraction of max_bytes that alarms (0.8)") {
            settings,
            value,
            key in settings.wal.budget.softFraction = try value.number(key, range: 0.01...1)
        },
        SettingKey(path: "wal.hard_watermark", kind: .number, help: "fraction of max_bytes that refuses writes (0.95)")
        { settings, value, key in settings.wal.budget.hardFraction = try value.number(key, range: 0.01...1)
        },
        SettingKey(path: "wal.min_free_bytes", kind: .integer, help: "free space to leave on the volume (256 MiB)") {
            settings,
            value,
            key in settings.wal.budget.minFreeBytes = try value.integer(key)
        },
        SettingKey(path: "wal.keep_consumed", kind: .duration, help: "keep forwarded segments for local replay (0s)") {
            settings,
            value,
            key in settings.wal.keepConsumed = try value.duration(key)
        },
        SettingKey(path: "kafka.bootstrap_servers", kind: .string, help: "Kafka brokers; enables the forwarder") {
            settings,
            value,
            key in settings.kafkaBootstrap = value.text
        },
        SettingKey(path: "kafka.properties.*", kind: .string, help: "any librdkafka property (TLS, SASL, tuning)") {
            settings,
            value,
            key in
            // The delivery contract rests on these; a property that weakens it is refused.
            let required = ["enable.idempotence": ["true"], "acks": ["all", "-1"], "enable.auto.commit": ["false"]]
            if let allowed = required[value.subkey], !allowed.contains(value.text.lowercased()) {
                throw SettingsError(
                    description:
                        "\(value.origin): kafka.properties.\(value.subkey) = '\(value.text)' is refused: Sluice's delivery guarantee needs \(allowed[0]) (it is the default; leave it out)"
                )
            }
            settings.kafkaProperties[value.subkey] = value.text
        },
        SettingKey(path: "forwarder.default_topic", kind: .string, help: "topic for actions without a route (events)") {
            settings,
            value,
            key in settings.routing.defaultTopic = value.text
        },
        SettingKey(
            path: "forwarder.topics.*",
            kind: .string,
            help: "topic per action, e.g. forwarder.topics.purchase: orders"
        ) {
            settings,
            value,
            key in settings.routing.topicsByAction[value.subkey] = value.text
        },
        SettingKey(
            path: "forwarder.max_in_flight",
            kind: .integer,
            help: "events sent and unacknowledged at most (100000)"
        ) {
            settings,
            value,
            key in settings.forwarderMaxInFlight = Int(try value.integer(key, range: 1...10_000_000))
        },
        SettingKey(path: "clickhouse.url", kind: .string, help: "ClickHouse HTTP(S) URL (http://127.0.0.1:8123)") {
            settings,
            value,
            key in
            guard value.text.hasPrefix("http://") || value.text.hasPrefix("https://") else {
                throw value.fail(key, "an http:// or https:// URL, e.g. http://127.0.0.1:8123")
            }
            settings.clickHouse.url = value.text
        },
        SettingKey(path: "clickhouse.user", kind: .string, help: "ClickHouse user (default)") { settings, value, key in
            settings.clickHouse.user = value.text
        },
        SettingKey(path: "clickhouse.password", kind: .string, help: "ClickHouse password (never logged)") {
            settings,
            value,
            key in settings.clickHouse.password = value.text
        },
        SettingKey(path: "clickhouse.ca_file", kind: .string, help: "PEM CA bundle to verify an https ClickHouse") {
            settings,
            value,
            key in settings.clickHouse.caFile = value.text
        },
        SettingKey(
            path: "clickhouse.client_certificate_file",
            kind: .string,
            help: "PEM client certificate, for ClickHouse servers that verify clients"
        ) { settings, value, key in settings.clickHouse.clientCertificateFile = value.text
        },
        SettingKey(path: "clickhouse.client_key_file", kind: .string, help: "PEM private key of the client certificate")
        { settings, value, key in settings.clickHouse.clientKeyFile = value.text
        },
        SettingKey(
            path: "clickhouse.compress_above_bytes",
            kind: .integer,
            help: "gzip insert bodies larger than this (off: pays on real networks, not on loopback)"
        ) { settings, value, key in
            settings.clickHouse.compressRequestsAbove = Int(try value.integer(key, range: 0...(1 << 31)))
        },
        SettingKey(path: "clickhouse.timeout", kind: .duration, help: "per-request timeout (30s)") {
            settings,
            value,
            key in settings.clickHouse.timeout = try value.duration(key)
        },
        SettingKey(path: "loader.group_id", kind: .string, help: "Kafka consumer group (sluice-loader)") {
            settings,
            value,
            key in settings.loaderGroup = value.text
        },
        SettingKey(path: "loader.batch_rows", kind: .integer, help: "insert when a batch has this many rows (20000)") {
            settings,
            value,
            key in settings.loaderBatchRows = Int(try value.integer(key, range: 1...10_000_000))
        },
        SettingKey(path: "loader.batch_bytes", kind: .integer, help: "… or this many bytes (16 MiB)") {
            settings,
            value,
            key in settings.loaderBatchBytes = Int(try value.integer(key, range: 1024...(1 << 31)))
        },
        SettingKey(path: "loader.batch_age", kind: .duration, help: "… or when its oldest row waited this long (1s)") {
            settings,
            value,
            key in settings.loaderBatchAge = try value.duration(key)
        },
        SettingKey(path: "loader.retry_initial", kind: .duration, help: "first pause after a failed insert (200ms)") {
            settings,
            value,
            key in settings.loaderRetryInitial = try value.duration(key)
        },
        SettingKey(
            path: "loader.retry_max",
            kind: .duration,
            help: "longest pause between retries, doubling up to it (30s)"
        ) { settings, value, key in settings.loaderRetryMax = try value.duration(key)
        },
        SettingKey(
            path: "loader.format",
            kind: .string,
            help: "insert format: RowBinary (faster) or JSONEachRow (RowBinary)"
        ) { settings, value, key in
            guard let format = InsertFormat(name: value.text) else {
                throw value.fail(key, "RowBinary or JSONEachRow")
            }
            settings.loaderFormat = format
        },
        SettingKey(path: "loader.routes.*", kind: .string, help: "topic → table routes (see docs/loader.md)") {
            settings,
            value,
            key in
            settings.routeEntries.append((value.subkey.split(separator: ".").map(String.init), value))
        },
        SettingKey(
            path: "metrics.listen",
            kind: .string,
            help: "HOST:PORT for /metrics of sluice loader and forwarder (the gateway uses its own port)"
        ) { settings, value, key in
            settings.metricsListen = try parseListen(value.text, origin: value.origin)
        },
        SettingKey(path: "logging.level", kind: .string, help: "trace, debug, info, notice, warning, error, critical") {
            settings,
            value,
            key in
            guard let level = Logger.Level(rawValue: value.text.lowercased()) else {
                throw value.fail(key, "one of trace, debug, info, notice, warning, error, critical")
            }
            settings.logLevel = level
        },
        SettingKey(
            path: "auth.api_keys.file",
            kind: .string,
            help: "JSON file of API keys (hashes only), reloaded on change"
        ) {
            settings,
            value,
            key in settings.apiKeys.file = value.text
        },
        SettingKey(
            path: "auth.api_keys.postgres_url",
            kind: .string,
            help: "postgres://user@host/db holding the API keys, for a fleet of gateways (never logged)"
        ) { settings, value, key in
            guard value.text.hasPrefix("postgres://") || value.text.hasPrefix("postgresql://") else {
                throw SettingsError(
                    description:
                        "\(value.origin): \(key.path) must be a postgres:// URL, e.g. postgres://sluice@db:5432/sluice"
                )
            }
            settings.apiKeys.postgresURL = value.text
        },
    ]

    static func key(_ path: String) -> SettingKey { self.keys.first { $0.path == path }! }

    static func parseListen(_ text: String, origin: String) throws -> (String, Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (0...65535).contains(port)
        else {
            throw SettingsError(
                description: "\(origin): listen address '\(text)' must be HOST:PORT, e.g. 127.0.0.1:8080"
            )
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return (host.isEmpty ? "0.0.0.0" : host, port)
    }

    /// Builds the settings: defaults ← file ← environment. Flags are applied by the caller.
    static func load(
        file: String?,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws -> Settings {
        var settings = Settings()
        if let file {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw SettingsError(description: "cannot read the configuration file \(file)")
            }
            for (path, var value) in try self.flatten(yaml: text, file: file) {
                let wildcard = self.keys.first { key in
                    key.path.hasSuffix(".*") && path.hasPrefix(key.path.dropLast()) && path.count > key.path.count - 1
                }
                if let wildcard {
                    value.subkey = String(path.dropFirst(wildcard.path.count - 1))
                    try wildcard.apply(&settings, value)
                    continue
                }
                let isSection = self.keys.contains { $0.path.hasPrefix(path + ".") }
                if isSection && (value.list.map(\.isEmpty) ?? ["", "~", "null"].contains(value.text)) {
                    continue  // a section with everything commented out, or an empty list
                }
                guard let key = self.keys.first(where: { $0.path == path }) else {
                    let suggestion = self.closest(to: path).map { " (did you mean \($0)?)" } ?? ""
                    throw SettingsError(description: "\(value.origin): unknown key \(path)\(suggestion)")
                }
                if value.list != nil && key.kind != .list {
                    throw value.fail(key, "a single \(key.kind.rawValue), not a list")
                }
                try key.apply(&settings, value)
            }
        }
        for key in self.keys where !key.path.hasSuffix(".*") {
            if let text = environment[key.environmentName] {
                try key.apply(
                    &settings,
                    SettingValue(text: text, list: nil, origin: "environment \(key.environmentName)")
                )
            }
        }
        // Secrets such as sasl.password belong in the environment, not the file.
        for (name, text) in environment.sorted(by: { $0.key < $1.key })
        where name.hasPrefix(self.kafkaPropertyPrefix) && name.count > self.kafkaPropertyPrefix.count {
            let property = self.kafkaProperty(fromEnvironment: name)
            try self.key("kafka.properties.*").apply(
                &settings,
                SettingValue(text: text, list: nil, origin: "environment \(name)", subkey: property)
            )
        }
        if let unknown = environment.keys.filter({
            $0.hasPrefix("SLUICE_") && !$0.hasPrefix("SLUICE_BIN") && !$0.hasPrefix("SLUICE_TEST")
                && !$0.hasPrefix("SLUICE_CRASH")
                && !$0.hasPrefix(self.kafkaPropertyPrefix)
        })
        .sorted().first(where: { name in !self.keys.contains { $0.environmentName == name } }) {
            throw SettingsError(description: "environment \(unknown) is not a Sluice setting")
        }
        return settings
    }

    static let kafkaPropertyPrefix = "SLUICE_KAFKA_PROPERTIES_"

    /// `SLUICE_KAFKA_PROPERTIES_SASL_PASSWORD` → `sasl.password`: `_` stands for `.` and `__`
    /// for `_` (`SLUICE_KAFKA_PROPERTIES_LOG__LEVEL` → `log_level`).
    static func kafkaProperty(fromEnvironment name: String) -> String {
        String(name.dropFirst(self.kafkaPropertyPrefix.count)).lowercased()
            .replacingOccurrences(of: "__", with: "\u{0}")
            .replacingOccurrences(of: "_", with: ".")
            .replacingOccurrences(of: "\u{0}", with: "_")
    }

    static func flatten(yaml: String, file: String) throws -> [(String, SettingValue)] {
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch {
            throw SettingsError(description: "\(file) is not valid YAML: \(error)")
        }
        guard let root else { return [] }
        var result: [(String, SettingValue)] = []
        func origin(_ node: Node) -> String { "\(file):\(node.mark.map { "\($0.line)" } ?? "?")" }
        func walk(_ node: Node, path: String) throws {
            switch node {
            case .mapping(let mapping):
                for (key, value) in mapping {
                    guard case .scalar(let scalar) = key else {
                        throw SettingsError(description: "\(origin(key)): keys must be plain names")
                    }
                    try walk(value, path: path.isEmpty ? scalar.string : path + "." + scalar.string)
                }
            case .sequence(let sequence):
                // A list of mappings (auth.oauth.issuers, auth.policy): each item's keys under
                // its index, `auth.oauth.issuers.0.issuer`, for a `.*` key to take apart.
                if let first = sequence.first, case .mapping = first {
                    for (index, element) in sequence.enumerated() {
                        guard case .mapping = element else {
                            throw SettingsError(
                                description: "\(origin(element)): every item of \(path) must be a mapping"
                            )
                        }
                        try walk(element, path: path + ".\(index)")
                    }
                    return
                }
                var items: [String] = []
                for element in sequence {
                    guard case .scalar(let scalar) = element else {
                        throw SettingsError(description: "\(origin(element)): \(path) must be a list of plain values")
                    }
                    items.append(scalar.string)
                }
                result.append(
                    (path, SettingValue(text: items.joined(separator: ","), list: items, origin: origin(node)))
                )
            case .scalar(let scalar):
                guard !path.isEmpty else {
                    throw SettingsError(description: "\(file): the top level must be a mapping")
                }
                result.append((path, SettingValue(text: scalar.string, list: nil, origin: origin(node))))
            case .alias:
                throw SettingsError(description: "\(origin(node)): YAML aliases are not supported")
            }
        }
        try walk(root, path: "")
        return result
    }

    static func closest(to path: String) -> String? {
        func distance(_ a: String, _ b: String) -> Int {
            let a = Array(a)
            let b = Array(b)
            var previous = Array(0...b.count)
            for (i, x) in a.enumerated() {
                var current = [i + 1]
                for (j, y) in b.enumerated() {
                    current.append(min(previous[j + 1] + 1, current[j] + 1, previous[j] + (x == y ? 0 : 1)))
                }
                previous = current
            }
            return previous[b.count]
        }
        let best = self.keys.map { ($0.path, distance($0.path, path)) }.min { $0.1 < $1.1 }
        return best.flatMap { $0.1 <= 4 ? $0.0 : nil }
    }
}
