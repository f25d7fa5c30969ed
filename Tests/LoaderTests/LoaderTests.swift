import ClickHouse
import EventModel
import Foundation
import Kafka
import LocalClickHouse
import Logging
import ServiceLifecycle
import Synchronization
import TestSupport
import Testing

@testable import Loader

let quietLogger: Logger = {
    var logger = Logger(label: "sluice.test")
    logger.logLevel = ProcessInfo.processInfo.environment["SLUICE_TEST_LOG"] != nil ? .info : .critical
    return logger
}()

/// A normalized event as the gateway writes it.
func eventJSON(_ n: Int, user: String? = nil, action: String = "click") -> [UInt8] {
    Event(
        eventID: UUIDText.v7(millis: 1_795_342_530_000 + Int64(n)),
        action: action,
        userID: user ?? "user-\(n % 11)",
        timestampMillis: 1_795_342_530_000 + Int64(n),
        page: "https://shop.example/p/\(n % 50)",
        object: "button-\(n % 7)",
        referrer: nil,
        sessionID: "s-\(n % 13)",
        properties: .object([("n", .number(String(n)))])
    ).normalizedJSON(
        origin: RequestOrigin(
            receivedAtMillis: Timestamp.nowMillis(),
            clientIP: "203.0.113.9",
            userAgent: "test",
            gatewayID: "gw-test"
        )
    )
}

final class SharedCount: Sendable {
    private let count = Atomic<Int>(0)
    func add(_ n: Int) { self.count.add(n, ordering: .relaxed) }
    var value: Int { self.count.load(ordering: .relaxed) }
}

/// Kafka (mock cluster), ClickHouse (a real server) and a running loader.
final class LoadPipeline: @unchecked Sendable {
    let cluster: KafkaMockCluster
    let server: ClickHouseServer
    let clickHouse: ClickHouseClient
    var loader: Loader!
    var group: ServiceGroup!
    var task: Task<Void, any Error>!
    var configuration: LoaderConfiguration
    let producer: KafkaProducer
    let delivered = SharedCount()

    init(routes: [LoaderRoute] = [.events], partitions: Int = 4) async throws {
        self.cluster = try KafkaMockCluster(brokers: 3)
        for route in routes {
            try self.cluster.createTopic(route.topic, partitions: partitions)
            try self.cluster.createTopic(route.deadLetterTopic, partitions: 1)
        }
        self.server = try await ClickHouseServer.start()
        self.clickHouse = ClickHouseClient(ClickHouseConfiguration(url: self.server.httpURL), logger: quietLogger)
        self.configuration = LoaderConfiguration(
            kafkaProperties: [
                "bootstrap.servers": self.cluster.bootstrapServers, "log_level": "0",
                "session.timeout.ms": "6000", "heartbeat.interval.ms": "500",
            ],
            clickHouse: ClickHouseConfiguration(url: self.server.httpURL)
        )
        self.configuration.routes = routes
        self.configuration.batchAge = .milliseconds(200)
        self.configuration.batchRows = 1000
        self.configuration.retryInitial = .milliseconds(100)
        self.configuration.retryMax = .seconds(1)
        let counter = self.delivered
        self.producer = try KafkaProducer(
            properties: ["bootstrap.servers": self.cluster.bootstrapServers, "log_level": "0"],
            onDelivery: { reports in counter.add(reports.filter { $0.error == nil }.count) }
        )
    }

    func startLoader() {
        self.loader = Loader(configuration: self.configuration, logger: quietLogger)
        self.group = ServiceGroup(services: [self.loader], logger: quietLogger)
        let group = self.group!
        self.task = Task { try await group.run() }
    }

    func stopLoader() async throws {
        await self.group.triggerGracefulShutdown()
        try await self.task.value
    }

