import ClickHouse
import Foundation
import LocalClickHouse
import Logging
import TestSupport
import Testing

@testable import Loader

/// The clickstream schema, the replay-safe rollups and every query of docs/analytics.md, on
/// ClickHouse 18.16 (the local server) and on current ClickHouse (chDB), against
/// ``ClickstreamFixture``'s data: the figures match the data's shape, and inserting every row
/// a second time (a replay) changes none of them — on the rollups as on the events table.
@Suite(.serialized, .timeLimit(.minutes(5))) struct ClickstreamQueryTests {
    static let v18 = ClickHouseVersion(major: 18, minor: 16, patch: 1)
    static let v26 = ClickHouseVersion(major: 26, minor: 9, patch: 0)
    /// Queries whose answer moves with the clock (their window ends at `now()`, and the last
    /// hour's edge cuts through the data): compared by shape, not before and after the replay.
    /// The stats API's queries, anchored to the fixture's time, are compared exactly instead.
    static let movingWindows: Set<String> = ["freshness", "duplicate_ratio", "events_per_minute_by_action"]

    @Test func theEventsTableIsKeyedByActionDayObjectAndEventID() throws {
        #expect(LoaderRoute.events.orderBy == ["action", "toDate(timestamp)", "object", "event_id"])
        #expect(
            LoaderRoute.events.createTable(on: Self.v18)
                .contains("ORDER BY (`action`, toDate(`timestamp`), `object`, `event_id`)")
        )
        try LoaderRoute.events.validate()
        var route = LoaderRoute.events
        route.orderBy = ["toDate(page)", "event_id"]
        let error = #expect(throws: LoaderError.self) { try route.validate() }
        #expect(error?.message == "order_by names 'toDate(page)', and 'page' is not a timestamp column of the route")
        route.orderBy = ["toDate(nope)", "event_id"]
        #expect(throws: LoaderError.self) { try route.validate() }
    }

    @Test func rollupsAreMadeOnlyForTablesWithTheClickstreamColumns() {
        let all = Clickstream.sourceColumns.map { "{\"name\":\"\($0)\",\"type\":\"String\"}" }
        let rollups = ClickstreamRollups.rollups(
            for: .events,
            tableColumns: all.joined(separator: "\n"),
            on: Self.v18
        )
        #expect(rollups?.map(\.table) == ["sluice.events_objects_minute", "sluice.events_pages_minute"])
        #expect(rollups?.allSatisfy { !$0.createTable.contains("TTL") } == true)
        #expect(
            ClickstreamRollups.rollups(for: .events, tableColumns: all.dropLast().joined(separator: "\n"), on: Self.v18)
                == nil
        )
        var route = LoaderRoute.events
        route.ttl = .seconds(30 * 86_400)
        let kept = ClickstreamRollups.rollups(for: route, tableColumns: all.joined(separator: "\n"), on: Self.v26)
        #expect(kept?.first?.createTable.hasSuffix("TTL `minute` + INTERVAL 30 DAY") == true)
    }

    @Test func everyDocumentedQueryIsNamedAndUnique() throws {
        let names = try ClickstreamFixture.documentedQueries().map(\.name)
        #expect(Set(names).count == names.count)
        for required in [
            "top_objects_by_ctr", "views_and_clicks_per_minute", "ctr_over_time_for_object", "funnel", "retention",
            "dau_wau", "top_pages", "freshness", "duplicate_ratio",
        ] {
            #expect(names.contains(required), "docs/analytics.md lacks \(required)")
        }
    }

    /// On 18.16 through the loader's own start-up code: rollups made after the first events
    /// are backfilled, and a second start neither fails nor counts anything twice.
    @Test func theDocumentedFiguresHoldAndSurviveAReplayOn1816() async throws {
        let server = try await ClickHouseServer.start()
        defer { server.stop() }
        let client = ClickHouseClient(ClickHouseConfiguration(url: server.httpURL), logger: quietLogger)
        defer { Task { try? await client.shutdown() } }
        let route = ClickstreamFixture.route
        let now = Int64(Date().timeIntervalSince1970)
        let version = try await client.serverVersion()
        try await client.execute("CREATE DATABASE IF NOT EXISTS sluice")
        try await client.execute(route.createTable(on: version))
        for statement in ClickstreamFixture.earlyStatements(now: now) { try await client.execute(statement) }
        let made = try await ClickstreamRollups.prepare([route], on: version, clickHouse: client, logger: quietLogger)
        #expect(made == ["sluice.events_objects_minute", "sluice.events_pages_minute"])
        for statement in ClickstreamFixture.lateStatements(now: now) { try await client.execute(statement) }

        let queries = try ClickstreamFixture.documentedQueries()
        func answers() async throws -> [String: String] {
            var results: [String: String] = [:]
            for (name, sql) in queries {
                do { results[name] = try await client.query(sql) } catch {
                    Issue.record("18.16: \(name): \(error)")
                }
            }
            return results
        }
        let first = try await answers()
        try ClickstreamFixture.checkFigures(first, server: "18.16")
        // Every panel of the Grafana dashboard, over the last ten days.
        var panels: [(title: String, text: String)] = []
        for (title, sql) in try ClickstreamDashboard.queries(from: now - 10 * 86_400, to: now + 60) {
            do { panels.append((title, try await client.query(sql))) } catch {
                Issue.record("18.16: dashboard panel '\(title)': \(error)")
            }
        }
        ClickstreamDashboard.check(panels, server: "18.16")
        func statsAnswers() async -> [String: String] {
            var stats: [String: String] = [:]
            for (name, sql) in ClickstreamStatsQueries.queries(now: now) {
                do { stats[name] = try await client.query(sql) } catch {
                    Issue.record("18.16: stats \(name): \(error)")
                }
            }
            return stats
        }
        let stats = await statsAnswers()
        ClickstreamStatsQueries.check(stats, server: "18.16")
        #expect(ClickstreamFixture.rows(first["duplicate_ratio"] ?? "").first?[2] == "0")

        // The replay: every row again, and the loader started again (its backfill is skipped).
        for statement in ClickstreamFixture.earlyStatements(now: now) + ClickstreamFixture.lateStatements(now: now) {
            try await client.execute(statement)
        }
        try await ClickstreamRollups.prepare([route], on: version, clickHouse: client, logger: quietLogger)
        let second = try await answers()
        try ClickstreamFixture.checkFigures(second, server: "18.16 after the replay")
        for (name, _) in queries where !Self.movingWindows.contains(name) {
            #expect(first[name] == second[name], "18.16: \(name) changed by the replay")
        }
        #expect(await statsAnswers() == stats, "18.16: the stats API's figures changed by the replay")
        let ratio = Double(ClickstreamFixture.rows(second["duplicate_ratio"] ?? "").first?[2] ?? "") ?? -1
        #expect(ratio > 0 && ratio <= 0.5, "\(ratio)")
        try await client.execute("OPTIMIZE TABLE sluice.events FINAL")
        let merged = try await client.query(try #require(queries.first { $0.name == "duplicate_ratio" }).sql)
        #expect(ClickstreamFixture.rows(merged).first?[2] == "0")
    }

    /// On 18.16, which has no table TTL, the loader's hourly sweep drops the rollups' months
    /// past the route's ttl with the events table's.
    @Test func theRollupsMonthsPastTheTTLAreDroppedOn1816() async throws {
        let server = try await ClickHouseServer.start()
        defer { server.stop() }
        let client = ClickHouseClient(ClickHouseConfiguration(url: server.httpURL), logger: quietLogger)
        defer { Task { try? await client.shutdown() } }
        var route = LoaderRoute.events
        route.ttl = .seconds(400 * 86_400)
        let version = try await client.serverVersion()
        try await client.execute("CREATE DATABASE IF NOT EXISTS sluice")
        try await client.execute(route.createTable(on: version))
        try await ClickstreamRollups.prepare([route], on: version, clickHouse: client, logger: quietLogger)
        try await client.execute(
            "INSERT INTO sluice.events (event_id, action, anonymous_id, `timestamp`, received_at, page, object) VALUES "
                + "('old', 'view', 'a', '2020-01-05 10:00:00', now(), '/', 'o'), ('new', 'view', 'a', now(), now(), '/', 'o')"
        )
        let dropped = try await ClickstreamRollups.sweep(route, clickHouse: client)
        #expect(dropped.map(\.table) == ["sluice.events_objects_minute", "sluice.events_pages_minute"])
        #expect(dropped.allSatisfy { $0.partition == "202001" })
        let left = try await client.query(
            "SELECT uniqExactIfMerge(views) FROM sluice.events_objects_minute"
        )
        #expect(left == "1\n")
        var kept = route
        kept.ttl = nil
        #expect(try await ClickstreamRollups.sweep(kept, clickHouse: client).isEmpty)
    }

    /// The same on current ClickHouse: the DDL as generated for it (DateTime64 timestamps),
    /// the rollups, the backfill statement and every query.
    @Test(.enabled(if: ChDB.available || ProcessInfo.processInfo.environment["CI"] != nil))
    func theDocumentedFiguresHoldAndSurviveAReplayOnCurrentClickHouse() async throws {
        let chdb = try ChDB()
        let version = try await chdb.version()
        // With a ttl: the events table and the rollups get their TTL clauses on this server.
        var route = ClickstreamFixture.route
        route.ttl = .seconds(400 * 86_400)
        let now = Int64(Date().timeIntervalSince1970)
        let rollups = try #require(
            ClickstreamRollups.rollups(
                for: route,
                tableColumns: route.columns.map { "{\"name\":\"\($0.name)\",\"type\":\"\"}" }.joined(separator: "\n"),
                on: version
            )
        )
        // The months the early rows fall in (days −8, −7 and −1 may span two).
        let months = Set([8, 7, 1].map { ClickstreamFixture.month(of: now - Int64($0) * 86_400) }).sorted()
        let setup =
            ["CREATE DATABASE IF NOT EXISTS sluice", route.createTable(on: version)]
            + ClickstreamFixture.earlyStatements(now: now)
            + rollups.flatMap { ["EXISTS TABLE \($0.table)", $0.createTable, $0.createView] }
            + rollups.flatMap { rollup in months.map { rollup.backfill(month: $0) } }
            + ClickstreamFixture.lateStatements(now: now)
        let done = try await chdb.run(setup)
        let failedSetup = zip(setup, done).filter { !$0.1.ok }
        try #require(failedSetup.isEmpty, "\(failedSetup)")
        let engines = try await chdb.run([
            "SELECT engine_full FROM system.tables WHERE database = 'sluice' AND name LIKE 'events%minute'"
        ])
        #expect(engines.first?.text.components(separatedBy: "TTL minute + toIntervalDay(400)").count == 3, "\(engines)")

        let queries = try ClickstreamFixture.documentedQueries()
        func answers() async throws -> [String: String] {
            let results = try await chdb.run(queries.map(\.sql))
            for (query, result) in zip(queries, results) where !result.ok {
                Issue.record("chDB \(version): \(query.name): \(result.text)")
            }
            return Dictionary(uniqueKeysWithValues: zip(queries.map(\.name), results.map(\.text)))
        }
        let first = try await answers()
        try ClickstreamFixture.checkFigures(first, server: "chDB \(version)")
        let dashboard = try ClickstreamDashboard.queries(from: now - 10 * 86_400, to: now + 60)
        let panels = try await chdb.run(dashboard.map(\.sql))
        for (query, result) in zip(dashboard, panels) where !result.ok {
            Issue.record("chDB: dashboard panel '\(query.title)': \(result.text)")
        }
        ClickstreamDashboard.check(zip(dashboard, panels).map { ($0.title, $1.text) }, server: "chDB \(version)")
        let statsQueries = ClickstreamStatsQueries.queries(now: now)
        let stats = try await chdb.run(statsQueries.map(\.sql))
        for (query, result) in zip(statsQueries, stats) where !result.ok {
            Issue.record("chDB: stats \(query.name): \(result.text)")
        }
        ClickstreamStatsQueries.check(
            Dictionary(uniqueKeysWithValues: zip(statsQueries.map(\.name), stats.map(\.text))),
            server: "chDB \(version)"
        )

        // Block deduplication would drop the identical inserts before they reach the views;
        // a replay of the loader's own (other blocks) is not dropped, so neither is this one.
        let replay =
            ["SET insert_deduplicate = 0"] + ClickstreamFixture.earlyStatements(now: now)
            + ClickstreamFixture.lateStatements(now: now)
        let replayed = try await chdb.run(replay)
        let failedReplay = replayed.filter { !$0.ok }
        try #require(failedReplay.isEmpty, "\(failedReplay)")
        let second = try await answers()
        try ClickstreamFixture.checkFigures(second, server: "chDB \(version) after the replay")
        for (name, _) in queries where !Self.movingWindows.contains(name) {
            #expect(first[name] == second[name], "chDB: \(name) changed by the replay")
        }
        let statsAgain = try await chdb.run(statsQueries.map(\.sql))
        #expect(statsAgain.map(\.text) == stats.map(\.text), "chDB: the stats API's figures changed by the replay")
        let ratio = Double(ClickstreamFixture.rows(second["duplicate_ratio"] ?? "").first?[2] ?? "") ?? -1
        #expect(ratio > 0 && ratio <= 0.5, "\(ratio): the replay's rows are in the table")
    }
}
