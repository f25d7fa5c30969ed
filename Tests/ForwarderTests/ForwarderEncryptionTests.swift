import CoreMetrics
import Encryption
import EventModel
import Foundation
import Kafka
import KafkaEnvelope
import ServiceLifecycle
import SluiceCore
import Synchronization
import TestSupport
import Testing
import WAL

@testable import Forwarder

/// Text only the events' values hold (not their keys or headers): what must not show in Kafka.
let plaintextMarker = "PLAINTEXT-MARKER-7f3a9c"

/// Normalized events whose page carries ``plaintextMarker``.
func markedEvents(_ range: Range<Int>) -> [[UInt8]] {
    range.map { n in
        Event(
            eventID: UUIDText.v7(millis: 1_795_342_530_000 + Int64(n)),
            action: "click",
            userID: "user-\(n % 7)",
            timestampMillis: 1_795_342_530_000,
            page: "https://shop.example/\(plaintextMarker)/\(n)",
            object: "o\(n)",
            referrer: nil,
            sessionID: nil,
            properties: nil
        ).normalizedJSON(origin: Prefill.origin)
    }
}

/// A WAL and a forwarder over it, configured by the test.
struct ForwarderRun {
    let directory: TemporaryDirectory
    let wal: WAL
    let forwarder: Forwarder
    let group: ServiceGroup
    let task: Task<Void, any Error>

    static func start(
        _ configure: (inout ForwarderConfiguration) -> Void,
        metrics: (any MetricsFactory)? = nil
    ) async throws -> ForwarderRun {
        let directory = try TemporaryDirectory()
        var configuration = WALConfiguration(directory: directory.path + "/wal")
        configuration.budget = DiskBudget(maxBytes: 1 << 40, minFreeBytes: 0)
        let wal = try await WAL.openAndStart(configuration, logger: quietLogger)
        var forwarding = ForwarderConfiguration(kafkaProperties: ["log_level": "0"])
        forwarding.commitInterval = .milliseconds(50)
        configure(&forwarding)
        let forwarder = Forwarder(
            wal: wal,
            configuration: forwarding,
            logger: quietLogger,
            metricsFactory: metrics,
            makeProducer: { try KafkaProducer(properties: $0, onDelivery: $1, onError: $2) }
        )
        let group = ServiceGroup(services: [forwarder], logger: quietLogger)
        let task = Task { try await group.run() }
        return ForwarderRun(directory: directory, wal: wal, forwarder: forwarder, group: group, task: task)
    }

    var cursor: LSN { self.wal.cursor("forwarder")?.lsn ?? .zero }

    func stop() async throws {
        await self.group.triggerGracefulShutdown()
        try await self.task.value
        await self.wal.close()
    }
}

/// Reads every message of `topic` from the start, headers included.
func readTopic(_ bootstrap: String, _ topic: String, count: Int) async throws -> [ConsumedMessage] {
    let consumer = try KafkaConsumer(
        properties: [
            "bootstrap.servers": bootstrap, "group.id": "reader-\(UInt32.random(in: 0...UInt32.max))",
            "auto.offset.reset": "earliest", "log_level": "0",
        ],
        topics: [topic]
    )
    var messages: [ConsumedMessage] = []
    try await waitUntil(timeout: .seconds(30)) {
        messages += await consumer.poll(maxMessages: 1000, timeout: .milliseconds(200)).messages
        return messages.count >= count
    }
    await consumer.close()
    return messages
}

