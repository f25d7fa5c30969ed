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
        metrics: RecordingMetrics
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
        let metrics = RecordingMetrics()
        let run = try await Self.forwarder(to: server, ca: other.ca, metrics: metrics)
        try await waitUntil(timeout: .seconds(30)) {
            (metrics.value("sluice_forwarder_kafka_errors_total", ["kind": "tls"]) ?? 0) >= 2
        }
        // Several commit intervals later: still nothing acknowledged, the cursor where it was.
        try await waitUntil(timeout: .seconds(10)) {
            (metrics.value("sluice_forwarder_wal_lag_events", [:]) ?? 0) == 50
        }
        #expect(run.cursor == .zero)
        #expect((metrics.value("sluice_forwarder_delivered_messages_total", [:]) ?? 0) == 0)
        try await run.stop()
        #expect(run.cursor == .zero)
    }

    @Test func aCertificateForAnotherHostHoldsTheCursorAndCountsTLSFailures() async throws {
        let server = try await OpenSSLServer.start(hosts: ["broker.example"])
        let metrics = RecordingMetrics()
        let run = try await Self.forwarder(to: server, ca: server.ca, metrics: metrics)
        try await waitUntil(timeout: .seconds(30)) {
            (metrics.value("sluice_forwarder_kafka_errors_total", ["kind": "tls"]) ?? 0) >= 2
        }
        try await waitUntil(timeout: .seconds(10)) {
            (metrics.value("sluice_forwarder_wal_lag_events", [:]) ?? 0) == 50
        }
        #expect(run.cursor == .zero)
        try await run.stop()
        #expect(run.cursor == .zero)
    }

    @Test func theRightCAPassesTheHandshakeSoNoTLSFailureIsCounted() async throws {
        let server = try await OpenSSLServer.start(hosts: ["127.0.0.1", "localhost"])
        let metrics = RecordingMetrics()
        let run = try await Self.forwarder(to: server, ca: server.ca, metrics: metrics)
        // Past TLS, Kafka's protocol fails against s_server: some other kind is counted.
        try await waitUntil(timeout: .seconds(30)) { metrics.total("sluice_forwarder_kafka_errors_total") >= 1 }
        #expect((metrics.value("sluice_forwarder_kafka_errors_total", ["kind": "tls"]) ?? 0) == 0)
        #expect(run.cursor == .zero)
        try await run.stop()
    }
}
