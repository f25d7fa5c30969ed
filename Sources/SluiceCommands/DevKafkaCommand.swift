import ArgumentParser
import Foundation
import Kafka

/// `sluice dev-kafka`: librdkafka's mock cluster as a standalone process, for kcat and other
/// tools on this machine. In memory; for development and tests only.
struct DevKafkaCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dev-kafka",
        abstract: "Run an in-memory Kafka mock cluster on loopback (development and tests only).",
        discussion: "Prints the bootstrap servers on the first line of stdout, then runs until SIGTERM or SIGINT."
    )

    @Option(help: "Number of brokers.")
    var brokers: Int = 3

    @Option(help: "Topics to create up front, as NAME:PARTITIONS (repeatable).")
    var topic: [String] = []

    func validate() throws {
        guard (1...16).contains(self.brokers) else { throw ValidationError("--brokers must be 1-16") }
        for spec in self.topic {
            let parts = spec.split(separator: ":")
            guard parts.count == 2, !parts[0].isEmpty, let count = Int(parts[1]), count > 0 else {
                throw ValidationError("--topic '\(spec)' must be NAME:PARTITIONS, e.g. events:6")
            }
        }
    }

    func run() async throws {
        let cluster: KafkaMockCluster
        do {
            cluster = try KafkaMockCluster(brokers: self.brokers)
            for spec in self.topic {
                let parts = spec.split(separator: ":")
                try cluster.createTopic(String(parts[0]), partitions: Int(parts[1])!)
            }
        } catch {
            printError("sluice: \(error)")
            throw ExitCode.failure
        }
        FileHandle.standardOutput.write(Data((cluster.bootstrapServers + "\n").utf8))
        printError(
            "sluice: mock Kafka cluster with \(self.brokers) broker(s) at \(cluster.bootstrapServers); Ctrl-C stops it"
        )
        await waitForTermination()
        withExtendedLifetime(cluster) {}
    }
}

/// Resumes a continuation on the first signal; keeps the signal sources alive until then.
final class SignalOnce: @unchecked Sendable {
    private let lock = NSLock()
    private var continuation: CheckedContinuation<Void, Never>?
    private var sources: [any DispatchSourceSignal] = []

    init(_ continuation: CheckedContinuation<Void, Never>) { self.continuation = continuation }

    func keep(_ source: any DispatchSourceSignal) {
        self.lock.withLock { self.sources.append(source) }
    }

    func fire() {
        let continuation = self.lock.withLock { () -> CheckedContinuation<Void, Never>? in
            defer { self.continuation = nil }
            return self.continuation
        }
        continuation?.resume()
    }
}

/// `sluice dev-kafka` as a child process of this binary, for the benchmarks: the mock keeps
/// every message in memory, which must not count against the process being measured.
package struct DevKafkaProcess {
    let process: Process
    /// The bootstrap list the child printed on its first line.
    package let bootstrapServers: String

    /// Starts 3 brokers with these topics (`NAME:PARTITIONS`), running `sluice dev-kafka` from
    /// `sluice` (this process's own binary, or the `sluice` beside `sluice-bench`).
    package static func start(topics: [String], sluice: String = CommandLine.arguments[0]) throws -> DevKafkaProcess {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: sluice)
        process.arguments = ["dev-kafka", "--brokers", "3"] + topics.flatMap { ["--topic", $0] }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        var firstLine = Data()
        while let byte = try output.fileHandleForReading.read(upToCount: 1), let character = byte.first,
            character != 0x0A
        {
            firstLine.append(character)
        }
        let bootstrap = String(decoding: firstLine, as: UTF8.self)
        guard !bootstrap.isEmpty else {
            process.terminate()
            process.waitUntilExit()
            printError("sluice: the mock cluster (sluice dev-kafka) did not start")
            throw ExitCode.failure
        }
        return DevKafkaProcess(process: process, bootstrapServers: bootstrap)
    }

    package func stop() {
        self.process.terminate()
        self.process.waitUntilExit()
    }
}

/// Returns on SIGTERM or SIGINT.
package func waitForTermination() async {
    signal(SIGTERM, SIG_IGN)
    signal(SIGINT, SIG_IGN)
    let queue = DispatchQueue(label: "sluice.signals")
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        let once = SignalOnce(continuation)
        for number in [SIGTERM, SIGINT] {
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler { once.fire() }
            source.resume()
            once.keep(source)
        }
    }
}
