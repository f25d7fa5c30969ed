import ArgumentParser
import ClickHouse
import EventModel
import Foundation
import Kafka
import Ledger
import Loader
import LocalClickHouse
import Logging
import ServiceLifecycle
import SluiceCommands
import SluiceCore
import SluiceTestKit
import Synchronization

/// `sluice-bench loader`: the loader's rate from the mock cluster into ClickHouse, against
/// curl inserting the same rows as one JSONEachRow body into the same server in the same run;
/// then the ingest-to-insert delay at a steady rate. The rate is timed from the moment the
/// loader has joined its group (the join, mostly the coordinator's initial rebalance delay, is
/// printed apart and in a second ratio); the encoder's cost per row is printed for both formats.
struct LoaderBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loader",
        abstract: "Measure the loader's rows/s against curl into the same ClickHouse, and its delay at a steady rate."
    )

    @Option(help: "ClickHouse HTTP URL of a server that may be written to (database sluice_bench).")
    var clickhouseUrl: String

    @Option(help: "Events to load.")
    var events: Int = 1_000_000

    @Option(help: "Partitions of the topic (the mock keeps ~5 MiB per partition: spread the data).")
    var partitions: Int = 64

    @Option(help: "Events per second for the delay measurement (0 skips it).")
    var rate: Int = 5000

    @Option(help: "Seconds of steady load for the delay measurement.")
    var seconds: Int = 20

    @Option(help: "The loader's insert format: RowBinary or JSONEachRow (curl always sends JSONEachRow).")
    var format: String = LoaderConfiguration.defaultFormat.rawValue

    @Option(help: "The loader's batch size in rows (loader.batch_rows).")
    var batchRows: Int = 20_000

    @Option(help: "The loader's batch size in MiB of messages (loader.batch_bytes).")
    var batchMib: Int = 16

    @Option(
        help: ArgumentHelp(
            "Also load the same messages with the conservation ledger off and on, this many times each, alternating.",
            discussion: "Each load is a new group into the same table; the ledger's records go to sluice.ledger."
        )
    )
    var ledgerRounds = 0

    func validate() throws {
        guard InsertFormat(name: self.format) != nil else {
            throw ValidationError("--format must be RowBinary or JSONEachRow")
        }
        guard self.batchRows > 0, self.batchMib > 0 else {
            throw ValidationError("--batch-rows and --batch-mib must be positive")
        }
    }

    func run() async throws {
        var quiet = Logger(label: "sluice.bench")
        quiet.logLevel = .error
        let directory = FileManager.default.temporaryDirectory.path + "/sluice-loader-bench-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }

        let cluster = try await DevKafka.start(
            topics: ["events:\(self.partitions)", "steady:\(self.partitions)", "sluice.ledger:1"],
            sluice: siblingSluice()
        )
        defer { cluster.process.signal(SIGTERM) }
        let bootstrap = cluster.bootstrapServers

        let clickHouse = ClickHouseClient(ClickHouseConfiguration(url: self.clickhouseUrl), logger: quiet)
        try await withShutdown(clickHouse) {
            let version = try await clickHouse.serverVersion()
            try await clickHouse.execute("DROP DATABASE IF EXISTS sluice_bench")
            try await clickHouse.execute("CREATE DATABASE sluice_bench")
            var route = LoaderRoute.events
            route.table = "sluice_bench.events"
            var baseline = route
            baseline.table = "sluice_bench.baseline"
            try await clickHouse.execute(baseline.createTable(on: version))

            // The same events for both: Kafka messages for the loader, JSONEachRow rows for curl.
            let delivered = BenchTally()
            let producer = try KafkaProducer(
                properties: ["bootstrap.servers": bootstrap, "linger.ms": "20", "compression.type": "lz4"],
                onDelivery: { reports in delivered.add(reports.count) }
            )
            let encoder = RowEncoder(route: route, version: version, format: .jsonEachRow)
            let rowsPath = directory + "/rows.ndjson"
            guard FileManager.default.createFile(atPath: rowsPath, contents: nil) else {
                printError("sluice: cannot create \(rowsPath)")
                throw ExitCode.failure
            }
            let rowsFile = try FileHandle(forWritingTo: URL(fileURLWithPath: rowsPath))
            var chunk: [UInt8] = []
            var totalBytes = 0
            for n in 0..<self.events {
                let value = Self.event(n)
                totalBytes += value.count
                chunk += try encoder.encode(value).row
                if chunk.count > 1 << 20 {
                    try rowsFile.write(contentsOf: chunk)
                    chunk.removeAll(keepingCapacity: true)
                }
                // The headers the forwarder sets that the ledger reads: the event's identity.
                try await Self.send(
                    producer,
                    topic: "events",
                    key: "user-\(n % 1000)",
                    value: value,
                    headers: [("gateway_id", Array("gw-bench".utf8)), ("wal_lsn", Array(String(n).utf8))],
                    id: n
                )
            }
            try rowsFile.write(contentsOf: chunk)
            try rowsFile.close()
            while delivered.value < self.events { try await Task.sleep(for: .milliseconds(20)) }
            let encoding = Self.encodingCost(route: route, version: version)

            // Baseline: curl, one INSERT with every row.
            let curlStart = ContinuousClock.now
            let curl = Process()
            curl.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
            curl.arguments = [
                "-sS", "--fail", "--data-binary", "@" + rowsPath,
                self.clickhouseUrl + "/?query="
                    + (baseline.insertPrefix(.jsonEachRow).addingPercentEncoding(withAllowedCharacters: .alphanumerics)
                        ?? ""),
            ]
            try curl.run()
            curl.waitUntilExit()
            let curlSeconds = Self.seconds(ContinuousClock.now - curlStart)
            guard curl.terminationStatus == 0 else {
                printError("sluice: curl failed with status \(curl.terminationStatus)")
                throw ExitCode.failure
            }

            // The loader: from an empty group to every row confirmed.
            var configuration = LoaderConfiguration(
                kafkaProperties: ["bootstrap.servers": bootstrap],
                clickHouse: ClickHouseConfiguration(url: self.clickhouseUrl)
            )
            configuration.groupID = "bench-\(getpid())"
            configuration.routes = [route]
            configuration.format = InsertFormat(name: self.format) ?? LoaderConfiguration.defaultFormat
            configuration.batchRows = self.batchRows
            configuration.batchBytes = self.batchMib << 20
            let loader = Loader(configuration: configuration, logger: quiet)
            let group = ServiceGroup(services: [loader], logger: quiet)
            let loaderStart = ContinuousClock.now
            let running = Task { try await group.run() }
            // Joining an empty group waits out the coordinator's initial rebalance delay (3 s in
            // the mock cluster, group.initial.rebalance.delay.ms on a broker): a start-up cost,
            // timed apart from the rate.
            while loader.partitionsAssigned == 0 { try await Task.sleep(for: .milliseconds(5)) }
            let joined = ContinuousClock.now
            while loader.rowsInserted < self.events { try await Task.sleep(for: .milliseconds(20)) }
            let loaderSeconds = Self.seconds(ContinuousClock.now - joined)
            let joinSeconds = Self.seconds(joined - loaderStart)
            await group.triggerGracefulShutdown()
            try await running.value

            let baselineRows = try await clickHouse.query(
                "SELECT count() FROM sluice_bench.baseline FORMAT TabSeparated"
            )
            let loadedRows = try await clickHouse.query(
                "SELECT uniqExact(event_id) FROM sluice_bench.events FORMAT TabSeparated"
            )
            let curlRate = Double(self.events) / curlSeconds
            let loaderRate = Double(self.events) / loaderSeconds
            print(
                """
                loader bench: \(self.events) events of ~\(totalBytes / max(1, self.events)) B, \(self.partitions) partitions, ClickHouse \(version)
                  curl, one JSONEachRow INSERT:     \(String(format: "%.0f", curlRate)) rows/s (\(String(format: "%.2f", curlSeconds)) s, \(baselineRows.trimmingCharacters(in: .whitespacesAndNewlines)) rows)
                  loader (Kafka → ClickHouse):      \(String(format: "%.0f", loaderRate)) rows/s (\(String(format: "%.2f", loaderSeconds)) s from joining the group to the last row confirmed, \(loadedRows.trimmingCharacters(in: .whitespacesAndNewlines)) distinct event_id, \(configuration.format.rawValue), batches of \(self.batchRows) rows or \(self.batchMib) MiB)
                  ratio loader / curl:              \(String(format: "%.2f", loaderRate / curlRate))x (\(String(format: "%.2f", Double(self.events) / (loaderSeconds + joinSeconds) / curlRate))x counting the \(String(format: "%.2f", joinSeconds)) s the group join took)
                  row encoding, one core:           \(encoding)
                """
            )

            if self.ledgerRounds > 0 {
                let publisher = try LedgerPublisher(
                    properties: ["bootstrap.servers": bootstrap],
                    topic: "sluice.ledger",
                    logger: quiet
                )
                var off: [Double] = []
                var on: [Double] = []
                for round in 0..<self.ledgerRounds {
                    for ledger in round % 2 == 0 ? [false, true] : [true, false] {
                        var rerun = configuration
                        rerun.groupID = "bench-\(ledger ? "ledger" : "noledger")\(round)-\(getpid())"
                        if ledger { rerun.ledger = publisher }
                        let again = Loader(configuration: rerun, logger: quiet)
                        let againGroup = ServiceGroup(services: [again], logger: quiet)
                        let againRunning = Task { try await againGroup.run() }
                        while again.partitionsAssigned == 0 { try await Task.sleep(for: .milliseconds(5)) }
                        let started = ContinuousClock.now
                        while again.rowsInserted < self.events { try await Task.sleep(for: .milliseconds(20)) }
                        let rate = Double(self.events) / Self.seconds(ContinuousClock.now - started)
                        await againGroup.triggerGracefulShutdown()
                        try await againRunning.value
                        if ledger { on.append(rate) } else { off.append(rate) }
                    }
                }
                await publisher.close()
                let ledgerBytes = ForwarderBenchCommand.topicBytes(bootstrap, topic: "sluice.ledger")
                func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
                func list(_ values: [Double]) -> String {
                    values.map { String(format: "%.0f", $0) }.joined(separator: ", ")
                }
                print(
                    """
                      conservation ledger, \(self.ledgerRounds) round(s) alternating (rows/s from the group join):
                        off: \(list(off)); median \(String(format: "%.0f", median(off)))
                        on:  \(list(on)); median \(String(format: "%.0f", median(on)))
                        ratio on / off: \(String(format: "%.2f", median(on) / median(off)))x; ledger topic \(ledgerBytes) B, \(String(format: "%.1f", Double(ledgerBytes) / Double(self.events * self.ledgerRounds))) B per event loaded
                    """
                )
            }

            guard self.rate > 0 else { return }
            // Steady load: events stamped with received_at = now, at `rate` per second.
            let delays = BenchDelays()
            var steady = configuration
            steady.groupID = "bench-steady-\(getpid())"
            var steadyRoute = route
            steadyRoute.topic = "steady"
            steadyRoute.deadLetterTopic = "steady.dlq"
            steady.routes = [steadyRoute]
            steady.insertObserver = { batch in delays.add(batch) }
            let steadyLoader = Loader(configuration: steady, logger: quiet)
            let steadyGroup = ServiceGroup(services: [steadyLoader], logger: quiet)
            let steadyRunning = Task { try await steadyGroup.run() }
            try await Task.sleep(for: .seconds(5))  // group join
            let total = self.rate * self.seconds
            let start = ContinuousClock.now
            for n in 0..<total {
                let due = start + .milliseconds(Int64(n) * 1000 / Int64(self.rate))
                if due > ContinuousClock.now { try await Task.sleep(until: due, clock: .continuous) }
                try? producer.send(
                    topic: "steady",
                    key: Array("u\(n % 1000)".utf8),
                    value: Self.event(self.events + n),
                    id: UInt64(n)
                )
            }
            let deadline = ContinuousClock.now + .seconds(60)
            while steadyLoader.rowsInserted < total && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
            await steadyGroup.triggerGracefulShutdown()
            try await steadyRunning.value
            producer.close()
            let sorted = delays.all.sorted()
            func percentile(_ p: Double) -> Int64 {
                sorted.isEmpty ? -1 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
            }
            print(
                """
                  steady \(self.rate) events/s for \(self.seconds) s: \(steadyLoader.rowsInserted) of \(total) loaded; ingest-to-insert delay p50 \(percentile(0.5)) ms, p99 \(percentile(0.99)) ms, max \(sorted.last ?? -1) ms
                """
            )
        }
    }

    /// The encoder's cost per row on one core, for each format, over 20,000 events encoded
    /// five times (the loader encodes a batch's slices on every core).
    static func encodingCost(route: LoaderRoute, version: ClickHouseVersion) -> String {
        let events = (0..<20_000).map { Self.event($0) }
        return InsertFormat.allCases.map { format in
            let encoder = RowEncoder(route: route, version: version, format: format)
            var scratch = RowEncoder.Scratch()
            var body: [UInt8] = []
            body.reserveCapacity(events.count * 600)
            var best = Duration.seconds(1000)
            for _ in 0..<5 {
                body.removeAll(keepingCapacity: true)
                let start = ContinuousClock.now
                for event in events {
                    _ = event.withUnsafeBufferPointer { try? encoder.encode($0, into: &body, scratch: &scratch) }
                }
                best = min(best, ContinuousClock.now - start)
            }
            let nanoseconds = Self.seconds(best) * 1e9 / Double(events.count)
            return "\(format.rawValue) \(String(format: "%.0f", nanoseconds)) ns/row (\(body.count / events.count) B)"
        }.joined(separator: ", ")
    }

    /// Queues one message, waiting while librdkafka's queue is full.
    static func send(
        _ producer: KafkaProducer,
        topic: String,
        key: String,
        value: [UInt8],
        headers: [(String, [UInt8])] = [],
        id: Int
    ) async throws {
        var queued = false
        while !queued {
            do {
                try producer.send(topic: topic, key: Array(key.utf8), value: value, headers: headers, id: UInt64(id))
                queued = true
            } catch {
                guard error.isRetriable else { throw error }
                try await Task.sleep(for: .milliseconds(5))
            }
        }
    }

    /// A ~400-byte normalized event, received now.
    static func event(_ n: Int) -> [UInt8] {
        Event(
            eventID: UUIDText.v7(millis: Timestamp.nowMillis()),
            action: ["page_view", "click", "add_to_cart", "purchase"][n % 4],
            userID: "user-\(n % 1000)",
            timestampMillis: Timestamp.nowMillis(),
            page: "https://shop.example/products/\(n % 500)?ref=campaign",
            object: "product-card-\(n % 40)",
            referrer: "https://search.example/?q=shoes",
            sessionID: "session-\(n % 5000)",
            properties: .object([
                ("price", .number("119.99")), ("currency", .string("EUR")), ("position", .number("3")),
            ])
        ).normalizedJSON(
            origin: RequestOrigin(
                receivedAtMillis: Timestamp.nowMillis(),
                clientIP: "203.0.113.7",
                userAgent: "Mozilla/5.0 (bench)",
                gatewayID: "gw-bench"
            )
        )
    }

    static func seconds(_ duration: Duration) -> Double {
        duration.seconds
    }
}

