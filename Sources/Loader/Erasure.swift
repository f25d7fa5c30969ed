import ClickHouse
import Crypto
import Encryption
import Foundation
import Logging
import SluiceCore
import Synchronization

/// `loader.erasure.*`: where the record of erased users lives and the key that hides their ids.
///
/// The record is a ClickHouse table (``table``) so that every loader of a fleet, and `sluice
/// erase` run from anywhere, agree on one list without another store. It keeps a keyed hash
/// of each erased user id (HMAC-SHA256 under ``keyFile``), never the id: a backup of
/// ClickHouse or anyone who can read the table cannot tell who was erased, and cannot test a
/// guess (ids are often guessable: e-mail addresses, sequential numbers), which a plain
/// SHA-256 would allow. The loaders hold the same key and compare each event's hashed user id.
public struct ErasureConfiguration: Sendable {
    /// `database.table` of the erasure record. Default: `sluice.erasures`.
    public var table = "sluice.erasures"
    /// How often a running loader reads the record again: the longest a new erasure takes to
    /// reach every loader. Default: 5 s.
    public var refresh: Duration = .seconds(5)
    /// The HMAC key's file (64 hex digits, mode 0600); needed by `sluice erase`, and by the
    /// loaders once anything was erased.
    public var keyFile: String?
    /// The key read from ``keyFile``.
    package var key: SymmetricKey?

    public init() {}

    /// Uses the 32 bytes `keyBytes` (tests, benchmarks) instead of a key file.
    package init(keyBytes: [UInt8], table: String = "sluice.erasures", refresh: Duration = .seconds(5)) {
        self.key = SymmetricKey(data: keyBytes)
        self.table = table
        self.refresh = refresh
    }

    /// The `loader.erasure.*` keys (docs/configuration.md); their defaults are this struct's.
    package static let keys: [ConfigurationKey<ErasureConfiguration>] = [
        ConfigurationKey(
            path: "loader.erasure.table",
            kind: .string,
            help: "database.table recording erased users (keyed hashes), read by every loader",
            read: { $0.table },
            apply: { configuration, value, key in
                let parts = value.text.split(separator: ".", omittingEmptySubsequences: false)
                guard parts.count == 2, parts.allSatisfy({ LoaderRoute.isIdentifier(String($0)) }) else {
                    throw value.fail(key.path, "database.table of letters, digits and underscores")
                }
                configuration.table = value.text
            }
        ),
        .duration(
            "loader.erasure.refresh",
            \.refresh,
            atLeast: .milliseconds(100),
            atMost: .seconds(3600),
            help: "how often loaders re-read the erasure record"
        ),
        ConfigurationKey(
            path: "loader.erasure.key_file",
            kind: .string,
            help: "HMAC key of erased user ids: 64 hex digits, mode 0600 (the same on every loader)",
            read: { $0.keyFile },
            apply: { configuration, value, key in
                configuration.key = try Keyring.readKeyFile(value.text, key: key.path, origin: value.origin)
                configuration.keyFile = value.text
            }
        ),
    ]

    var database: String { String(self.table.split(separator: ".")[0]) }
    var tableName: String { String(self.table.split(separator: ".").last ?? "") }

    /// The record's table: one row per step of an erasure (`recorded`, then `done` with what
    /// was removed), ordered for the loaders' read. Plain SQL that 18.16 and current releases
    /// both take.
    var createTable: String {
        """
        CREATE TABLE IF NOT EXISTS \(self.table)
        (
            `key_id` String,
            `user_hash` String,
            `erased_at` DateTime('UTC'),
            `status` String,
            `rows_removed` UInt64,
            `tables` String
        )
        ENGINE = MergeTree()
        ORDER BY (`key_id`, `user_hash`)
        """
    }
}

/// The keyed hash of user ids, and the id of the key itself.
package struct ErasureKey: Sendable {
    package let key: SymmetricKey
    /// 16 hex digits derived from the key (not the key): stored with each erasure so that a
    /// loader with another key notices instead of silently matching nothing.
    package let id: String

    package init(_ key: SymmetricKey) {
        self.key = key
        self.id =
            Hex.encode(HMAC<SHA256>.authenticationCode(for: Array("sluice erasure key id".utf8), using: key))
            .prefix(16).description
    }

    /// HMAC-SHA256 of the user id's UTF-8 bytes.
    package func hash(_ userID: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: userID, using: self.key))
    }

}

