import Forwarder
import Foundation
import Kafka
import TestSupport
import Testing

@testable import SluiceCommands

/// `kafka.security.*`: named keys become librdkafka properties for every Kafka client, and
/// start-up refuses what would weaken the connection unasked — with a message that names the
/// keys and files, never a secret.
@Suite struct KafkaSecurityTests {
    static let password = "kafka-NEVER-PRINTED"

    /// A file with `content` and `mode` in a directory that lives as long as the test.
    func file(_ directory: TemporaryDirectory, _ name: String, _ content: String, mode: Int = 0o600) throws -> String {
        let path = directory.path + "/" + name
        try Data(content.utf8).write(to: URL(fileURLWithPath: path))
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
        return path
    }

    func load(_ environment: [String: String]) throws -> Settings {
        try SettingsLoader.load(file: nil, environment: environment)
    }

    func refusal(_ environment: [String: String]) -> String? {
        do {
            _ = try self.load(environment)
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func tlsAndScramBecomeLibrdkafkaProperties() throws {
        let directory = try TemporaryDirectory()
        let key = try self.file(directory, "client.key", "-----BEGIN PRIVATE KEY-----\n")
        let secret = try self.file(directory, "sasl.password", Self.password + "\n")
        let passphrase = try self.file(directory, "client.key.password", "passphrase-NEVER-PRINTED")
        let settings = try self.load([
            "SLUICE_KAFKA_SECURITY_KEY_PASSWORD_FILE": passphrase,
            "SLUICE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "SLUICE_KAFKA_SECURITY_CA_FILE": "/etc/ssl/kafka-ca.pem",
            "SLUICE_KAFKA_SECURITY_CERTIFICATE_FILE": "/etc/ssl/client.pem",
            "SLUICE_KAFKA_SECURITY_KEY_FILE": key,
            "SLUICE_KAFKA_SECURITY_SASL_MECHANISM": "scram-sha-512",
            "SLUICE_KAFKA_SECURITY_SASL_USERNAME": "forwarder",
            "SLUICE_KAFKA_SECURITY_SASL_PASSWORD_FILE": secret,
        ])
        let properties = settings.kafkaProperties
        #expect(properties["security.protocol"] == "sasl_ssl")
        #expect(properties["ssl.ca.location"] == "/etc/ssl/kafka-ca.pem")
        #expect(properties["ssl.certificate.location"] == "/etc/ssl/client.pem")
        #expect(properties["ssl.key.location"] == key)
        #expect(properties["ssl.key.password"] == "passphrase-NEVER-PRINTED")
        #expect(properties["ssl.endpoint.identification.algorithm"] == "https")
        #expect(properties["sasl.mechanisms"] == "SCRAM-SHA-512")
        #expect(properties["sasl.username"] == "forwarder")
        #expect(properties["sasl.password"] == Self.password)
        // Every client gets them: the forwarder's configuration carries the same properties.
        var withKafka = settings
        withKafka.kafkaBootstrap = "broker:9093"
        #expect(withKafka.forwarderConfiguration?.kafkaProperties["sasl.mechanisms"] == "SCRAM-SHA-512")
        #expect(!settings.applied.contains { $0.value.contains(Self.password) || $0.value.contains("NEVER-PRINTED") })
    }

    @Test func turningVerificationOffNeedsAllowInsecure() throws {
        let hostname = ["SLUICE_KAFKA_SECURITY_PROTOCOL": "ssl", "SLUICE_KAFKA_SECURITY_VERIFY_HOSTNAME": "false"]
        #expect(self.refusal(hostname)?.contains("kafka.security.allow_insecure") == true)
        let raw = [
            "SLUICE_KAFKA_SECURITY_PROTOCOL": "ssl",
            "SLUICE_KAFKA_PROPERTIES_ENABLE_SSL_CERTIFICATE_VERIFICATION": "false",
        ]
        #expect(self.refusal(raw)?.contains("enable.ssl.certificate.verification=false") == true)
        var consented = hostname
        consented["SLUICE_KAFKA_SECURITY_ALLOW_INSECURE"] = "true"
        #expect(try self.load(consented).kafkaProperties["ssl.endpoint.identification.algorithm"] == "none")
    }

    @Test func aKeyFileOthersCanReadIsRefused() throws {
        let directory = try TemporaryDirectory()
        let key = try self.file(directory, "client.key", "-----BEGIN PRIVATE KEY-----\n", mode: 0o644)
        let refusal = self.refusal([
            "SLUICE_KAFKA_SECURITY_PROTOCOL": "ssl", "SLUICE_KAFKA_SECURITY_CERTIFICATE_FILE": "/etc/ssl/client.pem",
            "SLUICE_KAFKA_SECURITY_KEY_FILE": key,
        ])
        #expect(
            refusal?.contains("mode 644") == true && refusal?.contains("chmod 600") == true,
            "\(refusal ?? "accepted")"
        )
    }

    @Test func aSASLPasswordInClearOrSetTwiceIsRefusedWithoutTheSecret() throws {
        let directory = try TemporaryDirectory()
        let secret = try self.file(directory, "sasl.password", Self.password)
        let plain = [
            "SLUICE_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext", "SLUICE_KAFKA_SECURITY_SASL_MECHANISM": "PLAIN",
            "SLUICE_KAFKA_SECURITY_SASL_USERNAME": "u", "SLUICE_KAFKA_SECURITY_SASL_PASSWORD_FILE": secret,
        ]
        let clear = self.refusal(plain)
        #expect(
            clear?.contains("in clear") == true && clear?.contains(Self.password) == false,
            "\(clear ?? "accepted")"
        )
        var twice = plain
        twice["SLUICE_KAFKA_SECURITY_PROTOCOL"] = "sasl_ssl"
        twice["SLUICE_KAFKA_PROPERTIES_SASL_PASSWORD"] = "other-NEVER-PRINTED"
        let both = self.refusal(twice)
        #expect(both?.contains("both set it") == true, "\(both ?? "accepted")")
        #expect(both?.contains(Self.password) == false && both?.contains("other-NEVER-PRINTED") == false)
    }

