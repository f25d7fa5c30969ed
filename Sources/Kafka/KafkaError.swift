import Crdkafka

/// The one error type of the Kafka module: an error from librdkafka or the Swift layer over it.
///
/// Every error carries a ``Code`` callers can switch on (librdkafka's own error code, so a
/// code seen in librdkafka's logs or documentation means the same here), a message written
/// for the operator, and the source location that raised it. Callers decide with three
/// questions, in this order: ``isFatal`` (recreate the client), ``isPermanent`` (this message
/// can never be produced: set it aside) and ``isRetriable`` (the same call may pass later).
public struct KafkaError: Error, Sendable, CustomStringConvertible {
    /// librdkafka's `rd_kafka_resp_err_t`: negative values are raised by the client itself,
    /// positive ones come from a broker. Named constants cover the codes Sluice decides on;
    /// any other code is kept as it came.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// The `rd_kafka_resp_err_t` value.
        public let rawValue: Int32

        public init(rawValue: Int32) { self.rawValue = rawValue }

        init(_ error: rd_kafka_resp_err_t) { self.rawValue = error.rawValue }

        var librdkafka: rd_kafka_resp_err_t { rd_kafka_resp_err_t(rawValue: self.rawValue) }

        /// librdkafka's symbolic name, e.g. `_MSG_TIMED_OUT`, `MSG_SIZE_TOO_LARGE`.
        public var name: String { String(cString: rd_kafka_err2name(self.librdkafka)) }

        public var description: String { "\(self.name) (\(self.rawValue))" }

        // MARK: Raised by the client

