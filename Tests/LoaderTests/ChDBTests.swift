import ClickHouse
import Foundation
import TestSupport
import Testing

@testable import Loader

/// The SQL the loader makes for current ClickHouse (TTL, storage policy, the erasure record),
/// run by chDB, current ClickHouse in process, since the local server is 18.16. Skipped where
/// chDB is missing, except in CI (`CI` set), where a missing chDB fails: scripts/setup installs it.
@Suite(.serialized, .enabled(if: ChDB.available || ProcessInfo.processInfo.environment["CI"] != nil))
struct ChDBTests {
    @Test func theTableWithATTLAndAStoragePolicyIsCreatedAsGenerated() async throws {
        let chdb = try ChDB()
        let version = try await chdb.version()
        #expect(version >= ClickHouseVersion(major: 24, minor: 1), "\(version)")
        var route = LoaderRoute.events
        route.ttl = .seconds(400 * 86_400)
        route.storagePolicy = "default"
        let results = try await chdb.run([
            "CREATE DATABASE IF NOT EXISTS sluice",
            route.createTable(on: version),
            "SELECT engine_full FROM system.tables WHERE database = 'sluice' AND name = 'events'",
            // A row older than the TTL is gone once the TTL is applied; a recent one stays.
            "INSERT INTO sluice.events (event_id, action, user_id, timestamp, received_at) VALUES "
                + "('old', 'a', 'u', '2020-01-01 00:00:00', now()), ('new', 'a', 'u', now(), now())",
            "OPTIMIZE TABLE sluice.events FINAL",
            "SELECT event_id FROM sluice.events ORDER BY event_id",
        ])
        let failed = results.filter { !$0.ok }
        try #require(failed.isEmpty, "\(results)")
        #expect(results[2].text.contains("TTL toDateTime(timestamp) + toIntervalDay(400)"), "\(results[2].text)")
        #expect(results[2].text.contains("storage_policy = \\'default\\'"), "\(results[2].text)")
        #expect(results[2].text.contains("non_replicated_deduplication_window = 1000"))
        #expect(results[5].text == "new\n")
    }

    @Test func theRowAuditsQueriesRunOnACurrentServer() async throws {
        let chdb = try ChDB()
        let version = try await chdb.version()
        let route = LoaderRoute.events
        let results = try await chdb.run([
            "CREATE DATABASE IF NOT EXISTS sluice",
            route.createTable(on: version),
            "INSERT INTO sluice.events (event_id, action, timestamp, received_at, gateway_id, wal_lsn) VALUES "
                + "('a', 'click', now(), now(), 'gw''1', 5), ('b', 'click', now(), now(), 'gw''1', 4100),"
                + " ('c', 'click', now(), now(), 'gw-2', 6)",
            RowAudit.countQuery(route: route, gateway: "gw'1", runs: [0..<10, 4000..<5000]),
            RowAudit.lsnQuery(route: route, gateway: "gw'1", buckets: [1]),
            "SELECT count() FROM system.mutations WHERE database = 'sluice' AND table = 'events'"
                + " AND position(command, '\\'u1\\'') > 0 FORMAT TabSeparated",
        ])
        let failed = results.filter { !$0.ok }
        try #require(failed.isEmpty, "\(results)")
        #expect(RowAudit.parseCounts(results[3].text) == [0: 1, 1: 1], "\(results[3].text)")
        #expect(results[4].text == "4100\n")
        #expect(results[5].text == "0\n")
    }

