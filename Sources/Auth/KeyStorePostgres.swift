import Foundation
import Logging
import NIOCore
import NIOSSL
import PostgresNIO
import Synchronization

/// API keys in PostgreSQL (`auth.api_keys.postgres_url`): the store for a fleet of gateways.
///
/// Each row of the table (default `sluice_api_keys`, created if missing) holds one key's record
/// as JSON, with its id, name and hash as columns. The gateway side answers
/// ``lookup(sha256:)`` from memory; ``run()`` rereads the table every `pollInterval` (1 s), so
/// every gateway refuses a revoked key within a couple of seconds. While PostgreSQL is
/// unreachable the last good copy keeps serving; the outage and the recovery are logged once
/// each, and `sluice_auth_keystore_age_seconds{store="postgres"}` grows.
///
/// The admin side serialises its changes with a transaction-scoped advisory lock. The URL may
/// hold a password: it is never logged; ``redactedURL`` is safe to show.
public final class PostgresKeyStore: APIKeyLookup, APIKeyAdministration {
    public let pollInterval: Duration
    public let lastUsedFlushInterval: Duration
    /// How long one call may take before it fails and the gateway serves from its last good copy.
    public let answerTimeout: Duration
    /// The URL with its password replaced by `***`.
    public let redactedURL: String
    private let configuration: PostgresConnection.Configuration
    private let table: String
    private let logger: Logger
    private let cache = KeyStoreCache(store: "postgres")
    private let reachable = Mutex<Bool?>(nil)
    private let connectionIDs = Atomic<Int>(0)

    /// Parses `url` (`postgres://user:password@host:5432/db?sslmode=require`; `?host=/dir` for
    /// a unix socket directory). Does not connect.
    public init(
        url: String,
        table: String = "sluice_api_keys",
        logger: Logger = Logger(label: "sluice.auth.keys"),
        pollInterval: Duration = .seconds(1),
        lastUsedFlushInterval: Duration = .seconds(60),
        answerTimeout: Duration = .seconds(5)
    ) throws(KeyStoreError) {
        guard table.utf8.first.map({ !(48...57).contains($0) }) == true,
            table.utf8.allSatisfy({ (97...122).contains($0) || (48...57).contains($0) || $0 == 95 })
        else { throw KeyStoreError(.invalidArgument, "the table name must be lowercase letters, digits and _") }
        let parsed = try Self.parse(url: url)
        self.configuration = parsed.configuration
        self.redactedURL = parsed.redacted
        self.table = table
        self.logger = logger
        self.pollInterval = pollInterval
        self.lastUsedFlushInterval = lastUsedFlushInterval
        self.answerTimeout = answerTimeout
    }

    // MARK: Gateway side

    public func lookup(sha256: String) -> StoredAPIKey? { self.cache.lookup(sha256: sha256) }

    public func noteUsed(id: String, at date: Date) { self.cache.noteUsed(id: id, at: date) }

    /// Every key in the in-memory copy.
    public var snapshot: [StoredAPIKey] { self.cache.ring.keys }

    /// Whether the last attempt to read the table succeeded; nil before the first attempt.
    public var isReachable: Bool? { self.reachable.withLock { $0 } }

    /// Seconds since the in-memory copy last matched the table; nil before the first load.
    public var ageSeconds: Double? { self.cache.ageSeconds() }

    /// Rereads the table now (for SIGHUP, and before serving at start). Returns whether it
    /// succeeded; on failure the last good copy stays.
    @discardableResult
    public func reload() async -> Bool {
        do {
            try await self.withConnection { connection in try await self.load(connection) }
            return true
        } catch {
            return false
        }
    }

    /// Polls the table and flushes last-used times until the task is cancelled; then flushes
    /// once more and returns. One connection, reopened after a failure.
    public func run() async throws {
        var connection: PostgresConnection?
        var lastFlush = ContinuousClock.now
        while !Task.isCancelled {
            do {
                if connection == nil { connection = try await self.connect() }
                if let connection { try await self.load(connection) }
                if ContinuousClock.now - lastFlush >= self.lastUsedFlushInterval, let connection {
                    lastFlush = .now
                    try await self.flushLastUsed(connection)
                }
            } catch {
                self.markReachable(false, error: error)
                try? await connection?.close()
                connection = nil
            }
            _ = self.cache.ageSeconds()
            do { try await Task.sleep(for: self.pollInterval) } catch { break }
        }
        if let connection {
            try? await self.flushLastUsed(connection)
            try? await connection.close()
        }
    }

