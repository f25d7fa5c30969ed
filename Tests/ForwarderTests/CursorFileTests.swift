import Foundation
import TestSupport
import Testing
import WAL

/// D13 (a): a cursor file deleted while the forwarder runs. It used to keep writing the
/// unlinked inode, so the next start resent every retained event.
@Suite(.serialized, .timeLimit(.minutes(3))) struct CursorFileTests {
    @Test func aCursorFileDeletedWhileTheForwarderRunsIsBackAtItsPositionWithinACommit() async throws {
        let pipeline = try await Pipeline.start(partitions: 2)
        _ = try await pipeline.append(200)
        try await waitUntil(timeout: .seconds(60)) { pipeline.wal.cursor("forwarder")?.lsn == LSN(200) }
        let path = pipeline.directory.path + "/wal/cursors/forwarder.cursor"
        try FileManager.default.removeItem(atPath: path)

        _ = try await pipeline.append(100, from: 200)
        try await waitUntil(timeout: .seconds(60)) { pipeline.wal.cursor("forwarder")?.lsn == LSN(300) }
        #expect(FileManager.default.fileExists(atPath: path))
        // What a restart would read: the operator's view of the cursor.
        let cursors = try WALInspector(directory: pipeline.directory.path + "/wal").cursors()
        #expect(cursors.map(\.name) == ["forwarder"])
        #expect(cursors.first?.lsn == LSN(300))
        try await pipeline.stop()
    }
}
