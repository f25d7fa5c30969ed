import Testing

@testable import WAL

@Suite struct GroupCommitTests {
    typealias Machine = GroupCommit<Int>

    static let limits = GroupCommitLimits(
        segmentBytes: 4096,
        segmentMaxAgeNanos: 1_000,
        maxFrameBytes: 2048,
        maxBatchBytes: 512,
        maxBatchRecords: 4,
        maxQueuedBytes: 4096,
        ackTimeoutNanos: 100
    )

    /// A machine with an active segment starting at `lsn` that holds one durable append (item
    /// -1), and a sleeping writer.
    static func machine(at lsn: LSN = LSN(100), now: UInt64 = 0) throws -> Machine {
        var machine = Machine(limits: Self.limits, nextLSN: lsn, segment: nil)
        #expect(machine.nextStep(now: now).isSleep, "a fresh machine must sleep")
        _ = machine.enqueue(-1, frameLength: 64, eventCount: 1, enqueuedAt: now)
        let roll = try #require(machine.nextStep(now: now).roll, "the first append must roll")
        #expect(roll.sealing == nil && roll.closing == nil)
        machine.rolled(firstLSN: roll.firstLSN, now: now)
        let first = try #require(machine.nextStep(now: now).batch, "the first append must be written")
        #expect(first.records.map(\.item) == [-1])
        #expect(machine.written().map(\.item) == [-1])
        #expect(machine.nextStep(now: now).isSleep)
        return machine
    }

    /// Runs the writer until it sleeps or stops, reporting every write as durable, and returns
    /// the items written in order.
    static func writeAll(_ machine: inout Machine, now: UInt64 = 0) -> [Int] {
        var written: [Int] = []
        while let batch = machine.nextStep(now: now).batch {
            written += batch.records.map(\.item)
            #expect(machine.written().map(\.item) == batch.records.map(\.item))
        }
        return written
    }

    @Test func appendsQueuedWhileTheWriterIsBusyShareOneBatch() throws {
        var machine = try Self.machine()
        _ = machine.enqueue(0, frameLength: 64, eventCount: 1)
        let busy = try #require(machine.nextStep(now: 5).batch)
        // The writer is busy with that batch: these must not wake it.
        for item in 1...3 {
            let outcome = machine.enqueue(item, frameLength: 64, eventCount: 2)
            guard case .accepted(let wake) = outcome else {
                Issue.record("item \(item) rejected: \(outcome)")
                continue
            }
            #expect(!wake)
        }
        #expect(machine.written().map(\.item) == busy.records.map(\.item))
        let batch = try #require(machine.nextStep(now: 10).batch)
        #expect(batch.records.map(\.item) == [1, 2, 3])
        #expect(batch.records.map(\.lsn) == [LSN(102), LSN(104), LSN(106)])
        #expect(batch.nextLSN == LSN(108))
        #expect(batch.length == 192)
        #expect(batch.offset == Int64(SegmentHeader.size) + 128)
        #expect(machine.written().count == 3)
        #expect(machine.nextStep(now: 10).isSleep)
        let woken = machine.enqueue(9, frameLength: 64, eventCount: 1)
        guard case .accepted(true) = woken else {
            Issue.record("a sleeping writer must be woken, got \(woken)")
            return
        }
    }

    @Test func batchesRespectByteAndRecordLimits() throws {
        var machine = try Self.machine()
        for item in 0..<6 { _ = machine.enqueue(item, frameLength: 200, eventCount: 1) }
        var batches: [Machine.Batch] = []
        while let batch = machine.nextStep(now: 0).batch {
            batches.append(batch)
            _ = machine.written()
        }
        try #require(batches.count == 3)
        #expect(batches[0].records.map(\.item) == [0, 1])  // 400 of 512 bytes; a third would exceed
        #expect(batches[1].records.map(\.item) == [2, 3])
        #expect(batches[2].records.map(\.item) == [4, 5])
        #expect(batches[1].offset == batches[0].offset + Int64(batches[0].length))
    }

