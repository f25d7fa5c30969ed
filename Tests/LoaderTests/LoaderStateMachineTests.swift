import ClickHouse
import Testing

@testable import Kafka
@testable import Loader

typealias Machine = LoaderStateMachine<TestClock>

/// The loader's delivery rules, checked on the state machine alone: no Kafka, no ClickHouse,
/// no sleeping. Each test drives events in and asserts the actions that come out.
@Suite struct LoaderStateMachineTests {
    static let p0 = TopicPartition("events", 0)
    static let p1 = TopicPartition("events", 1)

    // MARK: - Batching

    @Test func aBatchIsDueAtItsRowLimit() {
        var loader = Harness { $0.batchRows = 3 }
        var actions = loader.poll(assigned: [Self.p0], [message(0), message(1)])
        #expect(actions.encodes.isEmpty)
        // Exactly the limit.
        actions = loader.poll([message(2)])
        #expect(actions.encodes.map(\.offsets) == [[0, 1, 2]])
        // A poll that brings more than the limit: the batch is cut at the limit, the rest waits.
        var more = Harness { $0.batchRows = 3 }
        actions = more.poll(assigned: [Self.p0], (0..<5).map { message($0) })
        #expect(actions.encodes.map(\.offsets) == [[0, 1, 2]])
        #expect(more.machine.heldMessages("events") == 5)
    }

    @Test func aBatchIsDueAtItsByteLimit() {
        var loader = Harness { $0.batchBytes = 1024 }
        var actions = loader.poll(assigned: [Self.p0], [message(0, bytes: 512)])
        #expect(actions.encodes.isEmpty)
        // Exactly the limit.
        actions = loader.poll([message(1, bytes: 512)])
        #expect(actions.encodes.map(\.offsets) == [[0, 1]])
        // Cut at the message that reaches the limit; the rest waits.
        var more = Harness { $0.batchBytes = 1024 }
        actions = more.poll(assigned: [Self.p0], (0..<4).map { message($0, bytes: 400) })
        #expect(actions.encodes.map(\.offsets) == [[0, 1, 2]])
    }

    @Test func aBatchIsDueWhenItsOldestMessageWaitedTheBatchAge() {
        var loader = Harness { $0.batchAge = .seconds(1) }
        var actions = loader.poll(assigned: [Self.p0], [message(0)])
        loader.clock.advance(by: .milliseconds(600))
        actions += loader.poll([message(1)])
        loader.clock.advance(by: .milliseconds(399))
        actions += loader.machine.tick()
        #expect(actions.encodes.isEmpty)
        // The age counts from the oldest message, not the newest.
        loader.clock.advance(by: .milliseconds(1))
        actions = loader.machine.tick()
        #expect(actions.encodes.map(\.offsets) == [[0, 1]])
    }

    // MARK: - One insert at a time, commit in insert order

    @Test func oneInsertRunsAtATime() throws {
        var loader = Harness { $0.batchRows = 2 }
        var actions = loader.poll(assigned: [Self.p0], (0..<4).map { message($0) })
        let first = try #require(actions.encodes.first)
        actions = loader.encode(actions)
        #expect(actions.inserts.map(\.id) == [first.id])
        // The next batch is cut and encoded while the first is inserted…
        let second = try #require(actions.encodes.first)
        #expect(second.offsets == [2, 3])
        actions = loader.encode(actions)
        // … but its insert waits.
        #expect(actions.inserts.isEmpty)
        actions += loader.poll([message(4)])
        actions += loader.machine.tick()
        #expect(actions.inserts.isEmpty)

        actions = loader.machine.insertFinished(first.id, chunk: 0..<2, outcome: .inserted)
        #expect(actions.inserts.map(\.id) == [second.id])
    }

