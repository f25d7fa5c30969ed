import Foundation
import Logging
import Metrics
import SluiceCore
import Synchronization

/// One API key as a store keeps it: its SHA-256, never the key itself.
public struct StoredAPIKey: Sendable, Hashable, Codable {
    /// The key's public id (the 10 characters after `slk_live_`).
    public var id: String
    /// Unique among current keys; the principal is `key:<name>` (or `pkey:<name>`). A rolled
    /// key keeps its name until its grace period ends.
    public var name: String
    public var kind: APIKeyKind
    public var environment: APIKeyEnvironment
    /// Lowercase hex SHA-256 of the whole key.
    public var sha256: String
    /// The key's last 4 characters (part of its checksum), for the masked display.
    public var last4: String
    /// Normalised origins (`https://shop.example`) a publishable key may be used from; `*` for any.
    public var allowedOrigins: [String]
    /// Actions this key may send; nil: any (the gateway's policy decides).
    public var allowedActions: [String]?
    /// Largest batch this key may send; nil: the gateway's limit.
    public var maxBatch: Int?
    /// Rate override such as `50/s`; nil: the default for the key's kind.
    public var rate: String?
    /// Burst for `rate`; nil: one window's worth.
    public var burst: Int?
    public var createdAt: Date
    public var expiresAt: Date?
    public var revokedAt: Date?
    public var lastUsedAt: Date?
    /// The id of the key that replaced this one by `roll`; this one expires after the grace.
    public var replacedBy: String?
    /// What the key may do (``APIKeyScope``); nil: ``APIKeyScope/defaults`` (send events), as
    /// every key made before scopes existed.
    public var scopes: [String]?

    public init(
        id: String,
        name: String,
        kind: APIKeyKind,
        environment: APIKeyEnvironment,
        sha256: String,
        last4: String,
        allowedOrigins: [String] = [],
        allowedActions: [String]? = nil,
        maxBatch: Int? = nil,
        rate: String? = nil,
        burst: Int? = nil,
        createdAt: Date,
        expiresAt: Date? = nil,
        revokedAt: Date? = nil,
        lastUsedAt: Date? = nil,
        replacedBy: String? = nil,
        scopes: [String]? = nil
    ) {
        self.id = id
        self.name = name
        self.kind = kind
        self.environment = environment
        self.sha256 = sha256
        self.last4 = last4
        self.allowedOrigins = allowedOrigins
        self.allowedActions = allowedActions
        self.maxBatch = maxBatch
        self.rate = rate
        self.burst = burst
        self.createdAt = createdAt
        self.expiresAt = expiresAt
        self.revokedAt = revokedAt
        self.lastUsedAt = lastUsedAt
        self.replacedBy = replacedBy
        self.scopes = scopes
    }

    enum CodingKeys: String, CodingKey {
        case id, name, kind, environment, sha256, last4, rate, burst, scopes
        case allowedOrigins = "allowed_origins"
        case allowedActions = "allowed_actions"
        case maxBatch = "max_batch"
        case createdAt = "created_at"
        case expiresAt = "expires_at"
        case revokedAt = "revoked_at"
        case lastUsedAt = "last_used_at"
        case replacedBy = "replaced_by"
    }

    /// `slk_live_ab12cd34ef…wxyz`: what listings and logs show.
    public var masked: String { "\(self.kind.prefix)_\(self.environment.rawValue)_\(self.id)…\(self.last4)" }

    /// The key's own rate limit, if it has one.
    public var rateLimit: RateLimit? { self.rate.flatMap { RateLimit($0, burst: self.burst) } }

    /// The principal this key proves.
    public var principal: Principal { Principal(kind: self.kind.principalKind, name: self.name) }

    /// Whether the key may do what `scope` names (its scopes, or the defaults when it has none).
    public func allows(_ scope: String) -> Bool { (self.scopes ?? APIKeyScope.defaults).contains(scope) }

