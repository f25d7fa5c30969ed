import ClickHouse
import Encryption
import EventModel
import Forwarder
import Foundation
import Gateway
import Kafka
import Ledger
import Loader
import Logging
import SluiceCore
import WAL
import Yams

/// Everything `sluice` can be configured with, from defaults, then a YAML file, then
/// `SLUICE_…` environment variables, then command-line flags (each overriding the last).
///
/// It holds the modules' own configuration structs, whose defaults are the defaults, and
/// only what belongs to the executable itself (Kafka's address, shared by the forwarder and
/// the loader; logging; the API key store; the auth settings).
struct Settings {
    var gateway = GatewayConfiguration()
    var wal = WALConfiguration(directory: "./data/wal")
    /// Without its Kafka properties: ``forwarderConfiguration`` adds them.
    var forwarder = ForwarderConfiguration(kafkaProperties: [:])
    /// Without its Kafka properties and routes: ``loaderConfiguration()`` adds them.
    var loader = LoaderConfiguration(
        kafkaProperties: [:],
        clickHouse: ClickHouseConfiguration(url: "http://127.0.0.1:8123")
    )
    var logLevel: Logger.Level = .info
    /// Where `sluice loader` and `sluice forwarder` serve `/metrics` (the gateway serves it on
    /// its own port); nil: nowhere.
    var metricsListen: (host: String, port: Int)?
    /// Kafka bootstrap servers; nil runs the gateway without a forwarder.
    var kafkaBootstrap: String?
    /// librdkafka properties passed through as they are (TLS, SASL, tuning).
    var kafkaProperties: [String: String] = [:]
    /// `kafka.security.*`: merged into ``kafkaProperties`` once everything is read.
    var kafkaSecurity = KafkaSecurity()
    /// `kafka.encryption.*`: the payload envelope's keys, for the forwarder and the loader.
    var kafkaEncryption = EncryptionConfiguration()
    /// Where the API keys live: a JSON file (one gateway) or a PostgreSQL URL (a fleet); nil: neither set.
    var apiKeys: (file: String?, postgresURL: String?) = (nil, nil)
    /// Every key set by the file, the environment or a flag: its path, its value (secrets
    /// hidden) and where it came from, in the order applied (`sluice config check`).
    var applied: [(path: String, value: String, origin: String)] = []
    /// `loader.routes.<topic>.<field…>` entries, in file order; turned into routes by ``loaderRoutes()``.
    var routeEntries: [(path: [String], value: SettingValue)] = []
    /// `auth.*` and `rate_limits.*`: credentials, policies, limits.
    var auth = AuthSettings()
    /// `analytics.*`: the gateway's stats API and analytics page.
    var analytics = AnalyticsConfiguration()
    /// `ledger.*`: the conservation ledger's topic.
    var ledger = LedgerSettings()
    /// `receipts.*`: delivery receipts and ack levels.
    var receipts = ReceiptSettings()

    /// The WAL directory (`wal.directory`, `--wal-dir`). This accessor and the next three
    /// only name a part of a module's struct for the callers; they hold nothing.
    var walDirectory: String {
        get { self.wal.directory }
        set { self.wal.directory = newValue }
    }

    /// The loader's ClickHouse (`clickhouse.*`, `--clickhouse-url`).
    var clickHouse: ClickHouseConfiguration {
        get { self.loader.clickHouse }
        set { self.loader.clickHouse = newValue }
    }

    var routing: TopicRouting { self.forwarder.routing }

    var walConfiguration: WALConfiguration { self.wal }

    /// `kafka.properties` (with the `kafka.security` keys merged in) and `bootstrap.servers`:
    /// what every Kafka client of the process uses; nil without Kafka.
    var kafkaClientProperties: [String: String]? {
        guard let bootstrap = self.kafkaBootstrap else { return nil }
        var properties = self.kafkaProperties
        properties["bootstrap.servers"] = bootstrap
        return properties
    }

