import CoreMetrics
import Encryption
import EventModel
import Kafka
import KafkaEnvelope
import Ledger
import Logging
import Metrics
import ServiceLifecycle
import SluiceCore
import Synchronization
import WAL

/// Drains the WAL into Kafka: one message per event (``ForwardedMessage``: value = the
/// normalized event JSON, key = `user_id`, headers `content_type`, `schema_version`, `wal_lsn`,
/// `event_id`, `gateway_id`), then moves its WAL cursor over the contiguous prefix Kafka
/// acknowledged. With a current `kafka.encryption` key the value is sealed in a
/// ``KafkaEnvelope`` (two more headers, `sluice-enc` and `sluice-kid`).
///
/// At least once: after a crash it resends from the persisted cursor, so Kafka may hold a
/// duplicate (deduplicated downstream by `event_id`), never a gap. While Kafka is down the
/// backlog simply stays in the WAL.
///
/// The rules (in-flight cap, retries and their back-off, resends, dead letters, restarting
/// after a fatal producer error, stopping) are ``ForwarderStateMachine``'s, held in one lock;
/// this class only performs what the machine decides: reads the WAL, hands messages to
/// librdkafka, writes dead letters (on a thread of their own), persists the cursor and wakes
/// the tasks the machine says may go on.
public final class Forwarder: Service, Sendable {
    typealias Machine = ForwarderStateMachine<ContinuousClock, CheckedContinuation<Void, Never>>
    /// Makes a pass's producer: `KafkaProducer.init`, or a test's wrapper that keeps it.
    typealias ProducerFactory =
        @Sendable (
            _ properties: [String: String],
            _ onDelivery: @escaping @Sendable ([DeliveryReport]) -> Void,
            _ onError: @escaping @Sendable (KafkaError) -> Void
        ) throws -> KafkaProducer

    private let wal: WAL
    private let configuration: ForwarderConfiguration
    private let logger: Logger
    private let clock = ContinuousClock()
    private let state: Mutex<Machine>
    private let deadLetters: DeadLetterFile
    private let makeProducer: ProducerFactory
    /// What the last cursor commits found: the lag, and how many commits in a row failed
    /// (logged when that starts and when it ends, not every commit interval: a WAL that lost
    /// its lock refuses them for good).
    private let commits = Mutex<(lag: ForwarderLag, failed: Int)>((ForwarderLag(), 0))
    private let metrics: ForwarderMetrics
    /// Seals values when `kafka.encryption` has a current key; nil sends them as they are.
    /// How events become messages (topic, key, headers, sealing): shared with the dead-letter
    /// resend.
    private let messages: ForwarderMessages
    /// Why the payload keys could not be read: ``run()`` throws it before sending anything.
    private let keyError: ConfigurationError?
    /// Set when a drain gave up because Kafka did not acknowledge: the stop then waits 1 s, not
    /// 10, for what is in flight (it is resent from the WAL next time).
    private let shortFlush = Atomic<Bool>(false)
    /// The ledger's bookkeeping, when `configuration.ledger` is set.
    private let ledger: Mutex<ForwarderLedger?>

    public convenience init(
        wal: WAL,
        configuration: ForwarderConfiguration,
        logger: Logger = Logger(label: "sluice.forwarder")
    ) {
        self.init(wal: wal, configuration: configuration, logger: logger) { properties, onDelivery, onError in
            try KafkaProducer(properties: properties, onDelivery: onDelivery, onError: onError)
        }
    }

