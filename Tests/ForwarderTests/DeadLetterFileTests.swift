import Foundation
import Logging
import Synchronization
import TestSupport
import Testing
@_spi(Testing) import WAL

@testable import Forwarder

@Suite struct DeadLetterFileTests {
    static func lines(_ path: String) -> [String] {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    @Test func aWriteThatFailsLeavesNoPartialLineAndTheNextOneIsKept() async throws {
        let directory = try TemporaryDirectory()
        let faults = FaultInjectingFileSystem()
        let file = DeadLetterFile(walDirectory: directory.path, fileSystem: faults, logger: quietLogger)
        faults.inject(.fdatasync, errno: EIO, times: 1, pathContains: "dead-letters")
        let line = DeadLetterFile.line(lsn: LSN(7), event: Array(#"{"a":"b\"c"}"#.utf8), reason: "too large")
        #expect(throws: WALError.self) { try file.append(line) }
        #expect(file.path == directory.path + "/forwarder/dead-letters.ndjson")
        #expect(Self.lines(file.path).isEmpty)
        try file.append(line)
        let kept = Self.lines(file.path)
        #expect(kept == [#"{"reason":"too large","wal_lsn":7,"event":"{\"a\":\"b\\\"c\"}"}"#])
    }

    @Test func writesAreReportedFromTheFilesOwnQueueInOrder() async throws {
        let directory = try TemporaryDirectory()
        let file = DeadLetterFile(walDirectory: directory.path, fileSystem: SystemFileSystem(), logger: quietLogger)
        let outcomes = Outcomes()
        for lsn in 0..<3 as Range<UInt64> {
            file.write(lsn: LSN(lsn), event: Array("{}".utf8), reason: "r\(lsn)") { kept in outcomes.add(lsn, kept) }
        }
        await file.flush()
        #expect(outcomes.all == [(0, true), (1, true), (2, true)].map { Outcomes.Entry(lsn: $0.0, kept: $0.1) })
        #expect(Self.lines(file.path).count == 3)
    }

    @Test func aFileAnOlderVersionLeftInTheWALDirectoryIsMovedIntoPlace() async throws {
        let directory = try TemporaryDirectory()
        let legacy = directory.path + "/dead-letters.ndjson"
        try #"{"reason":"old","wal_lsn":1,"event":"{}"}"#.appending("\n").write(
            toFile: legacy,
            atomically: true,
            encoding: .utf8
        )
        let file = DeadLetterFile(walDirectory: directory.path, fileSystem: SystemFileSystem(), logger: quietLogger)
        await file.prepare()
        #expect(!FileManager.default.fileExists(atPath: legacy))
        #expect(Self.lines(file.path).count == 1)
        try file.append(DeadLetterFile.line(lsn: LSN(2), event: Array("{}".utf8), reason: "new"))
        #expect(Self.lines(file.path).count == 2)
    }
}

/// Dead-letter outcomes, collected from the file's queue.
final class Outcomes: Sendable {
    struct Entry: Equatable, Sendable {
        var lsn: UInt64
        var kept: Bool
    }

    private let entries = Mutex<[Entry]>([])
    var all: [Entry] { self.entries.withLock { $0 } }
    func add(_ lsn: UInt64, _ kept: Bool) { self.entries.withLock { $0.append(Entry(lsn: lsn, kept: kept)) } }
}
