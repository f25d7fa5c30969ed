import ArgumentParser
import Foundation
import SluiceTestKit

/// `sluice-bench scale-out`: events/s through the balancer (`ops/haproxy/sluice.cfg`) in front
/// of two gateways, against the same balancer configuration in front of one of them, in one
/// run, with wrk. Each gateway runs in a network namespace of its own (as the scale-out tests
/// do) with its WAL fsync'd before every 202 and its forwarder sending to the mock cluster.
struct ScaleOutBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scale-out",
        abstract: "Events/s through HAProxy to two gateways against one, in one run (needs root, ip, haproxy, wrk).",
        discussion: """
            Rounds alternate one gateway and two, so that drift (other work on the machine, the mock \
            cluster filling up) falls on both; the figure is the median of each. Requests are NDJSON \
            batches of 100 events (scripts/bench/batch.lua) over HTTPS to the balancer.
            """
    )

    @Option(help: "Seconds of load per round.")
    var seconds = 10

    @Option(help: "Rounds of each configuration.")
    var rounds = 3

    @Option(help: "Concurrent connections (wrk).")
    var connections = 32

    func validate() throws {
        guard self.seconds >= 1, self.rounds >= 1, self.connections >= 2 else {
            throw ValidationError("--seconds and --rounds must be at least 1, --connections at least 2")
        }
        guard TestNetwork.isAvailable, ChildProcess.find("wrk") != nil else {
            throw ValidationError("scale-out needs root, iproute2's ip, haproxy and wrk (scripts/setup)")
        }
    }

    func run() async throws {
        let cluster = try await DevKafka.start(topics: ["events:12"], sluice: siblingSluice())
        defer { cluster.process.signal(SIGTERM) }
        let fleet = try await GatewayFleet.start(
            gateways: 2,
            bootstrapServers: cluster.bootstrapServers,
            environment: ["SLUICE_LOGGING_LEVEL": "error"],
            sluice: siblingSluice()
        )
        let (single, singleURL) = try await fleet.balancer(over: [0])
        let script = repositoryRoot().appendingPathComponent("scripts/bench/batch.lua").path
        let eventsPerRequest = 100.0

        func measure(_ url: String, seconds: Int) async throws -> (eventsPerSecond: Double, failed: Int) {
            let result = try await ChildProcess.run(
                "wrk",
                [
                    "-t2", "-c\(self.connections)", "-d\(seconds)s", "-s", script,
                    "-H", "Authorization: Bearer \(fleet.key)", url + "/v1/events/batch",
                ],
                timeout: .seconds(seconds + 60)
            )
            let lines = result.standardOutput.split(separator: "\n")
            guard result.status == 0,
                let rate = lines.first(where: { $0.hasPrefix("Requests/sec:") })?
                    .split(separator: " ").last.flatMap({ Double($0) })
            else { throw ChildProcessError(description: "wrk failed: \(result.standardOutput)\(result.standardError)") }
            let failed = lines.first { $0.contains("Non-2xx") }?.split(separator: " ").last.flatMap { Int($0) } ?? 0
            return (rate * eventsPerRequest, failed)
        }

        _ = try await measure(singleURL, seconds: 2)  // warm-up: connections, TLS sessions, WAL segments
        _ = try await measure(fleet.url, seconds: 2)
        var one: [Double] = []
        var two: [Double] = []
        var failed = 0
        for round in 1...self.rounds {
            let a = try await measure(singleURL, seconds: self.seconds)
            let b = try await measure(fleet.url, seconds: self.seconds)
            one.append(a.eventsPerSecond)
            two.append(b.eventsPerSecond)
            failed += a.failed + b.failed
            print(
                "round \(round): one gateway \(Int(a.eventsPerSecond)) events/s, two gateways \(Int(b.eventsPerSecond)) events/s"
            )
        }
        func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
        let ratio = median(two) / median(one)
        print(
            """
            scale-out: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(self.connections) connections, \
            batches of \(Int(eventsPerRequest)) events over HTTPS through HAProxy
              one gateway:  \(Int(median(one))) events/s (median of \(self.rounds))
              two gateways: \(Int(median(two))) events/s (median of \(self.rounds))
              two / one:    \(String(format: "%.2f", ratio))×; non-2xx answers: \(failed)
            """
        )
        withExtendedLifetime(single) {}
        _ = try await fleet.stopGateways()
    }
}
