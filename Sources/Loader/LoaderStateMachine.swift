import ClickHouse
import Kafka

/// What the insert of a chunk of rows came to.
enum InsertOutcome: Sendable {
    /// ClickHouse confirmed every row of the chunk.
    case inserted
    /// ClickHouse refused the rows themselves (a value it cannot parse): halve and retry.
    case rejected(String)
    /// Anything else (down, slow, overloaded, misconfigured): back off and retry, unchanged.
    case failed(ClickHouseError)
}

/// The loader's delivery rules, without I/O: events go in (polls, encoded batches, insert
/// outcomes, dead-letter verdicts, commits, ticks, shutdown), actions come out (poll, pause,
/// resume, encode, insert, retry after, send dead letters, commit). ``Loader`` is the shell that
/// performs the actions and reports their results as events.
///
/// The rules it owns:
/// - **Batching.** Each route's messages gather in a batch that is due at `batchRows` rows,
///   `batchBytes` bytes, or when its oldest message waited `batchAge` (read from the clock);
///   it is cut at exactly that size and encoded while the batch before it is being inserted.
/// - **One insert at a time; commit in insert order.** Batches are inserted one after the
///   other, in the order they were cut; a batch's offsets are committed only after all its
///   rows were confirmed (or isolated, below) and after every batch inserted before it was
///   committed. At most ``maxUncommitted`` inserted batches wait for their commit; the next
///   insert waits for room.
/// - **Back-off.** A failed insert is retried, unchanged, after ``Backoff``'s delay (with the
///   injected jitter); the delay doubles up to `retryMax` and starts again after a success.
/// - **Row isolation.** A chunk whose rows ClickHouse refuses is halved until each refused row
///   is alone; such rows become dead letters, the rest is inserted.
/// - **Dead letters before the commit.** A batch's dead letters (messages that failed
///   validation, rows refused) are sent and acknowledged before its offsets are committed;
///   those that fail are sent again after a back-off, and until they are all acknowledged
///   nothing from that batch on is committed.
/// - **Rebalances.** A revoked partition's messages that wait (in a batch filling, encoding or
///   waiting for its insert) are dropped — they belong to the next owner — and messages of
///   partitions not owned are not taken. An insert running during the revoke completes, but
///   commits nothing for that partition, even if it was assigned back meanwhile (the new
///   owner's generation starts from the committed offset), and sends none of its dead letters.
/// - **Bounded backlog; pause and resume.** A route holds at most: the batch being inserted,
///   the next batch (encoding or encoded), and one batch filling. When that one is full too,
///   consumption stops: the next poll waits for the running insert (or commit) to report —
///   or, while only a back-off timer runs, the polls go on (they serve the group and end the
///   back-off) with the full routes' partitions paused. Those are resumed as soon as their
///   backlog has room.
/// - **Shutdown.** No more polls; what is buffered is cut and inserted, each insert tried once;
///   after a failed insert or dead letter nothing more is inserted or committed.
///
/// Not thread-safe: one task owns it (the shell's run loop).
struct LoaderStateMachine<C: Clock> where C.Duration == Duration {
    typealias BatchID = UInt64

    /// Inserted batches that may wait for their dead letters and commit at once; while that
    /// many wait, the next insert does not start. Two lets the next insert start while the
    /// previous batch's commit runs, and bounds what is inserted but not committed.
    static var maxUncommitted: Int { 2 }

    // MARK: - Actions

    /// What the shell must do.
    enum Action {
        /// Poll the consumer once and report ``LoaderStateMachine/polled(_:)``. Until shutdown
        /// a poll runs at all times, except while a full backlog waits for a running action.
        case poll
        /// Stop fetching these partitions (their route's backlog is full during a back-off).
        case pause([TopicPartition])
        /// Fetch these partitions again.
        case resume([TopicPartition])
        /// Encode a batch's messages into rows and report ``LoaderStateMachine/encoded(_:rows:invalid:)``.
        case encode(EncodeRequest)
        /// Insert a chunk of a batch's rows and report ``LoaderStateMachine/insertFinished(_:chunk:outcome:)``.
        case insert(InsertRequest)
        /// The insert of `rows` rows of `topic`'s route failed with `error`; it is retried on the
        /// first tick at least `after` from now (for the log and the retry counter).
        case retryInsert(topic: String, after: Duration, rows: Int, error: ClickHouseError)
        /// Send these dead letters and report ``LoaderStateMachine/deadLettersSent(_:failed:)``.
        case sendDeadLetters(DeadLetterRequest)
        /// `messages` dead letters were not acknowledged; they are sent again on the first tick
        /// at least `after` from now (for the log).
        case retryDeadLetters(after: Duration, messages: Int)
        /// Commit these offsets (the next offset to read per partition) and report
        /// ``LoaderStateMachine/committed(_:)``, whether the commit succeeded or not.
        case commit(CommitRequest)
    }