        /// The local queue (`queue.buffering.max.messages`) is full: wait for deliveries.
        public static let queueFull = Code(RD_KAFKA_RESP_ERR__QUEUE_FULL)
        /// The message was not delivered within `message.timeout.ms`.
        public static let messageTimedOut = Code(RD_KAFKA_RESP_ERR__MSG_TIMED_OUT)
        /// A request or operation timed out.
        public static let timedOut = Code(RD_KAFKA_RESP_ERR__TIMED_OUT)
        /// A broker connection failed.
        public static let transport = Code(RD_KAFKA_RESP_ERR__TRANSPORT)
        /// No broker is reachable.
        public static let allBrokersDown = Code(RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
        /// The topic is not (yet) in the cluster's metadata.
        public static let unknownTopic = Code(RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC)
        /// The client instance is unusable (e.g. a fenced idempotent producer): recreate it.
        public static let fatal = Code(RD_KAFKA_RESP_ERR__FATAL)
        /// An invalid argument or configuration property.
        public static let invalidArgument = Code(RD_KAFKA_RESP_ERR__INVALID_ARG)
        /// A local failure without a more precise code (a handle could not be created).
        public static let failed = Code(RD_KAFKA_RESP_ERR__FAIL)
        /// A TLS failure: the broker's certificate is not trusted (wrong CA, wrong host name),
        /// or the handshake failed.
        public static let ssl = Code(RD_KAFKA_RESP_ERR__SSL)
        /// SASL authentication failed.
        public static let authentication = Code(RD_KAFKA_RESP_ERR__AUTHENTICATION)
        /// A broker's host name does not resolve.
        public static let resolve = Code(RD_KAFKA_RESP_ERR__RESOLVE)

        // MARK: Sent by a broker

        /// The message (or its batch) is larger than the broker or topic accepts.
        public static let messageSizeTooLarge = Code(RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE)
        public static let recordListTooLarge = Code(RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE)
        public static let invalidRecord = Code(RD_KAFKA_RESP_ERR_INVALID_RECORD)
        /// The message failed its CRC check or is otherwise corrupt.
        public static let invalidMessage = Code(RD_KAFKA_RESP_ERR_INVALID_MSG)
        /// The topic name is invalid, or the topic is internal.
        public static let topicException = Code(RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION)
        public static let leaderNotAvailable = Code(RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE)
        public static let notLeaderForPartition = Code(RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION)
        public static let requestTimedOut = Code(RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT)
        public static let notEnoughReplicas = Code(RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS)
        public static let notEnoughReplicasAfterAppend = Code(RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND)
        public static let networkException = Code(RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION)
        public static let coordinatorNotAvailable = Code(RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE)
        public static let notCoordinator = Code(RD_KAFKA_RESP_ERR_NOT_COORDINATOR)
        public static let unknownTopicOrPartition = Code(RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
        public static let kafkaStorageError = Code(RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR)
        /// The producer was fenced by a newer instance with the same id (fatal for an
        /// idempotent producer).
        public static let invalidProducerEpoch = Code(RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH)
        /// The principal may not write to the topic (yet: a new ACL can take a while to reach
        /// every broker).
        public static let topicAuthorizationFailed = Code(RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED)
        /// The principal lacks a cluster-level permission (idempotent writes need `IdempotentWrite`
        /// on Kafka < 2.8).
        public static let clusterAuthorizationFailed = Code(RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED)
        public static let transactionalIDAuthorizationFailed = Code(
            RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        )
    }

    public var code: Code
    public var message: String
    /// The client instance is unusable (e.g. the idempotent producer was fenced): recreate it.
    public var isFatal: Bool
    public var file: String
    public var line: Int

    /// - Parameter isFatal: defaults to whether `code` is ``Code/fatal``; librdkafka also
    ///   reports the underlying cause of a fatal error, which is fatal too.
    public init(
        _ code: Code,
        _ message: String,
        isFatal: Bool? = nil,
        file: String = #fileID,
        line: Int = #line
    ) {
        self.code = code
        self.message = message
        self.isFatal = isFatal ?? (code == .fatal)
        self.file = file
        self.line = line
    }

    /// Builds an error from a librdkafka error code, with librdkafka's own description.
    init(_ error: rd_kafka_resp_err_t, message: String? = nil, file: String = #fileID, line: Int = #line) {
        let description = String(cString: rd_kafka_err2str(error))
        self.init(
            Code(error),
            message.map { "\($0): \(description)" } ?? description,
            file: file,
            line: line
        )
    }

    /// librdkafka's symbolic name of ``code``.
    public var name: String { self.code.name }

    /// Retrying the same operation later can succeed: a broker is down, a leader is moving,
    /// a queue is full, a request timed out, or an authorization is not granted *yet*.
    public var isRetriable: Bool { Self.retriable.contains(self.code) }

    /// Kafka will never accept this message, however often it is sent: it is too large,
    /// corrupt, or names an invalid topic. Nothing else is permanent: a broker down, a leader
    /// moving, an authorization not yet granted (a new ACL can lag behind the deployment)
    /// may all pass later and must not cost the message.
    public var isPermanent: Bool { Self.permanent.contains(self.code) }

    /// Errors a later retry can get past. Authorization failures are here, not in
    /// ``permanent``: an ACL granted a moment ago may not have reached every broker, and
    /// setting the message aside would lose it for a delay that passes by itself.
    static let retriable: Set<Code> = [
        .queueFull, .messageTimedOut, .timedOut, .transport, .allBrokersDown, .unknownTopic,
        .leaderNotAvailable, .notLeaderForPartition, .requestTimedOut, .notEnoughReplicas,
        .notEnoughReplicasAfterAppend, .networkException, .coordinatorNotAvailable, .notCoordinator,
        .unknownTopicOrPartition, .kafkaStorageError,
        .topicAuthorizationFailed, .clusterAuthorizationFailed, .transactionalIDAuthorizationFailed,
    ]

    /// Errors that belong to the message, not to the moment.
    static let permanent: Set<Code> = [
        .messageSizeTooLarge, .recordListTooLarge, .invalidRecord, .invalidMessage, .topicException,
    ]

    public var description: String { "KafkaError(\(self.name)): \(self.message)" }
}
