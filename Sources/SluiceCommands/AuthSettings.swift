import Auth
import Gateway

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
    static func indexed(_ value: SettingValue, _ key: SettingKey) throws -> (Int, String) {
        let parts = value.subkey.split(separator: ".", maxSplits: 1).map(String.init)
        guard parts.count == 2, let index = Int(parts[0]) else {
            throw SettingsError(
                description: "\(value.origin): \(key.path.dropLast(2)) must be a list of mappings (- field: value)"
            )
        }
        return (index, parts[1])
    }

    static let authKeys: [SettingKey] = [
        SettingKey(
            path: "auth.required",
            kind: .boolean,
            help: "refuse requests without a credential (true; false logs a warning)"
        ) { settings, value, key in
            settings.auth.required = try value.boolean(key)
            settings.auth.requiredOrigin = value.origin
        },
        SettingKey(path: "auth.max_token_bytes", kind: .integer, help: "longest bearer token (8192)") {
            settings,
            value,
            key in settings.auth.maxTokenBytes = Int(try value.integer(key, range: 256...65536))
        },
        SettingKey(path: "auth.oauth.leeway", kind: .duration, help: "clock skew allowed on exp/nbf/iat (60s)") {
            settings,
            value,
            key in settings.auth.leeway = try value.duration(key)
        },
        SettingKey(
            path: "auth.oauth.token_cache.max_entries",
            kind: .integer,
            help: "verified tokens remembered (10000; 0: none)"
        ) { settings, value, key in
            settings.auth.tokenCacheEntries = Int(try value.integer(key, range: 0...1_000_000))
        },
        SettingKey(
            path: "auth.oauth.token_cache.max_ttl",
            kind: .duration,
            help: "longest a verified token is remembered (60s)"
        ) { settings, value, key in settings.auth.tokenCacheMaxTTL = try value.duration(key)
        },
        SettingKey(
            path: "auth.oauth.issuers.*",
            kind: .string,
            help: "trusted token issuers: a list of {issuer, jwks_uri | discovery, audiences, ...}"
        ) { settings, value, key in
            let (index, field) = try indexed(value, key)
            settings.auth.issuerEntries[index, default: []].append((field, value))
        },
        SettingKey(
            path: "auth.oauth.builtin_server.enabled",
            kind: .boolean,
            help: "serve /oauth/token, RFC 8414 metadata and a JWKS (false)"
        ) { settings, value, key in settings.auth.builtinServer.enabled = try value.boolean(key)
        },
        SettingKey(
            path: "auth.oauth.builtin_server.issuer",
            kind: .string,
            help: "the built-in server's issuer URL (default: the gateway's URL)"
        ) { settings, value, key in settings.auth.builtinServer.issuer = value.text
        },
        SettingKey(
            path: "auth.oauth.builtin_server.audience",
            kind: .string,
            help: "the aud of its tokens (default: the issuer)"
        ) { settings, value, key in settings.auth.builtinServer.audience = value.text
        },
        SettingKey(
            path: "auth.oauth.builtin_server.signing_key_file",
            kind: .string,
            help: "its Ed25519 signing key, created if missing (./data/oauth/signing.key)"
        ) { settings, value, key in settings.auth.builtinServer.signingKeyFile = value.text
        },
        SettingKey(
            path: "auth.oauth.builtin_server.clients_file",
            kind: .string,
            help: "its clients (sluice oauth clients add) (./data/oauth/clients.json)"
        ) { settings, value, key in settings.auth.builtinServer.clientsFile = value.text
        },
        SettingKey(
            path: "auth.oauth.builtin_server.token_ttl",
            kind: .duration,
            help: "lifetime of its access tokens (15m)"
        ) { settings, value, key in settings.auth.builtinServer.tokenTTL = try value.duration(key)
        },
        SettingKey(
            path: "auth.oauth.builtin_server.signing_algorithm",
            kind: .string,
            help: "algorithm of a signing key it creates: EdDSA or ES256 (EdDSA)"
        ) { settings, value, key in
            guard let algorithm = AuthorizationServerSigningKey.Algorithm(rawValue: value.text) else {
                throw value.fail(key, "EdDSA or ES256")
            }
            settings.auth.builtinServer.signingAlgorithm = algorithm
        },
        SettingKey(
            path: "auth.oauth.builtin_server.ca_file",
            kind: .string,
            help: "CA to trust when fetching its own JWKS (default: gateway.tls.cert_file)"
        ) { settings, value, key in settings.auth.builtinServer.caFile = value.text
        },
        SettingKey(
            path: "auth.policy.*",
            kind: .string,
            help: "per-principal rules: a list of {principal, allow_actions, max_batch}"
        ) { settings, value, key in
            let (index, field) = try indexed(value, key)
            settings.auth.policyEntries[index, default: []].append((field, value))
        },
        SettingKey(
            path: "rate_limits.enabled",
            kind: .boolean,
            help: "per-principal and failed-authentication limits (true)"
        ) { settings, value, key in settings.auth.rateLimits.enabled = try value.boolean(key)
        },
        SettingKey(path: "rate_limits.cost", kind: .string, help: "what a request costs: requests or events (requests)")
        {
            settings,
            value,
            key in
            guard let cost = PrincipalRateLimits.Cost(rawValue: value.text) else {
                throw value.fail(key, "requests or events")
            }
            settings.auth.rateLimits.cost = cost
        },
        SettingKey(
            path: "rate_limits.default.rate",
            kind: .string,
            help: "per principal of a server credential (1000/s)"
        ) { settings, value, key in settings.auth.rateLimits.serverRate = value.text
        },
        SettingKey(path: "rate_limits.default.burst", kind: .integer, help: "burst above that rate (2 x rate)") {
            settings,
            value,
            key in settings.auth.rateLimits.serverBurst = Int(try value.integer(key, range: 1...10_000_000))
        },
        SettingKey(
            path: "rate_limits.publishable.rate",
            kind: .string,
            help: "per publishable key and client address (20/s)"
        ) {
            settings,
            value,
            key in settings.auth.rateLimits.browserRate = value.text
        },
        SettingKey(path: "rate_limits.publishable.burst", kind: .integer, help: "burst above that rate (2 x rate)") {
            settings,
            value,
            key in settings.auth.rateLimits.browserBurst = Int(try value.integer(key, range: 1...10_000_000))
        },
        SettingKey(
            path: "rate_limits.failed_auth_per_ip.rate",
            kind: .string,
            help: "failed authentications per client IP before 429 (10/s)"
        ) { settings, value, key in settings.auth.rateLimits.failedAuthRate = value.text
        },
        SettingKey(
            path: "rate_limits.failed_auth_per_ip.burst",
            kind: .integer,
            help: "burst above that rate (2 x rate)"
        ) { settings, value, key in
            settings.auth.rateLimits.failedAuthBurst = Int(try value.integer(key, range: 1...10_000_000))
        },
        SettingKey(
            path: "rate_limits.failed_auth_per_ip.hold",
            kind: .duration,
            help: "a blocked address's 429 is sent after this wait, which slows a flood down; 0 answers at once (1s)"
        ) { settings, value, key in
            let hold = try value.duration(key)
            guard hold <= .seconds(60) else { throw value.fail(key, "a duration of at most 60s") }
            settings.auth.rateLimits.failedAuthHold = hold
        },
        SettingKey(
            path: "rate_limits.principals.*",
            kind: .string,
            help: "overrides: a list of {principal, rate, burst}"
        ) { settings, value, key in
            let (index, field) = try indexed(value, key)
            settings.auth.rateLimits.principalEntries[index, default: []].append((field, value))
        },
    ]
}
