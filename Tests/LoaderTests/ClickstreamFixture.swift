import ClickHouse
import Foundation
import TestSupport
import Testing

@testable import Loader

/// Generated clickstream data of known shape, made by ClickHouse itself (`numbers()`), so the
/// same statements fill 18.16 and chDB: objects with known click-through rates, bot views, a
/// funnel with a known drop-off, and a retention cohort eight days back.
enum ClickstreamFixture {
    /// The events route: its table has the clickstream columns (anonymous id, bot flag…).
    static var route: LoaderRoute { .events }

    /// An object, its page, its views and its click-through rate in per mille.
    struct Object {
        var page: String
        var name: String
        var views: Int
        var ctrPerMille: Int
    }

    static let objects = [
        Object(page: "/home", name: "hero-banner", views: 10_000, ctrPerMille: 200),
        Object(page: "/home", name: "promo", views: 10_000, ctrPerMille: 500),
        Object(page: "/blog", name: "newsletter", views: 10_000, ctrPerMille: 100),
        Object(page: "/blog", name: "footer-link", views: 10_000, ctrPerMille: 30),
        // Below the minimum of 100 views: never in the top list, whatever its CTR.
        Object(page: "/blog", name: "rare", views: 50, ctrPerMille: 1000),
    ]
    /// Bot views of hero-banner, which every figure leaves out.
    static let botViews = 500
    /// Funnel: visitors who see /pricing; 6 in 10 click signup; 3 in 10 purchase within the
    /// hour; 1 in 10 purchases two hours later (outside the window).
    static let funnelVisitors = 1000
    /// Retention: visitors on day −8; the first 40 come back on day −7; every fourth on day −1.
    static let cohort = 100

    static let insert =
        "INSERT INTO sluice.events (event_id, action, user_id, anonymous_id, `timestamp`, received_at, page, object, is_bot, session_id) "

    /// The events before the rollups exist (what a backfill must pick up): the retention cohort.
    static func earlyStatements(now: Int64) -> [String] {
        let at = "toDateTime(\(now), 'UTC')"
        let today = "toDate(\(at))"
        return [
            Self.insert
                + "SELECT concat('ret-d0-', toString(number)), 'page_view', '', concat('ret-', toString(number)), "
                + "toDateTime(\(today) - 8) + 43200 + number, \(at), '/welcome', '', 0, '' FROM numbers(\(Self.cohort))",
            Self.insert
                + "SELECT concat('ret-d1-', toString(number)), 'page_view', concat('user-', toString(number)), concat('ret-', toString(number)), "
                + "toDateTime(\(today) - 7) + number, \(at), '/welcome', '', 0, '' FROM numbers(40)",
            Self.insert
                + "SELECT concat('ret-d7-', toString(number)), 'page_view', '', concat('ret-', toString(number)), "
                + "toDateTime(\(today) - 1) + 43200 + number, \(at), '/welcome', '', 0, '' "
                + "FROM numbers(\(Self.cohort)) WHERE number % 4 = 0",
        ]
    }