    /// `revoked`, `expired`, `rolled` (in its grace period) or `active` at `now`.
    public func state(at now: Date) -> String {
        if let revoked = self.revokedAt, revoked <= now { return "revoked" }
        if let expires = self.expiresAt, expires <= now { return "expired" }
        return self.replacedBy == nil ? "active" : "rolled"
    }
}

/// What an API key may do. A key made without `--scope` sends events, as every key did before
/// scopes existed; reading the stats API takes a key made with `--scope stats:read` (alone, a
/// key that reads and cannot write).
public enum APIKeyScope {
    /// Send events (every ingest route).
    public static let eventsWrite = "events:write"
    /// Read the stats API (`GET /v1/stats/…`). Never on a publishable key: a browser page
    /// shows it to anyone who looks.
    public static let statsRead = "stats:read"
    /// The scopes a key may have.
    public static let known = [eventsWrite, statsRead]
    /// The scopes of a key made without any.
    public static let defaults = [eventsWrite]
}

/// Why a key store operation failed: a sentence for the operator, never containing a key or a
/// password.
public struct KeyStoreError: Error, Sendable, CustomStringConvertible, Equatable {
    public enum Code: String, Sendable {
        /// `create` with a name that is already taken.
        case nameExists = "name_exists"
        /// `revoke` or `roll` of a name that has no key.
        case unknownName = "unknown_name"
        /// Bad input: origin, duration, rate, name.
        case invalidArgument = "invalid_argument"
        /// The stored data does not parse or breaks an invariant.
        case invalidStore = "invalid_store"
        /// Reading or writing the file failed.
        case io
        /// PostgreSQL failed or is unreachable.
        case database
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { self.message }
}

/// What the gateway asks a key store on every request. Implementations answer from memory.
public protocol APIKeyLookup: Sendable {
    /// The record whose SHA-256 hex equals `sha256` (compared in constant time), or nil.
    func lookup(sha256: String) -> StoredAPIKey?
    /// Remembers that key `id` was used at `date`; written to the store in batches at most
    /// once per flush interval (one minute by default), never on the request path.
    func noteUsed(id: String, at date: Date)
}

/// What `sluice keys` does to a store.
public protocol APIKeyAdministration: Sendable {
    /// Creates a key and returns it; only its hash is stored, so this is the one time the
    /// plaintext exists.
    func create(_ request: NewAPIKey, now: Date) async throws -> IssuedAPIKey
    /// Every key, revoked and expired ones included, oldest first.
    func list() async throws -> [StoredAPIKey]
    /// Revokes every key named `name` (the current one and any in a roll's grace period).
    /// Returns the records it changed; empty when they were all revoked already.
    func revoke(name: String, now: Date) async throws -> [StoredAPIKey]
    /// Issues a new key for `name` with the same settings; the old one stays valid for `grace`.
    func roll(name: String, grace: Duration, now: Date) async throws -> IssuedAPIKey
}

/// A key store as the gateway runs it: lookups from memory, a background loop, a reload on
/// demand. ``FileKeyStore`` and ``PostgresKeyStore`` are both one.
public protocol APIKeyStore: APIKeyLookup, APIKeyAdministration {
    /// Rereads the source now (SIGHUP; and once at start, before serving). Returns whether the
    /// copy in memory now matches it; on failure the last good copy stays.
    func reload() async -> Bool
    /// Follows the source (poll every second) and flushes last-used times until the task is
    /// cancelled; then flushes once more and returns.
    func run() async throws
}

extension FileKeyStore: APIKeyStore {}
extension PostgresKeyStore: APIKeyStore {}

/// Opens the store `auth.api_keys.file` or `auth.api_keys.postgres_url` names (exactly one).
/// Does not connect to PostgreSQL; a key file that exists but does not parse throws.
public func openAPIKeyStore(
    file: String?,
    postgresURL: String?,
    logger: Logger = Logger(label: "sluice.auth.keys")
) throws(KeyStoreError) -> any APIKeyStore {
    switch (file, postgresURL) {
    case (let file?, nil): return try FileKeyStore(path: file, logger: logger)
    case (nil, let url?): return try PostgresKeyStore(url: url, logger: logger)
    case (nil, nil):
        throw KeyStoreError(.invalidArgument, "no key store: set auth.api_keys.file or auth.api_keys.postgres_url")
    case (_?, _?):
        throw KeyStoreError(.invalidArgument, "set only one of auth.api_keys.file and auth.api_keys.postgres_url")
    }
}

/// The request to create a key.
public struct NewAPIKey: Sendable {
    public var name: String
    public var kind: APIKeyKind
    public var environment: APIKeyEnvironment
    /// Origins as typed (`https://shop.example`); normalised and checked by `create`.
    public var origins: [String]
    public var expiresIn: Duration?
    public var rate: RateLimit?
    public var allowedActions: [String]?
    public var maxBatch: Int?
    /// ``APIKeyScope`` names; nil: the defaults (send events).
    public var scopes: [String]?

