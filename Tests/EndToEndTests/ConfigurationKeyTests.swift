import ClickHouse
import Forwarder
import Foundation
import Gateway
import Loader
import SluiceCore
import TestSupport
import Testing
import WAL

@testable import SluiceCommands

/// The key table itself: each default stated once, in the module's struct, and shown, parsed,
/// named and documented from there.
@Suite struct ConfigurationKeyTests {
    /// What `sluice config keys` shows as a key's default is what the module's own struct
    /// holds: `Settings` keeps no copy of its own.
    @Test func everyDefaultShownIsTheModulesOwn() {
        let settings = Settings()
        func check<Root>(_ keys: [ConfigurationKey<Root>], _ defaults: Root) {
            for key in keys {
                let shown = SettingsLoader.keys.first { $0.path == key.path }
                #expect(shown?.defaultText(in: settings) == key.defaultText(in: defaults), "\(key.path)")
            }
        }
        check(GatewayConfiguration.keys, GatewayConfiguration())
        check(WALConfiguration.keys, WALConfiguration(directory: "./data/wal"))
        check(ForwarderConfiguration.keys, ForwarderConfiguration(kafkaProperties: [:]))
        let clickHouse = ClickHouseConfiguration(url: "http://127.0.0.1:8123")
        check(ClickHouseConfiguration.keys, clickHouse)
        check(LoaderConfiguration.keys, LoaderConfiguration(kafkaProperties: [:], clickHouse: clickHouse))
        check(AuthSettings.keys, AuthSettings())

        // As an operator reads them, and as docs/configuration.md showed them before they were derived.
        let expected = [
            "gateway.listen": "127.0.0.1:8080", "gateway.max_body_bytes": "5242880 (5 MiB)",
            "gateway.append_timeout": "150ms", "gateway.idle_timeout": "75s", "gateway.body_timeout": "60s",
            "gateway.timestamp_max_future": "10m", "gateway.timestamp_max_past": "30d",
            "gateway.tls.client_auth": "none", "gateway.gateway_id": "the host name", "gateway.trusted_proxies": "",
            "wal.directory": "./data/wal", "wal.segment_bytes": "67108864 (64 MiB)", "wal.segment_max_age": "1h",
            "wal.max_bytes": "8589934592 (8 GiB)", "wal.soft_watermark": "0.8", "wal.keep_consumed": "0s",
            "forwarder.max_in_flight": "100000", "clickhouse.timeout": "30s", "loader.batch_rows": "20000",
            "loader.retry_initial": "200ms", "loader.format": "RowBinary", "logging.level": "info",
            "auth.oauth.builtin_server.token_ttl": "15m", "auth.oauth.builtin_server.signing_algorithm": "EdDSA",
            "rate_limits.default.rate": "1000/s", "rate_limits.default.burst": "2 x rate",
        ]
        for (path, text) in expected {
            #expect(SettingsLoader.key(path).defaultText(in: settings) == text, "\(path)")
        }
    }

    /// A default is written as its key takes it: set back, it is the same value.
    @Test func everyDefaultReadsBackAsItself() throws {
        let defaults = Settings()
        for key in SettingsLoader.keys where !key.isWildcard {
            guard let text = key.read(defaults) else { continue }
            var settings = Settings()
            try key.apply(&settings, SettingValue(text: text, list: nil, origin: "test"))
            #expect(key.read(settings) == text, "\(key.path)")
        }
    }

    /// The keys the file sets whose value is not the default; the example must have none.
    func contradictions(of file: String) throws -> [String] {
        let stated = try SettingsLoader.load(file: file, environment: [:])
        let defaults = Settings()
        // No default: the example shows what a deployment writes.
        let examples: Set = ["kafka.bootstrap_servers"]
        return stated.applied.compactMap { entry in
            guard let key = SettingsLoader.keys.first(where: { $0.path == entry.path }), !examples.contains(key.path),
                key.read(stated) != key.read(defaults)
            else { return nil }
            return "\(entry.origin): \(entry.path) = \(entry.value), the default is \(key.defaultText(in: defaults))"
        }
    }

    /// sluice.example.yaml says "every key with its default": a changed default it does not
    /// follow fails here.
    @Test func theExampleFileStatesEachDefaultItShows() throws {
        let example = repositoryRoot().appendingPathComponent("sluice.example.yaml").path
        #expect(try self.contradictions(of: example) == [])

        let directory = try TemporaryDirectory()
        let stale = directory.path + "/stale.yaml"
        try "gateway:\n  append_timeout: 150ms\nloader:\n  batch_rows: 10000\n".write(
            toFile: stale,
            atomically: true,
            encoding: .utf8
        )
        #expect(try self.contradictions(of: stale) == ["\(stale):4: loader.batch_rows = 10000, the default is 20000"])
    }

