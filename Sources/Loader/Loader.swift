import ClickHouse
import CoreMetrics
import EventModel
import Foundation
import Kafka
import Ledger
import Logging
import Metrics
import ServiceLifecycle
import SluiceCore
import Synchronization

/// Consumes the routes' topics and inserts their messages into ClickHouse, committing a
/// partition's offset only after every earlier message of it was inserted (and confirmed) or
/// dead-lettered.
///
/// At least once, effectively once in queries: after a crash or a failed commit messages are
/// inserted again, and the tables (ReplacingMergeTree on `event_id`) fold the duplicates.
/// One insert runs at a time, while the next batch is consumed and encoded; the insert after
/// it starts only once it succeeded, and offsets are committed in insert order.
/// While ClickHouse is down or slow the loader backs off with jitter, commits nothing, keeps
/// serving its group and holds at most three batches per route in memory (the one being
/// inserted, the next one, and one filling; once that one is full, the route's partitions
/// are paused).
///
/// The rules live in ``LoaderStateMachine``; this class performs its actions (Kafka, ClickHouse,
/// encoding) as child tasks of one task group and feeds their results back to it.
public final class Loader: Service, Sendable {
    let configuration: LoaderConfiguration
    let logger: Logger
    let metrics = LoaderMetrics()
    private let insertedRows = Atomic<Int>(0)
    private let deadLettered = Atomic<Int>(0)
    private let chosenFormats = Mutex<[String: InsertFormat]>([:])
    private let assignedPartitions = Atomic<Int>(0)
    let erasures: ErasureList
    let erasedMessages = Atomic<Int>(0)