    public init(
        name: String,
        kind: APIKeyKind,
        environment: APIKeyEnvironment = .live,
        origins: [String] = [],
        expiresIn: Duration? = nil,
        rate: RateLimit? = nil,
        allowedActions: [String]? = nil,
        maxBatch: Int? = nil,
        scopes: [String]? = nil
    ) {
        self.name = name
        self.kind = kind
        self.environment = environment
        self.origins = origins
        self.expiresIn = expiresIn
        self.rate = rate
        self.allowedActions = allowedActions
        self.maxBatch = maxBatch
        self.scopes = scopes
    }
}

/// A freshly made key: the plaintext (show it once) and what was stored.
public struct IssuedAPIKey: Sendable {
    public var key: APIKey
    public var record: StoredAPIKey
}

/// The keys of a store as a value, with the pure rules of `create`, `revoke` and `roll`: the
/// file and PostgreSQL stores both load a ring, apply one of these, and write back what changed.
public struct APIKeyRing: Sendable, Hashable {
    public var keys: [StoredAPIKey]

    public init(keys: [StoredAPIKey] = []) { self.keys = keys }

    /// Checks what a hand-edited or foreign store might break: unique ids and hashes, well-formed
    /// hashes, names, origins and rates, one current key per name.
    public func validate() throws(KeyStoreError) {
        var ids = Set<String>()
        var hashes = Set<String>()
        var current = Set<String>()
        for key in self.keys {
            guard ids.insert(key.id).inserted else {
                throw KeyStoreError(.invalidStore, "key id \(key.id) appears twice")
            }
            guard key.sha256.count == 64, key.sha256.utf8.allSatisfy(Self.isLowerHex) else {
                throw KeyStoreError(.invalidStore, "key \(key.id) has a sha256 that is not 64 lowercase hex digits")
            }
            guard hashes.insert(key.sha256).inserted else {
                throw KeyStoreError(.invalidStore, "key \(key.id) has the same sha256 as another key")
            }
            try Self.checkName(key.name)
            if key.rate != nil && key.rateLimit == nil {
                throw KeyStoreError(.invalidStore, "key \(key.id) has rate '\(key.rate ?? "")', expected e.g. 50/s")
            }
            for origin in key.allowedOrigins where (try? Self.normalizeOrigin(origin)) != origin {
                throw KeyStoreError(
                    .invalidStore,
                    "key \(key.id) has origin '\(origin)', expected e.g. https://shop.example"
                )
            }
            if key.revokedAt == nil && key.replacedBy == nil {
                guard current.insert(key.name).inserted else {
                    throw KeyStoreError(.invalidStore, "two current keys are named \(key.name)")
                }
            }
        }
    }

