import AsyncHTTPClient
import EventModel
import Foundation
import Gateway
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import NIOHTTP1
import Synchronization
import TestSupport
import Testing
import WAL

/// `sluice gateway` as a child process on a free port.
final class GatewayProcess: Sendable {
    let child: SluiceProcess
    /// 0 when the gateway exited before listening (the caller inspects the status).
    let port: Int

    /// Without credentials in `environment`, the gateway runs with `auth.required: false`:
    /// these tests are about the WAL and HTTP, and AuthProcessTests hold the front door.
    init(walDirectory: String, arguments: [String] = [], environment: [String: String] = [:]) async throws {
        self.child = try SluiceProcess(
            ["gateway", "--listen", "127.0.0.1:0", "--wal-dir", walDirectory] + arguments,
            environment: ["SLUICE_AUTH_REQUIRED": "false"].merging(environment) { $1 }
        )
        do {
            self.port = try await self.child.listeningPort(timeout: .seconds(20))
        } catch  where !self.child.isRunning {
            self.port = 0
        }
    }

    var url: String { "http://127.0.0.1:\(self.port)" }
    var standardOutput: String { self.child.standardOutput }
    var standardError: String { self.child.standardError }

    func signal(_ signal: Int32) { self.child.signal(signal) }

    func waitForExit(timeout: Duration = .seconds(20)) async throws -> Int32 {
        try await self.child.waitForExit(timeout: timeout)
    }
}

/// Posts events with known ids until stopped, remembering which ones got a 2xx.
final class Poster: Sendable {
    let acknowledged = Mutex<[String]>([])
    let failures = Mutex<Int>(0)
    /// Every request that got an answer: when it was sent, when the answer came, its status.
    let exchanges = Mutex<[(sent: ContinuousClock.Instant, answered: ContinuousClock.Instant, status: UInt)]>([])

    func run(url: String, client: HTTPClient, stop: @escaping @Sendable () -> Bool) async {
        while !stop() {
            let sent = ContinuousClock.now
            let ids = (0..<Int.random(in: 1...5)).map { _ in UUID().uuidString.lowercased() }
            let body = ids.map { #"{"action":"crash_test","user_id":"u","event_id":"\#($0)"}"# }.joined(separator: "\n")
            var request = HTTPClientRequest(url: url + "/v1/events/batch")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/x-ndjson")
            request.body = .bytes(ByteBuffer(string: body))
            do {
                let response = try await client.execute(request, timeout: .seconds(5))
                _ = try await response.body.collect(upTo: 1 << 20)
                let answered = ContinuousClock.now
                self.exchanges.withLock { $0.append((sent, answered, response.status.code)) }
                if response.status == .accepted {
                    self.acknowledged.withLock { $0 += ids }
                } else {
                    self.failures.withLock { $0 += 1 }
                }
            } catch {
                self.failures.withLock { $0 += 1 }
                try? await Task.sleep(for: .milliseconds(5))
            }
        }
    }
}

/// Event ids in a WAL directory, read with `sluice wal dump --json` as an operator would.
func dumpedEventIDs(_ walDirectory: String) async throws -> Set<String> {
    try await offPool { try dumpedEventIDsBlocking(walDirectory) }
}

private func dumpedEventIDsBlocking(_ walDirectory: String) throws -> Set<String> {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: try sluiceBinary())
    process.arguments = ["wal", "dump", walDirectory, "--json"]
    let out = Pipe()
    process.standardOutput = out
    try process.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    var ids: Set<String> = []
    for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
        let record = try JSONParser.parse(Array(line.utf8))
        guard case .string(let event) = record["event"] else { continue }
        if case .string(let id) = try JSONParser.parse(Array(event.utf8))["event_id"] { ids.insert(id) }
    }
    return ids
}

final class StopFlag: Sendable {
    private let flag = Mutex(false)
    var isSet: Bool { self.flag.withLock { $0 } }
    func set() { self.flag.withLock { $0 = true } }
}