    struct EncodeRequest: Sendable {
        var id: BatchID
        var topic: String
        var messages: ArraySlice<ConsumedMessage>
    }

    struct InsertRequest: Sendable {
        var id: BatchID
        var topic: String
        var rows: EncodedRows
        /// The rows to insert: all of them, or a half of a refused chunk.
        var chunk: Range<Int>
    }

    struct DeadLetterRequest: Sendable {
        var id: BatchID
        var topic: String
        var letters: [DeadLetter]
    }

    struct CommitRequest: Sendable {
        var id: BatchID
        var offsets: [TopicPartition: Int64]
    }

    // MARK: - State

    /// Messages of one route waiting to be cut into a batch.
    struct Batch {
        var messages: [ConsumedMessage] = []
        var bytes = 0
        /// When the oldest message arrived; nil when empty.
        var firstArrival: C.Instant?

        mutating func append(_ message: ConsumedMessage, at now: C.Instant) {
            if self.messages.isEmpty { self.firstArrival = now }
            self.messages.append(message)
            self.bytes += message.value.count
        }

        /// Takes the first messages, up to `rows` of them and until they reach `bytes` (one at
        /// least); the rest stay, as a batch that starts `now`. Batches are then as large as
        /// configured, not that plus the rest of the last poll.
        mutating func take(rows: Int, bytes: Int, now: C.Instant) -> ArraySlice<ConsumedMessage> {
            var count = 0
            var size = 0
            while count < self.messages.count && count < max(1, rows) && size < max(1, bytes) {
                size += self.messages[count].value.count
                count += 1
            }
            let all = self.messages
            self.messages = Array(all[count...])
            self.bytes -= size
            self.firstArrival = self.messages.isEmpty ? nil : now
            return all[..<count]
        }

        /// Drops the messages of `partitions`.
        mutating func remove(_ partitions: Set<TopicPartition>) {
            self.messages.removeAll { partitions.contains($0.topicPartition) }
            self.bytes = self.messages.reduce(0) { $0 + $1.value.count }
            if self.messages.isEmpty { self.firstArrival = nil }
        }

        /// Puts older messages back in front.
        mutating func prepend(_ older: [ConsumedMessage], at now: C.Instant) {
            guard !older.isEmpty else { return }
            self.messages = older + self.messages
            self.bytes += older.reduce(0) { $0 + $1.value.count }
            self.firstArrival = min(self.firstArrival ?? now, now)
        }
    }

    /// A batch cut from a route's messages, waiting for its insert: encoding (`rows` nil) or encoded.
    private struct Queued {
        var id: BatchID
        var topic: String
        var messages: ArraySlice<ConsumedMessage>
        var offsets: [TopicPartition: Int64]
        var generations: [TopicPartition: UInt64]
        var rows: EncodedRows?
        var invalid: [DeadLetter] = []
    }

    /// The batch whose rows are being inserted, chunk by chunk.
    private struct Inserting {
        var id: BatchID
        var topic: String
        var rows: EncodedRows
        var offsets: [TopicPartition: Int64]
        var generations: [TopicPartition: UInt64]
        var deadLetters: [DeadLetter]
        /// Chunks still to insert; the last is next.
        var pending: [Range<Int>]
        /// The chunk whose insert runs.
        var current: Range<Int>?
        /// When the failed chunk (the last of `pending`) is tried again.
        var retryAt: C.Instant?
        var backoff: Backoff
    }