    /// Adds a key; returns it with its record.
    public mutating func create(_ request: NewAPIKey, now: Date) throws(KeyStoreError) -> IssuedAPIKey {
        try Self.checkName(request.name)
        if let existing = self.keys.first(where: { $0.name == request.name }) {
            let state = existing.state(at: now)
            throw KeyStoreError(
                .nameExists,
                "a key named \(request.name) already exists (\(state)); choose another name"
                    + (state == "active" ? " or roll it" : "")
            )
        }
        var origins: [String] = []
        for origin in request.origins {
            let normalized = try Self.normalizeOrigin(origin)
            if !origins.contains(normalized) { origins.append(normalized) }
        }
        if request.kind == .publishable && origins.isEmpty {
            throw KeyStoreError(
                .invalidArgument,
                "a publishable key needs at least one --origin (such as https://shop.example, or * for any)"
            )
        }
        if request.kind == .secret && !origins.isEmpty {
            throw KeyStoreError(
                .invalidArgument,
                "a secret key takes no --origin: secret keys are refused from browsers"
            )
        }
        if let maxBatch = request.maxBatch, maxBatch < 1 {
            throw KeyStoreError(.invalidArgument, "max batch must be at least 1")
        }
        var scopes: [String]?
        if let requested = request.scopes {
            if let unknown = requested.first(where: { !APIKeyScope.known.contains($0) }) {
                throw KeyStoreError(
                    .invalidArgument,
                    "unknown scope '\(unknown)'; a key may have \(APIKeyScope.known.joined(separator: ", "))"
                )
            }
            guard !requested.isEmpty else { throw KeyStoreError(.invalidArgument, "a key needs at least one scope") }
            if request.kind == .publishable && requested.contains(APIKeyScope.statsRead) {
                throw KeyStoreError(
                    .invalidArgument,
                    "a publishable key cannot have \(APIKeyScope.statsRead): browser pages show their keys to anyone"
                )
            }
            scopes = APIKeyScope.known.filter(requested.contains)
        }
        let expires = try request.expiresIn.map { duration throws(KeyStoreError) in
            guard duration > .zero else { throw KeyStoreError(.invalidArgument, "an expiry must be in the future") }
            return now.addingTimeInterval(duration.seconds)
        }
        let key = self.freshKey(kind: request.kind, environment: request.environment)
        let record = StoredAPIKey(
            id: key.id,
            name: request.name,
            kind: request.kind,
            environment: request.environment,
            sha256: key.sha256,
            last4: String(key.plaintext.suffix(4)),
            allowedOrigins: origins,
            allowedActions: request.allowedActions,
            maxBatch: request.maxBatch,
            rate: request.rate?.rateText,
            burst: request.rate?.burst,
            createdAt: now,
            expiresAt: expires,
            scopes: scopes
        )
        self.keys.append(record)
        return IssuedAPIKey(key: key, record: record)
    }

    /// Revokes every not-yet-revoked key named `name`; returns the changed records.
    public mutating func revoke(name: String, now: Date) throws(KeyStoreError) -> [StoredAPIKey] {
        guard self.keys.contains(where: { $0.name == name }) else {
            throw KeyStoreError(.unknownName, "no key is named \(name)")
        }
        var changed: [StoredAPIKey] = []
        for index in self.keys.indices where self.keys[index].name == name && self.keys[index].revokedAt == nil {
            self.keys[index].revokedAt = now
            changed.append(self.keys[index])
        }
        return changed
    }

    /// Replaces the current key named `name` by a new one with the same settings (and the same
    /// lifetime, if it had one); the old key expires `grace` from `now` (or earlier if it
    /// already would). Returns the new key; the changed old record is in `keys`.
    public mutating func roll(name: String, grace: Duration, now: Date) throws(KeyStoreError) -> IssuedAPIKey {
        guard grace >= .zero else { throw KeyStoreError(.invalidArgument, "the grace period cannot be negative") }
        guard
            let index = self.keys.firstIndex(where: {
                $0.name == name && $0.replacedBy == nil && $0.state(at: now) == "active"
            })
        else {
            if self.keys.contains(where: { $0.name == name }) {
                throw KeyStoreError(.unknownName, "the key named \(name) is revoked or expired; create a new one")
            }
            throw KeyStoreError(.unknownName, "no key is named \(name)")
        }
        let old = self.keys[index]
        let key = self.freshKey(kind: old.kind, environment: old.environment)
        var record = old
        record.id = key.id
        record.sha256 = key.sha256
        record.last4 = String(key.plaintext.suffix(4))
        record.createdAt = now
        record.lastUsedAt = nil
        record.expiresAt = old.expiresAt.map { now.addingTimeInterval($0.timeIntervalSince(old.createdAt)) }
        let graceEnd = now.addingTimeInterval(grace.seconds)
        self.keys[index].replacedBy = key.id
        self.keys[index].expiresAt = min(old.expiresAt ?? graceEnd, graceEnd)
        self.keys.append(record)
        return IssuedAPIKey(key: key, record: record)
    }

