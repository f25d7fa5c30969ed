import Crypto
import Foundation
import Synchronization

/// A client of the built-in authorization server: who may ask for tokens, and for which scopes.
///
/// Only the SHA-256 of the secret is kept; the secret itself is shown once, when the client is
/// added. A secret has 256 random bits, so a fast hash is enough: there is nothing to guess.
public struct OAuthClient: Codable, Sendable, Equatable {
    /// The client's name: `sub` and `client_id` of its tokens, `client:<id>` as a principal.
    public var clientID: String
    /// Lower-case hex SHA-256 of the secret's UTF-8 bytes.
    public var secretSHA256: String
    /// The scopes it may ask for; a request without `scope` gets all of them.
    public var scopes: [String]
    public var createdAt: Date
    /// When set, the client can no longer get tokens (tokens already issued run out by their `exp`).
    public var disabledAt: Date?

    public init(clientID: String, secretSHA256: String, scopes: [String], createdAt: Date, disabledAt: Date? = nil) {
        self.clientID = clientID
        self.secretSHA256 = secretSHA256
        self.scopes = scopes
        self.createdAt = createdAt
        self.disabledAt = disabledAt
    }

    enum CodingKeys: String, CodingKey {
        case clientID = "client_id"
        case secretSHA256 = "secret_sha256"
        case scopes
        case createdAt = "created_at"
        case disabledAt = "disabled_at"
    }

    /// The prefix of every client secret, so that secret scanners and people can tell one apart
    /// from an API key (`slk_`).
    public static let secretPrefix = "slc_"

    /// A new secret: `slc_` and 32 random bytes in base64url (256 bits).
    public static func generateSecret() -> String {
        self.secretPrefix + AuthorizationServerBytes.base64URL(AuthorizationServerBytes.random(32))
    }

    /// SHA-256 of the secret as stored.
    public static func digest(ofSecret secret: String) -> [UInt8] { Array(SHA256.hash(data: Array(secret.utf8))) }

    /// 1 to 64 of `A–Z a–z 0–9 . _ -`, starting with a letter or digit: safe in a URL, a log line,
    /// a principal name and Basic authentication without escaping.
    public static func isValidID(_ id: String) -> Bool {
        let bytes = Array(id.utf8)
        guard (1...64).contains(bytes.count), let first = bytes.first, Self.isAlphanumeric(first) else { return false }
        return bytes.allSatisfy {
            Self.isAlphanumeric($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-")
        }
    }

    /// A scope token per RFC 6749 §3.3 (`%x21 / %x23-5B / %x5D-7E`), at most 128 bytes.
    public static func isValidScope(_ scope: String) -> Bool {
        let bytes = Array(scope.utf8)
        return (1...128).contains(bytes.count)
            && bytes.allSatisfy { $0 == 0x21 || (0x23...0x5B).contains($0) || (0x5D...0x7E).contains($0) }
    }

    private static func isAlphanumeric(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
            || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }
}

/// The clients file of the built-in authorization server (`auth.oauth.builtin_server.clients_file`):
/// a JSON document `{"clients": [...]}`, written crash-safely with mode 0600 and re-read when it
/// changes, so that `sluice oauth clients add` takes effect in a running gateway without a restart.
///
/// Every method blocks on file I/O (a `stat` per lookup, a read when the file changed).
public final class OAuthClientStore: Sendable {
    /// Where the clients are kept.
    public let path: String

    private struct Loaded: Sendable {
        var stamp: AuthorizationServerFile.Stamp?
        var clients: [OAuthClient]
    }

    private let loaded = Mutex(Loaded(stamp: nil, clients: []))

    /// Opens the store. A missing file is an empty store (created by the first ``add(_:scopes:now:)``);
    /// a file that cannot be parsed is refused.
    public init(path: String) throws {
        self.path = path
        _ = try self.clients()
    }

    private struct Document: Codable {
        var clients: [OAuthClient]
    }

    /// The clients, re-read first if the file changed since the last read.
    public func clients() throws -> [OAuthClient] {
        let stamp = try AuthorizationServerFile.inspect(self.path)?.stamp
        if let current = self.loaded.withLock({ $0.stamp == stamp ? $0.clients : nil }) { return current }
        let clients = try self.read()
        self.loaded.withLock { $0 = Loaded(stamp: stamp, clients: clients) }
        return clients
    }

    /// For the token endpoint: the clients, re-read if the file changed. If the changed file is
    /// unusable (a bad hand edit), the last good clients are kept, and the error is returned
    /// once for that version of the file so that the caller can log it without repeating it.
    func servingClients() -> (clients: [OAuthClient], error: (any Error)?) {
        do {
            let stamp = try AuthorizationServerFile.inspect(self.path)?.stamp
            let (known, current) = self.loaded.withLock { ($0.stamp == stamp, $0.clients) }
            if known { return (current, nil) }
            do {
                let clients = try self.read()
                self.loaded.withLock { $0 = Loaded(stamp: stamp, clients: clients) }
                return (clients, nil)
            } catch {
                self.loaded.withLock { $0.stamp = stamp }
                return (current, error)
            }
        } catch {
            return (self.loaded.withLock { $0.clients }, error)
        }
    }