@Suite(.serialized, .timeLimit(.minutes(5))) struct GatewayProcessTests {
    @Test func everyEventThatGot202SurvivesSIGKILL() async throws {
        let directory = try TemporaryDirectory()
        let wal = directory.path + "/wal"
        let client = HTTPClient.shared
        let poster = Poster()
        for round in 0..<3 {
            let gateway = try await GatewayProcess(walDirectory: wal)
            let stop = StopFlag()
            let url = gateway.url
            let before = poster.acknowledged.withLock { $0.count }
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<8 { group.addTask { await poster.run(url: url, client: client, stop: { stop.isSet }) } }
                // Kill mid-stream: once requests are flowing, at a random moment.
                let deadline = ContinuousClock.now + .seconds(15)
                while poster.acknowledged.withLock({ $0.count }) < before + 50 && ContinuousClock.now < deadline {
                    try? await Task.sleep(for: .milliseconds(10))
                }
                try? await Task.sleep(for: .milliseconds(Int.random(in: 50...500)))
                gateway.signal(SIGKILL)
                _ = try? await gateway.waitForExit()
                stop.set()
            }
            #expect(poster.acknowledged.withLock { $0.count } > before, "round \(round): nothing was acknowledged")
        }
        let acknowledged = poster.acknowledged.withLock { $0 }
        let stored = try await dumpedEventIDs(wal)
        let missing = acknowledged.filter { !stored.contains($0) }
        #expect(missing.isEmpty, "\(missing.count) of \(acknowledged.count) acknowledged events missing")
        print("gateway crash test: 3 SIGKILLs, \(acknowledged.count) acknowledged events, all in the WAL")
    }

    @Test func sigtermFinishesInFlightRequestsAndExitsZero() async throws {
        let directory = try TemporaryDirectory()
        let wal = directory.path + "/wal"
        let client = HTTPClient.shared
        let gateway = try await GatewayProcess(walDirectory: wal)
        let poster = Poster()
        let stop = StopFlag()
        let url = gateway.url
        var status: Int32 = -1
        var signalled = ContinuousClock.now
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<4 { group.addTask { await poster.run(url: url, client: client, stop: { stop.isSet }) } }
            // Under way: the posters have had answers (instead of a fixed pause).
            while poster.acknowledged.withLock({ $0.count }) < 50 { try? await Task.sleep(for: .milliseconds(10)) }
            signalled = ContinuousClock.now
            gateway.signal(SIGTERM)
            status = (try? await gateway.waitForExit()) ?? -1
            stop.set()
        }
        #expect(status == 0)
        // A request sent before SIGTERM and answered after it was answered 202: in flight, and
        // finished. (Four posters send back to back, so one is always on the wire.)
        let straddling = poster.exchanges.withLock { $0 }.filter { $0.sent < signalled && $0.answered > signalled }
        #expect(!straddling.isEmpty, "no request was in flight at SIGTERM")
        #expect(straddling.allSatisfy { $0.status == 202 }, "\(straddling.map(\.status))")
        #expect(gateway.standardOutput.contains("wal.closed"))
        let acknowledged = poster.acknowledged.withLock { $0 }
        #expect(!acknowledged.isEmpty)
        let stored = try await dumpedEventIDs(wal)
        #expect(acknowledged.allSatisfy { stored.contains($0) })
    }

    @Test func badConfigurationIsRefusedWithTheKeyAndValue() async throws {
        let directory = try TemporaryDirectory()
        let file = directory.path + "/sluice.yaml"
        try "gateway:\n  lisen: 127.0.0.1:9000\n".write(toFile: file, atomically: true, encoding: .utf8)
        let typo = try await GatewayProcess(walDirectory: directory.path + "/wal", arguments: ["--config", file])
        #expect(try await typo.waitForExit() == 2)
        #expect(typo.standardError.contains("sluice.yaml:2: unknown key gateway.lisen (did you mean gateway.listen?)"))

        let env = try await GatewayProcess(
            walDirectory: directory.path + "/wal",
            environment: ["SLUICE_GATEWAY_MAX_BATCH_EVENTS": "lots"]
        )
        #expect(try await env.waitForExit() == 2)
        #expect(
            env.standardError.contains(
                "environment SLUICE_GATEWAY_MAX_BATCH_EVENTS: gateway.max_batch_events = 'lots' is invalid: expected a whole number"
            )
        )
    }

    @Test func aSecondGatewayOnTheSameWALIsRefused() async throws {
        let directory = try TemporaryDirectory()
        let first = try await GatewayProcess(walDirectory: directory.path + "/wal")
        let second = try await GatewayProcess(walDirectory: directory.path + "/wal")
        #expect(try await second.waitForExit() == 2)
        #expect(second.standardError.contains("is locked by process \(first.child.processIdentifier)"))
        first.signal(SIGTERM)
        #expect(try await first.waitForExit() == 0)
    }
}

@Suite(.timeLimit(.minutes(1))) struct ClientAddressTests {
    @Test func forwardedForIsBelievedOnlyFromTrustedProxies() async throws {
        for (trusted, expected) in [(["127.0.0.1", "10.0.0.0/8"], "198.51.100.7"), ([], "127.0.0.1")] {
            let gateway = try await TestGateway.make { $0.trustedProxies = trusted }
            let app = Application(
                router: gateway.router,
                configuration: .init(address: .hostname("127.0.0.1", port: 0))
            )
            try await app.test(.live) { client in
                let response = try await client.execute(
                    uri: "/v1/events",
                    method: .post,
                    headers: headers([.contentType: "application/json", .xForwardedFor: "198.51.100.7, 10.1.2.3"]),
                    body: buffer(#"{"action":"xff","user_id":"u"}"#)
                )
                #expect(response.status == .accepted)
            }
            await gateway.wal.close()
            #expect(try gateway.storedEvents().first?["client_ip"] == .string(expected))
        }
    }
}

extension HTTPField.Name {
    static let xForwardedFor = Self("X-Forwarded-For")!
}
