import ArgumentParser
import AsyncHTTPClient
import ClickHouse
import Foundation
import LocalClickHouse
import Logging
import NIOCore
import NIOHTTP1
import SluiceCommands
import SluiceCore
import SluiceTestKit
import Synchronization

/// `sluice-bench pipeline`: the whole pipeline under a steady load for minutes, as deployed
/// on one host: `sluice all` (gateway, forwarder, loader) as a child process, the mock
/// cluster as another, a local ClickHouse. Reports throughput, ack latency, ingest-to-queryable
/// delay and lost events.
struct PipelineBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pipeline",
        abstract: "Run the whole pipeline at a steady rate; report throughput, ack latency, delay and losses.",
        discussion: """
            Requests are scheduled at fixed times (batch/rate apart) and their latency counts from the \
            scheduled time, so a stalled server cannot hide its queue (no coordinated omission). Every \
            second a probe event is sent and ClickHouse is polled for it: the ingest-to-queryable delay. \
            At the end every acknowledged event id must be in ClickHouse.
            """
    )

    @Option(help: "Seconds of load.")
    var seconds = 600

    @Option(help: "Events per second.")
    var rate = 5000

    @Option(help: "Approximate size of one event's JSON, in bytes.")
    var size = 4096

    @Option(help: "Events per request (the reference load: 1,000 requests/s of 5 events).")
    var batch = 5

    @Option(help: "Concurrent connections.")
    var connections = 64

    @Option(help: "Partitions of the events topic (the mock keeps ~5 MiB per partition).")
    var partitions = 256

    @Option(
        help:
            "Nice value added to ClickHouse and the mock Kafka, as operations.md advises on a shared host (0: the gateway's priority)."
    )
    var backendNiceness = 10

    @Flag(help: "On a loss, keep everything running for inspection until Ctrl-C.")
    var holdOnLoss = false

    @Option(help: "Working directory (WAL, ClickHouse); removed afterwards.")
    var directory = FileManager.default.temporaryDirectory.path + "/sluice-pipeline-bench"

    func validate() throws {
        guard self.seconds > 0, self.rate > 0, self.batch > 0, self.connections > 0 else {
            throw ValidationError("--seconds, --rate, --batch and --connections must be positive")
        }
        guard (300...1_000_000).contains(self.size) else { throw ValidationError("--size must be 300-1000000") }
        guard (0...19).contains(self.backendNiceness) else {
            throw ValidationError("--backend-niceness must be 0-19")
        }
    }

    func run() async throws {
        var quiet = Logger(label: "sluice.bench")
        quiet.logLevel = .error
        try? FileManager.default.removeItem(atPath: self.directory)
        try FileManager.default.createDirectory(atPath: self.directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: self.directory) }

        let cluster = try await DevKafka.start(topics: ["events:\(self.partitions)"], sluice: siblingSluice())
        defer { cluster.process.signal(SIGTERM) }
        // Its threads are all running once it printed its bootstrap list.
        renice(cluster.process.processIdentifier, by: Int32(self.backendNiceness))
        // As operations.md advises for a shared host: the backends yield to the gateway.
        let clickHouse = try await ClickHouseServer.start(niceness: Int32(self.backendNiceness))
        defer { clickHouse.stop() }
        let configuration = self.directory + "/sluice.yaml"
        try """
        gateway:
          listen: 127.0.0.1:0
          max_batch_events: \(max(self.batch, 1000))
        wal:
          directory: \(self.directory)/wal
          keep_consumed: \(self.holdOnLoss ? "1h" : "0s")
        kafka:
          bootstrap_servers: \(cluster.bootstrapServers)
          properties:
            log_level: 3
        clickhouse:
          url: \(clickHouse.httpURL)
        logging:
          level: warning
        auth:
          required: false    # the pipeline's pace; scripts/bench-auth measures the front door
        """.write(toFile: configuration, atomically: true, encoding: .utf8)
        let pipeline = try BenchChild(arguments: ["all", "--config", configuration])
        defer { pipeline.stop() }
        let port = try await pipeline.listeningPort()
        let url = "http://127.0.0.1:\(port)"
        // The final check reads every event id (tens of bytes each): allow a large answer.
        let analyst = ClickHouseClient(
            ClickHouseConfiguration(url: clickHouse.httpURL, timeout: .seconds(120), maxResponseBytes: 1 << 30),
            logger: quiet
        )
        try await withShutdown(analyst) {
            let client = HTTPClient(
                eventLoopGroupProvider: .singleton,
                configuration: .init(
                    connectionPool: .init(
                        idleTimeout: .seconds(60),
                        concurrentHTTP1ConnectionsPerHostSoftLimit: self.connections
                    )
                )
            )
            try await withShutdown(client) {
                printError(
                    "pipeline-bench: \(self.rate) events/s of ~\(self.size) B in requests of \(self.batch), for \(self.seconds) s; sluice all pid \(pipeline.pid)"
                )
                let padding = String(repeating: "x", count: max(0, self.size - 220))
                let load = ScheduledLoad(
                    url: url + "/v1/events/batch",
                    interval: Double(self.batch) / Double(self.rate),
                    requests: self.rate * self.seconds / self.batch,
                    batch: self.batch,
                    padding: padding
                )
                let probes = Probes()
                let started = ContinuousClock.now
                let deadline = started + .seconds(self.seconds)
                async let probing: Void = probes.run(
                    client: client,
                    analyst: analyst,
                    url: url + "/v1/events",
                    until: deadline
                )
                async let progress: Void = Self.report(
                    load: load,
                    pipeline: pipeline,
                    analyst: analyst,
                    until: deadline
                )
                await load.run(client: client, workers: self.connections)
                let loadSeconds = Self.seconds(ContinuousClock.now - started)
                _ = await (probing, progress)

                // Drain: every acknowledged event must become queryable.
                let acknowledged = load.acknowledgedCount
                let drainStarted = ContinuousClock.now
                var loaded = 0
                var lastReport = drainStarted
                while ContinuousClock.now < drainStarted + .seconds(300) {
                    loaded =
                        (try? await Self.number(
                            analyst,
                            "SELECT uniqExact(event_id) FROM sluice.events WHERE action = 'bench'"
                        ))
                        ?? 0
                    if loaded >= acknowledged { break }
                    if ContinuousClock.now - lastReport >= .seconds(10) {
                        lastReport = ContinuousClock.now
                        printError("  draining: \(loaded) of \(acknowledged) acknowledged events queryable")
                    }
                    try await Task.sleep(for: .seconds(1))
                }
                let drainSeconds = Self.seconds(ContinuousClock.now - drainStarted)
                var lost = max(0, acknowledged - loaded)
                if load.failedRequests > 0 || lost > 0 {
                    // Ids of failed requests may be in too; count exactly which acknowledged ones are not.
                    let inClickHouse = Set(
                        try await analyst.query(
                            "SELECT DISTINCT event_id FROM sluice.events WHERE action = 'bench' FORMAT TabSeparated"
                        )
                        .split(separator: "\n").map(String.init)
                    )
                    let missing = load.acknowledgedIDs.filter { !inClickHouse.contains($0) }
                    lost = missing.count
                    if !missing.isEmpty {
                        printError(
                            "  acknowledged but not in ClickHouse, e.g.: \(missing.prefix(5).joined(separator: ", "))"
                        )
                    }
                }
                let latency = load.latencies()
                let delays = probes.delays()
                print(
                    """
                    acknowledged \(acknowledged) events in \(load.acknowledgedRequests) requests (\(load.failedRequests) failed) \
                    in \(String(format: "%.1f", loadSeconds)) s: \(Int(Double(acknowledged) / max(loadSeconds, 1))) events/s (target \(self.rate))
                    ack latency (from the scheduled send): p50 \(latency.p(0.5)) ms, p99 \(latency.p(0.99)) ms, p99.9 \(latency.p(0.999)) ms, max \(latency.p(1)) ms
                    ingest-to-queryable delay (\(delays.count) probes): p50 \(delays.p(0.5)) ms, p99 \(delays.p(0.99)) ms, max \(delays.p(1)) ms
                    drained in \(String(format: "%.1f", drainSeconds)) s after the load; in ClickHouse: \(loaded) distinct; lost: \(lost)
                    sluice all: peak resident memory \(pipeline.peakResidentMiB() ?? -1) MiB
                    """
                )
                for (reason, count) in load.reasons.withLock({ $0 }).sorted(by: { $0.value > $1.value }) {
                    print("  failed requests: \(count) × \(reason)")
                }
                if lost > 0 {
                    if self.holdOnLoss {
                        printError(
                            "  holding for inspection (Ctrl-C ends): Kafka \(cluster.bootstrapServers), ClickHouse \(clickHouse.httpURL), WAL \(self.directory)/wal (kept segments: 1h)"
                        )
                        await waitForTermination()
                    }
                    throw ExitCode.failure
                }
            }
        }
    }

    /// A line every 30 s: where the load stands and how much memory the pipeline holds.
    static func report(
        load: ScheduledLoad,
        pipeline: BenchChild,
        analyst: ClickHouseClient,
        until deadline: ContinuousClock.Instant
    ) async {
        let started = ContinuousClock.now
        while ContinuousClock.now + .seconds(30) <= deadline {
            try? await Task.sleep(for: .seconds(30))
            let elapsed = (ContinuousClock.now - started).components.seconds
            let loaded =
                (try? await Self.number(analyst, "SELECT count() FROM sluice.events WHERE action = 'bench'")) ?? -1
            // The most frequent failure, so a run that fails every request says why at once.
            let reason = load.reasons.withLock { $0 }.max { $0.value < $1.value }.map { " (mostly \($0.key))" } ?? ""
            printError(
                "  \(elapsed) s: \(load.acknowledgedCount) acknowledged, \(loaded) rows in ClickHouse, \(load.failedRequests) failed requests\(reason), sluice all \(pipeline.residentMiB() ?? -1) MiB"
            )
        }
    }

    static func seconds(_ duration: Duration) -> Double {
        duration.seconds
    }

    static func number(_ client: ClickHouseClient, _ sql: String) async throws -> Int {
        Int(try await client.query(sql + " FORMAT TabSeparated").trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
    }
}