    /// The loader's settings; nil without Kafka.
    func loaderConfiguration() throws -> LoaderConfiguration? {
        guard let properties = self.kafkaClientProperties else { return nil }
        var configuration = self.loader
        configuration.kafkaProperties = properties
        configuration.encryption = self.kafkaEncryption
        configuration.retryMax = max(configuration.retryMax, configuration.retryInitial)
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
            var options: [(String, SettingValue)] = []
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
                case let option where LoaderRoute.optionKeys.contains(option): options.append((option, value))
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
                            "\(where_): unknown route key '\(path[0])' (expected table, columns, dedup_column, time_column, order_by, dead_letter_topic, \(LoaderRoute.optionKeys.joined(separator: ", ")))"
                    )
                }
            }
            guard let table else {
                throw SettingsError(description: "loader.routes.\(topic) needs a table (database.table)")
            }
            var loaderColumns: [LoaderColumn] = []
            for name in columnOrder {
                let spec = columns[name]!
                for key in spec.keys where !["type", "field", "required", "default", "header"].contains(key) {
                    throw SettingsError(
                        description:
                            "\(spec[key]!.origin): loader.routes.\(topic).columns.\(name).\(key) is unknown (expected type, field, required, default, header)"
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
                        defaultValue: spec["default"]?.text,
                        header: spec["header"]?.text
                    )
                )
            }
            var route = LoaderRoute(
                topic: topic,
                table: table,
                columns: loaderColumns.isEmpty ? LoaderRoute.eventColumns : loaderColumns,
                dedupColumn: dedup,
                timeColumn: time,
                orderBy: orderBy ?? (loaderColumns.isEmpty ? LoaderRoute.eventsOrderBy : nil),
                deadLetterTopic: deadLetter
            )
            for (option, value) in options {
                do { try route.applyOption(option, value.text) } catch {
                    throw SettingsError(description: "\(value.origin): loader.routes.\(topic).\(option): \(error)")
                }
            }
            return route
        }
    }

    var forwarderConfiguration: ForwarderConfiguration? {
        guard let properties = self.kafkaClientProperties else { return nil }
        var configuration = self.forwarder
        configuration.kafkaProperties = properties
        configuration.encryption = self.kafkaEncryption
        configuration.gatewayID = self.gateway.gatewayID
        return configuration
    }

    /// The ledger's publisher for a role of this process; nil without Kafka or with the ledger
    /// off. The caller closes it after the role stopped (it flushes what is queued).
    func ledgerPublisher(logger: Logger) throws -> LedgerPublisher? {
        guard self.ledger.enabled, let properties = self.kafkaClientProperties else { return nil }
        do {
            return try LedgerPublisher(properties: properties, topic: self.ledger.topic, logger: logger)
        } catch {
            throw SettingsError(description: "ledger: \(error)")
        }
    }

    /// The receipts' MAC key: `receipts.key_file`, or the WAL directory's own (made, 32 random
    /// bytes, mode 0600, the first time).
    func receiptKey() throws -> [UInt8] {
        if let file = self.receipts.keyFile {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw SettingsError(description: "receipts.key_file: cannot read \(file)")
            }
            guard data.count >= 32 else {
                throw SettingsError(
                    description:
                        "receipts.key_file: \(file) holds \(data.count) bytes; a key needs at least 32 (e.g. head -c 32 /dev/urandom)"
                )
            }
            return [UInt8](data)
        }
        let path = self.walDirectory + "/receipts.key"
        if let data = FileManager.default.contents(atPath: path), data.count >= 32 { return [UInt8](data) }
        var key = [UInt8](repeating: 0, count: 32)
        for index in key.indices { key[index] = UInt8.random(in: 0...255) }
        guard FileManager.default.createFile(atPath: path, contents: Data(key), attributes: [.posixPermissions: 0o600])
        else {
            throw SettingsError(description: "receipts: cannot write a key to \(path)")
        }
        return key
    }

    /// Checks the gateway's and the WAL's settings and ties the WAL's ack deadline to the
    /// gateway's append timeout.
    mutating func prepareGateway() throws {
        self.wal.ackTimeout = self.gateway.appendTimeout
        try self.gateway.validate()
        try self.wal.validate()
    }
}

typealias SettingsError = ConfigurationError
typealias SettingValue = ConfigurationValue
/// One key of the composed table: the modules' keys lifted into ``Settings``, and the
/// executable's own.
typealias SettingKey = ConfigurationKey<Settings>

extension ConfigurationKey<Settings> {
    /// Sets the value and records it for `sluice config check`.
    func apply(_ settings: inout Settings, _ value: SettingValue) throws {
        try self.set(&settings, value)
        let path = self.isWildcard ? String(self.path.dropLast()) + value.subkey : self.path
        settings.applied.removeAll { $0.path == path }
        settings.applied.append((path, Self.isSecret(path) ? "(secret)" : value.text, value.origin))
    }

    /// Passwords and keys are never printed.
    static func isSecret(_ path: String) -> Bool {
        ["password", "secret", "ssl.key.pem", "sasl.oauthbearer.config", "postgres_url"].contains {
            path.lowercased().contains($0)
        }
    }
}

extension ConfigurationValue {
    func fail(_ key: SettingKey, _ expected: String) -> SettingsError { self.fail(key.path, expected) }

    func integer(_ key: SettingKey, range: ClosedRange<Int64> = 0...Int64.max) throws -> Int64 {
        try self.integer(key.path, range: range)
    }

    func duration(_ key: SettingKey) throws -> Duration { try self.duration(key.path) }

    func boolean(_ key: SettingKey) throws -> Bool { try self.boolean(key.path) }
}

