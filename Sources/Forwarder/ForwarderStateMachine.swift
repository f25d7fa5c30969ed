import Kafka
import WAL

/// How long to wait before the next attempt after `attempt` failures in a row: `first`,
/// then doubling up to `maximum`. No jitter: one forwarder retries against its own
/// producer's queue and brokers, there is no herd to spread.
struct Backoff: Sendable, Equatable {
    var first: Duration
    var maximum: Duration

    /// The pause after the `attempt`-th failure in a row (1-based).
    func delay(afterFailures attempt: Int) -> Duration {
        var delay = self.first
        var doublings = max(0, attempt - 1)
        while doublings > 0 && delay < self.maximum {
            delay *= 2
            doublings -= 1
        }
        return min(delay, self.maximum)
    }
}

/// The forwarder's rules, with no I/O and no clock of its own: which WAL records may be sent
/// (the in-flight cap), what a failed send or delivery becomes (retry after a back-off,
/// resend, dead letter, new producer), how far the cursor may move (``DeliveryTracker``),
/// and the life of a pass (running, ending, restarting, stopped).
///
/// One instance lives in the ``Forwarder``'s one lock. Every event is a mutating call that
/// returns what the shell must do; the shell does it after releasing the lock. `Waiter` is
/// what a parked task is woken with (the shell's continuations; a plain value in tests), and
/// the instants come from the shell's clock `C` (a test clock in tests), so every rule here,
/// the back-off curve included, is checked without brokers, disks or sleeps.
///
/// A *pass* is one producer's life: it starts at the persisted cursor, and ends when the WAL
/// closes, the service stops, or the producer reports a fatal error. Only the last restarts
/// (after ``Policy/restartDelay``): an idempotent producer that was fenced cannot continue,
/// and a new one resends everything from the cursor, which never passed an undelivered event.
struct ForwarderStateMachine<C: Clock, Waiter> where C.Duration == Duration {
    typealias Instant = C.Instant

    struct Policy: Sendable, Equatable {
        /// Events sent and not yet acknowledged, at most (a single record larger than this
        /// still goes, alone).
        var maxInFlightEvents: Int
        /// The pause before sending again after a retriable refusal (full local queue,
        /// brokers down, authorization not granted yet), growing while refusals continue.
        var retry = Backoff(first: .milliseconds(10), maximum: .seconds(1))
        /// The pause after a refusal that is neither retriable nor permanent (librdkafka
        /// could not say): long, and logged once.
        var refusedPause: Duration = .seconds(1)
        /// The least time between two rounds of resending failed deliveries: librdkafka has
        /// already retried these, so a broker that refuses everything is not hammered.
        var resendPause: Duration = .milliseconds(200)
        /// Between the end of a pass that failed fatally and the start of the next.
        var restartDelay: Duration = .seconds(1)
    }

    enum Phase: Equatable {
        /// No pass has started yet.
        case idle
        case running
        /// The pass must end: nothing new is sent, but delivery reports (of the producer's
        /// final flush) still count until ``passEnded(now:)``. `fatal`: a new pass follows.
        case ending(fatal: Bool)
        /// Waiting until the instant to start a new pass after a fatal error.
        case restarting(until: Instant)
        case stopped
    }

    /// Where a task can wait. At most one task waits in each.
    enum Slot: Equatable, Sendable {
        /// The pump, until `needed` more events fit under the in-flight cap.
        case capacity(needed: Int)
        /// The resend loop, until a delivery fails.
        case resends
        /// The pass's watcher, until the pass must end; between passes, until a stop.
        case end
    }

    enum Admission: Equatable {
        /// Registered: send its events.
        case admitted
        /// Sending it would exceed the cap: wait in ``Slot/capacity(needed:)``, then try again.
        case full(needed: Int)
        /// The pass is ending: send nothing more.
        case ending
    }

    enum SendFailure {
        /// Kafka will never take this event: write it to the dead letters, and report the
        /// outcome with ``deadLetterFinished(lsn:kept:generation:)``.
        case deadLetter
        /// Try the same event again at `at`; `warn`: log it (the first of a run of failures).
        case retry(at: Instant, warn: Bool)
        /// The producer is unusable: stop sending, wake `waiters`.
        case endPass(wake: [Waiter])
    }

    enum ResendAction {
        /// Send these events again (LSN order) with the normal send path.
        case send([(lsn: LSN, event: [UInt8])])
        /// Nothing to resend yet: wait in ``Slot/resends``.
        case park
        /// The previous round was too recent: sleep until `until`.
        case sleep(until: Instant)
        /// The pass is ending.
        case ending
    }

    struct DeadLetter: Sendable {
        var lsn: LSN
        var event: [UInt8]
        var error: KafkaError
    }

    struct DeliveryOutcome {
        var delivered = 0
        /// Reports with an error for an event still in flight (resent or dead-lettered).
        var failed = 0
        var deadLetters: [DeadLetter] = []
        var wake: [Waiter] = []
    }

    enum AfterPass: Equatable {
        case restart(at: Instant)
        case stop
    }

