import ClickHouse
import CoreMetrics
import EventModel
import Foundation
import Kafka
import Logging
import Metrics
import ServiceLifecycle
import Synchronization

/// Settings of the Kafka → ClickHouse loader.
public struct LoaderConfiguration: Sendable {
    /// librdkafka properties; `bootstrap.servers` at least.
    public var kafkaProperties: [String: String]
    public var clickHouse: ClickHouseConfiguration
    /// Default: `sluice-loader`.
    public var groupID = "sluice-loader"
    /// Topics → tables. Default: `events` → `sluice.events`.
    public var routes: [LoaderRoute] = [.events]
    /// A batch is inserted when it reaches this many rows… Default: 20,000.
    public var batchRows = 20_000
    /// … or this many bytes of rows… Default: 16 MiB.
    public var batchBytes = 16 << 20
    /// … or when its oldest message waited this long. Default: 1 s.
    public var batchAge: Duration = .seconds(1)
    /// The data format of the inserts. Default: ``InsertFormat/rowBinary``, which costs the
    /// loader and ClickHouse the least CPU; a route whose existing table has other column
    /// types than the route's falls back to ``InsertFormat/jsonEachRow`` (logged at start).
    public var format: InsertFormat = Self.defaultFormat
    public static let defaultFormat = InsertFormat.rowBinary
    /// Back-off between failed inserts: doubling from `retryInitial` up to `retryMax`, with jitter.
    public var retryInitial: Duration = .milliseconds(200)
    public var retryMax: Duration = .seconds(30)
    /// Called after each confirmed insert with the ingest-to-insert delay of each row that
    /// carries `received_at` (milliseconds): for benchmarks; the histogram metric has the same.
    public var insertObserver: (@Sendable ([Int64]) -> Void)?

    public init(kafkaProperties: [String: String], clickHouse: ClickHouseConfiguration) {
        self.kafkaProperties = kafkaProperties
        self.clickHouse = clickHouse
    }

    /// Checks that the settings can work: every route (``LoaderRoute/validate()``), one route
    /// per topic, batches of at least one row and 1 KiB.
    ///
    /// - Throws: ``LoaderError`` with code ``LoaderError/Code/invalidRoute`` or
    ///   ``LoaderError/Code/invalidConfiguration`` and what is wrong.
    public func validate() throws(LoaderError) {
        for route in self.routes { try route.validate() }
        let topics = self.routes.map(\.topic)
        if Set(topics).count != topics.count {
            throw LoaderError(.invalidConfiguration, message: "two routes read the same topic")
        }
        if self.batchRows < 1 {
            throw LoaderError(.invalidConfiguration, message: "loader.batch_rows must be at least 1")
        }
        if self.batchBytes < 1024 {
            throw LoaderError(.invalidConfiguration, message: "loader.batch_bytes must be at least 1024")
        }
    }
}

/// Consumes the routes' topics and inserts their messages into ClickHouse, committing a
/// partition's offset only after every earlier message of it was inserted (and confirmed) or
/// dead-lettered.
///
/// At least once, effectively once in queries: after a crash or a failed commit messages are
/// inserted again, and the tables (ReplacingMergeTree on `event_id`) fold the duplicates.
/// One insert runs at a time, while the next batch is consumed and encoded; the insert after
/// it starts only once it succeeded, and offsets are committed in insert order.
/// While ClickHouse is down or slow the loader backs off with jitter, pauses its partitions,
/// commits nothing and holds at most two batches per route in memory (the one being inserted
/// and the next).
public final class Loader: Service, Sendable {
    private let configuration: LoaderConfiguration
    private let logger: Logger
    private let metrics = LoaderMetrics()
    private let insertedRows = Atomic<Int>(0)
    private let deadLettered = Atomic<Int>(0)
    private let chosenFormats = Mutex<[String: InsertFormat]>([:])
    private let assignedPartitions = Atomic<Int>(0)

    public init(configuration: LoaderConfiguration, logger: Logger = Logger(label: "sluice.loader")) {
        self.configuration = configuration
        self.logger = logger
    }

