import Foundation

/// `sluice dev-kafka` as a child process: librdkafka's mock cluster in a process of its own,
/// for tests whose other processes (a `sluice forwarder`, kcat) need a Kafka to talk to, and
/// for the benchmarks (the mock keeps every message in memory, which must not count against
/// the process being measured).
public struct DevKafka: Sendable {
    public let process: ChildProcess
    /// The bootstrap list the child printed on its first line (`127.0.0.1:PORT,…`).
    public let bootstrapServers: String

    /// Starts `brokers` brokers with `topics` (`NAME:PARTITIONS`) created, running
    /// `dev-kafka` from `sluice` (default: the built `sluice`); returns once the cluster listens.
    public static func start(brokers: Int = 3, topics: [String] = [], sluice: String? = nil) async throws -> DevKafka {
        let process = try SluiceProcess(
            ["dev-kafka", "--brokers", "\(brokers)"] + topics.flatMap { ["--topic", $0] },
            executable: sluice
        )
        let bootstrapServers = try await process.firstLine(timeout: .seconds(20))
        return DevKafka(process: process, bootstrapServers: bootstrapServers)
    }

    /// SIGTERM, then the exit status (0 when it stopped cleanly).
    public func stop() async throws -> Int32 { try await self.process.stop(SIGTERM) }
}
