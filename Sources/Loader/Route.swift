import ClickHouse
import EventModel

/// One column of a route's table and where its value comes from.
public struct LoaderColumn: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable {
        /// Text; a JSON number or boolean is taken as written.
        case string
        /// A point in time: RFC 3339 text or epoch milliseconds; millisecond precision where
        /// the server has `DateTime64`, seconds on older servers.
        case timestamp
        case int64
        case uint64
        case float64
        /// `true`/`false` (or 0/1) as a `UInt8` 1/0: ClickHouse's boolean before `Bool` (22.x).
        case bool
        /// Any JSON value (object, array…), stored as its JSON text.
        case json
    }

    public var name: String
    public var kind: Kind
    /// The top-level field of the event JSON; default: the column's name.
    public var field: String
    /// A message without this field fails validation (and goes to the dead-letter topic).
    public var required: Bool
    /// Used when the field is absent or null (the type's zero value when nil).
    public var defaultValue: String?
    /// The Kafka header of the message the value comes from, instead of a field of the event:
    /// `wal_lsn` gives each row the identity the conservation ledger knows it by
    /// (docs/ledger.md). A message without the header gets the default. `string`, `int64`
    /// and `uint64` columns only.
    public var header: String?

    public init(
        _ name: String,
        _ kind: Kind,
        field: String? = nil,
        required: Bool = false,
        defaultValue: String? = nil,
        header: String? = nil
    ) {
        self.name = name
        self.kind = kind
        self.field = field ?? name
        self.required = required
        self.defaultValue = defaultValue
        self.header = header
    }

    /// The ClickHouse type on a server of `version`.
    func type(on version: ClickHouseVersion) -> String {
        switch self.kind {
        case .string, .json: "String"
        case .timestamp: version >= LoaderRoute.dateTime64Since ? "DateTime64(3, 'UTC')" : "DateTime('UTC')"
        case .int64: "Int64"
        case .uint64: "UInt64"
        case .float64: "Float64"
        case .bool: "UInt8"
        }
    }
}

/// Messages of one topic into one table.
public struct LoaderRoute: Sendable, Equatable {
    public var topic: String
    /// `database.table`.
    public var table: String
    public var columns: [LoaderColumn]
    /// Rows with the same value here are one row once ClickHouse has merged (ReplacingMergeTree).
    public var dedupColumn: String
    /// Partitions the table by month. Must be a `timestamp` column.
    public var timeColumn: String
    /// The sorting key: column names, or `toDate(<timestamp column>)` for the day of one; it
    /// must include `dedupColumn`. ReplacingMergeTree takes rows with equal keys for one row,
    /// so every part of the key must be the same in every copy of an event.
    public var orderBy: [String]
    /// Where messages that fail validation or that the table rejects go. Default: `<topic>.dlq`.
    public var deadLetterTopic: String
    /// The column holding the user id, which `sluice erase` deletes by and the loader checks
    /// against the erasure record. Default: `user_id` when the route has that column; nil: the
    /// route's rows name no user, and erasure skips its table (and says so).
    public var userColumn: String?
    /// How long rows are kept, by ``timeColumn`` (`ttl: 400d`): a table TTL on ClickHouse 19.6
    /// and later; on older servers the loader drops whole months past it
    /// (``RetentionSweep``). nil: kept for ever.
    public var ttl: Duration?
    /// The ClickHouse storage policy new tables are created on (`storage_policy: encrypted`,
    /// see ops/clickhouse/README.md); nil: the server's default. Needs ClickHouse 19.15.
    public var storagePolicy: String?

    /// `DateTime64` exists from ClickHouse 20.1 on.
    static let dateTime64Since = ClickHouseVersion(major: 20, minor: 1, patch: 0)
    /// `insert_deduplication_token` (with `non_replicated_deduplication_window`) from 22.2 on.
    static let dedupTokenSince = ClickHouseVersion(major: 22, minor: 2, patch: 0)
    /// Table `TTL` from 19.6 on.
    package static let ttlSince = ClickHouseVersion(major: 19, minor: 6, patch: 0)
    /// The `storage_policy` table setting from 19.15 on (encrypted disks from 21.9).
    package static let storagePolicySince = ClickHouseVersion(major: 19, minor: 15, patch: 0)

