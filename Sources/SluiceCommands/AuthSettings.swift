import Auth
import Gateway
import SluiceCore

/// The `auth.*` and `rate_limits.*` settings (docs/security.md): who may write, and how much.
struct AuthSettings {
    /// `auth.required`: a request without a credential is refused. On unless set off, and
    /// then the gateway logs a warning at start.
    var required = true
    /// Where `auth.required` was set, when it was (for the start-up warning).
    var requiredOrigin: String?
    /// `auth.max_token_bytes`: longer bearer tokens are refused before any parsing.
    var maxTokenBytes = 8192
    /// `auth.oauth.leeway`: clock skew allowed on `exp`, `nbf` and `iat`.
    var leeway: Duration = .seconds(60)
    /// `auth.oauth.token_cache.*`: verified tokens remembered by their full text.
    var tokenCacheEntries = 10_000
    var tokenCacheMaxTTL: Duration = .seconds(60)
    /// `auth.oauth.issuers[]`, raw: item index → field path → value.
    var issuerEntries: [Int: [(field: String, value: SettingValue)]] = [:]
    /// `auth.oauth.builtin_server.*`.
    var builtinServer = BuiltinServerSettings()
    /// `auth.policy[]`, raw: item index → field → value.
    var policyEntries: [Int: [(field: String, value: SettingValue)]] = [:]
    /// `rate_limits.*`.
    var rateLimits = RateLimitSettings()
}

struct BuiltinServerSettings {
    var enabled = false
    /// The `iss` of its tokens; default: the gateway's own https URL.
    var issuer: String?
    /// The `aud` of its tokens; default: the issuer.
    var audience: String?
    var signingKeyFile = "./data/oauth/signing.key"
    var clientsFile = "./data/oauth/clients.json"
    var tokenTTL: Duration = .seconds(15 * 60)
    /// The algorithm of a signing key it creates: EdDSA (Ed25519) or ES256 (P-256).
    var signingAlgorithm = AuthorizationServerSigningKey.Algorithm.eddsa
    /// The CA the gateway trusts when it fetches the built-in server's own JWKS over HTTPS;
    /// default: `gateway.tls.cert_file` (a self-signed certificate, or a chain ending in its CA).
    var caFile: String?
}

struct RateLimitSettings {
    /// `rate_limits.default`: secret keys, access tokens, client certificates. The reference
    /// load is 1,000 requests/s from one back end: the default lets it through.
    var serverRate = "1000/s"
    var serverBurst: Int?
    /// `rate_limits.publishable`: per browser key *and* client address, stricter: a
    /// publishable key is public, and one visitor sends a few events a second at most.
    var browserRate = "20/s"
    var browserBurst: Int?
    /// `rate_limits.cost`: requests or events.
    var cost = PrincipalRateLimits.Cost.requests
    /// `rate_limits.principals[]`, raw: item index → field → value.
    var principalEntries: [Int: [(field: String, value: SettingValue)]] = [:]
    /// `rate_limits.failed_auth_per_ip`.
    var failedAuthRate = "10/s"
    var failedAuthBurst: Int?
    /// `rate_limits.failed_auth_per_ip.hold`: how long a blocked address's 429 waits.
    var failedAuthHold: Duration = .seconds(1)
    /// `rate_limits.enabled`: off only for benchmarks of the unlimited path.
    var enabled = true
}

extension SettingsLoader {
    /// Splits `0.issuer` into (0, "issuer") for list-of-mapping keys.
    static func indexed(_ value: SettingValue, path: String) throws -> (Int, String) {
        let parts = value.subkey.split(separator: ".", maxSplits: 1).map(String.init)
        guard parts.count == 2, let index = Int(parts[0]) else {
            throw SettingsError(
                description: "\(value.origin): \(path.dropLast(2)) must be a list of mappings (- field: value)"
            )
        }
        return (index, parts[1])
    }
}

