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
    struct Broker {
        let directory: TemporaryDirectory
        let server: ChildProcess
        let port: Int
        var ca: String { self.directory.path + "/ca.pem" }
    }

    /// A TLS server whose certificate names `hosts`, signed by a CA of its own.
    static func broker(hosts: [String]) async throws -> Broker {
        let directory = try TemporaryDirectory()
        let made = try await ChildProcess.runSluice(
            ["tls", "self-signed", "--out", directory.path] + hosts.flatMap { ["--host", $0] }
        )
        try #require(made.status == 0, "\(made.standardError)")
        let port = try #require(try freeLoopbackPorts(1).first)
        let server = try ChildProcess(
            executable: "openssl",
            [
                "s_server", "-accept", "127.0.0.1:\(port)", "-cert", directory.path + "/server.pem", "-key",
                directory.path + "/server.key", "-quiet",
            ]
        )
        // s_server prints nothing with -quiet until a client comes: wait for the port instead.
        try await waitUntil(timeout: .seconds(20)) {
            (try? RawTCP.connect(port: port)) == true
        }
        return Broker(directory: directory, server: server, port: port)
    }

    /// The errors a producer reports within `seconds` while trying to reach `broker`.
    static func errors(connecting environment: [String: String], to broker: Broker) async throws -> [String] {
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
        let broker = try await Self.broker(hosts: ["127.0.0.1", "localhost"])
        let other = try await Self.broker(hosts: ["127.0.0.1"])
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
        let broker = try await Self.broker(hosts: ["broker.example"])
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

/// A plain TCP connect to loopback: is anything listening on `port`?
enum RawTCP {
    static func connect(port: Int) throws -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        return result == 0
    }
}
