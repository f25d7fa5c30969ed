import Encryption
import Foundation
import Kafka
import LocalClickHouse
import NIOHTTP1
import TestSupport
import Testing

/// Kafka payload encryption as an operator runs it: `sluice all` with `kafka.encryption`
/// from the configuration file, events posted over HTTP, rows in a real ClickHouse, and the
/// topic read with kcat, which must see only ciphertext; then a key rotation.
@Suite(.serialized, .timeLimit(.minutes(6))) struct PayloadEncryptionTests {
    static let marker = "E2E-PLAINTEXT-MARKER-41d7"

    static func configuration(
        state: String,
        cluster: KafkaMockCluster,
        clickHouse: ClickHouseServer,
        encryption: String,
        loader: String = ""
    ) -> String {
        """
        gateway:
          listen: 127.0.0.1:0
        wal:
          directory: \(state)/wal
        kafka:
          bootstrap_servers: \(cluster.bootstrapServers)
          properties:
            log_level: 2
          encryption:
        \(encryption)
        clickhouse:
          url: \(clickHouse.httpURL)
        loader:
          batch_age: 200ms
        \(loader)
        logging:
          level: warning
        auth:
          required: false       # this test is about Kafka; the front door has its own
        """
    }

    /// Posts `count` events whose page holds the marker; their ids.
    static func post(_ count: Int, port: Int) async throws -> [String] {
        let ids = (0..<count).map { _ in EventPoster.freshID() }
        let answer = try await EventPoster(url: "http://127.0.0.1:\(port)").postBatch(
            ids.map {
                #"{"action":"click","user_id":"u1","event_id":"\#($0)","page":"https://shop.example/\#(Self.marker)"}"#
            }
        )
        #expect(answer.status == .accepted, "\(answer.body)")
        return ids
    }

    @Test func sluiceAllLoadsSealedEventsKcatSeesNoPlaintextAndARotationKeepsOldMessagesReadable() async throws {
        let cluster = try KafkaMockCluster(brokers: 3)
        let clickHouse = try await ClickHouseServer.start()
        defer { clickHouse.stop() }
        let state = try TemporaryDirectory()
        for id in ["k1", "k2"] { try Keyring.writeNewKeyFile(state.path + "/\(id).key") }
        let file = state.path + "/sluice.yaml"
        try Self.configuration(
            state: state.path,
            cluster: cluster,
            clickHouse: clickHouse,
            encryption: """
                    enabled: true
                    key_file: \(state.path)/k1.key
                    key_id: k1
                """
        ).write(toFile: file, atomically: true, encoding: .utf8)
        let analyst = Analyst(url: clickHouse.httpURL)
        defer { Task { await analyst.shutdown() } }

        // First run: k1 seals, the loader opens.
        let first = try SluiceProcess(["all", "--config", file])
        var ids = try await Self.post(20, port: try await first.listeningPort())
        try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(250)) {
            await analyst.eventIDs() == Set(ids)
        }
        first.signal(SIGTERM)
        #expect(try await first.waitForExit() == 0)

        #expect(
            try await analyst.number("SELECT count() FROM sluice.events WHERE page LIKE '%\(Self.marker)%'") == 20
        )
        let kcat = try await ChildProcess.run(
            "/usr/bin/kcat",
            ["-C", "-b", cluster.bootstrapServers, "-t", "events", "-o", "beginning", "-e", "-q", "-f", "%s|%h\n"]
        )
        #expect(kcat.status == 0, "\(kcat.standardError)")
        #expect(!kcat.standardOutput.contains(Self.marker))
        #expect(kcat.standardOutput.components(separatedBy: "sluice-enc=v1,sluice-kid=k1").count == 21)

        // Rotation: k2 seals from now on, k1 stays readable. A new group loads the topic from
        // its start into a new table, as a replay after the rotation would: k1's messages too.
        try Self.configuration(
            state: state.path,
            cluster: cluster,
            clickHouse: clickHouse,
            encryption: """
                    enabled: true
                    key_file: \(state.path)/k2.key
                    key_id: k2
                    previous_keys:
                      k1: \(state.path)/k1.key
                """,
            loader: """
                  group_id: rotated
                  routes:
                    events:
                      table: sluice.rotated
                """
        ).write(toFile: file, atomically: true, encoding: .utf8)
        let second = try SluiceProcess(["all", "--config", file])
        ids += try await Self.post(20, port: try await second.listeningPort())
        try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(250)) {
            await analyst.eventIDs("sluice.rotated") == Set(ids)
        }
        second.signal(SIGTERM)
        #expect(try await second.waitForExit() == 0)
        let after = try await ChildProcess.run(
            "/usr/bin/kcat",
            ["-C", "-b", cluster.bootstrapServers, "-t", "events", "-o", "beginning", "-e", "-q", "-f", "%h\n"]
        )
        #expect(after.standardOutput.components(separatedBy: "sluice-kid=k2").count == 21)
        withExtendedLifetime(cluster) {}
    }

    /// Mistakes in `kafka.encryption` stop every role at start-up, naming the key.
    @Test func payloadEncryptionMistakesAreRefusedAtStartUpWithTheKeyNamed() async throws {
        let state = try TemporaryDirectory()
        try Keyring.writeNewKeyFile(state.path + "/k1.key")
        try Keyring.writeNewKeyFile(state.path + "/open.key")
        chmod(state.path + "/open.key", 0o644)
        let base = ["SLUICE_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "SLUICE_WAL_DIRECTORY": state.path + "/wal"]
        let cases: [([String: String], String)] = [
            (
                ["SLUICE_KAFKA_ENCRYPTION_ENABLED": "true"],
                "configuration: kafka.encryption.enabled needs kafka.encryption.key_file and kafka.encryption.key_id"
            ),
            (
                ["SLUICE_KAFKA_ENCRYPTION_KEY_FILE": state.path + "/k1.key"],
                "configuration: kafka.encryption.key_file and kafka.encryption.key_id go together"
            ),
            (
                [
                    "SLUICE_KAFKA_ENCRYPTION_ENABLED": "true", "SLUICE_KAFKA_ENCRYPTION_KEY_ID": "k1",
                    "SLUICE_KAFKA_ENCRYPTION_KEY_FILE": state.path + "/open.key",
                ],
                "configuration: kafka.encryption.key_file = '\(state.path)/open.key': is open to group or others (mode 644): chmod 600 it, as its owner"
            ),
        ]
        for (environment, message) in cases {
            let check = try await ChildProcess.runSluice(
                ["config", "check"],
                environment: base.merging(environment) { $1 }
            )
            #expect(check.status == 2)
            #expect(check.standardError.contains("sluice: loader: \(message)\n"), "\(check.standardError)")
            let forwarder = try await ChildProcess.runSluice(
                ["forwarder"],
                environment: base.merging(environment) { $1 }
            )
            #expect(forwarder.status == 2)
            #expect(forwarder.standardError.hasSuffix("sluice: \(message)\n"), "\(forwarder.standardError)")
            let gateway = try await ChildProcess.runSluice(
                ["gateway"],
                environment: base.merging(environment) { $1 }.merging(["SLUICE_AUTH_REQUIRED": "false"]) { $1 }
            )
            #expect(gateway.status == 2)
            #expect(gateway.standardError.hasSuffix("sluice: \(message)\n"), "\(gateway.standardError)")
        }
    }
}