/// The erased users a loader knows of: read at start and every ``ErasureConfiguration/refresh``.
///
/// Thread-safe: the encoding tasks take a ``Snapshot`` per batch slice, the refresh replaces it.
final class ErasureList: Sendable {
    /// The hashes of erased users and the key to hash an event's user id with.
    struct Snapshot: Sendable {
        let key: ErasureKey
        let hashes: Set<[UInt8]>

        func contains(_ userID: [UInt8]) -> Bool {
            self.hashes.contains(self.key.hash(userID))
        }
    }

    let configuration: ErasureConfiguration
    private let current = Mutex<Snapshot?>(nil)
    private let known = Atomic<Int>(0)

    init(configuration: ErasureConfiguration) {
        self.configuration = configuration
    }

    /// nil while nobody was erased: the loader then checks nothing (no cost per event).
    var snapshot: Snapshot? { self.current.withLock { $0 } }
    /// Erased users known (distinct hashes).
    var count: Int { self.known.load(ordering: .relaxed) }

    /// Creates the record's table when missing (like the routes' tables).
    func prepare(_ clickHouse: ClickHouseClient) async throws(ClickHouseError) {
        try await clickHouse.execute("CREATE DATABASE IF NOT EXISTS \(self.configuration.database)")
        try await clickHouse.execute(self.configuration.createTable)
    }

    /// Reads the record again; answers how many erasures are new.
    ///
    /// - Throws: ``ClickHouseError`` when ClickHouse does not answer (the previous list stays),
    ///   ``LoaderError`` with code ``LoaderError/Code/invalidConfiguration`` when the record
    ///   holds erasures this loader cannot apply: no `loader.erasure.key_file`, or another key.
    func refresh(_ clickHouse: ClickHouseClient) async throws -> Int {
        let text = try await clickHouse.query(
            "SELECT DISTINCT key_id, user_hash FROM \(self.configuration.table) FORMAT TabSeparated"
        )
        var hashes: Set<[UInt8]> = []
        var foreign: Set<Substring> = []
        let key = self.configuration.key.map(ErasureKey.init)
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false)
            guard fields.count == 2, let hash = Hex.decode(fields[1]), hash.count == 32 else { continue }
            guard let key, fields[0] == key.id else {
                foreign.insert(fields[0])
                continue
            }
            hashes.insert(hash)
        }
        if !foreign.isEmpty {
            let why =
                key == nil
                ? "no loader.erasure.key_file is configured"
                : "this loader's key is \(key!.id), the record has \(foreign.sorted().joined(separator: ", "))"
            throw LoaderError(
                .invalidConfiguration,
                message:
                    "\(self.configuration.table) records erased users this loader cannot recognise (\(why)): "
                    + "loading would bring their events back; give every loader the key `sluice erase` used"
            )
        }
        guard let key else { return 0 }
        let before = self.known.exchange(hashes.count, ordering: .relaxed)
        self.current.withLock { $0 = hashes.isEmpty ? nil : Snapshot(key: key, hashes: hashes) }
        return max(0, hashes.count - before)
    }
}

extension RowEncoder {
    /// Whether the message just encoded with `scratch` is an erased user's: its user field
    /// (the route's ``LoaderRoute/userColumn``), as the column stores it, hashed under the
    /// erasure key and found in `erasures`.
    func isErased(
        _ message: UnsafeBufferPointer<UInt8>,
        scratch: inout Scratch,
        erasures: ErasureList.Snapshot
    ) -> Bool {
        guard let key = self.userKey else { return false }
        let slot = scratch.slots[key]
        guard slot >= 0 else { return false }
        let member = scratch.scanner.members[slot]
        guard member.kind != .null else { return false }
        scratch.text.removeAll(keepingCapacity: true)
        Self.appendText(of: member, in: message, to: &scratch.text)
        return erasures.contains(scratch.text)
    }
}

/// `sluice erase`: removes one user's rows from every routed table and records the erasure so
/// that loaders drop the user's events from then on, replays included.
///
/// Order matters. The record goes first, then the command waits ``settle`` so that running
/// loaders have read it (they refresh every ``ErasureConfiguration/refresh``) and no longer
/// insert the user's rows; only then are the rows deleted (`ALTER TABLE … DELETE`, an
/// asynchronous mutation whose end is awaited in `system.mutations`). Rows that arrive anyway
/// (a batch encoded before its loader learned of the erasure and inserted after the delete)
/// are found by a count after the mutation and deleted in another pass. Running it again is
/// safe: the record takes the user once more, the deletes find nothing.
public struct UserErasure: Sendable {
    /// What happened to one routed table.
    public struct TableResult: Sendable, Equatable {
        public var table: String
        /// Rows deleted (every stored copy: duplicates not yet merged count).
        public var rowsRemoved: Int
        /// Why nothing was deleted, when the table was not touched.
        public var skipped: String?
    }

