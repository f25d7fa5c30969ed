import ArgumentParser
import ClickHouse
import Foundation
import Loader
import Logging

/// `sluice-bench analytics`: the clickstream figures of docs/performance.md. Generates events
/// in ClickHouse itself (`numbers()`), into the events table with its sort key, its rollups
/// (through their materialized views, as the loader's inserts would) and a copy keyed the old
/// way (`action, event_id`); then times the analyst queries on the rollup against the same
/// figures from the events table (and the per-object query on both keys), checks that both
/// answer the same, and reads bytes per row from `system.parts`.
struct AnalyticsBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "analytics",
        abstract: "Time rollup queries against the events table, and measure bytes per row on disk."
    )

    @Option(help: "ClickHouse HTTP URL of a server that may be written to (database sluice_bench_analytics).")
    var clickhouseUrl: String

    @Option(help: "Events to generate.")
    var events: Int = 10_000_000

    @Option(help: "Days the events are spread over, ending now (default: 2.5 M events a day, the seed's average).")
    var days: Int = 4

    @Option(help: "Runs of each query; the median is printed.")
    var runs: Int = 5

    func validate() throws {
        guard self.events >= 1000, self.days >= 1, self.runs >= 1 else {
            throw ValidationError("--events must be at least 1000, --days and --runs at least 1")
        }
    }

    static let database = "sluice_bench_analytics"

    func run() async throws {
        let client = ClickHouseClient(
            ClickHouseConfiguration(url: self.clickhouseUrl, timeout: .seconds(3600)),
            logger: Logger(label: "sluice.bench")
        )
        try await withShutdown(client) { try await self.measure(client) }
    }

    /// The events route into `table`, keyed by `orderBy`.
    static func route(table: String, orderBy: [String]) -> LoaderRoute {
        LoaderRoute(topic: "events", table: table, columns: LoaderRoute.eventColumns, orderBy: orderBy)
    }

    private func measure(_ client: ClickHouseClient) async throws {
        let version = try await client.serverVersion()
        let db = Self.database
        let route = Self.route(table: "\(db).events", orderBy: LoaderRoute.eventsOrderBy)
        let oldKey = Self.route(table: "\(db).events_old_key", orderBy: ["action", "event_id"])
        let clickstream = Clickstream(table: route.table)
        print("ClickHouse \(version); \(self.events) events over \(self.days) days")
        try await client.execute("DROP DATABASE IF EXISTS \(db)")
        try await client.execute("CREATE DATABASE \(db)")
        try await client.execute(route.createTable(on: version))
        try await client.execute(oldKey.createTable(on: version))
        for rollup in clickstream.rollups() {
            try await client.execute(rollup.createTable)
            try await client.execute(rollup.createView)
        }

        // 200 objects on 40 pages; per 100 events: 50 views, 5 clicks (object CTR 2–18 %),
        // 35 page views, 10 other; 200,000 visitors; 2 % bots; time order, as loaded.
        let now = Int64(Date().timeIntervalSince1970) / 60 * 60
        let start = now - Int64(self.days) * 86_400
        let span = Int64(self.days) * 86_400
        let chunk = 1_000_000
        let clock = ContinuousClock()
        let began = clock.now
        var offset = 0
        while offset < self.events {
            let count = min(chunk, self.events - offset)
            let n = "(number + \(offset))"
            try await client.execute(
                """
                INSERT INTO \(route.table) (event_id, action, user_id, anonymous_id, `timestamp`, received_at, page, object, referrer, session_id, user_agent, is_bot)
                SELECT toString(generateUUIDv4()), action, if(visitor % 3 = 0, concat('user-', toString(visitor)), ''),
                       concat('anon-', toString(visitor)), ts, ts, concat('https://shop.example/p/', toString(object % 40)),
                       if(action IN ('view', 'click'), concat('object-', toString(object)), ''), '', concat('s-', toString(visitor), '-', toString(intDiv(toUInt32(ts), 1800))),
                       'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36', toUInt8(visitor % 50 = 0)
                FROM (
                    SELECT \(n) AS n, cityHash64(\(n), 1) % 200 AS object, cityHash64(\(n), 2) % 200000 AS visitor,
                           toDateTime(\(start) + intDiv(\(n) * \(span), \(self.events))) AS ts,
                           cityHash64(\(n), 3) % 1000 AS roll,
                           multiIf(roll < 500, 'view', roll < 500 + 10 + intDiv(object % 9 * 10, 1), 'click', roll < 900, 'page_view', 'purchase') AS action
                    FROM numbers(\(count))
                )
                """
            )
            offset += count
        }
        let loaded = clock.now - began
        print("generated and inserted (with the rollups' views) in \(Self.seconds(loaded)) s")
        try await client.execute("INSERT INTO \(oldKey.table) SELECT * FROM \(route.table)")
        for table in [route.table, oldKey.table, clickstream.objectsTable, clickstream.pagesTable] {
            try await client.execute("OPTIMIZE TABLE \(table) FINAL")
        }

        let object = "object-42"
        let day = "toDateTime(\(now - 86_400)) AND toDateTime(\(now))"
        let comparisons: [(String, String, String)] = [
            (
                "top 20 objects by CTR, \(self.days) days",
                """
                SELECT object, uniqExactIfMerge(views) AS v, uniqExactIfMerge(clicks) AS c, round(c / v, 4) AS ctr
                FROM \(clickstream.objectsTable) WHERE is_bot = 0
                GROUP BY object HAVING v >= 100 ORDER BY ctr DESC, object LIMIT 20
                """,
                """
                SELECT object, uniqExactIf(event_id, action = 'view') AS v, uniqExactIf(event_id, action = 'click') AS c, round(c / v, 4) AS ctr
                FROM \(route.table) WHERE action IN ('view', 'click') AND is_bot = 0
                GROUP BY object HAVING v >= 100 ORDER BY ctr DESC, object LIMIT 20
                """
            ),
            (
                "top 20 objects by CTR, last day",
                """
                SELECT object, uniqExactIfMerge(views) AS v, uniqExactIfMerge(clicks) AS c, round(c / v, 4) AS ctr
                FROM \(clickstream.objectsTable) WHERE minute BETWEEN \(day) AND is_bot = 0
                GROUP BY object HAVING v >= 100 ORDER BY ctr DESC, object LIMIT 20
                """,
                """
                SELECT object, uniqExactIf(event_id, action = 'view') AS v, uniqExactIf(event_id, action = 'click') AS c, round(c / v, 4) AS ctr
                FROM \(route.table) WHERE action IN ('view', 'click') AND toStartOfMinute(`timestamp`) BETWEEN \(day) AND is_bot = 0
                GROUP BY object HAVING v >= 100 ORDER BY ctr DESC, object LIMIT 20
                """
            ),
            (
                "views and clicks per hour of \(object), \(self.days) days",
                """
                SELECT toStartOfHour(minute) AS h, uniqExactIfMerge(views) AS v, uniqExactIfMerge(clicks) AS c
                FROM \(clickstream.objectsTable) WHERE object = '\(object)' AND is_bot = 0 GROUP BY h ORDER BY h
                """,
                """
                SELECT toStartOfHour(`timestamp`) AS h, uniqExactIf(event_id, action = 'view') AS v, uniqExactIf(event_id, action = 'click') AS c
                FROM \(route.table) WHERE action IN ('view', 'click') AND object = '\(object)' AND is_bot = 0 GROUP BY h ORDER BY h
                """
            ),
            (
                "events per minute by action, last day",
                """
                SELECT minute, action, uniqExactMerge(events) AS e FROM \(clickstream.pagesTable)
                WHERE minute BETWEEN \(day) AND is_bot = 0 GROUP BY minute, action ORDER BY minute, action
                """,
                """
                SELECT toStartOfMinute(`timestamp`) AS minute, action, uniqExact(event_id) AS e FROM \(route.table)
                WHERE toStartOfMinute(`timestamp`) BETWEEN \(day) AND is_bot = 0 GROUP BY minute, action ORDER BY minute, action
                """
            ),
        ]
        print("\nquery                                              rollup ms   events ms   ratio   same figures")
        for (name, rollupSQL, baseSQL) in comparisons {
            let (rollupTime, rollupAnswer) = try await self.time(client, rollupSQL)
            let (baseTime, baseAnswer) = try await self.time(client, baseSQL)
            print(Self.row(name, rollupTime, baseTime, same: rollupAnswer == baseAnswer))
        }

        // The sort key: one object over one day and over the whole range, new key against old.
        let perObject: [(String, String)] = [
            ("CTR of \(object), last day", "toStartOfMinute(`timestamp`) BETWEEN \(day)"),
            ("CTR of \(object), \(self.days) days", "1"),
        ]
        print("\nquery (events table)                               new key ms  old key ms  ratio   same figures")
        for (name, range) in perObject {
            func sql(_ table: String) -> String {
                """
                SELECT uniqExactIf(event_id, action = 'view') AS v, uniqExactIf(event_id, action = 'click') AS c
                FROM \(table) WHERE action IN ('view', 'click') AND object = '\(object)' AND \(range) AND is_bot = 0
                """
            }
            let (newTime, newAnswer) = try await self.time(client, sql(route.table))
            let (oldTime, oldAnswer) = try await self.time(client, sql(oldKey.table))
            print(Self.row(name, newTime, oldTime, same: newAnswer == oldAnswer))
        }

        let parts = try await client.query(
            """
            SELECT table, sum(rows), sum(bytes_on_disk), sum(data_uncompressed_bytes) FROM system.parts
            WHERE database = '\(db)' AND active GROUP BY table ORDER BY table FORMAT TabSeparated
            """
        )
        print("\ntable                        rows          bytes on disk   bytes/row   bytes/event")
        for line in parts.split(separator: "\n") {
            let fields = line.split(separator: "\t").map(String.init)
            guard fields.count == 4, let rows = Double(fields[1]), let bytes = Double(fields[2]), rows > 0 else {
                continue
            }
            print(
                fields[0].padding(toLength: 28, withPad: " ", startingAt: 0)
                    + String(
                        format: " %-13.0f %-15.0f %-11.1f %.1f",
                        rows,
                        bytes,
                        bytes / rows,
                        bytes / Double(self.events)
                    )
            )
        }
    }

    /// The median wall time of `runs` runs (after one warm-up) and the answer.
    private func time(_ client: ClickHouseClient, _ sql: String) async throws -> (Duration, String) {
        let clock = ContinuousClock()
        let answer = try await client.query(sql + " FORMAT TabSeparated")
        var times: [Duration] = []
        for _ in 0..<self.runs {
            let start = clock.now
            _ = try await client.query(sql + " FORMAT TabSeparated")
            times.append(clock.now - start)
        }
        return (times.sorted()[times.count / 2], answer)
    }

    static func milliseconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
    }

    static func seconds(_ duration: Duration) -> String { String(format: "%.1f", Self.milliseconds(duration) / 1000) }

    static func row(_ name: String, _ first: Duration, _ second: Duration, same: Bool) -> String {
        let a = Self.milliseconds(first)
        let b = Self.milliseconds(second)
        return name.padding(toLength: 50, withPad: " ", startingAt: 0)
            + String(format: " %-11.1f %-11.1f %-7.1f ", a, b, b / max(a, 0.001)) + (same ? "yes" : "NO")
    }
}
