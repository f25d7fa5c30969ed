import ClickHouse
import Kafka
import Ledger

/// `sluice audit --rows`: are the rows ClickHouse confirmed still there? The ledger knows
/// every row a loader listed as inserted, by identity (`gateway_id`, `wal_lsn`); the events
/// table holds both columns, so the audit asks ClickHouse which of them it still has.
///
/// The question is asked cheaply first: per gateway, how many distinct LSNs each bucket of
/// ``bucketWidth`` LSNs holds, against how many the ledger expects there. Only the buckets
/// that differ are read LSN by LSN. A row the table lacks is then
///
/// - **folded**: ReplacingMergeTree kept one row per `event_id`, and another copy of the same
///   event (a client's retry, accepted under another LSN) is that row. Told by the message's
///   `event_id` header, read back from Kafka, and the table holding that id;
/// - **erased**: `sluice erase` deleted the user's rows (a delete mutation on the table names
///   the user the message is keyed by);
/// - **missing**: neither; or Kafka no longer holds the message, so neither can be checked.
///   A part dropped or detached, a disk lost without a replica, a delete by hand.
public struct RowAudit: Sendable {
    /// LSNs per bucket of the first, counting query.
    public static let bucketWidth: UInt64 = 4096

    /// What one table holds of the rows the ledger expects in it.
    public struct TableCheck: Sendable, Equatable {
        public var table: String
        public var confirmed = 0
        public var present = 0
        public var folded = 0
        public var erased = 0
        /// Rows missing, per gateway as ranges (LSNs and Kafka offsets).
        public var missing: [LedgerBook.Missing] = []
        /// Of ``missing``, how many Kafka no longer held, so folding or erasure was not checked.
        public var unchecked = 0
        /// Why the table could not be checked (it lacks the identity columns), if so.
        public var notChecked: String?

        public var missingCount: Int { self.missing.reduce(0) { $0 + $1.count } }
    }

    let clickHouse: ClickHouseClient
    let kafkaProperties: [String: String]
    let routes: [LoaderRoute]

    /// - Parameters:
    ///   - kafkaProperties: librdkafka properties for reading back the messages of missing rows.
    ///   - routes: the loader's routes (their dedup and user columns); a table no route names
    ///     is read with the events route's.
    public init(clickHouse: ClickHouseClient, kafkaProperties: [String: String], routes: [LoaderRoute]) {
        self.clickHouse = clickHouse
        self.kafkaProperties = kafkaProperties
        self.routes = routes
    }

    /// Checks every table of `confirmed` (``LedgerBook/confirmedRows``).
    public func check(_ confirmed: [String: [String: [LedgerBook.ConfirmedRow]]]) async throws -> [TableCheck] {
        var checks: [TableCheck] = []
        for table in confirmed.keys.sorted() {
            checks.append(try await self.check(table: table, rows: confirmed[table] ?? [:]))
        }
        return checks
    }

    private func check(table: String, rows byGateway: [String: [LedgerBook.ConfirmedRow]]) async throws -> TableCheck {
        var route = self.routes.first { $0.table == table } ?? LoaderRoute.events
        route.table = table
        var result = TableCheck(table: table)
        if !(try await self.hasIdentity(route)) {
            result.confirmed = Set(byGateway.flatMap { gateway, rows in rows.map { "\(gateway)/\($0.lsn)" } }).count
            result.notChecked =
                "the table has no `\(LoaderRoute.identityColumns.joined(separator: "` and `"))` columns"
                + " (give its route `gateway_id: {type: string}` and"
                + " `\(LoaderRoute.lsnColumn): {type: uint64, header: wal_lsn}`)"
            return result
        }
        var absent: [(gateway: String, row: LedgerBook.ConfirmedRow)] = []
        for gateway in byGateway.keys.sorted() {
            let rows = byGateway[gateway] ?? []
            let expected = RunSet<UInt64>(RunSet.runs(of: rows.map(\.lsn)))
            result.confirmed += expected.count
            let lost = try await self.missing(route: route, gateway: gateway, expected: expected)
            result.present += expected.count - lost.count
            let byLSN = Dictionary(rows.map { ($0.lsn, $0) }) { first, _ in first }
            absent += lost.compactMap { lsn in byLSN[lsn].map { (gateway, $0) } }
        }
        guard !absent.isEmpty else { return result }
        let messages = try await self.messages(at: absent.map(\.row))
        let known = try await self.presentIDs(route: route, ids: Set(messages.values.compactMap(\.eventID)))
        var lostRows: [(gateway: String, row: LedgerBook.ConfirmedRow)] = []
        var erasedUsers: [String: Bool] = [:]
        for entry in absent {
            let place = TopicPartition(entry.row.place.topic, entry.row.place.partition)
            guard let message = messages[PlaceOffset(place: place, offset: entry.row.offset)] else {
                result.unchecked += 1
                lostRows.append(entry)
                continue
            }
            if let id = message.eventID, known.contains(id) {
                result.folded += 1
            } else if let user = message.user, try await self.erased(route: route, user: user, cache: &erasedUsers) {
                result.erased += 1
            } else {
                lostRows.append(entry)
            }
        }
        result.missing = LedgerBook.Missing.grouped(
            lostRows.map { ($0.gateway, $0.row.lsn, [($0.row.place, $0.row.offset)]) }
        )
        return result
    }