    /// A batch whose rows are all in ClickHouse: its dead letters go out, then its commit.
    private struct Finishing {
        enum Step {
            /// Nothing started: dead letters (if any), then the commit.
            case ready
            case sendingDeadLetters
            /// Some dead letters failed; they go again at this time.
            case resendingAt(C.Instant)
            /// Every dead letter was acknowledged: the commit may go.
            case deadLettersDone
            case committing
        }
        var id: BatchID
        var topic: String
        var offsets: [TopicPartition: Int64]
        var generations: [TopicPartition: UInt64]
        var deadLetters: [DeadLetter]
        var step = Step.ready
        var backoff: Backoff
    }

    private let clock: C
    private let batchRows: Int
    private let batchBytes: Int
    private let batchAge: Duration
    private let retryInitial: Duration
    private let retryMax: Duration
    private let jitter: () -> Double

    /// The routes' topics; messages of other topics have nowhere to go.
    private let topics: [String]
    private var buffers: [String: Batch] = [:]
    private var queue: [Queued] = []
    private var inserting: Inserting?
    /// In insert order; only the first one sends dead letters or commits.
    private var finishing: [Finishing] = []
    /// Owned partitions and the generation of their assignment: a batch commits a partition's
    /// offset only if that partition is still owned under the generation its messages came in.
    private var owned: [TopicPartition: UInt64] = [:]
    private var nextGeneration: UInt64 = 1
    private var paused: Set<TopicPartition> = []
    private var pollInFlight = false
    private var stopping = false
    private var nextID: BatchID = 1

    /// - Parameters:
    ///   - clock: where batch ages and retry times are read.
    ///   - jitter: the fraction (0...1) of each back-off step beyond its half.
    init(
        configuration: LoaderConfiguration,
        clock: C,
        jitter: @escaping () -> Double = { Double.random(in: 0...1) }
    ) {
        self.clock = clock
        self.batchRows = configuration.batchRows
        self.batchBytes = configuration.batchBytes
        self.batchAge = configuration.batchAge
        self.retryInitial = configuration.retryInitial
        self.retryMax = max(configuration.retryMax, configuration.retryInitial)
        self.jitter = jitter
        self.topics = configuration.routes.map(\.topic)
    }

    // MARK: - Queries

    /// Shutting down and nothing left to do: every batch was inserted and committed, or given up.
    var isFinished: Bool {
        self.stopping && !self.pollInFlight && self.buffers.values.allSatisfy(\.messages.isEmpty)
            && self.queue.isEmpty && self.inserting == nil && self.finishing.isEmpty
    }

    /// Partitions owned now.
    var ownedPartitions: Set<TopicPartition> { Set(self.owned.keys) }

    /// Partitions paused now.
    var pausedPartitions: Set<TopicPartition> { self.paused }

    /// Messages held in memory, per route: buffered, cut, being inserted (for tests and gauges).
    func heldMessages(_ topic: String) -> Int {
        (self.buffers[topic]?.messages.count ?? 0)
            + self.queue.filter { $0.topic == topic }.reduce(0) { $0 + $1.messages.count }
            + (self.inserting?.topic == topic ? self.inserting?.rows.source.count ?? 0 : 0)
    }

    // MARK: - Events

    /// The loop starts: the first poll.
    mutating func start() -> [Action] { self.advance() }

    /// A poll returned: its messages and rebalances, applied in the order they happened.
    mutating func polled(_ poll: ConsumerPoll) -> [Action] {
        self.pollInFlight = false
        var actions: [Action] = []
        let now = self.clock.now
        for event in poll.events {
            switch event {
            case .revoked(let partitions):
                self.revoke(Set(partitions), now: now, into: &actions)
            case .assigned(let partitions):
                for partition in partitions {
                    self.owned[partition] = self.nextGeneration
                    self.nextGeneration += 1
                }
            case .messages(let messages):
                for message in messages {
                    // Only what this member owns: a message of a partition revoked since it
                    // was fetched belongs to the next owner, who reads it again from the
                    // committed offset — even if the partition was assigned back later in
                    // the same poll.
                    guard self.owned[message.topicPartition] != nil, self.topics.contains(message.topic) else {
                        continue
                    }
                    self.buffers[message.topic, default: Batch()].append(message, at: now)
                }
            }
        }
        return actions + self.advance()
    }

