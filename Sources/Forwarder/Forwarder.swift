import CoreMetrics
import EventModel
import Foundation
@_spi(Testing) import Kafka
import Logging
import Metrics
import ServiceLifecycle
import Synchronization
import WAL

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

/// Drains the WAL into Kafka: one message per event (value = the normalized event JSON,
/// key = `user_id`, headers `event_id`, `schema_version`, `content_type`, `gateway_id`,
/// `wal_lsn`), then moves its WAL cursor over the contiguous prefix Kafka acknowledged.
///
/// At least once: after a crash it resends from the persisted cursor, so Kafka may hold a
/// duplicate (deduplicated downstream by `event_id`), never a gap. While Kafka is down the
/// backlog simply stays in the WAL.
public final class Forwarder: Service, Sendable {
    private let wal: WAL
    private let configuration: ForwarderConfiguration
    private let logger: Logger
    private let tracker: Mutex<DeliveryTracker?> = Mutex(nil)
    private let deadLetters: String
    private let fatal = Atomic<Bool>(false)
    /// The running pass's producer and how many passes ended in a fatal error (for tests).
    private let currentProducer = Mutex<KafkaProducer?>(nil)
    private let restartCount = Atomic<Int>(0)
    /// Cursor commits failing since the last one that worked: logged when it starts and when
    /// it ends, not every commit interval (a WAL that lost its lock refuses them for good).
    private let failedCommits = Atomic<Int>(0)
    private let lastLag = Mutex(ForwarderLag())
    /// The running pass's tail, for the lag-in-bytes metric.
    private let currentTail = Mutex<WALTail?>(nil)
    /// Events whose delivery failed for a passing reason, to be sent again by the resend loop.
    private let resends = Mutex<[(LSN, [UInt8])]>([])
    private let metrics = ForwarderMetrics()

    public init(wal: WAL, configuration: ForwarderConfiguration, logger: Logger = Logger(label: "sluice.forwarder")) {
        self.wal = wal
        self.configuration = configuration
        self.logger = logger
        self.deadLetters = wal.configuration.directory + "/dead-letters.ndjson"
    }

    public func run() async throws {
        // Each pass runs one producer; a fatal producer error starts a new pass from the
        // persisted cursor (an idempotent producer that was fenced cannot continue).
        while !Task.isCancelledOrShuttingDownGracefully {
            try await self.runProducer()
            guard self.fatal.exchange(false, ordering: .relaxed) else { return }
            self.metrics.restarts.increment()
            self.restartCount.add(1, ordering: .relaxed)
            try await Task.sleep(for: .seconds(1))
        }
    }

