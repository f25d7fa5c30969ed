import Foundation
import Testing

@_spi(Testing) @testable import WAL

#if canImport(Glibc)
import Glibc
#endif

/// Faults of the calls that shape files and directories — trim at sealing, rename of the
/// spare segment, mkdir at open: each either costs nothing that was acknowledged or fails
/// loudly, naming the path, and leaves the directory as it was.
@Suite(.timeLimit(.minutes(1))) struct FileSystemFaultTests {
    static func payload(_ index: Int) -> [UInt8] {
        Array("event-\(index)-".utf8) + [UInt8](repeating: UInt8(index % 251), count: 3000)
    }

    @Test func aSealThatCannotTrimLeavesTheSegmentUnsealedAndLosesNothing() async throws {
        let directory = try TemporaryDirectory()
        let faults = FaultInjectingFileSystem()
        // Every seal fails at its trim: the segments stay unsealed, the appends go on.
        faults.inject(.truncate, errno: EIO)
        let wal = try await WAL.openAndStart(testConfiguration(directory.path, fileSystem: faults), logger: quietLogger)
        var acknowledged: [LSN: [UInt8]] = [:]
        for index in 0..<60 {  // ~3 KB each: several 64 KiB segments, so several seals
            acknowledged[try await wal.append([Self.payload(index)]).firstLSN] = Self.payload(index)
        }
        await wal.close()
        #expect(try WALInspector(directory: directory.path).segments().count > 2)

        let reopened = try await WAL.openAndStart(testConfiguration(directory.path), logger: quietLogger)
        #expect(reopened.durableNextLSN == LSN(60))
        await reopened.close()
        #expect(try allEvents(in: directory.path) == acknowledged)
    }

    @Test func aSpareThatCannotBeRenamedFailsOnlyTheAppendsOfThatRoll() async throws {
        let directory = try TemporaryDirectory()
        let faults = FaultInjectingFileSystem()
        let wal = try await WAL.openAndStart(testConfiguration(directory.path, fileSystem: faults), logger: quietLogger)
        var acknowledged: [LSN: [UInt8]] = [:]
        var refused = 0
        // The spare is zero-filled after the first durable batch; make sure it is ready, so
        // the next roll renames it into place — and that rename fails, once.
        acknowledged[try await wal.append([Self.payload(0)]).firstLSN] = Self.payload(0)
        wal.writer.waitForSpare()
        faults.inject(.rename, errno: EIO, times: 1, pathContains: ".wal")
        for index in 1..<60 {
            do {
                acknowledged[try await wal.append([Self.payload(index)]).firstLSN] = Self.payload(index)
            } catch let error as WALError {
                #expect(error.errno == EIO, "\(error)")
                refused += 1
            }
        }
        await wal.close()
        // The roll that failed refused its appends (never acknowledged, so not lost); the
        // next roll made a fresh segment and everything after it went through.
        #expect(refused >= 1)
        #expect(acknowledged.count == 60 - refused)
        let stored = try allEvents(in: directory.path)
        for (lsn, payload) in acknowledged { #expect(stored[lsn] == payload, "LSN \(lsn)") }
    }

    @Test func aDirectoryThatCannotBeCreatedStopsOpenNamingIt() async throws {
        let parent = try TemporaryDirectory()
        let path = parent.path + "/wal"
        let faults = FaultInjectingFileSystem()
        faults.inject(.makeDirectory, errno: EACCES, pathContains: "cursors")
        let error = await #expect(throws: WALError.self) {
            _ = try await WAL.open(testConfiguration(path, fileSystem: faults), logger: quietLogger)
        }
        #expect(error?.errno == EACCES)
        #expect(error.map { "\($0)" }?.contains("cursors") == true)
        // Nothing was locked or left half-made that a second start would trip over.
        faults.clear()
        let wal = try await WAL.openAndStart(testConfiguration(path, fileSystem: faults), logger: quietLogger)
        _ = try await wal.append([event("after")])
        await wal.close()
        #expect(try allEvents(in: path) == [LSN(0): event("after")])
    }
}
