import Crdkafka
import Dispatch
import SluiceCore
import Synchronization

/// One partition of one topic.
public struct TopicPartition: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var topic: String
    public var partition: Int32

    public init(_ topic: String, _ partition: Int32) {
        self.topic = topic
        self.partition = partition
    }

    public static func < (lhs: TopicPartition, rhs: TopicPartition) -> Bool {
        (lhs.topic, lhs.partition) < (rhs.topic, rhs.partition)
    }

    public var description: String { "\(self.topic)/\(self.partition)" }
}

/// One message as a consumer read it.
public struct ConsumedMessage: Sendable {
    public var topic: String
    public var partition: Int32
    public var offset: Int64
    public var key: [UInt8]?
    public var value: [UInt8]
    public var headers: [(name: String, value: [UInt8])]
    /// The message's create (or log-append) time, unix milliseconds; -1 when unknown.
    public var timestampMillis: Int64

    public var topicPartition: TopicPartition { TopicPartition(self.topic, self.partition) }

    public func header(_ name: String) -> [UInt8]? { self.headers.first { $0.name == name }?.value }
}

/// What a poll returned: messages, and the group's partition moves that happened during it,
/// in the order they happened.
///
/// The order matters when one poll spans several rebalances: a partition revoked and assigned
/// back within one poll has messages from before the revoke (the next owner's now, to be
/// read again from the committed offset) and messages from after (this member's, under its
/// new assignment). Summed-up lists could not tell them apart.
public struct ConsumerPoll: Sendable {
    public enum Event: Sendable {
        case messages([ConsumedMessage])
        /// Partitions this member gained.
        case assigned([TopicPartition])
        /// Partitions this member lost: their uncommitted work belongs to the next owner now.
        case revoked([TopicPartition])
    }

    /// Messages and rebalances, in order.
    public var events: [Event]
    /// Consumer-level errors (broker down, …); librdkafka recovers from them by itself.
    public var errors: [KafkaError] = []

    public init(events: [Event] = [], errors: [KafkaError] = []) {
        self.events = events
        self.errors = errors
    }

    /// One revoke, then one assignment, then messages: a poll within a single rebalance.
    public init(messages: [ConsumedMessage], assigned: [TopicPartition] = [], revoked: [TopicPartition] = []) {
        self.events = []
        if !revoked.isEmpty { self.events.append(.revoked(revoked)) }
        if !assigned.isEmpty { self.events.append(.assigned(assigned)) }
        if !messages.isEmpty { self.events.append(.messages(messages)) }
    }

    /// Every message, in order.
    public var messages: [ConsumedMessage] {
        self.events.flatMap { event -> [ConsumedMessage] in
            if case .messages(let messages) = event { return messages }
            return []
        }
    }

    /// Every partition gained, in the order of the rebalances.
    public var assigned: [TopicPartition] {
        self.events.flatMap { event -> [TopicPartition] in
            if case .assigned(let partitions) = event { return partitions }
            return []
        }
    }

    /// Every partition lost, in the order of the rebalances.
    public var revoked: [TopicPartition] {
        self.events.flatMap { event -> [TopicPartition] in
            if case .revoked(let partitions) = event { return partitions }
            return []
        }
    }

    /// Whether the group moved partitions during the poll.
    public var rebalanced: Bool {
        self.events.contains { event in
            if case .messages = event { return false }
            return true
        }
    }
}

/// A Kafka group consumer: one librdkafka handle whose every call runs on one serial
/// dispatch queue (blocking calls never touch the cooperative pool). Automatic offset
/// commit and offset store are off: the owner commits, explicitly, what it has finished.
/// Rebalances (eager or cooperative) are applied inside ``poll(maxMessages:timeout:)`` and
/// reported in its result.
public final class KafkaConsumer: @unchecked Sendable {
    final class Callbacks: @unchecked Sendable {
        /// The rebalances since the poll loop last looked, in order. Touched only on the
        /// consumer's queue, inside a poll.
        var rebalances: [ConsumerPoll.Event] = []
    }

