import Crypto
import Foundation
import Logging

/// Settings of the built-in authorization server (`auth.oauth.builtin_server.*`).
public struct AuthorizationServerConfiguration: Sendable {
    /// The issuer identifier: an `http(s)://host[:port]` URL without a path, query or fragment
    /// (a trailing `/` is dropped). Written into every token's `iss`; the endpoints hang under it.
    public var issuer: String
    /// The gateway's resource identifier, written into `aud`; nil: the issuer.
    public var audience: String?
    /// How long an access token is valid (15 minutes).
    public var tokenTTL: Duration = .seconds(15 * 60)
    /// PEM private key; created with ``signingAlgorithm`` when missing.
    public var signingKeyFile: String
    /// The algorithm of a key created on first start (an existing key keeps its own).
    public var signingAlgorithm: AuthorizationServerSigningKey.Algorithm = .eddsa
    /// The clients file (``OAuthClientStore``).
    public var clientsFile: String

    public init(issuer: String, signingKeyFile: String, clientsFile: String) {
        self.issuer = issuer
        self.signingKeyFile = signingKeyFile
        self.clientsFile = clientsFile
    }
}

/// A deliberately small OAuth 2.0 authorization server: the client-credentials grant (RFC 6749
/// §4.4) with `client_secret_basic` or `client_secret_post`, RFC 9068 JWT access tokens signed
/// with Ed25519 or P-256, RFC 8414 metadata and a JWKS.
///
/// It lets a team without an identity provider use OAuth 2.0, and gives `sluice dev` and the
/// tests a real token flow. The gateway's resource side trusts it exactly as it trusts an
/// external issuer: through discovery and the published JWKS, never through a shortcut.
///
/// This type does no HTTP itself: ``token(formBody:authorization:)`` takes the request's body
/// and `Authorization` header and returns the status, headers and body to send, so any HTTP
/// server can mount it (the gateway's routes are in `AuthorizationServerRoutes.swift`). It
/// does not limit failed attempts; the gateway's failed-authentication limiter does.
public final class AuthorizationServer: Sendable {
    /// The issuer identifier, without a trailing `/`.
    public let issuer: String
    /// Written into `aud`.
    public let audience: String
    public let tokenTTL: Duration
    public let signingKey: AuthorizationServerSigningKey
    public let clients: OAuthClientStore
    private let logger: Logger
    private let now: @Sendable () -> Date

    /// Loads (or creates) the signing key and opens the clients file. Blocks on file I/O: call
    /// it at start-up.
    ///
    /// - Throws: ``AuthorizationServerError`` with a message naming the file and the fix: a
    ///   group- or other-readable key, an unparsable key or clients file, a bad issuer.
    public convenience init(configuration: AuthorizationServerConfiguration, logger: Logger) throws {
        try self.init(
            issuer: configuration.issuer,
            audience: configuration.audience,
            tokenTTL: configuration.tokenTTL,
            signingKey: try AuthorizationServerSigningKey.loadOrCreate(
                path: configuration.signingKeyFile,
                algorithm: configuration.signingAlgorithm
            ),
            clients: try OAuthClientStore(path: configuration.clientsFile),
            logger: logger
        )
    }

    /// - Parameter now: the clock tokens are stamped with (tests pass a fixed one).
    public init(
        issuer: String,
        audience: String? = nil,
        tokenTTL: Duration = .seconds(15 * 60),
        signingKey: AuthorizationServerSigningKey,
        clients: OAuthClientStore,
        logger: Logger,
        now: @escaping @Sendable () -> Date = { Date() }
    ) throws {
        let issuer = try Self.validatedIssuer(issuer)
        guard tokenTTL >= .seconds(1), tokenTTL <= .seconds(86400) else {
            throw AuthorizationServerError(
                .invalidConfiguration,
                "auth.oauth.builtin_server.token_ttl must be between 1s and 24h, not \(tokenTTL)"
            )
        }
        self.issuer = issuer
        self.audience = audience ?? issuer
        self.tokenTTL = tokenTTL
        self.signingKey = signingKey
        self.clients = clients
        self.logger = logger
        self.now = now
    }