@Suite(.serialized, .timeLimit(.minutes(3))) struct ForwarderEncryptionTests {
    /// Encryption on: every value in Kafka is an envelope (kcat sees no event text), carries
    /// the version and key id headers, and opens to exactly the event the WAL holds; the
    /// cursor moves as without encryption.
    @Test func sealedMessagesShowNoPlaintextToKcatAndOpenToTheWALsEvents() async throws {
        let keys = try KeyFiles()
        let cluster = try KafkaMockCluster(brokers: 3)
        try cluster.createTopic("events", partitions: 3)
        let encryption = try keys.configuration(current: "k1")
        let run = try await ForwarderRun.start { forwarding in
            forwarding.kafkaProperties["bootstrap.servers"] = cluster.bootstrapServers
            forwarding.encryption = encryption
        }
        let events = markedEvents(0..<300)
        for start in stride(from: 0, to: events.count, by: 3) {
            _ = try await run.wal.append(Array(events[start..<min(start + 3, events.count)]))
        }
        try await waitUntil(timeout: .seconds(60)) { run.cursor == LSN(300) }
        try await run.stop()

        let kcat = try await ChildProcess.run(
            "/usr/bin/kcat",
            ["-C", "-b", cluster.bootstrapServers, "-t", "events", "-o", "beginning", "-e", "-q", "-f", "%s%h\n"]
        )
        #expect(kcat.status == 0, "\(kcat.standardError)")
        #expect(kcat.standardOutput.contains("sluice-enc=v1"))
        #expect(kcat.standardOutput.contains("sluice-kid=k1"))
        #expect(!kcat.standardOutput.contains(plaintextMarker))
        #expect(!kcat.standardOutput.contains("\"action\":\"click\""))

        let messages = try await readTopic(cluster.bootstrapServers, "events", count: 300)
        #expect(messages.count == 300)
        let opener = PayloadOpener(keyring: try encryption.keyring(prefix: "kafka.encryption"))
        for message in messages {
            let lsn = try #require(message.header("wal_lsn").flatMap { UInt64(String(decoding: $0, as: UTF8.self)) })
            let opened = try opener.open(message.value, headers: message.headers, topic: "events")
            #expect(opened == events[Int(lsn)])
            #expect(message.header("sluice-enc") == Array("v1".utf8))
            #expect(message.header("sluice-kid") == Array("k1".utf8))
        }
    }

    /// The control for the test above: without a key, the same events are readable in Kafka
    /// (so the marker search can see plaintext when there is some).
    @Test func withoutAKeyTheEventsGoOutAsTheyAre() async throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        try cluster.createTopic("events", partitions: 1)
        let run = try await ForwarderRun.start { forwarding in
            forwarding.kafkaProperties["bootstrap.servers"] = cluster.bootstrapServers
        }
        _ = try await run.wal.append(markedEvents(0..<10))
        try await waitUntil(timeout: .seconds(60)) { run.cursor == LSN(10) }
        try await run.stop()
        let kcat = try await ChildProcess.run(
            "/usr/bin/kcat",
            ["-C", "-b", cluster.bootstrapServers, "-t", "events", "-o", "beginning", "-e", "-q", "-f", "%s%h\n"]
        )
        #expect(kcat.standardOutput.contains(plaintextMarker))
        #expect(!kcat.standardOutput.contains("sluice-enc"))
    }

    /// Encryption switched on without a key, or with an unreadable one, stops the forwarder
    /// before it sends anything, with the key named.
    @Test func aMisconfiguredKeyStopsTheForwarderBeforeItSendsAnything() async throws {
        let keys = try KeyFiles()
        var enabledOnly = EncryptionConfiguration()
        enabledOnly.enabled = true
        var readable = try keys.configuration(current: "k1")
        chmod(try keys.path("k1"), 0o644)
        readable.enabled = true
        let cases: [(EncryptionConfiguration, String)] = [
            (
                enabledOnly,
                "configuration: kafka.encryption.enabled needs kafka.encryption.key_file and kafka.encryption.key_id"
            ),
            (readable, "kafka.encryption.key_file"),
        ]
        for (encryption, message) in cases {
            var forwarding = ForwarderConfiguration(kafkaProperties: ["bootstrap.servers": "127.0.0.1:1"])
            forwarding.encryption = encryption
            #expect(throws: ConfigurationError.self) { try forwarding.encryptionKeyring() }
            let run = try await ForwarderRun.start { $0 = forwarding }
            await #expect {
                try await run.task.value
            } throws: { error in
                "\(error)".contains(message) && (message.hasPrefix("configuration:") ? "\(error)" == message : true)
            }
            #expect(run.cursor == .zero)
            await run.wal.close()
        }
    }
}