    /// What the erasure did.
    public struct Report: Sendable {
        /// The stored form of the erasure: `key_id:user_hash` (prefix), never the user id.
        public var record: String
        public var tables: [TableResult]
        public var rowsRemoved: Int { self.tables.reduce(0) { $0 + $1.rowsRemoved } }
    }

    public var configuration: LoaderConfiguration
    /// How long to wait between recording and deleting. Default: twice the refresh plus the
    /// batch age, so a running loader has read the record and flushed what it encoded before.
    public var settle: Duration
    /// How long one table's mutation may take before the command gives up.
    public var mutationTimeout: Duration = .seconds(600)
    private let logger: Logger

    public init(configuration: LoaderConfiguration, logger: Logger) {
        self.configuration = configuration
        self.settle = configuration.erasure.refresh * 2 + configuration.batchAge
        self.logger = logger
    }

    /// Erases `userID` from the routed tables (`tables`: only these; nil: all), telling
    /// `progress` what it does.
    ///
    /// - Throws: ``LoaderError`` with ``LoaderError/Code/invalidConfiguration`` for input that
    ///   cannot work (an empty id, no key, a table that is not routed), before anything is
    ///   changed; ``LoaderError/Code/erasureFailed`` when ClickHouse refuses or does not
    ///   answer (run it again once it does).
    public func erase(
        userID: String,
        tables: [String]? = nil,
        progress: @Sendable (String) -> Void = { _ in }
    ) async throws(LoaderError) -> Report {
        guard !userID.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
            throw LoaderError(.invalidConfiguration, message: "the user id is empty")
        }
        guard let rawKey = self.configuration.erasure.key else {
            throw LoaderError(
                .invalidConfiguration,
                message:
                    "erasure needs loader.erasure.key_file (64 hex digits, mode 0600), the same file every loader reads"
            )
        }
        var routes: [LoaderRoute] = []
        for route in self.configuration.routes where !routes.contains(where: { $0.table == route.table }) {
            routes.append(route)
        }
        if let tables {
            let routed = Set(routes.map(\.table))
            if let unknown = tables.first(where: { !routed.contains($0) }) {
                throw LoaderError(
                    .invalidConfiguration,
                    message:
                        "table \(unknown) is not a routed table (routed: \(routes.map(\.table).joined(separator: ", ")))"
                )
            }
            routes = routes.filter { tables.contains($0.table) }
        }
        let key = ErasureKey(rawKey)
        let hash = Hex.encode(key.hash(Array(userID.utf8)))
        let record = "\(key.id):\(hash.prefix(16))"
        let clickHouse = ClickHouseClient(self.configuration.clickHouse, logger: self.logger)
        do {
            let report = try await self.erase(
                userID: userID,
                hash: hash,
                key: key,
                record: record,
                routes: routes,
                clickHouse: clickHouse,
                progress: progress
            )
            try? await clickHouse.shutdown()
            return report
        } catch {
            try? await clickHouse.shutdown()
            if let error = error as? LoaderError { throw error }
            throw LoaderError(
                .erasureFailed,
                message: "the erasure did not complete (running it again is safe)",
                cause: error
            )
        }
    }

    private func erase(
        userID: String,
        hash: String,
        key: ErasureKey,
        record: String,
        routes: [LoaderRoute],
        clickHouse: ClickHouseClient,
        progress: @Sendable (String) -> Void
    ) async throws -> Report {
        let erasure = self.configuration.erasure
        _ = try await clickHouse.serverVersion()
        try await ErasureList(configuration: erasure).prepare(clickHouse)
        try await clickHouse.execute(
            "INSERT INTO \(erasure.table) (key_id, user_hash, erased_at, status, rows_removed, tables) VALUES "
                + "('\(key.id)', '\(hash)', now(), 'recorded', 0, '')"
        )
        progress(
            "recorded erasure \(record) in \(erasure.table); waiting \(ConfigurationValue.text(of: self.settle)) for running loaders to read it"
        )
        try await Task.sleep(for: self.settle)
        var results: [TableResult] = []
        for route in routes {
            guard let column = route.userColumn else {
                results.append(TableResult(table: route.table, rowsRemoved: 0, skipped: "no user column"))
                continue
            }
            let exists = try await Self.scalar(
                clickHouse,
                "SELECT count() FROM system.tables WHERE database = '\(route.database)' AND name = '\(route.tableName)'"
            )
            guard exists > 0 else {
                results.append(TableResult(table: route.table, rowsRemoved: 0, skipped: "the table does not exist yet"))
                continue
            }
            let removed = try await self.delete(
                userID: userID,
                column: column,
                route: route,
                clickHouse: clickHouse,
                progress: progress
            )
            results.append(TableResult(table: route.table, rowsRemoved: removed, skipped: nil))
        }
        let summary = results.map { "\($0.table)=\($0.skipped == nil ? String($0.rowsRemoved) : "skipped")" }
        let total = results.reduce(0) { $0 + $1.rowsRemoved }
        try await clickHouse.execute(
            "INSERT INTO \(erasure.table) (key_id, user_hash, erased_at, status, rows_removed, tables) VALUES "
                + "('\(key.id)', '\(hash)', now(), 'done', \(total), \(Self.literal(summary.joined(separator: " "))))"
        )
        self.logger.notice("erasure.done", metadata: ["record": "\(record)", "rows": "\(total)"])
        return Report(record: record, tables: results)
    }

    /// Deletes the user's rows of one table, pass after pass until a count after the mutation
    /// finds none (at most three passes); answers how many rows went.
    private func delete(
        userID: String,
        column: String,
        route: LoaderRoute,
        clickHouse: ClickHouseClient,
        progress: @Sendable (String) -> Void
    ) async throws -> Int {
        let statements = Self.statements(route: route, column: column, userID: userID)
        var removed = 0
        for pass in 1...3 {
            let before = try await Self.scalar(clickHouse, statements.count)
            if before == 0 { return removed }
            if pass > 1 {
                progress("\(route.table): \(before) row(s) arrived after the delete; deleting again")
            }
            try await clickHouse.execute(statements.delete)
            try await self.awaitMutations(route: route, query: statements.pendingMutations, clickHouse: clickHouse)
            let after = try await Self.scalar(clickHouse, statements.count)
            removed += max(0, before - after)
            if after == 0 { return removed }
        }
        throw LoaderError(
            .erasureFailed,
            message:
                "\(route.table) still has rows of the user after three deletes: a loader without the erasure record is still inserting them (check loader.erasure.* on every loader)"
        )
    }

    /// Waits until the table has no unfinished mutation (`system.mutations.is_done`): the
    /// delete is asynchronous on every version, and `mutations_sync` exists only from 19.x.
    private func awaitMutations(route: LoaderRoute, query: String, clickHouse: ClickHouseClient) async throws {
        let deadline = ContinuousClock.now + self.mutationTimeout
        while try await Self.scalar(clickHouse, query) > 0 {
            guard ContinuousClock.now < deadline else {
                throw LoaderError(
                    .erasureFailed,
                    message:
                        "the delete on \(route.table) has not finished after \(self.mutationTimeout) (see system.mutations)"
                )
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// The SQL of one table's erasure: count the user's rows, delete them, count the table's
    /// unfinished mutations. Plain SQL that 18.16 and current releases both take (ChDBTests).
    static func statements(
        route: LoaderRoute,
        column: String,
        userID: String
    ) -> (count: String, delete: String, pendingMutations: String) {
        let condition = "`\(column)` = \(Self.literal(userID))"
        return (
            "SELECT count() FROM \(route.table) WHERE \(condition)",
            "ALTER TABLE \(route.table) DELETE WHERE \(condition)",
            "SELECT count() FROM system.mutations WHERE database = '\(route.database)'"
                + " AND table = '\(route.tableName)' AND is_done = 0"
        )
    }

    static func scalar(_ clickHouse: ClickHouseClient, _ sql: String) async throws -> Int {
        let text = try await clickHouse.query(sql + " FORMAT TabSeparated")
        guard let value = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw ClickHouseError(.invalidResponse, message: "expected a number, got \(text.prefix(80))")
        }
        return value
    }

    /// A ClickHouse string literal: quotes and backslashes escaped.
    static func literal(_ text: String) -> String {
        var escaped = "'"
        for character in text.unicodeScalars {
            switch character {
            case "\\": escaped += "\\\\"
            case "'": escaped += "\\'"
            case "\n": escaped += "\\n"
            case "\r": escaped += "\\r"
            case "\t": escaped += "\\t"
            case "\0": escaped += "\\0"
            default: escaped.unicodeScalars.append(character)
            }
        }
        return escaped + "'"
    }
}
