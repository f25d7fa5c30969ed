import Kafka
import Logging
import Metrics
import SluiceCore
import Synchronization

/// Where the ledger goes: `ledger.*` in the configuration.
public struct LedgerSettings: Sendable, Equatable {
    /// Publish and follow the ledger at all.
    public var enabled: Bool
    /// The topic of ledger records.
    public var topic: String

    /// Run the continuous reconciliation (``LedgerAuditor``) in the loader.
    public var audit: Bool
    /// How long every copy of an event must have been missing before it counts as
    /// unaccounted.
    public var grace: Duration

    public static let defaultTopic = "sluice.ledger"

    public init(
        enabled: Bool = true,
        topic: String = Self.defaultTopic,
        audit: Bool = true,
        grace: Duration = .seconds(60)
    ) {
        self.enabled = enabled
        self.topic = topic
        self.audit = audit
        self.grace = grace
    }
}

/// Sends ledger records to the ledger topic, with a producer of its own: the ledger never
/// shares the data path's in-flight accounting, drain or delivery ids, and a ledger that
/// cannot be written never holds back an event (records are counted as failed and logged,
/// and the ledger then reports their ranges as unaccounted until `sluice audit` settles them).
public final class LedgerPublisher: Sendable {
    public let topic: String
    private let producer: KafkaProducer
    private let nextID = Atomic<UInt64>(0)
    private let metrics: Metrics

    struct Metrics: Sendable {
        let published = Counter(label: "sluice_ledger_records_total")
        let failed = Counter(label: "sluice_ledger_failed_records_total")
        let bytes = Counter(label: "sluice_ledger_bytes_total")
    }

    /// - Parameters:
    ///   - properties: the Kafka client's properties (`bootstrap.servers`, TLS, SASL…) of the
    ///     role that publishes; the ledger's own producer settings win over them.
    public init(properties: [String: String], topic: String, logger: Logger) throws(KafkaError) {
        var merged = properties
        merged["enable.idempotence"] = "true"
        merged["acks"] = "all"
        // Records are small and many per second at most: one request every 50 ms is cheap.
        merged["linger.ms"] = "50"
        merged["compression.type"] = "lz4"
        let metrics = Metrics()
        self.metrics = metrics
        self.topic = topic
        self.producer = try KafkaProducer(
            properties: merged,
            onDelivery: { reports in
                for report in reports {
                    guard let error = report.error else { continue }
                    metrics.failed.increment()
                    logger.warning(
                        "ledger.publish_failed",
                        metadata: ["topic": "\(topic)", "error": "\(error)"]
                    )
                }
            }
        )
    }

    /// Queues `record`; returns false (counted and logged) when the producer refused it.
    @discardableResult
    public func publish(_ record: LedgerRecord) -> Bool {
        let value = record.json()
        do {
            try self.producer.send(
                topic: self.topic,
                key: Array(record.key.utf8),
                value: value,
                id: self.nextID.add(1, ordering: .relaxed).newValue
            )
        } catch {
            self.metrics.failed.increment()
            return false
        }
        self.metrics.published.increment()
        self.metrics.bytes.increment(by: Int64(value.count))
        return true
    }

    /// Records queued and not yet acknowledged.
    public var outstanding: Int { self.producer.outstanding }

    /// Sends what is queued (for at most `timeout`) and closes the producer.
    public func close(flushTimeout: Duration = .seconds(5)) async {
        await self.producer.close(flushTimeout: flushTimeout)
    }
}

extension LedgerSettings {
    /// The `ledger.*` keys (docs/configuration.md); their defaults are this struct's.
    package static let keys: [ConfigurationKey<LedgerSettings>] = [
        .boolean(
            "ledger.enabled",
            \.enabled,
            help: "publish the conservation ledger (docs/ledger.md)"
        ),
        .string("ledger.topic", \.topic, help: "Kafka topic of the ledger's records"),
        .boolean(
            "ledger.audit",
            \.audit,
            help: "the loader reconciles the ledger continuously (sluice_unaccounted_events)"
        ),
        .duration(
            "ledger.grace",
            \.grace,
            atLeast: .zero,
            atMost: .seconds(86_400),
            help: "how long an event's every copy must be missing before it counts as unaccounted"
        ),
    ]
}

/// Delivery receipts and ack levels: `receipts.*` in the configuration (docs/receipts.md).
public struct ReceiptSettings: Sendable, Equatable {
    /// A file holding the receipts' MAC key (any bytes, at least 32): the same file on every
    /// gateway behind one balancer, so that any of them reads any receipt. Unset: each gateway
    /// keeps a random key of its own in its WAL directory (`receipts.key`).
    public var keyFile: String?
    /// The longest a request waits for `replicated` or `queryable`.
    public var maxWait: Duration
    /// How long a gateway remembers where events went.
    public var retention: Duration

    public init(keyFile: String? = nil, maxWait: Duration = .seconds(10), retention: Duration = .seconds(3_600)) {
        self.keyFile = keyFile
        self.maxWait = maxWait
        self.retention = retention
    }

    package static let keys: [ConfigurationKey<ReceiptSettings>] = [
        .string(
            "receipts.key_file",
            \.keyFile,
            emptyIsNone: true,
            help: "file with the receipts' MAC key (32+ bytes), the same on every gateway; default: one per WAL"
        ),
        .duration(
            "receipts.max_wait",
            \.maxWait,
            atLeast: .zero,
            atMost: .seconds(120),
            help: "the longest a request waits for ack=replicated or ack=queryable"
        ),
        .duration(
            "receipts.retention",
            \.retention,
            atLeast: .seconds(60),
            atMost: .seconds(7 * 86_400),
            help: "how long a gateway remembers where events went, for GET /v1/receipts"
        ),
    ]
}
