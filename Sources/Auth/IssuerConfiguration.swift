import Foundation

/// One trusted OAuth 2.0 authorization server whose access tokens (RFC 9068 JWTs) Sluice accepts:
/// one entry of `auth.oauth.issuers`.
///
/// Each issuer's keys are kept apart: a token is verified only with the keys of the issuer its
/// `iss` names exactly (RFC 8725 §3.8). Call ``validate()`` at start-up; the verifier refuses an
/// invalid configuration.
public struct IssuerConfiguration: Sendable, Equatable {
    /// The algorithms Sluice can verify. `none` and `HS*` are never among them: an OAuth issuer
    /// publishes public keys, and a shared secret would let every resource server mint tokens.
    public static let supportedAlgorithms: Set<String> = [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
    ]

    /// The `iss` value, compared byte for byte (no slash normalisation).
    public var issuer: String
    /// Where the key set is; nil means discover it from the issuer's metadata (``discovery``).
    public var jwksURI: String?
    /// Read `jwks_uri` from RFC 8414 metadata (`/.well-known/oauth-authorization-server`), falling
    /// back to OIDC (`/.well-known/openid-configuration`). The metadata's `issuer` must equal
    /// ``issuer``.
    public var discovery: Bool
    /// At least one of these must be in the token's `aud`.
    public var audiences: [String]
    /// The exact `alg` values accepted (RFC 8725 §3.1); RS256 is mandatory in RFC 9068.
    public var algorithms: [String]
    /// The `typ` header values accepted, compared case-insensitively as media types. Add `JWT`
    /// for identity providers that do not send RFC 9068 tokens (Keycloak, Entra ID, Auth0's
    /// default profile).
    public var acceptedTypes: [String]
    /// The scope a token needs (in `scope` or `scp`); without it the answer is 403.
    public var requiredScope: String
    /// The claim naming the client; `azp` then `sub` are tried when it is absent.
    public var principalClaim: String
    /// The longest accepted `exp − iat`.
    public var maxTokenAge: Duration
    /// How the issuer's key set is fetched and cached.
    public var jwks: JWKSPolicy

    public init(
        issuer: String,
        jwksURI: String? = nil,
        discovery: Bool = false,
        audiences: [String],
        algorithms: [String] = ["RS256", "ES256", "EdDSA"],
        acceptedTypes: [String] = ["at+jwt", "application/at+jwt"],
        requiredScope: String = "events:write",
        principalClaim: String = "client_id",
        maxTokenAge: Duration = .seconds(24 * 3600),
        jwks: JWKSPolicy = JWKSPolicy()
    ) {
        self.issuer = issuer
        self.jwksURI = jwksURI
        self.discovery = discovery
        self.audiences = audiences
        self.algorithms = algorithms
        self.acceptedTypes = acceptedTypes
        self.requiredScope = requiredScope
        self.principalClaim = principalClaim
        self.maxTokenAge = maxTokenAge
        self.jwks = jwks
    }

    /// Checks the configuration; the error names the setting (`auth.oauth.issuers[…].<key>`).
    public func validate() throws(IssuerConfigurationError) {
        let prefix = "auth.oauth.issuers[\(self.issuer)]"
        func fail(_ key: String, _ message: String) -> IssuerConfigurationError {
            IssuerConfigurationError(message: "\(prefix).\(key): \(message)")
        }
        guard !self.issuer.isEmpty else {
            throw IssuerConfigurationError(message: "auth.oauth.issuers[].issuer: must not be empty")
        }
        guard Self.isHTTPS(self.issuer) else {
            throw fail("issuer", "must be an https URL (RFC 8414 §2)")
        }
        switch (self.jwksURI, self.discovery) {
        case (nil, false): throw fail("jwks_uri", "set jwks_uri or discovery: true")
        case (.some, true): throw fail("jwks_uri", "set either jwks_uri or discovery: true, not both")
        case (.some(let uri), false):
            guard Self.isHTTPS(uri) else { throw fail("jwks_uri", "must be an https URL") }
        case (nil, true): break
        }
        guard !self.audiences.isEmpty, !self.audiences.contains(where: \.isEmpty) else {
            throw fail("audiences", "list at least one non-empty audience")
        }
        guard !self.algorithms.isEmpty else { throw fail("algorithms", "list at least one algorithm") }
        for algorithm in self.algorithms {
            if algorithm.lowercased() == "none" {
                throw fail("algorithms", "\"none\" is never accepted (RFC 8725 §3.2)")
            }
            if algorithm.uppercased().hasPrefix("HS") {
                throw fail(
                    "algorithms",
                    "\(algorithm) is not allowed for an OAuth issuer: use its public keys (RS256, ES256, EdDSA)"
                )
            }
            guard Self.supportedAlgorithms.contains(algorithm) else {
                throw fail(
                    "algorithms",
                    "\(algorithm) is not supported; use \(Self.supportedAlgorithms.sorted().joined(separator: ", "))"
                )
            }
        }
        guard !self.acceptedTypes.isEmpty, !self.acceptedTypes.contains(where: \.isEmpty) else {
            throw fail("accepted_typ", "list at least one type (at+jwt)")
        }
        guard !self.requiredScope.isEmpty, !self.requiredScope.contains(" ") else {
            throw fail("required_scope", "must be one non-empty scope")
        }
        guard !self.principalClaim.isEmpty else { throw fail("principal_claim", "must not be empty") }
        guard self.maxTokenAge > .zero else { throw fail("max_token_age", "must be positive") }
        try self.jwks.validate(prefix: "\(prefix).jwks")
    }