    // MARK: Unaccounted events that are rows all the same

    /// Of the `unaccounted` events, the LSNs per gateway that one of `tables` holds as rows:
    /// a loader committed them and stopped before its `loaded` record reached the ledger (or
    /// its ledger producer failed). They are in ClickHouse, so not lost.
    public func rowsAmong(_ unaccounted: [LedgerBook.Missing], tables: [String]) async throws -> [String: [UInt64]] {
        var found: [String: Set<UInt64>] = [:]
        var checkable: [String] = []
        for table in tables {
            var route = LoaderRoute.events
            route.table = table
            if try await self.hasIdentity(route) { checkable.append(table) }
        }
        for missing in unaccounted where !missing.gateway.isEmpty {
            for table in checkable {
                for chunk in stride(from: 0, to: missing.lsns.count, by: 200) {
                    let runs = missing.lsns[chunk..<min(missing.lsns.count, chunk + 200)]
                    let text = try await self.clickHouse.query(
                        Self.runsQuery(table: table, gateway: missing.gateway, runs: Array(runs))
                    )
                    for line in text.split(separator: "\n") {
                        if let lsn = UInt64(line) { found[missing.gateway, default: []].insert(lsn) }
                    }
                }
            }
        }
        return found.mapValues { $0.sorted() }
    }

    /// Whether the route's table has the columns a row's identity is read from (a table that
    /// does not exist yet has none).
    func hasIdentity(_ route: LoaderRoute) async throws -> Bool {
        // The name comes from the ledger: only a plain `database.table` reaches the SQL.
        let parts = route.table.split(separator: ".")
        guard parts.count == 2, parts.allSatisfy({ LoaderRoute.isIdentifier(String($0)) }) else { return false }
        let names = LoaderRoute.identityColumns.map { "'\($0)'" }.joined(separator: ", ")
        let count = try await UserErasure.scalar(
            self.clickHouse,
            "SELECT count() FROM system.columns WHERE database = '\(route.database)' AND table = '\(route.tableName)'"
                + " AND name IN (\(names))"
        )
        return count == LoaderRoute.identityColumns.count
    }

    /// The distinct LSNs of `gateway` in `table` that fall in `runs`, one per line.
    static func runsQuery(table: String, gateway: String, runs: [Range<UInt64>]) -> String {
        let column = "`\(LoaderRoute.lsnColumn)`"
        let ranges = runs.map { "(\(column) >= \($0.lowerBound) AND \(column) < \($0.upperBound))" }
        return "SELECT DISTINCT \(column) FROM \(table) WHERE `gateway_id` = \(UserErasure.literal(gateway))"
            + " AND (\(ranges.joined(separator: " OR "))) FORMAT TabSeparated"
    }

    // MARK: Which confirmed rows the table still has

