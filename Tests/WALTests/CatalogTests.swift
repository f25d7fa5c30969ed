import Testing

@testable import WAL

/// The catalog follows the writer's outcomes in the machine's own terms, so its active
/// segment is the machine's segment as of the last durable batch.
@Suite struct CatalogTests {
    typealias Machine = GroupCommit<Int>

    static let limits = GroupCommitLimits(
        segmentBytes: 4096,
        segmentMaxAgeNanos: nil,
        maxFrameBytes: 2048,
        maxBatchBytes: 512,
        maxBatchRecords: 4,
        maxQueuedBytes: 8192
    )

    /// Rolls `machine` into its first segment and lists it in `catalog`, as the shell does.
    static func start(_ machine: inout Machine, _ catalog: inout Catalog, now: UInt64) throws {
        _ = machine.enqueue(0, frameLength: 64, eventCount: 1)
        let roll = try #require(machine.nextStep(now: now).roll)
        machine.rolled(firstLSN: roll.firstLSN, now: now)
        catalog.rolled(sealed: false, name: SegmentName.make(roll.firstLSN), firstLSN: roll.firstLSN, fileBytes: 4096)
    }

    @Test func aDurableBatchMovesTheActiveSegmentToWhereTheMachinePutIt() throws {
        var machine = Machine(limits: Self.limits, nextLSN: LSN(10), segment: nil)
        var catalog = Catalog(segments: [], durableNextLSN: LSN(10))
        try Self.start(&machine, &catalog, now: 500)
        let active = try #require(catalog.active)
        #expect(active.firstLSN == LSN(10))
        #expect(active.records == 0)
        #expect(active.dataEnd == Int64(SegmentHeader.size))
        #expect(active.minTimestampNanos == nil)

        let first = try #require(machine.nextStep(now: 700).batch)
        _ = machine.written()
        catalog.applied(first)
        _ = machine.enqueue(1, frameLength: 128, eventCount: 3)
        let second = try #require(machine.nextStep(now: 900).batch)
        // Written but not yet durable: readers must not see it.
        #expect(catalog.durableNextLSN == LSN(11))
        #expect(catalog.active?.records == 1)
        _ = machine.written()
        catalog.applied(second)

        let segment = try #require(machine.segment)
        let listed = try #require(catalog.active)
        #expect(catalog.durableNextLSN == LSN(14))
        #expect(listed.nextLSN == segment.nextLSN)
        #expect(listed.dataEnd == segment.dataEnd)
        #expect(listed.records == segment.records)
        #expect(listed.records == 2)
        #expect(listed.minTimestampNanos == 700)
        #expect(listed.maxTimestampNanos == 900)
        #expect(listed.fileBytes == 4096)
    }

    @Test func aRollSealsAHealthySegmentAndLeavesABrokenOneUnsealed() throws {
        var machine = Machine(limits: Self.limits, nextLSN: .zero, segment: nil)
        var catalog = Catalog(segments: [], durableNextLSN: .zero)
        try Self.start(&machine, &catalog, now: 1)
        let batch = try #require(machine.nextStep(now: 1).batch)
        _ = machine.written()
        catalog.applied(batch)

        catalog.rolled(sealed: true, name: SegmentName.make(LSN(1)), firstLSN: LSN(1), fileBytes: 4096)
        #expect(catalog.segments.map(\.state) == [.sealed, .active])
        #expect(catalog.segments[0].fileBytes == batch.segmentAfter.dataEnd + Int64(SegmentFooter.frameLength))
        #expect(catalog.active?.firstLSN == LSN(1))

        // A failed batch is never applied: the abandoned segment keeps its durable end.
        catalog.rolled(sealed: false, name: SegmentName.make(LSN(5)), firstLSN: LSN(5), fileBytes: 4096)
        #expect(catalog.segments.map(\.state) == [.sealed, .unsealed, .active])
        #expect(catalog.segments[1].fileBytes == 4096)
        #expect(catalog.segments[1].dataEnd == Int64(SegmentHeader.size))
        // LSNs a failed batch spent are skipped: the durable end moves to the new segment.
        #expect(catalog.durableNextLSN == LSN(5))
    }

    @Test func aFailedRollEndsTheClosedSegmentAndDeletionRemovesSegments() {
        var catalog = Catalog(segments: [], durableNextLSN: .zero)
        catalog.rolled(sealed: false, name: SegmentName.make(.zero), firstLSN: .zero, fileBytes: 4096)
        catalog.rollFailed(previousClosed: false)
        #expect(catalog.active?.firstLSN == .zero, "a segment the machine still writes to stays active")
        catalog.rollFailed(previousClosed: true)
        #expect(catalog.active == nil)
        #expect(catalog.segments.map(\.state) == [.unsealed])
        catalog.rolled(sealed: false, name: SegmentName.make(LSN(3)), firstLSN: LSN(3), fileBytes: 4096)
        #expect(catalog.walBytes == 8192)
        catalog.deleted([.zero])
        #expect(catalog.segments.map(\.firstLSN) == [LSN(3)])
        #expect(catalog.walBytes == 4096)
    }
}
