import CoreMetrics
import Foundation
import Kafka
import LocalClickHouse
import Synchronization
import TestSupport
import Testing
import WAL

@testable import Forwarder

/// The forwarder against a TLS "broker" it must not trust: `openssl s_server` with a
/// certificate from `sluice tls self-signed` (the mock cluster speaks no TLS). Nothing can be
/// acknowledged, so the WAL cursor must stay where it is, and the reason must show in a
/// metric, not only in the logs. With the right CA the handshake passes (and Kafka's
/// protocol then fails, s_server being no broker): no TLS failure is counted.
@Suite(.serialized, .timeLimit(.minutes(3))) struct ForwarderTLSTests {
    /// A forwarder over a WAL of 50 events, sending to `server` with `ca` as its trust anchor.
    static func forwarder(
        to server: OpenSSLServer,
        ca: String,
        metrics: RecordedMetrics
    ) async throws -> ForwarderRun {
        let run = try await ForwarderRun.start(
            { forwarding in
                forwarding.kafkaProperties.merge([
                    "bootstrap.servers": "127.0.0.1:\(server.port)", "security.protocol": "ssl",
                    "ssl.ca.location": ca, "reconnect.backoff.ms": "100", "reconnect.backoff.max.ms": "500",
                ]) { $1 }
            },
            metrics: metrics
        )
        _ = try await Prefill(wal: run.wal).append(50)
        return run
    }

    @Test func aBrokerSignedByAnotherCAHoldsTheCursorAndCountsTLSFailures() async throws {
        let server = try await OpenSSLServer.start(hosts: ["127.0.0.1", "localhost"])
        let other = try await OpenSSLServer.start(hosts: ["127.0.0.1"])
        let metrics = RecordedMetrics()
        let run = try await Self.forwarder(to: server, ca: other.ca, metrics: metrics)
        try await waitUntil(timeout: .seconds(30)) {
            metrics.value("sluice_forwarder_kafka_errors_total", ["kind": "tls"]) >= 2
        }
        // Several commit intervals later: still nothing acknowledged, the cursor where it was.
        try await waitUntil(timeout: .seconds(10)) { metrics.value("sluice_forwarder_wal_lag_events", [:]) == 50 }
        #expect(run.cursor == .zero)
        #expect(metrics.value("sluice_forwarder_delivered_messages_total", [:]) == 0)
        try await run.stop()
        #expect(run.cursor == .zero)
    }

    @Test func aCertificateForAnotherHostHoldsTheCursorAndCountsTLSFailures() async throws {
        let server = try await OpenSSLServer.start(hosts: ["broker.example"])
        let metrics = RecordedMetrics()
        let run = try await Self.forwarder(to: server, ca: server.ca, metrics: metrics)
        try await waitUntil(timeout: .seconds(30)) {
            metrics.value("sluice_forwarder_kafka_errors_total", ["kind": "tls"]) >= 2
        }
        try await waitUntil(timeout: .seconds(10)) { metrics.value("sluice_forwarder_wal_lag_events", [:]) == 50 }
        #expect(run.cursor == .zero)
        try await run.stop()
        #expect(run.cursor == .zero)
    }

    @Test func theRightCAPassesTheHandshakeSoNoTLSFailureIsCounted() async throws {
        let server = try await OpenSSLServer.start(hosts: ["127.0.0.1", "localhost"])
        let metrics = RecordedMetrics()
        let run = try await Self.forwarder(to: server, ca: server.ca, metrics: metrics)
        // Past TLS, Kafka's protocol fails against s_server: some other kind is counted.
        try await waitUntil(timeout: .seconds(30)) { metrics.total("sluice_forwarder_kafka_errors_total") >= 1 }
        #expect(metrics.value("sluice_forwarder_kafka_errors_total", ["kind": "tls"]) == 0)
        #expect(run.cursor == .zero)
        try await run.stop()
    }
}

/// Counters, gauges and timers by label and dimensions, as the forwarder records them.
final class RecordedMetrics: MetricsFactory, Sendable {
    private let values = Mutex<[String: Double]>([:])

    private static func key(_ label: String, _ dimensions: [(String, String)]) -> String {
        label + "{" + dimensions.sorted { $0.0 < $1.0 }.map { "\($0.0)=\($0.1)" }.joined(separator: ",") + "}"
    }

    /// The value of `label` with exactly `dimensions`; 0 when never recorded.
    func value(_ label: String, _ dimensions: [String: String]) -> Double {
        self.values.withLock { $0[Self.key(label, dimensions.map { ($0.key, $0.value) })] ?? 0 }
    }

    /// The sum of `label` over all its dimensions.
    func total(_ label: String) -> Double {
        self.values.withLock { $0.filter { $0.key.hasPrefix(label + "{") }.values.reduce(0, +) }
    }

    fileprivate func update(_ key: String, _ change: (inout Double) -> Void) {
        self.values.withLock { change(&$0[key, default: 0]) }
    }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        Handler(key: Self.key(label, dimensions), metrics: self)
    }

    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        Handler(key: Self.key(label, dimensions), metrics: self)
    }

    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        Handler(key: Self.key(label, dimensions), metrics: self)
    }

    func destroyCounter(_ handler: any CounterHandler) {}
    func destroyRecorder(_ handler: any RecorderHandler) {}
    func destroyTimer(_ handler: any TimerHandler) {}

    private final class Handler: CounterHandler, RecorderHandler, TimerHandler, Sendable {
        let key: String
        let metrics: RecordedMetrics

        init(key: String, metrics: RecordedMetrics) {
            self.key = key
            self.metrics = metrics
        }

        func increment(by amount: Int64) { self.metrics.update(self.key) { $0 += Double(amount) } }
        func reset() { self.metrics.update(self.key) { $0 = 0 } }
        func record(_ value: Int64) { self.metrics.update(self.key) { $0 = Double(value) } }
        func record(_ value: Double) { self.metrics.update(self.key) { $0 = value } }
        func recordNanoseconds(_ duration: Int64) { self.metrics.update(self.key) { $0 = Double(duration) } }
    }
}