    /// The expected LSNs of `gateway` that the table lacks: counted per bucket first, read
    /// one by one only in the buckets whose count differs. Memory and time grow with the
    /// expected LSNs, not with the table.
    func missing(route: LoaderRoute, gateway: String, expected: RunSet<UInt64>) async throws -> [UInt64] {
        guard !expected.isEmpty else { return [] }
        // With few runs the count covers exactly the expected LSNs, so a bucket's count matches
        // only when every one of them is there. With many (several topics interleave one
        // gateway's LSNs) it covers their span, where rows outside the window could make up
        // for a missing one in the same bucket.
        let counted = try await self.clickHouse.query(
            Self.countQuery(route: route, gateway: gateway, runs: expected.runs)
        )
        let found = Self.parseCounts(counted)
        let wanted = Self.bucketCounts(expected)
        let differing = wanted.keys.filter { found[$0] != wanted[$0] }.sorted()
        guard !differing.isEmpty else { return [] }
        var seen = Set<UInt64>()
        for chunk in stride(from: 0, to: differing.count, by: 500) {
            let buckets = Array(differing[chunk..<min(differing.count, chunk + 500)])
            let text = try await self.clickHouse.query(Self.lsnQuery(route: route, gateway: gateway, buckets: buckets))
            for line in text.split(separator: "\n") {
                if let lsn = UInt64(line), expected.contains(lsn) { seen.insert(lsn) }
            }
        }
        let checked = Set(differing)
        var missing: [UInt64] = []
        for run in expected.runs {
            var lsn = run.lowerBound
            while lsn < run.upperBound {
                let bucket = lsn / Self.bucketWidth
                let bucketEnd = min(run.upperBound, (bucket + 1) * Self.bucketWidth)
                if checked.contains(bucket) {
                    for candidate in lsn..<bucketEnd where !seen.contains(candidate) { missing.append(candidate) }
                }
                lsn = bucketEnd
            }
        }
        return missing
    }

    /// Runs up to which the counting query lists the expected runs themselves.
    static let exactRuns = 200

    /// Distinct LSNs of `gateway` per bucket, among `runs` (or over their span when there are
    /// more than ``exactRuns``), as `bucket\tcount` lines.
    static func countQuery(route: LoaderRoute, gateway: String, runs: [Range<UInt64>]) -> String {
        let column = "`\(LoaderRoute.lsnColumn)`"
        let filter: String
        if runs.count <= Self.exactRuns {
            filter = runs.map { "(\(column) >= \($0.lowerBound) AND \(column) < \($0.upperBound))" }.joined(
                separator: " OR "
            )
        } else {
            filter = "\(column) >= \(runs.first?.lowerBound ?? 0) AND \(column) < \(runs.last?.upperBound ?? 0)"
        }
        return "SELECT intDiv(\(column), \(Self.bucketWidth)) AS bucket, uniqExact(\(column))"
            + " FROM \(route.table) WHERE `gateway_id` = \(UserErasure.literal(gateway)) AND (\(filter))"
            + " GROUP BY bucket FORMAT TabSeparated"
    }

    /// The distinct LSNs of `gateway` in `buckets`, one per line.
    static func lsnQuery(route: LoaderRoute, gateway: String, buckets: [UInt64]) -> String {
        "SELECT DISTINCT `\(LoaderRoute.lsnColumn)` FROM \(route.table) WHERE `gateway_id` = \(UserErasure.literal(gateway))"
            + " AND intDiv(`\(LoaderRoute.lsnColumn)`, \(Self.bucketWidth)) IN (\(buckets.map(String.init).joined(separator: ", ")))"
            + " FORMAT TabSeparated"
    }