    /// What the cursor commit and the lag metrics need.
    struct Progress: Equatable {
        var committable: LSN
        var inFlight: Int
        var inFlightBytes: Int
        var oldestTimestampNanos: UInt64?
    }

    private struct Pass {
        let generation: Int
        var tracker: DeliveryTracker
        /// Failed deliveries waiting for the resend loop.
        var resends: [(lsn: LSN, event: [UInt8])] = []
        /// The next resend round may start at this instant, not before.
        var nextResendRound: Instant?
        /// Send refusals in a row (for the back-off), reset by a successful send.
        var refusals = 0
    }

    let policy: Policy
    private(set) var phase: Phase = .idle
    private var pass: Pass?
    private var stopRequested = false
    private var generation = 0
    /// Passes ended by a fatal producer error so far.
    private(set) var restarts = 0
    private var capacityWaiter: (waiter: Waiter, needed: Int)?
    private var resendWaiter: Waiter?
    private var endWaiter: Waiter?

    init(policy: Policy) { self.policy = policy }

    // MARK: Pass lifecycle

    /// A new pass starts, reading from the persisted `cursor`. Returns its generation (to tag
    /// its delivery reports with), or nil when the forwarder is stopping.
    mutating func startPass(cursor: LSN) -> Int? {
        switch self.phase {
        case .idle, .restarting:
            guard !self.stopRequested else {
                self.phase = .stopped
                return nil
            }
            self.generation += 1
            self.pass = Pass(generation: self.generation, tracker: DeliveryTracker(cursor: cursor))
            self.phase = .running
            return self.generation
        case .running, .ending, .stopped:
            // A pass is still on, or the forwarder is done: start nothing.
            return nil
        }
    }

    /// The producer reported a fatal error (its own callback, or a send refused with one).
    mutating func producerFailed() -> [Waiter] { self.endPass(fatal: true) }

    /// The pump stopped (the WAL closed, or reading failed): the pass ends, no new one follows.
    mutating func pumpFinished() -> [Waiter] { self.endPass(fatal: false) }

    /// Graceful shutdown or cancellation: end the pass, start no other.
    mutating func stop() -> [Waiter] {
        self.stopRequested = true
        switch self.phase {
        case .idle:
            self.phase = .stopped
            return []
        case .running:
            return self.endPass(fatal: false)
        case .ending:
            return self.wakeAll()
        case .restarting:
            self.phase = .stopped
            return self.wakeAll()
        case .stopped:
            return []
        }
    }

    /// The pass's producer is closed (its last reports counted), the cursor committed, and
    /// every task of the pass has returned (so none waits in a slot).
    mutating func passEnded(now: Instant) -> AfterPass {
        let fatal = self.phase == .ending(fatal: true)
        self.pass = nil
        guard fatal && !self.stopRequested else {
            self.phase = .stopped
            return .stop
        }
        self.restarts += 1
        let at = now.advanced(by: self.policy.restartDelay)
        self.phase = .restarting(until: at)
        return .restart(at: at)
    }

    private mutating func endPass(fatal: Bool) -> [Waiter] {
        switch self.phase {
        case .running:
            self.phase = .ending(fatal: fatal)
            return self.wakeAll()
        case .ending(let wasFatal):
            self.phase = .ending(fatal: wasFatal || fatal)
            return self.wakeAll()
        case .idle, .restarting, .stopped:
            return []
        }
    }

    private mutating func wakeAll() -> [Waiter] {
        var waiters: [Waiter] = []
        if let parked = self.capacityWaiter { waiters.append(parked.waiter) }
        if let waiter = self.resendWaiter { waiters.append(waiter) }
        if let waiter = self.endWaiter { waiters.append(waiter) }
        self.capacityWaiter = nil
        self.resendWaiter = nil
        self.endWaiter = nil
        return waiters
    }

    // MARK: Waiting

    /// Parks `waiter` in `slot`; returns it right back when there is nothing to wait for.
    mutating func park(_ slot: Slot, _ waiter: Waiter) -> Waiter? {
        switch slot {
        case .capacity(let needed):
            guard self.phase == .running, !self.fits(needed) else { return waiter }
            self.capacityWaiter = (waiter, needed)
        case .resends:
            guard self.phase == .running, self.pass?.resends.isEmpty ?? false else { return waiter }
            self.resendWaiter = waiter
        case .end:
            switch self.phase {
            case .running, .restarting: self.endWaiter = waiter
            case .idle, .ending, .stopped: return waiter
            }
        }
        return nil
    }

    /// Takes a parked waiter back (its task was cancelled).
    mutating func unpark(_ slot: Slot) -> Waiter? {
        switch slot {
        case .capacity:
            defer { self.capacityWaiter = nil }
            return self.capacityWaiter?.waiter
        case .resends:
            defer { self.resendWaiter = nil }
            return self.resendWaiter
        case .end:
            defer { self.endWaiter = nil }
            return self.endWaiter
        }
    }

    // MARK: Sending

    private func fits(_ needed: Int) -> Bool {
        guard let tracker = self.pass?.tracker else { return true }
        return tracker.inFlight == 0 || tracker.inFlight + needed <= self.policy.maxInFlightEvents
    }