    /// - Parameter metricsFactory: nil for the global `MetricsSystem` (tests pass their own).
    init(
        wal: WAL,
        configuration: ForwarderConfiguration,
        logger: Logger,
        metricsFactory: (any MetricsFactory)? = nil,
        makeProducer: @escaping ProducerFactory
    ) {
        self.wal = wal
        self.configuration = configuration
        self.logger = logger
        self.makeProducer = makeProducer
        self.metrics = ForwarderMetrics(factory: metricsFactory ?? MetricsSystem.factory)
        do throws(ConfigurationError) {
            self.messages = ForwarderMessages(
                routing: configuration.routing,
                sealer: try configuration.encryptionKeyring().flatMap { PayloadSealer(keyring: $0) }
            )
            self.keyError = nil
        } catch {
            self.messages = ForwarderMessages(routing: configuration.routing, sealer: nil)
            self.keyError = error
        }
        self.state = Mutex(Machine(policy: .init(maxInFlightEvents: configuration.maxInFlightEvents)))
        self.ledger = Mutex(configuration.ledger.map { _ in ForwarderLedger(gateway: configuration.gatewayID) })
        if let sink = configuration.ledger {
            // Damage is accepted data that will never be forwarded: the ledger must hear of it,
            // both what recovery found and what a reader finds later.
            let gateway = configuration.gatewayID
            let quarantined: @Sendable (Damage) -> Void = { damage in
                guard damage.lostEvents > 0 else { return }
                sink.record(
                    .quarantined(
                        .init(
                            gateway: gateway,
                            from: damage.firstLostLSN.rawValue,
                            to: damage.resumeLSN.rawValue,
                            reason: damage.reason,
                            atMillis: Int64(WallClock.now() / 1_000_000)
                        )
                    )
                )
            }
            for damage in wal.recovery.damage { quarantined(damage) }
            wal.observeDamage(quarantined)
        }
        self.deadLetters = DeadLetterFile(
            walDirectory: wal.configuration.directory,
            fileSystem: wal.configuration.fileSystem,
            logger: logger
        )
    }

    /// How far Kafka is behind the WAL, as of the last cursor commit (every `commitInterval`).
    public var lag: ForwarderLag { self.commits.withLock { $0.lag } }

    /// Producers replaced after a fatal error so far.
    var producerRestarts: Int { self.state.withLock { $0.restarts } }

    /// Where dead letters are kept: `<wal>/forwarder/dead-letters.ndjson`.
    var deadLetterPath: String { self.deadLetters.path }

