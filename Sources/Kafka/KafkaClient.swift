import Crdkafka
import Dispatch
import Logging
import Synchronization

/// Creates a librdkafka handle from string properties, turning configuration errors into a
/// ``KafkaError`` that names the property.
func makeHandle(
    type: rd_kafka_type_t,
    properties: [String: String],
    prepare: (OpaquePointer) -> Void = { _ in }
) throws(KafkaError) -> OpaquePointer {
    let conf = rd_kafka_conf_new()!
    var errorBuffer = [CChar](repeating: 0, count: 512)
    for (key, value) in properties.sorted(by: { $0.key < $1.key }) {
        let result = rd_kafka_conf_set(conf, key, value, &errorBuffer, errorBuffer.count)
        guard result == RD_KAFKA_CONF_OK else {
            rd_kafka_conf_destroy(conf)
            // A password is never part of an error.
            let secret = ["password", "secret", "key.pem", "oauthbearer.config"].contains { key.contains($0) }
            throw KafkaError(
                .invalidArgument,
                "kafka property \(key)=\(secret ? "(secret)" : value): \(String(decoding: errorBuffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))"
            )
        }
    }
    rd_kafka_conf_set_log_cb(conf, forwardLibrdkafkaLog)
    let oauthBearer = KafkaOAuthBearer.prepare(conf, properties: properties)
    prepare(conf)
    guard let handle = rd_kafka_new(type, conf, &errorBuffer, errorBuffer.count) else {
        // rd_kafka_new frees the configuration only on success.
        rd_kafka_conf_destroy(conf)
        throw KafkaError(
            .failed,
            "creating the client: "
                + String(decoding: errorBuffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        )
    }
    if oauthBearer {
        do throws(KafkaError) {
            try KafkaOAuthBearer.start(handle)
        } catch {
            rd_kafka_destroy(handle)
            throw error
        }
    }
    return handle
}

/// librdkafka's log lines, which it would otherwise print to stderr in its own format, as
/// structured log events (JSON lines like every other), from whichever thread librdkafka logs
/// on. `log_level` (a librdkafka property, syslog levels) still filters them at the source.
/// The logger is made per line: a global one could be made before the logging system is set up.

private let forwardLibrdkafkaLog:
    @convention(c) (OpaquePointer?, Int32, UnsafePointer<CChar>?, UnsafePointer<CChar>?) ->
        Void = { handle, level, facility, message in
            let swiftLevel: Logger.Level =
                switch level {
                case ...2: .critical
                case 3: .error
                case 4: .warning
                case 5: .notice
                case 6: .info
                default: .debug
                }
            Logger(label: "librdkafka").log(
                level: swiftLevel,
                "\(message.map { String(cString: $0) } ?? "")",
                metadata: [
                    "kafka.client": "\(handle.map { String(cString: rd_kafka_name($0)) } ?? "")",
                    "kafka.facility": "\(facility.map { String(cString: $0) } ?? "")",
                ]
            )
        }

/// One message's outcome, as librdkafka reported it.
public struct DeliveryReport: Sendable {
    /// The id the message was sent with.
    public var id: UInt64
    public var topic: String
    public var partition: Int32
    public var offset: Int64
    /// nil when the broker acknowledged the message (acks=all).
    public var error: KafkaError?
    /// From queueing to this report, as librdkafka measured it; -1 when unknown.
    public var latencyMicroseconds: Int64 = -1

    public init(
        id: UInt64,
        topic: String,
        partition: Int32,
        offset: Int64,
        error: KafkaError? = nil,
        latencyMicroseconds: Int64 = -1
    ) {
        self.id = id
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.error = error
        self.latencyMicroseconds = latencyMicroseconds
    }
}

/// A Kafka producer: one librdkafka handle and one poll thread that turns delivery reports
/// into calls of `onDelivery`.
///
/// - Important: `send` never blocks; a full local queue is a retriable `_QUEUE_FULL` error.
///   The poll thread is a dedicated thread, never the cooperative pool. Call ``close(flushTimeout:)``
///   (or the blocking ``close(flushTimeoutMilliseconds:)``) before dropping the producer.
///
/// `@unchecked Sendable`: librdkafka handles are thread-safe, the topic table is locked, and
/// the callbacks' `pending` list is touched only by the poll thread.
public final class KafkaProducer: @unchecked Sendable {
    /// Handed to librdkafka as the configuration opaque; lives as long as the producer.
    final class Callbacks: @unchecked Sendable {
        let onDelivery: @Sendable ([DeliveryReport]) -> Void
        /// Filled by the delivery callback during one `rd_kafka_poll`: on the poll thread, or,
        /// once that stopped, on the thread that closes the producer (its final flush polls).
        var pending: [DeliveryReport] = []
        let onError: @Sendable (KafkaError) -> Void

        init(
            onDelivery: @escaping @Sendable ([DeliveryReport]) -> Void,
            onError: @escaping @Sendable (KafkaError) -> Void
        ) {
            self.onDelivery = onDelivery
            self.onError = onError
        }
    }

    private let handle: OpaquePointer
    private let callbacks: Unmanaged<Callbacks>
    private let stopping = Atomic<Bool>(false)
    private let pollFinished = DispatchSemaphore(value: 0)
    private let closed = Atomic<Bool>(false)
    private let topics = Mutex<[String: KafkaTopic]>([:])

    /// - Parameters:
    ///   - properties: librdkafka configuration (`bootstrap.servers`, `enable.idempotence`, …).
    ///   - onDelivery: called on the poll thread with each poll's delivery reports (and by `close` with
    ///     those of its final flush); keep it short: the next poll waits for it.
    ///   - onError: client-level errors (all brokers down, fatal idempotence errors).
    public init(
        properties: [String: String],
        onDelivery: @escaping @Sendable ([DeliveryReport]) -> Void,
        onError: @escaping @Sendable (KafkaError) -> Void = { _ in }
    ) throws(KafkaError) {
        let callbacks = Unmanaged.passRetained(Callbacks(onDelivery: onDelivery, onError: onError))
        do {
            self.handle = try makeHandle(type: RD_KAFKA_PRODUCER, properties: properties) { conf in
                rd_kafka_conf_set_opaque(conf, callbacks.toOpaque())
                rd_kafka_conf_set_dr_msg_cb(conf) { _, message, opaque in
                    guard let message, let opaque else { return }
                    let callbacks = Unmanaged<Callbacks>.fromOpaque(opaque).takeUnretainedValue()
                    let id = UInt64(UInt(bitPattern: message.pointee._private)) &- 1
                    let error = message.pointee.err
                    let topic = message.pointee.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? ""
                    callbacks.pending.append(
                        DeliveryReport(
                            id: id,
                            topic: topic,
                            partition: message.pointee.partition,
                            offset: message.pointee.offset,
                            error: error == RD_KAFKA_RESP_ERR_NO_ERROR ? nil : KafkaError(error),
                            latencyMicroseconds: rd_kafka_message_latency(message)
                        )
                    )
                }
                rd_kafka_conf_set_error_cb(conf) { handle, code, reason, opaque in
                    guard let opaque else { return }
                    let callbacks = Unmanaged<Callbacks>.fromOpaque(opaque).takeUnretainedValue()
                    var error = KafkaError(
                        rd_kafka_resp_err_t(rawValue: code),
                        message: reason.map { String(cString: $0) }
                    )
                    if error.isFatal, let handle {
                        var buffer = [CChar](repeating: 0, count: 512)
                        let fatal = rd_kafka_fatal_error(handle, &buffer, buffer.count)
                        error = KafkaError(
                            fatal,
                            message: String(
                                decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) },
                                as: UTF8.self
                            )
                        )
                        error.isFatal = true
                    }
                    callbacks.onError(error)
                }
            }
        } catch {
            callbacks.release()
            throw error
        }
        self.callbacks = callbacks
        let thread = DispatchQueue(label: "sluice.kafka.producer-poll")
        thread.async { [self] in self.pollLoop() }
    }

    private func pollLoop() {
        let callbacks = self.callbacks.takeUnretainedValue()
        while !self.stopping.load(ordering: .relaxed) {
            rd_kafka_poll(self.handle, 50)
            if !callbacks.pending.isEmpty {
                let reports = callbacks.pending
                callbacks.pending.removeAll(keepingCapacity: true)
                callbacks.onDelivery(reports)
            }
        }
        self.pollFinished.signal()
    }

    /// Queues one message. `id` comes back in its ``DeliveryReport``. Convenient; the
    /// forwarder's hot path uses the buffer-based overload.
    public func send(
        topic: String,
        key: [UInt8]?,
        value: [UInt8],
        headers: [(String, [UInt8])] = [],
        id: UInt64
    )
        throws(KafkaError)
    {
        let handle = self.topic(topic)
        var list = KafkaHeaders(capacity: headers.count)
        for (name, bytes) in headers { bytes.withUnsafeBytes { list.add(name, $0) } }
        let result: KafkaError? = value.withUnsafeBytes { valueBytes in
            if let key {
                return key.withUnsafeBytes { keyBytes in
                    self.queue(topic: handle, key: keyBytes, value: valueBytes, headers: list.take(), id: id)
                }
            }
            return self.queue(topic: handle, key: nil, value: valueBytes, headers: list.take(), id: id)
        }
        if let result { throw result }
    }

    /// Queues one message from borrowed bytes. librdkafka copies the key and the headers
    /// (handed over, left empty, either way); the value too unless `valueOutlivesDelivery`.
    /// `id` comes back in its ``DeliveryReport``.
    ///
    /// - Important: with `valueOutlivesDelivery`, the caller keeps `value`'s memory alive
    ///   and unchanged until this message's delivery report has been handled.
    public func send(
        topic: KafkaTopic,
        key: UnsafeRawBufferPointer?,
        value: UnsafeRawBufferPointer,
        valueOutlivesDelivery: Bool = false,
        headers: inout KafkaHeaders,
        id: UInt64
    ) throws(KafkaError) {
        if let error = self.queue(
            topic: topic,
            key: key,
            value: value,
            copy: !valueOutlivesDelivery,
            headers: headers.take(),
            id: id
        ) {
            throw error
        }
    }

    private func queue(
        topic: KafkaTopic,
        key: UnsafeRawBufferPointer?,
        value: UnsafeRawBufferPointer,
        copy: Bool = true,
        headers: OpaquePointer?,
        id: UInt64
    ) -> KafkaError? {
        let error: OpaquePointer? = withUnsafeTemporaryAllocation(of: rd_kafka_vu_t.self, capacity: 6) { fields in
            var count = 0
            func append(_ type: rd_kafka_vtype_t, _ fill: (inout rd_kafka_vu_t) -> Void) {
                var field = rd_kafka_vu_t()
                field.vtype = type
                fill(&field)
                fields.initializeElement(at: count, to: field)
                count += 1
            }
            append(RD_KAFKA_VTYPE_RKT) { $0.u.rkt = topic.pointer }
            append(RD_KAFKA_VTYPE_VALUE) {
                $0.u.mem.ptr = UnsafeMutableRawPointer(mutating: value.baseAddress)
                $0.u.mem.size = value.count
            }
            if let key {
                append(RD_KAFKA_VTYPE_KEY) {
                    $0.u.mem.ptr = UnsafeMutableRawPointer(mutating: key.baseAddress)
                    $0.u.mem.size = key.count
                }
            }
            append(RD_KAFKA_VTYPE_MSGFLAGS) { $0.u.i = copy ? RD_KAFKA_MSG_F_COPY : 0 }
            append(RD_KAFKA_VTYPE_OPAQUE) { $0.u.ptr = UnsafeMutableRawPointer(bitPattern: UInt(id &+ 1)) }
            if let headers { append(RD_KAFKA_VTYPE_HEADERS) { $0.u.headers = headers } }
            return rd_kafka_produceva(self.handle, fields.baseAddress, count)
        }
        guard let error else { return nil }  // librdkafka now owns the headers
        if let headers { rd_kafka_headers_destroy(headers) }
        let owned = OwnedKafkaError(pointer: error)
        return KafkaError(owned.code, message: "producing to \(String(cString: rd_kafka_topic_name(topic.pointer)))")
    }

    /// The handle of topic `name`, created once and kept until ``close(flushTimeoutMilliseconds:)``.
    public func topic(_ name: String) -> KafkaTopic {
        self.topics.withLock { topics in
            if let topic = topics[name] { return topic }
            let topic = KafkaTopic(pointer: rd_kafka_topic_new(self.handle, name, nil))
            topics[name] = topic
            return topic
        }
    }

    /// Raises a fatal error in the client as if the cluster had fenced it (librdkafka's own
    /// test hook): for testing recovery from fatal producer errors.
    @_spi(Testing) public func injectFatalError(
        _ code: KafkaError.Code = .invalidProducerEpoch,
        reason: String = "injected by a test"
    ) {
        _ = rd_kafka_test_fatal_error(self.handle, code.librdkafka, reason)
    }

    /// Messages queued locally or in flight.
    public var outstanding: Int { Int(rd_kafka_outq_len(self.handle)) }

    /// Waits (on the calling thread) up to `timeoutMilliseconds` for queued messages to be delivered.
    public func flush(timeoutMilliseconds: Int32) -> Bool {
        rd_kafka_flush(self.handle, timeoutMilliseconds) == RD_KAFKA_RESP_ERR_NO_ERROR
    }

    /// Flushes (blocking the calling thread up to the timeout), stops the poll thread and
    /// destroys the handle. Messages still undelivered are reported as failed by librdkafka.
    /// Idempotent. From an async context use ``close(flushTimeout:)``, which blocks no
    /// thread of the cooperative pool.
    public func close(flushTimeoutMilliseconds: Int32 = 5000) {
        guard !self.closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        // The poll thread stops first: `rd_kafka_flush` serves callbacks itself (it polls),
        // and two threads must not fill `pending` at once. The reports of the flush are
        // handed over here, on the closing thread, once it is done.
        self.stopping.store(true, ordering: .relaxed)
        self.pollFinished.wait()
        let callbacks = self.callbacks.takeUnretainedValue()
        _ = rd_kafka_flush(self.handle, flushTimeoutMilliseconds)
        if !callbacks.pending.isEmpty {
            let reports = callbacks.pending
            callbacks.pending.removeAll()
            callbacks.onDelivery(reports)
        }
        for topic in self.topics.withLock({ $0.values }) { rd_kafka_topic_destroy(topic.pointer) }
        rd_kafka_destroy(self.handle)
        self.callbacks.release()
    }

    /// Flushes (up to `flushTimeout`), stops the poll thread and destroys the handle, like
    /// ``close(flushTimeoutMilliseconds:)``, but suspends instead of blocking: the flush and
    /// the destruction run on a thread of their own, never on the cooperative pool. Delivery
    /// reports of the flush still reach `onDelivery` before this returns. Idempotent.
    ///
    /// The timeout has no default so that `producer.close()` keeps meaning the synchronous
    /// close at existing call sites in async functions.
    public func close(flushTimeout: Duration) async {
        let (seconds, attoseconds) = flushTimeout.components
        let milliseconds = Int32(clamping: max(0, seconds * 1000 + attoseconds / 1_000_000_000_000_000))
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            DispatchQueue(label: "sluice.kafka.producer-close").async {
                self.close(flushTimeoutMilliseconds: milliseconds)
                continuation.resume()
            }
        }
    }

    /// Per-partition high watermarks (end offsets) of `topic`: how many messages it holds in
    /// total, without reading them. Blocks up to the timeout per partition.
    public func endOffsets(topic: String, timeoutMilliseconds: Int32 = 5000) throws(KafkaError) -> [Int32: Int64] {
        try Self.watermarks(handle: self.handle, topic: topic, timeoutMilliseconds: timeoutMilliseconds)
            .mapValues { $0.high }
    }

    /// The partition ids of `topic`, from fresh metadata. Blocks up to the timeout.
    static func partitions(
        handle: OpaquePointer,
        topic: String,
        timeoutMilliseconds: Int32
    ) throws(KafkaError)
        -> [Int32]
    {
        let topicHandle = rd_kafka_topic_new(handle, topic, nil)
        defer { rd_kafka_topic_destroy(topicHandle) }
        var metadata: UnsafePointer<rd_kafka_metadata>?
        let error = rd_kafka_metadata(handle, 0, topicHandle, &metadata, timeoutMilliseconds)
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR, let metadata else {
            throw KafkaError(error, message: "metadata for \(topic)")
        }
        defer { rd_kafka_metadata_destroy(metadata) }
        guard metadata.pointee.topic_cnt > 0 else { return [] }
        let topicMetadata = metadata.pointee.topics[0]
        guard topicMetadata.err == RD_KAFKA_RESP_ERR_NO_ERROR else {
            throw KafkaError(topicMetadata.err, message: "metadata for \(topic)")
        }
        return (0..<Int(topicMetadata.partition_cnt)).map { topicMetadata.partitions[$0].id }.sorted()
    }

    /// Low and high watermarks of every partition of `topic`, asked of the partitions'
    /// leaders. Blocks up to the timeout for the metadata and again per partition.
    static func watermarks(
        handle: OpaquePointer,
        topic: String,
        timeoutMilliseconds: Int32
    ) throws(KafkaError)
        -> [Int32: (low: Int64, high: Int64)]
    {
        var marks: [Int32: (low: Int64, high: Int64)] = [:]
        for partition in try Self.partitions(handle: handle, topic: topic, timeoutMilliseconds: timeoutMilliseconds) {
            var low: Int64 = 0
            var high: Int64 = 0
            let queried = rd_kafka_query_watermark_offsets(handle, topic, partition, &low, &high, timeoutMilliseconds)
            guard queried == RD_KAFKA_RESP_ERR_NO_ERROR else {
                throw KafkaError(queried, message: "watermarks of \(topic)/\(partition)")
            }
            marks[partition] = (low, high)
        }
        return marks
    }
}