    /// Sends messages and waits until Kafka has them all.
    func send(_ values: [[UInt8]], topic: String = "events") async throws {
        let before = self.delivered.value
        for (index, value) in values.enumerated() {
            try self.producer.send(topic: topic, key: Array("k\(index % 9)".utf8), value: value, id: UInt64(index))
        }
        try await waitUntil(timeout: .seconds(30)) { self.delivered.value == before + values.count }
    }

    func scalar(_ sql: String) async throws -> Int {
        let text = try await self.clickHouse.query(sql + " FORMAT TabSeparated")
        return Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
    }

    func distinctIDs(_ table: String = "sluice.events") async -> Int {
        (try? await self.scalar("SELECT uniqExact(event_id) FROM \(table)")) ?? -1
    }

    /// The group's committed offsets for `topic`, summed, and the topic's end offsets, summed.
    func committedAndEnd(topic: String = "events") async throws -> (Int64, Int64) {
        let probe = try KafkaConsumer(properties: [
            "bootstrap.servers": self.cluster.bootstrapServers, "group.id": self.configuration.groupID,
            "log_level": "0",
        ])
        defer { Task { await probe.close() } }
        let marks = try await probe.watermarks(topic: topic)
        let committed = try await probe.committed(marks.keys.map { TopicPartition(topic, $0) })
        return (committed.values.reduce(0) { $0 + ($1 ?? 0) }, marks.values.reduce(0) { $0 + $1.high })
    }

    /// Runs `body` with a fresh pipeline and always tears it down (servers, clients, loader).
    static func with(
        routes: [LoaderRoute] = [.events],
        partitions: Int = 4,
        _ body: (LoadPipeline) async throws -> Void
    ) async throws {
        let pipeline = try await LoadPipeline(routes: routes, partitions: partitions)
        do {
            try await body(pipeline)
        } catch {
            if pipeline.task != nil { try? await pipeline.stopLoader() }
            await pipeline.close()
            throw error
        }
        if pipeline.task != nil { try await pipeline.stopLoader() }
        await pipeline.close()
    }

    func close() async {
        try? await self.clickHouse.shutdown()
        self.producer.close()
        self.server.stop()
    }
}