    /// Runs until cancelled, or until a graceful shutdown: then it first drains the WAL's
    /// backlog (``drain(timeout:)``) and stops.
    public func run() async throws {
        // Never send plaintext because the keys could not be read.
        if let keyError = self.keyError { throw keyError }
        await self.deadLetters.prepare()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await withTaskCancellationHandler {
                    try await self.runPasses()
                } onCancel: {
                    self.stop()
                }
            }
            group.addTask {
                // Cancelled (a CancellationError) when the passes end first.
                try await gracefulShutdown()
                if !(await self.drain(timeout: self.configuration.drainTimeout)) {
                    self.shortFlush.store(true, ordering: .relaxed)
                }
                self.stop()
            }
            try await group.next()
            group.cancelAll()
        }
    }

    /// Waits until Kafka has acknowledged everything the WAL holds, at most `timeout`, and
    /// less when Kafka acknowledges nothing for ``ForwarderConfiguration/drainStallTimeout``.
    /// At a graceful stop the gateway's HTTP server has already stopped, so the WAL no longer
    /// grows: a scaled-down gateway leaves no backlog behind when Kafka is up. Returns whether
    /// it drained.
    @discardableResult
    func drain(timeout: Duration) async -> Bool {
        let started = self.clock.now
        let deadline = started.advanced(by: timeout)
        // Nothing is appended any more (the HTTP server stopped first, or no gateway runs).
        let end = self.wal.durableNextLSN
        var last = self.state.withLock { $0.progress?.committable }
        var lastMoved = started
        while true {
            let committable = self.state.withLock { $0.progress?.committable }
            if let committable, committable >= end {
                self.logger.info(
                    "forwarder.drained",
                    metadata: [
                        "wal.cursor": "\(committable)",
                        "event.duration": "\((self.clock.now - started).nanoseconds)",
                    ]
                )
                return true
            }
            let now = self.clock.now
            if committable != last {
                last = committable
                lastMoved = now
            }
            let stalled = now - lastMoved >= self.configuration.drainStallTimeout
            if now >= deadline || stalled {
                if timeout > .zero {
                    self.logger.warning(
                        "forwarder.drain_incomplete",
                        metadata: [
                            "wal.cursor": "\(committable ?? .zero)", "wal.end": "\(end)",
                            "reason": .string(
                                stalled
                                    ? "Kafka acknowledged nothing for \(self.configuration.drainStallTimeout)"
                                    : "forwarder.drain_timeout (\(timeout)) passed"
                            ),
                            "detail": "the rest stays in the WAL: the next start, or `sluice wal drain`, sends it",
                        ]
                    )
                }
                return false
            }
            try? await self.clock.sleep(for: .milliseconds(20))
        }
    }

    private func stop() {
        for waiter in self.state.withLock({ $0.stop() }) { waiter.resume() }
    }

    /// Each pass runs one producer from the persisted cursor; a fatal producer error starts a
    /// new pass (an idempotent producer that was fenced cannot continue).
    private func runPasses() async throws {
        while true {
            let cursor = try await self.wal.openCursor(self.configuration.cursorName)
            guard let generation = self.state.withLock({ $0.startPass(cursor: cursor.lsn) }) else { return }
            try await self.runPass(generation, from: cursor.lsn)
            switch self.state.withLock({ $0.passEnded(now: self.clock.now) }) {
            case .stop:
                return
            case .restart(let at):
                self.metrics.restarts.increment()
                // Until the restart instant, or until a stop.
                await withTaskGroup(of: Void.self) { group in
                    group.addTask { try? await self.clock.sleep(until: at) }
                    group.addTask { await self.park(.end) }
                    await group.next()
                    group.cancelAll()
                }
            }
        }
    }

    private func runPass(_ generation: Int, from start: LSN) async throws {
        let properties = self.messages.producerProperties(self.configuration)
        let producer: KafkaProducer
        do {
            producer = try self.makeProducer(
                properties,
                { [self] reports in self.handle(reports, generation: generation) },
                { [self] error in self.producerError(error) }
            )
        } catch {
            _ = self.state.withLock { $0.pumpFinished() }
            throw error
        }
        self.ledger.withLock { $0?.begin(at: start) }
        self.logger.info("forwarder.started", metadata: ["wal.cursor": "\(start)"])
        let tail = self.wal.tail(from: start)
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.commitPeriodically(tail: tail) }
            group.addTask { await self.resendLoop(generation, producer: producer) }
            group.addTask { await self.pump(generation, tail: tail, from: start, producer: producer) }
            // Returns when the pass must end: a fatal producer error, or a stop.
            group.addTask { await self.park(.end) }
            await group.next()
            for waiter in self.state.withLock({ $0.pumpFinished() }) { waiter.resume() }
            group.cancelAll()
        }
        // Intake stopped: let Kafka acknowledge what is in flight, let the dead letters of
        // this pass reach the disk, then persist the cursor.
        await producer.close(flushTimeout: self.shortFlush.load(ordering: .relaxed) ? .seconds(1) : .seconds(10))
        await self.deadLetters.flush()
        await self.commit(tail: tail)
        self.logger.info(
            "forwarder.stopped",
            metadata: ["wal.cursor": "\(self.state.withLock { $0.progress?.committable ?? start })"]
        )
    }

    /// Waits in `slot` until the machine wakes this task, or the task is cancelled.
    private func park(_ slot: Machine.Slot) async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = self.state.withLock { machine -> CheckedContinuation<Void, Never>? in
                    if Task.isCancelled { return continuation }
                    return machine.park(slot, continuation)
                }
                ready?.resume()
            }
        } onCancel: {
            self.state.withLock { $0.unpark(slot) }?.resume()
        }
    }

    /// Reads durable records and sends their events, keeping at most `maxInFlightEvents`
    /// unacknowledged; parks while the cap is reached, until deliveries make room.
    private func pump(_ generation: Int, tail: WALTail, from start: LSN, producer: KafkaProducer) async {
        var position = start
        var settled = self.configuration.ledger == nil
        do {
            while true {
                let records = try await tail.next(maxRecords: 512)
                if records.isEmpty { return }  // the WAL closed, or the pass ended
                if !settled, let event = records.first?.events.first {
                    settled = true
                    self.settleLedgerGateway(from: event)
                }
                for record in records {
                    let from = position
                    admitting: while true {
                        let admission = self.state.withLock {
                            $0.admit(
                                lsn: record.lsn,
                                events: record.events,
                                from: from,
                                timestampNanos: record.timestampNanos,
                                bytes: record.frameLength
                            )
                        }
                        switch admission {
                        case .admitted: break admitting
                        case .ending: return
                        case .full(let needed):
                            await self.park(.capacity(needed: needed))
                            if Task.isCancelled { return }
                        }
                    }
                    for (index, event) in record.events.enumerated() {
                        let lsn = record.lsn + UInt64(index)
                        guard lsn >= from else { continue }
                        guard await self.send(event, lsn: lsn, generation: generation, producer: producer) else {
                            return
                        }
                    }
                    position = record.nextLSN
                }
            }
        } catch is CancellationError {
        } catch {
            self.logger.error("forwarder.read_failed", metadata: ["error": "\(error)"])
        }
    }

    /// Sends one event, waiting (with the machine's back-off) while librdkafka's local queue
    /// is full or the cause of a refusal may pass. A message Kafka can never take is
    /// dead-lettered. False when the pass ends (a fatal producer, or cancellation).
    private func send(_ event: [UInt8], lsn: LSN, generation: Int, producer: KafkaProducer) async -> Bool {
        var refused = false
        while true {
            // The fast path stays synchronous and takes no lock: no suspension per event.
            guard let error = self.trySend(event, lsn: lsn, producer: producer) else {
                if refused { self.state.withLock { $0.sendSucceeded() } }
                self.metrics.produced.increment()
                return true
            }
            refused = true
            switch self.state.withLock({ $0.sendFailed(error, now: self.clock.now) }) {
            case .deadLetter:
                self.writeDeadLetter(event, lsn: lsn, error: error, generation: generation)
                return true
            case .retry(let at, let warn):
                if warn {
                    self.logger.warning("forwarder.send_refused", metadata: ["wal.lsn": "\(lsn)", "error": "\(error)"])
                }
                do { try await self.clock.sleep(until: at) } catch { return false }
            case .endPass(let waiters):
                for waiter in waiters { waiter.resume() }
                return false
            }
        }
    }

    /// Queues one event as ``ForwarderMessages`` makes it. The value is not copied: the
    /// delivery tracker holds every sent event until its delivery report has been handled (and
    /// a new pass starts only after the old producer was closed), so the bytes outlive
    /// librdkafka's use.
    private func trySend(_ event: [UInt8], lsn: LSN, producer: KafkaProducer) -> KafkaError? {
        self.messages.send(event, lsn: lsn, producer: producer, eventOutlivesDelivery: true)
    }

    /// Sends again what failed for a passing reason, at most one round per resend pause;
    /// parks while there is nothing to resend. librdkafka already retried these itself.
    private func resendLoop(_ generation: Int, producer: KafkaProducer) async {
        while !Task.isCancelled {
            switch self.state.withLock({ $0.nextResends(now: self.clock.now) }) {
            case .ending:
                return
            case .park:
                await self.park(.resends)
            case .sleep(let until):
                do { try await self.clock.sleep(until: until) } catch { return }
            case .send(let batch):
                self.metrics.retried.increment(by: Int64(batch.count))
                for (lsn, event) in batch {
                    // Cancelled or fatal: the cursor still covers these, the next pass resends.
                    guard await self.send(event, lsn: lsn, generation: generation, producer: producer) else { return }
                }
            }
        }
    }

    /// Delivery reports, on the producer's poll thread: only the machine's bookkeeping runs
    /// here; dead letters are handed to their own thread.
    private func handle(_ reports: [DeliveryReport], generation: Int) {
        if self.configuration.ledger != nil {
            self.ledger.withLock { ledger in
                for report in reports where report.error == nil { ledger?.delivered(report) }
            }
        }
        let outcome = self.state.withLock { $0.delivered(reports, generation: generation) }
        for waiter in outcome.wake { waiter.resume() }
        self.metrics.delivered.increment(by: Int64(outcome.delivered))
        self.metrics.failed.increment(by: Int64(outcome.failed))
        for report in reports where report.latencyMicroseconds >= 0 {
            self.metrics.latency.recordNanoseconds(report.latencyMicroseconds * 1000)
        }
        for letter in outcome.deadLetters {
            self.writeDeadLetter(letter.event, lsn: letter.lsn, error: letter.error, generation: generation)
        }
        if outcome.delivered > 0 { self.recordLedger(force: false) }
    }

    /// The ledger's identities name the gateway the events carry (the loader reads the same
    /// from their headers), not necessarily this process's: `sluice wal drain` on another host.
    private func settleLedgerGateway(from event: [UInt8]) {
        let id = ForwardedMessage(of: event).headers(in: event, walLSN: 0).first { $0.name == "gateway_id" }
            .map { String(decoding: $0.value, as: UTF8.self) }
        guard let previous = self.ledger.withLock({ $0?.settle(eventGateway: id) }) else { return }
        self.logger.warning(
            "forwarder.ledger_gateway",
            metadata: [
                "gateway.configured": "\(previous)", "gateway.events": "\(id ?? "")",
                "reason": "the WAL's events carry another gateway_id; the ledger uses theirs",
            ]
        )
    }

    /// Hands the ledger what the forwarder learnt since its last records: the WAL's end, and
    /// where the events the committable position moved over are.
    private func recordLedger(force: Bool) {
        guard let sink = self.configuration.ledger,
            let committable = self.state.withLock({ $0.progress?.committable })
        else { return }
        let walEnd = self.wal.durableNextLSN
        let now = WallClock.monotonic()
        let records = self.ledger.withLock {
            $0?.records(
                committable: committable,
                walEnd: walEnd,
                nowNanos: now,
                wallMillis: Int64(WallClock.now() / 1_000_000),
                force: force
            )
        }
        for record in records ?? [] { sink.record(record) }
    }

    /// Keeps a message Kafka will never take in the dead-letter file, then lets the cursor
    /// pass it; if it cannot be kept, it goes round again rather than being lost.
    private func writeDeadLetter(_ event: [UInt8], lsn: LSN, error: KafkaError, generation: Int) {
        self.deadLetters.write(lsn: lsn, event: event, reason: error.description) { [self] kept in
            if kept {
                self.metrics.deadLettered.increment()
                self.ledger.withLock { $0?.deadLettered(lsn: lsn, reason: error.description) }
            }
            let waiters = self.state.withLock { $0.deadLetterFinished(lsn: lsn, kept: kept, generation: generation) }
            for waiter in waiters { waiter.resume() }
        }
    }

    /// Client-level errors, on the poll thread. A fatal one ends the pass.
    private func producerError(_ error: KafkaError) {
        self.metrics.kafkaError(error)
        guard error.isFatal else {
            self.logger.warning("forwarder.kafka_error", metadata: ["error": "\(error)"])
            return
        }
        self.logger.error("forwarder.producer_fatal", metadata: ["error": "\(error)"])
        for waiter in self.state.withLock({ $0.producerFailed() }) { waiter.resume() }
    }

    private func commitPeriodically(tail: WALTail) async {
        while true {
            let next = self.clock.now.advanced(by: self.configuration.commitInterval)
            do { try await self.clock.sleep(until: next) } catch { return }
            await self.commit(tail: tail)
        }
    }

    private func commit(tail: WALTail) async {
        guard let progress = self.state.withLock({ $0.progress }) else { return }
        // Lag: what the WAL holds that Kafka has not acknowledged.
        let target = progress.committable
        let now = WallClock.now()
        let lag = ForwarderLag(
            events: self.wal.durableNextLSN - min(target, self.wal.durableNextLSN),
            bytes: tail.unreadBytes() + Int64(progress.inFlightBytes),
            oldestAgeSeconds: progress.oldestTimestampNanos.map { now > $0 ? Double(now - $0) / 1e9 : 0 } ?? 0
        )
        self.commits.withLock { $0.lag = lag }
        self.metrics.lagEvents.record(Int64(lag.events))
        self.metrics.lagBytes.record(lag.bytes)
        self.metrics.oldestAge.record(lag.oldestAgeSeconds)
        self.metrics.inFlight.record(Int64(progress.inFlight))
        // The ledger hears of what is in Kafka before the cursor moves over it.
        self.recordLedger(force: true)
        let current = self.wal.cursor(self.configuration.cursorName)?.lsn ?? .zero
        guard target > current else { return }
        do {
            try await self.wal.commitCursor(self.configuration.cursorName, to: target)
            let failed = self.commits.withLock { commits in
                defer { commits.failed = 0 }
                return commits.failed
            }
            if failed > 0 {
                self.logger.info(
                    "forwarder.cursor_commit_recovered",
                    metadata: ["forwarder.failed_commits": "\(failed)"]
                )
            }
        } catch {
            let first = self.commits.withLock { commits in
                commits.failed += 1
                return commits.failed == 1
            }
            if first {
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
    let factory: any MetricsFactory
    let produced: Counter
    let delivered: Counter
    let retried: Counter
    let deadLettered: Counter
    let restarts: Counter
    let failed: Counter
    let latency: Timer
    let lagEvents: Gauge
    let lagBytes: Gauge
    let oldestAge: Gauge
    let inFlight: Gauge

    init(factory: any MetricsFactory) {
        self.factory = factory
        self.produced = Counter(label: "sluice_forwarder_produced_messages_total", factory: factory)
        self.delivered = Counter(label: "sluice_forwarder_delivered_messages_total", factory: factory)
        self.retried = Counter(label: "sluice_forwarder_retried_messages_total", factory: factory)
        self.deadLettered = Counter(label: "sluice_forwarder_dead_lettered_messages_total", factory: factory)
        self.restarts = Counter(label: "sluice_forwarder_producer_restarts_total", factory: factory)
        self.failed = Counter(label: "sluice_forwarder_failed_deliveries_total", factory: factory)
        self.latency = Timer(label: "sluice_forwarder_delivery_latency_seconds", factory: factory)
        self.lagEvents = Gauge(label: "sluice_forwarder_wal_lag_events", factory: factory)
        self.lagBytes = Gauge(label: "sluice_forwarder_wal_lag_bytes", factory: factory)
        self.oldestAge = Gauge(label: "sluice_forwarder_oldest_unforwarded_age_seconds", factory: factory)
        self.inFlight = Gauge(label: "sluice_forwarder_in_flight_messages", factory: factory)
    }

    /// Counts a client-level error by kind: a TLS or authentication failure, a broker that
    /// cannot be reached, … (`sluice_forwarder_kafka_errors_total{kind}`). While the brokers
    /// are unreachable or untrusted nothing is acknowledged and the cursor stays where it is;
    /// this counter is what says why.
    func kafkaError(_ error: KafkaError) {
        Counter(
            label: "sluice_forwarder_kafka_errors_total",
            dimensions: [("kind", Self.kind(of: error))],
            factory: self.factory
        ).increment()
    }

    /// The `kind` label: a fixed set, so an unexpected error cannot make new series.
    static func kind(of error: KafkaError) -> String {
        if error.isFatal { return "fatal" }
        switch error.code {
        case .ssl: return "tls"
        case .authentication: return "authentication"
        case .transport: return "transport"
        case .allBrokersDown: return "all_brokers_down"
        case .resolve: return "resolve"
        case .timedOut, .messageTimedOut, .requestTimedOut: return "timeout"
        case .topicAuthorizationFailed, .clusterAuthorizationFailed, .transactionalIDAuthorizationFailed:
            return "authorization"
        default: return "other"
        }
    }
}
