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
        maxQueuedBytes: 4096
    )

    /// A machine with an empty active segment starting at `lsn`.
    static func machine(at lsn: LSN = LSN(100), now: UInt64 = 0) -> Machine {
        var machine = Machine(limits: Self.limits, nextLSN: lsn, segment: nil)
        guard case .sleep = machine.nextStep(now: now) else { fatalError("fresh machine must sleep") }
        _ = machine.enqueue(-1, frameLength: 64, eventCount: 1)
        guard case .roll(nil, nil, let first) = machine.nextStep(now: now) else { fatalError("must roll first") }
        machine.rolled(firstLSN: first, now: now)
        guard case .write = machine.nextStep(now: now) else { fatalError("must write the first append") }
        return machine
    }

    @Test func appendsQueuedWhileTheWriterIsBusyShareOneBatch() throws {
        var machine = Self.machine()
        // The writer is busy with the first batch: these must not wake it.
        for item in 1...3 {
            guard case .accepted(let wake) = machine.enqueue(item, frameLength: 64, eventCount: 2) else {
                Issue.record("rejected")
                return
            }
            #expect(!wake)
        }
        guard case .write(let batch) = machine.nextStep(now: 10) else {
            Issue.record("expected a write")
            return
        }
        #expect(batch.records.map(\.item) == [1, 2, 3])
        #expect(batch.records.map(\.lsn) == [LSN(101), LSN(103), LSN(105)])
        #expect(batch.nextLSN == LSN(107))
        #expect(batch.length == 192)
        #expect(batch.offset == Int64(SegmentHeader.size) + 64)
        guard case .sleep = machine.nextStep(now: 10) else {
            Issue.record("expected sleep")
            return
        }
        guard case .accepted(true) = machine.enqueue(9, frameLength: 64, eventCount: 1) else {
            Issue.record("a sleeping writer must be woken")
            return
        }
    }

    @Test func batchesRespectByteAndRecordLimits() {
        var machine = Self.machine()
        for item in 0..<6 { _ = machine.enqueue(item, frameLength: 200, eventCount: 1) }
        guard case .write(let first) = machine.nextStep(now: 0), case .write(let second) = machine.nextStep(now: 0),
            case .write(let third) = machine.nextStep(now: 0)
        else {
            Issue.record("expected three writes")
            return
        }
        #expect(first.records.map(\.item) == [0, 1])  // 400 of 512 bytes; a third would exceed
        #expect(second.records.map(\.item) == [2, 3])
        #expect(third.records.map(\.item) == [4, 5])
        #expect(second.offset == first.offset + Int64(first.length))
    }

    @Test func aFullSegmentRollsAndSealsWithAFooter() {
        var machine = Self.machine()
        // 64 + 88 footer + 64 header = 216 used; 4096 - 216 leaves room for 3 × 1024.
        for item in 0..<4 { _ = machine.enqueue(item, frameLength: 1024, eventCount: 1) }
        var written: [Int] = []
        while case .write(let batch) = machine.nextStep(now: 0) { written += batch.records.map(\.item) }
        #expect(written == [0, 1, 2])
        guard case .roll(let sealing?, let closing?, let first) = machine.nextStep(now: 0) else {
            Issue.record("expected a roll")
            return
        }
        #expect(sealing == closing)
        #expect(sealing.footer.recordCount == 4)
        #expect(sealing.footer.firstLSN == LSN(100))
        #expect(sealing.footer.nextLSN == LSN(104))
        #expect(sealing.footer.dataEnd == UInt64(64 + 64 + 3 * 1024))
        #expect(first == LSN(104))
        machine.rolled(firstLSN: first, now: 0)
        guard case .write(let batch) = machine.nextStep(now: 0) else {
            Issue.record("expected the pending append in the new segment")
            return
        }
        #expect(batch.records.map(\.item) == [3])
        #expect(batch.offset == Int64(SegmentHeader.size))
    }

    @Test func anOldSegmentRollsAtTheNextAppendButAnEmptyOneDoesNot() {
        var machine = Machine(limits: Self.limits, nextLSN: .zero, segment: nil)
        _ = machine.enqueue(0, frameLength: 64, eventCount: 1)
        guard case .roll(_, _, let first) = machine.nextStep(now: 0) else { return }
        machine.rolled(firstLSN: first, now: 0)
        // Old but empty: no roll.
        guard case .write = machine.nextStep(now: 5_000) else {
            Issue.record("an empty segment must take the write")
            return
        }
        _ = machine.nextStep(now: 5_000)
        _ = machine.enqueue(1, frameLength: 64, eventCount: 1)
        guard case .roll(let sealing?, _, _) = machine.nextStep(now: 5_000) else {
            Issue.record("a non-empty segment older than the limit must roll")
            return
        }
        #expect(sealing.records == 1)
    }

    @Test func rejectsTooLargeOverloadedRefusedAndClosing() {
        var machine = Self.machine()
        guard case .rejected(let large) = machine.enqueue(1, frameLength: 3000, eventCount: 1) else {
            Issue.record("too large must be refused")
            return
        }
        #expect(large.code == .recordTooLarge)
        for item in 0..<4 { _ = machine.enqueue(item, frameLength: 1000, eventCount: 1) }
        guard case .rejected(let overload) = machine.enqueue(7, frameLength: 100, eventCount: 1) else {
            Issue.record("over the queue bound must be refused")
            return
        }
        #expect(overload.code == .overloaded)
        machine.refusal = WALError(.diskFull, "hard watermark")
        guard case .rejected(let full) = machine.enqueue(4, frameLength: 64, eventCount: 1) else { return }
        #expect(full.code == .diskFull)
        machine.refusal = nil
        _ = machine.close()
        guard case .rejected(let closed) = machine.enqueue(5, frameLength: 64, eventCount: 1) else { return }
        #expect(closed.code == .closed)
        // Closing drains what was accepted before stopping.
        guard case .write(let batch) = machine.nextStep(now: 0) else {
            Issue.record("queued appends must still be written")
            return
        }
        #expect(batch.records.map(\.item) == [0])
        var rest: [Int] = []
        drain: while true {
            switch machine.nextStep(now: 0) {
            case .write(let next): rest += next.records.map(\.item)
            case .roll(_, _, let first): machine.rolled(firstLSN: first, now: 0)
            case .stop: break drain
            case .sleep:
                Issue.record("a closing writer must not sleep with work queued")
                break drain
            }
        }
        #expect(rest == [1, 2, 3])
    }

    @Test func aFailedBatchAbandonsTheSegmentAndSpendsItsLSNs() {
        var machine = Self.machine()
        _ = machine.enqueue(1, frameLength: 64, eventCount: 5)
        guard case .write(let batch) = machine.nextStep(now: 0) else { return }
        machine.writeFailed(segmentFirstLSN: batch.segmentFirstLSN)
        _ = machine.enqueue(2, frameLength: 64, eventCount: 1)
        guard case .roll(let sealing, let closing?, let first) = machine.nextStep(now: 0) else {
            Issue.record("a broken segment must be replaced before the next write")
            return
        }
        #expect(sealing == nil)  // never sealed: its descriptor is not trusted
        #expect(closing.broken)
        #expect(first == LSN(106))  // 101..<106 are spent, never reused
    }

    @Test func aFailedRollFailsEverythingQueued() {
        var machine = Self.machine()
        // 128 bytes used; 1300-byte frames: two more fit below 4096 - 88, the third does not.
        for item in 1...3 { _ = machine.enqueue(item, frameLength: 1300, eventCount: 1) }
        _ = machine.nextStep(now: 0)  // writes 1 (over the batch bytes, but one always goes)
        _ = machine.nextStep(now: 0)  // writes 2
        guard case .roll = machine.nextStep(now: 0) else {
            Issue.record("expected a roll for item 3")
            return
        }
        #expect(machine.rollFailed(previousClosed: true) == [3])
        #expect(machine.queuedBytes == 0)
        guard case .sleep = machine.nextStep(now: 0) else { return }
        _ = machine.enqueue(4, frameLength: 64, eventCount: 1)
        guard case .roll(nil, nil, _) = machine.nextStep(now: 0) else {
            Issue.record("the next append retries creating a segment")
            return
        }
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