    @Test func aFullSegmentRollsAndSealsWithAFooter() throws {
        var machine = try Self.machine()
        // 64 + 88 footer + 64 header = 216 used; 4096 - 216 leaves room for 3 × 1024.
        for item in 0..<4 { _ = machine.enqueue(item, frameLength: 1024, eventCount: 1) }
        #expect(Self.writeAll(&machine) == [0, 1, 2])
        let roll = try #require(machine.nextStep(now: 0).roll, "expected a roll")
        let sealing = try #require(roll.sealing)
        #expect(roll.closing == sealing)
        #expect(sealing.footer.recordCount == 4)
        #expect(sealing.footer.firstLSN == LSN(100))
        #expect(sealing.footer.nextLSN == LSN(104))
        #expect(sealing.footer.dataEnd == UInt64(64 + 64 + 3 * 1024))
        #expect(roll.firstLSN == LSN(104))
        machine.rolled(firstLSN: roll.firstLSN, now: 0)
        let batch = try #require(machine.nextStep(now: 0).batch, "expected the pending append in the new segment")
        #expect(batch.records.map(\.item) == [3])
        #expect(batch.offset == Int64(SegmentHeader.size))
    }

    @Test func anOldSegmentRollsAtTheNextAppendButAnEmptyOneDoesNot() throws {
        var machine = Machine(limits: Self.limits, nextLSN: .zero, segment: nil)
        _ = machine.enqueue(0, frameLength: 64, eventCount: 1)
        let roll = try #require(machine.nextStep(now: 0).roll)
        machine.rolled(firstLSN: roll.firstLSN, now: 0)
        // Old but empty: no roll.
        #expect(machine.nextStep(now: 5_000).batch != nil, "an empty segment must take the write")
        _ = machine.written()
        #expect(machine.nextStep(now: 5_000).isSleep)
        _ = machine.enqueue(1, frameLength: 64, eventCount: 1)
        let aged = try #require(
            machine.nextStep(now: 5_000).roll,
            "a non-empty segment older than the limit must roll"
        )
        let sealing = try #require(aged.sealing)
        #expect(sealing.records == 1)
    }

    @Test func rejectsTooLargeOverloadedRefusedAndClosing() throws {
        var machine = try Self.machine()
        let large = try #require(machine.enqueue(1, frameLength: 3000, eventCount: 1).rejection)
        #expect(large.code == .recordTooLarge)
        for item in 0..<4 { _ = machine.enqueue(item, frameLength: 1000, eventCount: 1) }
        let overload = try #require(machine.enqueue(7, frameLength: 100, eventCount: 1).rejection)
        #expect(overload.code == .overloaded)
        machine.refusal = WALError(.diskFull, "hard watermark")
        let full = try #require(machine.enqueue(4, frameLength: 64, eventCount: 1).rejection)
        #expect(full.code == .diskFull)
        machine.refusal = nil
        _ = machine.close()
        let closed = try #require(machine.enqueue(5, frameLength: 64, eventCount: 1).rejection)
        #expect(closed.code == .closed)
        // Closing drains what was accepted before stopping.
        let batch = try #require(machine.nextStep(now: 0).batch, "queued appends must still be written")
        #expect(batch.records.map(\.item) == [0])
        _ = machine.written()
        var rest: [Int] = []
        drain: while true {
            switch machine.nextStep(now: 0) {
            case .write(let next):
                rest += next.records.map(\.item)
                _ = machine.written()
            case .roll(_, _, let first): machine.rolled(firstLSN: first, now: 0)
            case .stop: break drain
            case .sleep:
                Issue.record("a closing writer must not sleep with work queued")
                break drain
            }
        }
        #expect(rest == [1, 2, 3])
    }

    @Test func aFailedBatchFailsItsAppendsAbandonsTheSegmentAndSpendsItsLSNs() throws {
        var machine = try Self.machine()
        _ = machine.enqueue(1, frameLength: 64, eventCount: 5)
        let batch = try #require(machine.nextStep(now: 0).batch)
        #expect(batch.records.map(\.item) == [1])
        #expect(machine.writeFailed().map(\.item) == [1])
        #expect(machine.written().isEmpty, "a failed batch has no appends left to acknowledge")
        _ = machine.enqueue(2, frameLength: 64, eventCount: 1)
        let roll = try #require(
            machine.nextStep(now: 0).roll,
            "a broken segment must be replaced before the next write"
        )
        #expect(roll.sealing == nil)  // never sealed: its descriptor is not trusted
        let closing = try #require(roll.closing)
        #expect(closing.broken)
        #expect(roll.firstLSN == LSN(106))  // 101..<106 are spent, never reused
    }

    @Test func aFailedRollFailsEverythingQueued() throws {
        var machine = try Self.machine()
        // 128 bytes used; 1300-byte frames: two more fit below 4096 - 88, the third does not.
        for item in 1...3 { _ = machine.enqueue(item, frameLength: 1300, eventCount: 1) }
        // Writes 1, then 2 (each over the batch bytes, but one always goes).
        #expect(Self.writeAll(&machine) == [1, 2])
        #expect(machine.nextStep(now: 0).roll != nil, "expected a roll for item 3")
        #expect(machine.rollFailed(previousClosed: true) == [3])
        #expect(machine.queuedBytes == 0)
        #expect(machine.nextStep(now: 0).isSleep)
        _ = machine.enqueue(4, frameLength: 64, eventCount: 1)
        let retry = try #require(machine.nextStep(now: 0).roll, "the next append retries creating a segment")
        #expect(retry.sealing == nil && retry.closing == nil)
    }

    // MARK: - The acknowledgement deadline (timeout 100 ns in these limits)

    @Test func theDeadlineFailsExactlyTheQueuedAppendsOlderThanTheTimeout() throws {
        var machine = try Self.machine()
        _ = machine.enqueue(1, frameLength: 64, eventCount: 1, enqueuedAt: 1_000)
        _ = machine.enqueue(2, frameLength: 64, eventCount: 1, enqueuedAt: 1_050)
        _ = machine.enqueue(3, frameLength: 64, eventCount: 1, enqueuedAt: 1_100)
        // At 1_100 item 1 has waited exactly the timeout: still in time.
        #expect(machine.expire(now: 1_100).isEmpty)
        let first = machine.expire(now: 1_101)
        #expect(first.queued == [1])
        #expect(first.inFlight.isEmpty)
        #expect(machine.queuedCount == 2)
        #expect(machine.queuedBytes == 128)
        let second = machine.expire(now: 1_201)
        #expect(second.queued == [2, 3])
        #expect(machine.queuedCount == 0)
        #expect(machine.queuedBytes == 0)
        // Nothing left to fail, and the writer finds nothing to write.
        #expect(machine.expire(now: 10_000).isEmpty)
        #expect(machine.nextStep(now: 10_000).isSleep)
    }

    @Test func theDeadlineFailsTheWholeInFlightBatchOnceItsOldestAppendIsLate() throws {
        // A segment young enough (age limit 1_000) not to roll during the test.
        var machine = try Self.machine(now: 1_000)
        _ = machine.enqueue(1, frameLength: 64, eventCount: 1, enqueuedAt: 1_000)
        _ = machine.enqueue(2, frameLength: 64, eventCount: 2, enqueuedAt: 1_090)
        let batch = try #require(machine.nextStep(now: 1_095).batch)
        #expect(batch.records.map(\.item) == [1, 2])
        guard case .writing(let inFlight) = machine.writer else {
            Issue.record("the writer must be writing, not \(machine.writer)")
            return
        }
        #expect(inFlight.oldestEnqueuedAt == 1_000)
        #expect(inFlight.records.map(\.item) == [1, 2])
        // Queued behind the stalled batch, and younger than it.
        _ = machine.enqueue(3, frameLength: 64, eventCount: 1, enqueuedAt: 1_150)
        #expect(machine.expire(now: 1_100).isEmpty)
        let expired = machine.expire(now: 1_101)
        // Item 2 is only 11 ns old, but it shares the stalled write: its outcome is as unknown.
        #expect(expired.inFlight.map(\.item) == [1, 2])
        #expect(expired.inFlight.map(\.lsn) == [LSN(101), LSN(102)])
        #expect(expired.queued.isEmpty)
        // The fsync returns at last: nobody is left to acknowledge, nothing completes twice.
        #expect(machine.written().isEmpty)
        let next = try #require(machine.nextStep(now: 1_200).batch)
        #expect(next.records.map(\.item) == [3])
        #expect(next.records.map(\.lsn) == [LSN(104)])
    }

    @Test func anInFlightBatchThatFailsAfterTheDeadlineFailsNobodyTwice() throws {
        var machine = try Self.machine(now: 1_000)
        _ = machine.enqueue(1, frameLength: 64, eventCount: 1, enqueuedAt: 1_000)
        _ = try #require(machine.nextStep(now: 1_000).batch)
        #expect(machine.expire(now: 1_500).inFlight.map(\.item) == [1])
        #expect(machine.expire(now: 2_000).isEmpty, "an expired batch is failed once")
        #expect(machine.writeFailed().isEmpty)
        _ = machine.enqueue(2, frameLength: 64, eventCount: 1, enqueuedAt: 2_000)
        let roll = try #require(machine.nextStep(now: 2_000).roll, "the failed write still breaks the segment")
        #expect(roll.sealing == nil)
    }

    @Test func withoutATimeoutNothingExpires() throws {
        var limits = Self.limits
        limits.ackTimeoutNanos = nil
        var machine = Machine(limits: limits, nextLSN: .zero, segment: nil)
        _ = machine.enqueue(1, frameLength: 64, eventCount: 1, enqueuedAt: 0)
        #expect(machine.expire(now: .max).isEmpty)
        #expect(machine.queuedCount == 1)
    }
}