    private func runProducer() async throws {
        let cursor = try await self.wal.openCursor(self.configuration.cursorName)
        self.tracker.withLock { $0 = DeliveryTracker(cursor: cursor.lsn) }
        self.resends.withLock { $0.removeAll() }
        var properties = ForwarderConfiguration.producerDefaults
        properties.merge(self.configuration.kafkaProperties) { $1 }
        let producer = try KafkaProducer(
            properties: properties,
            onDelivery: { [self] reports in self.handle(reports) },
            onError: { [self] error in
                if error.isFatal {
                    self.logger.error("forwarder.producer_fatal", metadata: ["error": "\(error)"])
                    self.fatal.store(true, ordering: .relaxed)
                } else {
                    self.logger.warning("forwarder.kafka_error", metadata: ["error": "\(error)"])
                }
            }
        )
        self.logger.info("forwarder.started", metadata: ["wal.cursor": "\(cursor.lsn)"])
        self.currentProducer.withLock { $0 = producer }
        let tail = self.wal.tail(from: cursor.lsn)
        self.currentTail.withLock { $0 = tail }
        defer { self.currentTail.withLock { $0 = nil } }
        let start = cursor.lsn
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.commitPeriodically() }
            group.addTask { await self.resendPeriodically(producer: producer) }
            group.addTask {
                do {
                    try await self.pump(tail: tail, from: start, producer: producer)
                } catch is CancellationError {
                } catch {
                    self.logger.error("forwarder.read_failed", metadata: ["error": "\(error)"])
                }
            }
            await group.next()
            group.cancelAll()
        }
        // Stop intake, let Kafka acknowledge what is in flight, then persist the cursor.
        self.currentProducer.withLock { $0 = nil }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async {
                producer.close(flushTimeoutMilliseconds: 10_000)
                continuation.resume()
            }
        }
        await self.commit()
        self.logger.info(
            "forwarder.stopped",
            metadata: ["wal.cursor": "\(self.tracker.withLock { $0?.committable ?? .zero })"]
        )
    }

    /// Reads durable records and sends their events, keeping at most `maxInFlightEvents` unacknowledged.
    private func pump(tail: WALTail, from start: LSN, producer: KafkaProducer) async throws {
        var position = start
        while !Task.isCancelledOrShuttingDownGracefully && !self.fatal.load(ordering: .relaxed) {
            while self.tracker.withLock({ $0?.inFlight ?? 0 }) >= self.configuration.maxInFlightEvents {
                try await Task.sleep(for: .milliseconds(5))
                if Task.isCancelledOrShuttingDownGracefully { return }
            }
            let records = try await tail.next(maxRecords: 512)
            if records.isEmpty { return }  // the WAL closed, or we were cancelled
            for record in records {
                let from = position
                self.tracker.withLock {
                    $0?.sent(
                        lsn: record.lsn,
                        events: record.events,
                        from: from,
                        timestampNanos: record.timestampNanos,
                        bytes: record.frameLength
                    )
                }
                for (index, event) in record.events.enumerated() {
                    let lsn = record.lsn + UInt64(index)
                    guard lsn >= from else { continue }
                    try await self.send(event, lsn: lsn, producer: producer)
                }
                position = record.nextLSN
            }
        }
    }

    /// Sends one event, waiting while librdkafka's local queue is full or the cause of a
    /// refusal may pass. A message Kafka can never take is dead-lettered; a fatal producer
    /// ends this pass (throwing `CancellationError`) so that `run` starts a new one.
    private func send(_ event: [UInt8], lsn: LSN, producer: KafkaProducer) async throws {
        var warned = false
        while true {
            // The fast path stays synchronous: no suspension per event.
            guard let error = self.trySend(event, lsn: lsn, producer: producer) else {
                self.metrics.produced.increment()
                return
            }
            if error.isPermanent {
                if self.deadLetter(event, lsn: lsn, error: error) {
                    self.tracker.withLock { _ = $0?.delivered(lsn) }
                    return
                }
                try await Task.sleep(for: .seconds(1))  // could not keep it: try again, never drop it
            } else if error.isFatal {
                self.fatal.store(true, ordering: .relaxed)
                throw CancellationError()
            } else {
                if !error.isRetriable && !warned {
                    warned = true
                    self.logger.warning("forwarder.send_refused", metadata: ["wal.lsn": "\(lsn)", "error": "\(error)"])
                }
                try await Task.sleep(for: error.isRetriable ? .milliseconds(10) : .seconds(1))
                if self.fatal.load(ordering: .relaxed) { throw CancellationError() }
            }
        }
    }

    /// Queues one event as a message: key and headers point into the event's own bytes
    /// (librdkafka copies those), and the value is not copied at all: the delivery tracker
    /// holds every sent event until its delivery report has been handled (and a new pass
    /// starts only after the old producer was closed), so the bytes outlive librdkafka's use.
    private func trySend(_ event: [UInt8], lsn: LSN, producer: KafkaProducer) -> KafkaError? {
        let fields = Self.fields(of: event)
        let routing = self.configuration.routing
        let topicName =
            routing.topicsByAction.isEmpty
            ? routing.defaultTopic : routing.topic(for: fields.action.map { fields.text($0, in: event) })
        let topic = producer.topic(topicName)
        return event.withUnsafeBytes { raw -> KafkaError? in
            var headers = KafkaHeaders(capacity: 5)
            headers.add("content_type", "application/json")
            headers.add("schema_version", Self.schemaVersionText)
            var lsnText = String(lsn.rawValue)
            lsnText.withUTF8 { headers.add("wal_lsn", UnsafeRawBufferPointer($0)) }
            if let id = fields.eventID { fields.withBytes(id, in: raw) { headers.add("event_id", $0) } }
            if let gateway = fields.gatewayID { fields.withBytes(gateway, in: raw) { headers.add("gateway_id", $0) } }
            do throws(KafkaError) {
                if let user = fields.userID {
                    try fields.withBytes(user, in: raw) { (key: UnsafeRawBufferPointer) throws(KafkaError) in
                        try producer.send(
                            topic: topic,
                            key: key,
                            value: raw,
                            valueOutlivesDelivery: true,
                            headers: &headers,
                            id: lsn.rawValue
                        )
                    }
                } else {
                    try producer.send(
                        topic: topic,
                        key: nil,
                        value: raw,
                        valueOutlivesDelivery: true,
                        headers: &headers,
                        id: lsn.rawValue
                    )
                }
                return nil
            } catch {
                return error
            }
        }
    }

    static let schemaVersionText: StaticString = "1"

    /// Sends again what failed for a passing reason, after a short pause so that a broker
    /// refusing everything is not hammered. librdkafka already retried these itself.
    private func resendPeriodically(producer: KafkaProducer) async {
        while !Task.isCancelledOrShuttingDownGracefully && !self.fatal.load(ordering: .relaxed) {
            let batch = self.resends.withLock { pending in
                defer { pending.removeAll(keepingCapacity: true) }
                return pending
            }
            do {
                if !batch.isEmpty { self.metrics.retried.increment(by: Int64(batch.count)) }
                for (lsn, event) in batch { try await self.send(event, lsn: lsn, producer: producer) }
                try await Task.sleep(for: .milliseconds(batch.isEmpty ? 20 : 200))
            } catch {
                return  // cancelled or fatal: the cursor still covers these, the next pass resends
            }
        }
    }

    /// Where an event's header fields are: byte ranges of plain JSON strings, or the decoded
    /// text when a value holds an escape.
    struct HeaderFields {
        enum Value {
            case range(Range<Int>)
            case decoded([UInt8])
        }

        var action: Value?
        var userID: Value?
        var eventID: Value?
        var gatewayID: Value?

        func text(_ value: Value, in event: [UInt8]) -> String {
            switch value {
            case .range(let range): String(decoding: event[range], as: UTF8.self)
            case .decoded(let bytes): String(decoding: bytes, as: UTF8.self)
            }
        }

        func withBytes<R, E: Error>(
            _ value: Value,
            in raw: UnsafeRawBufferPointer,
            _ body: (UnsafeRawBufferPointer) throws(E) -> R
        ) throws(E) -> R {
            switch value {
            case .range(let range): return try body(UnsafeRawBufferPointer(rebasing: raw[range]))
            case .decoded(let bytes):
                var copy = bytes
                let result: Result<R, E> = copy.withUnsafeMutableBytes { bytes in
                    do throws(E) { return .success(try body(UnsafeRawBufferPointer(bytes))) } catch {
                        return .failure(error)
                    }
                }
                return try result.get()
            }
        }
    }

    /// The header fields of a normalized event. The gateway writes these as plain top-level
    /// strings: find them by scanning (a full parse was measured as the forwarder's main
    /// cost), and parse only when one holds an escape. Not the gateway's JSON at all: no
    /// fields, and the event still goes out (to the default topic), so nothing stalls the WAL.
    static func fields(of event: [UInt8]) -> HeaderFields {
        if let scanned = Self.scan(event) { return scanned }
        var fields = HeaderFields()
        guard case .object(let members)? = try? JSONParser.parse(event) else { return fields }
        for (key, value) in members {
            guard case .string(let text) = value else { continue }
            let decoded = HeaderFields.Value.decoded(Array(text.utf8))
            switch key {
            case "action": fields.action = decoded
            case "user_id": fields.userID = decoded
            case "event_id": fields.eventID = decoded
            case "gateway_id": fields.gatewayID = decoded
            default: break
            }
        }
        return fields
    }

    struct Message {
        var topic: String
        var key: [UInt8]?
        var headers: [(String, [UInt8])]
    }

    /// Topic, key and headers for one event, as ``trySend(_:lsn:producer:)`` sends them.
    static func message(for event: [UInt8], lsn: LSN, routing: TopicRouting) -> Message {
        let fields = Self.fields(of: event)
        func bytes(_ value: HeaderFields.Value?) -> [UInt8]? {
            value.map { Array(fields.text($0, in: event).utf8) }
        }
        var headers: [(String, [UInt8])] = [
            ("content_type", Array("application/json".utf8)),
            ("schema_version", Array(String(Event.schemaVersion).utf8)),
            ("wal_lsn", Array(String(lsn.rawValue).utf8)),
        ]
        if let id = bytes(fields.eventID) { headers.append(("event_id", id)) }
        if let gateway = bytes(fields.gatewayID) { headers.append(("gateway_id", gateway)) }
        return Message(
            topic: routing.topic(for: fields.action.map { fields.text($0, in: event) }),
            key: bytes(fields.userID),
            headers: headers
        )
    }

    /// Finds `"key":"` patterns (inside a JSON string every quote is escaped, so the pattern
    /// only matches real keys); nil when a value holds an escape. The gateway writes
    /// `event_id`, `action` and `user_id` before `properties` and `gateway_id` after it, so
    /// the first (respectively last) match is the top-level one, not a nested property.
    static func scan(_ bytes: [UInt8]) -> HeaderFields? {
        bytes.withUnsafeBufferPointer { buffer -> HeaderFields? in
            var fields = HeaderFields()
            func value(_ pattern: StaticString, last: Bool = false) -> HeaderFields.Value?? {
                let found = pattern.withUTF8Buffer { needle in
                    last ? Self.lastIndex(of: needle, in: buffer) : Self.firstIndex(of: needle, in: buffer)
                }
                guard let start = found else { return .some(nil) }
                var end = start + pattern.utf8CodeUnitCount
                while end < buffer.count && buffer[end] != UInt8(ascii: "\"") {
                    if buffer[end] == UInt8(ascii: "\\") { return nil }
                    end += 1
                }
                guard end < buffer.count else { return nil }
                return .some(.range((start + pattern.utf8CodeUnitCount)..<end))
            }
            guard let eventID = value("\"event_id\":\""), let action = value("\"action\":\""),
                let userID = value("\"user_id\":\""), let gatewayID = value("\"gateway_id\":\"", last: true)
            else { return nil }
            fields.eventID = eventID
            fields.action = action
            fields.userID = userID
            fields.gatewayID = gatewayID
            return fields
        }
    }

    private static func lastIndex(of pattern: UnsafeBufferPointer<UInt8>, in bytes: UnsafeBufferPointer<UInt8>) -> Int?
    {
        guard bytes.count >= pattern.count else { return nil }
        var index = bytes.count - pattern.count
        while index >= 0 {
            if bytes[index] == pattern[0]
                && memcmp(bytes.baseAddress! + index, pattern.baseAddress!, pattern.count) == 0
            {
                return index
            }
            index -= 1
        }
        return nil
    }

    private static func firstIndex(of pattern: UnsafeBufferPointer<UInt8>, in bytes: UnsafeBufferPointer<UInt8>) -> Int?
    {
        guard let base = bytes.baseAddress, bytes.count >= pattern.count else { return nil }
        var index = 0
        let first = pattern[0]
        while index <= bytes.count - pattern.count {
            guard let hit = memchr(base + index, Int32(first), bytes.count - pattern.count - index + 1) else {
                return nil
            }
            index = base.distance(to: hit.assumingMemoryBound(to: UInt8.self))
            if memcmp(base + index, pattern.baseAddress!, pattern.count) == 0 { return index }
            index += 1
        }
        return nil
    }

    /// Delivery reports, on the producer's poll thread. A failure is resent (by the resend
    /// loop) unless the message itself is at fault; only then is it dead-lettered.
    private func handle(_ reports: [DeliveryReport]) {
        var resend: [(LSN, [UInt8])] = []
        var deadLettered: [(LSN, [UInt8], KafkaError)] = []
        var delivered = 0
        self.tracker.withLock { tracker in
            guard tracker != nil else { return }
            for report in reports {
                let lsn = LSN(report.id)
                if let error = report.error {
                    guard let event = tracker!.event(lsn) else { continue }
                    if error.isPermanent {
                        deadLettered.append((lsn, event, error))
                    } else {
                        resend.append((lsn, event))
                    }
                } else if tracker!.delivered(lsn) {
                    delivered += 1
                }
            }
        }
        self.metrics.delivered.increment(by: Int64(delivered))
        self.metrics.failed.increment(by: Int64(resend.count + deadLettered.count))
        for report in reports where report.latencyMicroseconds >= 0 {
            self.metrics.latency.recordNanoseconds(report.latencyMicroseconds * 1000)
        }
        if !resend.isEmpty { self.resends.withLock { $0.append(contentsOf: resend) } }
        for (lsn, event, error) in deadLettered {
            // Written (and fsynced) before the cursor may pass it; if it cannot be kept, it
            // goes round again rather than being lost.
            if self.deadLetter(event, lsn: lsn, error: error) {
                self.tracker.withLock { _ = $0?.delivered(lsn) }
            } else {
                self.resends.withLock { $0.append((lsn, event)) }
            }
        }
    }

    /// A message Kafka will never take (too large, topic forbidden): kept in
    /// `<wal>/dead-letters.ndjson` with the reason, counted and logged, so it never blocks the rest.
    /// Returns false (and logs) when the record could not be made durable.
    private func deadLetter(_ event: [UInt8], lsn: LSN, error: KafkaError) -> Bool {
        var writer = JSONWriter()
        writer.raw("{")
        writer.member("reason", error.description, first: true)
        writer.raw(",\"wal_lsn\":\(lsn.rawValue),\"event\":")
        writer.string(String(decoding: event, as: UTF8.self))
        writer.raw("}\n")
        let fd = open(self.deadLetters, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            self.logger.error(
                "forwarder.dead_letter_failed",
                metadata: ["wal.lsn": "\(lsn)", "path": "\(self.deadLetters)", "errno": "\(errno)"]
            )
            return false
        }
        defer { close(fd) }
        let written = writer.bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == writer.bytes.count, fsync(fd) == 0 else {
            self.logger.error(
                "forwarder.dead_letter_failed",
                metadata: ["wal.lsn": "\(lsn)", "path": "\(self.deadLetters)", "errno": "\(errno)"]
            )
            return false
        }
        self.metrics.deadLettered.increment()
        self.logger.error("forwarder.dead_letter", metadata: ["wal.lsn": "\(lsn)", "error": "\(error)"])
        return true
    }

    /// How far Kafka is behind the WAL, as of the last cursor commit (every `commitInterval`).
    public var lag: ForwarderLag { self.lastLag.withLock { $0 } }

    /// Makes the running producer fatal, as a fenced idempotent producer would be.
    @_spi(Testing) public func injectFatalProducerError() {
        self.currentProducer.withLock { $0 }?.injectFatalError()
    }

    /// Producers replaced after a fatal error so far.
    @_spi(Testing) public var producerRestarts: Int { self.restartCount.load(ordering: .relaxed) }

    private func commitPeriodically() async {
        while !Task.isCancelledOrShuttingDownGracefully {
            try? await Task.sleep(for: self.configuration.commitInterval)
            await self.commit()
        }
    }

    private func commit() async {
        guard
            let (target, inFlight, inFlightBytes, oldest) = self.tracker.withLock({ tracker in
                tracker.map { ($0.committable, $0.inFlight, $0.inFlightBytes, $0.oldestTimestampNanos) }
            })
        else { return }
        // Lag: what the WAL holds that Kafka has not acknowledged.
        let unread = self.currentTail.withLock { $0 }?.unreadBytes() ?? 0
        let now = WallClock.now()
        let lag = ForwarderLag(
            events: self.wal.durableNextLSN - min(target, self.wal.durableNextLSN),
            bytes: unread + Int64(inFlightBytes),
            oldestAgeSeconds: oldest.map { now > $0 ? Double(now - $0) / 1e9 : 0 } ?? 0
        )
        self.lastLag.withLock { $0 = lag }
        self.metrics.lagEvents.record(Int64(lag.events))
        self.metrics.lagBytes.record(lag.bytes)
        self.metrics.oldestAge.record(lag.oldestAgeSeconds)
        self.metrics.inFlight.record(Int64(inFlight))
        let current = self.wal.cursor(self.configuration.cursorName)?.lsn ?? .zero
        guard target > current else { return }
        do {
            try await self.wal.commitCursor(self.configuration.cursorName, to: target)
            let failed = self.failedCommits.exchange(0, ordering: .relaxed)
            if failed > 0 {
                self.logger.info(
                    "forwarder.cursor_commit_recovered",
                    metadata: ["forwarder.failed_commits": "\(failed)"]
                )
            }
        } catch {
            if self.failedCommits.wrappingAdd(1, ordering: .relaxed).oldValue == 0 {
                self.logger.warning("forwarder.cursor_commit_failed", metadata: ["error": "\(error)"])
            }
        }
    }
}

