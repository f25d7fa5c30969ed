import ClickHouse
import EventModel
import Foundation

/// A route's table as ClickHouse describes it: what ``ReplayVerdict`` needs to say whether
/// loading a Kafka range again counts its events twice.
public struct ReplayTable: Sendable, Equatable {
    /// `database.table`.
    public var name: String
    /// `system.tables.engine` (`ReplacingMergeTree`, `ReplicatedMergeTree`…); nil when the table
    /// does not exist.
    public var engine: String?
    /// `system.tables.sorting_key`: `action, toDate(timestamp), object, event_id`.
    public var sortingKey: String
    /// `system.tables.partition_key`: `toYYYYMM(timestamp)`.
    public var partitionKey: String
    /// The insert-deduplication window settings that apply to the table (its own `SETTINGS`
    /// over the server's `system.merge_tree_settings`), by name; a setting the server does not
    /// have is absent.
    public var settings: [String: String]

    public init(
        name: String,
        engine: String?,
        sortingKey: String = "",
        partitionKey: String = "",
        settings: [String: String] = [:]
    ) {
        self.name = name
        self.engine = engine
        self.sortingKey = sortingKey
        self.partitionKey = partitionKey
        self.settings = settings
    }

    /// The merge-tree settings that bound ClickHouse's insert deduplication.
    public static let windowSettings = [
        "non_replicated_deduplication_window",
        "replicated_deduplication_window",
        "replicated_deduplication_window_seconds",
    ]

    /// Asks for the table's engine and keys: one `JSONEachRow` line, none when the table does not
    /// exist. The columns exist on ClickHouse 18.16 and on current releases. The names are
    /// plain identifiers (``LoaderRoute/validate()``), so they go in as literals unescaped.
    static func tableQuery(_ route: LoaderRoute) -> String {
        "SELECT engine, engine_full, sorting_key, partition_key FROM system.tables WHERE database = '\(route.database)'"
            + " AND name = '\(route.tableName)' FORMAT JSONEachRow"
    }

    /// Whether the server has `system.merge_tree_settings` (a count, `0` or `1`).
    static let settingsTableQuery =
        "SELECT count() FROM system.tables WHERE database = 'system' AND name = 'merge_tree_settings'"

    /// Asks for the server's defaults of ``windowSettings``: `JSONEachRow` lines of name and value.
    static let settingsQuery =
        "SELECT name, value FROM system.merge_tree_settings WHERE name IN ("
        + Self.windowSettings.map { "'\($0)'" }.joined(separator: ", ") + ") FORMAT JSONEachRow"

    /// Reads a route's table: its engine and keys, and the window settings that apply to it.
    ///
    /// - Throws: ``ClickHouseError`` as the client reports it; ``LoaderError`` with code
    ///   ``LoaderError/Code/invalidConfiguration`` when the answer cannot be read.
    public static func read(_ route: LoaderRoute, from clickHouse: ClickHouseClient) async throws -> ReplayTable {
        let table = try await clickHouse.query(Self.tableQuery(route))
        var defaults = ""
        let hasSettings = try await clickHouse.query(Self.settingsTableQuery)
        if hasSettings.trimmingCharacters(in: .whitespacesAndNewlines) != "0" {
            defaults = try await clickHouse.query(Self.settingsQuery)
        }
        return try Self.parse(name: route.table, table: table, serverSettings: defaults)
    }

    /// A table from the answers to ``tableQuery(_:)`` and ``settingsQuery``.
    static func parse(name: String, table: String, serverSettings: String) throws(LoaderError) -> ReplayTable {
        var settings: [String: String] = [:]
        for line in serverSettings.split(separator: "\n") where !line.isEmpty {
            let row = try Self.object(line)
            if case .string(let key)? = row["name"], case .string(let value)? = row["value"] {
                settings[key] = value
            }
        }
        guard let line = table.split(separator: "\n").first(where: { !$0.isEmpty }) else {
            return ReplayTable(name: name, engine: nil, settings: settings)
        }
        let row = try Self.object(line)
        guard case .string(let engine)? = row["engine"] else {
            throw LoaderError(.invalidConfiguration, message: "system.tables has no engine for \(name): \(line)")
        }
        func text(_ key: String) -> String {
            if case .string(let value)? = row[key] { return value }
            return ""
        }
        for (key, value) in Self.tableSettings(engineFull: text("engine_full"))
        where Self.windowSettings.contains(key) {
            settings[key] = value
        }
        return ReplayTable(
            name: name,
            engine: engine,
            sortingKey: text("sorting_key"),
            partitionKey: text("partition_key"),
            settings: settings
        )
    }