/// `sluice-bench loader-tls` (figure B7): the loader's rows/s into one ClickHouse over HTTPS
/// against over HTTP, in one sitting. Starts Debian's clickhouse-server with an HTTPS port (a
/// fresh self-signed certificate, trusted through `clickhouse.ca_file`) and the mock Kafka;
/// loads the same messages alternately over each, each time with a new group and table, and
/// compares the best round of each.
struct LoaderTLSBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loader-tls",
        abstract: "Measure the loader's rows/s over HTTPS against HTTP into the same ClickHouse."
    )

    @Option(help: "Events to load per round.")
    var events: Int = 500_000

    @Option(help: "Partitions of the topic.")
    var partitions: Int = 64

    @Option(help: "Rounds; each loads the events once over HTTP and once over HTTPS.")
    var rounds: Int = 2

    func validate() throws {
        guard self.events > 0, self.partitions > 0, self.rounds > 0 else {
            throw ValidationError("--events, --partitions and --rounds must be positive")
        }
    }

    func run() async throws {
        var quiet = Logger(label: "sluice.bench")
        quiet.logLevel = .error
        let server = try await ClickHouseServer.start(tls: true)
        defer { server.stop() }
        guard let httpsURL = server.httpsURL, let caFile = server.certificateFile else {
            printError("sluice: the server has no HTTPS port")
            throw ExitCode.failure
        }
        let cluster = try await DevKafka.start(topics: ["events:\(self.partitions)"], sluice: siblingSluice())
        defer { cluster.process.signal(SIGTERM) }
        let delivered = BenchTally()
        let producer = try KafkaProducer(
            properties: ["bootstrap.servers": cluster.bootstrapServers, "linger.ms": "20", "compression.type": "lz4"],
            onDelivery: { reports in delivered.add(reports.count) }
        )
        for n in 0..<self.events {
            try await LoaderBenchCommand.send(
                producer,
                topic: "events",
                key: "user-\(n % 1000)",
                value: LoaderBenchCommand.event(n),
                id: n
            )
        }
        while delivered.value < self.events { try await Task.sleep(for: .milliseconds(20)) }
        producer.close()

        let clickHouse = ClickHouseClient(ClickHouseConfiguration(url: server.httpURL), logger: quiet)
        try await withShutdown(clickHouse) {
            try await clickHouse.execute("CREATE DATABASE IF NOT EXISTS sluice_bench")
            var rates: [String: [Double]] = [:]
            for round in 0..<self.rounds {
                for (name, url, ca) in [("http", server.httpURL, nil), ("https", httpsURL, caFile)] {
                    var route = LoaderRoute.events
                    route.table = "sluice_bench.events_\(name)_\(round)"
                    var configuration = LoaderConfiguration(
                        kafkaProperties: ["bootstrap.servers": cluster.bootstrapServers],
                        clickHouse: ClickHouseConfiguration(url: url, caFile: ca)
                    )
                    configuration.groupID = "bench-tls-\(name)-\(round)-\(getpid())"
                    configuration.routes = [route]
                    let loader = Loader(configuration: configuration, logger: quiet)
                    let group = ServiceGroup(services: [loader], logger: quiet)
                    let running = Task { try await group.run() }
                    while loader.partitionsAssigned == 0 { try await Task.sleep(for: .milliseconds(5)) }
                    let joined = ContinuousClock.now
                    while loader.rowsInserted < self.events { try await Task.sleep(for: .milliseconds(20)) }
                    let rate = Double(self.events) / LoaderBenchCommand.seconds(ContinuousClock.now - joined)
                    await group.triggerGracefulShutdown()
                    try await running.value
                    try await clickHouse.execute("DROP TABLE \(route.table)")
                    print(
                        "  round \(round + 1) \(name):\(name == "http" ? " " : "") \(String(format: "%.0f", rate)) rows/s"
                    )
                    rates[name, default: []].append(rate)
                }
            }
            func median(_ values: [Double]) -> Double {
                let sorted = values.sorted()
                guard !sorted.isEmpty else { return 0 }
                return sorted.count % 2 == 1
                    ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
            }
            let http = rates["http"]?.max() ?? 0
            let https = rates["https"]?.max() ?? 0
            let httpMedian = median(rates["http"] ?? [])
            let httpsMedian = median(rates["https"] ?? [])
            print(
                """
                loader over HTTPS against HTTP: \(self.events) events, \(self.partitions) partitions, ClickHouse \(try await clickHouse.serverVersion()), \(self.rounds) round(s) each
                  HTTP:   best \(String(format: "%.0f", http)) rows/s, median \(String(format: "%.0f", httpMedian))
                  HTTPS:  best \(String(format: "%.0f", https)) rows/s, median \(String(format: "%.0f", httpsMedian)) (TLS 1.2+, certificate verified against clickhouse.ca_file)
                  ratio HTTPS / HTTP: \(String(format: "%.2f", https / max(http, 1)))x best, \(String(format: "%.2f", httpsMedian / max(httpMedian, 1)))x median
                """
            )
        }
    }
}

final class BenchTally: Sendable {
    private let count = Atomic<Int>(0)
    func add(_ n: Int) { self.count.add(n, ordering: .relaxed) }
    var value: Int { self.count.load(ordering: .relaxed) }
}

final class BenchDelays: Sendable {
    private let delays = Mutex<[Int64]>([])
    func add(_ batch: [Int64]) { self.delays.withLock { $0 += batch } }
    var all: [Int64] { self.delays.withLock { $0 } }
}