/// Sorted values (milliseconds, or microseconds in the latency curve), read as percentiles.
struct Percentiles {
    let sorted: [Int64]
    init(_ values: [Int64]) { self.sorted = values.sorted() }
    var count: Int { self.sorted.count }
    func p(_ fraction: Double) -> Int64 {
        guard !self.sorted.isEmpty else { return -1 }
        return self.sorted[min(self.sorted.count - 1, Int(Double(self.sorted.count) * fraction))]
    }
}

/// Requests at fixed times, `interval` apart, sent by whichever worker is free; each latency
/// counts from its scheduled time.
final class ScheduledLoad: Sendable {
    let url: String
    let interval: Double
    let requests: Int
    let batch: Int
    let padding: String
    private let next = Atomic<Int>(0)
    /// Why requests failed: `HTTP 503`, a client error…, with counts.
    let reasons = Mutex<[String: Int]>([:])
    private let state = Mutex<(ids: [String], latencies: [Int64], acknowledged: Int, failed: Int)>(([], [], 0, 0))

    init(url: String, interval: Double, requests: Int, batch: Int, padding: String) {
        self.url = url
        self.interval = interval
        self.requests = requests
        self.batch = batch
        self.padding = padding
    }

    var acknowledgedCount: Int { self.state.withLock { $0.ids.count } }
    var acknowledgedRequests: Int { self.state.withLock { $0.acknowledged } }
    var failedRequests: Int { self.state.withLock { $0.failed } }
    var acknowledgedIDs: [String] { self.state.withLock { $0.ids } }
    func latencies() -> Percentiles { Percentiles(self.state.withLock { $0.latencies }) }