    @Test func theEncryptedPolicyOfOpsClickHouseHoldsTheTableAndNoPlainText() async throws {
        let configuration = repositoryRoot().appendingPathComponent("ops/clickhouse/config.d/sluice-encrypted-disk.xml")
        let chdb = try ChDB(
            configFile: configuration.path,
            environment: ["CLICKHOUSE_SLUICE_DISK_KEY_1": String(repeating: "0123456789abcdef", count: 4)]
        )
        let version = try await chdb.version()
        var route = LoaderRoute.events
        route.storagePolicy = "encrypted"
        let marker = "marker-\(UInt64.random(in: 0...UInt64.max))"
        let results = try await chdb.run([
            "CREATE DATABASE IF NOT EXISTS sluice",
            route.createTable(on: version),
            "INSERT INTO sluice.events (event_id, action, user_id, timestamp, received_at) VALUES "
                + "('\(marker)', 'a', '\(marker)', now(), now())",
            "SELECT user_id FROM sluice.events",
            "SELECT storage_policy FROM system.tables WHERE database = 'sluice' AND name = 'events'",
            "SELECT is_encrypted FROM system.disks WHERE name = 'sluice_encrypted'",
        ])
        let failed = results.filter { !$0.ok }
        try #require(failed.isEmpty, "\(results)")
        #expect(results[3].text == marker + "\n")
        #expect(results[4].text == "encrypted\n")
        #expect(results[5].text == "1\n")
        // The part's files on disk: encrypted (the "ENC" header), the marker nowhere in clear.
        let files = try FileManager.default.subpathsOfDirectory(atPath: chdb.directory.path)
            .filter { $0.hasSuffix("data.bin") || $0.hasSuffix(".bin") }
        #expect(!files.isEmpty)
        for file in files {
            let data = try Data(contentsOf: URL(fileURLWithPath: chdb.directory.path + "/" + file))
            #expect(data.range(of: Data(marker.utf8)) == nil, "\(file) holds the marker in clear")
            if file.contains("sluice_encrypted/") { #expect(data.prefix(3) == Data("ENC".utf8), "\(file)") }
        }
        #expect(files.contains { $0.contains("sluice_encrypted/") }, "\(files)")
    }

    /// What `sluice erase` and the retention sweep send, on current ClickHouse (18.16 runs them
    /// in ErasureTests and RetentionTests).
    @Test func theEraseAndSweepStatementsWorkAsGenerated() async throws {
        let chdb = try ChDB()
        let version = try await chdb.version()
        let route = LoaderRoute.events
        let erase = UserErasure.statements(route: route, column: "user_id", userID: "o'hara\\1")
        let results = try await chdb.run([
            "CREATE DATABASE IF NOT EXISTS sluice",
            route.createTable(on: version),
            "INSERT INTO sluice.events (event_id, action, user_id, timestamp, received_at) VALUES "
                + "('a', 'a', 'o\\'hara\\\\1', now(), now()), ('b', 'a', 'bob', now(), now()),"
                + " ('c', 'a', 'carol', '2020-01-05 00:00:00', now())",
            erase.count,
            erase.delete,
            erase.pendingMutations,
            erase.count,
            RetentionSweep.partitionsQuery(route) + " ORDER BY partition",
            RetentionSweep.drop("202001", of: route),
            "SELECT event_id FROM sluice.events",
        ])
        let failed = results.filter { !$0.ok }
        try #require(failed.isEmpty, "\(results)")
        #expect(results[3].text == "1\n")
        #expect(Int(results[5].text.dropLast()) != nil, "\(results[5].text)")
        #expect(results[6].text == "0\n")
        #expect(results[7].text.hasPrefix("202001\n"), "\(results[7].text)")
        #expect(results[9].text == "b\n")
    }

    /// `sluice replay`'s metadata queries on current ClickHouse (18.16 runs them in
    /// ReplayVerdictTests): the same verdicts, and the dedup window settings read.
    @Test func theReplayVerdictsOfTablesOfEachKind() async throws {
        let chdb = try ChDB()
        let version = try await chdb.version()
        let (statements, routes) = ReplayVerdictTests.tablesOfEveryKind(version: version)
        let made = try await chdb.run(
            statements + [
                "CREATE TABLE replay.windowed (event_id String) ENGINE = MergeTree ORDER BY event_id SETTINGS non_replicated_deduplication_window = 77"
            ]
        )
        try #require(made.filter { !$0.ok }.isEmpty, "\(made)")
        var all = routes
        all["windowed"] = LoaderRoute(
            topic: "windowed",
            table: "replay.windowed",
            columns: [LoaderColumn("event_id", .string), LoaderColumn("timestamp", .timestamp)]
        )
        let names = all.keys.sorted()
        let answers = try await chdb.run(
            [ReplayTable.settingsTableQuery, ReplayTable.settingsQuery] + names.map { ReplayTable.tableQuery(all[$0]!) }
        )
        try #require(answers.filter { !$0.ok }.isEmpty, "\(answers)")
        #expect(answers[0].text == "1\n")
        var verdicts: [String: ReplayVerdict] = [:]
        var tables: [String: ReplayTable] = [:]
        for (index, name) in names.enumerated() {
            let table = try ReplayTable.parse(
                name: all[name]!.table,
                table: answers[2 + index].text,
                serverSettings: answers[1].text
            )
            tables[name] = table
            verdicts[name] = ReplayVerdict.judge(table, route: all[name]!, version: version)
        }
        try ReplayVerdictTests.checkVerdictsOfEveryKind(verdicts)
        // The server's defaults, and a table's own setting over them.
        #expect(tables["plain"]?.settings["replicated_deduplication_window"] != nil)
        #expect(tables["plain"]?.settings["non_replicated_deduplication_window"] == "0")
        #expect(tables["sluice_made"]?.settings["non_replicated_deduplication_window"] == "1000")
        #expect(tables["windowed"]?.settings["non_replicated_deduplication_window"] == "77")
        #expect(verdicts["windowed"]?.reason.contains("(the last 77 inserts)") == true, "\(verdicts["windowed"]!)")
    }

    /// The loader's insert settings on current ClickHouse (where async inserts are on by
    /// default, and the settings must be accepted): a retry with the same token is dropped
    /// within the window the loader's tables get, while the same rows cut otherwise (a replay)
    /// go in again. (chDB runs inserts in process, so it cannot show what `async_insert` changes
    /// for inserts over HTTP.)
    @Test func aRetriedInsertIsDroppedByItsTokenAndAReplayIsNot() async throws {
        let chdb = try ChDB()
        let version = try await chdb.version()
        let messages = (0..<4).map { message(100 + Int64($0), partition: Int32($0 % 2)) }
        let (rows, _) = encodedRows(messages[...])
        func insert(_ chunk: Range<Int>) -> String {
            let settings = InsertSettings.settings(for: version, chunk: chunk, of: rows)
            let values = chunk.map { "('e\($0)', 'a', now(), now())" }.joined(separator: ", ")
            return "INSERT INTO sluice.events (event_id, action, timestamp, received_at) SETTINGS "
                + settings.keys.sorted().map { "\($0) = '\(settings[$0]!)'" }.joined(separator: ", ")
                + " VALUES " + values
        }
        let results = try await chdb.run([
            "SELECT value FROM system.settings WHERE name = 'async_insert'",
            "CREATE DATABASE IF NOT EXISTS sluice",
            LoaderRoute.events.createTable(on: version),
            insert(0..<4),
            insert(0..<4),  // the retry: dropped
            insert(0..<2),  // a replay cut in two: both halves go in again
            insert(2..<4),
            "SELECT count() FROM sluice.events",
        ])
        let failed = results.filter { !$0.ok }
        try #require(failed.isEmpty, "\(results)")
        #expect(results[0].text == "1\n", "async inserts are on by default here: \(results[0].text)")
        #expect(results[7].text == "8\n", "\(results)")
    }

    @Test func theErasureRecordTableIsCreatedAsGenerated() async throws {
        let chdb = try ChDB()
        let erasure = ErasureConfiguration(keyBytes: Array(repeating: 1, count: 32))
        let results = try await chdb.run([
            "CREATE DATABASE IF NOT EXISTS sluice", erasure.createTable,
            "INSERT INTO sluice.erasures (key_id, user_hash, erased_at, status, rows_removed, tables) VALUES ('k', 'h', now(), 'recorded', 0, '')",
            "SELECT DISTINCT key_id, user_hash FROM sluice.erasures",
        ])
        let failed = results.filter { !$0.ok }
        try #require(failed.isEmpty, "\(results)")
        #expect(results[3].text == "k\th\n")
    }
}

/// chDB through `python3 Tests/LoaderTests/chdb_run.py`, on a fresh data directory.
struct ChDB {
    struct Result: CustomStringConvertible {
        var ok: Bool
        var text: String
        var description: String { self.ok ? "ok: \(self.text)" : "error: \(self.text)" }
    }

