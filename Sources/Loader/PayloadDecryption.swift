import CoreMetrics
import Encryption
import Kafka
import KafkaEnvelope
import Metrics
import SluiceCore

/// The loader's side of the Kafka payload envelope (``KafkaEnvelope``): a message the
/// forwarder sealed is opened before it is encoded; one that was not sealed (written before
/// encryption was turned on, or after it was turned off) is loaded as it is, so a rollout or a
/// rollback loses nothing.
///
/// A sealed message that cannot be opened is never dropped and never committed past on its
/// own: it becomes a dead letter, exactly as it came (still encrypted, with its `sluice-enc`
/// and `sluice-kid` headers), with the reason as `dlq_reason`, and the partition's offset
/// moves past it only once the dead-letter topic acknowledged it. That holds for a key this
/// loader lacks too (a rotation that reached the forwarders before the loaders): the reason
/// names the key id and where to configure it, and `sluice dlq redrive` sends the messages
/// back once it is configured. Stopping the loader instead would hold every route, and every
/// partition, behind one message that any writer to the topic can make.
struct PayloadDecryption: Sendable {
    enum Opened {
        /// The event to encode: the value itself, or what its envelope held.
        case event([UInt8])
        case rejected(DeadLetter)
    }

    let opener: PayloadOpener

    /// - Parameter keyring: the `kafka.encryption` keys; nil when none is configured (a sealed
    ///   message is then a dead letter naming its key).
    init(keyring: Keyring?) {
        self.opener = PayloadOpener(keyring: keyring)
    }

    func open(_ message: ConsumedMessage) -> Opened {
        do throws(EnvelopeError) {
            guard let event = try self.opener.open(message.value, headers: message.headers, topic: message.topic) else {
                return .event(message.value)
            }
            return .event(event)
        } catch {
            Counter(label: "sluice_loader_undecryptable_messages_total", dimensions: [("reason", error.kind.rawValue)])
                .increment()
            return .rejected(DeadLetter(message: message, reason: error.description))
        }
    }
}

extension LoaderConfiguration {
    /// Where the payload keys are configured.
    package static let encryptionPrefix = "kafka.encryption"

    /// The payload keys, read from their files; nil when none is configured.
    func encryptionKeyring() throws(LoaderError) -> Keyring? {
        do {
            return try self.encryption.keyring(prefix: Self.encryptionPrefix)
        } catch {
            throw LoaderError(.invalidConfiguration, message: error.description)
        }
    }
}
