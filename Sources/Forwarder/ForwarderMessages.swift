import EventModel
import Kafka
import KafkaEnvelope
import SluiceCore
import WAL

/// How a WAL event becomes a Kafka message: the topic from `forwarder.topics` (or the default
/// topic), the key and headers ``ForwardedMessage`` finds in the event, and, with a current
/// `kafka.encryption` key, the value sealed in a ``KafkaEnvelope`` (two more headers). The
/// forwarder and `sluice wal dead-letters resend` share it, so a resent dead letter is exactly
/// the message the forwarder would have sent.
package struct ForwarderMessages: Sendable {
    let routing: TopicRouting
    let sealer: PayloadSealer?

    /// The messages of `configuration`, or the error that stops a start when its payload keys
    /// cannot be read.
    package init(_ configuration: ForwarderConfiguration) throws(ConfigurationError) {
        self.init(
            routing: configuration.routing,
            sealer: try configuration.encryptionKeyring().flatMap { PayloadSealer(keyring: $0) }
        )
    }

    init(routing: TopicRouting, sealer: PayloadSealer?) {
        self.routing = routing
        self.sealer = sealer
    }

    /// The producer's properties: Sluice's defaults, then `kafka.*` (the configuration wins).
    package func producerProperties(_ configuration: ForwarderConfiguration) -> [String: String] {
        var properties = ForwarderConfiguration.producerDefaults
        if self.sealer != nil {
            // Ciphertext does not compress: the envelope compresses before it encrypts.
            properties["compression.type"] = "none"
        }
        properties.merge(configuration.kafkaProperties) { $1 }
        return properties
    }

    /// Queues `event` (WAL LSN `lsn`, also the message's delivery id unless `deliveryID` is
    /// given) on `producer`. Key and headers point into the event's own bytes (librdkafka
    /// copies those). With `eventOutlivesDelivery` the value is not copied either: the caller
    /// keeps `event` alive until its delivery report; a sealed value is a new array, which
    /// librdkafka copies.
    package func send(
        _ event: [UInt8],
        lsn: LSN,
        producer: KafkaProducer,
        eventOutlivesDelivery: Bool,
        deliveryID: UInt64? = nil
    ) -> KafkaError? {
        let message = ForwardedMessage(of: event)
        let topicName =
            self.routing.topicsByAction.isEmpty
            ? self.routing.defaultTopic : self.routing.topic(for: message.routingAction(in: event))
        let topic = producer.topic(topicName)
        return event.withUnsafeBytes { raw -> KafkaError? in
            var headers = KafkaHeaders(capacity: ForwardedMessage.maxHeaders + 2)
            message.forEachHeader(in: raw, walLSN: lsn.rawValue) { name, value in headers.add(name, value) }
            func produce(_ value: UnsafeRawBufferPointer, outlivesDelivery: Bool) -> KafkaError? {
                do throws(KafkaError) {
                    try message.withKey(in: raw) { (key: UnsafeRawBufferPointer?) throws(KafkaError) in
                        try producer.send(
                            topic: topic,
                            key: key,
                            value: value,
                            valueOutlivesDelivery: outlivesDelivery,
                            headers: &headers,
                            id: deliveryID ?? lsn.rawValue
                        )
                    }
                    return nil
                } catch {
                    return error
                }
            }
            guard let sealer = self.sealer else { return produce(raw, outlivesDelivery: eventOutlivesDelivery) }
            let sealed: [UInt8]
            do {
                sealed = try sealer.seal(raw, topic: topicName, hour: KafkaEnvelope.currentHour())
            } catch {
                // Neither retriable nor permanent: sent again after a pause, never as plaintext.
                return KafkaError(.failed, "sealing the payload envelope: \(error)")
            }
            headers.add("sluice-enc", "v1")
            sealer.keyIDBytes.withUnsafeBytes { headers.add(KafkaEnvelope.keyIDHeader, $0) }
            return sealed.withUnsafeBytes { produce($0, outlivesDelivery: false) }
        }
    }
}
