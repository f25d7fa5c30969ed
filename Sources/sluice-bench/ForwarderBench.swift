import ArgumentParser
import Encryption
import EventModel
import Forwarder
import Foundation
import Kafka
import KafkaEnvelope
import Ledger
import Logging
import ServiceLifecycle
import SluiceCommands
import SluiceCore
import SluiceTestKit
import WAL

/// `sluice-bench forwarder`: drain rate of a pre-filled WAL into the mock cluster, against
/// kcat producing the same messages to the same cluster in the same run.
struct ForwarderBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forwarder",
        abstract:
            "Measure the forwarder's drain rate against kcat on the same mock cluster (run by `sluice dev-kafka`)."
    )

    @Argument(help: "A directory for the WAL and kcat's input (removed afterwards).")
    var directory: String

    @Option(help: "Events to drain.")
    var events: Int = 1_000_000

    @Option(help: "Partitions of each topic.")
    var partitions: Int = 12

    @Flag(help: "Skip kcat (and its input file): for long resident-memory runs over large backlogs.")
    var skipKcat = false

    @Option(
        help: ArgumentHelp(
            "Also drain the same WAL with payload encryption (kafka.encryption) on, this many times, alternating with plain drains.",
            discussion:
                "Each drain starts from its own cursor at LSN 0 and sends to its own topic; the ratio is the median sealed rate over the median plain one."
        )
    )
    var encryptionRounds = 0

    @Option(
        help: ArgumentHelp(
            "Also drain the same WAL with the conservation ledger off and on, this many times each, alternating.",
            discussion:
                "The ledger's records go to topic sluice.ledger of the same cluster, through their own producer, as in a gateway."
        )
    )
    var ledgerRounds = 0

    func run() async throws {
        let root = self.directory + "/sluice-forwarder-bench-\(getpid())"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        var quiet = Logger(label: "sluice.bench")
        quiet.logLevel = .error

        // The mock cluster keeps every message in memory: it runs as its own process
        // (`sluice dev-kafka`), so this process's resident memory is the forwarder's alone.
        let drains =
            (0..<self.encryptionRounds).flatMap { ["plain\($0)", "sealed\($0)"] }
            + (0..<self.ledgerRounds).flatMap { ["noledger\($0)", "ledger\($0)"] }
        let cluster = try await DevKafka.start(
            topics: ["events:\(self.partitions)", "kcat:\(self.partitions)", "sluice.ledger:1"]
                + drains.map { "\($0):\(self.partitions)" },
            sluice: siblingSluice()
        )
        defer { cluster.process.signal(SIGTERM) }
        let bootstrapServers = cluster.bootstrapServers

        // The same ~400-byte normalized events for both.
        var configuration = WALConfiguration(directory: root + "/wal")
        configuration.budget = DiskBudget(maxBytes: 1 << 40, minFreeBytes: 0)
        let wal = try await WAL.openAndStart(configuration, logger: quiet)
        let origin = RequestOrigin(
            receivedAtMillis: Timestamp.nowMillis(),
            clientIP: "203.0.113.7",
            userAgent: "bench",
            gatewayID: "gw-bench"
        )
        // kcat's input is written as it is generated, so this process holds no copy of the backlog.
        let inputPath = root + "/kcat-input.tsv"
        guard FileManager.default.createFile(atPath: inputPath, contents: nil),
            let input = FileHandle(forWritingAtPath: inputPath)
        else {
            printError("sluice: cannot create \(inputPath)")
            throw ExitCode.failure
        }
        var lines = Data()
        var inputBytes = 0
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
            let key = Array((event.userID ?? "").utf8)
            if !self.skipKcat { lines.append(contentsOf: key + [0x09] + json + [0x0A]) }
            inputBytes += json.count + key.count + 2
            if batch.count == 100 {
                _ = try await wal.append(batch)
                batch.removeAll(keepingCapacity: true)
                try input.write(contentsOf: lines)
                lines.removeAll(keepingCapacity: true)
            }
        }
        if !batch.isEmpty { _ = try await wal.append(batch) }
        // Every drain's cursor exists from the start, so that no drain lets the WAL delete
        // segments another one has still to read.
        for name in drains { _ = try await wal.openCursor(name, at: .zero) }
        try input.write(contentsOf: lines)
        lines = Data()
        try input.close()
        let averageBytes = inputBytes / max(1, self.events)

        // kcat: the same messages with the same keys, idempotent, acks=all, lz4.
        let kcatStart = ContinuousClock.now
        let kcat = Process()
        kcat.executableURL = URL(fileURLWithPath: "/usr/bin/kcat")
        kcat.arguments = [
            "-P", "-b", bootstrapServers, "-t", "kcat", "-K", "\t", "-l", inputPath,
            "-X", "enable.idempotence=true", "-X", "acks=all", "-X", "compression.type=lz4", "-X", "linger.ms=5",
            // The same five headers per message as the forwarder adds (kcat repeats static ones).
            "-H", "content_type=application/json", "-H", "schema_version=1", "-H", "wal_lsn=1000000",
            "-H", "event_id=0190f5d2-7a3c-7cc2-9b4e-3f6a1d2c4b5a", "-H", "gateway_id=bench",
        ]
        if !self.skipKcat {
            try kcat.run()
            kcat.waitUntilExit()
        }
        let kcatSeconds = self.skipKcat ? .nan : Self.seconds(ContinuousClock.now - kcatStart)
        guard self.skipKcat || kcat.terminationStatus == 0 else {
            printError("sluice: kcat failed with status \(kcat.terminationStatus)")
            throw ExitCode.failure
        }

        // The forwarder, from an empty cursor to the end of the WAL.
        var forwarding = ForwarderConfiguration(kafkaProperties: ["bootstrap.servers": bootstrapServers])
        forwarding.commitInterval = .milliseconds(50)
        if let value = ProcessInfo.processInfo.environment["BENCH_IN_FLIGHT"].flatMap(Int.init) {
            forwarding.maxInFlightEvents = value
        }
        // BENCH_COMPRESSION=none: the producer's batch compression off for every drain, to tell
        // how much of the encryption's cost is the bytes it leaves uncompressed.
        if let value = ProcessInfo.processInfo.environment["BENCH_COMPRESSION"] {
            forwarding.kafkaProperties["compression.type"] = value
        }
        let forwarder = Forwarder(wal: wal, configuration: forwarding, logger: quiet)
        let group = ServiceGroup(services: [forwarder], logger: quiet)
        let forwarderStart = ContinuousClock.now
        let running = Task { try await group.run() }
        let startRSS = Self.residentBytes()
        var peakRSS = startRSS
        // Resident memory at each tenth of the drain: flat means it does not grow with the backlog.
        var samples: [Int] = []
        let end = LSN(UInt64(self.events))
        while true {
            let cursor = wal.cursor("forwarder")?.lsn ?? .zero
            let rss = Self.residentBytes()
            peakRSS = max(peakRSS, rss)
            while samples.count < 10 && cursor.rawValue * 10 >= end.rawValue * UInt64(samples.count + 1) {
                samples.append(rss)
            }
            if cursor >= end { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        let forwarderSeconds = Self.seconds(ContinuousClock.now - forwarderStart)
        await group.triggerGracefulShutdown()
        try await running.value

        // Payload encryption off and on, alternating, each from LSN 0 to the end.
        var plainRates: [Double] = []
        var sealedRates: [Double] = []
        var sealNanoseconds = Double.nan
        if self.encryptionRounds > 0 {
            let keyFile = root + "/bench.key"
            try Keyring.writeNewKeyFile(keyFile)
            var encryption = EncryptionConfiguration()
            encryption.enabled = true
            encryption.keyFile = keyFile
            encryption.keyID = "bench"
            // The envelope alone, on one thread: what sealing costs per event, apart from Kafka.
            if let keyring = try encryption.keyring(prefix: "kafka.encryption"),
                let sealer = PayloadSealer(keyring: keyring)
            {
                let sample = Array(try await wal.tail(from: .zero).next(maxRecords: 1).first?.events.first ?? [])
                let hour = KafkaEnvelope.currentHour()
                let count = 200_000
                var bytes = 0
                let start = ContinuousClock.now
                for _ in 0..<count {
                    bytes += try sample.withUnsafeBytes { try sealer.seal($0, topic: "events", hour: hour).count }
                }
                sealNanoseconds = Self.seconds(ContinuousClock.now - start) * 1e9 / Double(count)
                print("  one sealed event: \(bytes / count) B for \(sample.count) B")
            }
            for round in 0..<self.encryptionRounds {
                for sealed in round % 2 == 0 ? [false, true] : [true, false] {
                    var drain = forwarding
                    drain.cursorName = (sealed ? "sealed" : "plain") + "\(round)"
                    drain.routing = TopicRouting(defaultTopic: drain.cursorName)
                    if sealed { drain.encryption = encryption }
                    let seconds = try await Self.drain(wal, drain, to: end, logger: quiet)
                    if sealed {
                        sealedRates.append(Double(self.events) / seconds)
                    } else {
                        plainRates.append(Double(self.events) / seconds)
                    }
                }
            }
        }
        // The conservation ledger off and on, alternating, each from LSN 0 to the end.
        var withoutLedger: [Double] = []
        var withLedger: [Double] = []
        var ledgerBytes: Int64 = 0
        if self.ledgerRounds > 0 {
            let publisher = try LedgerPublisher(
                properties: ["bootstrap.servers": bootstrapServers],
                topic: "sluice.ledger",
                logger: quiet
            )
            for round in 0..<self.ledgerRounds {
                for on in round % 2 == 0 ? [false, true] : [true, false] {
                    var drain = forwarding
                    drain.cursorName = (on ? "ledger" : "noledger") + "\(round)"
                    drain.routing = TopicRouting(defaultTopic: drain.cursorName)
                    drain.gatewayID = "gw-bench"
                    if on { drain.ledger = publisher }
                    let seconds = try await Self.drain(wal, drain, to: end, logger: quiet)
                    if on {
                        withLedger.append(Double(self.events) / seconds)
                    } else {
                        withoutLedger.append(Double(self.events) / seconds)
                    }
                }
            }
            await publisher.close()
            ledgerBytes = Self.topicBytes(bootstrapServers, topic: "sluice.ledger")
        }
        await wal.close()

        let counter = try KafkaProducer(
            properties: ["bootstrap.servers": bootstrapServers],
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
              resident memory while draining:         \(startRSS >> 20) MiB at the start, peak \(peakRSS >> 20) MiB (WAL backlog \(inputBytes >> 20) MiB)
              … at each tenth of the drain (MiB):     \(samples.map { String($0 >> 20) }.joined(separator: " "))
            """
        )
        if !withLedger.isEmpty {
            let off = Self.median(withoutLedger)
            let on = Self.median(withLedger)
            let recorded = Double(self.events * self.ledgerRounds)
            print(
                """
                  conservation ledger, \(self.ledgerRounds) round(s) alternating (msg/s of each drain):
                    off: \(withoutLedger.map { String(format: "%.0f", $0) }.joined(separator: ", ")); median \(String(format: "%.0f", off)) msg/s
                    on:  \(withLedger.map { String(format: "%.0f", $0) }.joined(separator: ", ")); median \(String(format: "%.0f", on)) msg/s
                    ratio on / off: \(String(format: "%.2f", on / off))x; ledger topic \(ledgerBytes) B of values, \(String(format: "%.1f", Double(ledgerBytes) / recorded)) B per event forwarded
                """
            )
        }
        guard !plainRates.isEmpty else { return }
        let plain = Self.median(plainRates)
        let sealed = Self.median(sealedRates)
        func rates(_ values: [Double]) -> String { values.map { String(format: "%.0f", $0) }.joined(separator: ", ") }
        print(
            """
              payload encryption, \(self.encryptionRounds) round(s) alternating (msg/s of each drain):
                off: \(rates(plainRates)); median \(String(format: "%.0f", plain)) msg/s, \(String(format: "%.1f", plain * Double(averageBytes) / 1e6)) MB/s of events
                on:  \(rates(sealedRates)); median \(String(format: "%.0f", sealed)) msg/s, \(String(format: "%.1f", sealed * Double(averageBytes) / 1e6)) MB/s of events
                ratio on / off: \(String(format: "%.2f", sealed / plain))x
                sealing alone (LZ4, AES-256-GCM, nonce), one thread: \(String(format: "%.0f", sealNanoseconds)) ns per event
            """
        )
    }

    /// The bytes of the values of `topic` (read whole with kcat); 0 when kcat fails.
    static func topicBytes(_ bootstrapServers: String, topic: String) -> Int64 {
        let kcat = Process()
        kcat.executableURL = URL(fileURLWithPath: "/usr/bin/kcat")
        kcat.arguments = ["-C", "-b", bootstrapServers, "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%S\n"]
        let pipe = Pipe()
        kcat.standardOutput = pipe
        guard (try? kcat.run()) != nil else { return 0 }
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        kcat.waitUntilExit()
        return String(decoding: output, as: UTF8.self).split(separator: "\n").reduce(0) { $0 + (Int64($1) ?? 0) }
    }

    /// Runs a forwarder with `configuration` until its cursor reaches `end`; the seconds taken.
    static func drain(
        _ wal: WAL,
        _ configuration: ForwarderConfiguration,
        to end: LSN,
        logger: Logger
    ) async throws -> Double {
        let forwarder = Forwarder(wal: wal, configuration: configuration, logger: logger)
        let group = ServiceGroup(services: [forwarder], logger: logger)
        let start = ContinuousClock.now
        let running = Task { try await group.run() }
        while (wal.cursor(configuration.cursorName)?.lsn ?? .zero) < end {
            try await Task.sleep(for: .milliseconds(20))
        }
        let seconds = Self.seconds(ContinuousClock.now - start)
        await group.triggerGracefulShutdown()
        try await running.value
        return seconds
    }

    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        return sorted.isEmpty ? .nan : sorted[sorted.count / 2]
    }

    static func seconds(_ duration: Duration) -> Double {
        duration.seconds
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
