import ClickHouse
import Encryption
import Foundation
import Kafka
import KafkaEnvelope
import TestSupport
import Testing

@testable import Loader

extension LoadPipeline {
    /// Sends `messages` (value and headers) and waits until Kafka has them all.
    func send(
        _ messages: [(value: [UInt8], headers: [(name: String, value: [UInt8])])],
        topic: String = "events"
    )
        async throws
    {
        let before = self.delivered.value
        for (index, message) in messages.enumerated() {
            try self.producer.send(
                topic: topic,
                key: Array("k\(index % 9)".utf8),
                value: message.value,
                headers: message.headers.map { ($0.name, $0.value) },
                id: UInt64(index)
            )
        }
        try await waitUntil(timeout: .seconds(30)) { self.delivered.value == before + messages.count }
    }

    /// Every message of the dead-letter topic, once there are `count`.
    func deadLetters(_ count: Int, topic: String = "events.dlq") async throws -> [ConsumedMessage] {
        let reader = try KafkaConsumer(
            properties: [
                "bootstrap.servers": self.cluster.bootstrapServers,
                "group.id": "dlq-reader-\(UInt32.random(in: 0...UInt32.max))", "log_level": "0",
            ],
            topics: [topic]
        )
        var dead: [ConsumedMessage] = []
        try await waitUntil(timeout: .seconds(30)) {
            dead += await reader.poll(maxMessages: 100, timeout: .milliseconds(200)).messages
            return dead.count >= count
        }
        await reader.close()
        return dead
    }

    func waitUntilCommitted(_ end: Int64) async throws {
        try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(200)) {
            let (committed, last) = try await self.committedAndEnd()
            return committed == last && last == end
        }
    }
}