    @Test func mechanismsSluiceCannotDriveAndMissingPiecesAreNamed() throws {
        let gssapi = self.refusal([
            "SLUICE_KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "SLUICE_KAFKA_SECURITY_SASL_MECHANISM": "GSSAPI",
        ])
        #expect(gssapi?.contains("GSSAPI is not one Sluice drives") == true, "\(gssapi ?? "accepted")")
        let oauth = self.refusal([
            "SLUICE_KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "SLUICE_KAFKA_SECURITY_SASL_MECHANISM": "OAUTHBEARER",
        ])
        #expect(oauth?.contains("OAUTHBEARER needs kafka.security.sasl.oauthbearer.token_endpoint") == true)
        let noMechanism = self.refusal(["SLUICE_KAFKA_SECURITY_PROTOCOL": "sasl_ssl"])
        #expect(noMechanism?.contains("kafka.security.sasl.mechanism") == true)
        let tlsWithoutProtocol = self.refusal(["SLUICE_KAFKA_SECURITY_CA_FILE": "/etc/ssl/ca.pem"])
        #expect(tlsWithoutProtocol?.contains("needs kafka.security.protocol ssl") == true)
        let badProtocol = self.refusal(["SLUICE_KAFKA_SECURITY_PROTOCOL": "tls"])
        #expect(badProtocol?.contains("plaintext, ssl, sasl_plaintext or sasl_ssl") == true)
    }

    @Test func oauthBearerRefusesACleartextTokenOrSecretAndAnOpenSecretFile() throws {
        let directory = try TemporaryDirectory()
        let secret = try self.file(directory, "client.secret", Self.password)
        let open = try self.file(directory, "open.secret", Self.password, mode: 0o644)
        let base = [
            "SLUICE_KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "SLUICE_KAFKA_SECURITY_SASL_MECHANISM": "OAUTHBEARER",
            "SLUICE_KAFKA_SECURITY_SASL_OAUTHBEARER_TOKEN_ENDPOINT": "https://idp.example.com/oauth/token",
            "SLUICE_KAFKA_SECURITY_SASL_OAUTHBEARER_CLIENT_ID": "sluice-forwarder",
            "SLUICE_KAFKA_SECURITY_SASL_OAUTHBEARER_CLIENT_SECRET_FILE": secret,
        ]
        let properties = try self.load(base).kafkaProperties
        #expect(properties["sasl.mechanisms"] == "OAUTHBEARER")
        #expect(!properties.values.contains(Self.password))

        let http = self.refusal(
            base.merging(["SLUICE_KAFKA_SECURITY_SASL_OAUTHBEARER_TOKEN_ENDPOINT": "http://idp.example.com/t"]) { $1 }
        )
        #expect(http?.contains("must be an https:// URL") == true, "\(http ?? "accepted")")
        let plaintext = self.refusal(base.merging(["SLUICE_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext"]) { $1 })
        #expect(plaintext?.contains("sends the bearer token in clear") == true, "\(plaintext ?? "accepted")")
        let exposed = self.refusal(
            base.merging(["SLUICE_KAFKA_SECURITY_SASL_OAUTHBEARER_CLIENT_SECRET_FILE": open]) { $1 }
        )
        #expect(exposed?.contains("chmod 600") == true, "\(exposed ?? "accepted")")
        #expect(exposed?.contains(Self.password) == false)
    }

    /// The properties are ones this librdkafka takes: a client is made with them (it connects
    /// only later, so no broker is needed to see the library accept TLS and SCRAM).
    @Test func thisLibrdkafkaAcceptsWhatTheKeysProduce() throws {
        let directory = try TemporaryDirectory()
        let secret = try self.file(directory, "sasl.password", Self.password)
        var properties = try self.load([
            "SLUICE_KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "SLUICE_KAFKA_SECURITY_SASL_MECHANISM": "SCRAM-SHA-256",
            "SLUICE_KAFKA_SECURITY_SASL_USERNAME": "u", "SLUICE_KAFKA_SECURITY_SASL_PASSWORD_FILE": secret,
        ]).kafkaProperties
        properties["bootstrap.servers"] = "127.0.0.1:9"
        let producer = try KafkaProducer(properties: properties, onDelivery: { _ in })
        producer.close(flushTimeoutMilliseconds: 0)
    }
}