    func run(client: HTTPClient, workers: Int) async {
        let start = ContinuousClock.now
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<workers {
                group.addTask {
                    while true {
                        let index = self.next.add(1, ordering: .relaxed).oldValue
                        guard index < self.requests else { return }
                        let scheduled = start + .nanoseconds(Int64(Double(index) * self.interval * 1e9))
                        if scheduled > ContinuousClock.now { try? await Task.sleep(until: scheduled) }
                        await self.send(client: client, scheduled: scheduled, user: index % 10_000)
                    }
                }
            }
        }
    }

    private func send(client: HTTPClient, scheduled: ContinuousClock.Instant, user: Int) async {
        let ids = (0..<self.batch).map { _ in UUID().uuidString.lowercased() }
        var body = ""
        body.reserveCapacity(self.batch * (self.padding.count + 256))
        for id in ids {
            body +=
                #"{"action":"bench","user_id":"u\#(user)","event_id":"\#(id)","page":"https://shop.example/p/\#(user)","object":"buy","properties":{"pad":"\#(self.padding)"}}"#
            body += "\n"
        }
        var request = HTTPClientRequest(url: self.url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/x-ndjson")
        request.body = .bytes(ByteBuffer(string: body))
        var accepted = false
        var failure = ""
        do {
            let response = try await client.execute(request, timeout: .seconds(30))
            _ = try await response.body.collect(upTo: 1 << 20)
            accepted = response.status == .accepted
            failure = "HTTP \(response.status.code)"
        } catch {
            failure = "\(error)"
        }
        let elapsed = ContinuousClock.now - scheduled
        let milliseconds = elapsed.milliseconds
        self.state.withLock {
            if accepted {
                $0.ids += ids
                $0.acknowledged += 1
                $0.latencies.append(milliseconds)
            } else {
                $0.failed += 1
                self.reasons.withLock { $0[failure, default: 0] += 1 }
            }
        }
    }
}