    private static func object(_ line: Substring) throws(LoaderError) -> JSONValue {
        guard let value = try? JSONParser.parse(Array(line.utf8)), case .object = value else {
            throw LoaderError(.invalidConfiguration, message: "cannot read ClickHouse's answer: \(line)")
        }
        return value
    }

    /// The `SETTINGS a = 1, b = 'x'` of an `engine_full`, by name (values as written, quotes
    /// removed).
    static func tableSettings(engineFull: String) -> [String: String] {
        guard let range = engineFull.range(of: " SETTINGS ", options: .backwards) else { return [:] }
        var settings: [String: String] = [:]
        for entry in ReplayVerdict.topLevel(String(engineFull[range.upperBound...])) {
            let parts = entry.split(separator: "=", maxSplits: 1)
            guard parts.count == 2 else { continue }
            var value = parts[1].trimmingCharacters(in: .whitespaces)
            if value.count >= 2 && value.hasPrefix("'") && value.hasSuffix("'") {
                value = String(value.dropFirst().dropLast())
            }
            settings[parts[0].trimmingCharacters(in: .whitespaces)] = value
        }
        return settings
    }
}

/// Whether loading a Kafka range into a table again counts its events twice: what `sluice
/// replay` says (and acts on) before it moves any offset.
///
/// Only a ReplacingMergeTree whose sorting key holds the route's dedup column (and is made
/// only of columns the loader writes, so every copy of an event has the same key) folds the
/// copies a replay inserts. ClickHouse's insert deduplication does not protect a replay: it
/// drops an insert only when its block (or its `insert_deduplication_token`) equals one of
/// the last N within the table's window, and the loader cuts batches by size and age as
/// messages arrive, so the replay's inserts hold other ranges than the first load's. It
/// protects a retried insert, which resends the same rows with the same token.
public struct ReplayVerdict: Sendable, Equatable {
    public enum Kind: String, Sendable {
        /// The copies fold (or there is nothing to copy): the replay may go.
        case deduplicated
        /// The replayed events would be counted twice: refused unless forced.
        case wouldDoubleCount = "would_double_count"
    }

    /// `database.table`.
    public var table: String
    /// The table's engine; nil when it does not exist.
    public var engine: String?
    public var kind: Kind
    /// Why, for a person: names what decided it.
    public var reason: String

    /// The verdict for replaying `route`'s topic into `table` on a server of `version`.
    public static func judge(_ table: ReplayTable, route: LoaderRoute, version: ClickHouseVersion) -> ReplayVerdict {
        func verdict(_ kind: Kind, _ reason: String) -> ReplayVerdict {
            ReplayVerdict(table: table.name, engine: table.engine, kind: kind, reason: reason)
        }
        let dedup = route.dedupColumn
        guard let engine = table.engine else {
            return verdict(
                .deduplicated,
                "the table does not exist: the loader creates it (a ReplacingMergeTree on \(dedup)), so nothing in it is counted twice"
            )
        }
        var family = engine
        for prefix in ["Replicated", "Shared"] where family.hasPrefix(prefix) { family.removeFirst(prefix.count) }
        switch family {
        case "ReplacingMergeTree":
            let key = Self.topLevel(table.sortingKey).map(Self.unquoted)
            guard key.contains(dedup) else {
                return verdict(
                    .wouldDoubleCount,
                    "a ReplacingMergeTree folds rows whose sorting key is equal, and this one's key (\(table.sortingKey)) does not hold \(dedup): the copies stay apart"
                )
            }
            let written = Set(route.columns.map(\.name))
            let foreign = Self.columns(in: table.sortingKey + ", " + table.partitionKey).filter {
                !written.contains($0)
            }
            if let column = foreign.first {
                return verdict(
                    .wouldDoubleCount,
                    "its sorting or partition key uses column \(column), which the loader does not write: a default (now(), rand()…) differs between the copies, and they stay apart"
                )
            }
            return verdict(
                .deduplicated,
                "a \(engine) with \(dedup) in its sorting key: the copies fold at merge time; until then count with FINAL or uniqExact(\(dedup))"
            )
        case "MergeTree":
            return verdict(
                .wouldDoubleCount,
                "a \(engine) keeps every copy: ClickHouse drops a repeated insert only within its deduplication window (\(Self.window(table, version: version))) and only when it holds the same rows, and a replay cuts its inserts anew"
            )
        case "SummingMergeTree", "AggregatingMergeTree", "CollapsingMergeTree", "VersionedCollapsingMergeTree",
            "GraphiteMergeTree":
            return verdict(.wouldDoubleCount, "a \(engine) adds the copies up rather than folding them")
        case "Distributed":
            return verdict(
                .wouldDoubleCount,
                "a Distributed table: Sluice cannot see its shards' tables; if they are ReplacingMergeTree tables with \(dedup) in their sorting key, replay with --force"
            )
        default:
            return verdict(.wouldDoubleCount, "a \(engine) table keeps every copy")
        }
    }

