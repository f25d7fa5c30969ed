import Crypto
import Encryption
import Foundation
import KafkaEnvelope
import TestSupport
import Testing

extension KeyFiles {
    /// A sealer under `id`.
    func sealer(_ id: String) throws -> PayloadSealer {
        let keyring = try #require(try self.keyring(current: id))
        return try #require(PayloadSealer(keyring: keyring))
    }
}

/// A sealed message's value and headers, as the forwarder sends them.
func sealed(
    _ event: [UInt8],
    by sealer: PayloadSealer,
    topic: String = "events",
    hour: UInt32? = nil
) throws -> (
    value: [UInt8], headers: [(name: String, value: [UInt8])]
) {
    let value = try event.withUnsafeBytes {
        try sealer.seal($0, topic: topic, hour: hour ?? KafkaEnvelope.currentHour())
    }
    return (
        value,
        [
            ("content_type", Array("application/json".utf8)), ("sluice-enc", Array("v1".utf8)),
            ("sluice-kid", sealer.keyIDBytes),
        ]
    )
}

/// The envelope alone: what it hides, what it binds, what it refuses, with the reasons the
/// loader's dead letters carry.
@Suite struct PayloadEnvelopeTests {
    let keys: KeyFiles
    init() throws { self.keys = try KeyFiles() }

    @Test func anEventSealsAndOpensBackCompressedOrNot() throws {
        let sealer = try self.keys.sealer("k1")
        let opener = PayloadOpener(keyring: try self.keys.keyring(current: "k1"))
        let repetitive = eventJSON(1) + Array(repeating: UInt8(ascii: "a"), count: 2000)
        let random = (0..<300).map { _ in UInt8.random(in: 0...255) }
        for event in [eventJSON(7), repetitive, random, [], [0x7B]] {
            let (value, headers) = try sealed(event, by: sealer)
            #expect(try opener.open(value, headers: headers, topic: "events") == event)
            #expect(value.count <= event.count + KafkaEnvelope.overheadBytes)
        }
        // LZ4 inside: a compressible event comes out smaller than it went in.
        #expect(try sealed(repetitive, by: sealer).value.count < repetitive.count / 2)
        // A fresh nonce each time: the same event never seals to the same bytes.
        let same = eventJSON(7)
        #expect(try sealed(same, by: sealer).value != sealed(same, by: sealer).value)
    }

    /// The envelope is standard AES-256-GCM: swift-crypto (BoringSSL) opens what the sealer
    /// (OpenSSL) sealed, given the documented key derivation, layout and additional data.
    @Test func anotherAESGCMImplementationOpensTheEnvelopeAsDocumented() throws {
        let sealer = try self.keys.sealer("k1")
        let key = try #require(try self.keys.keyring(current: "k1")).key("k1")
        let event = eventJSON(11)
        let hour = KafkaEnvelope.currentHour()
        let (value, _) = try sealed(event, by: sealer, hour: hour)
        #expect(Array(value[0..<4]) == [24, 16, 8, 0].map { UInt8(truncatingIfNeeded: hour >> $0) })
        let dataKey = HKDF<SHA256>.deriveKey(
            inputKeyMaterial: key,
            salt: Array("sluice-kafka-v1".utf8),
            info: Array("events".utf8) + [0] + Array(value[0..<4]),
            outputByteCount: 32
        )
        let additionalData =
            Array("sluice-enc:v1\u{0}sluice-kid:k1\u{0}events\u{0}".utf8) + Array(value[0..<4])
        #expect(KafkaEnvelope.additionalData(keyID: "k1", topic: "events", hour: hour) == additionalData)
        let body = try AES.GCM.open(
            AES.GCM.SealedBox(combined: value[4...]),
            using: dataKey,
            authenticating: additionalData
        )
        let bytes = Array(body)
        let length = Int(bytes[1]) << 24 | Int(bytes[2]) << 16 | Int(bytes[3]) << 8 | Int(bytes[4])
        #expect(length == event.count)
        #expect(bytes[0] == 1)  // LZ4: a normalized event compresses
        #expect(bytes.count < event.count)
    }