    /// librdkafka consumer properties the loader sets unless configured otherwise.
    ///
    /// librdkafka before 2.2 stops fetching for a full second whenever its local queue holds
    /// `queued.min.messages` messages or `queued.max.messages.kbytes` (defaults: 100,000 and
    /// 64 MiB), however fast the application drains it: catching up on a backlog, the loader
    /// then starves half of each second. The queue must hold more than a second of loading:
    /// up to 256 MiB of fetched messages while catching up (`kafka.properties` overrides).
    public static let consumerDefaults: [String: String] = [
        "queued.min.messages": "10000000",
        "queued.max.messages.kbytes": "262144",
    ]

    /// Rows ClickHouse confirmed so far (this process).
    public var rowsInserted: Int { self.insertedRows.load(ordering: .relaxed) }
    /// Messages sent to a dead-letter topic so far (this process).
    public var messagesDeadLettered: Int { self.deadLettered.load(ordering: .relaxed) }
    /// Partitions assigned to this loader now (0 until it has joined its group).
    public var partitionsAssigned: Int { self.assignedPartitions.load(ordering: .relaxed) }
    /// The insert format of each route (by topic), once the loader has checked its tables.
    public var insertFormats: [String: InsertFormat] { self.chosenFormats.withLock { $0 } }

    public func run() async throws {
        let clickHouse = ClickHouseClient(self.configuration.clickHouse, logger: self.logger)
        defer { Task { try? await clickHouse.shutdown() } }
        guard let (version, formats) = await self.prepareTables(clickHouse) else { return }
        self.chosenFormats.withLock { $0 = formats }
        var properties = Self.consumerDefaults.merging(self.configuration.kafkaProperties) { $1 }
        properties["group.id"] = self.configuration.groupID
        let consumer = try KafkaConsumer(properties: properties, topics: self.configuration.routes.map(\.topic))
        var producerProperties = self.configuration.kafkaProperties
        producerProperties["enable.idempotence"] = "true"
        producerProperties["acks"] = "all"
        let deadLetters = DeadLetterSender()
        let producer = try KafkaProducer(properties: producerProperties, onDelivery: { deadLetters.report($0) })
        let routes = self.configuration.routes.map { "\($0.topic)→\($0.table) \(formats[$0.topic]?.rawValue ?? "")" }
        self.logger.info(
            "loader.started",
            metadata: [
                "clickhouse.version": "\(version)", "kafka.group": "\(self.configuration.groupID)",
                "routes": "\(routes.joined(separator: ","))",
            ]
        )
        var session = Session(
            loader: self,
            consumer: consumer,
            clickHouse: clickHouse,
            producer: producer,
            deadLetters: deadLetters,
            version: version,
            formats: formats
        )
        await session.run()
        await consumer.close()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async {
                producer.close(flushTimeoutMilliseconds: 10_000)
                continuation.resume()
            }
        }
        self.logger.info("loader.stopped", metadata: ["rows": "\(self.rowsInserted)"])
    }

    /// Creates databases and tables when missing and chooses each route's insert format,
    /// retrying until ClickHouse answers; nil on shutdown.
    private func prepareTables(
        _ clickHouse: ClickHouseClient
    ) async -> (ClickHouseVersion, [String: InsertFormat])? {
        var backoff = Backoff(initial: self.configuration.retryInitial, maximum: self.configuration.retryMax)
        while !Task.isCancelledOrShuttingDownGracefully {
            do {
                let version = try await clickHouse.serverVersion()
                for database in Set(self.configuration.routes.map(\.database)) {
                    try await clickHouse.execute("CREATE DATABASE IF NOT EXISTS \(database)")
                }
                var formats: [String: InsertFormat] = [:]
                for route in self.configuration.routes {
                    try await clickHouse.execute(route.createTable(on: version))
                    formats[route.topic] = self.configuration.format
                    guard self.configuration.format == .rowBinary else { continue }
                    // RowBinary has no field boundaries the server could check: a table made
                    // before with other types would read every row wrongly. JSONEachRow lets
                    // the server convert (or refuse) each value.
                    let columns = try await clickHouse.query(route.tableColumnsQuery)
                    if let mismatch = route.rowBinaryMismatch(tableColumns: columns, on: version) {
                        formats[route.topic] = .jsonEachRow
                        self.logger.warning(
                            "loader.row_binary_unavailable",
                            metadata: ["table": "\(route.table)", "reason": "\(mismatch)", "format": "JSONEachRow"]
                        )
                    }
                }
                return (version, formats)
            } catch {
                self.logger.warning("loader.clickhouse_unavailable", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: backoff.next())
            }
        }
        return nil
    }

    /// The consume → insert → commit loop of one consumer.
    private struct Session {
        let loader: Loader
        let consumer: KafkaConsumer
        let clickHouse: ClickHouseClient
        let producer: KafkaProducer
        let deadLetters: DeadLetterSender
        let version: ClickHouseVersion
        var batches: [String: Batch] = [:]
        let routes: [String: LoaderRoute]
        let encoders: [String: RowEncoder]
        let inserter: RowInserter
        /// The last batch's insert, running while the next batch fills and is encoded.
        var inFlight: InFlight?

        init(
            loader: Loader,
            consumer: KafkaConsumer,
            clickHouse: ClickHouseClient,
            producer: KafkaProducer,
            deadLetters: DeadLetterSender,
            version: ClickHouseVersion,
            formats: [String: InsertFormat]
        ) {
            self.loader = loader
            self.consumer = consumer
            self.clickHouse = clickHouse
            self.producer = producer
            self.deadLetters = deadLetters
            self.version = version
            self.inserter = RowInserter(loader: loader, clickHouse: clickHouse, version: version)
            self.routes = Dictionary(uniqueKeysWithValues: loader.configuration.routes.map { ($0.topic, $0) })
            self.encoders = self.routes.mapValues {
                RowEncoder(route: $0, version: version, format: formats[$0.topic] ?? .jsonEachRow)
            }
        }

        var configuration: LoaderConfiguration { self.loader.configuration }
        var logger: Logger { self.loader.logger }
        var metrics: LoaderMetrics { self.loader.metrics }

        mutating func run() async {
            var lastLag = ContinuousClock.now
            while !Task.isCancelledOrShuttingDownGracefully {
                let poll = await self.consumer.poll(maxMessages: 2000, timeout: .milliseconds(100))
                self.apply(poll)
                if self.inFlight?.done.isSet == true { await self.land() }
                for (topic, batch) in self.batches where self.isDue(batch) {
                    await self.flush(topic)
                }
                if ContinuousClock.now - lastLag > .seconds(2) {
                    lastLag = ContinuousClock.now
                    for (partition, lag) in await self.consumer.lag() {
                        Gauge(
                            label: "sluice_loader_consumer_lag_messages",
                            dimensions: [("topic", partition.topic), ("partition", String(partition.partition))]
                        ).record(lag)
                    }
                }
            }
            // Shutting down: what is batched is inserted and committed if ClickHouse is there
            // now; otherwise the next owner reads it again from the committed offsets.
            for topic in self.batches.keys {
                while self.batches[topic]?.messages.isEmpty == false { await self.flush(topic, once: true) }
            }
            await self.land(once: true)
        }

        private func isDue(_ batch: Batch) -> Bool {
            guard let first = batch.firstArrival else { return false }
            return batch.messages.count >= self.configuration.batchRows || batch.bytes >= self.configuration.batchBytes
                || ContinuousClock.now - first >= self.configuration.batchAge
        }

        private mutating func apply(_ poll: ConsumerPoll) {
            if !poll.revoked.isEmpty {
                // Their unconfirmed work belongs to the next owner: drop it, never commit it.
                let revoked = Set(poll.revoked)
                for topic in self.batches.keys {
                    self.batches[topic]!.messages.removeAll { revoked.contains($0.topicPartition) }
                    self.batches[topic]!.recount()
                }
                self.logger.info("loader.partitions_revoked", metadata: ["partitions": "\(poll.revoked.sorted())"])
            }
            if !poll.assigned.isEmpty {
                self.logger.info("loader.partitions_assigned", metadata: ["partitions": "\(poll.assigned.sorted())"])
            }
            if !poll.assigned.isEmpty || !poll.revoked.isEmpty {
                self.loader.assignedPartitions.store(self.consumer.assignment.count, ordering: .relaxed)
            }
            for error in poll.errors {
                self.logger.warning("loader.kafka_error", metadata: ["error": "\(error)"])
            }
            self.metrics.consumed.increment(by: Int64(poll.messages.count))
            for message in poll.messages {
                self.batches[message.topic, default: Batch()].append(message)
            }
        }

        /// Encodes a route's batch and starts inserting it, once the insert before it has landed.
        ///
        /// One insert at a time: offsets are committed in order, and at most two batches per
        /// route are held (the one being inserted and the next). Encoding the next batch and
        /// consuming the one after overlap with the insert, which is mostly ClickHouse's work.
        private mutating func flush(_ topic: String, once: Bool = false) async {
            guard var batch = self.batches[topic], !batch.messages.isEmpty else { return }
            guard let route = self.routes[topic], let encoder = self.encoders[topic] else {
                self.batches[topic] = nil  // not a route's topic: nothing to insert it into
                return
            }
            let messages = batch.take(rows: self.configuration.batchRows, bytes: self.configuration.batchBytes)
            self.batches[topic] = batch
            self.metrics.batchSize.record(messages.count)

            // Validation: what cannot become a row goes to the dead-letter topic. Encoding is
            // the loader's main CPU cost: slices of the batch are encoded on every core.
            let (rows, invalid) = await Self.encode(messages, with: encoder)

            // When the insert before went in whole, this one starts before that one's dead
            // letters and commit, which then run while ClickHouse works; otherwise that batch
            // lands first (retries, halving), and this one waits.
            if let previous = self.inFlight, case .inserted = await previous.firstOutcome.value {
                self.inFlight = nil
                self.startInsert(rows, invalid: invalid, route: route, format: encoder.format)
                await self.complete(previous.rows, rejected: previous.invalid, route: previous.route)
            } else {
                await self.land(once: once)
                self.startInsert(rows, invalid: invalid, route: route, format: encoder.format)
            }
            if once { await self.land(once: true) }
        }

        private mutating func startInsert(
            _ rows: EncodedRows,
            invalid: [(ConsumedMessage, String)],
            route: LoaderRoute,
            format: InsertFormat
        ) {
            let inserter = self.inserter
            let done = Flag()
            self.inFlight = InFlight(
                route: route,
                format: format,
                rows: rows,
                invalid: invalid,
                done: done,
                firstOutcome: Task {
                    let outcome = await inserter.insert(rows.indices, of: rows, route: route, format: format)
                    done.set()
                    return outcome
                }
            )
        }

        /// Finishes the insert in flight, if any — retrying while ClickHouse fails for a passing
        /// reason, isolating rows it rejects — then commits its batch's offsets.
        private mutating func land(once: Bool = false) async {
            guard let flight = self.inFlight else { return }
            self.inFlight = nil
            let rows = flight.rows
            let route = flight.route
            var rejected = flight.invalid
            var outcome: Outcome? = await flight.firstOutcome.value

            var paused: [TopicPartition] = []
            var backoff = Backoff(initial: self.configuration.retryInitial, maximum: self.configuration.retryMax)
            var pending = [rows.indices]
            while let chunk = pending.popLast() {
                if chunk.isEmpty { continue }
                let result: Outcome
                if let first = outcome {
                    result = first  // the whole batch, inserted while the next one was being read
                    outcome = nil
                } else {
                    result = await self.inserter.insert(chunk, of: rows, route: route, format: flight.format)
                }
                switch result {
                case .inserted:
                    backoff = Backoff(initial: self.configuration.retryInitial, maximum: self.configuration.retryMax)
                case .rejected(let reason):
                    if chunk.count == 1 {
                        rejected.append((rows.message(chunk.lowerBound), reason))
                    } else {
                        // Halve until the rows ClickHouse refuses are alone.
                        let middle = chunk.lowerBound + chunk.count / 2
                        pending.append(middle..<chunk.upperBound)
                        pending.append(chunk.lowerBound..<middle)
                    }
                case .failed(let error):
                    if once { return }
                    self.metrics.retries.increment()
                    if paused.isEmpty {
                        paused = Array(self.consumer.assignment)
                        await self.consumer.pause(paused)
                    }
                    let delay = backoff.next()
                    self.logger.warning(
                        "loader.insert_failed",
                        metadata: [
                            "table": "\(route.table)", "rows": "\(chunk.count)", "error": "\(error)",
                            "retry_in_ms":
                                "\(delay.components.seconds * 1000 + delay.components.attoseconds / 1_000_000_000_000_000)",
                        ]
                    )
                    // Keep serving the group (rebalances, heartbeats) while waiting; the
                    // partitions are paused, so nothing new piles up.
                    let deadline = ContinuousClock.now + delay
                    while ContinuousClock.now < deadline && !Task.isCancelledOrShuttingDownGracefully {
                        let poll = await self.consumer.poll(maxMessages: 1000, timeout: .milliseconds(200))
                        self.apply(poll)
                    }
                    if Task.isCancelledOrShuttingDownGracefully { return }
                    pending.append(chunk)
                }
            }
            if !paused.isEmpty { await self.consumer.resume(paused.filter { self.consumer.assignment.contains($0) }) }
            await self.complete(rows, rejected: rejected, route: route)
        }

        /// Sends the dead letters of a batch whose rows are all in ClickHouse, then commits it.
        private func complete(_ rows: EncodedRows, rejected: [(ConsumedMessage, String)], route: LoaderRoute) async {
            // Dead letters are in Kafka (acks=all) before the offsets that cover them are committed.
            if !rejected.isEmpty {
                guard await self.sendDeadLetters(rejected, route: route) else { return }
            }
            // Every message of the batch is now a row in ClickHouse or a dead letter in Kafka.
            var offsets: [TopicPartition: Int64] = [:]
            for index in rows.source.indices {
                let partition = rows.source[index].topicPartition
                offsets[partition] = max(offsets[partition] ?? 0, rows.source[index].offset + 1)
            }
            let started = ContinuousClock.now
            do {
                try await self.consumer.commit(offsets)
                self.metrics.commitLatency.recordNanoseconds(Self.nanoseconds(ContinuousClock.now - started))
            } catch {
                // The rows are in ClickHouse; a later commit covers them, or they are read
                // again and folded by deduplication.
                self.logger.warning("loader.commit_failed", metadata: ["error": "\(error)"])
            }
        }

        /// Rows in message order, and the messages that cannot become rows (with why).
        static func encode(
            _ messages: ArraySlice<ConsumedMessage>,
            with encoder: RowEncoder
        ) async -> (rows: EncodedRows, rejected: [(ConsumedMessage, String)]) {
            let slices = max(1, min(ProcessInfo.processInfo.activeProcessorCount, messages.count / 500))
            let size = (messages.count + slices - 1) / slices
            let parts = await withTaskGroup(of: (Int, EncodedRows, [(ConsumedMessage, String)]).self) { group in
                for slice in 0..<slices {
                    let start = messages.startIndex + min(messages.count, slice * size)
                    let part = messages[start..<messages.startIndex + min(messages.count, (slice + 1) * size)]
                    group.addTask {
                        var rows = EncodedRows()
                        var rejected: [(ConsumedMessage, String)] = []
                        var scratch = RowEncoder.Scratch()
                        rows.reserve(part.count, bytes: part.reduce(0) { $0 + $1.value.count })
                        for index in part.indices {
                            do throws(LoaderError) {
                                let received = try part[index].value.withUnsafeBufferPointer {
                                    value throws(LoaderError) in
                                    try encoder.encode(value, into: &rows.body, scratch: &scratch)
                                }
                                rows.appended(source: index - messages.startIndex, receivedAtMillis: received)
                            } catch {
                                rejected.append((part[index], error.description))
                            }
                        }
                        return (slice, rows, rejected)
                    }
                }
                var parts: [(Int, EncodedRows, [(ConsumedMessage, String)])] = []
                for await part in group { parts.append(part) }
                return parts.sorted { $0.0 < $1.0 }
            }
            var rows = parts.count == 1 ? parts[0].1 : EncodedRows()
            if parts.count > 1 {
                rows.reserve(parts.reduce(0) { $0 + $1.1.count }, bytes: parts.reduce(0) { $0 + $1.1.body.count })
                for part in parts { rows.append(contentsOf: part.1) }
            }
            rows.source = messages
            return (rows, parts.flatMap { $0.2 })
        }

        /// A batch whose insert is running.
        struct InFlight {
            let route: LoaderRoute
            let format: InsertFormat
            let rows: EncodedRows
            /// Messages that could not become rows, with why.
            let invalid: [(ConsumedMessage, String)]
            /// Set when `firstOutcome` is there to take.
            let done: Flag
            /// The insert of all the batch's rows.
            let firstOutcome: Task<Outcome, Never>
        }

        /// Sends rejected messages to the route's dead-letter topic and waits for Kafka's
        /// acknowledgement. False when shutting down before they were all acknowledged.
        private func sendDeadLetters(_ rejected: [(ConsumedMessage, String)], route: LoaderRoute) async -> Bool {
            var remaining = rejected
            var backoff = Backoff(initial: self.configuration.retryInitial, maximum: self.configuration.retryMax)
            while !remaining.isEmpty {
                let ids = self.deadLetters.expect(remaining.count)
                for ((message, reason), id) in zip(remaining, ids) {
                    var headers = message.headers.filter { !$0.name.hasPrefix("dlq_") }
                    headers.append(("dlq_reason", Array(reason.utf8)))
                    headers.append(("dlq_topic", Array(message.topic.utf8)))
                    headers.append(("dlq_partition", Array(String(message.partition).utf8)))
                    headers.append(("dlq_offset", Array(String(message.offset).utf8)))
                    headers.append(("dlq_table", Array(route.table.utf8)))
                    do {
                        try self.producer.send(
                            topic: route.deadLetterTopic,
                            key: message.key,
                            value: message.value,
                            headers: headers.map { ($0.name, $0.value) },
                            id: id
                        )
                    } catch {
                        self.deadLetters.cancel(id)  // not queued: goes round again below
                    }
                }
                let delivered = await self.deadLetters.wait(for: ids)
                let deliveredSet = Set(delivered)
                for ((message, reason), id) in zip(remaining, ids) where deliveredSet.contains(id) {
                    self.metrics.deadLettered.increment()
                    self.loader.deadLettered.add(1, ordering: .relaxed)
                    self.logger.error(
                        "loader.dead_letter",
                        metadata: [
                            "topic": "\(message.topic)", "partition": "\(message.partition)",
                            "offset": "\(message.offset)", "reason": "\(reason)", "dlq": "\(route.deadLetterTopic)",
                        ]
                    )
                }
                remaining = zip(remaining, ids).filter { !deliveredSet.contains($0.1) }.map(\.0)
                if remaining.isEmpty { return true }
                if Task.isCancelledOrShuttingDownGracefully { return false }
                self.logger.warning("loader.dead_letter_retry", metadata: ["messages": "\(remaining.count)"])
                try? await Task.sleep(for: backoff.next())
            }
            return true
        }

        static func nanoseconds(_ duration: Duration) -> Int64 {
            duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000
        }
    }

    enum Outcome: Sendable {
        case inserted
        case rejected(String)
        case failed(ClickHouseError)
    }

    /// Sends rows to ClickHouse and accounts for the ones it confirms; shared with the task
    /// that inserts a batch while the session reads the next.
    struct RowInserter: Sendable {
        let loader: Loader
        let clickHouse: ClickHouseClient
        let version: ClickHouseVersion

        var metrics: LoaderMetrics { self.loader.metrics }
        var configuration: LoaderConfiguration { self.loader.configuration }

        func insert(
            _ chunk: Range<Int>,
            of rows: EncodedRows,
            route: LoaderRoute,
            format: InsertFormat
        ) async -> Outcome {
            let body = rows.body(of: chunk)
            var settings: [String: String] = [:]
            if self.version >= LoaderRoute.dedupTokenSince {
                // The same messages inserted again (a retry after a lost answer) are dropped by the server.
                let first = rows.message(chunk.lowerBound)
                let last = rows.message(chunk.upperBound - 1)
                settings["insert_deduplication_token"] =
                    "\(first.topic)-\(first.partition)-\(first.offset)-\(last.partition)-\(last.offset)-\(chunk.count)"
            }
            let started = ContinuousClock.now
            do {
                try await self.clickHouse.insert(route.insertPrefix(format), body: body, settings: settings)
            } catch {
                if !error.isRetriable && error.isDataError { return .rejected(error.description) }
                return .failed(error)
            }
            let now = Timestamp.nowMillis()
            self.metrics.insertLatency.recordNanoseconds(Session.nanoseconds(ContinuousClock.now - started))
            self.metrics.rows.increment(by: Int64(chunk.count))
            self.metrics.bytes.increment(by: Int64(body.count))
            self.loader.insertedRows.add(chunk.count, ordering: .relaxed)
            var delays: [Int64] = []
            delays.reserveCapacity(chunk.count)
            for received in rows.receivedAtMillis[chunk] {
                if let received, now >= received {
                    self.metrics.ingestDelay.recordNanoseconds((now - received) * 1_000_000)
                    delays.append(now - received)
                }
            }
            self.configuration.insertObserver?(delays)
            return .inserted
        }
    }

    /// A flag set once, read from any task.
    final class Flag: Sendable {
        private let value = Atomic<Bool>(false)
        func set() { self.value.store(true, ordering: .releasing) }
        var isSet: Bool { self.value.load(ordering: .acquiring) }
    }

    /// A batch's messages, and the rows of those that became rows, encoded end to end in one
    /// body.
    struct EncodedRows {
        /// The batch's messages: rows and the messages that could not become rows.
        var source: ArraySlice<ConsumedMessage> = []
        /// For each row, its message's position in `source` (from 0).
        var sources: [Int] = []
        var receivedAtMillis: [Int64?] = []
        var body: [UInt8] = []
        /// Where each row ends in `body`; a row starts where the one before it ends.
        var ends: [Int] = []

        var count: Int { self.sources.count }
        var indices: Range<Int> { 0..<self.sources.count }

        func message(_ row: Int) -> ConsumedMessage { self.source[self.source.startIndex + self.sources[row]] }

        mutating func reserve(_ rows: Int, bytes: Int) {
            self.sources.reserveCapacity(rows)
            self.receivedAtMillis.reserveCapacity(rows)
            self.ends.reserveCapacity(rows)
            self.body.reserveCapacity(bytes)
        }

        /// Records the message whose row was just appended to `body`.
        mutating func appended(source: Int, receivedAtMillis: Int64?) {
            self.sources.append(source)
            self.receivedAtMillis.append(receivedAtMillis)
            self.ends.append(self.body.count)
        }

        mutating func append(contentsOf other: EncodedRows) {
            let shift = self.body.count
            self.sources += other.sources
            self.receivedAtMillis += other.receivedAtMillis
            self.ends += other.ends.lazy.map { $0 + shift }
            self.body += other.body
        }

        /// The bytes of rows `chunk`: the body itself (no copy) when that is all of them.
        func body(of chunk: Range<Int>) -> [UInt8] {
            guard chunk != self.indices else { return self.body }
            let start = chunk.lowerBound == 0 ? 0 : self.ends[chunk.lowerBound - 1]
            return Array(self.body[start..<self.ends[chunk.upperBound - 1]])
        }
    }

    struct Batch {
        var messages: [ConsumedMessage] = []
        var bytes = 0
        var firstArrival: ContinuousClock.Instant?

        mutating func append(_ message: ConsumedMessage) {
            if self.messages.isEmpty { self.firstArrival = .now }
            self.messages.append(message)
            self.bytes += message.value.count
        }

        /// Takes the first messages, up to `rows` of them and until they reach `bytes` (one at
        /// least); the rest stay, as a batch that starts now. Batches are then as large as
        /// configured, not that plus the rest of the last poll.
        mutating func take(rows: Int, bytes: Int) -> ArraySlice<ConsumedMessage> {
            var count = 0
            var size = 0
            while count < self.messages.count && count < max(1, rows) && size < max(1, bytes) {
                size += self.messages[count].value.count
                count += 1
            }
            let all = self.messages
            self.messages = Array(all[count...])
            self.bytes -= size
            self.firstArrival = self.messages.isEmpty ? nil : .now
            return all[..<count]
        }

        mutating func recount() {
            self.bytes = self.messages.reduce(0) { $0 + $1.value.count }
            if self.messages.isEmpty { self.firstArrival = nil }
        }
    }
}