    /// `{issuer}/oauth/token`.
    public var tokenEndpoint: String { self.issuer + "/oauth/token" }
    /// `{issuer}/.well-known/jwks.json`.
    public var jwksURI: String { self.issuer + "/.well-known/jwks.json" }
    /// `{issuer}/.well-known/oauth-authorization-server` (RFC 8414 §3, issuer without a path).
    public var metadataURI: String { self.issuer + "/.well-known/oauth-authorization-server" }

    // MARK: - The token endpoint

    /// The error codes of RFC 6749 §5.2 this server answers with.
    public enum ErrorCode: String, Sendable {
        /// 400: a parameter missing, repeated or malformed; two authentication methods.
        case invalidRequest = "invalid_request"
        /// 401: no client authentication, an unknown client or a wrong secret.
        case invalidClient = "invalid_client"
        /// 400: an authenticated client that may not get tokens (disabled).
        case unauthorizedClient = "unauthorized_client"
        /// 400: any grant but `client_credentials`.
        case unsupportedGrantType = "unsupported_grant_type"
        /// 400: a scope the client does not have, or a malformed one.
        case invalidScope = "invalid_scope"

        public var status: Int { self == .invalidClient ? 401 : 400 }
    }

    /// What the token endpoint answers: status, headers and a JSON body.
    public struct Response: Sendable {
        public var status: Int
        public var headers: [(name: String, value: String)]
        public var body: [UInt8]
        /// The RFC 6749 error code, nil on success.
        public var error: ErrorCode?
    }

    /// A refused token request: the code, a description safe to show the caller (it never
    /// contains the secret), and a fixed reason label for logs.
    struct Refusal: Error {
        var code: ErrorCode
        var description: String
        var reason: String
        var clientID: String?
    }

    /// A successfully issued token.
    struct Issued {
        var accessToken: String
        var clientID: String
        var scope: String
        var expiresIn: Int
    }

    /// `POST /oauth/token`: the client-credentials grant.
    ///
    /// - Parameters:
    ///   - formBody: the `application/x-www-form-urlencoded` body (the caller checks the media
    ///     type and bounds the size).
    ///   - authorization: the `Authorization` header, if any (`client_secret_basic`).
    /// - Returns: 200 with `{access_token, token_type, expires_in, scope}`, or an RFC 6749 §5.2
    ///   error; `Cache-Control: no-store` either way, and `WWW-Authenticate: Basic realm="sluice"`
    ///   with `invalid_client`.
    ///
    /// Blocks briefly on a `stat` of the clients file (and a read when it changed).
    public func token(formBody: [UInt8], authorization: String?) -> Response {
        var headers: [(name: String, value: String)] = [
            ("Content-Type", "application/json"), ("Cache-Control", "no-store"), ("Pragma", "no-cache"),
        ]
        switch self.issue(formBody: formBody, authorization: authorization) {
        case .success(let issued):
            self.logger.info(
                "oauth.token_issued",
                metadata: ["oauth.client_id": "\(issued.clientID)", "oauth.scope": "\(issued.scope)"]
            )
            let body: [String: Any] = [
                "access_token": issued.accessToken, "token_type": "Bearer", "expires_in": issued.expiresIn,
                "scope": issued.scope,
            ]
            return Response(status: 200, headers: headers, body: Self.json(body), error: nil)
        case .failure(let refusal):
            var metadata: Logger.Metadata = ["event.reason": "\(refusal.reason)"]
            if let clientID = refusal.clientID { metadata["oauth.client_id"] = "\(clientID)" }
            self.logger.notice("oauth.token_refused", metadata: metadata)
            if refusal.code == .invalidClient { headers.append(("WWW-Authenticate", "Basic realm=\"sluice\"")) }
            let body = ["error": refusal.code.rawValue, "error_description": refusal.description]
            return Response(status: refusal.code.status, headers: headers, body: Self.json(body), error: refusal.code)
        }
    }