    static var available: Bool {
        guard let python = ChildProcess.find("python3") else { return false }
        return (try? ChildProcess.runBlocking(python, ["-c", "import chdb"], timeout: .seconds(60)))?.status == 0
    }

    let directory: TemporaryDirectory
    let configFile: String?
    let environment: [String: String]

    init(configFile: String? = nil, environment: [String: String] = [:]) throws {
        try #require(
            Self.available,
            "chDB is not installed (python3 -m pip install chdb; scripts/setup installs it): CI requires it"
        )
        self.directory = try TemporaryDirectory()
        self.configFile = configFile
        self.environment = environment
    }

    func run(_ statements: [String]) async throws -> [Result] {
        let script = repositoryRoot().appendingPathComponent("Tests/LoaderTests/chdb_run.py").path
        let input = String(decoding: try JSONSerialization.data(withJSONObject: statements), as: UTF8.self)
        let completion = try await ChildProcess.run(
            "python3",
            [script, self.directory.path + "/data"] + (self.configFile.map { [$0] } ?? []),
            environment: self.environment,
            input: input,
            timeout: .seconds(120)
        )
        try #require(completion.status == 0, "chdb_run.py: \(completion.standardError)")
        return try completion.standardOutput.split(separator: "\n").map { line in
            let object = try #require(
                try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                "chdb_run.py printed \(line)"
            )
            let ok = object["ok"] as? Bool ?? false
            return Result(ok: ok, text: (ok ? object["result"] : object["error"]) as? String ?? "")
        }
    }

    func version() async throws -> ClickHouseVersion {
        let result = try await self.run(["SELECT version()"])
        return try #require(ClickHouseVersion(parsing: result.first?.text ?? ""), "\(result)")
    }
}
