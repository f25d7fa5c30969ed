import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization

/// `sluice-bench curve`: latency against offered load, open loop. Requests are sent at
/// scheduled times whatever the server does, and each latency counts from its schedule, so a
/// server that falls behind shows its queue (no coordinated omission). The rate rises step by
/// step until the server (or this client) cannot keep up.
struct CurveBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "curve",
        abstract: "Open-loop latency at rising request rates; one CSV line per rate.",
        discussion: """
            Prints `label,body,rate,achieved_rps,events_per_s,p50_ms,p99_ms,p999_ms,max_ms,errors` per \
            rate (with --output, appends them to the file). A step whose achieved rate falls below \
            90 % of the offered one, or whose p99 passes --stop-p99, is the last.
            """
    )

    @Option(help: "Where to post (e.g. http://127.0.0.1:18090/v1/events).")
    var url: String
    @Option(help: "The series' name in the output (durable, no-wal, nginx…).")
    var label: String
    @Option(help: "Events per request: 1 posts one JSON event, more an NDJSON batch.")
    var batch = 1
    @Option(help: "Offered request rates, comma-separated, in order.")
    var rates = "500,1000,2000,4000,6000,8000,12000,16000,24000"
    @Option(help: "Seconds per rate (after one second of warm-up at that rate).")
    var seconds = 10
    @Option(help: "Concurrent requests at most (connections).")
    var connections = 128
    @Option(help: "Stop after a step whose p99 passes this many milliseconds.")
    var stopP99 = 1_000.0
    @Option(help: "Append the CSV lines to this file.")
    var output: String?

    func run() async throws {
        let rates = self.rates.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !rates.isEmpty, rates.allSatisfy({ $0 > 0 }), self.seconds > 0, self.batch > 0, self.connections > 0
        else { throw ValidationError("--rates, --seconds, --batch and --connections must be positive") }
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool = .init(
            idleTimeout: .seconds(60),
            concurrentHTTP1ConnectionsPerHostSoftLimit: self.connections
        )
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        do {
            try await self.steps(rates, client: client)
        } catch {
            try? await client.shutdown()
            throw error
        }
        try await client.shutdown()
    }

    private func steps(_ rates: [Int], client: HTTPClient) async throws {
        let body = Self.body(batch: self.batch)
        let contentType = self.batch == 1 ? "application/json" : "application/x-ndjson"
        print("label,body,rate,achieved_rps,events_per_s,p50_ms,p99_ms,p999_ms,max_ms,errors")
        for rate in rates {
            _ = await OpenLoop(url: self.url, body: body, contentType: contentType, rate: rate, seconds: 1)
                .run(client: client, workers: self.connections)
            let step = await OpenLoop(
                url: self.url,
                body: body,
                contentType: contentType,
                rate: rate,
                seconds: self.seconds
            ).run(client: client, workers: self.connections)
            let latencies = Percentiles(step.latencies)
            func p(_ fraction: Double) -> Double {
                latencies.count == 0 ? .nan : Double(latencies.p(fraction)) / 1_000
            }
            let achieved = Double(step.acknowledged) / step.elapsed
            let line = String(
                format: "%@,%@,%d,%.0f,%.0f,%.2f,%.2f,%.2f,%.2f,%d",
                self.label,
                self.batch == 1 ? "single" : "batch\(self.batch)",
                rate,
                achieved,
                achieved * Double(self.batch),
                p(0.5),
                p(0.99),
                p(0.999),
                p(1),
                step.failed
            )
            print(line)
            if let output = self.output {
                let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
                try handle.seekToEnd()
                try handle.write(contentsOf: Data((line + "\n").utf8))
                try handle.close()
            }
            if achieved < 0.9 * Double(rate) || p(0.99) > self.stopP99 { break }
        }
    }

    /// The ~400 B event of scripts/bench/single.lua; a batch repeats it, one per line.
    static func body(batch: Int) -> ByteBuffer {
        let event =
            #"{"action":"page_view","user_id":"u-1234567","page":"https://shop.example.com/products/12345?utm_source=newsletter&utm_campaign=autumn","object":"product-card-12345","referrer":"https://www.example.org/search?q=running+shoes","session_id":"s-0f3c2a9d8e7b6a5c","properties":{"price":119.99,"currency":"EUR","category":"shoes/running","position":3,"experiment":"checkout-b","viewport":"1280x720","lang":"de-DE"}}"#
        return ByteBuffer(string: Array(repeating: event, count: batch).joined(separator: "\n"))
    }
}

/// One step of the curve: `rate × seconds` requests at fixed times, sent by whichever of the
/// workers is free; latencies in microseconds from each request's scheduled time.
struct OpenLoop: Sendable {
    let url: String
    let body: ByteBuffer
    let contentType: String
    let rate: Int
    let seconds: Int

    struct Step {
        var latencies: [Int64] = []
        var acknowledged = 0
        var failed = 0
        var elapsed = 0.0
    }

    func run(client: HTTPClient, workers: Int) async -> Step {
        let requests = self.rate * self.seconds
        let interval = 1e9 / Double(self.rate)
        let next = Counter()
        let start = ContinuousClock.now
        var step = await withTaskGroup(of: Step.self) { group in
            for _ in 0..<workers {
                group.addTask {
                    var mine = Step()
                    while true {
                        let index = next.take()
                        guard index < requests else { return mine }
                        let scheduled = start + .nanoseconds(Int64(Double(index) * interval))
                        if scheduled > ContinuousClock.now { try? await Task.sleep(until: scheduled) }
                        var request = HTTPClientRequest(url: self.url)
                        request.method = .POST
                        request.headers.add(name: "Content-Type", value: self.contentType)
                        request.body = .bytes(self.body)
                        var accepted = false
                        do {
                            let response = try await client.execute(request, timeout: .seconds(30))
                            _ = try await response.body.collect(upTo: 1 << 20)
                            accepted = (200..<300).contains(Int(response.status.code))
                        } catch {}
                        let elapsed = ContinuousClock.now - scheduled
                        if accepted {
                            mine.acknowledged += 1
                            mine.latencies.append(
                                elapsed.components.seconds * 1_000_000 + elapsed.components.attoseconds
                                    / 1_000_000_000_000
                            )
                        } else {
                            mine.failed += 1
                        }
                    }
                }
            }
            return await group.reduce(into: Step()) { total, one in
                total.latencies += one.latencies
                total.acknowledged += one.acknowledged
                total.failed += one.failed
            }
        }
        let elapsed = ContinuousClock.now - start
        step.elapsed = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return step
    }
}

/// The next request's index, shared by the workers.
private final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    func take() -> Int { self.value.add(1, ordering: .relaxed).oldValue }
}