    private let handle: OpaquePointer
    private let callbacks: Unmanaged<Callbacks>
    private let queue = DispatchQueue(label: "sluice.kafka.consumer")
    /// Where ``lag(timeoutMilliseconds:)`` waits for brokers, apart from the polls.
    private let lagQueue = DispatchQueue(label: "sluice.kafka.consumer.lag")
    private let closed = Atomic<Bool>(false)
    /// The current assignment, readable from any thread.
    private let assignmentBox = Mutex<Set<TopicPartition>>([])

    /// Sluice's consumer defaults; `properties` override them (except that automatic commit
    /// stays off, which the delivery contract needs).
    public static let defaults: [String: String] = [
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.partition.eof": "false",
        "fetch.wait.max.ms": "100",
        "log_level": "4",
    ]

    /// - Parameters:
    ///   - properties: librdkafka properties; `bootstrap.servers` and `group.id` at least.
    ///   - topics: subscribed to at once; empty for a consumer used only for offsets.
    public init(properties: [String: String], topics: [String] = []) throws(KafkaError) {
        var merged = Self.defaults
        merged.merge(properties) { $1 }
        merged["enable.auto.commit"] = "false"
        merged["enable.auto.offset.store"] = "false"
        let callbacks = Unmanaged.passRetained(Callbacks())
        do {
            self.handle = try makeHandle(type: RD_KAFKA_CONSUMER, properties: merged) { conf in
                rd_kafka_conf_set_opaque(conf, callbacks.toOpaque())
                rd_kafka_conf_set_rebalance_cb(conf) { handle, error, partitions, opaque in
                    guard let handle, let opaque else { return }
                    let callbacks = Unmanaged<Callbacks>.fromOpaque(opaque).takeUnretainedValue()
                    let moved = partitions.map(KafkaConsumer.list) ?? []
                    let cooperative = String(cString: rd_kafka_rebalance_protocol(handle)) == "COOPERATIVE"
                    if error == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
                        if cooperative {
                            rd_kafka_error_destroy(rd_kafka_incremental_assign(handle, partitions))
                        } else {
                            rd_kafka_assign(handle, partitions)
                        }
                        callbacks.rebalances.append(.assigned(moved))
                    } else {
                        if cooperative {
                            rd_kafka_error_destroy(rd_kafka_incremental_unassign(handle, partitions))
                        } else {
                            rd_kafka_assign(handle, nil)
                        }
                        callbacks.rebalances.append(.revoked(moved))
                    }
                }
            }
        } catch {
            callbacks.release()
            throw error
        }
        self.callbacks = callbacks
        rd_kafka_poll_set_consumer(self.handle)
        if !topics.isEmpty {
            let list = rd_kafka_topic_partition_list_new(Int32(topics.count))
            defer { rd_kafka_topic_partition_list_destroy(list) }
            for topic in topics { rd_kafka_topic_partition_list_add(list, topic, RD_KAFKA_PARTITION_UA) }
            let error = rd_kafka_subscribe(self.handle, list)
            guard error == RD_KAFKA_RESP_ERR_NO_ERROR else {
                rd_kafka_destroy(self.handle)
                callbacks.release()
                throw KafkaError(error, message: "subscribing to \(topics.joined(separator: ","))")
            }
        }
    }

    /// Waits up to `timeout` for the first message, then takes what is already there, up to
    /// `maxMessages`.
    public func poll(maxMessages: Int, timeout: Duration) async -> ConsumerPoll {
        let milliseconds = Int32(
            clamping: timeout.milliseconds
        )
        return await self.run { [self] in
            var result = ConsumerPoll()
            let callbacks = self.callbacks.takeUnretainedValue()
            var chunk: [ConsumedMessage] = []
            var count = 0
            var wait = milliseconds
            // A rebalance callback runs inside `rd_kafka_consumer_poll`, before the message
            // that call returns: so the messages taken so far come before it, that one after.
            func takeRebalances() {
                guard !callbacks.rebalances.isEmpty else { return }
                if !chunk.isEmpty { result.events.append(.messages(chunk)) }
                chunk.removeAll()
                self.assignmentBox.withLock { assignment in
                    for event in callbacks.rebalances {
                        switch event {
                        case .assigned(let partitions): assignment.formUnion(partitions)
                        case .revoked(let partitions): assignment.subtract(partitions)
                        case .messages: break
                        }
                    }
                }
                result.events += callbacks.rebalances
                callbacks.rebalances.removeAll()
            }
            while count < maxMessages {
                let polled = rd_kafka_consumer_poll(self.handle, wait)
                takeRebalances()
                guard let message = polled else { break }
                wait = 0
                defer { rd_kafka_message_destroy(message) }
                if message.pointee.err != RD_KAFKA_RESP_ERR_NO_ERROR {
                    result.errors.append(KafkaError(message.pointee.err))
                    continue
                }
                chunk.append(Self.consumed(message))
                count += 1
            }
            if !chunk.isEmpty { result.events.append(.messages(chunk)) }
            return result
        }
    }

    /// Partitions currently assigned to this member.
    public var assignment: Set<TopicPartition> { self.assignmentBox.withLock { $0 } }

    /// Reads these partitions from these offsets, outside any group (a consumer made without
    /// topics): for tools that look at given messages, such as `sluice audit --rows`.
    public func assign(_ offsets: [TopicPartition: Int64]) async throws(KafkaError) {
        let error: rd_kafka_resp_err_t = await self.run { [self] in
            let list = Self.makeList(offsets)
            defer { rd_kafka_topic_partition_list_destroy(list) }
            return rd_kafka_assign(self.handle, list)
        }
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(error, message: "assigning partitions") }
        self.assignmentBox.withLock { $0 = Set(offsets.keys) }
    }

    /// Commits, synchronously, the next offset to read of each partition. Partitions no
    /// longer assigned are left out (their work belongs to the next owner).
    public func commit(_ offsets: [TopicPartition: Int64]) async throws(KafkaError) {
        let assignment = self.assignment
        let owned = offsets.filter { assignment.contains($0.key) }
        guard !owned.isEmpty else { return }
        let error: rd_kafka_resp_err_t = await self.run { [self] in
            let list = Self.makeList(owned)
            defer { rd_kafka_topic_partition_list_destroy(list) }
            let error = rd_kafka_commit(self.handle, list, 0)
            if error != RD_KAFKA_RESP_ERR_NO_ERROR { return error }
            return (0..<Int(list.pointee.cnt)).lazy.map { list.pointee.elems[$0].err }
                .first { $0 != RD_KAFKA_RESP_ERR_NO_ERROR } ?? RD_KAFKA_RESP_ERR_NO_ERROR
        }
        guard error == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(error, message: "committing offsets") }
    }

    /// Stops fetching from these partitions (a poll still serves rebalances).
    public func pause(_ partitions: [TopicPartition]) async {
        guard !partitions.isEmpty else { return }
        await self.run { [self] in
            let list = Self.makeList(partitions)
            defer { rd_kafka_topic_partition_list_destroy(list) }
            _ = rd_kafka_pause_partitions(self.handle, list)
        }
    }

    /// Fetches again from these partitions, from the next message not yet handed out.
    public func resume(_ partitions: [TopicPartition]) async {
        guard !partitions.isEmpty else { return }
        await self.run { [self] in
            let list = Self.makeList(partitions)
            defer { rd_kafka_topic_partition_list_destroy(list) }
            _ = rd_kafka_resume_partitions(self.handle, list)
        }
    }

    /// Per assigned partition: the messages this group has not committed yet — the high
    /// watermark, asked of the partition's leader, minus the group's committed offset (the low
    /// watermark before the group's first commit: the consumers start at the earliest
    /// message). Partitions whose broker does not answer within `timeoutMilliseconds` are left
    /// out.
    ///
    /// Both figures are broker requests, made on a queue of their own so that polls on the
    /// consumer's queue are not held up. librdkafka's cached watermarks, which this used
    /// before, come from fetch responses and stop moving while a partition is paused: the
    /// gauge froze exactly while the loader retried an insert and the backlog grew.
    public func lag(timeoutMilliseconds: Int32 = 2_000) async -> [TopicPartition: Int64] {
        let partitions = Array(self.assignment)
        guard !partitions.isEmpty else { return [:] }
        return await withCheckedContinuation { continuation in
            self.lagQueue.async { [self] in
                // ``close()`` waits on this queue before it destroys the handle.
                guard !self.closed.load(ordering: .acquiring) else { return continuation.resume(returning: [:]) }
                let list = Self.makeList(partitions)
                defer { rd_kafka_topic_partition_list_destroy(list) }
                var base: [TopicPartition: Int64] = [:]
                if rd_kafka_committed(self.handle, list, timeoutMilliseconds) == RD_KAFKA_RESP_ERR_NO_ERROR {
                    for element in Self.elements(list) where element.offset >= 0 {
                        base[TopicPartition(String(cString: element.topic), element.partition)] = element.offset
                    }
                }
                var lags: [TopicPartition: Int64] = [:]
                for partition in partitions {
                    var low: Int64 = -1
                    var high: Int64 = -1
                    guard
                        rd_kafka_query_watermark_offsets(
                            self.handle,
                            partition.topic,
                            partition.partition,
                            &low,
                            &high,
                            timeoutMilliseconds
                        ) == RD_KAFKA_RESP_ERR_NO_ERROR, high >= 0
                    else { continue }
                    lags[partition] = max(0, high - max(base[partition] ?? low, low, 0))
                }
                continuation.resume(returning: lags)
            }
        }
    }

    /// Leaves the group (revoking the assignment) and destroys the handle. Idempotent.
    public func close() async {
        guard !self.closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        await self.run { [self] in
            // A lag query in progress finishes with the handle first.
            self.lagQueue.sync {}
            rd_kafka_consumer_close(self.handle)
            rd_kafka_destroy(self.handle)
            self.callbacks.release()
        }
    }

    // MARK: Offsets of a group (for on-call tools; blocking, on the consumer's queue)

    /// The group's committed offset per partition (nil: nothing committed).
    public func committed(
        _ partitions: [TopicPartition],
        timeoutMilliseconds: Int32 = 10_000
    ) async throws(KafkaError)
        -> [TopicPartition: Int64?]
    {
        let result: Result<[TopicPartition: Int64?], KafkaError> = await self.run { [self] in
            let list = Self.makeList(partitions)
            defer { rd_kafka_topic_partition_list_destroy(list) }
            let error = rd_kafka_committed(self.handle, list, timeoutMilliseconds)
            guard error == RD_KAFKA_RESP_ERR_NO_ERROR else {
                return .failure(KafkaError(error, message: "reading committed offsets"))
            }
            var offsets: [TopicPartition: Int64?] = [:]
            for index in 0..<Int(list.pointee.cnt) {
                let element = list.pointee.elems[index]
                offsets[TopicPartition(String(cString: element.topic), element.partition)] =
                    element.offset >= 0 ? element.offset : nil
            }
            return .success(offsets)
        }
        return try result.get()
    }

    /// Low and high watermarks of each partition of `topic`.
    public func watermarks(
        topic: String,
        timeoutMilliseconds: Int32 = 10_000
    ) async throws(KafkaError)
        -> [Int32: (low: Int64, high: Int64)]
    {
        let result: Result<[Int32: (low: Int64, high: Int64)], KafkaError> = await self.run { [self] in
            do throws(KafkaError) {
                return .success(
                    try KafkaProducer.watermarks(
                        handle: self.handle,
                        topic: topic,
                        timeoutMilliseconds: timeoutMilliseconds
                    )
                )
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// The earliest offset of each partition whose messages are at or after `millis`
    /// (the high watermark where none is).
    public func offsets(
        topic: String,
        atOrAfterMillis millis: Int64,
        timeoutMilliseconds: Int32 = 10_000
    )
        async throws(KafkaError) -> [Int32: Int64]
    {
        let marks = try await self.watermarks(topic: topic, timeoutMilliseconds: timeoutMilliseconds)
        let result: Result<[Int32: Int64], KafkaError> = await self.run { [self] in
            let list = Self.makeList(
                Dictionary(uniqueKeysWithValues: marks.keys.map { (TopicPartition(topic, $0), millis) })
            )
            defer { rd_kafka_topic_partition_list_destroy(list) }
            let error = rd_kafka_offsets_for_times(self.handle, list, timeoutMilliseconds)
            guard error == RD_KAFKA_RESP_ERR_NO_ERROR else {
                return .failure(KafkaError(error, message: "offsets of \(topic) by time"))
            }
            var offsets: [Int32: Int64] = [:]
            for index in 0..<Int(list.pointee.cnt) {
                let element = list.pointee.elems[index]
                offsets[element.partition] =
                    element.offset >= 0 ? element.offset : (marks[element.partition]?.high ?? 0)
            }
            return .success(offsets)
        }
        return try result.get()
    }

    /// Members of `group` as the group coordinator reports them; throws when the cluster
    /// cannot say (librdkafka's mock cluster does not implement the request).
    public func activeMembers(group: String, timeoutMilliseconds: Int32 = 10_000) async throws(KafkaError) -> Int {
        let result: Result<Int, KafkaError> = await self.run { [self] in
            var list: UnsafePointer<rd_kafka_group_list>?
            let error = rd_kafka_list_groups(self.handle, group, &list, timeoutMilliseconds)
            guard error == RD_KAFKA_RESP_ERR_NO_ERROR, let list else {
                return .failure(KafkaError(error, message: "describing group \(group)"))
            }
            defer { rd_kafka_group_list_destroy(list) }
            var members = 0
            for index in 0..<Int(list.pointee.group_cnt)
            where String(cString: list.pointee.groups[index].group) == group {
                members += Int(list.pointee.groups[index].member_cnt)
            }
            return .success(members)
        }
        return try result.get()
    }

    // MARK: Helpers

    private func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            self.queue.async { continuation.resume(returning: body()) }
        }
    }

    static func list(_ pointer: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>) -> [TopicPartition] {
        (0..<Int(pointer.pointee.cnt)).map {
            TopicPartition(String(cString: pointer.pointee.elems[$0].topic), pointer.pointee.elems[$0].partition)
        }
    }

    /// A list of partitions without offsets (for position, pause, committed queries).
    /// The elements of a partition list, to read in place.
    static func elements(
        _ list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>
    ) -> UnsafeMutableBufferPointer<rd_kafka_topic_partition_t> {
        UnsafeMutableBufferPointer(start: list.pointee.elems, count: Int(list.pointee.cnt))
    }

    static func makeList(_ partitions: [TopicPartition]) -> UnsafeMutablePointer<rd_kafka_topic_partition_list_t> {
        Self.makeList(Dictionary(partitions.map { ($0, Int64(RD_KAFKA_OFFSET_INVALID)) }) { first, _ in first })
    }

    static func makeList(_ offsets: [TopicPartition: Int64]) -> UnsafeMutablePointer<rd_kafka_topic_partition_list_t> {
        let list = rd_kafka_topic_partition_list_new(Int32(max(1, offsets.count)))!
        for (partition, offset) in offsets.sorted(by: { $0.key < $1.key }) {
            rd_kafka_topic_partition_list_add(list, partition.topic, partition.partition).pointee.offset = offset
        }
        return list
    }

    static func consumed(_ message: UnsafeMutablePointer<rd_kafka_message_t>) -> ConsumedMessage {
        let pointee = message.pointee
        let value =
            pointee.payload.map { Array(UnsafeRawBufferPointer(start: $0, count: pointee.len)) } ?? []
        let key = pointee.key.map { Array(UnsafeRawBufferPointer(start: $0, count: pointee.key_len)) }
        var headers: [(name: String, value: [UInt8])] = []
        var list: OpaquePointer?
        if rd_kafka_message_headers(message, &list) == RD_KAFKA_RESP_ERR_NO_ERROR, let list {
            var index = 0
            var name: UnsafePointer<CChar>?
            var bytes: UnsafeRawPointer?
            var size = 0
            while rd_kafka_header_get_all(list, index, &name, &bytes, &size) == RD_KAFKA_RESP_ERR_NO_ERROR {
                headers.append(
                    (
                        name.map { String(cString: $0) } ?? "",
                        bytes.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) } ?? []
                    )
                )
                index += 1
            }
        }
        var timestampType = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        let timestamp = rd_kafka_message_timestamp(message, &timestampType)
        return ConsumedMessage(
            topic: pointee.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? "",
            partition: pointee.partition,
            offset: pointee.offset,
            key: key,
            value: value,
            headers: headers,
            timestampMillis: timestamp
        )
    }
}