    /// Writes the noted last-used times now (each row only moves forward).
    public func flushLastUsed() async throws {
        try await self.withConnection { connection in try await self.flushLastUsed(connection) }
    }

    private func load(_ connection: PostgresConnection) async throws {
        let rows = try await self.deadline(closing: connection) {
            try await connection.query(
                "SELECT record::text FROM \(unescaped: self.table) ORDER BY id",
                logger: self.logger
            )
            .collect()
        }
        var keys: [StoredAPIKey] = []
        let decoder = KeyStoreCodec.decoder()
        for row in rows {
            let text = try row.decode(String.self)
            guard let key = try? decoder.decode(StoredAPIKey.self, from: Data(text.utf8)) else {
                throw KeyStoreError(.invalidStore, "a row of \(self.table) does not parse as a key record")
            }
            keys.append(key)
        }
        let ring = APIKeyRing(keys: keys)
        try ring.validate()
        if ring == self.cache.ring && self.isReachable == true {
            self.cache.confirm()
        } else {
            self.cache.replace(with: ring)
        }
        self.markReachable(true, error: nil)
    }

    private func flushLastUsed(_ connection: PostgresConnection) async throws {
        let used = self.cache.takePendingUse()
        guard !used.isEmpty else { return }
        let formatter = ISO8601DateFormatter()
        do {
            for (id, date) in used {
                let stamp = formatter.string(from: date)
                _ = try await self.deadline(closing: connection) {
                    try await connection.query(
                        """
                        UPDATE \(unescaped: self.table)
                        SET record = jsonb_set(record, '{last_used_at}', to_jsonb(\(stamp)::text)), updated_at = now()
                        WHERE id = \(id)
                          AND (record->>'last_used_at' IS NULL OR record->>'last_used_at' < \(stamp)::text)
                        """,
                        logger: self.logger
                    )
                }
            }
        } catch {
            self.cache.restore(used)
            throw error
        }
    }

    private func markReachable(_ now: Bool, error: (any Error)?) {
        let before = self.reachable.withLock { state in
            defer { state = now }
            return state
        }
        guard before != now else { return }
        if now {
            self.logger.notice(
                "API key store reachable",
                metadata: ["db.system": "postgresql", "keys": "\(self.cache.ring.keys.count)"]
            )
        } else {
            self.logger.error(
                "API key store unreachable; serving the last good copy",
                metadata: [
                    "db.system": "postgresql", "error.message": "\(error.map(Self.describe) ?? "unknown")",
                    "keys": "\(self.cache.ring.keys.count)",
                ]
            )
        }
    }

    // MARK: Admin side

    public func create(_ request: NewAPIKey, now: Date) async throws -> IssuedAPIKey {
        try await self.modify { ring throws(KeyStoreError) in try ring.create(request, now: now) }
    }

    public func list() async throws -> [StoredAPIKey] {
        try await self.withConnection { connection in
            try await self.load(connection)
            return self.cache.ring.keys.sorted { ($0.createdAt, $0.id) < ($1.createdAt, $1.id) }
        }
    }

    public func revoke(name: String, now: Date) async throws -> [StoredAPIKey] {
        try await self.modify { ring throws(KeyStoreError) in try ring.revoke(name: name, now: now) }
    }

    public func roll(name: String, grace: Duration, now: Date) async throws -> IssuedAPIKey {
        try await self.modify { ring throws(KeyStoreError) in try ring.roll(name: name, grace: grace, now: now) }
    }