    /// Records last use times, keeping the later of the stored and the noted one. Returns the
    /// ids whose record changed.
    @discardableResult
    public mutating func noteUsed(_ used: [String: Date]) -> [String] {
        var changed: [String] = []
        for index in self.keys.indices {
            guard let date = used[self.keys[index].id] else { continue }
            if let known = self.keys[index].lastUsedAt, known >= date { continue }
            self.keys[index].lastUsedAt = date
            changed.append(self.keys[index].id)
        }
        return changed
    }

    private func freshKey(kind: APIKeyKind, environment: APIKeyEnvironment) -> APIKey {
        while true {
            let key = APIKey.generate(kind: kind, environment: environment)
            if !self.keys.contains(where: { $0.id == key.id }) { return key }
        }
    }

    /// Names are what policies and logs show: 1–64 of `A-Z a-z 0-9 . _ -`.
    public static func checkName(_ name: String) throws(KeyStoreError) {
        let allowed = name.utf8.allSatisfy { byte in
            APIKeyBase62.isDigit(byte) || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_")
                || byte == UInt8(ascii: ".")
        }
        guard !name.isEmpty, name.utf8.count <= 64, allowed else {
            throw KeyStoreError(.invalidArgument, "a key name is 1 to 64 letters, digits, '.', '_' or '-'")
        }
    }

    /// `HTTPS://Shop.Example:443/` → `https://shop.example`: scheme and host lowercased, the
    /// default port dropped, no path, query, fragment or user. `*` stands for any origin.
    public static func normalizeOrigin(_ text: String) throws(KeyStoreError) -> String {
        if text == "*" { return text }
        let invalid = KeyStoreError(
            .invalidArgument,
            "'\(text)' is not an origin; expected a scheme and host such as https://shop.example"
        )
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased(),
            scheme == "https" || scheme == "http", let host = components.host?.lowercased(), !host.isEmpty,
            components.user == nil, components.password == nil, components.query == nil, components.fragment == nil,
            components.path.isEmpty || components.path == "/"
        else { throw invalid }
        var origin = "\(scheme)://\(host)"
        if let port = components.port, !(scheme == "https" && port == 443), !(scheme == "http" && port == 80) {
            origin += ":\(port)"
        }
        return origin
    }

    private static func isLowerHex(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
    }
}

/// `90d`, `24h`, `30m`, `45s`, `2w`: how the CLI writes expiries and grace periods.
public enum APIKeyDuration {
    /// Nil when `text` is not a whole number followed by s, m, h, d or w.
    public static func parse(_ text: String) -> Duration? {
        let units: [(String, Int64)] = [("s", 1), ("m", 60), ("h", 3600), ("d", 86400), ("w", 604_800)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            guard let value = Int64(text.dropLast(suffix.count)), value >= 0, value <= Int64.max / scale / 2 else {
                return nil
            }
            return .seconds(value * scale)
        }
        return nil
    }
}

/// The codec of the file store, also used for PostgreSQL's `record` column.
enum KeyStoreCodec {
    struct File: Codable {
        var version: Int
        var keys: [StoredAPIKey]
    }

    static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }

    static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }

    static func encodeFile(_ ring: APIKeyRing) throws -> Data {
        var data = try self.encoder().encode(File(version: 1, keys: ring.keys))
        data.append(UInt8(ascii: "\n"))
        return data
    }

    /// Parses and validates a whole file; an empty file is an empty store.
    static func decodeFile(_ data: Data) throws(KeyStoreError) -> APIKeyRing {
        if data.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) { return APIKeyRing() }
        let file: File
        do {
            file = try self.decoder().decode(File.self, from: data)
        } catch {
            throw KeyStoreError(.invalidStore, "does not parse: \(Self.describe(error))")
        }
        guard file.version == 1 else { throw KeyStoreError(.invalidStore, "has version \(file.version), expected 1") }
        let ring = APIKeyRing(keys: file.keys)
        try ring.validate()
        return ring
    }

    /// A decoding error as a sentence with its path, without quoting the data.
    static func describe(_ error: any Error) -> String {
        guard let error = error as? DecodingError else { return "invalid JSON" }
        if case .keyNotFound(let key, let context) = error {
            return "missing \(key.stringValue) at \(Self.path(context))"
        }
        if case .typeMismatch(_, let context) = error { return "wrong type at \(Self.path(context))" }
        if case .valueNotFound(_, let context) = error { return "missing value at \(Self.path(context))" }
        if case .dataCorrupted(let context) = error { return "invalid value at \(Self.path(context))" }
        return "invalid JSON"
    }

    private static func path(_ context: DecodingError.Context) -> String {
        let path = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
        return path.isEmpty ? "the top level" : path
    }
}

/// The in-memory copy the gateway answers from: swapped whole on every successful reload, plus
/// last-used times waiting to be flushed.
final class KeyStoreCache: Sendable {
    private struct State {
        var byHash: [String: StoredAPIKey] = [:]
        var ring = APIKeyRing()
        var pendingUse: [String: Date] = [:]
        var loadedAt: ContinuousClock.Instant?
    }

    private let state = Mutex(State())
    private let age: Gauge

    init(store: String) {
        self.age = Gauge(label: "sluice_auth_keystore_age_seconds", dimensions: [("store", store)])
    }

    func replace(with ring: APIKeyRing) {
        let byHash = Dictionary(ring.keys.map { ($0.sha256, $0) }, uniquingKeysWith: { first, _ in first })
        self.state.withLock {
            $0.byHash = byHash
            $0.ring = ring
            $0.loadedAt = .now
        }
        self.age.record(Double(0))
    }

    /// Marks the copy as current without a change (the source was checked and is unchanged).
    func confirm() {
        self.state.withLock { $0.loadedAt = .now }
        self.age.record(Double(0))
    }

    /// Seconds since the copy was last known to match its source; nil before the first load.
    func ageSeconds() -> Double? {
        guard let loaded = self.state.withLock({ $0.loadedAt }) else { return nil }
        let seconds = (ContinuousClock.now - loaded).seconds
        self.age.record(seconds)
        return seconds
    }

    var ring: APIKeyRing { self.state.withLock { $0.ring } }

    func lookup(sha256: String) -> StoredAPIKey? {
        guard let record = self.state.withLock({ $0.byHash[sha256] }) else { return nil }
        return Self.constantTimeEqual(record.sha256, sha256) ? record : nil
    }

    func noteUsed(id: String, at date: Date) {
        self.state.withLock { state in
            if let known = state.pendingUse[id], known >= date { return }
            state.pendingUse[id] = date
        }
    }

    /// Takes the pending last-used times; a failed flush gives them back with `restore`.
    func takePendingUse() -> [String: Date] {
        self.state.withLock { state in
            defer { state.pendingUse = [:] }
            return state.pendingUse
        }
    }

    func restore(_ used: [String: Date]) {
        self.state.withLock { state in state.pendingUse.merge(used) { max($0, $1) } }
    }

    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8)
        let y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var difference: UInt8 = 0
        for index in x.indices { difference |= x[index] ^ y[index] }
        return difference == 0
    }
}