    public init(
        topic: String,
        table: String,
        columns: [LoaderColumn],
        dedupColumn: String = "event_id",
        timeColumn: String = "timestamp",
        orderBy: [String]? = nil,
        deadLetterTopic: String? = nil,
        userColumn: String? = nil,
        ttl: Duration? = nil,
        storagePolicy: String? = nil
    ) {
        self.topic = topic
        self.table = table
        self.columns = columns
        self.dedupColumn = dedupColumn
        self.timeColumn = timeColumn
        self.orderBy = orderBy ?? [dedupColumn]
        self.deadLetterTopic = deadLetterTopic ?? topic + ".dlq"
        self.userColumn = userColumn ?? (columns.contains { $0.name == "user_id" } ? "user_id" : nil)
        self.ttl = ttl
        self.storagePolicy = storagePolicy
    }

    /// The normalized event the gateway writes, column for column.
    public static let eventColumns: [LoaderColumn] = [
        LoaderColumn("event_id", .string, required: true),
        LoaderColumn("action", .string, required: true),
        LoaderColumn("user_id", .string),
        LoaderColumn("anonymous_id", .string),
        LoaderColumn("timestamp", .timestamp, required: true),
        LoaderColumn("sent_at", .timestamp),
        LoaderColumn("received_at", .timestamp, required: true),
        LoaderColumn("page", .string),
        LoaderColumn("object", .string),
        LoaderColumn("referrer", .string),
        LoaderColumn("session_id", .string),
        LoaderColumn("properties", .json, defaultValue: "{}"),
        LoaderColumn("client_ip", .string),
        LoaderColumn("user_agent", .string),
        LoaderColumn("browser", .string),
        LoaderColumn("os", .string),
        LoaderColumn("device", .string),
        LoaderColumn("is_bot", .bool),
        LoaderColumn("gateway_id", .string),
        LoaderColumn("source", .string),
        LoaderColumn("schema_version", .uint64, defaultValue: "1"),
        LoaderColumn(Self.lsnColumn, .uint64, header: "wal_lsn"),
    ]

    /// The column of the events table holding the event's WAL LSN (with `gateway_id`, its
    /// identity): `sluice audit --rows` checks by it that the rows ClickHouse confirmed are
    /// still there.
    public static let lsnColumn = "wal_lsn"
    /// The columns a row's identity is read from by `sluice audit --rows`.
    public static let identityColumns = ["gateway_id", Self.lsnColumn]

    /// The sorting key of `sluice.events` (docs/analytics.md): action, day, object, event id.
    /// Analysts ask per action (views, clicks), over a range of days, per object; the key lets
    /// ClickHouse read only those granules. Every part is the same in every copy of an event
    /// — a replay of the Kafka range carries the same JSON, and a client's retry the same
    /// action, object and timestamp — so ReplacingMergeTree still folds the copies. A table
    /// made before keeps the key it has (`CREATE TABLE IF NOT EXISTS`).
    public static let eventsOrderBy = ["action", "toDate(timestamp)", "object", "event_id"]

    /// Topic `events` into `sluice.events`.
    public static let events = LoaderRoute(
        topic: "events",
        table: "sluice.events",
        columns: Self.eventColumns,
        orderBy: Self.eventsOrderBy
    )

    /// Checks that the route can work: a `database.table` name, columns with plain names,
    /// a time column of kind `timestamp`, the dedup column in the sorting key.
    ///
    /// - Throws: ``LoaderError`` with code ``LoaderError/Code/invalidRoute`` and what is wrong.
    public func validate() throws(LoaderError) {
        if let problem = self.problem { throw LoaderError(.invalidRoute, message: problem) }
    }