/// The loader with payload encryption, against the mock cluster and a real ClickHouse.
@Suite(.serialized, .timeLimit(.minutes(4))) struct EncryptedLoadingTests {
    /// A rollout and a key rotation in one topic: plaintext from before, messages under the
    /// old key, messages under the new one; the loader (new key current, old one previous)
    /// loads them all, exactly once each.
    @Test func plaintextAndMessagesUnderTheOldAndNewKeysAllLoad() async throws {
        let keys = try KeyFiles()
        try await LoadPipeline.with { pipeline in
            pipeline.configuration.encryption = try keys.configuration(current: "k2", previous: ["k1"])
            pipeline.startLoader()
            let plain = (0..<300).map { eventJSON($0) }
            try await pipeline.send(plain)
            let old = try keys.sealer("k1")
            try await pipeline.send(try (300..<600).map { try sealed(eventJSON($0), by: old) })
            let new = try keys.sealer("k2")
            try await pipeline.send(try (600..<900).map { try sealed(eventJSON($0), by: new) })
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(200)) {
                await pipeline.distinctIDs() == 900
            }
            try await pipeline.waitUntilCommitted(900)
            #expect(pipeline.loader.messagesDeadLettered == 0)
            #expect(
                try await pipeline.scalar(
                    "SELECT count() FROM sluice.events WHERE page LIKE 'https://shop.example/p/%'"
                ) == 900
            )
        }
    }

    /// A message under a key the loader lacks, and one altered in Kafka: neither is dropped
    /// nor committed past on its own. Both become dead letters exactly as they came (still
    /// sealed, with their envelope headers) with the reason; the rest loads; the offsets
    /// reach the end only with the dead letters acknowledged. Once the key is configured,
    /// sending the dead letters back (`sluice dlq redrive`) loads the missing-key ones.
    @Test func aMissingKeyAndAnAlteredMessageBecomeSealedDeadLettersAndRedriveLoadsThem() async throws {
        let keys = try KeyFiles()
        try await LoadPipeline.with(partitions: 1) { pipeline in
            pipeline.configuration.encryption = try keys.configuration(current: "k1")
            pipeline.startLoader()
            let known = try keys.sealer("k1")
            let unknown = try keys.sealer("k3")
            var messages = try (0..<200).map { try sealed(eventJSON($0), by: known) }
            let missing = try (200..<220).map { try sealed(eventJSON($0), by: unknown) }
            messages.insert(contentsOf: missing, at: 50)
            var altered = try sealed(eventJSON(999), by: known)
            altered.value[altered.value.count / 2] ^= 0x20
            messages.insert(altered, at: 150)
            try await pipeline.send(messages)
            try await pipeline.waitUntilCommitted(221)
            #expect(await pipeline.distinctIDs() == 200)
            #expect(pipeline.loader.messagesDeadLettered == 21)

            let dead = try await pipeline.deadLetters(21)
            #expect(dead.count == 21)
            let reasons = Dictionary(grouping: dead) { String(decoding: $0.header("dlq_reason") ?? [], as: UTF8.self) }
            #expect(
                reasons[
                    "encryption key 'k3' is not configured: add its file to kafka.encryption.previous_keys (or make it kafka.encryption.key_id)"
                ]?.count == 20
            )
            #expect(
                reasons[
                    "payload envelope failed authentication under key 'k1' (altered, or moved from another topic than events)"
                ]?
                .count == 1
            )
            // Still sealed: the same bytes as sent, the envelope headers kept.
            let sentValues = Set((missing + [altered]).map(\.value))
            #expect(dead.allSatisfy { sentValues.contains($0.value) })
            #expect(dead.allSatisfy { $0.header("sluice-enc") == Array("v1".utf8) && $0.header("sluice-kid") != nil })
            #expect(dead.allSatisfy { $0.header("dlq_topic") == Array("events".utf8) })
            #expect(!dead.contains { String(decoding: $0.value, as: UTF8.self).contains("\"action\"") })

            // The key arrives: restart with it, and send the dead letters back as redrive does.
            try await pipeline.stopLoader()
            pipeline.configuration.encryption = try keys.configuration(current: "k1", previous: ["k3"])
            pipeline.startLoader()
            try await pipeline.send(
                dead.map { ($0.value, $0.headers.filter { !$0.name.hasPrefix("dlq_") }) }
            )
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(200)) {
                await pipeline.distinctIDs() == 220
            }
            try await pipeline.waitUntilCommitted(242)
            // The altered message cannot be opened by any key: it is a dead letter again.
            #expect(pipeline.loader.messagesDeadLettered == 1)
        }
    }

    /// A loader without any `kafka.encryption` key treats sealed messages as missing their key
    /// (never as JSON to parse, never dropped).
    @Test func aLoaderWithoutKeysDeadLettersSealedMessagesNamingTheKey() async throws {
        let keys = try KeyFiles()
        try await LoadPipeline.with(partitions: 1) { pipeline in
            pipeline.startLoader()
            let sealer = try keys.sealer("k1")
            try await pipeline.send(try (0..<5).map { try sealed(eventJSON($0), by: sealer) })
            try await pipeline.send((5..<10).map { eventJSON($0) })
            try await pipeline.waitUntilCommitted(10)
            #expect(await pipeline.distinctIDs() == 5)
            let dead = try await pipeline.deadLetters(5)
            #expect(
                dead.allSatisfy {
                    String(decoding: $0.header("dlq_reason") ?? [], as: UTF8.self).hasPrefix(
                        "encryption key 'k1' is not configured"
                    )
                }
            )
        }
    }

    /// Configuration mistakes stop the loader at start-up with the key named.
    @Test func misconfiguredKeysAreRefusedAtStartUp() throws {
        let keys = try KeyFiles()
        var configuration = LoaderConfiguration(
            kafkaProperties: ["bootstrap.servers": "127.0.0.1:1"],
            clickHouse: .init(url: "http://127.0.0.1:1")
        )
        configuration.encryption.enabled = true
        #expect {
            try configuration.validate()
        } throws: {
            "\($0)"
                == "configuration: kafka.encryption.enabled needs kafka.encryption.key_file and kafka.encryption.key_id"
        }
        configuration.encryption = try keys.configuration(current: "k1")
        configuration.encryption.keyID = "no spaces"
        #expect {
            try configuration.validate()
        } throws: {
            "\($0)"
                == "configuration: key id 'no spaces' under kafka.encryption must be 1 to 64 letters, digits, '.', '_' or '-'"
        }
        configuration.encryption = try keys.configuration(current: "k1")
        configuration.encryption.previousKeys["k1"] = try keys.path("k1")
        #expect {
            try configuration.validate()
        } throws: {
            "\($0)"
                == "configuration: key id 'k1' is both kafka.encryption.key_id and one of kafka.encryption.previous_keys"
        }
        configuration.encryption = try keys.configuration(current: "k1")
        try configuration.validate()
    }
}
