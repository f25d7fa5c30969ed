import ClickHouse
import Foundation
import Kafka
import LocalClickHouse
import ServiceLifecycle
import Synchronization
import TestSupport
import Testing

@testable import Loader

/// `sluice erase` through the real path: events in Kafka (the mock cluster), rows in a real
/// ClickHouse 18.16, a replay from the earliest offsets after the erasure.
@Suite(.serialized, .timeLimit(.minutes(4))) struct ErasureTests {
    static func key() -> [UInt8] { (0..<32).map { _ in UInt8.random(in: 0...255) } }

    /// Interleaved events of two users, in a fixed order.
    static func events(alice: Int, bob: Int, offset: Int = 0) -> [[UInt8]] {
        (0..<(alice + bob)).map { n in
            let user = n % (alice + bob) < alice ? "alice" : "bob@example.org"
            return eventJSON(offset + n, user: user)
        }
    }

    @Test func anErasedUserStaysGoneThroughAReplayAndTheOtherIsNotDuplicated() async throws {
        try await LoadPipeline.with { pipeline in
            pipeline.configuration.erasure = ErasureConfiguration(keyBytes: Self.key(), refresh: .milliseconds(200))
            pipeline.startLoader()
            try await pipeline.send(Self.events(alice: 600, bob: 400))
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(200)) {
                let (committed, end) = try await pipeline.committedAndEnd()
                return committed == end && end == 1000
            }
            try await pipeline.stopLoader()
            #expect(try await pipeline.scalar("SELECT count() FROM sluice.events WHERE user_id = 'alice'") == 600)

            var erasure = UserErasure(configuration: pipeline.configuration, logger: quietLogger)
            erasure.settle = .zero
            let report = try await erasure.erase(userID: "alice")
            #expect(report.tables == [.init(table: "sluice.events", rowsRemoved: 600, skipped: nil)])
            #expect(report.rowsRemoved == 600)
            #expect(try await pipeline.scalar("SELECT count() FROM sluice.events WHERE user_id = 'alice'") == 0)
            #expect(try await pipeline.scalar("SELECT count() FROM sluice.events") == 400)
            // The record keeps a keyed hash, not the id, and what the erasure did.
            let record = try await pipeline.clickHouse.query(
                "SELECT key_id, user_hash, status, rows_removed, tables FROM sluice.erasures ORDER BY status FORMAT TabSeparated"
            )
            #expect(!record.contains("alice"))
            let lines = record.split(separator: "\n").map { $0.split(separator: "\t").map(String.init) }
            #expect(lines.map { $0[2] } == ["done", "recorded"])
            #expect(lines[0][3] == "600" && lines[0][4] == "sluice.events=600")
            #expect(lines[0][1].count == 64 && lines[0][1] == lines[1][1])
            #expect(report.record.hasPrefix(lines[0][0] + ":" + lines[0][1].prefix(16)))

            // The replay: the group back to the earliest offsets, the loader again.
            _ = try await OffsetTools(
                properties: ["bootstrap.servers": pipeline.cluster.bootstrapServers, "log_level": "0"]
            ).reset(group: pipeline.configuration.groupID, topic: "events", to: .earliest, dryRun: false)
            pipeline.startLoader()
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(200)) {
                let (committed, end) = try await pipeline.committedAndEnd()
                return committed == end && pipeline.loader.rowsInserted + pipeline.loader.messagesErased == 1000
            }
            #expect(pipeline.loader.messagesErased == 600)
            #expect(pipeline.loader.rowsInserted == 400)
            #expect(try await pipeline.scalar("SELECT count() FROM sluice.events WHERE user_id = 'alice'") == 0)
            // Bob's rows were inserted twice and fold to one each, as any replay does.
            #expect(try await pipeline.scalar("SELECT uniqExact(event_id) FROM sluice.events") == 400)
            #expect(try await pipeline.scalar("SELECT count() FROM sluice.events FINAL") == 400)
            #expect(try await pipeline.scalar("SELECT count() FROM sluice.events") == 800)
        }
    }

    @Test func aRunningLoaderLearnsOfAnErasureWithinItsRefresh() async throws {
        try await LoadPipeline.with(partitions: 2) { pipeline in
            pipeline.configuration.erasure = ErasureConfiguration(keyBytes: Self.key(), refresh: .milliseconds(200))
            pipeline.startLoader()
            try await pipeline.send(Self.events(alice: 100, bob: 100))
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(200)) {
                let (committed, end) = try await pipeline.committedAndEnd()
                return committed == end && end == 200
            }
            // Erased while the loader runs: the default settle waits for its refresh.
            let erasure = UserErasure(configuration: pipeline.configuration, logger: quietLogger)
            #expect(erasure.settle == .milliseconds(600))
            let lines = Lines()
            let report = try await erasure.erase(userID: "alice", progress: { lines.add($0) })
            #expect(report.rowsRemoved == 100)
            #expect(lines.all.first?.contains("waiting 600ms for running loaders") == true)
            #expect(pipeline.loader.erasures.count == 1)

            try await pipeline.send(Self.events(alice: 50, bob: 50, offset: 1000))
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(200)) {
                let (committed, end) = try await pipeline.committedAndEnd()
                return committed == end && end == 300
            }
            #expect(pipeline.loader.messagesErased == 50)
            #expect(try await pipeline.scalar("SELECT count() FROM sluice.events WHERE user_id = 'alice'") == 0)
            #expect(
                try await pipeline.scalar(
                    "SELECT uniqExact(event_id) FROM sluice.events WHERE user_id = 'bob@example.org'"
                )
                    == 150
            )
        }
    }

    @Test func aLoaderThatCannotRecogniseRecordedErasuresRefusesToLoad() async throws {
        try await LoadPipeline.with(partitions: 1) { pipeline in
            var erasure = UserErasure(
                configuration: {
                    var configuration = pipeline.configuration
                    configuration.erasure = ErasureConfiguration(keyBytes: Self.key())
                    return configuration
                }(),
                logger: quietLogger
            )
            erasure.settle = .zero
            let report = try await erasure.erase(userID: "alice")
            #expect(
                report.tables == [
                    .init(table: "sluice.events", rowsRemoved: 0, skipped: "the table does not exist yet")
                ]
            )

            // No key at all, then another key: both would let alice's events back in.
            for key in [nil, Self.key()] {
                pipeline.configuration.erasure =
                    key.map { ErasureConfiguration(keyBytes: $0) } ?? ErasureConfiguration()
                pipeline.startLoader()
                let refusal = await #expect(throws: LoaderError.self) { try await pipeline.task.value }
                #expect(refusal?.code == .invalidConfiguration)
                #expect(refusal?.message.contains("records erased users this loader cannot recognise") == true)
                #expect(refusal?.message.contains("alice") == false)
                pipeline.task = nil
            }
        }
    }

    /// An erasure under another key reaches a running loader at its next refresh: it stops
    /// rather than load events it can no longer tell apart.
    @Test func aRunningLoaderStopsWhenAnErasureUnderAnotherKeyAppears() async throws {
        try await LoadPipeline.with(partitions: 1) { pipeline in
            pipeline.configuration.erasure = ErasureConfiguration(keyBytes: Self.key(), refresh: .milliseconds(200))
            pipeline.startLoader()
            try await pipeline.send(Self.events(alice: 10, bob: 10))
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(100)) {
                pipeline.loader.rowsInserted == 20
            }
            var other = pipeline.configuration
            other.erasure = ErasureConfiguration(keyBytes: Self.key())
            var erasure = UserErasure(configuration: other, logger: quietLogger)
            erasure.settle = .zero
            _ = try await erasure.erase(userID: "alice")
            let stop = await #expect(throws: LoaderError.self) { try await pipeline.task.value }
            #expect(stop?.code == .invalidConfiguration)
            #expect(stop?.message.contains("this loader's key is") == true)
            pipeline.task = nil
        }
    }

    @Test func badInputIsRefusedBeforeAnythingChanges() async throws {
        let server = try await ClickHouseServer.start()
        defer { server.stop() }
        var configuration = LoaderConfiguration(
            kafkaProperties: [:],
            clickHouse: ClickHouseConfiguration(url: server.httpURL, timeout: .seconds(5))
        )
        configuration.erasure = ErasureConfiguration(keyBytes: Self.key())
        var erasure = UserErasure(configuration: configuration, logger: quietLogger)
        erasure.settle = .zero

        let empty = await #expect(throws: LoaderError.self) { _ = try await erasure.erase(userID: "  ") }
        #expect(empty?.code == .invalidConfiguration && empty?.message == "the user id is empty")
        let unknown = await #expect(throws: LoaderError.self) {
            _ = try await erasure.erase(userID: "alice", tables: ["shop.orders"])
        }
        #expect(unknown?.code == .invalidConfiguration)
        #expect(unknown?.message == "table shop.orders is not a routed table (routed: sluice.events)")
        var keyless = erasure
        keyless.configuration.erasure = ErasureConfiguration()
        let noKey = await #expect(throws: LoaderError.self) { _ = try await keyless.erase(userID: "alice") }
        #expect(noKey?.message.contains("loader.erasure.key_file") == true)
        // Nothing was recorded: no table was even made.
        let client = ClickHouseClient(ClickHouseConfiguration(url: server.httpURL), logger: quietLogger)
        let exists = try await client.query("EXISTS TABLE sluice.erasures FORMAT TabSeparated")
        #expect(exists == "0\n")
        try await client.shutdown()

        server.kill()
        let down = await #expect(throws: LoaderError.self) { _ = try await erasure.erase(userID: "alice") }
        #expect(down?.code == .erasureFailed)
        #expect(down?.description.contains("running it again is safe") == true)
        #expect(down?.description.contains("cannot reach ClickHouse") == true)
    }

    @Test func userIDsAreQuotedAsClickHouseLiterals() {
        #expect(UserErasure.literal("o'neil\\x\n") == #"'o\'neil\\x\n'"#)
        #expect(UserErasure.literal("ü 😀") == "'ü 😀'")
    }
}

final class Lines: Sendable {
    private let lines = Mutex<[String]>([])
    func add(_ line: String) { self.lines.withLock { $0.append(line) } }
    var all: [String] { self.lines.withLock { $0 } }
}