    /// The same answer for a body the HTTP layer refused before it reached ``token(formBody:authorization:)``
    /// (wrong media type, too large): `invalid_request` in RFC 6749's shape.
    public func invalidRequest(_ description: String, reason: String) -> Response {
        self.logger.notice("oauth.token_refused", metadata: ["event.reason": "\(reason)"])
        return Response(
            status: 400,
            headers: [("Content-Type", "application/json"), ("Cache-Control", "no-store"), ("Pragma", "no-cache")],
            body: Self.json(["error": "invalid_request", "error_description": description]),
            error: .invalidRequest
        )
    }

    func issue(formBody: [UInt8], authorization: String?) -> Result<Issued, Refusal> {
        let form: [String: String]
        switch Self.parseForm(formBody) {
        case .success(let parsed): form = parsed
        case .failure(let refusal): return .failure(refusal)
        }
        // 1. Which client says it is asking, and how it proves it.
        var basic: (id: String, secret: String)?
        if let authorization {
            switch Self.parseBasic(authorization) {
            case .success(let credentials): basic = credentials
            case .failure(let refusal): return .failure(refusal)
            }
        }
        if form["client_assertion"] != nil || form["client_assertion_type"] != nil {
            return .failure(
                Refusal(
                    code: .invalidClient,
                    description: "private_key_jwt is not supported here; use client_secret_basic or client_secret_post",
                    reason: "unsupported_auth_method"
                )
            )
        }
        if basic != nil && form["client_secret"] != nil {
            return .failure(
                Refusal(
                    code: .invalidRequest,
                    description: "more than one client authentication method (HTTP Basic and client_secret)",
                    reason: "multiple_auth_methods"
                )
            )
        }
        if let basic, let bodyID = form["client_id"], bodyID != basic.id {
            return .failure(
                Refusal(
                    code: .invalidRequest,
                    description: "client_id in the body differs from the one in the Authorization header",
                    reason: "conflicting_client_id"
                )
            )
        }
        // 2. The grant.
        guard let grantType = form["grant_type"] else {
            return .failure(
                Refusal(code: .invalidRequest, description: "grant_type is missing", reason: "missing_grant_type")
            )
        }
        guard grantType == "client_credentials" else {
            return .failure(
                Refusal(
                    code: .unsupportedGrantType,
                    description: "only grant_type=client_credentials is supported",
                    reason: "unsupported_grant_type"
                )
            )
        }
        // 3. Client authentication.
        let presented: (id: String, secret: String)
        if let basic {
            presented = basic
        } else if let id = form["client_id"], let secret = form["client_secret"] {
            presented = (id, secret)
        } else {
            return .failure(
                Refusal(
                    code: .invalidClient,
                    description:
                        "client authentication is required: HTTP Basic (client_secret_basic) or client_id and client_secret in the body",
                    reason: "no_client_authentication",
                    clientID: form["client_id"].flatMap(Self.loggableID)
                )
            )
        }
        let (clients, loadError) = self.clients.servingClients()
        if let loadError {
            self.logger.error(
                "oauth.clients_unreadable",
                metadata: ["file.path": "\(self.clients.path)", "error.message": "\(loadError)"]
            )
        }
        let client = clients.first { $0.clientID == presented.id }
        let presentedDigest = OAuthClient.digest(ofSecret: presented.secret)
        // An unknown client costs the same comparison as a known one, so timing does not tell
        // which client ids exist.
        let storedDigest = client.flatMap { Self.bytes(hex: $0.secretSHA256) } ?? Self.unknownClientDigest
        let secretMatches = AuthorizationServerBytes.constantTimeEqual(presentedDigest, storedDigest)
        guard let client, secretMatches else {
            return .failure(
                Refusal(
                    code: .invalidClient,
                    description: "client authentication failed",
                    reason: client == nil ? "unknown_client" : "bad_secret",
                    clientID: Self.loggableID(presented.id)
                )
            )
        }
        guard client.disabledAt == nil else {
            return .failure(
                Refusal(
                    code: .unauthorizedClient,
                    description: "this client is disabled",
                    reason: "client_disabled",
                    clientID: client.clientID
                )
            )
        }
        // 4. Scope: a subset of the client's, or all of them.
        var granted: [String] = []
        if let requested = form["scope"] {
            for scope in requested.split(separator: " ", omittingEmptySubsequences: true).map(String.init) {
                guard OAuthClient.isValidScope(scope), client.scopes.contains(scope) else {
                    return .failure(
                        Refusal(
                            code: .invalidScope,
                            description: OAuthClient.isValidScope(scope)
                                ? "scope '\(scope)' is not granted to this client"
                                : "a requested scope is malformed",
                            reason: "scope_not_allowed",
                            clientID: client.clientID
                        )
                    )
                }
                if !granted.contains(scope) { granted.append(scope) }
            }
        } else {
            granted = client.scopes
        }
        guard !granted.isEmpty else {
            return .failure(
                Refusal(
                    code: .invalidScope,
                    description: "this client has no scopes",
                    reason: "no_scope",
                    clientID: client.clientID
                )
            )
        }
        // 5. The token.
        let scope = granted.joined(separator: " ")
        do {
            let token = try self.accessToken(clientID: client.clientID, scope: scope)
            return .success(
                Issued(
                    accessToken: token,
                    clientID: client.clientID,
                    scope: scope,
                    expiresIn: Int(self.tokenTTL.components.seconds)
                )
            )
        } catch {
            // Signing with an in-memory key does not fail in practice; say so without details.
            self.logger.error("oauth.signing_failed", metadata: ["error.message": "\(error)"])
            return .failure(
                Refusal(
                    code: .invalidRequest,
                    description: "the token could not be signed",
                    reason: "signing_failed",
                    clientID: client.clientID
                )
            )
        }
    }