    @Test func aBadValueNamesTheKeyTheValueAndWhatIsExpected() {
        let cases = [
            (
                "gateway.max_batch_events", "0",
                "gateway.max_batch_events = '0' is invalid: expected a whole number in 1...1000000"
            ),
            (
                "loader.batch_bytes", "1_000",
                "loader.batch_bytes = '1_000' is invalid: expected a whole number in 1024...2147483648"
            ),
            ("wal.soft_watermark", "1.5", "wal.soft_watermark = '1.5' is invalid: expected a number in 0.01...1.0"),
            (
                "gateway.tls.reload_interval", "5ms",
                "gateway.tls.reload_interval = '5ms' is invalid: expected a duration of at least 10ms"
            ),
            (
                "rate_limits.failed_auth_per_ip.hold", "2m",
                "rate_limits.failed_auth_per_ip.hold = '2m' is invalid: expected a duration of at most 60s"
            ),
            (
                "loader.batch_age", "soon",
                "loader.batch_age = 'soon' is invalid: expected a duration such as 150ms, 2s, 5m, 1h or 7d"
            ),
            ("auth.required", "maybe", "auth.required = 'maybe' is invalid: expected true or false"),
            (
                "gateway.tls.client_auth", "always",
                "gateway.tls.client_auth = 'always' is invalid: expected none, optional or require"
            ),
            ("loader.format", "CSV", "loader.format = 'CSV' is invalid: expected RowBinary or JSONEachRow"),
            ("gateway.listen", "nowhere", "listen address 'nowhere' must be HOST:PORT, e.g. 127.0.0.1:8080"),
        ]
        for (path, text, message) in cases {
            var settings = Settings()
            #expect("\(path) = \(text)") {
                try SettingsLoader.key(path).apply(&settings, SettingValue(text: text, list: nil, origin: "--flag"))
            } throws: { error in
                "\(error)" == "--flag: \(message)"
            }
        }
    }

    /// `SLUICE_` and the path in capitals, `.` → `_`; every key but the wildcards has one, and
    /// the environment sets it.
    @Test func environmentNamesDeriveFromPaths() throws {
        #expect(SettingsLoader.key("gateway.max_body_bytes").environmentName == "SLUICE_GATEWAY_MAX_BODY_BYTES")
        #expect(Set(SettingsLoader.keys.map(\.path)).count == SettingsLoader.keys.count, "a path declared twice")
        let defaults = Settings()
        let secrets = try TemporaryDirectory()
        let passwordFile = secrets.path + "/password"
        try Data("secret\n".utf8).write(to: URL(fileURLWithPath: passwordFile))
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: passwordFile)
        let keyFile = secrets.path + "/erasure.key"
        try Data(String(repeating: "ab", count: 32).utf8).write(to: URL(fileURLWithPath: keyFile))
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: keyFile)
        let samples = [
            "gateway.admin_listen": "127.0.0.1:9090", "metrics.listen": "127.0.0.1:9464",
            "auth.api_keys.postgres_url": "postgres://sluice@db/sluice",
            "clickhouse.password_file": passwordFile, "loader.erasure.key_file": keyFile,
        ]
        for key in SettingsLoader.keys where !key.isWildcard {
            #expect(key.environmentName == "SLUICE_" + key.path.uppercased().replacingOccurrences(of: ".", with: "_"))
            let sample = samples[key.path] ?? (key.kind == .integer ? "100" : key.kind == .list ? "a,b" : "x")
            let text = key.read(defaults) ?? sample
            // kafka.security.* keys that need others beside them (a CA file needs ssl, SASL
            // needs its mechanism, user and password) are read from the environment in
            // KafkaSecurityTests, each with the keys it needs.
            if key.path.hasPrefix("kafka.security."), key.read(defaults) == nil { continue }
            let settings = try SettingsLoader.load(file: nil, environment: [key.environmentName: text])
            #expect(
                settings.applied.map(\.origin) == ["environment \(key.environmentName)"],
                "\(key.environmentName)"
            )
        }
    }

    @Test func durationsAreWrittenInTheirLargestExactUnit() throws {
        let cases: [(Duration, String)] = [
            (.zero, "0s"), (.milliseconds(150), "150ms"), (.milliseconds(1500), "1500ms"), (.seconds(60), "60s"),
            (.seconds(75), "75s"), (.seconds(600), "10m"), (.seconds(3600), "1h"), (.seconds(30 * 86400), "30d"),
        ]
        for (duration, text) in cases {
            #expect(ConfigurationValue.text(of: duration) == text)
            #expect(try ConfigurationValue(text: text, list: nil, origin: "test").duration("d") == duration)
        }
    }
}