/// One probe event a second; ClickHouse polled every 100 ms until each is queryable.
final class Probes: Sendable {
    private let state = Mutex<(pending: [String: ContinuousClock.Instant], delays: [Int64])>(([:], []))

    func delays() -> Percentiles { Percentiles(self.state.withLock { $0.delays }) }

    func run(client: HTTPClient, analyst: ClickHouseClient, url: String, until deadline: ContinuousClock.Instant) async
    {
        async let sending: Void = {
            while ContinuousClock.now < deadline {
                let id = UUID().uuidString.lowercased()
                var request = HTTPClientRequest(url: url)
                request.method = .POST
                request.headers.add(name: "Content-Type", value: "application/json")
                request.body = .bytes(
                    ByteBuffer(string: #"{"action":"bench_probe","user_id":"probe","event_id":"\#(id)"}"#)
                )
                if let response = try? await client.execute(request, timeout: .seconds(30)),
                    response.status == .accepted
                {
                    let acknowledged = ContinuousClock.now
                    self.state.withLock { $0.pending[id] = acknowledged }
                }
                try? await Task.sleep(for: .seconds(1))
            }
        }()
        // Polls until every probe was seen, or 60 s after the load.
        while ContinuousClock.now < deadline + .seconds(60) {
            try? await Task.sleep(for: .milliseconds(100))
            let pending = self.state.withLock { $0.pending }
            if pending.isEmpty {
                if ContinuousClock.now >= deadline { break }
                continue
            }
            guard
                let text = try? await analyst.query(
                    "SELECT DISTINCT event_id FROM sluice.events WHERE action = 'bench_probe' FORMAT TabSeparated"
                )
            else { continue }
            let seen = ContinuousClock.now
            let found = Set(text.split(separator: "\n").map(String.init))
            self.state.withLock { state in
                for (id, acknowledged) in state.pending where found.contains(id) {
                    let delay = seen - acknowledged
                    state.delays.append(
                        delay.milliseconds
                    )
                    state.pending[id] = nil
                }
            }
        }
        await sending
    }
}

/// `sluice all` (or another role) as a child of the benchmark.
final class BenchChild: Sendable {
    private final class Output: Sendable {
        let bytes = Mutex<[UInt8]>([])
    }

    private let process: Process
    private let output = Output()

    init(arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: siblingSluice())
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.standardError
        self.process = process
        pipe.fileHandleForReading.readabilityHandler = { [output] handle in
            let data = handle.availableData
            if data.isEmpty { handle.readabilityHandler = nil } else { output.bytes.withLock { $0 += data } }
        }
        try process.run()
    }

    var pid: Int32 { self.process.processIdentifier }

    func listeningPort() async throws -> Int {
        for _ in 0..<3000 {
            let text = String(decoding: self.output.bytes.withLock { $0 }, as: UTF8.self)
            if let line = text.split(separator: "\n").first(where: { $0.contains("\"gateway.listening\"") }),
                let range = line.range(of: "\"server.port\":"),
                let port = Int(line[range.upperBound...].prefix { $0.isNumber })
            {
                return port
            }
            guard self.process.isRunning else { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        printError("sluice: the pipeline did not start")
        throw ExitCode.failure
    }

    /// `VmRSS` / `VmHWM` from /proc, in MiB.
    func residentMiB() -> Int? { self.status("VmRSS:") }
    func peakResidentMiB() -> Int? { self.status("VmHWM:") }

    private func status(_ field: String) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(self.pid)/status", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix(field) }),
            let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
        else { return nil }
        return kib / 1024
    }

    func stop() {
        guard self.process.isRunning else { return }
        self.process.terminate()
        self.process.waitUntilExit()
    }
}

/// Adds `niceness` to the nice value of every thread of process `pid`.
func renice(_ pid: pid_t, by niceness: Int32) {
    guard niceness > 0, let threads = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") else {
        return
    }
    for case let thread? in threads.map({ id_t($0) }) { _ = addNiceness(niceness, toThread: thread) }
}
