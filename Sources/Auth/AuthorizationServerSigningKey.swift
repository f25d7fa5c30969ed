import Crypto
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The private key the built-in authorization server signs access tokens with, and its public
/// half as a JWK. Read from a PEM file (PKCS#8 Ed25519, or a P-256 key in PKCS#8 or SEC 1),
/// which is created on first start.
///
/// The key id (`kid`) is the RFC 7638 thumbprint of the public key: it changes exactly when the
/// key does, so resource servers' JWKS caches see a replaced key as a new one.
public struct AuthorizationServerSigningKey: Sendable {
    /// The JWS algorithms this server signs with.
    public enum Algorithm: String, Sendable, CaseIterable {
        /// Ed25519 (RFC 8037). The default: small keys and signatures, deterministic.
        case eddsa = "EdDSA"
        /// ECDSA with P-256 and SHA-256, for resource servers that do not support EdDSA.
        case es256 = "ES256"
    }

    private enum Key: Sendable {
        case ed25519(Curve25519.Signing.PrivateKey)
        case p256(P256.Signing.PrivateKey)
    }

    private let key: Key

    /// `EdDSA` or `ES256`, as written into the token's header and the JWK.
    public var algorithm: Algorithm {
        switch self.key {
        case .ed25519: return .eddsa
        case .p256: return .es256
        }
    }

    /// The RFC 7638 JWK thumbprint (SHA-256, base64url).
    public let keyID: String

    /// A new random key.
    public init(generating algorithm: Algorithm) {
        switch algorithm {
        case .eddsa: self.init(key: .ed25519(Curve25519.Signing.PrivateKey()))
        case .es256: self.init(key: .p256(P256.Signing.PrivateKey()))
        }
    }

    private init(key: Key) {
        self.key = key
        self.keyID = AuthorizationServerBytes.base64URL(SHA256.hash(data: Array(Self.thumbprintInput(key).utf8)))
    }

    /// Parses a PEM private key: Ed25519 in PKCS#8 (`openssl genpkey -algorithm ed25519`), or
    /// P-256 in PKCS#8 or SEC 1 (`openssl ecparam -name prime256v1 -genkey`).
    public init(pem: String) throws {
        let key: Key
        if let seed = Self.ed25519Seed(pem: pem) {
            guard let parsed = try? Curve25519.Signing.PrivateKey(rawRepresentation: seed) else {
                throw AuthorizationServerError(.unreadableKey, "the Ed25519 key is not valid")
            }
            key = .ed25519(parsed)
        } else if let parsed = try? P256.Signing.PrivateKey(pemRepresentation: pem) {
            key = .p256(parsed)
        } else {
            throw AuthorizationServerError(
                .unreadableKey,
                "not a PEM Ed25519 (PKCS#8) or P-256 (PKCS#8 or SEC 1) private key"
            )
        }
        self.init(key: key)
    }

