import ClickHouse
import EventModel
import Foundation
import Logging

/// Creates the replay-safe rollups (``Clickstream``) beside every route table that has the
/// clickstream columns, and fills a rollup made new from what the table already holds.
///
/// The rollups are written by materialized views on the loader's own inserts, so they cost the
/// loader nothing but the server's time for the views. A replay of a Kafka range, a retried
/// insert and the backfill may all insert an event that is counted already: the rollups keep
/// `uniqExact` states of event ids, which such a copy does not change.
package enum ClickstreamRollups {
    /// The rollups of `route` if its table (`tableColumns`: the answer to
    /// ``LoaderRoute/tableColumnsQuery``) has every column they read; nil otherwise.
    static func rollups(
        for route: LoaderRoute,
        tableColumns: String,
        on version: ClickHouseVersion
    )
        -> [Clickstream.Rollup]?
    {
        var names = Set<String>()
        for line in tableColumns.split(separator: "\n") where !line.isEmpty {
            guard let column = try? JSONParser.parse(Array(line.utf8)), case .string(let name)? = column["name"]
            else { return nil }
            names.insert(name)
        }
        guard Clickstream.sourceColumns.allSatisfy(names.contains), route.timeColumn == "timestamp" else { return nil }
        let days = route.ttl.map { max(1, $0.components.seconds / 86_400) }
        return Clickstream(table: route.table).rollups(ttlDays: days, ttl: version >= LoaderRoute.ttlSince)
    }

    /// Creates the missing rollups of every route that can have them; a rollup table made now is
    /// backfilled month by month from its route's table. Returns the rollup tables of all routes.
    ///
    /// - Throws: ``ClickHouseError`` when a statement fails (the loader retries the whole start).
    @discardableResult
    package static func prepare(
        _ routes: [LoaderRoute],
        on version: ClickHouseVersion,
        clickHouse: ClickHouseClient,
        logger: Logger
    ) async throws(ClickHouseError) -> [String] {
        var tables: [String] = []
        for route in routes {
            let columns = try await clickHouse.query(route.tableColumnsQuery)
            guard let rollups = Self.rollups(for: route, tableColumns: columns, on: version) else { continue }
            for rollup in rollups {
                let existed = try await clickHouse.query("EXISTS TABLE \(rollup.table)").hasPrefix("1")
                try await clickHouse.execute(rollup.createTable)
                try await clickHouse.execute(rollup.createView)
                tables.append(rollup.table)
                guard !existed else { continue }
                // The view sees only inserts from now on; what the table held before is added
                // by month, so one month's states at a time are in memory.
                let months = try await clickHouse.query(
                    RetentionSweep.partitionsQuery(route) + " ORDER BY partition FORMAT TabSeparated"
                )
                .split(separator: "\n").compactMap { Int($0) }
                for month in months { try await clickHouse.execute(rollup.backfill(month: month)) }
                logger.info(
                    "loader.rollup_created",
                    metadata: ["table": "\(rollup.table)", "backfilled_months": "\(months.count)"]
                )
            }
        }
        return tables
    }

    /// Retention where ClickHouse has no table TTL (before 19.6): the months of the rollups of
    /// `route` that ended a `ttl` ago are dropped, as ``RetentionSweep`` drops the route table's.
    /// Answers what was dropped, as (table, partition).
    package static func sweep(
        _ route: LoaderRoute,
        clickHouse: ClickHouseClient,
        nowSeconds: Int64 = Int64(Date().timeIntervalSince1970)
    ) async throws(ClickHouseError) -> [(table: String, partition: String)] {
        guard let ttl = route.ttl else { return [] }
        var dropped: [(String, String)] = []
        for rollup in Clickstream(table: route.table).rollups() {
            guard try await clickHouse.query("EXISTS TABLE \(rollup.table)").hasPrefix("1") else { continue }
            let parts = rollup.table.split(separator: ".").map(String.init)
            let partitions = try await clickHouse.query(
                "SELECT DISTINCT partition FROM system.parts WHERE database = '\(parts[0])' AND table = '\(parts[1])'"
                    + " AND active FORMAT TabSeparated"
            ).split(separator: "\n").map(String.init)
            for partition in RetentionSweep.expired(partitions, ttl: ttl, nowSeconds: nowSeconds) {
                try await clickHouse.execute("ALTER TABLE \(rollup.table) DROP PARTITION \(partition)")
                dropped.append((rollup.table, partition))
            }
        }
        return dropped
    }
}
