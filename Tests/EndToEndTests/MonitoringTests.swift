import AsyncHTTPClient
import Foundation
import Kafka
import LocalClickHouse
import TestSupport
import Testing

/// The shipped monitoring, live: Debian's Prometheus and Alertmanager with
/// ops/prometheus/prometheus.yml and sluice-rules.yaml (through ``PrometheusLab``: the test's
/// targets, short intervals, time compressed 60×) scraping a running gateway and loader.
@Suite(.timeLimit(.minutes(5))) struct MonitoringTests {
    /// Every metric the rules and the Grafana dashboard use exists in Prometheus; a Kafka
    /// outage fires SluiceForwarderLagGrowing and a ClickHouse outage SluiceLoaderInsertRetries,
    /// each reaches Alertmanager and resolves when the outage ends. Every log line the gateway
    /// and the loader wrote meanwhile (Kafka and ClickHouse errors included) keeps the ECS
    /// contract.
    @Test(.enabled(if: PrometheusServer.isInstalled))
    func theShippedRulesFireAndResolveForRealOutages() async throws {
        let started = ContinuousClock.now
        let cluster = try KafkaMockCluster(brokers: 3)
        // Its brokers go down and up: keep their ports from other tests meanwhile.
        let reserved = ReservedPorts(bootstrapServers: cluster.bootstrapServers)
        defer { withExtendedLifetime(reserved) {} }
        try cluster.createTopic("events", partitions: 3)
        let clickHouse = try await ClickHouseServer.start()
        defer { clickHouse.stop() }
        let state = try TemporaryDirectory()
        let door = try await FrontDoor.make(in: state.path)
        let environment = ["SLUICE_KAFKA_PROPERTIES_LOG__LEVEL": "3"].merging(door.environment) { $1 }
        let gateway = try SluiceProcess(
            [
                "gateway", "--listen", "127.0.0.1:0", "--wal-dir", state.path + "/wal",
                "--kafka-bootstrap", cluster.bootstrapServers,
            ],
            environment: environment
        )
        let gatewayPort = try await gateway.listeningPort()
        // Retries at most 0.5 s apart: the compressed [3m] window of the retry alert is 3 s.
        let loader = try SluiceProcess(
            ["loader", "--kafka-bootstrap", cluster.bootstrapServers, "--clickhouse-url", clickHouse.httpURL],
            environment: environment.merging([
                "SLUICE_METRICS_LISTEN": "127.0.0.1:0", "SLUICE_LOADER_BATCH_AGE": "200ms",
                "SLUICE_LOADER_RETRY_INITIAL": "100ms", "SLUICE_LOADER_RETRY_MAX": "500ms",
            ]) { $1 }
        )
        let loaderPort = try await loader.listeningPort("metrics.listening")
        let alertmanager = try await PrometheusServer.alertmanager(directory: state.path)
        let root = repositoryRoot().appendingPathComponent("ops/prometheus")
        let lab = PrometheusLab(
            gatewayTargets: ["127.0.0.1:\(gatewayPort)"],
            loaderTargets: ["127.0.0.1:\(loaderPort)"],
            alertmanager: String(alertmanager.url.dropFirst("http://".count)),
            gatewayCAFile: door.caFile
        )
        let config = try lab.write(
            config: String(contentsOf: root.appendingPathComponent("prometheus.yml"), encoding: .utf8),
            rules: String(contentsOf: root.appendingPathComponent("sluice-rules.yaml"), encoding: .utf8),
            into: state.path
        )
        let prometheus = try await PrometheusServer.prometheus(config: config, directory: state.path)

        let client = door.client()
        // SteadyLoad stops for good: one per phase.
        func startLoad(workers: Int, batch: ClosedRange<Int>, pause: Duration) -> (SteadyLoad, Task<Void, Never>) {
            let load = SteadyLoad(
                client: client,
                target: "https://127.0.0.1:\(gatewayPort)",
                authorization: "Bearer \(door.key)",
                action: "monitoring"
            )
            return (load, Task { await load.run(workers: workers, batch: batch, pause: pause) })
        }
        func value(_ expression: String) async throws -> Double? {
            try await prometheus.query(expression).first?.value
        }
        func alert(_ name: String, severity: String) async throws -> String? {
            try await prometheus.alerts().first { $0.name == name && $0.labels["severity"] == severity }?.state
        }
        func inAlertmanager(_ name: String) async throws -> Bool {
            try await alertmanager.alertmanagerAlerts().contains { $0.name == name }
        }

        // 1. Events flow end to end; both targets are up and every metric is there.
        var (load, posting) = startLoad(workers: 1, batch: 20...20, pause: .milliseconds(100))
        var step = "waiting for the first rows in ClickHouse"
        var used: Set<String> = []
        var exported: Set<String> = []
        var (lagFired, lagResolved, retriesFired, retriesResolved) = (
            Duration.zero, Duration.zero, Duration.zero, Duration.zero
        )
        do {
            try await waitUntil(timeout: .seconds(90), pollEvery: .milliseconds(250)) {
                let up = try await value(#"sum(up{job=~"sluice-gateway|sluice-loader"})"#)
                let inserted = try await value("sum(sluice_loader_inserted_rows_total)") ?? 0
                let delivered = try await value("sum(sluice_forwarder_delivery_latency_seconds_count)") ?? 0
                return up == 2 && inserted > 0 && delivered > 0
            }
            used = try Self.metricsUsed()
            exported = try await prometheus.metricNames()
            let missing = used.subtracting(exported).subtracting(Self.onlyWhenItHappens.keys)
            #expect(
                missing.isEmpty,
                "used by ops/prometheus/sluice-rules.yaml or ops/grafana, not in Prometheus: \(missing.sorted())"
            )
            #expect(used.count > 40, "\(used.sorted())")

            // 2. Kafka down: the WAL keeps accepting, the forwarder's lag passes 50,000 events and
            // keeps growing: SluiceForwarderLagGrowing fires and reaches Alertmanager.
            load.stop()
            await posting.value
            step = "Kafka down: waiting for a lag over 60,000 events"
            for broker in 1...3 { cluster.setBrokerDown(Int32(broker)) }
            let kafkaDown = ContinuousClock.now
            (load, posting) = startLoad(workers: 2, batch: 1000...1000, pause: .zero)
            try await waitUntil(timeout: .seconds(90), pollEvery: .milliseconds(250)) {
                let lag = try await value("max(sluice_forwarder_wal_lag_events)") ?? 0
                return lag > 60_000
            }
            load.stop()
            await posting.value
            step = "Kafka down: waiting for SluiceForwarderLagGrowing"
            // A trickle keeps the lag growing (the rule wants it rising, not just high).
            (load, posting) = startLoad(workers: 1, batch: 100...100, pause: .milliseconds(250))
            try await waitUntil(timeout: .seconds(90), pollEvery: .milliseconds(250)) {
                try await alert("SluiceForwarderLagGrowing", severity: "warning") == "firing"
            }
            try await waitUntil(timeout: .seconds(30), pollEvery: .milliseconds(250)) {
                try await inAlertmanager("SluiceForwarderLagGrowing")
            }
            lagFired = ContinuousClock.now - kafkaDown
            load.stop()
            await posting.value
            // Kafka back: the forwarder catches up and the alert resolves, in Alertmanager too.
            step = "Kafka up: waiting for SluiceForwarderLagGrowing to resolve"
            for broker in 1...3 { cluster.setBrokerUp(Int32(broker)) }
            let kafkaUp = ContinuousClock.now
            try await waitUntil(timeout: .seconds(90), pollEvery: .milliseconds(250)) {
                try await alert("SluiceForwarderLagGrowing", severity: "warning") == nil
            }
            try await waitUntil(timeout: .seconds(30), pollEvery: .milliseconds(250)) {
                try await !inAlertmanager("SluiceForwarderLagGrowing")
            }
            lagResolved = ContinuousClock.now - kafkaUp

            // 3. ClickHouse down while events arrive: the loader retries its insert,
            // SluiceLoaderInsertRetries fires and reaches Alertmanager; ClickHouse back, it resolves.
            (load, posting) = startLoad(workers: 1, batch: 20...20, pause: .milliseconds(100))
            step = "ClickHouse down: waiting for SluiceLoaderInsertRetries"
            let clickHousePorts = clickHouse.reservePorts()  // Nobody else's while it is down.
            defer { withExtendedLifetime(clickHousePorts) {} }
            try await offPool { clickHouse.kill() }
            let clickHouseDown = ContinuousClock.now
            try await waitUntil(timeout: .seconds(90), pollEvery: .milliseconds(250)) {
                try await alert("SluiceLoaderInsertRetries", severity: "warning") == "firing"
            }
            try await waitUntil(timeout: .seconds(30), pollEvery: .milliseconds(250)) {
                try await inAlertmanager("SluiceLoaderInsertRetries")
            }
            retriesFired = ContinuousClock.now - clickHouseDown
            step = "ClickHouse up: waiting for SluiceLoaderInsertRetries to resolve"
            try await clickHouse.restart()
            let clickHouseUp = ContinuousClock.now
            try await waitUntil(timeout: .seconds(90), pollEvery: .milliseconds(250)) {
                try await alert("SluiceLoaderInsertRetries", severity: "warning") == nil
            }
            try await waitUntil(timeout: .seconds(30), pollEvery: .milliseconds(250)) {
                try await !inAlertmanager("SluiceLoaderInsertRetries")
            }
            retriesResolved = ContinuousClock.now - clickHouseUp
            load.stop()
            await posting.value
            try await client.shutdown()
        } catch {
            load.stop()
            await posting.value
            try? await client.shutdown()
            let statuses = Dictionary(grouping: load.exchanges, by: \.status).mapValues(\.count)
            let lag = try? await value("max(sluice_forwarder_wal_lag_events)")
            Issue.record(
                """
                failed while \(step): \(load.acknowledgedCount) events acknowledged, answers \(statuses), \
                \(load.failedRequests) requests failed, forwarder lag \(String(describing: lag))
                gateway: \(gateway.standardOutput.suffix(3000))
                loader: \(loader.standardOutput.suffix(2000))
                """
            )
            throw error
        }

        // Figures: what one gateway costs Prometheus (docs/performance.md).
        let series = try await value(#"max(scrape_samples_scraped{job="sluice-gateway"})"#) ?? .nan
        let loaderSeries = try await value(#"max(scrape_samples_scraped{job="sluice-loader"})"#) ?? .nan
        let scrape = try await value(#"avg(avg_over_time(scrape_duration_seconds{job="sluice-gateway"}[1m]))"#) ?? .nan
        let scrapeMax =
            try await value(#"max(max_over_time(scrape_duration_seconds{job="sluice-gateway"}[1m]))"#) ?? .nan
        print(
            """
            monitoring: \(used.count) metrics used by the rules and dashboard, \(exported.count) names in Prometheus; \
            Kafka down → SluiceForwarderLagGrowing firing in Alertmanager after \(lagFired), resolved \(lagResolved) \
            after Kafka returned; ClickHouse down → SluiceLoaderInsertRetries after \(retriesFired), resolved \
            \(retriesResolved) after it returned (rules time-compressed 60×); gateway /metrics: \(Int(series)) samples \
            per scrape, scrape_duration_seconds mean \(String(format: "%.4f", scrape)) s, max \
            \(String(format: "%.4f", scrapeMax)) s (HTTPS, under the test's load); loader: \(Int(loaderSeries)) samples; \
            test took \(ContinuousClock.now - started)
            """
        )

        gateway.signal(SIGTERM)
        loader.signal(SIGTERM)
        #expect(try await gateway.waitForExit() == 0)
        #expect(try await loader.waitForExit() == 0)
        // Figure: access-log bytes per ingest request, and per day at 1,000 requests/s and 40×.
        let accessLines = gateway.standardOutput.split(separator: "\n").filter {
            $0.contains(#""message":"request""#) && $0.contains(#""url.path":"/v1/"#)
        }
        let perRequest = Double(accessLines.reduce(0) { $0 + $1.utf8.count + 1 }) / Double(max(1, accessLines.count))
        print(
            """
            access log: \(accessLines.count) ingest requests, \(String(format: "%.0f", perRequest)) bytes per line; \
            \(String(format: "%.1f", perRequest * 1_000 * 86_400 / 1e9)) GB/day at 1,000 requests/s, \
            \(String(format: "%.0f", perRequest * 40_000 * 86_400 / 1e9)) GB/day at 40,000 requests/s
            """
        )
        // The logs of both roles through Kafka and ClickHouse outages keep the ECS contract.
        let contract = try ECSContract.load()
        for (role, process) in [("gateway", gateway), ("loader", loader)] {
            let report = contract.check(
                role,
                output: process.standardOutput,
                errors: process.standardError,
                secrets: [door.key]
            )
            #expect(report.problems.isEmpty, "\(report.problems.prefix(20).joined(separator: "\n"))")
            #expect(!report.lines.isEmpty)
        }
        withExtendedLifetime(cluster) {}
    }

    /// The one override of the rules: durations in `for:`, range selectors and `offset` are
    /// divided; thresholds and `predict_linear`'s horizon are not. A `[10m]` inside annotation
    /// text is compressed too, which changes only what the alert's text says.
    @Test func timeCompressionChangesOnlyDurations() throws {
        let rules = """
            expr: rate(x[10m]) > 300 and y offset 1h30m < 5 and predict_linear(z[30m], 4 * 3600) > 0
            for: 5m
            summary: "[10m] in {{ $value }}"
            """
        #expect(
            try PrometheusLab.compress(rules: rules, by: 60) == """
                expr: rate(x[10000ms]) > 300 and y offset 90000ms < 5 and predict_linear(z[30000ms], 4 * 3600) > 0
                for: 5000ms
                summary: "[10000ms] in {{ $value }}"
                """
        )
    }

    /// Metrics that exist only once what they count has happened, or only with a setup this
    /// test does not have: why each is absent from a healthy test pipeline.
    static let onlyWhenItHappens: [String: String] = [
        "probe_success": "the blackbox exporter's (the sluice-gateway-readyz job); not installed here",
        "sluice_auth_jwks_age_seconds": "exported per OAuth issuer; this gateway has API keys only",
        "sluice_wal_io_errors_total": "appears at the first WAL I/O error (the rule handles its absence)",
        "sluice_wal_rejected_appends_total": "labelled by reason: appears at the first append the WAL refuses",
    ]

    /// Every metric name the shipped rules and the Prometheus dashboard use (not recording-rule
    /// names, which contain a colon).
    static func metricsUsed() throws -> Set<String> {
        let root = repositoryRoot()
        var used: Set<String> = ["up"]
        let name = try NSRegularExpression(pattern: #"(?<![\w:])(sluice_[a-z0-9_]+|probe_success)(?![\w:])"#)
        for file in ["ops/prometheus/sluice-rules.yaml", "ops/grafana/sluice-dashboard.json"] {
            let text = try String(contentsOf: root.appendingPathComponent(file), encoding: .utf8)
            for match in name.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
                if let range = Range(match.range(at: 1), in: text) { used.insert(String(text[range])) }
            }
        }
        return used
    }
}