    /// What is wrong with this route, if anything.
    private var problem: String? {
        let names = self.columns.map(\.name)
        if self.topic.isEmpty { return "a route needs a topic" }
        if self.table.split(separator: ".").count != 2 { return "table '\(self.table)' must be database.table" }
        if !(self.table.split(separator: ".").allSatisfy { Self.isIdentifier(String($0)) }) {
            return "table '\(self.table)' must be made of letters, digits and underscores"
        }
        if self.columns.isEmpty { return "route \(self.topic) → \(self.table) has no columns" }
        if let bad = names.first(where: { !Self.isIdentifier($0) }) {
            return "column '\(bad)' must be made of letters, digits and underscores"
        }
        if Set(names).count != names.count { return "route \(self.topic) → \(self.table) names a column twice" }
        guard let time = self.columns.first(where: { $0.name == self.timeColumn }), time.kind == .timestamp else {
            return "time column '\(self.timeColumn)' must be one of the route's timestamp columns"
        }
        if !names.contains(self.dedupColumn) {
            return "dedup column '\(self.dedupColumn)' is not a column of the route"
        }
        if !self.orderBy.contains(self.dedupColumn) {
            return "order_by must include the dedup column '\(self.dedupColumn)'"
        }
        let timestamps = self.columns.filter { $0.kind == .timestamp }.map(\.name)
        if let missing = self.orderBy.first(where: { entry in
            Self.dayOf(entry).map { !timestamps.contains($0) } ?? !names.contains(entry)
        }) {
            if let column = Self.dayOf(missing) {
                return "order_by names 'toDate(\(column))', and '\(column)' is not a timestamp column of the route"
            }
            return "order_by names '\(missing)', which is not a column of the route"
        }
        if let column = self.columns.first(where: { $0.header != nil && ![.string, .int64, .uint64].contains($0.kind) })
        {
            return
                "column '\(column.name)' reads header '\(column.header ?? "")': only string, int64 and uint64 columns can"
        }
        if let column = self.columns.first(where: { $0.header != nil && $0.required }) {
            return "column '\(column.name)' reads a header and cannot be required (give it a default instead)"
        }
        if let user = self.userColumn, !names.contains(user) {
            return "user_column '\(user)' is not a column of the route"
        }
        if let ttl = self.ttl, ttl < .seconds(86_400) {
            return "ttl of route \(self.topic) must be at least 1d (rows are dropped by day or by month)"
        }
        if let policy = self.storagePolicy, !Self.isIdentifier(policy) {
            return "storage_policy '\(policy)' must be made of letters, digits and underscores"
        }
        return nil
    }

    /// Why this route cannot have its table on a server of `version`, if so: a storage policy
    /// on a server that has none. Refused rather than ignored: a route that asks for an
    /// encrypted disk must not quietly get a plain one.
    public func unsupported(on version: ClickHouseVersion) -> String? {
        guard let policy = self.storagePolicy, version < Self.storagePolicySince else { return nil }
        return "route \(self.topic) sets storage_policy '\(policy)', which needs ClickHouse \(Self.storagePolicySince)"
            + " or later (this server is \(version)); remove the option or upgrade the server"
    }

    /// The route keys beyond the table's shape, for the configuration reader.
    package static let optionKeys = ["user_column", "ttl", "storage_policy"]

    /// Sets one of ``optionKeys`` from its configuration text.
    package mutating func applyOption(_ name: String, _ text: String) throws(LoaderError) {
        switch name {
        case "user_column": self.userColumn = text
        case "storage_policy": self.storagePolicy = text
        case "ttl":
            guard let ttl = Self.parseTTL(text) else {
                throw LoaderError(
                    .invalidRoute,
                    message: "ttl '\(text)' of route \(self.topic) must be a duration such as 400d or 720h"
                )
            }
            self.ttl = ttl
        default:
            throw LoaderError(.invalidRoute, message: "unknown route option '\(name)'")
        }
    }

    /// `400d`, `720h`, `3600s`: a whole number of days, hours or seconds.
    static func parseTTL(_ text: String) -> Duration? {
        let units: [(Character, Int64)] = [("d", 86_400), ("h", 3_600), ("s", 1)]
        guard let last = text.last, let scale = units.first(where: { $0.0 == last })?.1,
            let count = Int64(text.dropLast()), count > 0, count < 1_000_000_000 / scale
        else { return nil }
        return .seconds(count * scale)
    }

    /// The `TTL` clause: whole days as `DAY`, anything else in seconds.
    var ttlClause: String? {
        guard let ttl = self.ttl else { return nil }
        let seconds = ttl.components.seconds
        let interval = seconds % 86_400 == 0 ? "\(seconds / 86_400) DAY" : "\(seconds) SECOND"
        return "TTL toDateTime(`\(self.timeColumn)`) + INTERVAL \(interval)"
    }

    static func isIdentifier(_ text: String) -> Bool {
        guard let first = text.utf8.first, !(0x30...0x39).contains(first) else { return false }
        return text.utf8.allSatisfy {
            (0x30...0x39).contains($0) || (0x41...0x5A).contains($0) || (0x61...0x7A).contains($0) || $0 == 0x5F
        }
    }

    /// The column of a sort-key entry `toDate(column)`; nil for any other entry.
    static func dayOf(_ entry: String) -> String? {
        guard entry.hasPrefix("toDate("), entry.hasSuffix(")") else { return nil }
        return String(entry.dropFirst(7).dropLast())
    }