/// Matches dead-letter delivery reports to the sends waiting for them.
final class DeadLetterSender: Sendable {
    private struct State {
        var nextID: UInt64 = 1
        var outstanding: Set<UInt64> = []
        /// Reported and acknowledged; anything else no longer outstanding failed.
        var delivered: Set<UInt64> = []
    }

    private let state = Mutex(State())

    func expect(_ count: Int) -> [UInt64] {
        self.state.withLock { state in
            let ids = (0..<UInt64(count)).map { state.nextID + $0 }
            state.nextID += UInt64(count)
            state.outstanding.formUnion(ids)
            return ids
        }
    }

    func cancel(_ id: UInt64) {
        self.state.withLock { _ = $0.outstanding.remove(id) }
    }

    func report(_ reports: [DeliveryReport]) {
        self.state.withLock { state in
            for report in reports where state.outstanding.remove(report.id) != nil {
                if report.error == nil { state.delivered.insert(report.id) }
            }
        }
    }

    /// Waits until every id is reported; returns those Kafka acknowledged.
    func wait(for ids: [UInt64]) async -> [UInt64] {
        while true {
            let done = self.state.withLock { state -> [UInt64]? in
                guard ids.allSatisfy({ !state.outstanding.contains($0) }) else { return nil }
                let delivered = ids.filter { state.delivered.contains($0) }
                state.delivered.subtract(ids)
                return delivered
            }
            if let done { return done }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }
}

/// Exponential back-off with full jitter.
struct Backoff {
    let initial: Duration
    let maximum: Duration
    private var attempt = 0

