import AsyncHTTPClient
import ClickHouse
import Foundation
import Kafka
import Loader
import LocalClickHouse
import NIOCore
import NIOHTTP1
import TestSupport
import Testing

/// The conservation ledger against the real thing: `sluice gateway` (with its forwarder) and
/// `sluice loader` as processes, a 3-broker Kafka and ClickHouse 18.16. A loss is injected on
/// purpose — the loader's group is moved past 50 messages it never read, as when retention
/// deletes them before it gets there — and both the loader's continuous reconciliation
/// (`sluice_unaccounted_events`) and `sluice audit` must name exactly those events. Then
/// ClickHouse loses the parts of 150 rows it had confirmed, and `sluice audit --rows` must
/// name exactly those.
@Suite(.serialized, .timeLimit(.minutes(5))) struct ConservationLedgerTests {
    @Test func theLedgerFindsExactlyTheRangeALoaderNeverRead() async throws {
        let cluster = try KafkaMockCluster(brokers: 3)
        try cluster.createTopic("events", partitions: 1)
        let clickHouse = try await ClickHouseServer.start()
        defer { clickHouse.stop() }
        let state = try TemporaryDirectory()
        let environment = [
            "SLUICE_KAFKA_PROPERTIES_LOG__LEVEL": "2", "SLUICE_LOGGING_LEVEL": "warning",
            "SLUICE_AUTH_REQUIRED": "false", "SLUICE_GATEWAY_GATEWAY_ID": "gw-ledger",
        ]
        let gateway = try SluiceProcess(
            [
                "gateway", "--listen", "127.0.0.1:0", "--wal-dir", state.path + "/wal",
                "--kafka-bootstrap", cluster.bootstrapServers,
            ],
            environment: environment
        )
        let poster = EventPoster(url: "http://127.0.0.1:\(try await gateway.listeningPort())")
        let loaderArguments = [
            "loader", "--kafka-bootstrap", cluster.bootstrapServers, "--clickhouse-url", clickHouse.httpURL,
        ]
        let loaderEnvironment = environment.merging([
            "SLUICE_LOADER_BATCH_AGE": "100ms", "SLUICE_LEDGER_GRACE": "0s",
            "SLUICE_METRICS_LISTEN": "127.0.0.1:0", "SLUICE_LOGGING_LEVEL": "notice",
            // A stopped loader leaves the group at once; a short session lets the reset below go on soon after.
            "SLUICE_KAFKA_PROPERTIES_SESSION_TIMEOUT_MS": "6000",
        ]) { $1 }
        let analyst = Analyst(url: clickHouse.httpURL)
        let kafka = try KafkaConsumer(
            properties: [
                "bootstrap.servers": cluster.bootstrapServers, "group.id": "ledger-test-watch", "log_level": "0",
            ]
        )
        // The clients must be shut down on every path (an HTTP client's deinit traps otherwise).
        do {
            try await Self.skipAndAudit(
                cluster: cluster,
                clickHouse: clickHouse,
                gateway: gateway,
                poster: poster,
                analyst: analyst,
                kafka: kafka,
                loaderArguments: loaderArguments,
                loaderEnvironment: loaderEnvironment
            )
        } catch {
            gateway.signal(SIGKILL)
            await kafka.close()
            await analyst.shutdown()
            throw error
        }
        gateway.signal(SIGTERM)
        #expect(try await gateway.waitForExit() == 0)
        await kafka.close()
        await analyst.shutdown()
        withExtendedLifetime(cluster) {}
    }

    static func skipAndAudit(
        cluster: KafkaMockCluster,
        clickHouse: ClickHouseServer,
        gateway: SluiceProcess,
        poster: EventPoster,
        analyst: Analyst,
        kafka: KafkaConsumer,
        loaderArguments: [String],
        loaderEnvironment: [String: String]
    ) async throws {
        func rows() async throws -> Int { (try? await analyst.number("SELECT count() FROM sluice.events")) ?? 0 }
        func post(_ count: Int) async throws {
            let answer = try await poster.postFresh(count).answer
            #expect(answer.status == .accepted, "\(answer.body)")
        }
        func inKafka() async throws -> Int64 { try await kafka.watermarks(topic: "events")[0]?.high ?? 0 }

        // 1. 100 events, loaded.
        var loader = try SluiceProcess(loaderArguments, environment: loaderEnvironment)
        try await post(100)
        do {
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(100)) { try await rows() == 100 }
        } catch {
            Issue.record(
                "the first 100 never arrived (\(try await rows()) rows)\nloader: \(loader.standardOutput.suffix(3000))\ngateway: \(gateway.standardOutput.suffix(3000))"
            )
            throw error
        }
        loader.signal(SIGTERM)
        #expect(try await loader.waitForExit() == 0)

        // 2. 100 more reach Kafka (offsets 100..<200) while no loader runs, and the group is moved
        // to 150: offsets 100..<150 are never read.
        try await post(100)
        try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(50)) { try await inKafka() == 200 }
        // The group lets go of the stopped loader's membership within its session timeout.
        var moved: [OffsetTools.Change] = []
        try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(500)) {
            moved =
                (try? await OffsetTools(properties: ["bootstrap.servers": cluster.bootstrapServers, "log_level": "0"])
                    .reset(group: "sluice-loader", topic: "events", to: .offsets([0: 150]), dryRun: false)) ?? []
            return !moved.isEmpty
        }
        #expect(moved.map(\.to) == [150])

        // 3. The loader goes on from 150, and 100 more pass, into parts of their own (no merges).
        try await analyst.client.execute("SYSTEM STOP MERGES")
        let partsBefore = try await Self.parts(analyst)
        loader = try SluiceProcess(loaderArguments, environment: loaderEnvironment)
        let metricsPort = try await loader.listeningPort("metrics.listening")
        try await post(100)
        try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(100)) { try await rows() == 250 }

        // The LSNs of offsets 100..<150, from the messages' own headers.
        let skipped = try await Self.lsns(bootstrap: cluster.bootstrapServers, offsets: 100..<150)
        let first = try #require(skipped.min())
        let last = try #require(skipped.max())
        #expect(last - first == 49, "the skipped messages hold one run of LSNs: \(skipped.sorted())")
        let expected = "gw-ledger LSN \(first)..<\(last + 1) (50 events): events/0 offsets 100..<150"

        // The loader's own reconciliation names them.
        let client = KeptClients.keep(HTTPClient(eventLoopGroupProvider: .singleton))
        defer { _ = client.shutdown() }
        var exposition = ""
        do {
            try await waitUntil(timeout: .seconds(30), pollEvery: .milliseconds(200)) {
                let response = try await client.execute(
                    HTTPClientRequest(url: "http://127.0.0.1:\(metricsPort)/metrics"),
                    timeout: .seconds(5)
                )
                exposition = String(buffer: try await response.body.collect(upTo: 4 << 20))
                return exposition.contains("sluice_unaccounted_events 50")
            }
        } catch {
            Issue.record(
                "the loader's gauge never said 50: \(error)\n\(exposition.split(separator: "\n").filter { $0.contains("unaccounted") })"
            )
        }
        // Its log names them (a first line may hold part of them, while the ledger is read).
        _ = try await loader.line(timeout: .seconds(10), described: "ledger.unaccounted with \(expected)") {
            $0.contains("\"ledger.unaccounted\"") && $0.contains(expected)
        }

        // And so does `sluice audit`, with each hop's counts, exiting 1.
        let audit = try await ChildProcess.runSluice(
            ["audit", "--since", "1h", "--kafka-bootstrap", cluster.bootstrapServers],
            environment: ["SLUICE_LOGGING_LEVEL": "error"],
            timeout: .seconds(90)
        )
        print(audit.standardOutput)
        #expect(audit.status == 1, "\(audit)")
        #expect(audit.standardOutput.contains("UNACCOUNTED: 50 events"), "\(audit.standardOutput)")
        #expect(audit.standardOutput.contains("  " + expected), "\(audit.standardOutput)")
        #expect(audit.standardOutput.contains("gw-ledger: accepted 300 LSNs"), "\(audit.standardOutput)")
        #expect(
            audit.standardOutput.contains(
                "events/0: placed 300 · rows 250 into sluice.events · dead letters 0 · erased 0 · loaded to offset 300 · gaps at offsets 100..<150 (50)"
            ),
            "\(audit.standardOutput)"
        )

        // 4. ClickHouse loses the parts made since step 3 — offsets 150..<300, rows it had
        // confirmed — as with a disk lost without a replica: the server is killed, the parts'
        // directories removed, the server started again (18.16 has no `DROP PART`).
        let lost = try await Self.parts(analyst).subtracting(partsBefore)
        #expect(!lost.isEmpty)
        let clickHousePorts = clickHouse.reservePorts()  // Nobody else's while it is down.
        defer { withExtendedLifetime(clickHousePorts) {} }
        try await offPool { clickHouse.kill() }
        for path in lost { try FileManager.default.removeItem(atPath: path) }
        try await clickHouse.restart()
        #expect(try await rows() == 100)
        let dropped = try await Self.lsns(bootstrap: cluster.bootstrapServers, offsets: 150..<300)
        let low = try #require(dropped.min())
        let high = try #require(dropped.max())
        #expect(high - low == 149, "the dropped rows hold one run of LSNs: \(dropped.sorted())")
        // `sluice audit --rows` names exactly those rows, beside the 50 the loader never read.
        let rowAudit = try await ChildProcess.runSluice(
            [
                "audit", "--since", "1h", "--rows", "--kafka-bootstrap", cluster.bootstrapServers,
                "--clickhouse-url", clickHouse.httpURL,
            ],
            environment: ["SLUICE_LOGGING_LEVEL": "error"],
            timeout: .seconds(90)
        )
        print(rowAudit.standardOutput)
        #expect(rowAudit.status == 1, "\(rowAudit)")
        #expect(rowAudit.standardOutput.contains("UNACCOUNTED: 50 events"), "\(rowAudit.standardOutput)")
        #expect(rowAudit.standardOutput.contains("MISSING FROM CLICKHOUSE: 150 rows"), "\(rowAudit.standardOutput)")
        #expect(
            rowAudit.standardOutput.contains(
                "  sluice.events: gw-ledger LSN \(low)..<\(high + 1) (150 events): events/0 offsets 150..<300"
            ),
            "\(rowAudit.standardOutput)"
        )
        #expect(
            rowAudit.standardOutput.contains(
                "sluice.events: confirmed 250 rows · present 100 · folded into another copy of their event 0"
                    + " · erased since 0 · missing 150"
            ),
            "\(rowAudit.standardOutput)"
        )

        loader.signal(SIGTERM)
        #expect(try await loader.waitForExit() == 0)
    }

    /// The directories of the active parts of sluice.events.
    static func parts(_ analyst: Analyst) async throws -> Set<String> {
        Set(
            try await analyst.rows(
                "SELECT path FROM system.parts WHERE database = 'sluice' AND table = 'events' AND active"
            )
        )
    }

    /// The `wal_lsn` header of each message at `offsets` of events/0.
    static func lsns(bootstrap: String, offsets: Range<Int64>) async throws -> [UInt64] {
        let consumer = try KafkaConsumer(
            properties: [
                "bootstrap.servers": bootstrap, "group.id": "ledger-test-\(UInt32.random(in: 0...UInt32.max))",
                "auto.offset.reset": "earliest", "log_level": "0",
            ],
            topics: ["events"]
        )
        var found: [Int64: UInt64] = [:]
        let deadline = ContinuousClock.now + .seconds(30)
        while found.count < offsets.count, ContinuousClock.now < deadline {
            for message in await consumer.poll(maxMessages: 1000, timeout: .milliseconds(200)).messages
            where offsets.contains(message.offset) {
                found[message.offset] = message.header("wal_lsn").flatMap {
                    UInt64(String(decoding: $0, as: UTF8.self))
                }
            }
        }
        await consumer.close()
        return Array(found.values)
    }
}
