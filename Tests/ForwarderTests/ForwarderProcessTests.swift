import Foundation
import Synchronization
import TestSupport
import Testing
import WAL

/// A `sluice` child process whose output goes to a file the test reads.
final class Child: @unchecked Sendable {
    let process = Process()
    let logPath: String

    init(_ arguments: [String], environment: [String: String] = [:]) throws {
        self.process.executableURL = URL(fileURLWithPath: try sluiceBinary())
        self.process.arguments = arguments
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("SLUICE_") || $0.key == "SLUICE_BIN" }
        env.merge(environment) { $1 }
        self.process.environment = env
        self.logPath = FileManager.default.temporaryDirectory.path + "/sluice-child-\(UUID().uuidString).log"
        _ = FileManager.default.createFile(atPath: self.logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: self.logPath))
        self.process.standardOutput = log
        self.process.standardError = log
        try self.process.run()
    }

    deinit { try? FileManager.default.removeItem(atPath: self.logPath) }

    var text: String { (try? String(contentsOfFile: self.logPath, encoding: .utf8)) ?? "" }

    func firstLine() async throws -> String {
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if let line = self.text.split(separator: "\n").first, self.text.contains("\n") { return String(line) }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw CocoaError(.fileReadUnknown)
    }

    func stop(_ signal: Int32) async throws -> Int32 {
        kill(self.process.processIdentifier, signal)
        let process = self.process
        try await offPool { process.waitUntilExit() }
        return process.terminationStatus
    }
}

extension ForwarderTests {
    @Test func aForwarderKilledMidStreamLeavesNoGapAndFewDuplicates() async throws {
        let directory = try TemporaryDirectory()
        let walDirectory = directory.path + "/wal"
        let pipeline = try await Pipeline.prefill(walDirectory, events: 20_000)
        let kafka = try Child(["dev-kafka", "--brokers", "3", "--topic", "events:4"])
        let bootstrap = try await kafka.firstLine()

        // Few messages in flight, each batch lingering 20 ms: the drain takes seconds, long
        // enough to be interrupted even on a busy machine.
        let slow = directory.path + "/slow.yaml"
        try "forwarder:\n  max_in_flight: 100\nkafka:\n  properties:\n    linger.ms: 20\n".write(
            toFile: slow,
            atomically: true,
            encoding: .utf8
        )
        let first = try Child([
            "forwarder", "--config", slow, "--wal-dir", walDirectory, "--kafka-bootstrap", bootstrap,
        ])
        func cursor() -> LSN { (try? WALInspector(directory: walDirectory).cursors().first?.lsn) ?? .zero }
        try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(5)) { cursor() > .zero }
        _ = try await first.stop(SIGKILL)
        let killedAt = cursor()
        #expect(killedAt < LSN(20_000), "the forwarder finished before it could be killed")

        let second = try Child(["forwarder", "--wal-dir", walDirectory, "--kafka-bootstrap", bootstrap])
        try await waitUntil(timeout: .seconds(60)) { cursor() == LSN(20_000) }
        try await Task.sleep(for: .seconds(1))  // signal handling is installed just after start-up
        let status = try await second.stop(SIGTERM)
        #expect(status == 0, "the forwarder exited with \(status) on SIGTERM")

        let messages = try await consume(bootstrap, topic: "events")
        let ids = Set(messages.map(\.id))
        #expect(ids == Set(pipeline))
        let duplicates = messages.count - ids.count
        // Only what was sent after the last persisted cursor can be sent twice.
        #expect(duplicates <= 20_000 - Int(killedAt.rawValue))
        print(
            "forwarder kill test: killed at LSN \(killedAt), \(messages.count) messages, \(duplicates) duplicates, 0 missing"
        )
        _ = try await kafka.stop(SIGTERM)
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