    /// The claims of an access token (RFC 9068 §2.2).
    struct AccessTokenClaims: Codable {
        var iss: String
        var sub: String
        var client_id: String
        var aud: String
        var iat: Int64
        var nbf: Int64
        var exp: Int64
        var jti: String
        var scope: String
    }

    /// A signed RFC 9068 access token: header `{alg, kid, typ: at+jwt}`.
    func accessToken(clientID: String, scope: String) throws -> String {
        let issuedAt = Int64(self.now().timeIntervalSince1970.rounded(.down))
        let claims = AccessTokenClaims(
            iss: self.issuer,
            sub: clientID,
            client_id: clientID,
            aud: self.audience,
            iat: issuedAt,
            nbf: issuedAt,
            exp: issuedAt + self.tokenTTL.components.seconds,
            jti: AuthorizationServerBytes.base64URL(AuthorizationServerBytes.random(16)),
            scope: scope
        )
        let header: [String: Any] = [
            "alg": self.signingKey.algorithm.rawValue, "kid": self.signingKey.keyID, "typ": "at+jwt",
        ]
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let signingInput =
            AuthorizationServerBytes.base64URL(Self.json(header)) + "."
            + AuthorizationServerBytes.base64URL(try encoder.encode(claims))
        let signature = try self.signingKey.sign(Array(signingInput.utf8))
        return signingInput + "." + AuthorizationServerBytes.base64URL(signature)
    }

    // MARK: - Metadata and keys

    /// The RFC 8414 metadata document for `/.well-known/oauth-authorization-server`.
    public func metadataJSON() -> [UInt8] {
        var scopes = Set(["events:write"])
        for client in self.clients.servingClients().clients { scopes.formUnion(client.scopes) }
        return Self.json([
            "issuer": self.issuer,
            "token_endpoint": self.tokenEndpoint,
            "jwks_uri": self.jwksURI,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": scopes.sorted(),
            "response_types_supported": [String](),
        ])
    }

    /// The JWKS for `/.well-known/jwks.json`: the public signing key with `kid`, `alg` and
    /// `use: sig`. Never the private part.
    public func jwksJSON() -> [UInt8] {
        Self.json(["keys": [self.signingKey.publicJWK]])
    }

    // MARK: - Parsing