    /// The pump read a record and asks to send its events from `from` on (those below were
    /// forwarded before). Admitted, it counts as in flight until every event is delivered or
    /// dead-lettered.
    mutating func admit(
        lsn: LSN,
        events: [[UInt8]],
        from: LSN,
        timestampNanos: UInt64 = 0,
        bytes: Int = 0
    ) -> Admission {
        guard self.phase == .running else { return .ending }
        let skipped = from > lsn ? min(Int(from - lsn), events.count) : 0
        let needed = events.count - skipped
        guard self.fits(needed) else { return .full(needed: needed) }
        self.pass!.tracker.sent(lsn: lsn, events: events, from: from, timestampNanos: timestampNanos, bytes: bytes)
        return .admitted
    }

    /// librdkafka refused to queue an event (``KafkaProducer/send(topic:key:value:valueOutlivesDelivery:headers:id:)``).
    mutating func sendFailed(_ error: KafkaError, now: Instant) -> SendFailure {
        guard self.phase == .running else { return .endPass(wake: []) }
        if error.isFatal { return .endPass(wake: self.producerFailed()) }
        if error.isPermanent { return .deadLetter }
        self.pass!.refusals += 1
        let refusals = self.pass!.refusals
        if error.isRetriable {
            return .retry(
                at: now.advanced(by: self.policy.retry.delay(afterFailures: refusals)),
                warn: refusals == 1 && error.code != .queueFull
            )
        }
        return .retry(at: now.advanced(by: self.policy.refusedPause), warn: refusals == 1)
    }

    /// A send went through after refusals: the back-off starts from the beginning next time.
    mutating func sendSucceeded() {
        self.pass?.refusals = 0
    }

    // MARK: Delivery

    /// Delivery reports of the pass `generation` (message id = the event's LSN), in any order.
    /// A failure is resent unless Kafka can never take the message: only then is it
    /// dead-lettered. Reports of an earlier pass are ignored: the new pass resends everything
    /// its cursor does not cover.
    mutating func delivered(_ reports: [DeliveryReport], generation: Int) -> DeliveryOutcome {
        var outcome = DeliveryOutcome()
        guard self.pass?.generation == generation else { return outcome }
        for report in reports {
            let lsn = LSN(report.id)
            if let error = report.error {
                guard let event = self.pass!.tracker.event(lsn) else { continue }
                outcome.failed += 1
                if error.isPermanent {
                    outcome.deadLetters.append(DeadLetter(lsn: lsn, event: event, error: error))
                } else {
                    self.pass!.resends.append((lsn, event))
                }
            } else if self.pass!.tracker.delivered(lsn) {
                outcome.delivered += 1
            }
        }
        outcome.wake = self.wakeReady()
        return outcome
    }

    /// The dead letter of event `lsn` was written and fsynced (`kept`), so the cursor may pass
    /// it; or it could not be, and the event goes round again rather than being lost.
    mutating func deadLetterFinished(lsn: LSN, kept: Bool, generation: Int) -> [Waiter] {
        guard self.pass?.generation == generation else { return [] }
        if kept {
            self.pass!.tracker.delivered(lsn)
        } else if let event = self.pass!.tracker.event(lsn) {
            self.pass!.resends.append((lsn, event))
        }
        return self.wakeReady()
    }

    /// Wakes the pump when its record now fits, and the resend loop when there is work.
    private mutating func wakeReady() -> [Waiter] {
        guard self.phase == .running else { return [] }
        var waiters: [Waiter] = []
        if let parked = self.capacityWaiter, self.fits(parked.needed) {
            waiters.append(parked.waiter)
            self.capacityWaiter = nil
        }
        if let waiter = self.resendWaiter, !(self.pass?.resends.isEmpty ?? true) {
            waiters.append(waiter)
            self.resendWaiter = nil
        }
        return waiters
    }

    /// The resend loop asks for its next round: every failed delivery still in flight, in
    /// LSN order (per key the order the WAL holds), each once.
    mutating func nextResends(now: Instant) -> ResendAction {
        guard self.phase == .running else { return .ending }
        guard !self.pass!.resends.isEmpty else { return .park }
        if let next = self.pass!.nextResendRound, now < next { return .sleep(until: next) }
        let pending = self.pass!.resends
        self.pass!.resends.removeAll(keepingCapacity: true)
        var batch: [(lsn: LSN, event: [UInt8])] = []
        var seen = Set<LSN>()
        for entry in pending.sorted(by: { $0.lsn < $1.lsn })
        where seen.insert(entry.lsn).inserted && self.pass!.tracker.event(entry.lsn) != nil {
            batch.append(entry)
        }
        guard !batch.isEmpty else { return .park }
        self.pass!.nextResendRound = now.advanced(by: self.policy.resendPause)
        return .send(batch)
    }

    // MARK: Progress

    /// The running (or ending) pass's position; nil between passes.
    var progress: Progress? {
        self.pass.map {
            Progress(
                committable: $0.tracker.committable,
                inFlight: $0.tracker.inFlight,
                inFlightBytes: $0.tracker.inFlightBytes,
                oldestTimestampNanos: $0.tracker.oldestTimestampNanos
            )
        }
    }
}
