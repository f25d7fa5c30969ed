import AsyncHTTPClient
import Foundation
import Kafka
import LocalClickHouse
import NIOCore
import NIOHTTP1
import TestSupport
import Testing

/// Delivery receipts and ack levels the way they are deployed: two gateways (each with its
/// forwarder and WAL, one receipts key) and two loaders as processes, a 3-broker Kafka and
/// ClickHouse 18.16. Each level is answered; a receipt is read at the gateway that did not
/// issue it, after a restart of the one that did, and after the loaders were stopped and one
/// started again; only the credential that sent the events reads it.
@Suite(.serialized, .timeLimit(.minutes(5))) struct ReceiptsTests {
    struct Fleet {
        let cluster: KafkaMockCluster
        let clickHouse: ClickHouseServer
        let state: TemporaryDirectory
        let environment: [String: String]
        let key: String
        let otherKey: String

        func gateway(_ index: Int) throws -> SluiceProcess {
            try SluiceProcess(
                [
                    "gateway", "--listen", "127.0.0.1:0", "--wal-dir", self.state.path + "/wal-\(index)",
                    "--kafka-bootstrap", self.cluster.bootstrapServers,
                ],
                environment: self.environment.merging(["SLUICE_GATEWAY_GATEWAY_ID": "gw-\(index)"]) { $1 }
            )
        }

        func loader() throws -> SluiceProcess {
            try SluiceProcess(
                [
                    "loader", "--kafka-bootstrap", self.cluster.bootstrapServers, "--clickhouse-url",
                    self.clickHouse.httpURL,
                ],
                environment: self.environment.merging([
                    "SLUICE_LOADER_BATCH_AGE": "100ms", "SLUICE_KAFKA_PROPERTIES_SESSION_TIMEOUT_MS": "6000",
                ]) { $1 }
            )
        }
    }

    /// What a gateway answered: status and JSON.
    static func call(
        _ method: HTTPMethod,
        _ url: String,
        key: String,
        body: String? = nil
    ) async throws -> (HTTPResponseStatus, [String: Any]) {
        var request = HTTPClientRequest(url: url)
        request.method = method
        request.headers.add(name: "Authorization", value: "Bearer \(key)")
        if let body {
            request.headers.add(name: "Content-Type", value: "application/x-ndjson")
            request.body = .bytes(ByteBuffer(string: body))
        }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        let text = String(buffer: try await response.body.collect(upTo: 1 << 20))
        let json = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? ["text": text]
        return (response.status, json)
    }

    static func post(_ base: String, key: String, query: String, count: Int) async throws -> [String: Any] {
        let body = (0..<count).map { _ in EventPoster.event(id: EventPoster.freshID()) }.joined(separator: "\n")
        // A 503 (the disk missed the append deadline, on a machine running every suite) is
        // retried with the same events, as the answer asks and as a client would.
        var (status, answer) = try await Self.call(.POST, base + "/v1/events/batch?" + query, key: key, body: body)
        for _ in 0..<10 where status == .serviceUnavailable {
            try await Task.sleep(for: .milliseconds(200))
            (status, answer) = try await Self.call(.POST, base + "/v1/events/batch?" + query, key: key, body: body)
        }
        #expect(status == .accepted, "\(answer)")
        return answer
    }

    /// Reads `receipt` at `base` until every event is queryable; the last answer.
    static func queryable(_ receipt: String, at base: String, key: String) async throws -> [String: Any] {
        var answer: [String: Any] = [:]
        do {
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(200)) {
                let (status, json) = try await Self.call(.GET, base + "/v1/receipts/" + receipt, key: key)
                answer = json
                return status == .ok && json["reached"] as? String == "queryable"
            }
        } catch {
            Issue.record("\(receipt) at \(base) never became queryable: \(answer)")
            throw error
        }
        return answer
    }

    /// Each thread of process `pid`: its name and nice value (from /proc).
    static func threads(of pid: Int32) -> [(name: String, nice: Int)] {
        let directory = "/proc/\(pid)/task"
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return tasks.compactMap { task in
            guard let stat = try? String(contentsOfFile: "\(directory)/\(task)/stat", encoding: .utf8),
                let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")")
            else { return nil }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            // After the name: state is field 3, nice field 19.
            guard fields.count > 16, let nice = Int(fields[16]) else { return nil }
            return (String(stat[stat.index(after: open)..<close]), nice)
        }
    }

    @Test func everyLevelWithTwoGatewaysAndTwoLoadersThroughRestarts() async throws {
        let cluster = try KafkaMockCluster(brokers: 3)
        try cluster.createTopic("events", partitions: 2)
        let clickHouse = try await ClickHouseServer.start()
        defer { clickHouse.stop() }
        let state = try TemporaryDirectory()
        var keys: [String] = []
        for name in ["shop", "other"] {
            let created = try await ChildProcess.runSluice([
                "keys", "create", name, "--kind", "secret", "--file", state.path + "/keys.json",
            ])
            keys.append(
                try #require(
                    created.standardOutput.split(whereSeparator: \.isWhitespace).first { $0.hasPrefix("slk_") }.map(
                        String.init
                    )
                )
            )
        }
        // One receipts key for both gateways: either reads the other's receipts.
        try Data((0..<32).map { _ in UInt8.random(in: 0...255) }).write(
            to: URL(fileURLWithPath: state.path + "/receipts.key")
        )
        let fleet = Fleet(
            cluster: cluster,
            clickHouse: clickHouse,
            state: state,
            environment: [
                "SLUICE_KAFKA_PROPERTIES_LOG__LEVEL": "2", "SLUICE_LOGGING_LEVEL": "warning",
                "SLUICE_AUTH_API_KEYS_FILE": state.path + "/keys.json",
                "SLUICE_RECEIPTS_KEY_FILE": state.path + "/receipts.key",
                // Generous: the test shares two cores with the others.
                "SLUICE_RECEIPTS_MAX_WAIT": "60s",
            ],
            key: keys[0],
            otherKey: keys[1]
        )
        var gateway1 = try fleet.gateway(1)
        let gateway2 = try fleet.gateway(2)
        var loaders = [try fleet.loader(), try fleet.loader()]
        var one = "http://127.0.0.1:\(try await gateway1.listeningPort())"
        let two = "http://127.0.0.1:\(try await gateway2.listeningPort())"

        // The loaders join their group and make their tables first: until then a queryable
        // request answers at its deadline.
        try await waitUntil(timeout: .seconds(120), pollEvery: .milliseconds(10)) {
            let warm = try await Self.post(one, key: fleet.key, query: "ack=queryable&ack_timeout=5s", count: 1)
            return (warm["ack"] as? [String: String])?["reached"] == "queryable"
        }
        // queryable at gateway 1: answered once ClickHouse has the rows.
        let first = try await Self.post(one, key: fleet.key, query: "ack=queryable&ack_timeout=60s", count: 5)
        #expect(first["ack"] as? [String: String] == ["requested": "queryable", "reached": "queryable"], "\(first)")
        let r1 = try #require(first["receipt"] as? String)
        let ids1 = try #require(first["event_ids"] as? [String])
        let analyst = Analyst(url: clickHouse.httpURL)
        let found = try? await analyst.number(
            "SELECT count() FROM sluice.events WHERE event_id IN ('\(ids1.joined(separator: "','"))')"
        )
        await analyst.shutdown()
        #expect(found == 5)

        // replicated at gateway 2; durable by default.
        let second = try await Self.post(two, key: fleet.key, query: "ack=replicated&ack_timeout=60s", count: 5)
        #expect(
            second["ack"] as? [String: String] == ["requested": "replicated", "reached": "replicated"],
            "\(second)"
        )
        let r2 = try #require(second["receipt"] as? String)
        // Its forwarder and ledger follower ran on the lower-priority threads: their Kafka
        // clients' threads, started from there, inherited the nice value.
        let threads = Self.threads(of: gateway2.processIdentifier)
        let base = threads.first { $0.name == "sluice" }?.nice ?? 0
        #expect(threads.contains { $0.name == "sluice-bg" && $0.nice == base + 10 }, "\(threads)")
        let kafka = threads.filter { $0.name.hasPrefix("rdk:") }
        #expect(!kafka.isEmpty && kafka.allSatisfy { $0.nice == base + 10 }, "\(threads)")
        let third = try await Self.post(two, key: fleet.key, query: "", count: 1)
        #expect(third["ack"] as? [String: String] == ["requested": "durable", "reached": "durable"], "\(third)")

        // Each gateway reads the other's receipt, per event.
        let r1AtTwo = try await Self.queryable(r1, at: two, key: fleet.key)
        #expect(r1AtTwo["gateway"] as? String == "gw-1")
        let events = try #require(r1AtTwo["events"] as? [[String: Any]])
        #expect(events.count == 5)
        #expect(events.allSatisfy { $0["table"] as? String == "sluice.events" && $0["offset"] is Int })
        _ = try await Self.queryable(r2, at: one, key: fleet.key)
        // Only the credential that sent the events reads them.
        let (foreign, _) = try await Self.call(.GET, two + "/v1/receipts/" + r1, key: fleet.otherKey)
        #expect(foreign == .notFound)

        // Gateway 1 restarts on its WAL: it reads the ledger again and knows both receipts.
        gateway1.signal(SIGTERM)
        #expect(try await gateway1.waitForExit() == 0)
        gateway1 = try fleet.gateway(1)
        one = "http://127.0.0.1:\(try await gateway1.listeningPort())"
        _ = try await Self.queryable(r1, at: one, key: fleet.key)
        _ = try await Self.queryable(r2, at: one, key: fleet.key)

        // No loader: a queryable request answers 202 at its deadline with the level it reached.
        for loader in loaders { loader.signal(SIGTERM) }
        for loader in loaders { #expect(try await loader.waitForExit() == 0) }
        let started = ContinuousClock.now
        let fourth = try await Self.post(two, key: fleet.key, query: "ack=queryable&ack_timeout=1s", count: 3)
        #expect(ContinuousClock.now - started >= .seconds(1))
        #expect(fourth["ack"] as? [String: String] == ["requested": "queryable", "reached": "replicated"], "\(fourth)")
        let r4 = try #require(fourth["receipt"] as? String)
        let (pending, pendingAnswer) = try await Self.call(.GET, one + "/v1/receipts/" + r4, key: fleet.key)
        #expect(pending == .ok)
        #expect(pendingAnswer["reached"] as? String == "replicated", "\(pendingAnswer)")
        // A loader comes back and loads them: the receipt says so at either gateway.
        loaders = [try fleet.loader()]
        _ = try await Self.queryable(r4, at: one, key: fleet.key)
        _ = try await Self.queryable(r4, at: two, key: fleet.key)

        for process in loaders + [gateway1, gateway2] { process.signal(SIGTERM) }
        for process in loaders + [gateway1, gateway2] { #expect(try await process.waitForExit() == 0) }
        withExtendedLifetime(cluster) {}
    }
}
