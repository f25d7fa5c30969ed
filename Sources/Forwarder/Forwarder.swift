import CoreMetrics
import EventModel
import Foundation
import Kafka
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
    private let producerBox = Mutex<KafkaProducer?>(nil)
    private let deadLetters: String
    private let fatal = Atomic<Bool>(false)
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
            try await Task.sleep(for: .seconds(1))
        }
    }

    private func runProducer() async throws {
        let cursor = try await self.wal.openCursor(self.configuration.cursorName)
        self.tracker.withLock { $0 = DeliveryTracker(cursor: cursor.lsn) }
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
        self.producerBox.withLock { $0 = producer }
        self.logger.info("forwarder.started", metadata: ["wal.cursor": "\(cursor.lsn)"])
        let tail = self.wal.tail(from: cursor.lsn)
        let start = cursor.lsn
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.commitPeriodically() }
            group.addTask {
                do {
                    try await self.pump(tail: tail, from: start, producer: producer)
                } catch {
                    self.logger.error("forwarder.read_failed", metadata: ["error": "\(error)"])
                }
            }
            await group.next()
            group.cancelAll()
        }
        // Stop intake, let Kafka acknowledge what is in flight, then persist the cursor.
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async {
                producer.close(flushTimeoutMilliseconds: 10_000)
                continuation.resume()
            }
        }
        self.producerBox.withLock { $0 = nil }
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
                self.tracker.withLock { $0?.sent(lsn: record.lsn, events: record.events, from: from) }
                for (index, event) in record.events.enumerated() {
                    let lsn = record.lsn + UInt64(index)
                    guard lsn >= from else { continue }
                    try await self.send(event, lsn: lsn, producer: producer)
                }
                position = record.nextLSN
            }
        }
    }

    /// Sends one event, waiting while librdkafka's local queue is full.
    private func send(_ event: [UInt8], lsn: LSN, producer: KafkaProducer) async throws {
        let message = Self.message(for: event, lsn: lsn, routing: self.configuration.routing)
        while true {
            do {
                try producer.send(
                    topic: message.topic,
                    key: message.key,
                    value: event,
                    headers: message.headers,
                    id: lsn.rawValue
                )
                self.metrics.produced.increment()
                return
            } catch  where error.isRetriable {
                try await Task.sleep(for: .milliseconds(10))
            }
        }
    }

    struct Message {
        var topic: String
        var key: [UInt8]?
        var headers: [(String, [UInt8])]
    }

    /// Topic, key and headers for one normalized event. An event that is not the JSON the
    /// gateway writes still goes out (to the default topic), so nothing stalls the WAL.
    static func message(for event: [UInt8], lsn: LSN, routing: TopicRouting) -> Message {
        // The gateway writes these fields as plain top-level strings: find them without a full
        // parse (measured as the forwarder's main cost), and parse only when one is escaped.
        var fields = Self.scan(event, keys: ["action", "user_id", "event_id", "gateway_id"])
        if fields == nil, case .object(let members)? = try? JSONParser.parse(event) {
            var parsed: [String: String] = [:]
            for (key, value) in members { if case .string(let text) = value { parsed[key] = text } }
            fields = parsed
        }
        func text(_ key: String) -> String? { fields?[key] }
        var headers: [(String, [UInt8])] = [
            ("content_type", Array("application/json".utf8)),
            ("schema_version", Array(String(Event.schemaVersion).utf8)),
            ("wal_lsn", Array(String(lsn.rawValue).utf8)),
        ]
        if let id = text("event_id") { headers.append(("event_id", Array(id.utf8))) }
        if let gateway = text("gateway_id") { headers.append(("gateway_id", Array(gateway.utf8))) }
        return Message(
            topic: routing.topic(for: text("action")),
            key: text("user_id").map { Array($0.utf8) },
            headers: headers
        )
    }

    /// The string values of `keys` in a compact JSON object, found by scanning for `"key":"`
    /// (inside a JSON string every quote is escaped, so the pattern only matches real keys);
    /// nil when a value holds an escape (the caller then parses properly). The gateway writes
    /// `event_id`, `action` and `user_id` before `properties` and `gateway_id` after it, so
    /// the first (respectively last) match is the top-level one, not a nested property.
    static func scan(_ bytes: [UInt8], keys: [String]) -> [String: String]? {
        var result: [String: String] = [:]
        for key in keys {
            let pattern = Array("\"\(key)\":\"".utf8)
            let found =
                key == "gateway_id" ? Self.lastIndex(of: pattern, in: bytes) : Self.firstIndex(of: pattern, in: bytes)
            guard let start = found else { continue }
            var end = start + pattern.count
            while end < bytes.count && bytes[end] != UInt8(ascii: "\"") {
                if bytes[end] == UInt8(ascii: "\\") { return nil }
                end += 1
            }
            guard end < bytes.count else { return nil }
            result[key] = String(decoding: bytes[(start + pattern.count)..<end], as: UTF8.self)
        }
        return result
    }

    private static func lastIndex(of pattern: [UInt8], in bytes: [UInt8]) -> Int? {
        guard bytes.count >= pattern.count else { return nil }
        var index = bytes.count - pattern.count
        while index >= 0 {
            if bytes[index] == pattern[0] && bytes[index..<(index + pattern.count)].elementsEqual(pattern) {
                return index
            }
            index -= 1
        }
        return nil
    }

    private static func firstIndex(of pattern: [UInt8], in bytes: [UInt8]) -> Int? {
        guard let first = pattern.first, bytes.count >= pattern.count else { return nil }
        var index = 0
        while index <= bytes.count - pattern.count {
            if bytes[index] == first && bytes[index..<(index + pattern.count)].elementsEqual(pattern) { return index }
            index += 1
        }
        return nil
    }

    /// Delivery reports, on the producer's poll thread.
    private func handle(_ reports: [DeliveryReport]) {
        var resend: [(LSN, [UInt8])] = []
        var deadLettered: [(LSN, [UInt8], KafkaError)] = []
        self.tracker.withLock { tracker in
            guard tracker != nil else { return }
            for report in reports {
                let lsn = LSN(report.id)
                if let error = report.error {
                    guard let event = tracker!.event(lsn) else { continue }
                    if error.isRetriable {
                        resend.append((lsn, event))
                    } else {
                        deadLettered.append((lsn, event, error))
                        tracker!.delivered(lsn)
                    }
                } else {
                    tracker!.delivered(lsn)
                }
            }
        }
        self.metrics.delivered.increment(by: Int64(reports.count - resend.count - deadLettered.count))
        if !resend.isEmpty, let producer = self.producerBox.withLock({ $0 }) {
            self.metrics.retried.increment(by: Int64(resend.count))
            for (lsn, event) in resend {
                let message = Self.message(for: event, lsn: lsn, routing: self.configuration.routing)
                try? producer.send(
                    topic: message.topic,
                    key: message.key,
                    value: event,
                    headers: message.headers,
                    id: lsn.rawValue
                )
            }
        }
        for (lsn, event, error) in deadLettered { self.deadLetter(event, lsn: lsn, error: error) }
    }

    /// A message Kafka will never take (too large, topic forbidden): kept in
    /// `<wal>/dead-letters.ndjson` with the reason, counted and logged, so it never blocks the rest.
    private func deadLetter(_ event: [UInt8], lsn: LSN, error: KafkaError) {
        self.metrics.deadLettered.increment()
        self.logger.error("forwarder.dead_letter", metadata: ["wal.lsn": "\(lsn)", "error": "\(error)"])
        var writer = JSONWriter()
        writer.raw("{")
        writer.member("reason", error.description, first: true)
        writer.raw(",\"wal_lsn\":\(lsn.rawValue),\"event\":")
        writer.string(String(decoding: event, as: UTF8.self))
        writer.raw("}\n")
        let fd = open(self.deadLetters, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        _ = writer.bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        fsync(fd)
        close(fd)
    }

    private func commitPeriodically() async {
        while !Task.isCancelledOrShuttingDownGracefully {
            try? await Task.sleep(for: self.configuration.commitInterval)
            await self.commit()
        }
    }

    private func commit() async {
        guard let target = self.tracker.withLock({ $0?.committable }) else { return }
        let current = self.wal.cursor(self.configuration.cursorName)?.lsn ?? .zero
        guard target > current else { return }
        do {
            try await self.wal.commitCursor(self.configuration.cursorName, to: target)
            let lag = self.wal.durableNextLSN - target
            self.metrics.lagEvents.record(Int64(lag))
            self.metrics.inFlight.record(Int64(self.tracker.withLock { $0?.inFlight ?? 0 }))
        } catch {
            self.logger.warning("forwarder.cursor_commit_failed", metadata: ["error": "\(error)"])
        }
    }
}

struct ForwarderMetrics: Sendable {
    let produced = Counter(label: "sluice_forwarder_produced_messages_total")
    let delivered = Counter(label: "sluice_forwarder_delivered_messages_total")
    let retried = Counter(label: "sluice_forwarder_retried_messages_total")
    let deadLettered = Counter(label: "sluice_forwarder_dead_lettered_messages_total")
    let restarts = Counter(label: "sluice_forwarder_producer_restarts_total")
    let lagEvents = Gauge(label: "sluice_forwarder_wal_lag_events")
    let inFlight = Gauge(label: "sluice_forwarder_in_flight_messages")
}

extension Task where Success == Never, Failure == Never {
    /// Cancelled, or the service group is shutting down.
    static var isCancelledOrShuttingDownGracefully: Bool { Task.isCancelled || Task.isShuttingDownGracefully }
}