    /// The deduplication window that applies to `table`, for the reason of a verdict.
    static func window(_ table: ReplayTable, version: ClickHouseVersion) -> String {
        let settings = table.settings
        if table.engine?.hasPrefix("Replicated") == true || table.engine?.hasPrefix("Shared") == true {
            let blocks = settings["replicated_deduplication_window"] ?? "?"
            guard let seconds = settings["replicated_deduplication_window_seconds"] else {
                return "the last \(blocks) inserts"
            }
            return "the last \(blocks) inserts, at most \(seconds) s old"
        }
        guard let blocks = settings["non_replicated_deduplication_window"] else {
            return "none: ClickHouse \(version) deduplicates inserts only into Replicated tables"
        }
        if blocks == "0" { return "none: non_replicated_deduplication_window = 0" }
        return "the last \(blocks) inserts"
    }

    /// The comma-separated entries of `text` outside parentheses and quotes, trimmed.
    static func topLevel(_ text: String) -> [String] {
        var entries: [String] = []
        var current = ""
        var depth = 0
        var quote: Character?
        for character in text {
            if let open = quote {
                if character == open { quote = nil }
            } else if character == "'" || character == "`" || character == "\"" {
                quote = character
            } else if character == "(" {
                depth += 1
            } else if character == ")" {
                depth -= 1
            } else if character == "," && depth == 0 {
                entries.append(current.trimmingCharacters(in: .whitespaces))
                current = ""
                continue
            }
            current.append(character)
        }
        let last = current.trimmingCharacters(in: .whitespaces)
        if !last.isEmpty || !entries.isEmpty { entries.append(last) }
        return entries.filter { !$0.isEmpty }
    }

    /// A key entry without its backquotes (`event_id` for `` `event_id` ``).
    /// A key entry without its direction (`event_id DESC`, where the server allows descending
    /// keys) and its backquotes.
    static func unquoted(_ entry: String) -> String {
        var entry = entry
        for direction in [" DESC", " ASC"] where entry.uppercased().hasSuffix(direction) {
            entry = String(entry.dropLast(direction.count)).trimmingCharacters(in: .whitespaces)
        }
        guard entry.count >= 2, entry.hasPrefix("`"), entry.hasSuffix("`") else { return entry }
        return String(entry.dropFirst().dropLast())
    }

    /// Words of a key expression that are not columns.
    static let keywords: Set<String> = ["ASC", "DESC", "NULL", "AND", "OR", "NOT", "IN", "IS", "TRUE", "FALSE"]

    /// The column names a key expression reads: identifiers not followed by `(` (functions),
    /// outside string literals; backquoted names as written.
    static func columns(in expression: String) -> [String] {
        var names: [String] = []
        let characters = Array(expression)
        var index = 0
        func isStart(_ c: Character) -> Bool { c == "_" || (c.isASCII && c.isLetter) }
        func isPart(_ c: Character) -> Bool { isStart(c) || (c.isASCII && c.isNumber) }
        while index < characters.count {
            let character = characters[index]
            if character == "'" {
                index += 1
                while index < characters.count && characters[index] != "'" {
                    index += characters[index] == "\\" ? 2 : 1
                }
                index += 1
            } else if character == "`" {
                let start = index + 1
                index = start
                while index < characters.count && characters[index] != "`" { index += 1 }
                names.append(String(characters[start..<min(index, characters.count)]))
                index += 1
            } else if isStart(character) {
                let start = index
                while index < characters.count && isPart(characters[index]) { index += 1 }
                var next = index
                while next < characters.count && characters[next] == " " { next += 1 }
                let name = String(characters[start..<index])
                if (next >= characters.count || characters[next] != "(") && !Self.keywords.contains(name.uppercased()) {
                    names.append(name)
                }
            } else if character.isASCII && character.isNumber {
                // A number (or an identifier's digits handled above): skip it whole.
                while index < characters.count && isPart(characters[index]) { index += 1 }
            } else {
                index += 1
            }
        }
        return names
    }
}