    @Test func offsetsAreCommittedOnlyAfterTheInsertSucceededAndInInsertOrder() throws {
        var loader = Harness { $0.batchRows = 2 }
        var actions = loader.poll(assigned: [Self.p0, Self.p1], [message(7, partition: 1), message(0)])
        actions = loader.encode(actions)
        let first = try #require(actions.inserts.first)
        actions += loader.poll([message(1), message(8, partition: 1)])
        actions = loader.encode(actions)
        #expect(actions.commits.isEmpty)

        // A failed insert commits nothing.
        actions = loader.machine.insertFinished(first.id, chunk: first.chunk, outcome: .failed(Self.down))
        #expect(actions.commits.isEmpty)
        loader.clock.advance(by: .seconds(1))
        actions = loader.machine.tick()
        #expect(actions.inserts.map(\.chunk) == [first.chunk])
        #expect(actions.commits.isEmpty)

        actions = loader.machine.insertFinished(first.id, chunk: first.chunk, outcome: .inserted)
        // The next offset to read of each partition in the batch.
        #expect(actions.commits.map(\.offsets) == [[Self.p0: 1, Self.p1: 8]])
        let second = try #require(actions.inserts.first)
        // The second batch is in before the first one's commit returned: its commit waits.
        actions = loader.machine.insertFinished(second.id, chunk: second.chunk, outcome: .inserted)
        #expect(actions.commits.isEmpty)
        actions = loader.machine.committed(first.id)
        #expect(actions.commits.map(\.offsets) == [[Self.p0: 2, Self.p1: 9]])
        actions = loader.machine.committed(second.id)
        #expect(actions.commits.isEmpty)
    }

    @Test func atMostTwoInsertedBatchesWaitForTheirCommit() {
        var loader = Harness { $0.batchRows = 1 }
        var actions = loader.poll(assigned: [Self.p0], [message(0), message(1), message(2)])
        var ids: [Machine.BatchID] = []
        for _ in 0..<3 {
            actions = loader.encode(actions)
            if let insert = actions.inserts.first {
                ids.append(insert.id)
                actions += loader.machine.insertFinished(insert.id, chunk: insert.chunk, outcome: .inserted)
            }
        }
        // Two batches inserted, neither commit returned: the third insert waits.
        #expect(ids.count == 2)
        actions = loader.machine.committed(ids[0])
        #expect(actions.inserts.count == 1)
    }

    // MARK: - Back-off

    @Test(arguments: [
        (1.0, [200, 400, 800, 1000, 1000]),
        (0.0, [100, 200, 400, 500, 500]),
        (0.5, [150, 300, 600, 750, 750]),
    ])
    func aFailedInsertIsRetriedOnTheBackOffCurve(jitter: Double, delays: [Int]) throws {
        var loader = Harness(jitter: jitter) {
            $0.batchRows = 1
            $0.retryInitial = .milliseconds(200)
            $0.retryMax = .seconds(1)
        }
        var actions = loader.encode(loader.poll(assigned: [Self.p0], [message(0)]))
        let insert = try #require(actions.inserts.first)
        var seen: [Duration] = []
        for _ in delays {
            actions = loader.machine.insertFinished(insert.id, chunk: insert.chunk, outcome: .failed(Self.down))
            let delay = try #require(actions.insertRetries.first)
            seen.append(delay)
            // Not a moment early…
            loader.clock.advance(by: delay - .nanoseconds(1))
            let early = loader.machine.tick()
            #expect(early.inserts.isEmpty)
            // … and then the same rows again.
            loader.clock.advance(by: .nanoseconds(1))
            let due = loader.machine.tick()
            #expect(due.inserts.map(\.chunk) == [insert.chunk])
        }
        #expect(seen == delays.map { Duration.milliseconds($0) })

        // A success starts the curve again.
        actions = loader.machine.insertFinished(insert.id, chunk: insert.chunk, outcome: .inserted)
        actions += loader.encode(loader.poll([message(1)]))
        let next = try #require(actions.inserts.first)
        actions = loader.machine.insertFinished(next.id, chunk: next.chunk, outcome: .failed(Self.down))
        #expect(actions.insertRetries == [.milliseconds(delays[0])])
    }