    /// Time passed: batches may be due by age, a retry may be due.
    mutating func tick() -> [Action] { self.advance() }

    /// A batch was encoded: `rows` for the messages that became rows, `invalid` for the others.
    mutating func encoded(_ id: BatchID, rows: EncodedRows, invalid: [DeadLetter]) -> [Action] {
        // A batch dropped meanwhile (revoke, shutdown failure) is not found: nothing to do.
        if let index = self.queue.firstIndex(where: { $0.id == id }) {
            self.queue[index].rows = rows
            self.queue[index].invalid = invalid
        }
        return self.advance()
    }

    /// The insert of `chunk` of batch `id` finished.
    mutating func insertFinished(_ id: BatchID, chunk: Range<Int>, outcome: InsertOutcome) -> [Action] {
        guard var batch = self.inserting, batch.id == id, batch.current == chunk else { return self.advance() }
        batch.current = nil
        var actions: [Action] = []
        switch outcome {
        case .inserted:
            batch.backoff.reset()
        case .rejected(let reason):
            if chunk.count == 1 {
                batch.deadLetters.append(DeadLetter(message: batch.rows.message(chunk.lowerBound), reason: reason))
            } else {
                // Halve until the rows ClickHouse refuses are alone; the first half goes first.
                let middle = chunk.lowerBound + chunk.count / 2
                batch.pending.append(middle..<chunk.upperBound)
                batch.pending.append(chunk.lowerBound..<middle)
            }
        case .failed(let error):
            if self.stopping {
                // One try on the way out: this batch and everything after it is the next owner's.
                self.inserting = nil
                self.abandonQueued()
                return self.advance()
            }
            batch.pending.append(chunk)
            let delay = batch.backoff.next()
            batch.retryAt = self.clock.now.advanced(by: delay)
            actions.append(.retryInsert(topic: batch.topic, after: delay, rows: chunk.count, error: error))
        }
        self.inserting = batch
        self.insertNextChunk(into: &actions)
        return actions + self.advance()
    }

    /// The dead letters of batch `id` were sent; `failed` were not acknowledged.
    mutating func deadLettersSent(_ id: BatchID, failed: [DeadLetter]) -> [Action] {
        guard var head = self.finishing.first, head.id == id, case .sendingDeadLetters = head.step else {
            return self.advance()
        }
        var actions: [Action] = []
        if failed.isEmpty {
            head.deadLetters = []
            head.step = .deadLettersDone
        } else if self.stopping {
            // Not all acknowledged on the way out: this batch, and every later one, stays
            // uncommitted (committing a later one would skip this one's offsets).
            self.finishing.removeAll()
            self.inserting = nil
            self.abandonQueued()
            return self.advance()
        } else {
            head.deadLetters = failed
            let delay = head.backoff.next()
            head.step = .resendingAt(self.clock.now.advanced(by: delay))
            actions.append(.retryDeadLetters(after: delay, messages: failed.count))
        }
        self.finishing[0] = head
        return actions + self.advance()
    }

    /// The commit of batch `id` returned (successful or not: a failed commit is covered by a
    /// later one, or its messages are read and folded again).
    mutating func committed(_ id: BatchID) -> [Action] {
        if let head = self.finishing.first, head.id == id, case .committing = head.step {
            self.finishing.removeFirst()
        }
        return self.advance()
    }

    /// Stop consuming; insert what is buffered, each insert tried once.
    mutating func shutdown() -> [Action] {
        guard !self.stopping else { return [] }
        self.stopping = true
        if let head = self.finishing.first, case .resendingAt = head.step {
            // Dead letters not acknowledged: nothing from this batch on may be committed.
            self.finishing.removeAll()
            self.inserting = nil
            self.abandonQueued()
        } else if self.inserting?.retryAt != nil {
            // Waiting out a back-off: ClickHouse failed; the next owner inserts this batch.
            self.inserting = nil
            self.abandonQueued()
        }
        return self.advance()
    }

    // MARK: - Rules