    static func isHTTPS(_ text: String) -> Bool {
        guard let url = URL(string: text), url.scheme?.lowercased() == "https", let host = url.host, !host.isEmpty
        else { return false }
        return true
    }
}

/// How one issuer's JWKS is fetched and cached (`auth.oauth.issuers[].jwks`).
public struct JWKSPolicy: Sendable, Equatable {
    /// The lifetime of a fetched set when the response has no `Cache-Control: max-age`.
    public var defaultTTL: Duration
    /// `max-age` is raised to at least this.
    public var minTTL: Duration
    /// `max-age` is lowered to at most this: removed keys stop working within it.
    public var maxTTL: Duration
    /// After an unknown `kid` caused a refetch (or a fetch failed), no other fetch for that
    /// reason starts before this has passed: a flood of random kids costs one fetch a minute.
    public var unknownKidCooldown: Duration
    /// How long past its expiry the last good set keeps serving while the issuer is down; after
    /// that, tokens are refused (`jwks_unavailable`) and readiness reports degraded auth.
    public var staleIfError: Duration
    /// The limit on one fetch, connection to last byte.
    public var timeout: Duration
    /// The largest accepted JWKS or metadata document.
    public var maxBytes: Int
    /// A PEM file of CA certificates to trust instead of the system's, for a private CA.
    public var caFile: String?

    public init(
        defaultTTL: Duration = .seconds(600),
        minTTL: Duration = .seconds(300),
        maxTTL: Duration = .seconds(24 * 3600),
        unknownKidCooldown: Duration = .seconds(60),
        staleIfError: Duration = .seconds(24 * 3600),
        timeout: Duration = .seconds(5),
        maxBytes: Int = 65536,
        caFile: String? = nil
    ) {
        self.defaultTTL = defaultTTL
        self.minTTL = minTTL
        self.maxTTL = maxTTL
        self.unknownKidCooldown = unknownKidCooldown
        self.staleIfError = staleIfError
        self.timeout = timeout
        self.maxBytes = maxBytes
        self.caFile = caFile
    }

    func validate(prefix: String) throws(IssuerConfigurationError) {
        func fail(_ key: String, _ message: String) -> IssuerConfigurationError {
            IssuerConfigurationError(message: "\(prefix).\(key): \(message)")
        }
        guard self.minTTL > .zero else { throw fail("min_ttl", "must be positive") }
        guard self.minTTL <= self.maxTTL else { throw fail("min_ttl", "must not exceed max_ttl") }
        guard self.defaultTTL >= self.minTTL, self.defaultTTL <= self.maxTTL else {
            throw fail("default_ttl", "must lie between min_ttl and max_ttl")
        }
        guard self.unknownKidCooldown >= .zero else { throw fail("unknown_kid_cooldown", "must not be negative") }
        guard self.staleIfError >= .zero else { throw fail("stale_if_error", "must not be negative") }
        guard self.timeout > .zero else { throw fail("timeout", "must be positive") }
        guard self.maxBytes > 0 else { throw fail("max_bytes", "must be positive") }
        if let caFile = self.caFile, !FileManager.default.isReadableFile(atPath: caFile) {
            throw fail("ca_file", "\(caFile) is not readable")
        }
    }
}

/// A setting of `auth.oauth` that Sluice refuses to start with; the message names the setting.
public struct IssuerConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public var description: String { self.message }
}