    @Test func theBackOffDoublesUpToItsCapWithTheInjectedJitter() {
        var full = Backoff(initial: .milliseconds(200), maximum: .seconds(30), jitter: { 1 })
        let curve = (0..<11).map { _ in full.next() }
        let expected = [200, 400, 800, 1600, 3200, 6400, 12_800, 25_600, 30_000, 30_000, 30_000]
        #expect(curve == expected.map { Duration.milliseconds($0) })
        var half = Backoff(initial: .milliseconds(200), maximum: .seconds(30), jitter: { 0 })
        let halves = (0..<3).map { _ in half.next() }
        #expect(halves == [100, 200, 400].map { Duration.milliseconds($0) })
        half.reset()
        #expect(half.next() == .milliseconds(100))
        // Out-of-range jitter is clamped: never below half the step, never above it.
        var wild = Backoff(initial: .seconds(1), maximum: .seconds(1), jitter: { 7 })
        #expect(wild.next() == .seconds(1))
        var negative = Backoff(initial: .seconds(1), maximum: .seconds(1), jitter: { -3 })
        #expect(negative.next() == .milliseconds(500))
    }

    // MARK: - Row isolation and dead letters

    @Test func halvingIsolatesTheOneRefusedRowAndDeadLettersIt() throws {
        var loader = Harness { $0.batchRows = 8 }
        var actions = loader.encode(loader.poll(assigned: [Self.p0], (0..<8).map { message($0) }))
        var tried: [Range<Int>] = []
        var inserted: [Int] = []
        while let insert = actions.inserts.first {
            tried.append(insert.chunk)
            let refused = insert.chunk.contains(5)
            if !refused { inserted += insert.chunk }
            #expect(actions.deadLetterSends.isEmpty && actions.commits.isEmpty)
            actions = loader.machine.insertFinished(
                insert.id,
                chunk: insert.chunk,
                outcome: refused ? .rejected("Cannot parse input") : .inserted
            )
        }
        #expect(tried == [0..<8, 0..<4, 4..<8, 4..<6, 4..<5, 5..<6, 6..<8])
        // Every other row went in, exactly once.
        #expect(inserted.sorted() == [0, 1, 2, 3, 4, 6, 7])
        let send = try #require(actions.deadLetterSends.first)
        #expect(send.letters.map(\.message.offset) == [5])
        #expect(send.letters.map(\.reason) == ["Cannot parse input"])
        #expect(actions.commits.isEmpty)
        actions = loader.machine.deadLettersSent(send.id, failed: [])
        #expect(actions.commits.map(\.offsets) == [[Self.p0: 8]])
    }

    @Test func deadLettersAreAcknowledgedBeforeTheirOffsetsAreCommitted() throws {
        var loader = Harness { $0.batchRows = 3 }
        var actions = loader.encode(
            loader.poll(assigned: [Self.p0], [message(0), message(1, value: "bad: not JSON"), message(2)])
        )
        let insert = try #require(actions.inserts.first)
        // Only the valid messages are rows.
        #expect(insert.rows.count == 2)
        actions = loader.machine.insertFinished(insert.id, chunk: insert.chunk, outcome: .inserted)
        let send = try #require(actions.deadLetterSends.first)
        #expect(send.letters.map(\.message.offset) == [1])
        #expect(actions.commits.isEmpty)
        actions = loader.machine.deadLettersSent(send.id, failed: [])
        #expect(actions.commits.map(\.offsets) == [[Self.p0: 3]])
    }

    @Test func aDeadLetterThatFailsHoldsTheCommitOfItsBatchAndOfEveryLaterOne() throws {
        var loader = Harness {
            $0.batchRows = 2
            $0.retryInitial = .milliseconds(200)
        }
        var actions = loader.encode(loader.poll(assigned: [Self.p0], [message(0, value: "bad"), message(1)]))
        let first = try #require(actions.inserts.first)
        actions = loader.machine.insertFinished(first.id, chunk: first.chunk, outcome: .inserted)
        let send = try #require(actions.deadLetterSends.first)
        actions = loader.machine.deadLettersSent(send.id, failed: send.letters)
        #expect(actions.deadLetterRetries == [.milliseconds(200)])
        #expect(actions.commits.isEmpty)

        // A later batch goes in meanwhile, but is not committed past the first one.
        actions = loader.encode(loader.poll([message(2), message(3)]))
        let second = try #require(actions.inserts.first)
        actions = loader.machine.insertFinished(second.id, chunk: second.chunk, outcome: .inserted)
        #expect(actions.commits.isEmpty)

        loader.clock.advance(by: .milliseconds(199))
        actions = loader.machine.tick()
        #expect(actions.deadLetterSends.isEmpty)
        loader.clock.advance(by: .milliseconds(1))
        actions = loader.machine.tick()
        #expect(actions.deadLetterSends.map { $0.letters.map(\.message.offset) } == [[0]])
        actions = loader.machine.deadLettersSent(send.id, failed: [])
        #expect(actions.commits.map(\.offsets) == [[Self.p0: 2]])
        actions = loader.machine.committed(first.id)
        #expect(actions.commits.map(\.offsets) == [[Self.p0: 4]])
    }

