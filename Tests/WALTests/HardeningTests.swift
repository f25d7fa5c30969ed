import Foundation
import Logging
import Testing

@_spi(Testing) @testable import WAL

#if canImport(Glibc)
import Glibc
#endif

/// A 2xx means the event is stored, exactly as sent: the single writer, damage that costs
/// only the damaged bytes, cursors that survive deletion, and pressure that names its cause.
@Suite(.timeLimit(.minutes(2))) struct HardeningTests {
    static func fastLockChecks(_ directory: String) -> WALConfiguration {
        var configuration = testConfiguration(directory)
        configuration.lockCheckInterval = .milliseconds(20)
        return configuration
    }

    /// Fills a WAL with `count` records of ~3 KB (several 64 KiB segments) and closes it.
    static func populated(records count: Int = 60) async throws -> (TemporaryDirectory, [LSN: [UInt8]]) {
        let directory = try TemporaryDirectory()
        let wal = try await WAL.openAndStart(testConfiguration(directory.path), logger: quietLogger)
        var acknowledged: [LSN: [UInt8]] = [:]
        for index in 0..<count {
            let payload = Array("event-\(index)-".utf8) + [UInt8](repeating: UInt8(index % 251), count: 3000)
            acknowledged[try await wal.append([payload]).firstLSN] = payload
        }
        await wal.close()
        return (directory, acknowledged)
    }

    // MARK: - D1: one writer, whatever happens to wal.lock

    @Test func aSecondWriterIsRefusedAfterTheLockFileIsDeleted() async throws {
        let directory = try TemporaryDirectory()
        let first = try await WAL.openAndStart(testConfiguration(directory.path), logger: quietLogger)
        let acknowledged = try await first.append([event("first")])
        try FileManager.default.removeItem(atPath: directory.path + "/wal.lock")

        var second: WAL?
        let error = await #expect(throws: WALError.self) {
            second = try await WAL.openAndStart(testConfiguration(directory.path), logger: quietLogger)
        }
        if let second {
            // The old behaviour: it opened and would append over the first one's events.
            _ = try? await second.append([event("second")])
            await second.close()
        }
        #expect(error?.code == .locked)
        await first.close()
        #expect(try allEvents(in: directory.path)[acknowledged.firstLSN] == event("first"))
    }

    @Test func theActiveSegmentIsLockedWhileItsWriterRuns() async throws {
        let directory = try TemporaryDirectory()
        let wal = try await WAL.openAndStart(testConfiguration(directory.path), logger: quietLogger)
        _ = try await wal.append([event("one")])
        let active = try #require(try WALInspector(directory: directory.path).segments().last)
        let fd = open(directory.path + "/" + active.name, O_RDWR | O_CLOEXEC)
        #expect(fd >= 0)
        defer { close(fd) }
        #expect(flock(fd, LOCK_EX | LOCK_NB) != 0, "another process could take the active segment")
        await wal.close()
        #expect(flock(fd, LOCK_EX | LOCK_NB) == 0)
    }

    @Test(arguments: ["deleted", "replaced"])
    func aWriterWhoseLockFileIsDeletedOrReplacedStopsAccepting(_ what: String) async throws {
        let directory = try TemporaryDirectory()
        let wal = try await WAL.openAndStart(Self.fastLockChecks(directory.path), logger: quietLogger)
        let before = try await wal.append([event("before")])
        let lock = directory.path + "/wal.lock"
        if what == "deleted" {
            try FileManager.default.removeItem(atPath: lock)
        } else {
            try "12345\n".write(toFile: lock + ".new", atomically: false, encoding: .utf8)
            #expect(rename(lock + ".new", lock) == 0)
        }
        try await waitUntil(timeout: .seconds(5)) { !wal.isWritable }
        let refused = await #expect(throws: WALError.self) { _ = try await wal.append([event("after")]) }
        #expect(refused?.code == .locked)
        #expect(refused?.message.contains("wal.lock was \(what)") == true)
        await wal.close()
        let events = try allEvents(in: directory.path)
        #expect(events == [before.firstLSN: event("before")])
        // Once the first writer is gone, a new one opens normally.
        let reopened = try await WAL.openAndStart(testConfiguration(directory.path), logger: quietLogger)
        #expect(try await reopened.append([event("next")]).firstLSN > before.firstLSN)
        await reopened.close()
    }

    /// A restored backup or a `mv` swaps the directory under a running writer: it would go on
    /// acknowledging events into files no path names any more.
    @Test func aWriterWhoseDirectoryIsReplacedStopsAccepting() async throws {
        let root = try TemporaryDirectory()
        let path = root.path + "/wal"
        let wal = try await WAL.openAndStart(Self.fastLockChecks(path), logger: quietLogger)
        _ = try await wal.append([event("before")])
        #expect(rename(path, root.path + "/wal.moved") == 0)
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        try await waitUntil(timeout: .seconds(5)) { !wal.isWritable }
        let refused = await #expect(throws: WALError.self) { _ = try await wal.append([event("after")]) }
        #expect(refused?.message.contains("moved, deleted or replaced") == true)
        #expect(wal.unavailableReason?.contains("moved, deleted or replaced") == true)
        // A writer on the new directory is not held up by the stopped one.
        let fresh = try await WAL.openAndStart(testConfiguration(path), logger: quietLogger)
        _ = try await fresh.append([event("new")])
        await fresh.close()
        await wal.close()
        #expect(try allEvents(in: root.path + "/wal.moved").values.contains(event("before")))
    }

    /// What two writers appending at the same offsets leave behind: an intact frame whose
    /// LSNs the chain already passed. A torn write cannot leave an intact frame, so this is
    /// not an unacknowledged tail to cut off but damage to report.
    @Test func verifyReportsAFrameWrittenOverByASecondWriter() async throws {
        let directory = try TemporaryDirectory()
        let wal = try await WAL.openAndStart(testConfiguration(directory.path), logger: quietLogger)
        for index in 0..<5 { _ = try await wal.append([event("event-\(index)")]) }
        await wal.close()
        let inspector = try WALInspector(directory: directory.path)
        let active = try #require(try inspector.segments().last)
        var frames: [(offset: Int64, length: Int)] = []
        try inspector.records(from: .zero) { item in
            if case .record(let record, _, let offset) = item { frames.append((offset, record.frameLength)) }
            return true
        }
        // The other writer's frame for LSN 1, landing after this writer's LSN 4.
        let path = directory.path + "/" + active.name
        let handle = try #require(FileHandle(forUpdatingAtPath: path))
        try handle.seek(toOffset: UInt64(frames[1].offset))
        let stale = try #require(try handle.read(upToCount: frames[1].length))
        try handle.seek(toOffset: UInt64(active.dataEnd))
        try handle.write(contentsOf: stale)
        try handle.close()

        let report = try inspector.verify()
        #expect(!report.isClean)
        let problem = try #require(report.problems.first)
        #expect(problem.segment == active.name)
        #expect(problem.firstLSN == LSN(1))
        #expect(problem.lastLSN == LSN(1))
        #expect(problem.detail.contains("overwritten"))
        let verify = try await ChildProcess.runSluice(["wal", "verify", directory.path])
        #expect(verify.status == 1)
        #expect(verify.standardOutput.contains("LSN 1...1"))

        // Recovery keeps the evidence (quarantined, reported) instead of truncating it as a
        // torn tail, and appends after it.
        let reopened = try await WAL.openAndStart(testConfiguration(directory.path), logger: quietLogger)
        #expect(reopened.recovery.truncatedTailBytes == 0)
        #expect(reopened.recovery.damage.count == 1)
        #expect(try await reopened.append([event("next")]).firstLSN == LSN(5))
        await reopened.close()
        #expect(try allEvents(in: directory.path)[LSN(5)] == event("next"))
    }

    /// Two writers whose frames keep valid, increasing LSNs (each appended after the other's
    /// frame at times): only the writer tags show it. Every run stamps its own tag, so a tag
    /// that comes back after another one is a second writer, while a restart (a new tag once)
    /// is not.
    @Test func verifyReportsFramesOfTwoWritersThatInterleave() async throws {
        let directory = try TemporaryDirectory()
        for run in 0..<2 {
            let wal = try await WAL.openAndStart(testConfiguration(directory.path), logger: quietLogger)
            for index in 0..<3 { _ = try await wal.append([event("run-\(run)-\(index)")]) }
            await wal.close()
        }
        let inspector = try WALInspector(directory: directory.path)
        #expect(try inspector.verify().isClean, "a restart is not a second writer")
        let active = try #require(try inspector.segments().last)
        var first: Int64 = 0
        try inspector.records(from: .zero) { item in
            if case .record(_, _, let offset) = item { first = offset }
            return false
        }
        let path = directory.path + "/" + active.name
        let handle = try #require(FileHandle(forUpdatingAtPath: path))
        try handle.seek(toOffset: UInt64(first))
        let firstRunTag = try #require(try handle.read(upToCount: FrameHeader.size)).withUnsafeBytes {
            $0.load(fromByteOffset: 38, as: UInt16.self)
        }
        // The first run's writer, still running, appends LSN 6 after the second run's frames.
        let payload = EventPayload.encode([event("from-the-first-writer")])
        let header = FrameHeader(
            payloadLength: UInt32(payload.count),
            payloadCRC: CRC32C.checksum(payload),
            lsn: LSN(6),
            timestampNanos: 1,
            eventCount: 1,
            type: .data,
            writerTag: firstRunTag
        )
        var frame = [UInt8](repeating: 0, count: header.frameLength)
        frame.withUnsafeMutableBytes { header.write(into: $0) }
        frame.replaceSubrange(FrameHeader.size..<FrameHeader.size + payload.count, with: payload)
        try handle.seek(toOffset: UInt64(active.dataEnd))
        try handle.write(contentsOf: frame)
        try handle.close()

        let report = try inspector.verify()
        #expect(!report.isClean)
        #expect(
            report.problems.contains { $0.detail.contains("two writers interleave") && $0.detail.contains("LSN 6...6") }
        )
        #expect(try await ChildProcess.runSluice(["wal", "verify", directory.path]).status == 1)
    }

    // MARK: - D4: a damaged header costs the header, not the segment

    @Test(arguments: [Int64(0), 20, 40, 61])
    func aDamagedHeaderOfASealedSegmentLosesNoRecord(_ offset: Int64) async throws {
        let (directory, acknowledged) = try await Self.populated()
        let inspector = try WALInspector(directory: directory.path)
        let first = try #require(try inspector.segments().first)
        #expect(first.state == .sealed)
        try flipByte(in: directory.path + "/" + first.name, at: offset)

        // The operator's tools keep working for the whole directory and name the damage.
        let segments = try inspector.segments()
        #expect(segments.count >= 3)
        #expect(try allEvents(in: directory.path) == acknowledged)
        let report = try inspector.verify()
        #expect(!report.isClean)
        #expect(report.problems.contains { $0.segment == first.name && $0.detail.contains("header") })
        let ls = try await ChildProcess.runSluice(["wal", "ls", directory.path])
        #expect(ls.status == 0)
        #expect(ls.standardOutput.contains("damaged header"))
        #expect(try await ChildProcess.runSluice(["wal", "stat", directory.path]).status == 0)
        let dump = try await ChildProcess.runSluice([
            "wal", "dump", directory.path, "--from", "\(first.nextLSN)", "--limit", "1",
        ])
        #expect(dump.status == 0)

        // The writer keeps the segment and the forwarder reads every record of it.
        let wal = try await WAL.openAndStart(testConfiguration(directory.path), logger: quietLogger)
        #expect(wal.recovery.quarantinedSegments.isEmpty)
        let tail = wal.tail(from: .zero)
        var read: [LSN: [UInt8]] = [:]
        while tail.position < LSN(UInt64(acknowledged.count)) {
            for record in try await tail.next() { read[record.lsn] = record.events[0] }
        }
        #expect(read == acknowledged)
        await wal.close()
        // And verify still says so after the writer ran.
        #expect(!(try inspector.verify().isClean))
    }

    @Test func aDamagedHeaderOfTheActiveSegmentLosesNoRecordAndAppendsGoToANewSegment() async throws {
        let (directory, acknowledged) = try await Self.populated(records: 10)
        let active = try #require(try WALInspector(directory: directory.path).segments().last)
        try flipByte(in: directory.path + "/" + active.name, at: 16)

        let wal = try await WAL.openAndStart(testConfiguration(directory.path), logger: quietLogger)
        #expect(wal.recovery.quarantinedSegments.isEmpty)
        let next = try await wal.append([event("after")])
        #expect(next.firstLSN == LSN(UInt64(acknowledged.count)))
        await wal.close()
        var expected = acknowledged
        expected[next.firstLSN] = event("after")
        #expect(try allEvents(in: directory.path) == expected)
        let names = try WALInspector(directory: directory.path).segments().map(\.name)
        #expect(names.contains(active.name))
        #expect(names.last != active.name)
    }

    /// A file with no intact frame at all is still moved aside whole, as before; verify no
    /// longer looks clean about it afterwards.
    @Test func aSegmentWithoutOneIntactFrameIsMovedAsideAndVerifyStillMentionsIt() async throws {
        let (directory, _) = try await Self.populated(records: 30)
        let last = try #require(try WALInspector(directory: directory.path).segments().last)
        #expect(truncate(directory.path + "/" + last.name, 10) == 0)
        let wal = try await WAL.openAndStart(testConfiguration(directory.path), logger: quietLogger)
        #expect(wal.recovery.quarantinedSegments == [last.name])
        await wal.close()
        let report = try WALInspector(directory: directory.path).verify()
        #expect(report.notes.contains { $0.contains("quarantine/\(last.name)") })
    }

    // MARK: - D13 (c): a damaged footer is a damaged footer

    @Test func aDamagedFooterIsReportedAsSuchAndTheSegmentStaysReadable() async throws {
        let (directory, acknowledged) = try await Self.populated()
        let inspector = try WALInspector(directory: directory.path)
        let sealed = try #require(try inspector.segments().first)
        #expect(sealed.state == .sealed)
        try flipByte(in: directory.path + "/" + sealed.name, at: sealed.fileBytes - 20)

        let report = try inspector.verify()
        #expect(!report.isClean)
        #expect(report.problems.contains { $0.segment == sealed.name && $0.detail.contains("footer") })
        #expect(!report.notes.contains { $0.contains("incomplete write") || $0.contains("not sealed") })
        #expect(try allEvents(in: directory.path) == acknowledged)
        let verify = try await ChildProcess.runSluice(["wal", "verify", directory.path])
        #expect(verify.status == 1)
        #expect(verify.standardOutput.contains("footer"))
    }

    // MARK: - D13 (a): a deleted cursor file comes back at the next commit

    @Test(arguments: ["deleted", "replaced"])
    func aCursorFileDeletedOrReplacedWhileRunningIsWrittenAgainAtTheNextCommit(_ what: String) async throws {
        let directory = try TemporaryDirectory()
        let wal = try await WAL.openAndStart(testConfiguration(directory.path), logger: quietLogger)
        _ = try await wal.openCursor("forwarder")
        for index in 0..<6 { _ = try await wal.append([event("event-\(index)")]) }
        try await wal.commitCursor("forwarder", to: LSN(2))
        let path = directory.path + "/cursors/forwarder.cursor"
        if what == "deleted" {
            try FileManager.default.removeItem(atPath: path)
        } else {
            try Data([UInt8](repeating: 0, count: 128)).write(to: URL(fileURLWithPath: path + ".new"))
            #expect(rename(path + ".new", path) == 0)
        }
        try await wal.commitCursor("forwarder", to: LSN(4))
        #expect(FileManager.default.fileExists(atPath: path))
        #expect(try CursorFile.read(path: path, name: "forwarder", fileSystem: SystemFileSystem()).lsn == LSN(4))
        // Later commits go to the new file.
        try await wal.commitCursor("forwarder", to: LSN(5))
        #expect(try CursorFile.read(path: path, name: "forwarder", fileSystem: SystemFileSystem()).lsn == LSN(5))
        let cursor = try await ChildProcess.runSluice(["wal", "cursor", directory.path, "forwarder"])
        #expect(cursor.standardOutput.contains("forwarder"))
        await wal.close()
        let reopened = try await WAL.openAndStart(testConfiguration(directory.path), logger: quietLogger)
        #expect(reopened.cursor("forwarder")?.lsn == LSN(5))
        await reopened.close()
    }

    // MARK: - D14: pressure names its cause, and `wal stat` uses the writer's budget

    @Test func aVolumeBelowTheReserveIsNamedAsTheCauseNotTheWAL() async throws {
        let directory = try TemporaryDirectory()
        var configuration = testConfiguration(directory.path)
        configuration.budget = DiskBudget(maxBytes: 1 << 40, minFreeBytes: 1 << 60)
        let wal = try await WAL.openAndStart(configuration, logger: quietLogger)
        let error = await #expect(throws: WALError.self) { _ = try await wal.append([event("x")]) }
        #expect(error?.code == .diskFull)
        #expect(error?.message.contains("free space on the volume") == true)
        #expect(error?.message.contains("wal.min_free_bytes (\(1 << 60))") == true)
        #expect(error?.message.contains("the WAL holds") == false)
        await wal.close()
    }

    @Test func aFullDiskLogsItsFailuresOnceNotPerRefusedRequestAndSaysWhenItRecovers() async throws {
        let directory = try TemporaryDirectory()
        let faults = FaultInjectingFileSystem()
        let logs = CapturedLogs()
        let wal = try await WAL.openAndStart(testConfiguration(directory.path, fileSystem: faults), logger: logs.logger)
        faults.inject(.allocate, errno: ENOSPC)
        for index in 0..<20 {
            await #expect(throws: WALError.self) { _ = try await wal.append([event("refused-\(index)")]) }
        }
        #expect(logs.count("wal.segment_create_failed") == 1)
        faults.clear()
        _ = try await wal.append([event("stored")])
        #expect(logs.count("wal.segment_create_recovered") == 1)
        await wal.close()
    }

    @Test func pressureRisingSaysWhy() async throws {
        let directory = try TemporaryDirectory()
        var configuration = testConfiguration(directory.path)
        configuration.budget = DiskBudget(maxBytes: 1 << 40, minFreeBytes: 1 << 60)
        let logs = CapturedLogs()
        let wal = try await WAL.openAndStart(configuration, logger: logs.logger)
        await wal.close()
        let rising = try #require(logs.entries.first { $0.message == "wal.pressure_rising" })
        #expect("\(rising.metadata["wal.reason"] ?? "")".contains("below wal.min_free_bytes"))
        #expect(logs.count("wal.free_space_low") == 1)
    }

    @Test func statComputesPressureWithTheRunningWritersBudget() async throws {
        let directory = try TemporaryDirectory()
        var configuration = testConfiguration(directory.path)
        configuration.budget = DiskBudget(maxBytes: 1 << 40, minFreeBytes: 12345)
        let wal = try await WAL.openAndStart(configuration, logger: quietLogger)
        _ = try await wal.append([event("x")])
        let stat = try await ChildProcess.runSluice(["wal", "stat", directory.path, "--json"])
        let object = try #require(
            try JSONSerialization.jsonObject(with: Data(stat.standardOutput.utf8)) as? [String: Any]
        )
        #expect(object["budget_bytes"] as? Int == 1 << 40)
        #expect(object["min_free_bytes"] as? Int == 12345)
        #expect((object["budget_source"] as? String)?.contains("running writer") == true)
        await wal.close()
    }
}
