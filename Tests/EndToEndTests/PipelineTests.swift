import AsyncHTTPClient
import Foundation
import Kafka
import LocalClickHouse
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization
import TestSupport
import Testing

@Suite(.serialized, .timeLimit(.minutes(10))) struct PipelineTests {
    /// The delivery contract end to end, the way it is deployed: `sluice gateway` (with its
    /// forwarder) and `sluice loader` as processes, a 3-broker Kafka (librdkafka's mock) and a
    /// real ClickHouse. Under a steady load the gateway is SIGKILLed and restarted, ClickHouse
    /// is killed and restarted, and every broker goes down for a while. Every event that got a
    /// 202 must end up in ClickHouse exactly once after deduplication, and nothing else may.
    @Test func everyAcknowledgedEventIsInClickHouseExactlyOnceThroughCrashesAndOutages() async throws {
        let cluster = try KafkaMockCluster(brokers: 3)
        // Its brokers go down and up: keep their ports from other tests meanwhile.
        let reserved = ReservedPorts(bootstrapServers: cluster.bootstrapServers)
        defer { withExtendedLifetime(reserved) {} }
        try cluster.createTopic("events", partitions: 6)
        let clickHouse = try await ClickHouseServer.start()
        defer { clickHouse.stop() }
        let state = try TemporaryDirectory()
        // The front door as deployed: HTTPS with a certificate and a secret API key.
        let door = try await FrontDoor.make(in: state.path)
        let environment = ["SLUICE_KAFKA_PROPERTIES_LOG__LEVEL": "2", "SLUICE_LOGGING_LEVEL": "warning"]
            .merging(door.environment) { $1 }
        let gatewayArguments = [
            "gateway", "--listen", "127.0.0.1:0", "--wal-dir", state.path + "/wal",
            "--kafka-bootstrap", cluster.bootstrapServers,
        ]
        var gateway = try SluiceProcess(gatewayArguments, environment: environment)
        let firstPort = try await gateway.listeningPort()
        let client = door.client()
        let load = SteadyLoad(
            client: client,
            target: "https://127.0.0.1:\(firstPort)",
            authorization: "Bearer \(door.key)",
            action: "e2e"
        )
        let loader = try SluiceProcess(
            ["loader", "--kafka-bootstrap", cluster.bootstrapServers, "--clickhouse-url", clickHouse.httpURL],
            environment: environment.merging(["SLUICE_LOADER_BATCH_AGE": "250ms"]) { $1 }
        )
        let analyst = Analyst(url: clickHouse.httpURL)
        let posting = Task { await load.run(workers: 4, batch: 25...25, pause: .milliseconds(20)) }

        func progress(_ acknowledged: Int) async throws {
            try await waitUntil(timeout: .seconds(120), pollEvery: .milliseconds(50)) {
                load.acknowledgedCount >= acknowledged
            }
        }
        // 1. The gateway dies the hard way mid-load, requests in flight, and comes back on the
        // same WAL.
        try await progress(3_000)
        gateway.signal(SIGKILL)
        _ = try await gateway.waitForExit()
        load.target = nil
        gateway = try SluiceProcess(gatewayArguments, environment: environment)
        let port = try await gateway.listeningPort()
        load.target = "https://127.0.0.1:\(port)"
        // 2. ClickHouse dies and is restarted 3 s later.
        try await progress(load.acknowledgedCount + 3_000)
        let clickHousePorts = clickHouse.reservePorts()  // Nobody else's while it is down.
        defer { withExtendedLifetime(clickHousePorts) {} }
        try await offPool { clickHouse.kill() }
        try await Task.sleep(for: .seconds(3))
        try await clickHouse.restart()
        // 3. Every broker is down for 5 s; the gateway keeps accepting meanwhile.
        try await progress(load.acknowledgedCount + 3_000)
        for broker in 1...3 { cluster.setBrokerDown(Int32(broker)) }
        let acknowledgedBeforeOutage = load.acknowledgedCount
        try await Task.sleep(for: .seconds(5))
        let acknowledgedDuringOutage = load.acknowledgedCount - acknowledgedBeforeOutage
        for broker in 1...3 { cluster.setBrokerUp(Int32(broker)) }
        try await progress(load.acknowledgedCount + 3_000)
        load.stop()
        await posting.value
        try await client.shutdown()

        let acknowledged = load.acknowledged
        let attempted = load.attempted
        var loaded: Set<String> = []
        do {
            try await waitUntil(timeout: .seconds(180), pollEvery: .seconds(1)) {
                loaded = await analyst.eventIDs()
                return acknowledged.isSubset(of: loaded)
            }
        } catch {
            Issue.record(
                "not every acknowledged event arrived: \(error)\nloader: \(loader.standardOutput.suffix(3000))"
            )
        }
        let rows = try await analyst.number("SELECT count() FROM sluice.events")
        let rowsAfterDeduplication = try await analyst.number("SELECT count() FROM sluice.events FINAL")
        let distinct = try await analyst.number("SELECT uniqExact(event_id) FROM sluice.events")
        let missing = acknowledged.subtracting(loaded)
        let unexpected = loaded.subtracting(attempted)
        print(
            """
            end-to-end: \(attempted.count) events sent, \(acknowledged.count) acknowledged \
            (\(acknowledgedDuringOutage) while every broker was down), \(load.failedRequests) \
            requests failed; ClickHouse holds \(rows) rows, \(rowsAfterDeduplication) after deduplication, \
            \(distinct) distinct event ids; missing \(missing.count), not sent by the test \(unexpected.count)
            """
        )
        #expect(missing.isEmpty)
        #expect(unexpected.isEmpty)
        #expect(rowsAfterDeduplication == distinct)
        #expect(distinct >= acknowledged.count)
        #expect(acknowledgedDuringOutage > 0)
        // Every event names the key that sent it.
        #expect(try await analyst.rows("SELECT DISTINCT source FROM sluice.events") == ["key:e2e"])
        // The conservation ledger adds up through the crash and the outages, and every row
        // ClickHouse confirmed is still there.
        let audit = try await ChildProcess.runSluice(
            [
                "audit", "--since", "1h", "--rows", "--kafka-bootstrap", cluster.bootstrapServers,
                "--clickhouse-url", clickHouse.httpURL,
            ],
            environment: ["SLUICE_LOGGING_LEVEL": "error"],
            timeout: .seconds(90)
        )
        #expect(audit.status == 0, "\(audit)")
        #expect(audit.standardOutput.contains("unaccounted: 0 events"), "\(audit.standardOutput)")
        #expect(audit.standardOutput.contains("missing from ClickHouse: 0 rows"), "\(audit.standardOutput)")

        for process in [gateway, loader] { process.signal(SIGTERM) }
        #expect(try await gateway.waitForExit() == 0)
        #expect(try await loader.waitForExit() == 0)
        await analyst.shutdown()
        withExtendedLifetime(cluster) {}
    }

    /// `sluice all` from one configuration file: every role in one process, two actions routed
    /// to two topics and from there to two tables.
    @Test func sluiceAllRoutesTwoActionsIntoTwoTablesFromOneFile() async throws {
        let cluster = try KafkaMockCluster(brokers: 3)
        // Its brokers go down and up: keep their ports from other tests meanwhile.
        let reserved = ReservedPorts(bootstrapServers: cluster.bootstrapServers)
        defer { withExtendedLifetime(reserved) {} }
        let clickHouse = try await ClickHouseServer.start()
        defer { clickHouse.stop() }
        let state = try TemporaryDirectory()
        let file = state.path + "/sluice.yaml"
        try """
        gateway:
          listen: 127.0.0.1:0
        wal:
          directory: \(state.path)/wal
        kafka:
          bootstrap_servers: \(cluster.bootstrapServers)
          properties:
            log_level: 2
        forwarder:
          topics:
            purchase: purchases
        clickhouse:
          url: \(clickHouse.httpURL)
        loader:
          batch_age: 200ms
          routes:
            events:
              table: sluice.events
            purchases:
              table: shop.purchases
              columns:
                event_id: {type: string, required: true}
                timestamp: {type: timestamp, required: true}
                user_id: {type: string, required: true}
                product: {type: string, field: object}
                lsn: {type: uint64, header: wal_lsn}
        logging:
          level: warning
        auth:
          required: false       # this test is about routing; the front door has its own
        """.write(toFile: file, atomically: true, encoding: .utf8)
        let all = try SluiceProcess(["all", "--config", file])
        let port = try await all.listeningPort()

        let click = EventPoster.freshID()
        let purchase = EventPoster.freshID()
        let answer = try await EventPoster(url: "http://127.0.0.1:\(port)").postBatch([
            #"{"action":"click","user_id":"u1","event_id":"\#(click)"}"#,
            #"{"action":"purchase","user_id":"u1","object":"sku-42","event_id":"\#(purchase)"}"#,
        ])
        #expect(answer.status == .accepted, "\(answer.body)")

        let analyst = Analyst(url: clickHouse.httpURL)
        try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(250)) {
            let clicks = await analyst.eventIDs("sluice.events")
            let purchases = await analyst.eventIDs("shop.purchases")
            return clicks == [click] && purchases == [purchase]
        }
        #expect(try await analyst.rows("SELECT event_id, product FROM shop.purchases") == ["\(purchase)\tsku-42"])
        // A column can take a header of the message: the purchase, appended after the click,
        // has the later LSN.
        #expect(
            try await analyst.rows("SELECT lsn > (SELECT max(wal_lsn) FROM sluice.events) FROM shop.purchases") == ["1"]
        )
        await analyst.shutdown()
        all.signal(SIGTERM)
        #expect(try await all.waitForExit() == 0)
        withExtendedLifetime(cluster) {}
    }

    /// `make run`'s pipeline: `sluice dev` brings everything up, says where to send events,
    /// loads them into its own ClickHouse, restarts that ClickHouse when it is killed (and says
    /// so), and Ctrl-C stops it all, leaving no process behind.
    @Test func sluiceDevLoadsEventsSurvivesAClickHouseCrashAndCtrlCLeavesNothingRunning() async throws {
        let state = try TemporaryDirectory()
        let clickHousePort = try freeLoopbackPorts(1)[0]
        let dev = try SluiceProcess([
            "dev", "--listen", "127.0.0.1:0", "--clickhouse-http-port", "\(clickHousePort)", "--state-dir", state.path,
        ])
        let port = try await dev.listeningPort(timeout: .seconds(90))
        let banner = try await dev.line(containing: "Ctrl-C stops everything")
        #expect(dev.standardOutput.contains("curl -i https://127.0.0.1:\(port)/v1/events"))
        #expect(dev.standardOutput.contains("source \(state.path)/env"))
        #expect(dev.standardOutput.contains("http://127.0.0.1:\(clickHousePort)"))
        #expect(!banner.isEmpty)

        // What the banner tells a newcomer to `source`: the CA, a key, an OAuth client.
        var env: [String: String] = [:]
        for line in try String(contentsOfFile: state.path + "/env", encoding: .utf8).split(separator: "\n")
        where line.hasPrefix("export ") {
            let pair = line.dropFirst("export ".count).split(separator: "=", maxSplits: 1).map(String.init)
            if pair.count == 2 { env[pair[0]] = pair[1] }
        }
        #expect(env["SLUICE_URL"] == "https://127.0.0.1:\(port)")
        let key = try #require(env["SLUICE_KEY"])
        let caFile = try #require(env["CURL_CA_BUNDLE"])
        #expect(env["REQUESTS_CA_BUNDLE"] == caFile, "Python's requests (the Segment SDKs) trusts the dev CA too")
        let client = EventPoster.client(trusting: caFile)
        // The built-in authorization server hands the dev client a token, and the token writes.
        var grant = HTTPClientRequest(url: "https://127.0.0.1:\(port)/oauth/token")
        grant.method = .POST
        grant.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
        let basic = Data("\(env["SLUICE_CLIENT_ID"] ?? ""):\(env["SLUICE_CLIENT_SECRET"] ?? "")".utf8)
            .base64EncodedString()
        grant.headers.add(name: "Authorization", value: "Basic \(basic)")
        grant.body = .bytes(ByteBuffer(string: "grant_type=client_credentials"))
        let granted = try await client.execute(grant, timeout: .seconds(10))
        #expect(granted.status == .ok)
        let tokenBody = try await granted.body.collect(upTo: 1 << 16)
        let tokenJSON = try JSONSerialization.jsonObject(with: Data(tokenBody.readableBytesView))
        let token = try #require((tokenJSON as? [String: Any])?["access_token"] as? String)
        func post(authorization: String = "Bearer \(key)") async throws -> [String] {
            let poster = EventPoster(url: "https://127.0.0.1:\(port)", authorization: authorization, client: client)
            let (ids, answer) = try await poster.postFresh(3, timeout: .seconds(5))
            #expect(answer.status == .accepted, "\(answer.body)")
            return ids
        }
        let analyst = Analyst(url: "http://127.0.0.1:\(clickHousePort)")
        let before = try await post() + (try await post(authorization: "Bearer \(token)"))
        try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(250)) {
            Set(before).isSubset(of: await analyst.eventIDs())
        }
        // The analytics page's link carries the read key sluice dev made; that key reads stats.
        let statsKey = try #require(env["SLUICE_STATS_KEY"])
        #expect(dev.standardOutput.contains("https://127.0.0.1:\(port)/analytics#key=\(statsKey)"))
        var stats = HTTPClientRequest(url: "https://127.0.0.1:\(port)/v1/stats/timeseries")
        stats.headers.add(name: "Authorization", value: "Bearer \(statsKey)")
        // The rollups fill in the inserts' own pipeline; CI once answered no points right after
        // the rows were visible, so the answer gets a while (and says what it was if not).
        var statsBody = ""
        do {
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(500)) {
                let statsAnswer = try await client.execute(stats, timeout: .seconds(30))
                statsBody = String(buffer: try await statsAnswer.body.collect(upTo: 1 << 20))
                return statsAnswer.status == .ok && statsBody.contains("\"action\":\"click\"")
            }
        } catch {
            Issue.record("the stats never showed the clicks: \(statsBody)")
        }

        // ClickHouse dies as a crash would: sluice dev says so and brings it back; events sent
        // meanwhile arrive.
        let pidFile = state.path + "/clickhouse/clickhouse-server.pid"
        let clickHousePID = try #require(
            Int32(try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines))
        )
        kill(clickHousePID, SIGKILL)
        let during = try await post()
        #expect(try await dev.line(containing: "was killed by signal 9; restarting it", in: .standardError) != "")
        _ = try await dev.line(containing: "ClickHouse is back", in: .standardError, timeout: .seconds(60))
        let restartedPID = Int32(
            try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        )
        #expect(restartedPID != nil && restartedPID != clickHousePID)
        let after = try await post()
        try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(250)) {
            Set(during + after).isSubset(of: await analyst.eventIDs())
        }
        try await client.shutdown()
        await analyst.shutdown()

        dev.signal(SIGINT)
        #expect(try await dev.waitForExit(timeout: .seconds(60)) == 0)
        #expect(processes(mentioning: state.path).isEmpty)
        #expect(FileManager.default.fileExists(atPath: state.path + "/wal"))
    }
}