    /// Drops the waiting work of `revoked`; batches already cut put their other messages back.
    private mutating func revoke(_ revoked: Set<TopicPartition>, now: C.Instant, into actions: inout [Action]) {
        for partition in revoked { self.owned[partition] = nil }
        // A paused partition that comes back must not stay paused by a decision taken for the
        // old assignment.
        let wasPaused = self.paused.intersection(revoked)
        if !wasPaused.isEmpty {
            self.paused.subtract(wasPaused)
            actions.append(.resume(wasPaused.sorted()))
        }
        for topic in self.buffers.keys { self.buffers[topic]?.remove(revoked) }
        var kept: [Queued] = []
        for batch in self.queue {
            guard batch.messages.contains(where: { revoked.contains($0.topicPartition) }) else {
                kept.append(batch)
                continue
            }
            // Cut before the revoke: cut again without the revoked partitions' messages.
            let mine = batch.messages.filter { !revoked.contains($0.topicPartition) }
            self.buffers[batch.topic, default: Batch()].prepend(mine, at: now)
        }
        self.queue = kept
    }

    /// Everything not yet inserted goes (the batches being finished were inserted before).
    private mutating func abandonQueued() {
        self.queue.removeAll()
        self.buffers.removeAll()
    }

    private func isDue(_ batch: Batch, now: C.Instant) -> Bool {
        guard let first = batch.firstArrival else { return false }
        return batch.messages.count >= self.batchRows || batch.bytes >= self.batchBytes
            || first.duration(to: now) >= self.batchAge
    }

    private func isFull(_ batch: Batch) -> Bool {
        batch.messages.count >= self.batchRows || batch.bytes >= self.batchBytes
    }

    private func stillOwned(_ partition: TopicPartition, _ generations: [TopicPartition: UInt64]) -> Bool {
        guard let generation = self.owned[partition] else { return false }
        return generations[partition] == generation
    }

    /// Everything the state now allows, in order: a due retry, the oldest finishing batch's
    /// next step, the next insert, due batches cut, pauses and resumes, the next poll.
    private mutating func advance() -> [Action] {
        var actions: [Action] = []
        let now = self.clock.now
        if var batch = self.inserting, let retryAt = batch.retryAt, now >= retryAt {
            batch.retryAt = nil
            self.inserting = batch
            self.insertNextChunk(into: &actions)
        }
        var progressed = true
        while progressed {
            self.finishHead(now: now, into: &actions)
            progressed = self.startInsert(into: &actions)
            progressed = self.cutDueBatches(now: now, into: &actions) || progressed
        }
        if !self.stopping { self.pauseOrResumeAndPoll(into: &actions) }
        return actions
    }

    /// Sends the next chunk of the batch being inserted, or moves it to `finishing` when done.
    private mutating func insertNextChunk(into actions: inout [Action]) {
        guard var batch = self.inserting, batch.current == nil, batch.retryAt == nil else { return }
        while let chunk = batch.pending.popLast() {
            guard !chunk.isEmpty else { continue }
            batch.current = chunk
            self.inserting = batch
            actions.append(.insert(InsertRequest(id: batch.id, topic: batch.topic, rows: batch.rows, chunk: chunk)))
            return
        }
        // Every row is in ClickHouse or a dead letter: on to the dead letters and the commit.
        self.inserting = nil
        self.finishing.append(
            Finishing(
                id: batch.id,
                topic: batch.topic,
                offsets: batch.offsets,
                generations: batch.generations,
                deadLetters: batch.deadLetters,
                backoff: Backoff(initial: self.retryInitial, maximum: self.retryMax, jitter: self.jitter)
            )
        )
    }

    /// Starts the insert of the oldest cut batch, if it is encoded and there is room.
    private mutating func startInsert(into actions: inout [Action]) -> Bool {
        guard self.inserting == nil, self.finishing.count < Self.maxUncommitted, let next = self.queue.first,
            let rows = next.rows
        else { return false }
        self.queue.removeFirst()
        self.inserting = Inserting(
            id: next.id,
            topic: next.topic,
            rows: rows,
            offsets: next.offsets,
            generations: next.generations,
            deadLetters: next.invalid,
            pending: [rows.indices],
            backoff: Backoff(initial: self.retryInitial, maximum: self.retryMax, jitter: self.jitter)
        )
        self.insertNextChunk(into: &actions)
        return true
    }