    @Test func onShutdownADeadLetterThatFailsLeavesItsBatchUncommitted() throws {
        var loader = Harness { $0.batchRows = 2 }
        var actions = loader.encode(loader.poll(assigned: [Self.p0], [message(0, value: "bad"), message(1)]))
        let insert = try #require(actions.inserts.first)
        actions = loader.machine.insertFinished(insert.id, chunk: insert.chunk, outcome: .inserted)
        let send = try #require(actions.deadLetterSends.first)
        actions = loader.shutdown()
        actions += loader.machine.deadLettersSent(send.id, failed: send.letters)
        #expect(actions.commits.isEmpty && actions.deadLetterSends.isEmpty && actions.deadLetterRetries.isEmpty)
        #expect(loader.machine.isFinished)
    }

    // MARK: - Rebalances

    @Test func aRevokeDropsTheWaitingWorkOfTheRevokedPartitions() throws {
        var loader = Harness { $0.batchAge = .seconds(1) }
        _ = loader.poll(
            assigned: [Self.p0, Self.p1],
            [message(0), message(0, partition: 1), message(1), message(1, partition: 1)]
        )
        var actions = loader.poll(revoked: [Self.p1], [message(2, partition: 1), message(2)])
        loader.clock.advance(by: .seconds(1))
        actions += loader.machine.tick()
        let batch = try #require(actions.encodes.first)
        #expect(batch.messages.map(\.topicPartition) == [Self.p0, Self.p0, Self.p0])
        #expect(loader.machine.heldMessages("events") == 3)
    }