extension GroupCommit.Step {
    var isSleep: Bool {
        if case .sleep = self { return true }
        return false
    }

    var batch: GroupCommit<Item>.Batch? {
        if case .write(let batch) = self { return batch }
        return nil
    }

    var roll: (sealing: GroupCommit<Item>.ActiveSegment?, closing: GroupCommit<Item>.ActiveSegment?, firstLSN: LSN)? {
        if case .roll(let sealing, let closing, let firstLSN) = self { return (sealing, closing, firstLSN) }
        return nil
    }
}

extension GroupCommit.Enqueue {
    var rejection: WALError? {
        if case .rejected(let error) = self { return error }
        return nil
    }
}

@Suite struct BudgetAndRetentionTests {
    @Test func pressureFollowsTheWatermarksAndTheVolume() {
        let budget = DiskBudget(maxBytes: 1000, softFraction: 0.8, hardFraction: 0.95, minFreeBytes: 100)
        #expect(budget.pressure(walBytes: 500, volumeAvailable: 10_000) == .normal)
        #expect(budget.pressure(walBytes: 800, volumeAvailable: 10_000) == .soft)
        #expect(budget.pressure(walBytes: 950, volumeAvailable: 10_000) == .hard)
        #expect(budget.pressure(walBytes: 10, volumeAvailable: 150) == .soft)
        #expect(budget.pressure(walBytes: 10, volumeAvailable: 99) == .hard)
        #expect(throws: WALError.self) { try DiskBudget(maxBytes: 100).validate(segmentBytes: 64) }
        #expect(throws: WALError.self) {
            try DiskBudget(softFraction: 0.9, hardFraction: 0.5).validate(segmentBytes: 1)
        }
    }

    @Test func onlySegmentsEveryCursorPassedAreDeleted() {
        let segments = [
            RetentionPolicy.Candidate(firstLSN: LSN(0), nextLSN: LSN(10), maxTimestampNanos: 100),
            RetentionPolicy.Candidate(firstLSN: LSN(10), nextLSN: LSN(20), maxTimestampNanos: 200),
            RetentionPolicy.Candidate(firstLSN: LSN(20), nextLSN: LSN(30), maxTimestampNanos: 300),
        ]
        let now = RetentionPolicy(keepConsumedNanos: 0)
        #expect(now.deletable(sealed: segments, consumedBefore: nil, now: 1000, pressure: .hard).isEmpty)
        #expect(
            now.deletable(sealed: segments, consumedBefore: LSN(19), now: 1000, pressure: .normal).map(\.firstLSN) == [
                LSN(0)
            ]
        )
        #expect(now.deletable(sealed: segments, consumedBefore: LSN(30), now: 1000, pressure: .normal).count == 3)

        let keep = RetentionPolicy(keepConsumedNanos: 150)
        // Consumed but kept for replay until 150 ns after their newest record...
        #expect(
            keep.deletable(sealed: segments, consumedBefore: LSN(30), now: 320, pressure: .normal).map(\.firstLSN) == [
                LSN(0)
            ]
        )
        #expect(
            keep.deletable(sealed: segments, consumedBefore: LSN(30), now: 350, pressure: .normal).map(\.firstLSN) == [
                LSN(0), LSN(10),
            ]
        )
        // ...unless the disk is under pressure.
        #expect(keep.deletable(sealed: segments, consumedBefore: LSN(30), now: 320, pressure: .soft).count == 3)
    }
}
