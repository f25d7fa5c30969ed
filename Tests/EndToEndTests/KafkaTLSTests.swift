import Foundation
import Kafka
import LocalClickHouse
import Synchronization
import TestSupport
import Testing

@testable import SluiceCommands

/// The Kafka TLS keys against a real TLS server. The mock cluster speaks no TLS, so the
/// broker is `openssl s_server` with a certificate from `sluice tls self-signed`: a handshake
/// it completes proves the client trusted it (Kafka's protocol then fails, which is fine);
/// one it refuses shows in the client's errors as a verification failure. The same through
/// the forwarder, with its cursor held and the failure counted, is ForwarderTLSTests.
@Suite(.serialized, .timeLimit(.minutes(2))) struct KafkaTLSTests {
    /// The errors a producer reports within `seconds` while trying to reach `broker`.
    static func errors(connecting environment: [String: String], to broker: OpenSSLServer) async throws -> [String] {
        var properties = try SettingsLoader.load(file: nil, environment: environment).kafkaProperties
        properties["bootstrap.servers"] = "127.0.0.1:\(broker.port)"
        properties["reconnect.backoff.ms"] = "100"
        let seen = Mutex<[String]>([])
        let producer = try KafkaProducer(
            properties: properties,
            onDelivery: { _ in },
            onError: { error in seen.withLock { $0.append(error.message) } }
        )
        defer { producer.close(flushTimeoutMilliseconds: 0) }
        try await waitUntil(timeout: .seconds(30)) { !seen.withLock { $0 }.isEmpty }
        return seen.withLock { $0 }
    }

    @Test func theRightCAPassesTheHandshakeAndAWrongOneFailsVerification() async throws {
        let broker = try await OpenSSLServer.start(hosts: ["127.0.0.1", "localhost"])
        let other = try await OpenSSLServer.start(hosts: ["127.0.0.1"])
        let trusted = try await Self.errors(
            connecting: ["SLUICE_KAFKA_SECURITY_PROTOCOL": "ssl", "SLUICE_KAFKA_SECURITY_CA_FILE": broker.ca],
            to: broker
        )
        // Past the handshake: the client got as far as asking the "broker" for its API versions.
        #expect(trusted.contains { $0.contains("APIVERSION") }, "\(trusted)")
        #expect(!trusted.contains { $0.contains("certificate verify failed") }, "\(trusted)")
        let untrusted = try await Self.errors(
            connecting: ["SLUICE_KAFKA_SECURITY_PROTOCOL": "ssl", "SLUICE_KAFKA_SECURITY_CA_FILE": other.ca],
            to: broker
        )
        #expect(untrusted.contains { $0.contains("certificate verify failed") }, "\(untrusted)")
    }

    @Test func aCertificateForAnotherHostFailsUnlessTheCheckIsExplicitlyOff() async throws {
        let broker = try await OpenSSLServer.start(hosts: ["broker.example"])
        let checked = try await Self.errors(
            connecting: ["SLUICE_KAFKA_SECURITY_PROTOCOL": "ssl", "SLUICE_KAFKA_SECURITY_CA_FILE": broker.ca],
            to: broker
        )
        #expect(checked.contains { $0.contains("certificate verify failed") }, "\(checked)")
        let consented = try await Self.errors(
            connecting: [
                "SLUICE_KAFKA_SECURITY_PROTOCOL": "ssl", "SLUICE_KAFKA_SECURITY_CA_FILE": broker.ca,
                "SLUICE_KAFKA_SECURITY_VERIFY_HOSTNAME": "false", "SLUICE_KAFKA_SECURITY_ALLOW_INSECURE": "true",
            ],
            to: broker
        )
        #expect(consented.contains { $0.contains("APIVERSION") }, "\(consented)")
        #expect(!consented.contains { $0.contains("certificate verify failed") }, "\(consented)")
    }
}
