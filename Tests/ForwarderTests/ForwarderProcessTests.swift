import Foundation
import Synchronization
import TestSupport
import Testing
import WAL

extension ForwarderTests {
    @Test func aForwarderKilledMidStreamLeavesNoGapAndFewDuplicates() async throws {
        let directory = try TemporaryDirectory()
        let walDirectory = directory.path + "/wal"
        let pipeline = try await Pipeline.prefill(walDirectory, events: 20_000)
        let kafka = try await DevKafka.start(brokers: 3, topics: ["events:4"])
        let bootstrap = kafka.bootstrapServers

        // Few messages in flight, each batch lingering 20 ms: the drain takes seconds, long
        // enough to be interrupted even on a busy machine.
        let slow = directory.path + "/slow.yaml"
        try "forwarder:\n  max_in_flight: 100\nkafka:\n  properties:\n    linger.ms: 20\n".write(
            toFile: slow,
            atomically: true,
            encoding: .utf8
        )
        let first = try SluiceProcess([
            "forwarder", "--config", slow, "--wal-dir", walDirectory, "--kafka-bootstrap", bootstrap,
        ])
        func cursor() -> LSN { (try? WALInspector(directory: walDirectory).cursors().first?.lsn) ?? .zero }
        try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(5)) { cursor() > .zero }
        _ = try await first.stop(SIGKILL)
        let killedAt = cursor()
        #expect(killedAt < LSN(20_000), "the forwarder finished before it could be killed")

        let second = try SluiceProcess(["forwarder", "--wal-dir", walDirectory, "--kafka-bootstrap", bootstrap])
        // Logged once the service group runs, which installs the signal handlers first.
        _ = try await second.line(containing: "\"forwarder.started\"", timeout: .seconds(60))
        try await waitUntil(timeout: .seconds(60)) { cursor() == LSN(20_000) }
        let status = try await second.stop(SIGTERM)
        #expect(status == 0, "the forwarder exited with \(status) on SIGTERM: \(second.standardError)")

        let messages = try await consume(bootstrap, topic: "events")
        let ids = Set(messages.map(\.id))
        #expect(ids == Set(pipeline))
        let duplicates = messages.count - ids.count
        // Only what was sent after the last persisted cursor can be sent twice.
        #expect(duplicates <= 20_000 - Int(killedAt.rawValue))
        print(
            "forwarder kill test: killed at LSN \(killedAt), \(messages.count) messages, \(duplicates) duplicates, 0 missing"
        )
        #expect(try await kafka.stop() == 0)
    }
}

extension Pipeline {
    /// Fills a WAL with `events` normalized events and closes it; returns their ids by LSN.
    static func prefill(_ walDirectory: String, events: Int) async throws -> [String] {
        var configuration = WALConfiguration(directory: walDirectory)
        configuration.segmentBytes = 1 << 20
        configuration.budget = DiskBudget(maxBytes: 1 << 40, minFreeBytes: 0)
        let wal = try await WAL.openAndStart(configuration, logger: quietLogger)
        let writer = Prefill(wal: wal)
        let ids = try await writer.append(events)
        await wal.close()
        return ids
    }
}

extension ForwarderTests {
    /// `sluice wal drain DIR`, what the Kubernetes drainer Job runs on a scaled-down gateway's
    /// volume: the backlog reaches Kafka and the command exits 0 once the cursor is at the end;
    /// without Kafka it exits 1 at its timeout and loses nothing; a WAL another process holds
    /// is refused.
    @Test func walDrainForwardsTheBacklogAndExitsZeroAtTheEnd() async throws {
        let directory = try TemporaryDirectory()
        let walDirectory = directory.path + "/wal"
        let ids = try await Pipeline.prefill(walDirectory, events: 5_000)
        func cursor() -> LSN { (try? WALInspector(directory: walDirectory).cursors().first?.lsn) ?? .zero }
        let quiet = ["--log-level", "critical"]

        let unreachable = try await ChildProcess.runSluice(
            ["wal", "drain", walDirectory, "--kafka-bootstrap", "127.0.0.1:1", "--timeout", "2s"] + quiet
        )
        #expect(unreachable.status == 1)
        #expect(unreachable.standardError.contains("5000 of 5000 event(s) not drained"), "\(unreachable.standardError)")
        #expect(cursor() == .zero)

        let kafka = try await DevKafka.start(brokers: 3, topics: ["events:4"])
        let bootstrap = kafka.bootstrapServers
        let drained = try await ChildProcess.runSluice(
            ["wal", "drain", walDirectory, "--kafka-bootstrap", bootstrap] + quiet
        )
        #expect(drained.status == 0, "\(drained.standardError)")
        #expect(drained.standardOutput.contains("draining 5000 event(s), LSN 0 ..< 5000"))
        #expect(drained.standardOutput.contains("drained: the forwarder cursor reached the end (LSN 5000)"))
        #expect(cursor() == LSN(5_000))
        let messages = try await consume(bootstrap, topic: "events")
        #expect(Set(messages.map(\.id)) == Set(ids))

        let again = try await ChildProcess.runSluice(
            ["wal", "drain", walDirectory, "--kafka-bootstrap", bootstrap] + quiet
        )
        #expect(again.status == 0)
        #expect(again.standardOutput.contains("nothing to drain"))

        let owner = try SluiceProcess(["forwarder", "--wal-dir", walDirectory, "--kafka-bootstrap", bootstrap])
        _ = try await owner.line(containing: "\"forwarder.started\"", timeout: .seconds(60))
        let locked = try await ChildProcess.runSluice(
            ["wal", "drain", walDirectory, "--kafka-bootstrap", bootstrap] + quiet
        )
        #expect(locked.status == 2)
        #expect(locked.standardError.contains("is locked by process"), "\(locked.standardError)")
        #expect(try await owner.stop(SIGTERM) == 0)

        let noKafka = try await ChildProcess.runSluice(["wal", "drain", walDirectory] + quiet)
        #expect(noKafka.status == 2)
        #expect(noKafka.standardError.contains("no Kafka to drain into"))
        #expect(try await kafka.stop() == 0)
    }
}