    /// The key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    var pemRepresentation: String {
        switch self.key {
        case .ed25519(let key):
            let der = Self.ed25519PKCS8Prefix + Array(key.rawRepresentation)
            let lines = Data(der).base64EncodedString(options: [.lineLength64Characters, .endLineWithLineFeed])
            return "-----BEGIN PRIVATE KEY-----\n\(lines)\n-----END PRIVATE KEY-----\n"
        case .p256(let key):
            return key.pemRepresentation + "\n"
        }
    }

    /// Loads the key at `path`, or creates it there (mode 0600, written crash-safely) when the
    /// file does not exist.
    ///
    /// Refuses, with a message that says what to do, a file that group or other may read (the
    /// key signs every token this server issues) and a file that is not a supported PEM key.
    /// Blocks on file I/O: call it at start-up.
    public static func loadOrCreate(path: String, algorithm: Algorithm = .eddsa) throws -> Self {
        if let existing = try self.load(path: path) { return existing }
        let key = Self(generating: algorithm)
        do {
            try AuthorizationServerFile.write(Array(key.pemRepresentation.utf8), to: path, exclusive: true)
        } catch let error as AuthorizationServerError where error.errno == EEXIST {
            // Another process created it first: use theirs, so both sign with the same key.
            if let existing = try self.load(path: path) { return existing }
            throw error
        }
        return key
    }

    /// The key at `path`, or nil if there is no file.
    public static func load(path: String) throws -> Self? {
        guard let (_, mode) = try AuthorizationServerFile.inspect(path) else { return nil }
        guard mode & 0o077 == 0 else {
            throw AuthorizationServerError(
                .insecureKeyFile,
                "the signing key file \(path) is readable or writable by group or other (mode "
                    + String(mode & 0o777, radix: 8) + "); run chmod 600 \(path)",
                path: path
            )
        }
        let bytes = try AuthorizationServerFile.read(path, maxBytes: 64 * 1024)
        do {
            return try Self(pem: String(decoding: bytes, as: UTF8.self))
        } catch let error as AuthorizationServerError {
            throw AuthorizationServerError(
                .unreadableKey,
                "the signing key file \(path) is unusable: \(error.message)",
                path: path
            )
        }
    }

    /// The JWS signature of `input` (the ASCII of `header.payload`): 64 bytes for both
    /// algorithms (ES256 as R‖S, RFC 7518 §3.4).
    func sign(_ input: [UInt8]) throws -> [UInt8] {
        switch self.key {
        case .ed25519(let key): return Array(try key.signature(for: input))
        case .p256(let key): return Array(try key.signature(for: input).rawRepresentation)
        }
    }

    /// The public key as a JWK with `kid`, `alg` and `use: sig`, ready for a JWKS.
    public var publicJWK: [String: String] {
        var jwk = Self.publicMembers(self.key)
        jwk["kid"] = self.keyID
        jwk["alg"] = self.algorithm.rawValue
        jwk["use"] = "sig"
        return jwk
    }

    private static func publicMembers(_ key: Key) -> [String: String] {
        switch key {
        case .ed25519(let key):
            return [
                "kty": "OKP", "crv": "Ed25519",
                "x": AuthorizationServerBytes.base64URL(key.publicKey.rawRepresentation),
            ]
        case .p256(let key):
            // x963: 0x04 ‖ X ‖ Y, 32 bytes each.
            let point = Array(key.publicKey.x963Representation)
            return [
                "kty": "EC", "crv": "P-256",
                "x": AuthorizationServerBytes.base64URL(point[1..<33]),
                "y": AuthorizationServerBytes.base64URL(point[33..<65]),
            ]
        }
    }

    /// RFC 7638 §3: the required members only, in lexicographic order, no white space. Every
    /// value is base64url or a fixed name, so no escaping is needed.
    private static func thumbprintInput(_ key: Key) -> String {
        let members = self.publicMembers(key)
        return "{"
            + members.keys.sorted().map { "\"\($0)\":\"\(members[$0] ?? "")\"" }.joined(separator: ",")
            + "}"
    }

    /// PKCS#8 v1 for Ed25519 (RFC 8410 §7): SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 },
    /// OCTET STRING { OCTET STRING (32-byte seed) } }.
    private static let ed25519PKCS8Prefix: [UInt8] = [
        0x30, 0x2E, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ]

    private static func ed25519Seed(pem: String) -> [UInt8]? {
        let lines = pem.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
        guard let begin = lines.firstIndex(of: "-----BEGIN PRIVATE KEY-----"),
            let end = lines[begin...].firstIndex(of: "-----END PRIVATE KEY-----")
        else { return nil }
        guard let der = Data(base64Encoded: lines[(begin + 1)..<end].joined()).map(Array.init),
            der.count == self.ed25519PKCS8Prefix.count + 32,
            Array(der.prefix(self.ed25519PKCS8Prefix.count)) == self.ed25519PKCS8Prefix
        else { return nil }
        return Array(der.suffix(32))
    }
}
