import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import TestSupport
import Testing

/// The WAL's single-writer guarantee and its readiness reasons, with real `sluice gateway`
/// processes as an operator runs them.
@Suite(.serialized, .timeLimit(.minutes(3))) struct WALHardeningProcessTests {
    static func post(_ url: String, userID: String) async throws -> UInt {
        try await EventPoster(url: url).post(#"{"action":"click","user_id":"\#(userID)"}"#, timeout: .seconds(5)).status
            .code
    }

    static func readiness(_ url: String) async throws -> (status: UInt, body: String) {
        let response = try await HTTPClient.shared.execute(
            HTTPClientRequest(url: url + "/readyz"),
            timeout: .seconds(5)
        )
        let body = try await response.body.collect(upTo: 1 << 20)
        return (response.status.code, String(buffer: body))
    }

    /// D1: with `wal.lock` deleted, a second gateway used to create a new one, lock it, and
    /// append over the first one's acknowledged events.
    @Test func aSecondGatewayIsRefusedAfterTheLockFileIsDeletedAndTheFirstStopsAccepting() async throws {
        let directory = try TemporaryDirectory()
        let wal = directory.path + "/wal"
        let first = try await GatewayProcess(walDirectory: wal)
        #expect(try await Self.post(first.url, userID: "before") == 202)

        try FileManager.default.removeItem(atPath: wal + "/wal.lock")
        let second = try await GatewayProcess(walDirectory: wal)
        if second.port != 0 {
            // It started: the old behaviour. Stop it so the directory can be checked.
            second.signal(SIGTERM)
            _ = try? await second.waitForExit()
        }
        #expect(second.port == 0, "a second gateway started on a WAL directory in use")
        #expect(try await second.waitForExit() == 2)
        #expect(second.standardError.contains("one writer at a time"))

        // The first one can no longer prove it is alone: it says why and refuses events.
        try await waitUntil(timeout: .seconds(10), pollEvery: .milliseconds(100)) {
            try await Self.readiness(first.url).status == 503
        }
        let ready = try await Self.readiness(first.url)
        #expect(ready.body.contains("wal.lock was deleted"))
        #expect(try await Self.post(first.url, userID: "after") == 503)
        #expect(first.standardOutput.contains("wal.lock_lost"))
        first.signal(SIGTERM)
        #expect(try await first.waitForExit() == 0)

        // Every event the first one acknowledged is in the WAL.
        let dump = try await ChildProcess.runSluice(["wal", "dump", wal])
        #expect(dump.status == 0, "\(dump.standardError)")
        #expect(dump.standardOutput.contains("\"user_id\":\"before\""))
        #expect(!dump.standardOutput.contains("\"user_id\":\"after\""))
    }

    /// D14: on a volume with less free space than `wal.min_free_bytes`, the reason named the
    /// WAL's hard watermark although the WAL held nothing.
    @Test func readinessNamesFreeSpaceWhenTheVolumeIsBelowTheReserve() async throws {
        let directory = try TemporaryDirectory()
        let gateway = try await GatewayProcess(
            walDirectory: directory.path + "/wal",
            environment: ["SLUICE_WAL_MIN_FREE_BYTES": "\(1 << 60)"]
        )
        let ready = try await Self.readiness(gateway.url)
        #expect(ready.status == 503)
        #expect(ready.body.contains("free space on the volume"))
        #expect(ready.body.contains("wal.min_free_bytes"))
        #expect(!ready.body.contains("the WAL is over its hard watermark"))
        // Said at start-up too, before any request is refused.
        #expect(gateway.standardOutput.contains("wal.free_space_low"))
        gateway.signal(SIGTERM)
        #expect(try await gateway.waitForExit() == 0)
    }
}