    /// The events after the rollups exist: objects, bots and the funnel.
    static func lateStatements(now: Int64) -> [String] {
        let at = "toDateTime(\(now), 'UTC')"
        var statements: [String] = []
        for object in Self.objects {
            let visitor = "concat('anon-', toString(number % 3000))"
            let time = "\(at) - 7200 + intDiv(number, 10)"
            statements.append(
                Self.insert
                    + "SELECT concat('view-\(object.name)-', toString(number)), 'view', '', \(visitor), \(time), \(at), "
                    + "'\(object.page)', '\(object.name)', 0, '' FROM numbers(\(object.views))"
            )
            statements.append(
                Self.insert
                    + "SELECT concat('click-\(object.name)-', toString(number)), 'click', '', \(visitor), \(time) + 5, \(at), "
                    + "'\(object.page)', '\(object.name)', 0, '' FROM numbers(\(object.views)) "
                    + "WHERE cityHash64('\(object.name)', number) % 1000 < \(object.ctrPerMille)"
            )
        }
        statements.append(
            Self.insert
                + "SELECT concat('bot-', toString(number)), 'view', '', concat('bot-', toString(number)), \(at) - 3600, \(at), "
                + "'/home', 'hero-banner', 1, '' FROM numbers(\(Self.botViews))"
        )
        let visitor = "concat('fun-', toString(number))"
        let base = "\(at) - 10800 + number"
        statements += [
            Self.insert
                + "SELECT concat('fun-pv-', toString(number)), 'page_view', '', \(visitor), \(base), \(at), '/pricing', '', 0, '' "
                + "FROM numbers(\(Self.funnelVisitors))",
            Self.insert
                + "SELECT concat('fun-click-', toString(number)), 'click', '', \(visitor), \(base) + 60, \(at), '/pricing', 'signup', 0, '' "
                + "FROM numbers(\(Self.funnelVisitors)) WHERE number % 10 < 6",
            Self.insert
                + "SELECT concat('fun-buy-', toString(number)), 'purchase', '', \(visitor), \(base) + if(number % 10 < 3, 120, 7200), "
                + "\(at), '/checkout', '', 0, '' FROM numbers(\(Self.funnelVisitors)) WHERE number % 10 < 4",
        ]
        return statements
    }

    /// The named queries of docs/analytics.md (`-- query: name` first line of a sql block).
    static func documentedQueries() throws -> [(name: String, sql: String)] {
        let text = try String(
            contentsOf: repositoryRoot().appendingPathComponent("docs/analytics.md"),
            encoding: .utf8
        )
        var queries: [(String, String)] = []
        for block in text.components(separatedBy: "```sql\n").dropFirst() {
            let body = block.components(separatedBy: "```")[0]
            let lines = body.split(separator: "\n", omittingEmptySubsequences: false)
            guard let first = lines.first, first.hasPrefix("-- query: ") else { continue }
            queries.append((String(first.dropFirst(10)), lines.dropFirst().joined(separator: "\n")))
        }
        return queries
    }