    @Test func aValueWithoutTheEnvelopeHeaderIsTheEventItself() throws {
        let opener = PayloadOpener(keyring: nil)
        #expect(
            try opener.open(eventJSON(1), headers: [("content_type", Array("application/json".utf8))], topic: "events")
                == nil
        )
    }

    @Test func everyByteIsAuthenticatedAndTheTopicAndKeyIDAreBound() throws {
        let sealer = try self.keys.sealer("k1")
        let opener = PayloadOpener(keyring: try self.keys.keyring(current: "k1", previous: ["k2"]))
        let (value, headers) = try sealed(eventJSON(3), by: sealer)
        for index in [0, 3, 4, 15, 16, value.count / 2, value.count - 1] {
            var tampered = value
            tampered[index] ^= 0x01
            #expect {
                try opener.open(tampered, headers: headers, topic: "events")
            } throws: { error in
                (error as? EnvelopeError)?.kind == .authentication
                    && "\(error)"
                        == "payload envelope failed authentication under key 'k1' (altered, or moved from another topic than events)"
            }
        }
        // Moved to another topic.
        #expect(throws: EnvelopeError.self) { try opener.open(value, headers: headers, topic: "orders") }
        // Relabelled with another configured key's id.
        let relabelled = headers.map { $0.name == "sluice-kid" ? ($0.name, Array("k2".utf8)) : $0 }
        #expect { try opener.open(value, headers: relabelled, topic: "events") } throws: {
            ($0 as? EnvelopeError)?.kind == .authentication
        }
        // Truncated.
        #expect { try opener.open(Array(value.prefix(20)), headers: headers, topic: "events") } throws: {
            ($0 as? EnvelopeError)?.kind == .malformed
        }
    }

    @Test func aKeyTheReaderLacksIsNamedWithWhereToConfigureIt() throws {
        let (value, headers) = try sealed(eventJSON(3), by: try self.keys.sealer("k9"))
        let expected =
            "encryption key 'k9' is not configured: add its file to kafka.encryption.previous_keys (or make it kafka.encryption.key_id)"
        for keyring in [try self.keys.keyring(current: "k1"), nil] {
            #expect {
                try PayloadOpener(keyring: keyring).open(value, headers: headers, topic: "events")
            } throws: { error in
                (error as? EnvelopeError)?.kind == .missingKey && "\(error)" == expected
            }
        }
    }

    /// Rotation: the new key seals, the old one (now in previous_keys) still opens what it sealed.
    @Test func afterARotationBothKeysOpenTheirMessages() throws {
        let (first, second) = (eventJSON(1), eventJSON(2))
        let old = try sealed(first, by: try self.keys.sealer("k1"))
        let new = try sealed(second, by: try self.keys.sealer("k2"))
        let opener = PayloadOpener(keyring: try self.keys.keyring(current: "k2", previous: ["k1"]))
        #expect(try opener.open(old.value, headers: old.headers, topic: "events") == first)
        #expect(try opener.open(new.value, headers: new.headers, topic: "events") == second)
        // Encryption switched off (rollback): the key still reads what it sealed.
        var off = try self.keys.configuration(current: "k2")
        off.enabled = false
        let reading = try #require(try off.keyring(prefix: "kafka.encryption"))
        #expect(PayloadSealer(keyring: reading) == nil)
        #expect(try PayloadOpener(keyring: reading).open(new.value, headers: new.headers, topic: "events") == second)
    }

    /// Each hour has its own data key: the hour is part of the envelope, so an old message
    /// opens whenever it is read.
    @Test func messagesOfEarlierHoursOpen() throws {
        let sealer = try self.keys.sealer("k1")
        let opener = PayloadOpener(keyring: try self.keys.keyring(current: "k1"))
        let now = KafkaEnvelope.currentHour()
        let event = eventJSON(5)
        for hour in [now, now - 1, now - 24 * 30] {
            let (value, headers) = try sealed(event, by: sealer, hour: hour)
            #expect(try opener.open(value, headers: headers, topic: "events") == event)
        }
    }

    @Test func anUnknownVersionOrAMissingKeyIDIsRefused() throws {
        let opener = PayloadOpener(keyring: try self.keys.keyring(current: "k1"))
        let (value, headers) = try sealed(eventJSON(3), by: try self.keys.sealer("k1"))
        let v2 = headers.map { $0.name == "sluice-enc" ? ($0.name, Array("v2".utf8)) : $0 }
        #expect { try opener.open(value, headers: v2, topic: "events") } throws: {
            "\($0)" == "payload envelope version 'v2' is not one this loader reads (v1)"
        }
        let noID = headers.filter { $0.name != "sluice-kid" }
        #expect { try opener.open(value, headers: noID, topic: "events") } throws: {
            "\($0)" == "payload envelope without a valid sluice-kid header"
        }
    }
}