    /// A sort-key entry as SQL: a quoted column, or `toDate(` quoted column `)`.
    static func sortKeySQL(_ entry: String) -> String {
        Self.dayOf(entry).map { "toDate(`\($0)`)" } ?? "`\(entry)`"
    }

    var database: String { String(self.table.split(separator: ".")[0]) }
    var tableName: String { String(self.table.split(separator: ".").last ?? "") }

    /// DDL that works on ClickHouse 18.16 and on current releases.
    public func createTable(on version: ClickHouseVersion) -> String {
        let columns = self.columns.map { "    `\($0.name)` \($0.type(on: version))" }.joined(separator: ",\n")
        var sql = """
            CREATE TABLE IF NOT EXISTS \(self.table)
            (
            \(columns)
            )
            ENGINE = ReplacingMergeTree()
            PARTITION BY toYYYYMM(`\(self.timeColumn)`)
            ORDER BY (\(self.orderBy.map(Self.sortKeySQL).joined(separator: ", ")))
            """
        if version >= Self.ttlSince, let ttl = self.ttlClause { sql += "\n" + ttl }
        var settings: [String] = []
        if version >= Self.dedupTokenSince { settings.append("non_replicated_deduplication_window = 1000") }
        if version >= Self.storagePolicySince, let policy = self.storagePolicy {
            settings.append("storage_policy = '\(policy)'")
        }
        if !settings.isEmpty { sql += "\nSETTINGS " + settings.joined(separator: ", ") }
        return sql
    }

    /// Asks for the table's columns: `{"name":…,"type":…}` lines, for ``rowBinaryMismatch(tableColumns:on:)``.
    var tableColumnsQuery: String {
        "SELECT name, type FROM system.columns WHERE database = '\(self.database)' AND table = '\(self.tableName)'"
            + " FORMAT JSONEachRow"
    }

    /// The route's columns the table lacks (`tableColumns`: the answer to
    /// ``tableColumnsQuery``): a table made by an older Sluice, before the event gained a field.
    func missingColumns(tableColumns: String) -> [LoaderColumn] {
        var names: Set<String> = []
        for line in tableColumns.split(separator: "\n") where !line.isEmpty {
            if let column = try? JSONParser.parse(Array(line.utf8)), case .string(let name)? = column["name"] {
                names.insert(name)
            }
        }
        return self.columns.filter { !names.contains($0.name) }
    }

    /// Adds `column` to the table, with the type's zero (or the column's default) in the rows
    /// already there. Works on 18.16 and on current releases.
    func addColumn(_ column: LoaderColumn, on version: ClickHouseVersion) -> String {
        var sql = "ALTER TABLE \(self.table) ADD COLUMN `\(column.name)` \(column.type(on: version))"
        if let value = column.defaultValue, column.kind == .string || column.kind == .json {
            sql += " DEFAULT " + UserErasure.literal(value)
        } else if let value = column.defaultValue, Double(value) != nil {
            sql += " DEFAULT \(value)"
        }
        return sql
    }

    /// Why RowBinary rows of this route cannot go into the table as it is, if so: every column
    /// must exist with exactly the type the route writes (`tableColumns`: the answer to
    /// ``tableColumnsQuery``). RowBinary carries no field boundaries the server could check,
    /// so a `UInt32` where the route writes a `String` would misread every row after it.
    func rowBinaryMismatch(tableColumns: String, on version: ClickHouseVersion) -> String? {
        var types: [String: String] = [:]
        for line in tableColumns.split(separator: "\n") where !line.isEmpty {
            guard let column = try? JSONParser.parse(Array(line.utf8)), case .string(let name)? = column["name"],
                case .string(let type)? = column["type"]
            else { return "cannot read the table's columns from \(line)" }
            types[name] = type
        }
        for column in self.columns {
            guard let type = types[column.name] else { return "the table has no column '\(column.name)'" }
            let expected = column.type(on: version)
            if type != expected { return "column '\(column.name)' is \(type), the route writes \(expected)" }
        }
        return nil
    }

    /// `INSERT INTO db.table (columns…) FORMAT RowBinary` (or `JSONEachRow`): the statement
    /// before the rows of ``RowEncoder`` in that format.
    public func insertPrefix(_ format: InsertFormat) -> String {
        "INSERT INTO \(self.table) (\(self.columns.map { "`\($0.name)`" }.joined(separator: ", "))) FORMAT \(format.rawValue)"
    }
}