    @Test func aRevokeTakesTheRevokedPartitionsOutOfABatchAlreadyCut() throws {
        var loader = Harness {
            $0.batchRows = 2
            $0.batchAge = .seconds(1)
        }
        let cut = try #require(
            loader.poll(assigned: [Self.p0, Self.p1], [message(0), message(0, partition: 1)]).encodes.first
        )
        var actions = loader.poll(revoked: [Self.p1], [])
        // The encoding that was running comes back to a batch that is no more.
        actions += loader.machine.encoded(cut.id, rows: encodedRows(cut.messages).0, invalid: [])
        #expect(actions.inserts.isEmpty)
        loader.clock.advance(by: .seconds(1))
        actions = loader.machine.tick()
        #expect(actions.encodes.map(\.offsets) == [[0]])
        #expect(actions.encodes.first?.messages.map(\.topicPartition) == [Self.p0])
    }

    @Test func aRevokeDuringTheInsertCommitsNothingForTheRevokedPartitions() throws {
        var loader = Harness { $0.batchRows = 4 }
        var actions = loader.encode(
            loader.poll(
                assigned: [Self.p0, Self.p1],
                [message(0), message(10, partition: 1, value: "bad"), message(1), message(11, partition: 1)]
            )
        )
        let insert = try #require(actions.inserts.first)
        actions = loader.poll(revoked: [Self.p1], [])
        // Assigned back before the insert returns: a new generation, which starts from the
        // committed offset; this insert's offsets are still not its to commit.
        actions += loader.poll(assigned: [Self.p1], [])
        actions = loader.machine.insertFinished(insert.id, chunk: insert.chunk, outcome: .inserted)
        // p1's dead letter is the next owner's, too.
        #expect(actions.deadLetterSends.isEmpty)
        #expect(actions.commits.map(\.offsets) == [[Self.p0: 2]])
    }

    @Test func aRevokeOfEveryPartitionDuringTheInsertCommitsNothing() throws {
        var loader = Harness { $0.batchRows = 2 }
        var actions = loader.encode(loader.poll(assigned: [Self.p0, Self.p1], [message(0), message(0, partition: 1)]))
        let insert = try #require(actions.inserts.first)
        _ = loader.poll(revoked: [Self.p0, Self.p1], [])
        actions = loader.machine.insertFinished(insert.id, chunk: insert.chunk, outcome: .inserted)
        #expect(actions.commits.isEmpty)
        // Nothing is left waiting for a commit, either.
        actions = loader.encode(loader.poll(assigned: [Self.p0], [message(5), message(6)]))
        #expect(actions.inserts.count == 1)
    }

    @Test func messagesFetchedBeforeARevokeInTheSamePollAreNotTakenUnderTheNewAssignment() throws {
        var loader = Harness { $0.batchAge = .seconds(1) }
        _ = loader.poll(assigned: [Self.p0, Self.p1], [])
        // One poll spanning two rebalances: p1 revoked and assigned back. Offsets 5 and 6 came
        // before the revoke (the next owner reads them again from the committed offset); 0
        // came after, under the new assignment, which starts from the committed offset.
        var actions = loader.machine.polled(
            ConsumerPoll(events: [
                .messages([message(5, partition: 1), message(6, partition: 1), message(3)]),
                .revoked([Self.p1]),
                .assigned([Self.p1]),
                .messages([message(0, partition: 1), message(4)]),
            ])
        )
        loader.clock.advance(by: .seconds(1))
        actions += loader.machine.tick()
        let batch = try #require(actions.encodes.first)
        #expect(batch.messages.map(\.topicPartition) == [Self.p0, Self.p1, Self.p0])
        #expect(batch.messages.map(\.offset) == [3, 0, 4])
    }

    @Test func aPartitionRevokedAssignedAndRevokedAgainInOnePollIsNotOwned() throws {
        var loader = Harness { $0.batchAge = .seconds(1) }
        _ = loader.poll(assigned: [Self.p0, Self.p1], [])
        // Summed up, this poll "revoked p1 and assigned p1": applying revokes before assigns
        // would leave p1 owned. In order, the member ends without it.
        var actions = loader.machine.polled(
            ConsumerPoll(events: [
                .revoked([Self.p1]), .assigned([Self.p1]), .revoked([Self.p1]),
                .messages([message(0)]),
            ])
        )
        actions += loader.poll([message(7, partition: 1), message(1)])
        loader.clock.advance(by: .seconds(1))
        actions += loader.machine.tick()
        let batch = try #require(actions.encodes.first)
        #expect(batch.messages.map(\.topicPartition) == [Self.p0, Self.p0])
    }

    // MARK: - Pause and resume

    @Test func aFullBacklogStopsConsumptionUntilTheNextBatchCanBeCut() throws {
        var loader = Harness { $0.batchRows = 2 }
        var actions = loader.encode(loader.poll(assigned: [Self.p0, Self.p1], [message(0), message(1)]))
        let first = try #require(actions.inserts.first)
        actions = loader.encode(loader.poll([message(2), message(0, partition: 1)]))
        // One batch inserting, one waiting for it, one filling: room still.
        actions = loader.poll([message(3)])
        #expect(actions.polls == 1)
        // Full: the next poll waits for the insert (librdkafka keeps what it fetches).
        actions = loader.poll([message(1, partition: 1)])
        #expect(actions.polls == 0)
        #expect(actions.pauses.isEmpty)
        #expect(loader.machine.heldMessages("events") == 6)

        actions = loader.machine.insertFinished(first.id, chunk: first.chunk, outcome: .inserted)
        // The waiting batch is inserted, the full one cut: room again, and a poll.
        #expect(actions.inserts.count == 1 && actions.encodes.count == 1)
        #expect(actions.polls == 1)
    }

    @Test func aFullBacklogDuringABackOffPausesItsPartitionsAndKeepsPolling() throws {
        var loader = Harness {
            $0.batchRows = 2
            $0.retryInitial = .milliseconds(200)
        }
        var actions = loader.encode(loader.poll(assigned: [Self.p0, Self.p1], [message(0), message(1)]))
        let first = try #require(actions.inserts.first)
        _ = loader.machine.insertFinished(first.id, chunk: first.chunk, outcome: .failed(Self.down))
        _ = loader.encode(loader.poll([message(2), message(0, partition: 1)]))
        actions = loader.poll([message(3), message(1, partition: 1)])
        // Only a timer runs: the polls go on (they serve the group), the partitions paused.
        #expect(actions.pauses == [[Self.p0, Self.p1]])
        #expect(actions.polls == 1)
        #expect(loader.machine.pausedPartitions == [Self.p0, Self.p1])
        actions = loader.poll([])
        #expect(actions.pauses.isEmpty && actions.resumes.isEmpty && actions.polls == 1)

        loader.clock.advance(by: .milliseconds(200))
        actions = loader.machine.tick()
        #expect(actions.inserts.map(\.chunk) == [first.chunk])
        // The insert runs again: the next poll waits for it; the partitions stay paused.
        actions = loader.poll([])
        #expect(actions.polls == 0 && actions.resumes.isEmpty)

        actions = loader.machine.insertFinished(first.id, chunk: first.chunk, outcome: .inserted)
        #expect(actions.inserts.count == 1 && actions.encodes.count == 1)
        #expect(actions.resumes == [[Self.p0, Self.p1]])
        #expect(actions.polls == 1)
        #expect(loader.machine.pausedPartitions.isEmpty)
    }

    @Test func aRevokedPartitionIsNotLeftPaused() throws {
        var loader = Harness { $0.batchRows = 1 }
        let insert = try #require(loader.encode(loader.poll(assigned: [Self.p0], [message(0)])).inserts.first)
        _ = loader.machine.insertFinished(insert.id, chunk: insert.chunk, outcome: .failed(Self.down))
        _ = loader.poll([message(1)])
        var actions = loader.poll([message(2)])
        #expect(actions.pauses == [[Self.p0]])
        actions = loader.poll(revoked: [Self.p0], [])
        #expect(actions.resumes == [[Self.p0]])
        #expect(loader.machine.pausedPartitions.isEmpty)
    }

    // MARK: - Shutdown

    @Test func onShutdownWhatIsBufferedIsInsertedAndCommittedOnce() throws {
        var loader = Harness()
        _ = loader.poll(assigned: [Self.p0], [message(0), message(1)])
        var actions = loader.shutdown()
        #expect(actions.polls == 0)
        #expect(actions.encodes.map(\.offsets) == [[0, 1]])
        actions = loader.encode(actions)
        let insert = try #require(actions.inserts.first)
        actions = loader.machine.insertFinished(insert.id, chunk: insert.chunk, outcome: .inserted)
        #expect(actions.commits.map(\.offsets) == [[Self.p0: 2]])
        #expect(!loader.machine.isFinished)
        _ = loader.machine.committed(insert.id)
        #expect(loader.machine.isFinished)
    }

    @Test func onShutdownAFailedInsertIsNotRetriedAndNothingAfterItIsCommitted() throws {
        var loader = Harness { $0.batchRows = 2 }
        var actions = loader.encode(loader.poll(assigned: [Self.p0], [message(0), message(1), message(2)]))
        let insert = try #require(actions.inserts.first)
        actions = loader.encode(loader.shutdown())
        actions += loader.machine.insertFinished(insert.id, chunk: insert.chunk, outcome: .failed(Self.down))
        #expect(actions.insertRetries.isEmpty && actions.inserts.isEmpty && actions.commits.isEmpty)
        loader.clock.advance(by: .seconds(60))
        actions = loader.machine.tick()
        #expect(actions.isEmpty)
        #expect(loader.machine.isFinished)
    }

    @Test func aShutdownDuringTheBackOffGivesTheBatchUp() throws {
        var loader = Harness { $0.batchRows = 1 }
        var actions = loader.encode(loader.poll(assigned: [Self.p0], [message(0)]))
        let insert = try #require(actions.inserts.first)
        _ = loader.machine.insertFinished(insert.id, chunk: insert.chunk, outcome: .failed(Self.down))
        actions = loader.shutdown()
        loader.clock.advance(by: .seconds(60))
        actions += loader.machine.tick()
        #expect(actions.inserts.isEmpty && actions.commits.isEmpty)
        #expect(loader.machine.isFinished)
    }

    static let down = ClickHouseError(.transport, message: "connection refused")
}

