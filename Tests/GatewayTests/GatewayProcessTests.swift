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
        } catch {
            // Its output ended without a port: it exited (the caller inspects the status), or
            // is about to, which a loaded machine can take a moment to report.
            guard (try? await self.child.waitForExit(timeout: .seconds(10))) != nil else { throw error }
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

/// Event ids in a WAL directory, read with `sluice wal dump --json` as an operator would.
func dumpedEventIDs(_ walDirectory: String) async throws -> Set<String> {
    let dump = try await ChildProcess.runSluice(["wal", "dump", walDirectory, "--json"])
    guard dump.status == 0 else {
        throw ChildProcessError(description: "sluice wal dump failed (\(dump.status)): \(dump.standardError)")
    }
    var ids: Set<String> = []
    for line in dump.standardOutput.split(separator: "\n") {
        let record = try JSONParser.parse(Array(line.utf8))
        guard case .string(let event) = record["event"] else { continue }
        if case .string(let id) = try JSONParser.parse(Array(event.utf8))["event_id"] { ids.insert(id) }
    }
    return ids
}

@Suite(.serialized, .timeLimit(.minutes(5))) struct GatewayProcessTests {
    /// `wal.encryption` set through the environment, as a deployment would: a killed gateway
    /// loses no acknowledged event, nothing is on disk in the clear, and the operator's dump
    /// reads the events with the same keys and refuses without them.
    @Test func anEncryptingGatewayKeepsEveryAcknowledgedEventAndNothingInTheClear() async throws {
        let directory = try TemporaryDirectory()
        let wal = directory.path + "/wal"
        let keyFile = directory.path + "/wal.key"
        let made = try await ChildProcess.runSluice(["encryption", "new-key", keyFile])
        #expect(made.status == 0)
        let keys = [
            "SLUICE_WAL_ENCRYPTION_ENABLED": "true", "SLUICE_WAL_ENCRYPTION_KEY_FILE": keyFile,
            "SLUICE_WAL_ENCRYPTION_KEY_ID": "gw-1",
        ]
        let gateway = try await GatewayProcess(walDirectory: wal, environment: keys)
        let load = SteadyLoad(target: gateway.url, action: "encrypted_crash_test")
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await load.run(workers: 4, batch: 1...3) }
            try? await waitUntil(timeout: .seconds(15)) { load.acknowledgedCount >= 50 }
            gateway.signal(SIGKILL)
            _ = try? await gateway.waitForExit()
            load.stop()
        }
        #expect(load.acknowledgedCount >= 50)

        let segments = try FileManager.default.contentsOfDirectory(atPath: wal).filter { $0.hasSuffix(".wal") }
        for name in segments {
            let bytes = try Data(contentsOf: URL(fileURLWithPath: wal + "/" + name))
            #expect(bytes.range(of: Data("encrypted_crash_test".utf8)) == nil, "\(name) holds plaintext")
        }
        let dump = try await ChildProcess.runSluice(["wal", "dump", wal, "--json"], environment: keys)
        #expect(dump.status == 0, "\(dump.standardError)")
        var ids: Set<String> = []
        for line in dump.standardOutput.split(separator: "\n") {
            let record = try JSONParser.parse(Array(line.utf8))
            guard case .string(let event) = record["event"] else { continue }
            if case .string(let id) = try JSONParser.parse(Array(event.utf8))["event_id"] { ids.insert(id) }
        }
        #expect(
            load.acknowledged.isSubset(of: ids),
            "\(load.acknowledged.subtracting(ids).count) acknowledged events lost"
        )
        let without = try await ChildProcess.runSluice(["wal", "dump", wal])
        #expect(without.status == 2)
        #expect(without.standardError.contains("encrypted under key 'gw-1'"))
    }

    @Test func everyEventThatGot202SurvivesSIGKILL() async throws {
        let directory = try TemporaryDirectory()
        let wal = directory.path + "/wal"
        var acknowledged: Set<String> = []
        for round in 0..<3 {
            let gateway = try await GatewayProcess(walDirectory: wal)
            let load = SteadyLoad(target: gateway.url, action: "crash_test")
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await load.run(workers: 8, batch: 1...5) }
                // Kill mid-stream: once requests are flowing, at a random moment.
                try? await waitUntil(timeout: .seconds(15)) { load.acknowledgedCount >= 50 }
                try? await Task.sleep(for: .milliseconds(Int.random(in: 50...500)))
                gateway.signal(SIGKILL)
                _ = try? await gateway.waitForExit()
                load.stop()
            }
            #expect(load.acknowledgedCount > 0, "round \(round): nothing was acknowledged")
            acknowledged.formUnion(load.acknowledged)
        }
        let stored = try await dumpedEventIDs(wal)
        let missing = acknowledged.subtracting(stored)
        #expect(missing.isEmpty, "\(missing.count) of \(acknowledged.count) acknowledged events missing")
        print("gateway crash test: 3 SIGKILLs, \(acknowledged.count) acknowledged events, all in the WAL")
    }

    @Test func sigtermFinishesInFlightRequestsAndExitsZero() async throws {
        let directory = try TemporaryDirectory()
        let wal = directory.path + "/wal"
        let gateway = try await GatewayProcess(walDirectory: wal)
        let load = SteadyLoad(target: gateway.url, action: "crash_test")
        var status: Int32 = -1
        var signalled = ContinuousClock.now
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await load.run(workers: 4, batch: 1...5) }
            // Under way: the posters have had answers (instead of a fixed pause).
            try? await waitUntil { load.acknowledgedCount >= 50 }
            signalled = ContinuousClock.now
            gateway.signal(SIGTERM)
            status = (try? await gateway.waitForExit()) ?? -1
            load.stop()
        }
        #expect(status == 0)
        // A request sent before SIGTERM and answered after it was answered: 202 when its handler
        // had begun (in flight, and finished), or 503 when the gateway read it after the stop
        // began (nothing stored; the client sends it again). Never a reset or a 5xx of another
        // kind. (Four posters send back to back, so one is always on the wire.)
        let straddling = load.exchanges.filter { $0.sent < signalled && $0.answered > signalled }
        #expect(!straddling.isEmpty, "no request was in flight at SIGTERM")
        #expect(straddling.allSatisfy { $0.status == 202 || $0.status == 503 }, "\(straddling.map(\.status))")
        #expect(gateway.standardOutput.contains("wal.closed"))
        let acknowledged = load.acknowledged
        #expect(!acknowledged.isEmpty)
        let stored = try await dumpedEventIDs(wal)
        #expect(acknowledged.isSubset(of: stored))
    }

    /// With `gateway.shutdown_delay`, SIGTERM first takes the gateway out of its balancer:
    /// `/readyz` fails at once and new requests, also on connections opened before, get 503
    /// with `Retry-After` and `Connection: close` (and nothing is stored); the listener stays
    /// open for the delay, then the gateway stops and exits 0.
    @Test func sigtermWithAShutdownDelayTakesTheGatewayOutBeforeItStops() async throws {
        let directory = try TemporaryDirectory()
        let wal = directory.path + "/wal"
        let gateway = try await GatewayProcess(walDirectory: wal, environment: ["SLUICE_GATEWAY_SHUTDOWN_DELAY": "4s"])
        let port = gateway.port
        let event = #"{"action":"click","user_id":"u-1"}"#
        @Sendable func post(_ connection: RawConnection) throws -> RawResponse? {
            try connection.send(
                "POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: \(event.utf8.count)\r\n\r\n\(event)"
            )
            return connection.response(method: "POST")
        }
        // A keep-alive connection a balancer opened earlier, and used.
        let (earlier, accepted) = try await offPool {
            let connection = try RawConnection(port: port)
            return (connection, try post(connection))
        }
        #expect(accepted?.status == 202)

        gateway.signal(SIGTERM)
        _ = try await gateway.child.line(containing: "\"gateway.stopping\"", timeout: .seconds(20))
        let (ready, fresh, reused, closed) = try await offPool {
            let probe = try RawConnection(port: port)
            try probe.send("GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
            let ready = probe.response()
            let fresh = try post(try RawConnection(port: port))
            let reused = try post(earlier)
            return (ready, fresh, reused, earlier.closes(within: .seconds(10)))
        }
        #expect(ready?.status == 503)
        #expect(ready?.text.contains("the gateway is shutting down") == true)
        for answer in [fresh, reused] {
            #expect(answer?.status == 503)
            #expect(answer?.header("Retry-After") == "1")
            #expect(answer?.header("Connection") == "close")
            #expect(answer?.text.contains("this gateway is shutting down; nothing was stored") == true)
        }
        #expect(closed, "the connection stays open after a 503 with Connection: close")
        #expect(try await gateway.waitForExit(timeout: .seconds(60)) == 0)
        let stopping = gateway.standardOutput.split(separator: "\n").filter { $0.contains("gateway.stopping") }
        #expect(stopping.count == 1)
        // Only the event accepted before SIGTERM is stored.
        #expect(try await dumpedEventIDs(wal).count == 1)
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