/// What Prometheus sees of a loader running on its own.
@Suite struct LoaderProcessTests {
    /// With `metrics.listen`, `sluice loader` serves /metrics and /healthz even while Kafka and
    /// ClickHouse are unreachable (the loader waits for them), and stops cleanly on SIGTERM.
    @Test func aStandaloneLoaderServesMetricsWhileItWaitsForClickHouse() async throws {
        let loader = try SluiceProcess(
            ["loader", "--kafka-bootstrap", "127.0.0.1:1", "--clickhouse-url", "http://127.0.0.1:1"],
            environment: ["SLUICE_METRICS_LISTEN": "127.0.0.1:0", "SLUICE_KAFKA_PROPERTIES_LOG__LEVEL": "0"]
        )
        let port = try await loader.listeningPort("metrics.listening")
        let client = KeptClients.keep(HTTPClient(eventLoopGroupProvider: .singleton))
        func get(_ path: String) async throws -> (HTTPResponseStatus, String) {
            let response = try await client.execute(
                HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path)"),
                timeout: .seconds(5)
            )
            let body = try await response.body.collect(upTo: 4 << 20)
            return (response.status, String(buffer: body))
        }
        let (metricsStatus, exposition) = try await get("/metrics")
        #expect(metricsStatus == .ok)
        #expect(exposition.contains("sluice_loader_inserted_rows_total"))
        #expect(try await get("/healthz").0 == .ok)
        try await client.shutdown()
        loader.signal(SIGTERM)
        #expect(try await loader.waitForExit() == 0)
    }
}