extension AuthSettings {
    /// The `auth.*` and `rate_limits.*` keys; their defaults are these structs'. The lists of
    /// mappings (issuers, policies, per-principal limits) are collected raw, by item index, and
    /// checked as a whole by `validateAuth()`: a field's meaning depends on its siblings.
    static let keys: [ConfigurationKey<AuthSettings>] = [
        ConfigurationKey(
            path: "auth.required",
            kind: .boolean,
            help: "refuse requests without a credential (false logs a warning)",
            read: { "\($0.required)" },
            apply: { settings, value, key in
                settings.required = try value.boolean(key.path)
                settings.requiredOrigin = value.origin
            }
        ),
        .integer("auth.max_token_bytes", \.maxTokenBytes, range: 256...65536, help: "longest bearer token"),
        .duration("auth.oauth.leeway", \.leeway, help: "clock skew allowed on exp/nbf/iat"),
        .integer(
            "auth.oauth.token_cache.max_entries",
            \.tokenCacheEntries,
            range: 0...1_000_000,
            help: "verified tokens remembered (0: none)"
        ),
        .duration("auth.oauth.token_cache.max_ttl", \.tokenCacheMaxTTL, help: "longest a verified token is remembered"),
        ConfigurationKey(
            path: "auth.oauth.issuers.*",
            kind: .string,
            help: "trusted token issuers: a list of {issuer, jwks_uri or discovery, audiences, ...}"
        ) { settings, value, key in
            let (index, field) = try SettingsLoader.indexed(value, path: key.path)
            settings.issuerEntries[index, default: []].append((field, value))
        },
        .boolean(
            "auth.oauth.builtin_server.enabled",
            \.builtinServer.enabled,
            help: "serve /oauth/token, RFC 8414 metadata and a JWKS"
        ),
        .string(
            "auth.oauth.builtin_server.issuer",
            \.builtinServer.issuer,
            computedDefault: "the gateway's URL",
            help: "the built-in server's issuer URL"
        ),
        .string(
            "auth.oauth.builtin_server.audience",
            \.builtinServer.audience,
            computedDefault: "the issuer",
            help: "the aud of its tokens"
        ),
        .string(
            "auth.oauth.builtin_server.signing_key_file",
            \.builtinServer.signingKeyFile,
            help: "its signing key, created if missing"
        ),
        .string(
            "auth.oauth.builtin_server.clients_file",
            \.builtinServer.clientsFile,
            help: "its clients (sluice oauth clients add)"
        ),
        .duration(
            "auth.oauth.builtin_server.token_ttl",
            \.builtinServer.tokenTTL,
            help: "lifetime of its access tokens"
        ),
        .choice(
            "auth.oauth.builtin_server.signing_algorithm",
            \.builtinServer.signingAlgorithm,
            expected: "EdDSA or ES256",
            help: "algorithm of a signing key it creates: EdDSA or ES256"
        ),
        .string(
            "auth.oauth.builtin_server.ca_file",
            \.builtinServer.caFile,
            computedDefault: "gateway.tls.cert_file",
            help: "CA to trust when fetching its own JWKS"
        ),
        ConfigurationKey(
            path: "auth.policy.*",
            kind: .string,
            help: "per-principal rules: a list of {principal, allow_actions, max_batch}"
        ) { settings, value, key in
            let (index, field) = try SettingsLoader.indexed(value, path: key.path)
            settings.policyEntries[index, default: []].append((field, value))
        },
        .boolean("rate_limits.enabled", \.rateLimits.enabled, help: "per-principal and failed-authentication limits"),
        .choice(
            "rate_limits.cost",
            \.rateLimits.cost,
            expected: "requests or events",
            help: "what a request costs: requests or events"
        ),
        .string("rate_limits.default.rate", \.rateLimits.serverRate, help: "per principal of a server credential"),
        .integer(
            "rate_limits.default.burst",
            \.rateLimits.serverBurst,
            range: 1...10_000_000,
            computedDefault: "2 x rate",
            help: "burst above that rate"
        ),
        .string(
            "rate_limits.publishable.rate",
            \.rateLimits.browserRate,
            help: "per publishable key and client address"
        ),
        .integer(
            "rate_limits.publishable.burst",
            \.rateLimits.browserBurst,
            range: 1...10_000_000,
            computedDefault: "2 x rate",
            help: "burst above that rate"
        ),
        .string(
            "rate_limits.failed_auth_per_ip.rate",
            \.rateLimits.failedAuthRate,
            help: "failed authentications per client IP before 429"
        ),
        .integer(
            "rate_limits.failed_auth_per_ip.burst",
            \.rateLimits.failedAuthBurst,
            range: 1...10_000_000,
            computedDefault: "2 x rate",
            help: "burst above that rate"
        ),
        .duration(
            "rate_limits.failed_auth_per_ip.hold",
            \.rateLimits.failedAuthHold,
            atMost: .seconds(60),
            help: "a blocked address's 429 is sent after this wait, which slows a flood down; 0 answers at once"
        ),
        ConfigurationKey(
            path: "rate_limits.principals.*",
            kind: .string,
            help: "overrides: a list of {principal, rate, burst}"
        ) { settings, value, key in
            let (index, field) = try SettingsLoader.indexed(value, path: key.path)
            settings.rateLimits.principalEntries[index, default: []].append((field, value))
        },
    ]
}