// MARK: - Helpers

/// A machine on a test clock, and the fake parts of the shell: polls and encoding.
struct Harness {
    let clock: TestClock
    var machine: Machine

    init(jitter: Double = 1, _ configure: (inout LoaderConfiguration) -> Void = { _ in }) {
        var configuration = LoaderConfiguration(kafkaProperties: [:], clickHouse: .init(url: "http://127.0.0.1:1"))
        configure(&configuration)
        let clock = TestClock()
        self.clock = clock
        self.machine = Machine(configuration: configuration, clock: clock, jitter: { jitter })
        _ = self.machine.start()
    }

    /// Shutdown begins; the poll that was running returns empty, as the shell's would.
    mutating func shutdown() -> [Machine.Action] {
        self.machine.shutdown() + self.poll([])
    }

    /// A poll's result arrives.
    mutating func poll(
        assigned: [TopicPartition] = [],
        revoked: [TopicPartition] = [],
        _ messages: [ConsumedMessage]
    ) -> [Machine.Action] {
        self.machine.polled(ConsumerPoll(messages: messages, assigned: assigned, revoked: revoked))
    }

    /// Encodes every batch `actions` asks for and returns what the machine does next.
    mutating func encode(_ actions: [Machine.Action]) -> [Machine.Action] {
        var next: [Machine.Action] = []
        for request in actions.encodes {
            let (rows, invalid) = encodedRows(request.messages)
            next += self.machine.encoded(request.id, rows: rows, invalid: invalid)
        }
        return next
    }
}

