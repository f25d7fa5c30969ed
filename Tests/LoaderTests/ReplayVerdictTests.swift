import ClickHouse
import Foundation
import Kafka
import LocalClickHouse
import TestSupport
import Testing

@testable import Loader

/// `sluice replay`'s verdict (does loading a range again count it twice?) and the loader's insert
/// settings per server version.
@Suite struct ReplayVerdictTests {
    static let v18 = ClickHouseVersion(major: 18, minor: 16, patch: 1)
    static let v21 = ClickHouseVersion(major: 21, minor: 8, patch: 15)
    static let v25 = ClickHouseVersion(major: 25, minor: 8, patch: 2)
    static let route = LoaderRoute.events

    func judge(
        _ engine: String?,
        key: String = "event_id",
        partition: String = "toYYYYMM(timestamp)",
        settings: [String: String] = [:],
        version: ClickHouseVersion = v25
    ) -> ReplayVerdict {
        ReplayVerdict.judge(
            ReplayTable(
                name: "sluice.events",
                engine: engine,
                sortingKey: key,
                partitionKey: partition,
                settings: settings
            ),
            route: Self.route,
            version: version
        )
    }

    @Test func aReplacingMergeTreeKeyedOnTheEventIDFoldsTheCopies() {
        for engine in ["ReplacingMergeTree", "ReplicatedReplacingMergeTree", "SharedReplacingMergeTree"] {
            let verdict = self.judge(engine, key: "action, toDate(timestamp), object, event_id")
            #expect(verdict.kind == .deduplicated, "\(engine): \(verdict.reason)")
            #expect(
                verdict.reason.contains(
                    "the copies fold at merge time; until then count with FINAL or uniqExact(event_id)"
                )
            )
        }
        #expect(self.judge("ReplacingMergeTree", key: "`event_id`").kind == .deduplicated)
        #expect(self.judge("ReplacingMergeTree", key: "action, event_id DESC").kind == .deduplicated)
    }

    @Test func aReplacingMergeTreeWhoseKeyLacksTheEventIDDoubleCounts() {
        let verdict = self.judge("ReplacingMergeTree", key: "action, toDate(timestamp), user_id")
        #expect(verdict.kind == .wouldDoubleCount)
        #expect(verdict.reason.contains("this one's key (action, toDate(timestamp), user_id) does not hold event_id"))
        // A function of the event id is not the event id: copies fold only on the column itself.
        #expect(self.judge("ReplacingMergeTree", key: "cityHash64(event_id)").kind == .wouldDoubleCount)
    }

    @Test func aKeyOnAColumnTheLoaderDoesNotWriteDoubleCounts() {
        let inKey = self.judge("ReplacingMergeTree", key: "inserted_at, event_id")
        #expect(inKey.kind == .wouldDoubleCount)
        #expect(inKey.reason.contains("uses column inserted_at, which the loader does not write"))
        let inPartition = self.judge("ReplacingMergeTree", partition: "toYYYYMMDD(loaded_at)")
        #expect(inPartition.kind == .wouldDoubleCount)
        #expect(inPartition.reason.contains("column loaded_at"))
    }

    @Test func aPlainMergeTreeDoubleCountsAndSaysWhyItsWindowDoesNotHelp() {
        let windowed = self.judge("MergeTree", settings: ["non_replicated_deduplication_window": "1000"])
        #expect(windowed.kind == .wouldDoubleCount)
        #expect(windowed.reason.contains("within its deduplication window (the last 1000 inserts)"))
        #expect(windowed.reason.contains("a replay cuts its inserts anew"))
        let none = self.judge("MergeTree", settings: ["non_replicated_deduplication_window": "0"])
        #expect(none.reason.contains("(none: non_replicated_deduplication_window = 0)"))
        let old = self.judge("MergeTree", version: Self.v18)
        #expect(old.reason.contains("none: ClickHouse 18.16.1 deduplicates inserts only into Replicated tables"))
        let replicated = self.judge(
            "ReplicatedMergeTree",
            settings: ["replicated_deduplication_window": "10000", "replicated_deduplication_window_seconds": "3600"]
        )
        #expect(replicated.kind == .wouldDoubleCount)
        #expect(replicated.reason.contains("(the last 10000 inserts, at most 3600 s old)"))
    }

    @Test func enginesThatAddUpOrKeepCopiesDoubleCount() {
        #expect(
            self.judge("SummingMergeTree").reason == "a SummingMergeTree adds the copies up rather than folding them"
        )
        #expect(self.judge("ReplicatedCollapsingMergeTree").kind == .wouldDoubleCount)
        #expect(self.judge("Log").reason == "a Log table keeps every copy")
        let distributed = self.judge("Distributed")
        #expect(distributed.kind == .wouldDoubleCount)
        #expect(distributed.reason.contains("replay with --force"))
    }

    @Test func aTableNotCreatedYetHasNothingToCountTwice() {
        let verdict = self.judge(nil)
        #expect(verdict.kind == .deduplicated)
        #expect(verdict.engine == nil)
        #expect(verdict.reason.contains("the table does not exist"))
    }

    @Test func theAnswersOfSystemTablesAreReadWithTheTablesOwnSettingsFirst() throws {
        let table = try ReplayTable.parse(
            name: "sluice.events",
            table:
                #"{"engine":"MergeTree","engine_full":"MergeTree PARTITION BY toYYYYMM(timestamp) ORDER BY (a, event_id) SETTINGS non_replicated_deduplication_window = 50, storage_policy = 'x, y', index_granularity = 8192","sorting_key":"a, event_id","partition_key":"toYYYYMM(timestamp)"}"#
                + "\n",
            serverSettings: #"{"name":"non_replicated_deduplication_window","value":"0"}"# + "\n"
                + #"{"name":"replicated_deduplication_window","value":"10000"}"# + "\n"
        )
        #expect(table.engine == "MergeTree")
        #expect(table.sortingKey == "a, event_id")
        #expect(table.partitionKey == "toYYYYMM(timestamp)")
        #expect(
            table.settings == ["non_replicated_deduplication_window": "50", "replicated_deduplication_window": "10000"]
        )
        let missing = try ReplayTable.parse(name: "a.b", table: "", serverSettings: "")
        #expect(missing.engine == nil)
        #expect(throws: LoaderError.self) {
            try ReplayTable.parse(name: "a.b", table: "Code: 60. DB::Exception", serverSettings: "")
        }
    }

    @Test func keyExpressionsAreSplitAtTheirTopLevel() {
        #expect(
            ReplayVerdict.topLevel("action, toDate(timestamp), intDiv(a, 3), 'x,y'") == [
                "action", "toDate(timestamp)", "intDiv(a, 3)", "'x,y'",
            ]
        )
        #expect(ReplayVerdict.topLevel("") == [])
        #expect(
            ReplayVerdict.columns(in: "toDate(timestamp), intDiv(`odd name`, 1000), 'lit' , x2") == [
                "timestamp", "odd name", "x2",
            ]
        )
    }

    // MARK: - Insert settings

    /// What each insert carries, per server version.
    @Test func insertSettingsArePinnedPerServerVersion() {
        let messages = (0..<4).map { message(100 + Int64($0), partition: Int32($0 % 2)) }[...]
        let (rows, _) = encodedRows(messages)
        let token = "events:0:100-102/2,1:101-103/2"
        let expected: [(ClickHouseVersion, [String: String])] = [
            (Self.v18, [:]),
            (Self.v21, [:]),
            (ClickHouseVersion(major: 21, minor: 11), ["async_insert": "0"]),
            (ClickHouseVersion(major: 22, minor: 1, patch: 4), ["async_insert": "0"]),
            (ClickHouseVersion(major: 22, minor: 2), ["async_insert": "0", "insert_deduplication_token": token]),
            (ClickHouseVersion(major: 26, minor: 2), ["async_insert": "0", "insert_deduplication_token": token]),
        ]
        for (version, settings) in expected {
            #expect(InsertSettings.settings(for: version, chunk: rows.indices, of: rows) == settings, "\(version)")
        }
    }

    @Test func theTokenNamesTheRowsPerPartitionWhateverTheirOrder() {
        func token(_ messages: [ConsumedMessage], chunk: Range<Int>? = nil) -> String {
            let (rows, _) = encodedRows(messages[...])
            return InsertSettings.token(chunk ?? rows.indices, of: rows)
        }
        // The same rows in another poll order: the same token.
        let a = [
            message(10, partition: 0), message(20, partition: 1), message(11, partition: 0), message(21, partition: 1),
        ]
        let b = [
            message(20, partition: 1), message(21, partition: 1), message(10, partition: 0), message(11, partition: 0),
        ]
        #expect(token(a) == token(b))
        #expect(token(a) == "events:0:10-11/2,1:20-21/2")
        // Same first and last message and the same count, other rows between: another token
        // (the token before named only those three, so the server could drop rows it never had).
        let c = [
            message(10, partition: 0), message(11, partition: 0), message(12, partition: 0), message(21, partition: 1),
        ]
        let d = [
            message(10, partition: 0), message(19, partition: 1), message(20, partition: 1), message(21, partition: 1),
        ]
        #expect(token(c) != token(d))
        // A dead letter is no row: left out of the token.
        let withBad = [message(10, partition: 0), message(11, partition: 0, value: "bad"), message(12, partition: 0)]
        #expect(token(withBad) == "events:0:10-12/2")
        #expect(token(a, chunk: 1..<3) == "events:0:11-11/1,1:20-20/1")
    }

    // MARK: - Against ClickHouse 18.16

    /// Tables of each kind on the local 18.16, read through the same queries `sluice replay` sends.
    @Test(.timeLimit(.minutes(2))) func theVerdictsOfTablesOnClickHouse18() async throws {
        let server = try await ClickHouseServer.start()
        defer { server.stop() }
        let clickHouse = ClickHouseClient(ClickHouseConfiguration(url: server.httpURL), logger: quietLogger)
        do {
            let version = try await clickHouse.serverVersion()
            #expect(version.major == 18, "\(version)")
            let (statements, routes) = Self.tablesOfEveryKind(version: version)
            for statement in statements { try await clickHouse.execute(statement) }
            var verdicts: [String: ReplayVerdict] = [:]
            for (name, route) in routes {
                let table = try await ReplayTable.read(route, from: clickHouse)
                verdicts[name] = ReplayVerdict.judge(table, route: route, version: version)
            }
            try Self.checkVerdictsOfEveryKind(verdicts)
        } catch {
            try? await clickHouse.shutdown()
            throw error
        }
        try? await clickHouse.shutdown()
    }

    // MARK: - The command

    /// `sluice replay` against Kafka and ClickHouse 18.16: refused before anything moves into a
    /// table that keeps copies, the verdict and the moves with --dry-run (status 3), moved with
    /// --force, and moved without it into the table the loader makes.
    @Test(.timeLimit(.minutes(3))) func replayRefusesATableThatWouldDoubleCountUnlessForced() async throws {
        try await LoadPipeline.with(partitions: 2) { pipeline in
            try await pipeline.clickHouse.execute("CREATE DATABASE sluice")
            try await pipeline.clickHouse.execute(
                "CREATE TABLE sluice.events (event_id String, timestamp DateTime) ENGINE = MergeTree() ORDER BY event_id"
            )
            try await pipeline.send((0..<100).map { eventJSON($0) })
            let tools = OffsetTools(properties: [
                "bootstrap.servers": pipeline.cluster.bootstrapServers, "log_level": "0",
            ])
            _ = try await tools.reset(
                group: pipeline.configuration.groupID,
                topic: "events",
                to: .latest,
                dryRun: false
            )
            #expect(try await pipeline.committedAndEnd() == (100, 100))
            func replay(_ arguments: [String]) async throws -> ChildProcess.Completion {
                try await ChildProcess.runSluice(
                    [
                        "replay", "--kafka-bootstrap", pipeline.cluster.bootstrapServers, "--clickhouse-url",
                        pipeline.server.httpURL, "--to-earliest",
                    ] + arguments,
                    environment: ["SLUICE_LOGGING_LEVEL": "error"],
                    timeout: .seconds(60)
                )
            }

            let refused = try await replay([])
            #expect(refused.status == 1, "\(refused)")
            #expect(
                refused.standardError.contains(
                    "sluice: replay refused: table sluice.events (MergeTree) would count the replayed events twice: a MergeTree keeps every copy"
                ),
                "\(refused.standardError)"
            )
            #expect(refused.standardError.contains("or delete the range from it first and give --force"))
            #expect(refused.standardError.contains("sluice: nothing was moved; --force replays all the same"))
            #expect(!refused.standardOutput.contains("moved"))
            #expect(try await pipeline.committedAndEnd() == (100, 100))

            let dryRun = try await replay(["--dry-run", "--json"])
            #expect(dryRun.status == 3, "\(dryRun)")
            let parsed = try JSONSerialization.jsonObject(with: Data(dryRun.standardOutput.utf8))
            let report = try #require(parsed as? [String: Any], "\(dryRun.standardOutput)")
            #expect(report["refused"] as? Bool == true)
            let tables = try #require(report["tables"] as? [[String: Any]])
            #expect(tables.first?["verdict"] as? String == "would_double_count")
            #expect(tables.first?["engine"] as? String == "MergeTree")
            let partitions = try #require(report["partitions"] as? [[String: Any]])
            #expect(partitions.map { $0["to"] as? Int } == [0, 0])
            #expect(partitions.reduce(0) { $0 + ($1["from"] as? Int ?? 0) } == 100)
            #expect(try await pipeline.committedAndEnd() == (100, 100))

            let forced = try await replay(["--force"])
            #expect(forced.status == 0, "\(forced)")
            #expect(
                forced.standardOutput.contains("table sluice.events (MergeTree): would count the replayed events twice")
            )
            #expect(forced.standardOutput.contains("moved group sluice-loader on events:"))
            #expect(try await pipeline.committedAndEnd() == (0, 100))

            // The table the loader makes: replayed without --force.
            _ = try await tools.reset(
                group: pipeline.configuration.groupID,
                topic: "events",
                to: .latest,
                dryRun: false
            )
            try await pipeline.clickHouse.execute("DROP TABLE sluice.events")
            try await pipeline.clickHouse.execute(
                LoaderRoute.events.createTable(on: try await pipeline.clickHouse.serverVersion())
            )
            let allowed = try await replay([])
            #expect(allowed.status == 0, "\(allowed)")
            #expect(allowed.standardOutput.contains("table sluice.events (ReplacingMergeTree): deduplicated"))
            #expect(try await pipeline.committedAndEnd() == (0, 100))
        }
    }

    /// Nothing checked, nothing moved: ClickHouse not answering, or a topic no route reads.
    @Test(.timeLimit(.minutes(2))) func replayRefusesWhatItCannotCheck() async throws {
        let port = try freeLoopbackPorts(1)[0]
        let unreachable = try await ChildProcess.runSluice(
            [
                "replay", "--kafka-bootstrap", "127.0.0.1:1", "--clickhouse-url", "http://127.0.0.1:\(port)",
                "--to-earliest",
            ],
            environment: ["SLUICE_LOGGING_LEVEL": "error"],
            timeout: .seconds(60)
        )
        #expect(unreachable.status == 1, "\(unreachable)")
        #expect(
            unreachable.standardError.contains(
                "sluice: replay refused: cannot read the tables of topic events from ClickHouse"
            ),
            "\(unreachable.standardError)"
        )
        let unrouted = try await ChildProcess.runSluice(
            ["replay", "--kafka-bootstrap", "127.0.0.1:1", "--topic", "orders", "--to-earliest"],
            environment: ["SLUICE_LOGGING_LEVEL": "error"],
            timeout: .seconds(60)
        )
        #expect(unrouted.status == 1, "\(unrouted)")
        #expect(unrouted.standardOutput.contains("cannot check: no loader route reads topic orders (routes: events)"))
        #expect(
            unrouted.standardError.contains("sluice: replay refused: no loader route reads topic orders"),
            "\(unrouted.standardError)"
        )
    }

    /// Tables `replay.<kind>` of each kind (the statements that make them) and a route of the
    /// events' columns onto each, by kind; `absent` has no table.
    static func tablesOfEveryKind(version: ClickHouseVersion) -> ([String], [String: LoaderRoute]) {
        let columns =
            "event_id String, action String, user_id String, timestamp DateTime, inserted_at DateTime DEFAULT now()"
        let engines = [
            "replacing": "ReplacingMergeTree() PARTITION BY toYYYYMM(timestamp) ORDER BY (action, event_id)",
            "replacing_by_user": "ReplacingMergeTree() PARTITION BY toYYYYMM(timestamp) ORDER BY (action, user_id)",
            "replacing_by_insert_time": "ReplacingMergeTree() PARTITION BY toYYYYMM(inserted_at) ORDER BY event_id",
            "plain": "MergeTree() PARTITION BY toYYYYMM(timestamp) ORDER BY event_id",
            "summing": "SummingMergeTree() ORDER BY event_id",
            "log": "Log",
        ]
        var statements = ["CREATE DATABASE IF NOT EXISTS replay"]
        var routes: [String: LoaderRoute] = [:]
        for name in engines.keys.sorted() + ["sluice_made", "absent"] {
            routes[name] = LoaderRoute(topic: name, table: "replay.\(name)", columns: LoaderRoute.eventColumns)
            if let engine = engines[name] {
                statements.append("CREATE TABLE replay.\(name) (\(columns)) ENGINE = \(engine)")
            }
        }
        routes["sluice_made"]?.orderBy = LoaderRoute.eventsOrderBy
        statements.append(routes["sluice_made"]!.createTable(on: version))
        return (statements, routes)
    }

    static func checkVerdictsOfEveryKind(_ verdicts: [String: ReplayVerdict]) throws {
        let expected: [String: ReplayVerdict.Kind] = [
            "sluice_made": .deduplicated, "replacing": .deduplicated, "absent": .deduplicated,
            "replacing_by_user": .wouldDoubleCount, "replacing_by_insert_time": .wouldDoubleCount,
            "plain": .wouldDoubleCount, "summing": .wouldDoubleCount, "log": .wouldDoubleCount,
        ]
        for (name, kind) in expected {
            let verdict = try #require(verdicts[name], "\(name)")
            #expect(verdict.kind == kind, "\(name): \(verdict)")
        }
        #expect(verdicts["sluice_made"]?.engine == "ReplacingMergeTree")
        #expect(verdicts["replacing_by_user"]?.reason.contains("(action, user_id) does not hold event_id") == true)
        #expect(verdicts["replacing_by_insert_time"]?.reason.contains("column inserted_at") == true)
        #expect(verdicts["plain"]?.engine == "MergeTree")
        #expect(verdicts["summing"]?.engine == "SummingMergeTree")
        #expect(verdicts["absent"]?.engine == nil)
    }
}
