import Crdkafka

/// An error from librdkafka or the Swift layer over it.
public struct KafkaError: Error, Sendable, CustomStringConvertible {
    /// librdkafka's `rd_kafka_resp_err_t` value (negative: client-side, positive: broker).
    public var code: Int32
    /// librdkafka's symbolic name, e.g. `_MSG_TIMED_OUT`, `MSG_SIZE_TOO_LARGE`.
    public var name: String
    public var message: String
    /// Retrying the same operation later can succeed (broker down, queue full, timeout).
    public var isRetriable: Bool
    /// The client instance is unusable (e.g. the idempotent producer was fenced): recreate it.
    public var isFatal: Bool
    /// Kafka will never accept this message, however often it is sent (too large, corrupt,
    /// invalid topic name). Everything else — broker down, leader moving, authorization not
    /// yet granted — may pass later and must not cost the message.
    public var isPermanent: Bool { Self.permanent.contains(self.code) }

    public init(code: Int32, name: String, message: String, isRetriable: Bool, isFatal: Bool = false) {
        self.code = code
        self.name = name
        self.message = message
        self.isRetriable = isRetriable
        self.isFatal = isFatal
    }

    /// Builds an error from a librdkafka error code, with librdkafka's own description.
    init(_ error: rd_kafka_resp_err_t, message: String? = nil) {
        self.code = error.rawValue
        self.name = String(cString: rd_kafka_err2name(error))
        let description = String(cString: rd_kafka_err2str(error))
        self.message = message.map { "\($0): \(description)" } ?? description
        self.isRetriable = Self.retriable.contains(error.rawValue)
        self.isFatal = error == RD_KAFKA_RESP_ERR__FATAL
    }

    /// Errors a later retry can get past.
    static let retriable: Set<Int32> = Set(
        [
            RD_KAFKA_RESP_ERR__QUEUE_FULL, RD_KAFKA_RESP_ERR__MSG_TIMED_OUT, RD_KAFKA_RESP_ERR__TIMED_OUT,
            RD_KAFKA_RESP_ERR__TRANSPORT, RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN, RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC,
            RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE, RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND, RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION,
            RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE, RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART, RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR,
        ].map(\.rawValue)
    )

    /// Errors that belong to the message, not to the moment.
    static let permanent: Set<Int32> = Set(
        [
            RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
            RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE, RD_KAFKA_RESP_ERR_INVALID_RECORD,
            RD_KAFKA_RESP_ERR_INVALID_MSG, RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION,
            RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        ].map(\.rawValue)
    )

    public var description: String { "KafkaError(\(self.name)): \(self.message)" }
}
