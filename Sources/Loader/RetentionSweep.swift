import ClickHouse
import Foundation

/// Retention on ClickHouse before 19.6, which has no table TTL: the routes' tables are
/// partitioned by month (`toYYYYMM` of the time column), so the months every row of which is
/// older than the route's ttl are dropped whole (`ALTER TABLE … DROP PARTITION`, immediate and
/// cheap). A row is thus kept at least the ttl and at most a month longer.
package enum RetentionSweep {
    /// The partitions (`YYYYMM`) that ended at least `ttl` before `nowSeconds` (unix time).
    package static func expired(_ partitions: [String], ttl: Duration, nowSeconds: Int64) -> [String] {
        let cutoff = nowSeconds - ttl.components.seconds
        return partitions.filter { partition in
            guard partition.count == 6, let value = Int64(partition) else { return false }
            let (year, month) = (value / 100, value % 100)
            guard (1...12).contains(month) else { return false }
            let end = month == 12 ? Self.days(year + 1, 1, 1) : Self.days(year, month + 1, 1)
            return end * 86_400 <= cutoff
        }.sorted()
    }

    /// Drops the route's expired months; answers which.
    package static func sweep(
        _ route: LoaderRoute,
        clickHouse: ClickHouseClient,
        nowSeconds: Int64 = Int64(Date().timeIntervalSince1970)
    ) async throws(ClickHouseError) -> [String] {
        guard let ttl = route.ttl else { return [] }
        let text = try await clickHouse.query(Self.partitionsQuery(route) + " FORMAT TabSeparated")
        let partitions = text.split(separator: "\n").map { String($0) }
        let expired = Self.expired(partitions, ttl: ttl, nowSeconds: nowSeconds)
        for partition in expired {
            try await clickHouse.execute(Self.drop(partition, of: route))
        }
        return expired
    }

    /// The table's partitions that hold data.
    static func partitionsQuery(_ route: LoaderRoute) -> String {
        "SELECT DISTINCT partition FROM system.parts WHERE database = '\(route.database)'"
            + " AND table = '\(route.tableName)' AND active"
    }

    static func drop(_ partition: String, of route: LoaderRoute) -> String {
        "ALTER TABLE \(route.table) DROP PARTITION \(partition)"
    }

    /// Days from 1970-01-01 to a civil date (proleptic Gregorian; H. Hinnant's algorithm).
    static func days(_ year: Int64, _ month: Int64, _ day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }
}