enum SettingsLoader {
    /// Every key, in the order of docs/configuration.md: each module's, lifted to where
    /// ``Settings`` holds its configuration, and the executable's own.
    static let keys: [SettingKey] =
        GatewayConfiguration.keys.map { $0.lifted(\Settings.gateway) }
        + WALConfiguration.keys.map { $0.lifted(\Settings.wal) }
        + kafkaKeys
        + KafkaSecurity.keys.map { $0.lifted(\Settings.kafkaSecurity) }
        + EncryptionConfiguration.keys(prefix: "kafka.encryption").map { $0.lifted(\Settings.kafkaEncryption) }
        + ForwarderConfiguration.keys.map { $0.lifted(\Settings.forwarder) }
        + LedgerSettings.keys.map { $0.lifted(\Settings.ledger) }
        + ReceiptSettings.keys.map { $0.lifted(\Settings.receipts) }
        + ClickHouseConfiguration.keys.map { $0.lifted(\Settings.loader.clickHouse) }
        + LoaderConfiguration.keys.map { $0.lifted(\Settings.loader) } + [routesKey]
        + ErasureConfiguration.keys.map { $0.lifted(\Settings.loader.erasure) }
        + processKeys
        + AuthSettings.keys.map { $0.lifted(\Settings.auth) }
        + AnalyticsConfiguration.keys.map { $0.lifted(\Settings.analytics) }

    /// `kafka.*`: shared by the forwarder, the loader and the on-call tools.
    static let kafkaKeys: [SettingKey] = [
        SettingKey(
            path: "kafka.bootstrap_servers",
            kind: .string,
            help: "Kafka brokers; enables the forwarder",
            read: { $0.kafkaBootstrap },
            apply: { settings, value, _ in settings.kafkaBootstrap = value.text }
        ),
        SettingKey(path: "kafka.properties.*", kind: .string, help: "any librdkafka property (TLS, SASL, tuning)") {
            settings,
            value,
            _ in
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
    ]

    /// `loader.routes`: a mapping of mappings, collected here and read by ``Settings/loaderRoutes()``.
    static let routesKey = SettingKey(
        path: "loader.routes.*",
        kind: .string,
        help: "topic → table routes (see docs/loader.md)",
        computedDefault: "events → sluice.events"
    ) { settings, value, _ in
        settings.routeEntries.append((value.subkey.split(separator: ".").map(String.init), value))
    }

    /// The process's own keys: where its metrics and logs go, where the API keys live.
    static let processKeys: [SettingKey] = [
        SettingKey(
            path: "metrics.listen",
            kind: .string,
            help: "HOST:PORT for /metrics of sluice loader and forwarder (the gateway uses its own port)",
            read: { settings in settings.metricsListen.map { ConfigurationValue.text(host: $0.host, port: $0.port) } },
            apply: { settings, value, _ in settings.metricsListen = try value.listenAddress() }
        ),
        SettingKey(
            path: "logging.level",
            kind: .string,
            help: "trace, debug, info, notice, warning, error, critical",
            read: { $0.logLevel.rawValue },
            apply: { settings, value, key in
                guard let level = Logger.Level(rawValue: value.text.lowercased()) else {
                    throw value.fail(key, "one of trace, debug, info, notice, warning, error, critical")
                }
                settings.logLevel = level
            }
        ),
        SettingKey(
            path: "auth.api_keys.file",
            kind: .string,
            help: "JSON file of API keys (hashes only), reloaded on change",
            computedDefault: "keys.json beside the WAL directory",
            read: { $0.apiKeys.file },
            apply: { settings, value, _ in settings.apiKeys.file = value.text }
        ),
        SettingKey(
            path: "auth.api_keys.postgres_url",
            kind: .string,
            help: "postgres://user@host/db holding the API keys, for a fleet of gateways (never logged)",
            read: { $0.apiKeys.postgresURL },
            apply: { settings, value, key in
                guard value.text.hasPrefix("postgres://") || value.text.hasPrefix("postgresql://") else {
                    throw SettingsError(
                        description:
                            "\(value.origin): \(key.path) must be a postgres:// URL, e.g. postgres://sluice@db:5432/sluice"
                    )
                }
                settings.apiKeys.postgresURL = value.text
            }
        ),
    ]

    static func key(_ path: String) -> SettingKey { self.keys.first { $0.path == path }! }

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
                    key.isWildcard && path.hasPrefix(key.path.dropLast()) && path.count > key.path.count - 1
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
        for key in self.keys where !key.isWildcard {
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
                && !$0.hasPrefix(self.kafkaPropertyPrefix) && !DevCredentials.environmentNames.contains($0)
        })
        .sorted().first(where: { name in !self.keys.contains { $0.environmentName == name } }) {
            throw SettingsError(description: "environment \(unknown) is not a Sluice setting")
        }
        // The named Kafka security settings become librdkafka properties here, once file and
        // environment are both read, so that the forwarder, the loader and the on-call tools
        // all connect the same way and a weakening is refused before anything starts.
        do {
            settings.kafkaProperties = try settings.kafkaSecurity.properties(merging: settings.kafkaProperties)
        } catch {
            throw SettingsError(description: error.message)
        }
        settings.kafkaSecurity.registerOAuthBearerSource()
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