    /// The oldest finishing batch: its dead letters, then its commit; then the next one.
    private mutating func finishHead(now: C.Instant, into actions: inout [Action]) {
        while var head = self.finishing.first {
            switch head.step {
            case .sendingDeadLetters, .committing:
                return
            case .resendingAt(let time):
                guard now >= time else { return }
                head.step = .ready
                self.finishing[0] = head
                continue
            case .ready:
                // Dead letters of partitions no longer owned are the next owner's to send.
                let letters = head.deadLetters.filter { self.stillOwned($0.message.topicPartition, head.generations) }
                if !letters.isEmpty {
                    head.deadLetters = letters
                    head.step = .sendingDeadLetters
                    self.finishing[0] = head
                    actions.append(
                        .sendDeadLetters(DeadLetterRequest(id: head.id, topic: head.topic, letters: letters))
                    )
                    return
                }
                head.step = .deadLettersDone
                self.finishing[0] = head
                continue
            case .deadLettersDone:
                let offsets = head.offsets.filter { self.stillOwned($0.key, head.generations) }
                guard !offsets.isEmpty else {
                    self.finishing.removeFirst()
                    continue
                }
                head.step = .committing
                self.finishing[0] = head
                actions.append(.commit(CommitRequest(id: head.id, offsets: offsets)))
                return
            }
        }
    }

    /// Cuts each route's batch that is due (any non-empty one when shutting down), one waiting
    /// batch per route at most.
    private mutating func cutDueBatches(now: C.Instant, into actions: inout [Action]) -> Bool {
        var cut = false
        for topic in self.topics {
            guard var batch = self.buffers[topic], !batch.messages.isEmpty,
                self.stopping || self.isDue(batch, now: now), !self.queue.contains(where: { $0.topic == topic })
            else { continue }
            let messages = batch.take(rows: self.batchRows, bytes: self.batchBytes, now: now)
            self.buffers[topic] = batch
            var offsets: [TopicPartition: Int64] = [:]
            var generations: [TopicPartition: UInt64] = [:]
            for message in messages {
                let partition = message.topicPartition
                offsets[partition] = max(offsets[partition] ?? 0, message.offset + 1)
                if generations[partition] == nil { generations[partition] = self.owned[partition] }
            }
            let id = self.nextID
            self.nextID += 1
            self.queue.append(
                Queued(id: id, topic: topic, messages: messages, offsets: offsets, generations: generations)
            )
            actions.append(.encode(EncodeRequest(id: id, topic: topic, messages: messages)))
            cut = true
        }
        return cut
    }

    /// A route's backlog is full: a batch waits for its insert, and the one filling behind it
    /// is full too.
    private func backlogIsFull(_ topic: String) -> Bool {
        guard let batch = self.buffers[topic], self.isFull(batch) else { return false }
        return self.queue.contains { $0.topic == topic }
    }

    /// Waiting out a back-off: no action runs that will report back by itself.
    private var waitsForTimer: Bool {
        if self.inserting?.retryAt != nil { return true }
        if let head = self.finishing.first, case .resendingAt = head.step { return true }
        return false
    }

    /// Consumption with a full backlog: while an action runs (an insert, a commit…), the next
    /// poll waits for its result, like any consumer that is busy (librdkafka keeps fetching
    /// into its queue meanwhile). While only a back-off timer runs, polling must go on — it
    /// serves the group (rebalances) and is the tick that ends the back-off — so the full
    /// routes' partitions are paused instead (librdkafka then drops what it fetched for them,
    /// and fetches it again after the resume). Routes whose backlog has room are resumed.
    private mutating func pauseOrResumeAndPoll(into actions: inout [Action]) {
        let full = Set(self.topics.filter(self.backlogIsFull))
        let waiting = self.waitsForTimer
        if waiting {
            let pause = self.owned.keys.filter { full.contains($0.topic) && !self.paused.contains($0) }
            if !pause.isEmpty {
                self.paused.formUnion(pause)
                actions.append(.pause(pause.sorted()))
            }
        }
        let resume = self.paused.filter { !full.contains($0.topic) }
        if !resume.isEmpty {
            self.paused.subtract(resume)
            actions.append(.resume(resume.sorted()))
        }
        if !self.pollInFlight && (full.isEmpty || waiting) {
            self.pollInFlight = true
            actions.append(.poll)
        }
    }
}