    /// `application/x-www-form-urlencoded` (WHATWG URL §5.1): `+` is a space, `%XX` a byte, the
    /// result must be UTF-8. A parameter given twice is refused (RFC 6749 §3.2); one without a
    /// value counts as absent (§3.1).
    static func parseForm(_ body: [UInt8]) -> Result<[String: String], Refusal> {
        var form: [String: String] = [:]
        for pair in body.split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: true) {
            let parts = pair.split(separator: UInt8(ascii: "="), maxSplits: 1, omittingEmptySubsequences: false)
            guard let name = Self.formDecode(parts[0]), let value = Self.formDecode(parts.count > 1 ? parts[1] : [])
            else {
                return .failure(
                    Refusal(
                        code: .invalidRequest,
                        description: "the body is not valid application/x-www-form-urlencoded UTF-8",
                        reason: "malformed_body"
                    )
                )
            }
            guard form[name] == nil else {
                return .failure(
                    Refusal(
                        code: .invalidRequest,
                        description: "parameter '\(Self.loggableID(name) ?? "?")' is repeated",
                        reason: "repeated_parameter"
                    )
                )
            }
            if !value.isEmpty { form[name] = value }
        }
        return .success(form)
    }

    static func formDecode<Bytes: Collection>(_ bytes: Bytes) -> String? where Bytes.Element == UInt8 {
        var decoded: [UInt8] = []
        decoded.reserveCapacity(bytes.count)
        var index = bytes.startIndex
        while index != bytes.endIndex {
            let byte = bytes[index]
            if byte == UInt8(ascii: "%") {
                let high = bytes.index(after: index)
                guard high != bytes.endIndex else { return nil }
                let low = bytes.index(after: high)
                guard low != bytes.endIndex, let h = Self.hexValue(bytes[high]), let l = Self.hexValue(bytes[low])
                else { return nil }
                decoded.append(h << 4 | l)
                index = bytes.index(after: low)
                continue
            }
            decoded.append(byte == UInt8(ascii: "+") ? UInt8(ascii: " ") : byte)
            index = bytes.index(after: index)
        }
        return String(validating: decoded, as: UTF8.self)
    }

    /// `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
    static func parseBasic(_ header: String) -> Result<(id: String, secret: String), Refusal> {
        let refusal = Refusal(
            code: .invalidClient,
            description: "the Authorization header must be HTTP Basic with the client id and secret",
            reason: "malformed_basic"
        )
        let parts = header.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "basic",
            let decoded = Data(base64Encoded: parts[1].trimmingCharacters(in: .whitespaces)),
            let colon = decoded.firstIndex(of: UInt8(ascii: ":")),
            let id = Self.formDecode(decoded[decoded.startIndex..<colon]),
            let secret = Self.formDecode(decoded[decoded.index(after: colon)...]),
            !id.isEmpty, !secret.isEmpty
        else { return .failure(refusal) }
        return .success((id, secret))
    }

    /// A client id fit for a log line: a valid id that does not look like a secret pasted in
    /// the wrong field; nil otherwise.
    static func loggableID(_ id: String) -> String? {
        OAuthClient.isValidID(id) && !id.hasPrefix(OAuthClient.secretPrefix) ? id : nil
    }

    static func validatedIssuer(_ text: String) throws -> String {
        var issuer = text
        if issuer.hasSuffix("/") { issuer.removeLast() }
        guard let components = URLComponents(string: issuer), let scheme = components.scheme?.lowercased(),
            scheme == "https" || scheme == "http", let host = components.host, !host.isEmpty,
            components.path.isEmpty, components.query == nil, components.fragment == nil,
            components.user == nil, components.password == nil
        else {
            throw AuthorizationServerError(
                .invalidConfiguration,
                "auth.oauth.builtin_server.issuer '\(text)' must be an http(s) URL with a host and no path, "
                    + "query or fragment, such as https://ingest.example.com"
            )
        }
        return issuer
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    private static func bytes(hex: String) -> [UInt8]? {
        let digits = Array(hex.utf8)
        guard digits.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        for index in stride(from: 0, to: digits.count, by: 2) {
            guard let high = Self.hexValue(digits[index]), let low = Self.hexValue(digits[index + 1]) else {
                return nil
            }
            bytes.append(high << 4 | low)
        }
        return bytes
    }

    /// Compared against when the client id is unknown; no secret hashes to it that anyone knows.
    private static let unknownClientDigest = AuthorizationServerBytes.random(32)

    static func json(_ value: Any) -> [UInt8] {
        // Only called with dictionaries of strings, numbers and arrays built above.
        let data =
            (try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .withoutEscapingSlashes]))
        return data.map(Array.init) ?? Array("{}".utf8)
    }
}