    static func parseCounts(_ text: String) -> [UInt64: Int] {
        var counts: [UInt64: Int] = [:]
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: "\t")
            if fields.count == 2, let bucket = UInt64(fields[0]), let count = Int(fields[1]) { counts[bucket] = count }
        }
        return counts
    }

    /// How many of `lsns` fall in each bucket.
    static func bucketCounts(_ lsns: RunSet<UInt64>) -> [UInt64: Int] {
        var counts: [UInt64: Int] = [:]
        for run in lsns.runs {
            var lower = run.lowerBound
            while lower < run.upperBound {
                let bucket = lower / Self.bucketWidth
                let upper = min(run.upperBound, (bucket + 1) * Self.bucketWidth)
                counts[bucket, default: 0] += Int(upper - lower)
                lower = upper
            }
        }
        return counts
    }

    // MARK: Telling folded and erased rows from lost ones

    struct PlaceOffset: Hashable {
        var place: TopicPartition
        var offset: Int64
    }

    struct MessageFacts {
        var eventID: String?
        /// The message key: the user id (or anonymous id) it was partitioned by.
        var user: String?
    }

    /// The `event_id` header and key of the messages at these places, where Kafka still has them.
    func messages(at rows: [LedgerBook.ConfirmedRow]) async throws -> [PlaceOffset: MessageFacts] {
        var wanted: [TopicPartition: Set<Int64>] = [:]
        for row in rows { wanted[TopicPartition(row.place.topic, row.place.partition), default: []].insert(row.offset) }
        var properties = self.kafkaProperties
        properties["group.id"] = "sluice-audit-rows-\(UInt32.random(in: 0...UInt32.max))"
        properties["enable.auto.commit"] = "false"
        let consumer = try KafkaConsumer(properties: properties)
        do {
            let facts = try await Self.read(wanted, with: consumer)
            await consumer.close()
            return facts
        } catch {
            await consumer.close()
            throw error
        }
    }

    private static func read(
        _ wanted: [TopicPartition: Set<Int64>],
        with consumer: KafkaConsumer
    ) async throws(KafkaError) -> [PlaceOffset: MessageFacts] {
        var facts: [PlaceOffset: MessageFacts] = [:]
        for (place, offsets) in wanted {
            guard let first = offsets.min(), let last = offsets.max() else { continue }
            let marks = try await consumer.watermarks(topic: place.topic)
            guard let mark = marks[place.partition] else { continue }
            let start = max(first, mark.low)
            let end = min(last + 1, mark.high)
            guard start < end else { continue }
            try await consumer.assign([place: start])
            var next = start
            var idle = 0
            while next < end, idle < 50 {
                let messages = await consumer.poll(maxMessages: 1000, timeout: .milliseconds(200)).messages
                idle = messages.isEmpty ? idle + 1 : 0
                for message in messages where message.topicPartition == place {
                    next = max(next, message.offset + 1)
                    guard offsets.contains(message.offset) else { continue }
                    facts[PlaceOffset(place: place, offset: message.offset)] = MessageFacts(
                        eventID: message.header("event_id").map { String(decoding: $0, as: UTF8.self) },
                        user: message.key.map { String(decoding: $0, as: UTF8.self) }
                    )
                }
            }
        }
        return facts
    }

    /// Which of `ids` the table holds in its dedup column.
    func presentIDs(route: LoaderRoute, ids: Set<String>) async throws -> Set<String> {
        var present = Set<String>()
        let sorted = ids.sorted()
        for chunk in stride(from: 0, to: sorted.count, by: 1000) {
            let list = sorted[chunk..<min(sorted.count, chunk + 1000)].map(UserErasure.literal).joined(separator: ", ")
            let text = try await self.clickHouse.query(
                "SELECT DISTINCT toString(`\(route.dedupColumn)`) FROM \(route.table)"
                    + " WHERE toString(`\(route.dedupColumn)`) IN (\(list)) FORMAT TabSeparated"
            )
            for line in text.split(separator: "\n") { present.insert(String(line)) }
        }
        return present
    }

    /// Whether a delete mutation on the route's table names `user` (what `sluice erase` runs).
    func erased(route: LoaderRoute, user: String, cache: inout [String: Bool]) async throws -> Bool {
        guard route.userColumn != nil else { return false }
        if let known = cache[user] { return known }
        let count = try await UserErasure.scalar(
            self.clickHouse,
            "SELECT count() FROM system.mutations WHERE database = '\(route.database)' AND table = '\(route.tableName)'"
                + " AND position(command, \(UserErasure.literal(UserErasure.literal(user)))) > 0"
        )
        cache[user] = count > 0
        return count > 0
    }

}

extension RowAudit {
    /// What `sluice audit --rows` prints.
    public static func report(_ checks: [TableCheck]) -> String {
        var lines = ["ClickHouse (the rows the loaders confirmed in the window, still there?):"]
        if checks.isEmpty { lines.append("  no loader confirmed rows in this window") }
        for check in checks {
            if let reason = check.notChecked {
                lines.append("  \(check.table): confirmed \(check.confirmed) rows · not checked: \(reason)")
                continue
            }
            lines.append(
                "  \(check.table): confirmed \(check.confirmed) rows · present \(check.present)"
                    + " · folded into another copy of their event \(check.folded) · erased since \(check.erased)"
                    + " · missing \(check.missingCount)"
            )
        }
        let missing = checks.reduce(0) { $0 + $1.missingCount }
        guard missing > 0 else {
            lines.append("missing from ClickHouse: 0 rows")
            return lines.joined(separator: "\n")
        }
        lines.append(
            "MISSING FROM CLICKHOUSE: \(missing) rows ClickHouse confirmed are no longer in it"
                + " (a part dropped or detached, a disk lost, a delete by hand):"
        )
        for check in checks where check.missingCount > 0 {
            for range in check.missing { lines.append("  \(check.table): \(range.description)") }
            if check.unchecked > 0 {
                lines.append(
                    "  (\(check.unchecked) of them are no longer in Kafka either: whether they were folded or erased"
                        + " could not be checked)"
                )
            }
        }
        return lines.joined(separator: "\n")
    }
}
