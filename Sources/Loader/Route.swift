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

    public init(_ name: String, _ kind: Kind, field: String? = nil, required: Bool = false, defaultValue: String? = nil)
    {
        self.name = name
        self.kind = kind
        self.field = field ?? name
        self.required = required
        self.defaultValue = defaultValue
    }

    /// The ClickHouse type on a server of `version`.
    func type(on version: ClickHouseVersion) -> String {
        switch self.kind {
        case .string, .json: "String"
        case .timestamp: version >= LoaderRoute.dateTime64Since ? "DateTime64(3, 'UTC')" : "DateTime('UTC')"
        case .int64: "Int64"
        case .uint64: "UInt64"
        case .float64: "Float64"
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
    /// The sorting key; it must include `dedupColumn`.
    public var orderBy: [String]
    /// Where messages that fail validation or that the table rejects go. Default: `<topic>.dlq`.
    public var deadLetterTopic: String

    /// `DateTime64` exists from ClickHouse 20.1 on.
    static let dateTime64Since = ClickHouseVersion(major: 20, minor: 1, patch: 0)
    /// `insert_deduplication_token` (with `non_replicated_deduplication_window`) from 22.2 on.
    static let dedupTokenSince = ClickHouseVersion(major: 22, minor: 2, patch: 0)

    public init(
        topic: String,
        table: String,
        columns: [LoaderColumn],
        dedupColumn: String = "event_id",
        timeColumn: String = "timestamp",
        orderBy: [String]? = nil,
        deadLetterTopic: String? = nil
    ) {
        self.topic = topic
        self.table = table
        self.columns = columns
        self.dedupColumn = dedupColumn
        self.timeColumn = timeColumn
        self.orderBy = orderBy ?? [dedupColumn]
        self.deadLetterTopic = deadLetterTopic ?? topic + ".dlq"
    }

    /// The normalized event the gateway writes, column for column.
    public static let eventColumns: [LoaderColumn] = [
        LoaderColumn("event_id", .string, required: true),
        LoaderColumn("action", .string, required: true),
        LoaderColumn("user_id", .string, required: true),
        LoaderColumn("timestamp", .timestamp, required: true),
        LoaderColumn("received_at", .timestamp, required: true),
        LoaderColumn("page", .string),
        LoaderColumn("object", .string),
        LoaderColumn("referrer", .string),
        LoaderColumn("session_id", .string),
        LoaderColumn("properties", .json, defaultValue: "{}"),
        LoaderColumn("client_ip", .string),
        LoaderColumn("user_agent", .string),
        LoaderColumn("gateway_id", .string),
        LoaderColumn("source", .string),
        LoaderColumn("schema_version", .uint64, defaultValue: "1"),
    ]

    /// Topic `events` into `sluice.events`.
    public static let events = LoaderRoute(
        topic: "events",
        table: "sluice.events",
        columns: Self.eventColumns,
        orderBy: ["action", "event_id"]
    )

    /// What is wrong with this route, if anything.
    public func validate() -> String? {
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
        if let missing = self.orderBy.first(where: { !names.contains($0) }) {
            return "order_by names '\(missing)', which is not a column of the route"
        }
        return nil
    }

    static func isIdentifier(_ text: String) -> Bool {
        guard let first = text.utf8.first, !(0x30...0x39).contains(first) else { return false }
        return text.utf8.allSatisfy {
            (0x30...0x39).contains($0) || (0x41...0x5A).contains($0) || (0x61...0x7A).contains($0) || $0 == 0x5F
        }
    }

    var database: String { String(self.table.split(separator: ".")[0]) }

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
            ORDER BY (\(self.orderBy.map { "`\($0)`" }.joined(separator: ", ")))
            """
        if version >= Self.dedupTokenSince {
            sql += "\nSETTINGS non_replicated_deduplication_window = 1000"
        }
        return sql
    }

    /// `INSERT INTO db.table (columns…) FORMAT JSONEachRow`.
    public var insertPrefix: String {
        "INSERT INTO \(self.table) (\(self.columns.map { "`\($0.name)`" }.joined(separator: ", "))) FORMAT JSONEachRow"
    }
}

/// Why a message cannot become a row.
public struct RowError: Error, CustomStringConvertible {
    public var description: String
}

/// Turns messages into `JSONEachRow` lines for one route.
public struct RowEncoder: Sendable {
    let route: LoaderRoute
    let version: ClickHouseVersion

    public init(route: LoaderRoute, version: ClickHouseVersion) {
        self.route = route
        self.version = version
    }

    /// One line (with its newline), and the event's `received_at` (unix ms) when present.
    public func encode(_ value: [UInt8]) throws(RowError) -> (line: [UInt8], receivedAtMillis: Int64?) {
        let parsed: JSONValue
        do {
            parsed = try JSONParser.parse(value)
        } catch {
            throw RowError(description: "not JSON: \(error)")
        }
        guard case .object(let members) = parsed else {
            throw RowError(description: "not a JSON object but a \(parsed.typeName)")
        }
        // A linear search: events have a dozen fields, fewer than hashing pays for.
        func field(_ name: String) -> JSONValue? { members.first { $0.0 == name }?.1 }
        var writer = JSONWriter()
        writer.bytes.reserveCapacity(value.count + 64)
        writer.raw("{")
        for (index, column) in self.route.columns.enumerated() {
            if index > 0 { writer.raw(",") }
            writer.string(column.name)
            writer.raw(":")
            let found = field(column.field)
            if let found, found != .null {
                try self.write(found, column, &writer)
            } else {
                if column.required { throw RowError(description: "missing required field '\(column.field)'") }
                try self.write(column.defaultValue.map(JSONValue.string) ?? Self.zero(column.kind), column, &writer)
            }
        }
        writer.raw("}\n")
        let received = field("received_at").flatMap { value -> Int64? in
            if case .string(let text) = value { return Timestamp.parse(text) }
            return nil
        }
        return (writer.bytes, received)
    }

    static func zero(_ kind: LoaderColumn.Kind) -> JSONValue {
        switch kind {
        case .string: .string("")
        case .json: .string("")
        case .timestamp: .number("0")
        case .int64, .uint64, .float64: .number("0")
        }
    }

    private func write(_ value: JSONValue, _ column: LoaderColumn, _ writer: inout JSONWriter) throws(RowError) {
        switch column.kind {
        case .string:
            switch value {
            case .string(let text): writer.string(text)
            case .number(let text): writer.string(text)
            case .bool(let flag): writer.string(flag ? "true" : "false")
            default: throw RowError(description: "field '\(column.field)' is a \(value.typeName), expected text")
            }
        case .json:
            if case .string(let text) = value, column.defaultValue == text || text.isEmpty {
                writer.string(text)
            } else {
                var inner = JSONWriter()
                inner.write(value)
                writer.string(String(decoding: inner.bytes, as: UTF8.self))
            }
        case .timestamp:
            let millis: Int64?
            switch value {
            case .string(let text): millis = Timestamp.parse(text) ?? Int64(text)
            case .number(let text): millis = Int64(text)
            default: millis = nil
            }
            guard let millis, millis >= 0, millis < 4_102_444_800_000 else {
                throw RowError(description: "field '\(column.field)' is not a time between 1970 and 2100: \(value)")
            }
            writer.bytes.append(UInt8(ascii: "\""))
            Timestamp.appendClickHouseText(
                millis: millis,
                fraction: self.version >= LoaderRoute.dateTime64Since,
                to: &writer.bytes
            )
            writer.bytes.append(UInt8(ascii: "\""))
        case .int64, .uint64, .float64:
            let text: String
            switch value {
            case .number(let number): text = number
            case .string(let string): text = string
            default: throw RowError(description: "field '\(column.field)' is a \(value.typeName), expected a number")
            }
            let valid: Bool =
                switch column.kind {
                case .int64: Int64(text) != nil
                case .uint64: UInt64(text) != nil
                default: Double(text).map { $0.isFinite } ?? false
                }
            guard valid else {
                throw RowError(description: "field '\(column.field)' = \(text) does not fit \(column.kind.rawValue)")
            }
            writer.raw(text)
        }
    }
}
