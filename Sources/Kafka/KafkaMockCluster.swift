import Crdkafka
import SluiceCore

/// librdkafka's built-in mock cluster: a real Kafka-protocol server on loopback with several
/// brokers, consumer groups, idempotent-producer support and fault injection. In memory, for
/// tests and the local demo only (about 5 MiB kept per partition).
///
/// - Important: librdkafka marks the mock API experimental; Sluice uses it only for tests,
///   `sluice dev-kafka` and `sluice dev`.
///
/// `@unchecked Sendable`: the two handles are set once, and librdkafka's mock API may be
/// called from any thread.
public final class KafkaMockCluster: @unchecked Sendable {
    private let owner: OpaquePointer
    private let cluster: OpaquePointer
    /// `host:port,host:port,…` for `bootstrap.servers`.
    public let bootstrapServers: String
    public let brokerCount: Int

    /// Starts `brokers` brokers on free loopback ports.
    public init(brokers: Int = 3) throws(KafkaError) {
        guard brokers >= 1 else {
            throw KafkaError(.invalidArgument, "a mock cluster needs at least one broker")
        }
        // The cluster lives inside a client handle; this one only owns it.
        self.owner = try makeHandle(type: RD_KAFKA_PRODUCER, properties: ["log_level": "3"])
        guard let cluster = rd_kafka_mock_cluster_new(self.owner, Int32(brokers)) else {
            rd_kafka_destroy(self.owner)
            throw KafkaError(.failed, "could not start the mock cluster")
        }
        self.cluster = cluster
        self.bootstrapServers = String(cString: rd_kafka_mock_cluster_bootstraps(cluster))
        self.brokerCount = brokers
    }

    deinit {
        rd_kafka_mock_cluster_destroy(self.cluster)
        rd_kafka_destroy(self.owner)
    }

    /// Creates a topic (mock brokers also auto-create topics on first use, with the default
    /// partition count).
    public func createTopic(_ name: String, partitions: Int, replicationFactor: Int = 3) throws(KafkaError) {
        let error = rd_kafka_mock_topic_create(
            self.cluster,
            name,
            Int32(partitions),
            Int32(min(replicationFactor, self.brokerCount))
        )
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(error, message: "creating topic \(name)") }
    }

    /// Takes broker `id` (1-based) down: its connections close and it refuses new ones.
    /// (librdkafka closes the broker's listening socket and binds its port again at once, and
    /// aborts if that fails: ``SpawnGate`` keeps a child being spawned from holding the port.)
    public func setBrokerDown(_ id: Int32) {
        SpawnGate.rebinding { _ = rd_kafka_mock_broker_set_down(self.cluster, id) }
    }

    /// Brings broker `id` back.
    public func setBrokerUp(_ id: Int32) { rd_kafka_mock_broker_set_up(self.cluster, id) }

    /// Adds `milliseconds` of round-trip latency to broker `id`.
    public func setBrokerRoundTrip(_ id: Int32, milliseconds: Int32) {
        rd_kafka_mock_broker_set_rtt(self.cluster, id, milliseconds)
    }

    /// The next requests with Kafka API key `apiKey` (0 = Produce) fail with these errors, in order.
    public func pushRequestErrors(apiKey: Int16, errors: [Int32]) {
        var codes = errors.map { rd_kafka_resp_err_t(rawValue: $0) }
        rd_kafka_mock_push_request_errors_array(self.cluster, apiKey, codes.count, &codes)
    }

    /// Moves the leadership of `topic`/`partition` to broker `id`.
    public func setPartitionLeader(topic: String, partition: Int32, broker id: Int32) {
        rd_kafka_mock_partition_set_leader(self.cluster, topic, partition, id)
    }
}
