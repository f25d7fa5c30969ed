/// The clickstream analytics over an events table: the replay-safe rollups the loader creates
/// beside it and the queries the gateway's stats API runs on them (docs/analytics.md).
///
/// Every figure of a rollup is an `uniqExact` state — of `event_id` for views, clicks and
/// events, of the visitor for visitors — never a row count. A materialized view sees inserted
/// blocks, not the deduplicated table, so a replay of a Kafka range inserts the same events a
/// second time; the states absorb them (a set does not grow by an element it holds), and every
/// figure stays what it was. The same holds for a backfill that overlaps the view's own rows.
///
/// The SQL runs on ClickHouse 18.16 (the test server) and on current releases: no codecs,
/// `LowCardinality`, `toStartOfInterval` or window functions. A view runs inside the insert
/// into the events table, so a view that fails fails the loader's insert (which the loader
/// retries): the views cast what they read (`toUInt8(is_bot)`, `toDateTime(timestamp)`), as
/// 18.16 converts no types between a view's SELECT and its target table.
package struct Clickstream: Sendable, Equatable {
    /// `database.table` of the events.
    package var table: String

    package init(table: String) { self.table = table }

    /// The action of a view of a page object (the tracker sends it once per object per page view).
    package static let viewAction = "view"
    /// The action of a click on a page object.
    package static let clickAction = "click"
    /// The action of a page view.
    package static let pageViewAction = "page_view"

    /// The events-table columns the rollups read; a table without one of them gets no rollups.
    package static let sourceColumns = [
        "event_id", "action", "timestamp", "page", "object", "user_id", "anonymous_id", "is_bot",
    ]

    /// Who a visitor is: the browser's anonymous id when the event has one, else the user id. A
    /// browser whose visitor logs in midway thus counts once.
    package static let visitor = "if(`anonymous_id` != '', `anonymous_id`, `user_id`)"

    /// Views, clicks and visitors per minute, page, object and bot flag (actions `view` and `click`).
    package var objectsTable: String { self.table + "_objects_minute" }
    /// Events and visitors per minute, page, action and bot flag (every action).
    package var pagesTable: String { self.table + "_pages_minute" }

    /// One rollup: its table, the materialized view that feeds it, and the SELECT both the view
    /// and a backfill run.
    package struct Rollup: Sendable, Equatable {
        /// `database.table` of the AggregatingMergeTree.
        package var table: String
        /// `database.view` of the materialized view that writes into it.
        package var view: String
        package var createTable: String
        package var createView: String
        /// The view's SELECT up to the end of its WHERE condition…
        var selectHead: String
        /// … and from its GROUP BY on: a backfill adds a condition between the two.
        var selectTail: String

        /// The view's SELECT, with `condition` (`AND …`) added to its WHERE.
        package func select(and condition: String = "") -> String {
            self.selectHead + condition + "\n" + self.selectTail
        }

        /// `INSERT … SELECT` of the source rows in one month (`YYYYMM`) of the events table:
        /// fills the rollup with what the events table held before the view existed. Replay-safe,
        /// so rows the view wrote meanwhile are not counted twice.
        package func backfill(month: Int) -> String {
            "INSERT INTO \(self.table) " + self.select(and: " AND toYYYYMM(`timestamp`) = \(month)")
        }
    }

    /// The two rollups, in the order to create them. `ttlDays`: the events route's retention,
    /// applied to the rollups too where the server has table TTL (`ttl`: whether it does).
    package func rollups(ttlDays: Int64? = nil, ttl: Bool = false) -> [Rollup] {
        let ttlClause = ttlDays.flatMap { days in ttl ? "\nTTL `minute` + INTERVAL \(days) DAY" : nil } ?? ""
        let minute = "toStartOfMinute(toDateTime(`timestamp`))"
        let objectsHead = """
            SELECT \(minute) AS `minute`, `page`, `object`, toUInt8(`is_bot`) AS `is_bot`,
                uniqExactIfState(`event_id`, `action` = '\(Self.viewAction)') AS `views`,
                uniqExactIfState(`event_id`, `action` = '\(Self.clickAction)') AS `clicks`,
                uniqExactState(\(Self.visitor)) AS `visitors`
            FROM \(self.table)
            WHERE `action` IN ('\(Self.viewAction)', '\(Self.clickAction)')
            """
        let pagesHead = """
            SELECT \(minute) AS `minute`, `page`, `action`, toUInt8(`is_bot`) AS `is_bot`,
                uniqExactState(`event_id`) AS `events`,
                uniqExactState(\(Self.visitor)) AS `visitors`
            FROM \(self.table)
            WHERE 1
            """
        let objects = Rollup(
            table: self.objectsTable,
            view: self.objectsTable + "_mv",
            createTable: """
                CREATE TABLE IF NOT EXISTS \(self.objectsTable)
                (
                    `minute` DateTime('UTC'),
                    `page` String,
                    `object` String,
                    `is_bot` UInt8,
                    `views` AggregateFunction(uniqExactIf, String, UInt8),
                    `clicks` AggregateFunction(uniqExactIf, String, UInt8),
                    `visitors` AggregateFunction(uniqExact, String)
                )
                ENGINE = AggregatingMergeTree()
                PARTITION BY toYYYYMM(`minute`)
                ORDER BY (toDate(`minute`), `object`, `page`, `minute`, `is_bot`)
                """ + ttlClause,
            createView: "",
            selectHead: objectsHead,
            selectTail: "GROUP BY `minute`, `page`, `object`, `is_bot`"
        )
        let pages = Rollup(
            table: self.pagesTable,
            view: self.pagesTable + "_mv",
            createTable: """
                CREATE TABLE IF NOT EXISTS \(self.pagesTable)
                (
                    `minute` DateTime('UTC'),
                    `page` String,
                    `action` String,
                    `is_bot` UInt8,
                    `events` AggregateFunction(uniqExact, String),
                    `visitors` AggregateFunction(uniqExact, String)
                )
                ENGINE = AggregatingMergeTree()
                PARTITION BY toYYYYMM(`minute`)
                ORDER BY (toDate(`minute`), `action`, `page`, `minute`, `is_bot`)
                """ + ttlClause,
            createView: "",
            selectHead: pagesHead,
            selectTail: "GROUP BY `minute`, `page`, `action`, `is_bot`"
        )
        return [objects, pages].map { rollup in
            var rollup = rollup
            rollup.createView =
                "CREATE MATERIALIZED VIEW IF NOT EXISTS \(rollup.view) TO \(rollup.table) AS " + rollup.select()
            return rollup
        }
    }

    // MARK: Queries of the stats API

    /// `minute >= from AND minute < to` (unix seconds) and, unless `bots`, no bot traffic.
    private func range(from: Int64, to: Int64, bots: Bool) -> String {
        "`minute` >= toDateTime(\(from), 'UTC') AND `minute` < toDateTime(\(to), 'UTC')"
            + (bots ? "" : " AND `is_bot` = 0")
    }

    /// Views, clicks, CTR and visitors per object over `[from, to)`, objects with at least
    /// `minViews` views, the most viewed (or, `byCTR`, the best clicked) first. `page`: only
    /// that page's objects. Rows: `object`, `views`, `clicks`, `ctr`, `visitors`.
    package func objectsQuery(
        from: Int64,
        to: Int64,
        minViews: Int,
        limit: Int,
        page: String? = nil,
        byCTR: Bool = false,
        bots: Bool = false
    ) -> String {
        let pageFilter = page.map { " AND `page` = \(Self.quoted($0))" } ?? ""
        return """
            SELECT `object`, uniqExactIfMerge(`views`) AS `views`, uniqExactIfMerge(`clicks`) AS `clicks`,
                if(`views` = 0, 0, `clicks` / `views`) AS `ctr`, uniqExactMerge(`visitors`) AS `visitors`
            FROM \(self.objectsTable)
            WHERE \(self.range(from: from, to: to, bots: bots))\(pageFilter)
            GROUP BY `object`
            HAVING `views` >= \(minViews)
            ORDER BY \(byCTR ? "`ctr` DESC, `views` DESC" : "`views` DESC, `ctr` DESC"), `object`
            LIMIT \(limit)
            """
    }

    /// Page views, events and visitors per page over `[from, to)`, the most viewed first.
    /// Rows: `page`, `page_views`, `all_events`, `visitors` (an alias may not be the name of
    /// the state column another aggregate of the query reads).
    package func pagesQuery(from: Int64, to: Int64, limit: Int, bots: Bool = false) -> String {
        """
        SELECT `page`, uniqExactMergeIf(`events`, `action` = '\(Self.pageViewAction)') AS `page_views`,
            uniqExactMerge(`events`) AS `all_events`, uniqExactMerge(`visitors`) AS `visitors`
        FROM \(self.pagesTable)
        WHERE \(self.range(from: from, to: to, bots: bots))
        GROUP BY `page`
        ORDER BY `page_views` DESC, `all_events` DESC, `page`
        LIMIT \(limit)
        """
    }

    /// Events per minute and action over `[from, to)`, oldest first. `action`: only that one.
    /// Rows: `minute` (unix seconds), `action`, `events`.
    package func timeseriesQuery(from: Int64, to: Int64, action: String? = nil, bots: Bool = false) -> String {
        let actionFilter = action.map { " AND `action` = \(Self.quoted($0))" } ?? ""
        return """
            SELECT toUInt32(`minute`) AS `minute`, `action`, uniqExactMerge(`events`) AS `events`
            FROM \(self.pagesTable)
            WHERE \(self.range(from: from, to: to, bots: bots))\(actionFilter)
            GROUP BY `minute`, `action`
            ORDER BY `minute`, `action`
            """
    }

    /// `text` as a ClickHouse string literal: backslash and quote escaped, control bytes as
    /// `\xNN`, so no input can end the literal.
    package static func quoted(_ text: String) -> String {
        var out = "'"
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "'": out += "\\'"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                let hex = String(scalar.value, radix: 16)
                out += "\\x" + (hex.count == 1 ? "0" + hex : hex)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "'"
    }
}
