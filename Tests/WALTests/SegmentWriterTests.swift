import Foundation
import Testing

@_spi(Testing) @testable import WAL

/// The writer's files on their own: what a segment looks like on disk after create, write
/// and seal, and what a failed create leaves behind (nothing).
@Suite struct SegmentWriterTests {
    static let segmentBytes: Int64 = 64 << 10

    /// A one-record batch at the start of a fresh segment, as GroupCommit forms it.
    static func batch(_ payload: [UInt8], at lsn: LSN, now: UInt64) throws -> GroupCommit<WAL.PendingAppend>.Batch {
        var machine = GroupCommit<WAL.PendingAppend>(
            limits: GroupCommitLimits(
                segmentBytes: Self.segmentBytes,
                segmentMaxAgeNanos: nil,
                maxFrameBytes: 16 << 10,
                maxBatchBytes: 1 << 20,
                maxBatchRecords: 16,
                maxQueuedBytes: 1 << 20
            ),
            nextLSN: lsn,
            segment: nil
        )
        let encoded = EventPayload.encode([payload])
        let append = WAL.PendingAppend(payload: encoded, payloadCRC: CRC32C.checksum(encoded), completion: { _ in })
        _ = machine.enqueue(append, frameLength: alignedTo8(FrameHeader.size + encoded.count), eventCount: 1)
        let roll = try #require(machine.nextStep(now: now).roll)
        machine.rolled(firstLSN: roll.firstLSN, now: now)
        return try #require(machine.nextStep(now: now).batch)
    }

    @Test func aCreatedWrittenAndSealedSegmentReadsBackWithItsFooter() throws {
        let directory = try TemporaryDirectory()
        let fileSystem = SystemFileSystem()
        let writer = SegmentWriter(
            fileSystem: fileSystem,
            directory: directory.path,
            segmentBytes: Self.segmentBytes,
            logger: quietLogger
        )
        writer.tag = 7
        let name = try writer.create(firstLSN: LSN(42), now: 1_000).name
        #expect(name == SegmentName.make(LSN(42)))
        #expect(writer.isOpen)
        let batch = try Self.batch(event("hello"), at: LSN(42), now: 1_000)
        try writer.write(batch)
        try writer.sync()
        try writer.seal(batch.segmentAfter)
        writer.closeSegment()
        #expect(!writer.isOpen)

        // Deep: read every frame, not just the footer, to see the tag stamped into them.
        let scan = try SegmentScan.summarize(path: directory.path + "/" + name, fileSystem: fileSystem, deep: true)
        #expect(scan.header.firstLSN == LSN(42))
        #expect(scan.summary.state == .sealed)
        #expect(scan.summary.records == 1)
        #expect(scan.summary.nextLSN == LSN(43))
        // Sealing trims the preallocated space: data, then exactly one footer.
        #expect(scan.summary.fileBytes == batch.segmentAfter.dataEnd + Int64(SegmentFooter.frameLength))
        #expect(scan.writerTags == [7])
        #expect(try allEvents(in: directory.path) == [LSN(42): event("hello")])
    }

    @Test func aFailedCreateLeavesNoFileAndNoOpenSegment() throws {
        let directory = try TemporaryDirectory()
        let faults = FaultInjectingFileSystem()
        let writer = SegmentWriter(
            fileSystem: faults,
            directory: directory.path,
            segmentBytes: Self.segmentBytes,
            logger: quietLogger
        )
        faults.inject(.allocate, errno: ENOSPC, times: 1)
        let error = #expect(throws: WALError.self) { try writer.create(firstLSN: .zero, now: 1) }
        #expect(error?.code == .diskFull)
        #expect(!writer.isOpen)
        #expect(!FileManager.default.fileExists(atPath: directory.path + "/" + SegmentName.make(.zero)))
        // The next attempt, with room, works.
        _ = try writer.create(firstLSN: .zero, now: 2)
        #expect(writer.isOpen)
        writer.closeSegment()
    }
}