/// An owned `rd_kafka_error_t *`, read once and destroyed.
struct OwnedKafkaError {
    let code: rd_kafka_resp_err_t

    init(pointer: OpaquePointer) {
        self.code = rd_kafka_error_code(pointer)
        rd_kafka_error_destroy(pointer)
    }
}

/// A producer's handle on one topic; valid until the producer is closed. `@unchecked
/// Sendable`: librdkafka topic handles may be used from any thread.
public struct KafkaTopic: @unchecked Sendable {
    let pointer: OpaquePointer
}

/// Message headers under construction; librdkafka copies names and values. Handed to
/// ``KafkaProducer/send(topic:key:value:headers:id:)``, which takes ownership.
public struct KafkaHeaders: ~Copyable {
    private var pointer: OpaquePointer?

    public init(capacity: Int) {
        self.pointer = capacity > 0 ? rd_kafka_headers_new(capacity) : nil
    }

    public mutating func add(_ name: String, _ value: UnsafeRawBufferPointer) {
        if self.pointer == nil { self.pointer = rd_kafka_headers_new(4) }
        _ = rd_kafka_header_add(self.pointer, name, -1, value.baseAddress, value.count)
    }

    public mutating func add(_ name: StaticString, _ value: StaticString) {
        if self.pointer == nil { self.pointer = rd_kafka_headers_new(4) }
        name.withUTF8Buffer { nameBytes in
            _ = rd_kafka_header_add(
                self.pointer,
                UnsafeRawPointer(nameBytes.baseAddress!).assumingMemoryBound(to: CChar.self),
                nameBytes.count,
                value.utf8Start,
                value.utf8CodeUnitCount
            )
        }
    }

    /// Hands the list over (nil when empty).
    mutating func take() -> OpaquePointer? {
        defer { self.pointer = nil }
        return self.pointer
    }

    deinit {
        if let pointer { rd_kafka_headers_destroy(pointer) }
    }
}