    public init(configuration: LoaderConfiguration, logger: Logger = Logger(label: "sluice.loader")) {
        self.configuration = configuration
        self.logger = logger
        self.erasures = ErasureList(configuration: configuration.erasure)
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
    /// Messages of erased users dropped so far (this process).
    public var messagesErased: Int { self.erasedMessages.load(ordering: .relaxed) }
    /// The insert format of each route (by topic), once the loader has checked its tables.
    public var insertFormats: [String: InsertFormat] { self.chosenFormats.withLock { $0 } }

    public func run() async throws {
        let clickHouse = ClickHouseClient(self.configuration.clickHouse, logger: self.logger)
        do {
            try await self.run(with: clickHouse)
        } catch {
            try? await clickHouse.shutdown()
            throw error
        }
        try? await clickHouse.shutdown()
    }

    private func run(with clickHouse: ClickHouseClient) async throws {
        let decryption = PayloadDecryption(keyring: try self.configuration.encryptionKeyring())
        guard let (version, formats) = try await self.prepareTables(clickHouse) else { return }
        self.chosenFormats.withLock { $0 = formats }
        var properties = Self.consumerDefaults.merging(self.configuration.kafkaProperties) { $1 }
        properties["group.id"] = self.configuration.groupID
        let consumer = try KafkaConsumer(properties: properties, topics: self.configuration.routes.map(\.topic))
        var producerProperties = self.configuration.kafkaProperties
        producerProperties["enable.idempotence"] = "true"
        producerProperties["acks"] = "all"
        let deadLetters = DeadLetterSender()
        let producer: KafkaProducer
        do {
            producer = try KafkaProducer(properties: producerProperties, onDelivery: { deadLetters.report($0) })
        } catch {
            await consumer.close()
            throw error
        }
        let routes = self.configuration.routes.map { "\($0.topic)→\($0.table) \(formats[$0.topic]?.rawValue ?? "")" }
        self.logger.info(
            "loader.started",
            metadata: [
                "clickhouse.version": "\(version)", "kafka.group": "\(self.configuration.groupID)",
                "routes": "\(routes.joined(separator: ","))",
            ]
        )
        let session = Session(
            loader: self,
            consumer: consumer,
            clickHouse: clickHouse,
            producer: producer,
            deadLetters: deadLetters,
            decryption: decryption,
            version: version,
            formats: formats
        )
        let failure = await self.runMaintained({ await session.run() }, clickHouse: clickHouse, version: version)
        await consumer.close()
        await producer.close(flushTimeout: .seconds(10))
        self.logger.info("loader.stopped", metadata: ["rows": "\(self.rowsInserted)"])
        if let failure { throw failure }
    }

    /// Creates databases and tables when missing, chooses each route's insert format and reads
    /// the erasure record, retrying until ClickHouse answers; nil on shutdown.
    ///
    /// - Throws: ``LoaderError`` when a route cannot work on this server (a storage policy
    ///   before 19.15) or the erasure record cannot be applied: retrying would not help.
    private func prepareTables(
        _ clickHouse: ClickHouseClient
    ) async throws(LoaderError) -> (ClickHouseVersion, [String: InsertFormat])? {
        var backoff = Backoff(initial: self.configuration.retryInitial, maximum: self.configuration.retryMax)
        while !Task.isCancelledOrShuttingDownGracefully {
            do {
                let version = try await clickHouse.serverVersion()
                try self.checkRoutes(on: version)
                for database in Set(self.configuration.routes.map(\.database)) {
                    try await clickHouse.execute("CREATE DATABASE IF NOT EXISTS \(database)")
                }
                var formats: [String: InsertFormat] = [:]
                for route in self.configuration.routes {
                    try await clickHouse.execute(route.createTable(on: version))
                    formats[route.topic] = self.configuration.format
                    var columns = try await clickHouse.query(route.tableColumnsQuery)
                    // A table made by an older Sluice lacks the fields events gained since
                    // (anonymous_id, sent_at…): added, rather than every insert refused.
                    let missing = route.missingColumns(tableColumns: columns)
                    for column in missing {
                        try await clickHouse.execute(route.addColumn(column, on: version))
                        self.logger.notice(
                            "loader.column_added",
                            metadata: ["table": "\(route.table)", "column": "\(column.name)"]
                        )
                    }
                    if !missing.isEmpty { columns = try await clickHouse.query(route.tableColumnsQuery) }
                    guard self.configuration.format == .rowBinary else { continue }
                    // RowBinary has no field boundaries the server could check: a table made
                    // before with other types would read every row wrongly. JSONEachRow lets
                    // the server convert (or refuse) each value.
                    if let mismatch = route.rowBinaryMismatch(tableColumns: columns, on: version) {
                        formats[route.topic] = .jsonEachRow
                        self.logger.warning(
                            "loader.row_binary_unavailable",
                            metadata: ["table": "\(route.table)", "reason": "\(mismatch)", "format": "JSONEachRow"]
                        )
                    }
                }
                try await ClickstreamRollups.prepare(
                    self.configuration.routes,
                    on: version,
                    clickHouse: clickHouse,
                    logger: self.logger
                )
                try await self.prepareErasures(clickHouse)
                return (version, formats)
            } catch let error as LoaderError {
                throw error
            } catch {
                self.logger.warning("loader.clickhouse_unavailable", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: backoff.next())
            }
        }
        return nil
    }

    /// The consume → insert → commit loop of one consumer: performs the state machine's
    /// actions and reports their results to it.
    private struct Session: Sendable {
        typealias Machine = LoaderStateMachine<ContinuousClock>

        /// The result of an action run as a child task.
        enum Event: Sendable {
            case polled(ConsumerPoll)
            case encoded(Machine.BatchID, EncodedRows, [DeadLetter])
            case inserted(Machine.BatchID, Range<Int>, InsertOutcome)
            case deadLettersSent(Machine.BatchID, failed: [DeadLetter], delivered: [DeadLetter])
            /// The commit returned; `offsets` when it succeeded.
            case committed(Machine.BatchID, offsets: [TopicPartition: Int64]?)
            /// The consumer lag gauge was refreshed (not the machine's business).
            case lagRecorded
        }

        let loader: Loader
        let consumer: KafkaConsumer
        let producer: KafkaProducer
        let deadLetters: DeadLetterSender
        let decryption: PayloadDecryption
        /// Each route's encoder, by topic; it carries the route.
        let encoders: [String: RowEncoder]
        let inserter: RowInserter

        init(
            loader: Loader,
            consumer: KafkaConsumer,
            clickHouse: ClickHouseClient,
            producer: KafkaProducer,
            deadLetters: DeadLetterSender,
            decryption: PayloadDecryption,
            version: ClickHouseVersion,
            formats: [String: InsertFormat]
        ) {
            self.loader = loader
            self.consumer = consumer
            self.producer = producer
            self.deadLetters = deadLetters
            self.decryption = decryption
            self.inserter = RowInserter(loader: loader, clickHouse: clickHouse, version: version)
            self.encoders = Dictionary(
                uniqueKeysWithValues: loader.configuration.routes.map {
                    ($0.topic, RowEncoder(route: $0, version: version, format: formats[$0.topic] ?? .jsonEachRow))
                }
            )
        }

        var configuration: LoaderConfiguration { self.loader.configuration }
        var logger: Logger { self.loader.logger }
        var metrics: LoaderMetrics { self.loader.metrics }

        /// Runs until shutdown and until what was buffered then is inserted and committed (or
        /// given up: the next owner reads it again from the committed offsets).
        func run() async {
            await withTaskGroup(of: Event.self) { group in
                var machine = Machine(configuration: self.configuration, clock: ContinuousClock())
                var stopping = false
                var lastLag = ContinuousClock.now
                var lagInFlight = false
                var ledger = self.configuration.ledger.map { _ in LoaderLedger(group: self.configuration.groupID) }
                await self.perform(machine.start(), in: &group)
                // Until shutdown a poll runs (and returns within 100 ms: the machine's tick), or
                // else an insert, encoding or commit does, whose result wakes the loop.
                while let event = await group.next() {
                    if !stopping && Task.isCancelledOrShuttingDownGracefully {
                        stopping = true
                        await self.perform(machine.shutdown(), in: &group)
                    }
                    let actions: [Machine.Action]
                    switch event {
                    case .polled(let poll):
                        self.record(poll)
                        actions = machine.polled(poll)
                    case .encoded(let id, let rows, let invalid):
                        if let route = rows.source.first.flatMap({ self.encoders[$0.topic]?.route }) {
                            ledger?.encoded(id, route: route, rows: rows)
                        }
                        actions = machine.encoded(id, rows: rows, invalid: invalid)
                    case .inserted(let id, let chunk, let outcome):
                        actions = machine.insertFinished(id, chunk: chunk, outcome: outcome)
                    case .deadLettersSent(let id, let failed, let delivered):
                        ledger?.deadLettered(id, delivered)
                        actions = machine.deadLettersSent(id, failed: failed)
                    case .committed(let id, let offsets):
                        if let offsets,
                            let records = ledger?.committed(id, offsets: offsets, atMillis: Timestamp.nowMillis())
                        {
                            for record in records { self.configuration.ledger?.record(record) }
                        }
                        actions = machine.committed(id)
                    case .lagRecorded:
                        lagInFlight = false
                        actions = []
                    }
                    await self.perform(actions, in: &group)
                    // Every 2 s, as a child task of its own: it asks the brokers, and the loop
                    // must not wait for them. Polls tick every 100 ms, also while an insert is
                    // retried, so this runs then too.
                    if !stopping && !lagInFlight && ContinuousClock.now - lastLag > .seconds(2) {
                        lastLag = ContinuousClock.now
                        lagInFlight = true
                        group.addTask {
                            await self.recordLag()
                            return .lagRecorded
                        }
                    }
                }
            }
        }

        /// Performs actions in order: pauses and resumes at once, everything else as a child task.
        private func perform(_ actions: [Machine.Action], in group: inout TaskGroup<Event>) async {
            for action in actions {
                switch action {
                case .poll:
                    group.addTask { .polled(await self.consumer.poll(maxMessages: 2000, timeout: .milliseconds(100))) }
                case .pause(let partitions):
                    self.logger.debug("loader.partitions_paused", metadata: ["partitions": "\(partitions)"])
                    await self.consumer.pause(partitions)
                case .resume(let partitions):
                    self.logger.debug("loader.partitions_resumed", metadata: ["partitions": "\(partitions)"])
                    await self.consumer.resume(partitions)
                case .encode(let request):
                    self.metrics.batchSize.record(request.messages.count)
                    let encoder = self.encoder(request.topic)
                    let erasures = self.loader.erasures.snapshot
                    let decryption = self.decryption
                    group.addTask {
                        // Validation: what cannot become a row goes to the dead-letter topic.
                        let (rows, invalid, erased) = await Self.encode(
                            request.messages,
                            with: encoder,
                            decryption: decryption,
                            erasures: erasures
                        )
                        if erased > 0 { self.loader.droppedErased(erased, route: encoder.route) }
                        return .encoded(request.id, rows, invalid)
                    }
                case .insert(let request):
                    let encoder = self.encoder(request.topic)
                    group.addTask {
                        let outcome = await self.inserter.insert(
                            request.chunk,
                            of: request.rows,
                            route: encoder.route,
                            format: encoder.format
                        )
                        return .inserted(request.id, request.chunk, outcome)
                    }
                case .retryInsert(let topic, let delay, let rows, let error):
                    self.metrics.retries.increment()
                    self.logger.warning(
                        "loader.insert_failed",
                        metadata: [
                            "table": "\(self.encoder(topic).route.table)", "rows": "\(rows)", "error": "\(error)",
                            "retry_in_ms": "\(delay.nanoseconds / 1_000_000)",
                        ]
                    )
                case .sendDeadLetters(let request):
                    let route = self.encoder(request.topic).route
                    group.addTask {
                        let acknowledged = await self.deadLetters.send(request.letters, to: route, via: self.producer)
                        var failed: [DeadLetter] = []
                        var sent: [DeadLetter] = []
                        for (letter, delivered) in zip(request.letters, acknowledged) {
                            guard delivered else {
                                failed.append(letter)
                                continue
                            }
                            sent.append(letter)
                            self.counted(letter, route: route)
                        }
                        return .deadLettersSent(request.id, failed: failed, delivered: sent)
                    }
                case .retryDeadLetters(_, let messages):
                    self.logger.warning("loader.dead_letter_retry", metadata: ["messages": "\(messages)"])
                case .commit(let request):
                    group.addTask {
                        let started = ContinuousClock.now
                        do {
                            try await self.consumer.commit(request.offsets)
                            self.metrics.commitLatency.recordNanoseconds(
                                (ContinuousClock.now - started).nanoseconds
                            )
                        } catch {
                            // The rows are in ClickHouse; a later commit covers them, or they are
                            // read again and folded by deduplication.
                            self.logger.warning("loader.commit_failed", metadata: ["error": "\(error)"])
                            return .committed(request.id, offsets: nil)
                        }
                        return .committed(request.id, offsets: request.offsets)
                    }
                }
            }
        }

        /// The encoder of a route's topic. The machine cuts batches only of the routes'
        /// topics, which are exactly the encoders' keys.
        private func encoder(_ topic: String) -> RowEncoder {
            guard let encoder = self.encoders[topic] else {
                preconditionFailure("the state machine cut a batch of \(topic), which is not a route's topic")
            }
            return encoder
        }

        private func counted(_ letter: DeadLetter, route: LoaderRoute) {
            self.metrics.deadLettered.increment()
            self.loader.deadLettered.add(1, ordering: .relaxed)
            let message = letter.message
            self.logger.error(
                "loader.dead_letter",
                metadata: [
                    "topic": "\(message.topic)", "partition": "\(message.partition)",
                    "offset": "\(message.offset)", "reason": "\(letter.reason)", "dlq": "\(route.deadLetterTopic)",
                ]
            )
        }

        /// Logs and counts what a poll brought besides messages.
        private func record(_ poll: ConsumerPoll) {
            for event in poll.events {
                switch event {
                case .revoked(let partitions):
                    // Their unconfirmed work belongs to the next owner: the machine drops it.
                    self.logger.info("loader.partitions_revoked", metadata: ["partitions": "\(partitions.sorted())"])
                    // Their lag is the new owner's to report: a stale series here would add up
                    // with its.
                    for partition in partitions { Self.lagGauge(partition).destroy() }
                case .assigned(let partitions):
                    self.logger.info("loader.partitions_assigned", metadata: ["partitions": "\(partitions.sorted())"])
                case .messages:
                    break
                }
            }
            if poll.rebalanced {
                self.loader.assignedPartitions.store(self.consumer.assignment.count, ordering: .relaxed)
            }
            for error in poll.errors {
                self.logger.warning("loader.kafka_error", metadata: ["error": "\(error)"])
            }
            self.metrics.consumed.increment(by: Int64(poll.messages.count))
        }

        private func recordLag() async {
            let lags = await self.consumer.lag()
            // A partition revoked while the brokers answered is no longer ours to report.
            let assigned = self.consumer.assignment
            for (partition, lag) in lags where assigned.contains(partition) {
                Self.lagGauge(partition).record(lag)
            }
        }

        /// Messages of a partition not yet committed by the group: loaded, or not yet.
        private static func lagGauge(_ partition: TopicPartition) -> Gauge {
            Gauge(
                label: "sluice_loader_consumer_lag_messages",
                dimensions: [("topic", partition.topic), ("partition", String(partition.partition))]
            )
        }

        /// Rows in message order, and the messages that cannot become rows (with why).
        /// Encoding is the loader's main CPU cost: slices of the batch are encoded on every core.
        static func encode(
            _ messages: ArraySlice<ConsumedMessage>,
            with encoder: RowEncoder,
            decryption: PayloadDecryption,
            erasures: ErasureList.Snapshot? = nil
        ) async -> (rows: EncodedRows, rejected: [DeadLetter], erased: Int) {
            let slices = max(1, min(ProcessInfo.processInfo.activeProcessorCount, messages.count / 500))
            let size = (messages.count + slices - 1) / slices
            let parts = await withTaskGroup(of: (Int, EncodedRows, [DeadLetter], Int).self) { group in
                for slice in 0..<slices {
                    let start = messages.startIndex + min(messages.count, slice * size)
                    let part = messages[start..<messages.startIndex + min(messages.count, (slice + 1) * size)]
                    group.addTask {
                        var rows = EncodedRows()
                        var rejected: [DeadLetter] = []
                        var erased = 0
                        var scratch = RowEncoder.Scratch()
                        rows.reserve(part.count, bytes: part.reduce(0) { $0 + $1.value.count })
                        for index in part.indices {
                            let event: [UInt8]
                            switch decryption.open(part[index]) {
                            case .event(let opened): event = opened
                            case .rejected(let letter):
                                rejected.append(letter)
                                continue
                            }
                            do throws(LoaderError) {
                                let start = rows.body.count
                                let (received, isErased) = try event.withUnsafeBufferPointer {
                                    value throws(LoaderError) in
                                    let received = try encoder.encode(
                                        value,
                                        headers: part[index].headers,
                                        into: &rows.body,
                                        scratch: &scratch
                                    )
                                    guard let erasures else { return (received, false) }
                                    return (received, encoder.isErased(value, scratch: &scratch, erasures: erasures))
                                }
                                if isErased {
                                    // An erased user's event: no row; its offset is committed with the batch.
                                    rows.body.removeSubrange(start...)
                                    erased += 1
                                    continue
                                }
                                rows.appended(source: index - messages.startIndex, receivedAtMillis: received)
                            } catch {
                                rejected.append(DeadLetter(message: part[index], reason: error.description))
                            }
                        }
                        return (slice, rows, rejected, erased)
                    }
                }
                var parts: [(Int, EncodedRows, [DeadLetter], Int)] = []
                for await part in group { parts.append(part) }
                return parts.sorted { $0.0 < $1.0 }
            }
            var rows = parts.count == 1 ? parts[0].1 : EncodedRows()
            if parts.count > 1 {
                rows.reserve(parts.reduce(0) { $0 + $1.1.count }, bytes: parts.reduce(0) { $0 + $1.1.body.count })
                for part in parts { rows.append(contentsOf: part.1) }
            }
            rows.source = messages
            return (rows, parts.flatMap { $0.2 }, parts.reduce(0) { $0 + $1.3 })
        }
    }

    /// Sends rows to ClickHouse and accounts for the ones it confirms.
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
        ) async -> InsertOutcome {
            let body = rows.body(of: chunk)
            // Synchronous, with a token naming the rows: a retry after a lost answer is dropped by the server.
            let settings = InsertSettings.settings(for: self.version, chunk: chunk, of: rows)
            let started = ContinuousClock.now
            do {
                try await self.clickHouse.insert(route.insertPrefix(format), body: body, settings: settings)
            } catch {
                if !error.isRetriable && error.isDataError { return .rejected(error.description) }
                return .failed(error)
            }
            let now = Timestamp.nowMillis()
            self.metrics.insertLatency.recordNanoseconds((ContinuousClock.now - started).nanoseconds)
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
    let erased = Counter(label: "sluice_loader_erased_messages_total")
}
