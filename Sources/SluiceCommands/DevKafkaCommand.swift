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