    /// Tab-separated rows as arrays of fields.
    static func rows(_ text: String) -> [[String]] {
        text.split(separator: "\n").map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }
    }

    /// `YYYYMM` (UTC) of a unix time: the partition it falls in.
    static func month(of seconds: Int64) -> Int {
        let parts = Calendar(identifier: .gregorian).dateComponents(
            in: TimeZone(identifier: "UTC")!,
            from: Date(timeIntervalSince1970: Double(seconds))
        )
        return (parts.year ?? 0) * 100 + (parts.month ?? 0)
    }

    /// `YYYY-MM-DD` of today (UTC) minus `days`.
    static func day(minus days: Int) -> String {
        let date = Date().addingTimeInterval(-Double(days) * 86_400)
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd"
        return formatter.string(from: date)
    }

    /// Checks the answers of the documented queries (`results`: name → TSV) against the shape
    /// of the data.
    static func checkFigures(_ results: [String: String], server: String) throws {
        func rows(_ name: String) throws -> [[String]] { Self.rows(try #require(results[name], "\(server): \(name)")) }

        // Top objects: the four with ≥ 100 views, by CTR, each within ±1 % of its true rate.
        for name in ["top_objects_by_ctr", "top_objects_by_ctr_from_events"] {
            let top = try rows(name)
            #expect(top.map { $0[0] } == ["promo", "hero-banner", "newsletter", "footer-link"], "\(server) \(name)")
            for row in top {
                let object = try #require(Self.objects.first { $0.name == row[0] })
                #expect(Int(row[1]) == object.views, "\(server) \(name) \(row): bots left out")
                let ctr = try #require(Double(row[3]))
                #expect(abs(ctr - Double(object.ctrPerMille) / 1000) <= 0.01, "\(server) \(name) \(row)")
            }
        }
        #expect(try rows("top_objects_by_ctr") == rows("top_objects_by_ctr_from_events"), "\(server)")

        // Views and clicks over time: every view of an object, and the funnel's clicks.
        let perMinute = try rows("views_and_clicks_per_minute")
        #expect(perMinute.reduce(0) { $0 + (Int($1[1]) ?? 0) } == Self.objects.reduce(0) { $0 + $1.views }, "\(server)")
        let clicks = perMinute.reduce(0) { $0 + (Int($1[2]) ?? 0) }
        let topClicks = try rows("top_objects_by_ctr_from_events").reduce(0) { $0 + (Int($1[2]) ?? 0) }
        #expect(clicks == topClicks + 50 + Self.funnelVisitors * 6 / 10, "\(server)")

        let hero = try rows("ctr_over_time_for_object")
        #expect(hero.reduce(0) { $0 + (Int($1[1]) ?? 0) } == 10_000, "\(server)")

        #expect(try rows("funnel") == [["1000", "600", "300"]], "\(server)")
        #expect(try rows("retention") == [["100", "40", "25"]], "\(server)")

        let dau = try rows("dau_wau")
        let byDay = Dictionary(dau.map { ($0[0], $0) }, uniquingKeysWith: { first, _ in first })
        #expect(byDay[Self.day(minus: 8)].map { [$0[1], $0[2]] } == ["100", "100"], "\(server) \(dau)")
        #expect(byDay[Self.day(minus: 7)].map { [$0[1], $0[2]] } == ["40", "100"], "\(server) \(dau)")

        let pages = try rows("top_pages")
        #expect(pages.first?[0] == "/pricing" && pages.first?[1] == "1000", "\(server) \(pages)")
        let welcome = try #require(pages.first { $0[0] == "/welcome" }, "\(server) \(pages)")
        #expect(["25", "65"].contains(welcome[1]), "\(server) \(welcome)")

        let perAction = try rows("events_per_minute_by_action")
        let purchases = perAction.filter { $0[1] == "purchase" }.reduce(0) { $0 + (Int($1[2]) ?? 0) }
        #expect(purchases <= Self.funnelVisitors / 10, "\(server): only the late purchases are in the last hour")

        let freshness = try rows("freshness")
        #expect((Int(freshness.first?[0] ?? "") ?? .max) < 600, "\(server) \(freshness)")

        let bots = try rows("bot_share")
        #expect(bots.last == ["\(Self.botViews)", "1"], "\(server) \(bots)")
    }
}

/// The SQL of ops/grafana/sluice-clickstream.json with the plugin's macros expanded as the
/// grafana-clickhouse-datasource documents them (`$__timeFilter(c)` → `c >= toDateTime(from)
/// AND c <= toDateTime(to)`, `$__fromTime` → `toDateTime(from)`, `$__toTime`,
/// `$__interval_s`) and the dashboard's variables at their defaults (`$object`: hero-banner).
/// Any other macro fails the test: the rest (`$__timeInterval`…) expand to SQL 18.16 lacks.
enum ClickstreamDashboard {
    static func queries(from: Int64, to: Int64) throws -> [(title: String, sql: String)] {
        let url = repositoryRoot().appendingPathComponent("ops/grafana/sluice-clickstream.json")
        let board = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        var values: [String: String] = ["object": "hero-banner"]
        var queries: [(String, String)] = []
        let variables = (board["templating"] as? [String: Any])?["list"] as? [[String: Any]] ?? []
        for variable in variables {
            guard let name = variable["name"] as? String else { continue }
            if variable["type"] as? String == "textbox" { values[name] = variable["query"] as? String }
            if let query = (variable["query"] as? [String: Any])?["rawSql"] as? String {
                queries.append(("variable \(name)", query))
            }
        }
        for panel in board["panels"] as? [[String: Any]] ?? [] {
            for target in panel["targets"] as? [[String: Any]] ?? [] {
                let sql = try #require(target["rawSql"] as? String, "\(panel["title"] ?? "")")
                queries.append((panel["title"] as? String ?? "", sql))
            }
        }
        return try queries.map { title, sql in (title, try Self.expand(sql, from: from, to: to, values: values)) }
    }

    static func expand(_ sql: String, from: Int64, to: Int64, values: [String: String]) throws -> String {
        var text = sql
        let filter = try NSRegularExpression(pattern: #"\$__timeFilter\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)"#)
        text = filter.stringByReplacingMatches(
            in: text,
            range: NSRange(text.startIndex..., in: text),
            withTemplate: "$1 >= toDateTime(\(from)) AND $1 <= toDateTime(\(to))"
        )
        text = text.replacingOccurrences(of: "$__fromTime", with: "toDateTime(\(from))")
        text = text.replacingOccurrences(of: "$__toTime", with: "toDateTime(\(to))")
        text = text.replacingOccurrences(of: "$__interval_s", with: "60")
        for (name, value) in values {
            text = text.replacingOccurrences(of: "${\(name):singlequote}", with: "'\(value)'")
            text = text.replacingOccurrences(of: "${\(name)}", with: value)
        }
        #expect(!text.contains("$"), "a macro or variable without an 18.16-valid expansion is left in: \(text)")
        return text
    }

    /// Checks what the panels answered (TSV by title) against the fixture's shape.
    static func check(_ results: [(title: String, text: String)], server: String) {
        for (title, text) in results {
            #expect(!text.isEmpty, "\(server): panel '\(title)' answered no rows")
        }
        func rows(_ prefix: String) -> [[String]] {
            ClickstreamFixture.rows(results.first { $0.title.hasPrefix(prefix) }?.text ?? "")
        }
        #expect(rows("Funnel") == [["1000", "600", "300"]], "\(server)")
        #expect(
            Set(rows("Top objects").map { $0[0] }) == ["promo", "hero-banner", "newsletter", "footer-link"],
            "\(server) \(rows("Top objects"))"
        )
        #expect(rows("variable object").map { $0[0] }.contains("hero-banner"), "\(server)")
        #expect(rows("Top pages").first?[0] == "/pricing", "\(server)")
    }
}

/// The stats API's queries (``Clickstream``) as the gateway sends them, and what they must
/// answer on the fixture's data.
enum ClickstreamStatsQueries {
    static func queries(now: Int64) -> [(name: String, sql: String)] {
        let stats = Clickstream(table: "sluice.events")
        let (from, to) = (now - 86_400, now + 60)
        return [
            ("objects by ctr", stats.objectsQuery(from: from, to: to, minViews: 100, limit: 10, byCTR: true)),
            ("objects of /blog", stats.objectsQuery(from: from, to: to, minViews: 1, limit: 10, page: "/blog")),
            // A page name that would end the literal, were it not escaped: no rows, no error.
            (
                "hostile page",
                stats.objectsQuery(
                    from: from,
                    to: to,
                    minViews: 0,
                    limit: 10,
                    page: "x'); DROP TABLE sluice.events; --\\\u{1}"
                )
            ),
            ("pages", stats.pagesQuery(from: from, to: to, limit: 10)),
            ("views per minute", stats.timeseriesQuery(from: from, to: to, action: "view")),
            ("views per minute with bots", stats.timeseriesQuery(from: from, to: to, action: "view", bots: true)),
        ]
    }

    static func check(_ results: [String: String], server: String) {
        func rows(_ name: String) -> [[String]] { ClickstreamFixture.rows(results[name] ?? "") }
        #expect(
            rows("objects by ctr").map { $0[0] } == ["promo", "hero-banner", "newsletter", "footer-link"],
            "\(server)"
        )
        #expect(rows("objects of /blog").map { $0[0] } == ["newsletter", "footer-link", "rare"], "\(server)")
        #expect(results["hostile page"] == "", "\(server)")
        #expect(rows("pages").first.map { [$0[0], $0[1]] } == ["/pricing", "1000"], "\(server)")
        let views = rows("views per minute").reduce(0) { $0 + (Int($1[2]) ?? 0) }
        #expect(views == ClickstreamFixture.objects.reduce(0) { $0 + $1.views }, "\(server)")
        let withBots = rows("views per minute with bots").reduce(0) { $0 + (Int($1[2]) ?? 0) }
        #expect(withBots == views + ClickstreamFixture.botViews, "\(server)")
    }
}