/// What the WAL holds that Kafka has not acknowledged.
public struct ForwarderLag: Sendable, Equatable, CustomStringConvertible {
    /// Durable events beyond the forwarder's committable position.
    public var events: UInt64 = 0
    /// WAL bytes not yet read plus those of records not yet wholly acknowledged.
    public var bytes: Int64 = 0
    /// Age of the oldest record sent and not yet wholly acknowledged; 0 when none is.
    public var oldestAgeSeconds: Double = 0

    public var description: String {
        "lag(events: \(self.events), bytes: \(self.bytes), age: \(self.oldestAgeSeconds) s)"
    }
}

struct ForwarderMetrics: Sendable {
    let produced = Counter(label: "sluice_forwarder_produced_messages_total")
    let delivered = Counter(label: "sluice_forwarder_delivered_messages_total")
    let retried = Counter(label: "sluice_forwarder_retried_messages_total")
    let deadLettered = Counter(label: "sluice_forwarder_dead_lettered_messages_total")
    let restarts = Counter(label: "sluice_forwarder_producer_restarts_total")
    let failed = Counter(label: "sluice_forwarder_failed_deliveries_total")
    let latency = Timer(label: "sluice_forwarder_delivery_latency_seconds")
    let lagEvents = Gauge(label: "sluice_forwarder_wal_lag_events")
    let lagBytes = Gauge(label: "sluice_forwarder_wal_lag_bytes")
    let oldestAge = Gauge(label: "sluice_forwarder_oldest_unforwarded_age_seconds")
    let inFlight = Gauge(label: "sluice_forwarder_in_flight_messages")
}

extension Task where Success == Never, Failure == Never {
    /// Cancelled, or the service group is shutting down.
    static var isCancelledOrShuttingDownGracefully: Bool { Task.isCancelled || Task.isShuttingDownGracefully }
}