    init(initial: Duration, maximum: Duration) {
        self.initial = initial
        self.maximum = maximum
    }

    mutating func next() -> Duration {
        let ceiling = min(self.maximum, self.initial * (1 << min(self.attempt, 20)))
        self.attempt += 1
        // Full jitter, but never less than half the step: retries spread out, none spins.
        return ceiling / 2 + ceiling / 2 * Double.random(in: 0...1)
    }
}

struct LoaderMetrics: Sendable {
    let consumed = Counter(label: "sluice_loader_consumed_messages_total")
    let rows = Counter(label: "sluice_loader_inserted_rows_total")
    let bytes = Counter(label: "sluice_loader_inserted_bytes_total")
    let retries = Counter(label: "sluice_loader_insert_retries_total")
    let deadLettered = Counter(label: "sluice_loader_dead_lettered_messages_total")
    let insertLatency = Timer(label: "sluice_loader_insert_duration_seconds")
    let commitLatency = Timer(label: "sluice_loader_commit_duration_seconds")
    let ingestDelay = Timer(label: "sluice_loader_ingest_to_insert_seconds")
    let batchSize = Recorder(label: "sluice_loader_batch_rows", aggregate: true)
}

extension Task where Success == Never, Failure == Never {
    /// Cancelled, or the service group is shutting down.
    static var isCancelledOrShuttingDownGracefully: Bool { Task.isCancelled || Task.isShuttingDownGracefully }
}