    /// The client named `id`, or nil.
    public func client(_ id: String) throws -> OAuthClient? { try self.clients().first { $0.clientID == id } }

    /// Adds a client and returns its secret, which is not kept and cannot be shown again.
    ///
    /// - Throws: ``AuthorizationServerError/Code/invalidClient`` if the name or a scope is not
    ///   allowed, or the name is taken.
    public func add(_ id: String, scopes: [String], now: Date = Date()) throws -> (client: OAuthClient, secret: String)
    {
        guard OAuthClient.isValidID(id) else {
            throw AuthorizationServerError(
                .invalidClient,
                "client name '\(id)' is not allowed: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        }
        if let bad = scopes.first(where: { !OAuthClient.isValidScope($0) }) {
            throw AuthorizationServerError(
                .invalidClient,
                "scope '\(bad)' is not allowed: a scope is 1 to 128 printable ASCII characters without spaces, '\"' or '\\'"
            )
        }
        let secret = OAuthClient.generateSecret()
        var unique: [String] = []
        for scope in scopes where !unique.contains(scope) { unique.append(scope) }
        let client = OAuthClient(
            clientID: id,
            secretSHA256: AuthorizationServerBytes.hex(OAuthClient.digest(ofSecret: secret)),
            scopes: unique,
            createdAt: Self.wholeSeconds(now)
        )
        try self.update { clients in
            guard !clients.contains(where: { $0.clientID == id }) else {
                throw AuthorizationServerError(.invalidClient, "a client named '\(id)' already exists")
            }
            clients.append(client)
        }
        return (client, secret)
    }

    /// Removes the client; its tokens already issued stay valid until they expire.
    ///
    /// - Throws: ``AuthorizationServerError/Code/invalidClient`` if there is no such client.
    public func remove(_ id: String) throws {
        try self.update { clients in
            guard let index = clients.firstIndex(where: { $0.clientID == id }) else {
                throw AuthorizationServerError(.invalidClient, "there is no client named '\(id)'")
            }
            clients.remove(at: index)
        }
    }

    /// Keeps the client but refuses it new tokens (`disabled_at`).
    public func disable(_ id: String, now: Date = Date()) throws {
        try self.update { clients in
            guard let index = clients.firstIndex(where: { $0.clientID == id }) else {
                throw AuthorizationServerError(.invalidClient, "there is no client named '\(id)'")
            }
            if clients[index].disabledAt == nil { clients[index].disabledAt = Self.wholeSeconds(now) }
        }
    }

    /// Read, change, write back: under a lock file, so concurrent edits are serialized.
    private func update(_ change: (inout [OAuthClient]) throws -> Void) throws {
        try AuthorizationServerFile.withLock(beside: self.path) {
            var clients = try self.read()
            try change(&clients)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            encoder.dateEncodingStrategy = .iso8601
            let bytes = try encoder.encode(Document(clients: clients))
            try AuthorizationServerFile.write(Array(bytes) + [UInt8(ascii: "\n")], to: self.path)
            let stamp = try AuthorizationServerFile.inspect(self.path)?.stamp
            self.loaded.withLock { $0 = Loaded(stamp: stamp, clients: clients) }
        }
    }

    private func read() throws -> [OAuthClient] {
        guard try AuthorizationServerFile.inspect(self.path) != nil else { return [] }
        let bytes = try AuthorizationServerFile.read(self.path, maxBytes: 16 << 20)
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        let document: Document
        do {
            document = try decoder.decode(Document.self, from: Data(bytes))
        } catch {
            throw AuthorizationServerError(
                .unreadableClients,
                "the clients file \(self.path) is not valid: expected {\"clients\": [{\"client_id\", \"secret_sha256\", "
                    + "\"scopes\", \"created_at\"}, ...]}",
                path: self.path
            )
        }
        var seen = Set<String>()
        for client in document.clients {
            guard OAuthClient.isValidID(client.clientID), seen.insert(client.clientID).inserted,
                client.secretSHA256.utf8.count == 64,
                client.secretSHA256.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) })
            else {
                throw AuthorizationServerError(
                    .unreadableClients,
                    "the clients file \(self.path) has an invalid or repeated client '\(client.clientID)' "
                        + "(client_id must be unique, secret_sha256 64 lower-case hex digits)",
                    path: self.path
                )
            }
        }
        return document.clients
    }

    /// ISO 8601 in the file has whole seconds; keeping the same in memory makes a re-read equal.
    private static func wholeSeconds(_ date: Date) -> Date {
        Date(timeIntervalSince1970: date.timeIntervalSince1970.rounded(.down))
    }
}