    /// In one transaction holding the store's advisory lock: read all keys, apply `change`,
    /// write the rows that differ.
    private func modify<T: Sendable>(
        _ change: @escaping @Sendable (inout APIKeyRing) throws(KeyStoreError) -> T
    ) async throws -> T {
        try await self.withConnection { connection in
            try await connection.query("BEGIN", logger: self.logger)
            do {
                try await connection.query("SELECT pg_advisory_xact_lock(\(Self.lockID))", logger: self.logger)
                try await self.load(connection)
                let original = self.cache.ring
                var ring = original
                let result = try change(&ring)
                let before = Dictionary(original.keys.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
                let encoder = JSONEncoder()
                encoder.dateEncodingStrategy = .iso8601
                encoder.outputFormatting = [.sortedKeys]
                for key in ring.keys where before[key.id] != key {
                    let json = String(decoding: try encoder.encode(key), as: UTF8.self)
                    try await connection.query(
                        """
                        INSERT INTO \(unescaped: self.table) (id, name, sha256, record, updated_at)
                        VALUES (\(key.id), \(key.name), \(key.sha256), \(json)::jsonb, now())
                        ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, record = EXCLUDED.record, updated_at = now()
                        """,
                        logger: self.logger
                    )
                }
                try await connection.query("COMMIT", logger: self.logger)
                self.cache.replace(with: ring)
                return result
            } catch {
                _ = try? await connection.query("ROLLBACK", logger: self.logger)
                throw error
            }
        }
    }

    /// "slui" in ASCII: the advisory lock every Sluice key store takes to change keys.
    private static let lockID: Int64 = 0x736c_7569

    // MARK: Connections

    private func connect() async throws -> PostgresConnection {
        let connection: PostgresConnection
        do {
            let configuration = self.configuration
            let id = self.connectionIDs.add(1, ordering: .relaxed).newValue
            let logger = self.logger
            connection = try await self.deadline {
                try await PostgresConnection.connect(configuration: configuration, id: id, logger: logger)
            }
        } catch let error as KeyStoreError {
            throw error
        } catch {
            throw KeyStoreError(
                .database,
                "cannot connect to PostgreSQL at \(self.redactedURL): \(Self.describe(error))"
            )
        }
        do {
            try await self.deadline(closing: connection) {
                try await connection.query("BEGIN", logger: self.logger)
                try await connection.query("SELECT pg_advisory_xact_lock(\(Self.lockID))", logger: self.logger)
                try await connection.query(
                    """
                    CREATE TABLE IF NOT EXISTS \(unescaped: self.table) (
                        id text PRIMARY KEY,
                        name text NOT NULL,
                        sha256 text NOT NULL UNIQUE,
                        record jsonb NOT NULL,
                        updated_at timestamptz NOT NULL DEFAULT now()
                    )
                    """,
                    logger: self.logger
                )
                try await connection.query("COMMIT", logger: self.logger)
            }
        } catch {
            try? await connection.close()
            throw KeyStoreError(.database, "cannot create the table \(self.table): \(Self.describe(error))")
        }
        return connection
    }

    private func withConnection<T: Sendable>(
        _ body: @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        let connection: PostgresConnection
        do { connection = try await self.connect() } catch {
            self.markReachable(false, error: error)
            throw error
        }
        do {
            let result = try await body(connection)
            try? await connection.close()
            return result
        } catch {
            try? await connection.close()
            if let error = error as? KeyStoreError { throw error }
            throw KeyStoreError(.database, "PostgreSQL failed: \(Self.describe(error))")
        }
    }

    /// Fails a call that hangs past `answerTimeout` (5 s by default) — and returns then, without waiting for it: a query
    /// on a server that stopped mid-answer may not return for as long as TCP takes to notice,
    /// and a structured wait (a task group) would hold the poll loop, and so the recovery
    /// after the server is back, for all that time. The stuck call is cancelled and, when it
    /// runs on `connection`, the connection is closed, which makes it fail and end.
    private func deadline<T: Sendable>(
        closing connection: PostgresConnection? = nil,
        _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        let outcome = DeadlineOutcome<T>()
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            outcome.waiting.withLock { $0 = continuation }
            let work = Task { try await body() }
            let timer = Task {
                guard (try? await Task.sleep(for: self.answerTimeout)) != nil else { return }
                guard let waiting = outcome.take() else { return }
                // Said at once: the gateway must know it serves from its last good copy.
                let error = KeyStoreError(.database, "PostgreSQL did not answer within \(self.answerTimeout)")
                self.markReachable(false, error: error)
                work.cancel()
                waiting.resume(throwing: error)
                if let connection { try? await connection.close() }
            }
            Task {
                let result = await work.result
                timer.cancel()
                outcome.take()?.resume(with: result)
            }
        }
    }

