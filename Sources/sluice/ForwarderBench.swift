import ArgumentParser
import EventModel
import Forwarder
import Foundation
import Kafka
import Logging
import ServiceLifecycle
import WAL

/// `sluice forwarder-bench`: drain rate of a pre-filled WAL into the mock cluster, against
/// kcat producing the same messages to the same cluster in the same run.
struct ForwarderBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forwarder-bench",
        abstract: "Measure the forwarder's drain rate against kcat on the same mock cluster."
    )

    @Argument(help: "A directory for the WAL and kcat's input (removed afterwards).")
    var directory: String

    @Option(help: "Events to drain.")
    var events: Int = 1_000_000

    @Option(help: "Partitions of each topic.")
    var partitions: Int = 12

    func run() async throws {
        let root = self.directory + "/sluice-forwarder-bench-\(getpid())"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        var quiet = Logger(label: "sluice.bench")
        quiet.logLevel = .error

        let cluster = try KafkaMockCluster(brokers: 3)
        try cluster.createTopic("events", partitions: self.partitions)
        try cluster.createTopic("kcat", partitions: self.partitions)

        // The same ~400-byte normalized events for both.
        var configuration = WALConfiguration(directory: root + "/wal")
        configuration.budget = DiskBudget(maxBytes: 1 << 40, minFreeBytes: 0)
        let wal = try await WAL.open(configuration, logger: quiet)
        let origin = RequestOrigin(
            receivedAtMillis: Timestamp.nowMillis(),
            clientIP: "203.0.113.7",
            userAgent: "bench",
            gatewayID: "gw-bench"
        )
        var lines = Data()
        var batch: [[UInt8]] = []
        for index in 0..<self.events {
            let event = Event(
                eventID: UUIDText.v7(millis: origin.receivedAtMillis),
                action: "page_view",
                userID: "user-\(index % 10_000)",
                timestampMillis: origin.receivedAtMillis,
                page: "https://shop.example.com/p/\(index % 5000)",
                object: "product-card-\(index % 5000)",
                referrer: "https://www.example.org/search?q=running+shoes",
                sessionID: "s-\(index % 50_000)",
                properties: .object([
                    ("price", .number("119.99")), ("currency", .string("EUR")), ("position", .number("3")),
                ])
            )
            let json = event.normalizedJSON(origin: origin)
            batch.append(json)
            lines.append(contentsOf: Array(event.userID.utf8) + [0x09] + json + [0x0A])
            if batch.count == 100 {
                _ = try await wal.append(batch)
                batch.removeAll(keepingCapacity: true)
            }
        }
        if !batch.isEmpty { _ = try await wal.append(batch) }
        let inputPath = root + "/kcat-input.tsv"
        try lines.write(to: URL(fileURLWithPath: inputPath))
        let averageBytes = lines.count / max(1, self.events)

        // kcat: the same messages with the same keys, idempotent, acks=all, lz4.
        let kcatStart = ContinuousClock.now
        let kcat = Process()
        kcat.executableURL = URL(fileURLWithPath: "/usr/bin/kcat")
        kcat.arguments = [
            "-P", "-b", cluster.bootstrapServers, "-t", "kcat", "-K", "\t", "-l", inputPath,
            "-X", "enable.idempotence=true", "-X", "acks=all", "-X", "compression.type=lz4", "-X", "linger.ms=5",
        ]
        try kcat.run()
        kcat.waitUntilExit()
        let kcatSeconds = Self.seconds(ContinuousClock.now - kcatStart)
        guard kcat.terminationStatus == 0 else {
            printError("sluice: kcat failed with status \(kcat.terminationStatus)")
            throw ExitCode.failure
        }

        // The forwarder, from an empty cursor to the end of the WAL.
        var forwarding = ForwarderConfiguration(kafkaProperties: ["bootstrap.servers": cluster.bootstrapServers])
        forwarding.commitInterval = .milliseconds(50)
        let forwarder = Forwarder(wal: wal, configuration: forwarding, logger: quiet)
        let group = ServiceGroup(services: [forwarder], logger: quiet)
        let forwarderStart = ContinuousClock.now
        let running = Task { try await group.run() }
        var peakRSS = Self.residentBytes()
        let end = LSN(UInt64(self.events))
        while (wal.cursor("forwarder")?.lsn ?? .zero) < end {
            try await Task.sleep(for: .milliseconds(20))
            peakRSS = max(peakRSS, Self.residentBytes())
        }
        let forwarderSeconds = Self.seconds(ContinuousClock.now - forwarderStart)
        await group.triggerGracefulShutdown()
        try await running.value
        await wal.close()

        let counter = try KafkaProducer(
            properties: ["bootstrap.servers": cluster.bootstrapServers],
            onDelivery: { _ in }
        )
        let inKafka = try counter.endOffsets(topic: "events").values.reduce(0, +)
        let byKcat = try counter.endOffsets(topic: "kcat").values.reduce(0, +)
        counter.close()

        let kcatRate = Double(self.events) / kcatSeconds
        let forwarderRate = Double(self.events) / forwarderSeconds
        print(
            """
            forwarder bench: \(self.events) events of ~\(averageBytes) B, \(self.partitions) partitions, 3 mock brokers
              kcat -P (idempotent, acks=all, lz4):   \(String(format: "%.0f", kcatRate)) msg/s (\(String(format: "%.2f", kcatSeconds)) s, \(byKcat) in Kafka)
              forwarder (WAL → Kafka, cursor at end): \(String(format: "%.0f", forwarderRate)) msg/s (\(String(format: "%.2f", forwarderSeconds)) s, \(inKafka) in Kafka)
              ratio forwarder / kcat:                 \(String(format: "%.2f", forwarderRate / kcatRate))x
              peak resident memory while draining:    \(peakRSS / (1 << 20)) MiB (WAL backlog \(lines.count / (1 << 20)) MiB)
            """
        )
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    /// VmRSS of this process, from /proc.
    static func residentBytes() -> Int {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
            let kilobytes = Int(line.split(separator: " ").dropFirst().first ?? "")
        else { return 0 }
        return kilobytes * 1024
    }
}