/// A message of `events`; `value` starting with "bad" cannot become a row.
func message(_ offset: Int64, partition: Int32 = 0, bytes: Int = 10, value: String? = nil) -> ConsumedMessage {
    ConsumedMessage(
        topic: "events",
        partition: partition,
        offset: offset,
        key: nil,
        value: value.map { Array($0.utf8) } ?? [UInt8](repeating: 0x61, count: bytes),
        headers: [],
        timestampMillis: -1
    )
}

/// What the encoder makes of messages: their values as rows, except the "bad" ones.
func encodedRows(_ messages: ArraySlice<ConsumedMessage>) -> (EncodedRows, [DeadLetter]) {
    var rows = EncodedRows()
    var invalid: [DeadLetter] = []
    for index in messages.indices {
        if messages[index].value.starts(with: Array("bad".utf8)) {
            invalid.append(DeadLetter(message: messages[index], reason: "not JSON"))
            continue
        }
        rows.body += messages[index].value
        rows.appended(source: index - messages.startIndex, receivedAtMillis: nil)
    }
    rows.source = messages
    return (rows, invalid)
}

extension Machine.EncodeRequest {
    var offsets: [Int64] { self.messages.map(\.offset) }
}

extension [Machine.Action] {
    var polls: Int { self.count { if case .poll = $0 { true } else { false } } }
    var encodes: [Machine.EncodeRequest] { self.compactMap { if case .encode(let r) = $0 { r } else { nil } } }
    var inserts: [Machine.InsertRequest] { self.compactMap { if case .insert(let r) = $0 { r } else { nil } } }
    var commits: [Machine.CommitRequest] { self.compactMap { if case .commit(let r) = $0 { r } else { nil } } }
    var deadLetterSends: [Machine.DeadLetterRequest] {
        self.compactMap { if case .sendDeadLetters(let r) = $0 { r } else { nil } }
    }
    var pauses: [[TopicPartition]] { self.compactMap { if case .pause(let p) = $0 { p } else { nil } } }
    var resumes: [[TopicPartition]] { self.compactMap { if case .resume(let p) = $0 { p } else { nil } } }
    var insertRetries: [Duration] {
        self.compactMap { if case .retryInsert(_, let delay, _, _) = $0 { delay } else { nil } }
    }
    var deadLetterRetries: [Duration] {
        self.compactMap { if case .retryDeadLetters(let delay, _) = $0 { delay } else { nil } }
    }
}