    // MARK: URL

    /// A driver error as a short sentence: the server's message or the connection failure,
    /// never the URL (which may hold a password) or query parameters.
    static func describe(_ error: any Error) -> String {
        if let error = error as? KeyStoreError { return error.message }
        if let error = error as? PSQLError {
            if let message = error.serverInfo?[.message] { return message }
            if let underlying = error.underlying { return "\(error.code): \(underlying)" }
            return "\(error.code)"
        }
        return "\(error)"
    }

    /// `postgres://user:password@host:port/database?sslmode=…&host=/socket/dir` → a connection
    /// configuration and the URL with the password masked.
    static func parse(
        url text: String
    ) throws(KeyStoreError) -> (configuration: PostgresConnection.Configuration, redacted: String) {
        guard let components = URLComponents(string: text),
            components.scheme == "postgres" || components.scheme == "postgresql"
        else {
            throw KeyStoreError(
                .invalidArgument,
                "the PostgreSQL URL must look like postgres://user@host:5432/database"
            )
        }
        var redacted = components
        if components.password != nil { redacted.password = "***" }
        let shown = redacted.string ?? "postgres://…"
        let query = Dictionary(
            (components.queryItems ?? []).map { ($0.name, $0.value ?? "") },
            uniquingKeysWith: { _, last in last }
        )
        let user = components.user ?? "postgres"
        let password = components.password
        let database = components.path.isEmpty || components.path == "/" ? nil : String(components.path.dropFirst())
        let port = components.port ?? 5432
        var configuration: PostgresConnection.Configuration
        if let socketDirectory = query["host"], socketDirectory.hasPrefix("/") {
            configuration = .init(
                unixSocketPath: "\(socketDirectory)/.s.PGSQL.\(port)",
                username: user,
                password: password,
                database: database
            )
        } else {
            guard let host = components.host, !host.isEmpty else {
                throw KeyStoreError(.invalidArgument, "the PostgreSQL URL \(shown) has no host")
            }
            let tls: PostgresConnection.Configuration.TLS
            do {
                switch query["sslmode"] ?? "prefer" {
                case "disable":
                    tls = .disable
                case "prefer", "allow":
                    var settings = TLSConfiguration.makeClientConfiguration()
                    settings.certificateVerification = .none
                    tls = .prefer(try NIOSSLContext(configuration: settings))
                case "require":
                    var settings = TLSConfiguration.makeClientConfiguration()
                    settings.certificateVerification = .none
                    tls = .require(try NIOSSLContext(configuration: settings))
                case "verify-ca", "verify-full":
                    var settings = TLSConfiguration.makeClientConfiguration()
                    if let root = query["sslrootcert"] { settings.trustRoots = .file(root) }
                    tls = .require(try NIOSSLContext(configuration: settings))
                default:
                    throw KeyStoreError(
                        .invalidArgument,
                        "sslmode must be disable, prefer, require, verify-ca or verify-full"
                    )
                }
            } catch let error as KeyStoreError {
                throw error
            } catch {
                throw KeyStoreError(.invalidArgument, "cannot set up TLS for PostgreSQL: \(error)")
            }
            configuration = .init(
                host: host,
                port: port,
                username: user,
                password: password,
                database: database,
                tls: tls
            )
        }
        configuration.options.connectTimeout = .seconds(3)
        return (configuration, shown)
    }
}

/// Whichever of a call and its deadline finishes first resumes the caller; the other finds
/// nothing left to resume.
private final class DeadlineOutcome<T: Sendable>: Sendable {
    let waiting = Mutex<CheckedContinuation<T, any Error>?>(nil)

    func take() -> CheckedContinuation<T, any Error>? { self.waiting.withLock { $0.take() } }
}