@Suite(.serialized, .timeLimit(.minutes(4))) struct LoaderTests {
    @Test func nEventsGiveExactlyNDistinctIDsAndTheOffsetsFollow() async throws {
        try await LoadPipeline.with { pipeline in
            pipeline.startLoader()
            let values = (0..<3000).map { eventJSON($0) }
            try await pipeline.send(values)
            // Some sent twice, as a forwarder restart would: still 3000 distinct.
            try await pipeline.send(Array(values.prefix(200)))
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(200)) {
                await pipeline.distinctIDs() == 3000
            }
            try await waitUntil(timeout: .seconds(30), pollEvery: .milliseconds(200)) {
                let (committed, end) = try await pipeline.committedAndEnd()
                return committed == end && end == 3200
            }
            #expect(try await pipeline.scalar("SELECT count() FROM sluice.events FINAL") == 3000)
            #expect(
                try await pipeline.scalar("SELECT count() FROM sluice.events WHERE user_id = '' OR action = ''") == 0
            )
        }
    }

    /// RowBinary (the default) and JSONEachRow put the same values in the table, escapes,
    /// unicode, numbers as text and JSON text included.
    @Test func bothFormatsStoreTheSameRows() async throws {
        try await LoadPipeline.with { pipeline in
            #expect(pipeline.configuration.format == .rowBinary)
            pipeline.startLoader()
            // A second loader on the same topic, in JSONEachRow, into its own table.
            var jsonRoute = LoaderRoute.events
            jsonRoute.table = "sluice.events_json"
            var json = pipeline.configuration
            json.groupID = "json-loader"
            json.format = .jsonEachRow
            json.routes = [jsonRoute]
            let jsonGroup = ServiceGroup(
                services: [Loader(configuration: json, logger: quietLogger)],
                logger: quietLogger
            )
            let jsonTask = Task { try await jsonGroup.run() }
            do {
                var values = (0..<500).map { eventJSON($0) }
                values.append(
                    Array(
                        #"{"event_id":"tricky-1","action":"cl\u0069ck","user_id":"ü\"ser\\1 😀","timestamp":"2026-11-22T10:15:30.250+01:00","received_at":1795342530250,"page":null,"properties":{ "a" : [1, "x\ty"] },"schema_version":"3","client_ip":12.5,"source":true}"#
                            .utf8
                    )
                )
                values.append(
                    Array(
                        #"{"event_id":"tricky-2","action":"a","user_id":"u","timestamp":1795342530999,"received_at":"2026-11-22T10:15:31Z","properties":"{}","object":"line\nbreak \u0000 nul \ud83d\ude00"}"#
                            .utf8
                    )
                )
                values.append(
                    Array(
                        #"{"event_id":"tricky-3","action":"a","user_id":"u","timestamp":0,"received_at":0,"properties":"plain text","referrer":""}"#
                            .utf8
                    )
                )
                try await pipeline.send(values)
                try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(200)) {
                    let binary = await pipeline.distinctIDs()
                    let text = await pipeline.distinctIDs("sluice.events_json")
                    return binary == values.count && text == values.count
                }
                // RowBinary really was used: the table the loader made has the route's types.
                #expect(pipeline.loader.insertFormats == ["events": .rowBinary])
                let columns = LoaderRoute.events.columns.map { "`\($0.name)`" }.joined(separator: ", ")
                let binary = try await pipeline.clickHouse.query(
                    "SELECT \(columns) FROM sluice.events ORDER BY event_id FORMAT TabSeparated"
                )
                let text = try await pipeline.clickHouse.query(
                    "SELECT \(columns) FROM sluice.events_json ORDER BY event_id FORMAT TabSeparated"
                )
                #expect(binary.split(separator: "\n").count == values.count)
                #expect(binary == text)
                let tricky = try await pipeline.clickHouse.query(
                    "SELECT action, user_id, toUnixTimestamp(timestamp), page, properties, client_ip, source, schema_version, object FROM sluice.events WHERE event_id LIKE 'tricky-%' ORDER BY event_id FORMAT TabSeparated"
                )
                #expect(
                    tricky.split(separator: "\n").map(String.init)
                        == [
                            [
                                "click", #"ü"ser\\1 😀"#, "1795338930", "", #"{ "a" : [1, "x\\ty"] }"#, "12.5", "true",
                                "3",
                                "",
                            ],
                            ["a", "u", "1795342530", "", "{}", "", "", "1", #"line\nbreak \0 nul 😀"#],
                            ["a", "u", "0", "", #""plain text""#, "", "", "1", ""],
                        ].map { $0.joined(separator: "\t") }
                )
            } catch {
                await jsonGroup.triggerGracefulShutdown()
                try? await jsonTask.value
                throw error
            }
            await jsonGroup.triggerGracefulShutdown()
            try await jsonTask.value
        }
    }

    @Test func clickHouseKilledMidLoadLosesNothing() async throws {
        try await LoadPipeline.with { pipeline in
            pipeline.startLoader()
            try await pipeline.send((0..<2000).map { eventJSON($0) })
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(100)) {
                await pipeline.distinctIDs() > 0
            }
            let serverPorts = pipeline.server.reservePorts()  // Nobody else's while it is down.
            defer { withExtendedLifetime(serverPorts) {} }
            pipeline.server.kill()
            try await pipeline.send((2000..<4000).map { eventJSON($0) })
            try await Task.sleep(for: .seconds(2))
            // Nothing it could not insert was committed.
            let (committedDuring, _) = try await pipeline.committedAndEnd()
            #expect(committedDuring <= 2000)
            try await pipeline.server.restart()
            try await waitUntil(timeout: .seconds(90), pollEvery: .milliseconds(200)) {
                await pipeline.distinctIDs() == 4000
            }
            try await waitUntil(timeout: .seconds(30), pollEvery: .milliseconds(200)) {
                let (committed, end) = try await pipeline.committedAndEnd()
                return committed == end
            }
            #expect(pipeline.loader.messagesDeadLettered == 0)
        }
    }

    @Test func aPoisonMessageGoesToTheDeadLetterTopicWithItsReason() async throws {
        try await LoadPipeline.with(partitions: 1) { pipeline in
            pipeline.startLoader()
            var values = (0..<500).map { eventJSON($0) }
            values.insert(Array("not json at all".utf8), at: 100)
            values.insert(Array(#"{"event_id":"x","action":"click","timestamp":"2026-11-22T10:00:00Z"}"#.utf8), at: 300)
            try await pipeline.send(values)
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(200)) {
                let (committed, end) = try await pipeline.committedAndEnd()
                return committed == end && end == 502
            }
            #expect(await pipeline.distinctIDs() == 500)
            #expect(pipeline.loader.messagesDeadLettered == 2)

            let reader = try KafkaConsumer(
                properties: [
                    "bootstrap.servers": pipeline.cluster.bootstrapServers, "group.id": "dlq-reader", "log_level": "0",
                ],
                topics: ["events.dlq"]
            )
            var dead: [ConsumedMessage] = []
            try await waitUntil(timeout: .seconds(30)) {
                dead += await reader.poll(maxMessages: 10, timeout: .milliseconds(200)).messages
                return dead.count >= 2
            }
            await reader.close()
            let reasons = dead.map { String(decoding: $0.header("dlq_reason") ?? [], as: UTF8.self) }
            #expect(reasons.contains { $0.hasPrefix("not JSON") })
            #expect(reasons.contains("missing required field 'received_at'"))
            #expect(
                Set(dead.compactMap { $0.header("dlq_offset").map { String(decoding: $0, as: UTF8.self) } }) == [
                    "100", "300",
                ]
            )
            #expect(dead.allSatisfy { $0.header("dlq_topic") == Array("events".utf8) })
            #expect(dead.first { $0.header("dlq_offset") == Array("100".utf8) }?.value == Array("not json at all".utf8))
        }
    }

    @Test func aRowTheTableRejectsIsIsolatedAndTheRestLoads() async throws {
        // A column the JSON validation cannot check: ClickHouse refuses the value (UInt8 overflow
        // is not an error in old servers, so use a Date that does not parse).
        var route = LoaderRoute(
            topic: "orders",
            table: "shop.orders",
            columns: [
                LoaderColumn("event_id", .string, required: true),
                LoaderColumn("timestamp", .timestamp, required: true),
                LoaderColumn("amount", .string, required: true),
            ]
        )
        route.deadLetterTopic = "orders.dlq"
        try await LoadPipeline.with(routes: [route], partitions: 1) { pipeline in
            // The table exists already with a stricter type than the route says.
            try await pipeline.clickHouse.execute("CREATE DATABASE IF NOT EXISTS shop")
            try await pipeline.clickHouse.execute(
                "CREATE TABLE shop.orders (event_id String, timestamp DateTime('UTC'), amount UInt32) ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(timestamp) ORDER BY event_id"
            )
            pipeline.startLoader()
            let values = (0..<64).map { n in
                Array(
                    #"{"event_id":"o\#(n)","timestamp":"2026-11-22T10:00:00Z","amount":"\#(n == 37 ? "lots" : String(n))"}"#
                        .utf8
                )
            }
            try await pipeline.send(values, topic: "orders")
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(200)) {
                let (committed, end) = try await pipeline.committedAndEnd(topic: "orders")
                return committed == end && end == 64
            }
            #expect(await pipeline.distinctIDs("shop.orders") == 63)
            #expect(pipeline.loader.messagesDeadLettered == 1)
            // RowBinary would misread every row of a table with other types: the route falls back.
            #expect(pipeline.loader.insertFormats == ["orders": .jsonEachRow])
        }
    }

    @Test func twoRoutesFillTwoTables() async throws {
        let orders = LoaderRoute(
            topic: "orders",
            table: "shop.orders",
            columns: [
                LoaderColumn("event_id", .string, required: true),
                LoaderColumn("timestamp", .timestamp, required: true),
                LoaderColumn("user_id", .string, required: true),
                LoaderColumn("amount", .float64, field: "total", defaultValue: "0"),
                LoaderColumn("currency", .string, defaultValue: "EUR"),
            ]
        )
        try await LoadPipeline.with(routes: [.events, orders], partitions: 2) { pipeline in
            pipeline.startLoader()
            try await pipeline.send((0..<300).map { eventJSON($0) })
            try await pipeline.send(
                (0..<120).map { n in
                    Array(
                        #"{"event_id":"o\#(n)","timestamp":1795342530000,"user_id":"u\#(n)","total":\#(n).5\#(n % 2 == 0 ? #","currency":"USD""# : "")}"#
                            .utf8
                    )
                },
                topic: "orders"
            )
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(200)) {
                let events = await pipeline.distinctIDs()
                let orders = await pipeline.distinctIDs("shop.orders")
                return events == 300 && orders == 120
            }
            #expect(try await pipeline.scalar("SELECT count() FROM shop.orders WHERE currency = 'USD'") == 60)
            #expect(
                try await pipeline.scalar("SELECT toUInt64(sum(amount) * 10) FROM shop.orders")
                    == (0..<120).reduce(0) { $0 + $1 * 10 + 5 }
            )
        }
    }

    @Test func replayFromEarliestLeavesTheDeduplicatedCountUnchanged() async throws {
        try await LoadPipeline.with { pipeline in
            pipeline.startLoader()
            try await pipeline.send((0..<1500).map { eventJSON($0) })
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(200)) {
                let (committed, end) = try await pipeline.committedAndEnd()
                return committed == end && end == 1500
            }
            try await pipeline.stopLoader()

            // The on-call path: reset the idle group to the earliest offsets, run the loader again.
            let plan = try await OffsetTools(
                properties: ["bootstrap.servers": pipeline.cluster.bootstrapServers, "log_level": "0"]
            ).reset(group: pipeline.configuration.groupID, topic: "events", to: .earliest, dryRun: false)
            #expect(plan.allSatisfy { $0.to == 0 })
            #expect(plan.map(\.from).reduce(0) { $0 + ($1 ?? 0) } == 1500)
            let (afterReset, _) = try await pipeline.committedAndEnd()
            #expect(afterReset == 0)

            pipeline.startLoader()
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(200)) {
                let (committed, end) = try await pipeline.committedAndEnd()
                return committed == end
            }
            try await waitUntil(timeout: .seconds(30), pollEvery: .milliseconds(200)) {
                pipeline.loader.rowsInserted == 1500
            }
            #expect(try await pipeline.scalar("SELECT count() FROM sluice.events") == 3000)  // inserted twice …
            #expect(await pipeline.distinctIDs() == 1500)  // … counted once
            #expect(try await pipeline.scalar("SELECT count() FROM sluice.events FINAL") == 1500)
        }
    }

    @Test func replayIsRefusedWhileALoaderIsRunning() async throws {
        try await LoadPipeline.with { pipeline in
            pipeline.startLoader()
            try await pipeline.send((0..<200).map { eventJSON($0) })
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(200)) {
                let (committed, end) = try await pipeline.committedAndEnd()
                return committed == end && end == 200
            }
            let refusal = await #expect(throws: LoaderError.self) {
                _ = try await OffsetTools(
                    properties: ["bootstrap.servers": pipeline.cluster.bootstrapServers, "log_level": "0"]
                ).reset(group: pipeline.configuration.groupID, topic: "events", to: .earliest, dryRun: false)
            }
            #expect(refusal?.code == .groupIsActive)
            #expect(
                refusal?.description.hasPrefix("group \(pipeline.configuration.groupID) has active members") == true
            )
            let (committed, _) = try await pipeline.committedAndEnd()
            #expect(committed == 200)
        }
    }

    @Test func aLoaderKilledMidBatchAndRestartedLosesNothing() async throws {
        try await LoadPipeline.with { pipeline in
            let total = 20_000
            try await pipeline.send((0..<total).map { eventJSON($0) })
            // A short session, so that the restarted loader need not wait out the killed one's.
            let directory = try TemporaryDirectory()
            let config = directory.path + "/sluice.yaml"
            try "kafka:\n  properties:\n    session.timeout.ms: 6000\n    heartbeat.interval.ms: 500\n"
                .write(toFile: config, atomically: true, encoding: .utf8)
            func start() throws -> SluiceProcess {
                try SluiceProcess(
                    [
                        "loader", "--config", config, "--kafka-bootstrap", pipeline.cluster.bootstrapServers,
                        "--clickhouse-url", pipeline.server.httpURL,
                    ],
                    environment: ["SLUICE_LOADER_BATCH_ROWS": "700", "SLUICE_LOGGING_LEVEL": "error"]
                )
            }
            let first = try start()
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(50)) {
                await pipeline.distinctIDs() >= 2000
            }
            _ = try await first.stop(SIGKILL)
            let (committedAtKill, _) = try await pipeline.committedAndEnd()
            let loadedAtKill = await pipeline.distinctIDs()
            #expect(loadedAtKill < total, "killed too late to be mid-load")
            // Never more committed than loaded: a commit follows its insert.
            #expect(committedAtKill <= Int64(loadedAtKill))

            let second = try start()
            try await waitUntil(timeout: .seconds(120), pollEvery: .milliseconds(200)) {
                await pipeline.distinctIDs() == total
            }
            try await waitUntil(timeout: .seconds(30), pollEvery: .milliseconds(200)) {
                let (committed, end) = try await pipeline.committedAndEnd()
                return committed == end
            }
            let rows = try await pipeline.scalar("SELECT count() FROM sluice.events")
            print(
                "loader kill test: \(loadedAtKill) distinct rows and \(committedAtKill) committed at the kill; \(rows) rows (\(rows - total) re-inserted) for \(total) events after the restart"
            )
            let status = try await second.stop(SIGTERM)
            #expect(status == 0, "\(second.standardError)")
        }
    }

    @Test func rebalancesBetweenTwoLoadersLoseNothing() async throws {
        try await LoadPipeline.with { pipeline in
            pipeline.startLoader()
            try await pipeline.send((0..<3000).map { eventJSON($0) })
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(100)) {
                await pipeline.distinctIDs() > 0
            }
            // A second member joins mid-load: the partitions are shared out again.
            let second = Loader(configuration: pipeline.configuration, logger: quietLogger)
            let secondGroup = ServiceGroup(services: [second], logger: quietLogger)
            let secondTask = Task { try await secondGroup.run() }
            try await pipeline.send((3000..<6000).map { eventJSON($0) })
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(200)) { second.rowsInserted > 0 }
            // The first leaves mid-load: the second takes everything over.
            try await pipeline.stopLoader()
            try await pipeline.send((6000..<9000).map { eventJSON($0) })
            try await waitUntil(timeout: .seconds(90), pollEvery: .milliseconds(200)) {
                await pipeline.distinctIDs() == 9000
            }
            try await waitUntil(timeout: .seconds(30), pollEvery: .milliseconds(200)) {
                let (committed, end) = try await pipeline.committedAndEnd()
                return committed == end
            }
            #expect(pipeline.loader.rowsInserted + second.rowsInserted >= 9000)
            await secondGroup.triggerGracefulShutdown()
            try await secondTask.value
        }
    }
}
