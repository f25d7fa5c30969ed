import Encryption
import Ledger
import SluiceCore

/// Where each event goes: a topic per `action`, else the default topic.
public struct TopicRouting: Sendable, Equatable {
    /// Default: `events`.
    public var defaultTopic = "events"
    public var topicsByAction: [String: String] = [:]

    public init(defaultTopic: String = "events", topicsByAction: [String: String] = [:]) {
        self.defaultTopic = defaultTopic
        self.topicsByAction = topicsByAction
    }

    public func topic(for action: String?) -> String {
        action.flatMap { self.topicsByAction[$0] } ?? self.defaultTopic
    }
}

/// Settings of the WAL → Kafka forwarder.
public struct ForwarderConfiguration: Sendable {
    /// librdkafka properties; `bootstrap.servers` at least. Sluice's defaults (idempotence,
    /// acks=all, lz4, linger) apply unless overridden here.
    public var kafkaProperties: [String: String]
    public var routing = TopicRouting()
    /// The WAL cursor the forwarder owns. Default: `forwarder`.
    public var cursorName = "forwarder"
    /// Events sent and not yet acknowledged, at most; memory stays flat whatever the backlog.
    /// Default: 100,000.
    public var maxInFlightEvents = 100_000
    /// How often the cursor is persisted. Default: 200 ms.
    public var commitInterval: Duration = .milliseconds(200)
    /// At a graceful stop, how long the forwarder keeps sending the WAL's backlog before it
    /// stops (zero: it stops at once, flushing only what is in flight). Default: 10 s.
    public var drainTimeout: Duration = .seconds(10)
    /// At a graceful stop, the drain gives up when Kafka acknowledged nothing for this long (a
    /// broker outage: waiting longer would only delay the stop). Default: 5 s.
    public var drainStallTimeout: Duration = .seconds(5)
    /// `kafka.encryption.*`: with a current key, every value is sealed in a payload envelope
    /// (``KafkaEnvelope``) before it reaches Kafka. Off by default.
    package var encryption = EncryptionConfiguration()
    /// Where the conservation ledger's `accepted` and `forwarded` records go (docs/ledger.md);
    /// nil: none are made.
    public var ledger: (any LedgerSink)?
    /// The gateway whose WAL this is: the first half of each event's identity in the ledger.
    public var gatewayID = ""

    public init(kafkaProperties: [String: String]) { self.kafkaProperties = kafkaProperties }

    /// Sluice's producer defaults: no loss, no duplicates from retries, compact batches.
    public static let producerDefaults: [String: String] = [
        "enable.idempotence": "true",
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": "5",
        "batch.num.messages": "10000",
        "queue.buffering.max.messages": "500000",
        "message.timeout.ms": "0",
        "log_level": "4",
    ]
}

extension ForwarderConfiguration {
    /// The `forwarder.*` keys (docs/configuration.md); their defaults are this struct's.
    package static let keys: [ConfigurationKey<ForwarderConfiguration>] = [
        .string("forwarder.default_topic", \.routing.defaultTopic, help: "topic for actions without a route"),
        ConfigurationKey(
            path: "forwarder.topics.*",
            kind: .string,
            help: "topic per action, e.g. forwarder.topics.purchase: orders"
        ) { configuration, value, _ in configuration.routing.topicsByAction[value.subkey] = value.text },
        .integer(
            "forwarder.max_in_flight",
            \.maxInFlightEvents,
            range: 1...10_000_000,
            help: "events sent and unacknowledged at most"
        ),
        .duration(
            "forwarder.drain_timeout",
            \.drainTimeout,
            help: "at a graceful stop, keep sending the WAL's backlog this long at most (0s: flush only)"
        ),
    ]
}

extension ForwarderConfiguration {
    /// Where the payload keys are configured.
    package static let encryptionPrefix = "kafka.encryption"

    /// The payload keys, read from their files: nil when `kafka.encryption` is not configured.
    /// Refuses what ``EncryptionConfiguration/keyring(prefix:origin:)`` refuses (encryption
    /// without a key, a key file others may read…): call it at start-up, before anything is
    /// sent, so a mistake stops the process with the key's name instead of sending plaintext.
    package func encryptionKeyring() throws(ConfigurationError) -> Keyring? {
        try self.encryption.keyring(prefix: Self.encryptionPrefix)
    }
}
