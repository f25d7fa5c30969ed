import AsyncHTTPClient
import Auth
import Foundation
import Gateway
import Logging
import ServiceLifecycle
import SluiceCore
import Synchronization

/// The running side of `auth.*` and `rate_limits.*`: what the gateway checks credentials with,
/// the built-in authorization server when it is on, and the services that keep key sets and
/// key stores fresh while the gateway runs.
struct AuthRuntime {
    var authentication: GatewayAuthentication
    var authorizationServer: AuthorizationServer?
    /// Reload loops (key store, JWKS refresh); they stop with the gateway.
    var services: [any Service] = []
    /// What SIGHUP reloads, besides the certificate.
    var reloaders: [@Sendable () async -> Void] = []
    /// Lines for the start-up log: what is configured, never a secret.
    var summary: [String] = []
    /// Opened once the gateway listens: the key-set loop waits for it, because the built-in
    /// server's JWKS is served by this very process.
    let listening = Gate()
    /// The key checks and the issuers, for the stats API's own scope (AnalyticsWiring.swift).
    var keyAuthenticator: APIKeyAuthenticator?
    var issuers: [IssuerConfiguration] = []
}

/// Opens once; waiters before that wait, later ones pass.
final class Gate: Sendable {
    private let state = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func open() {
        let waiters = self.state.withLock { state in
            state.open = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once the gate is open, or when the task is cancelled (a gateway that stops
    /// before it ever listened).
    func wait() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let ready = self.state.withLock { state in
                    if state.open { return true }
                    state.waiters.append(continuation)
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            self.open()
        }
    }
}

/// A loop that runs until the service group shuts down.
struct BackgroundLoop: Service {
    let name: String
    let body: @Sendable () async throws -> Void

    func run() async throws {
        try await cancelWhenGracefulShutdown { try await self.body() }
    }
}

extension Settings {
    /// Builds the gateway's authentication from the settings; throws a message naming the
    /// setting when one cannot work. `publicURL` is the gateway's own base URL, the default
    /// issuer of the built-in authorization server.
    func authRuntime(publicURL: String, logger: Logger) throws -> AuthRuntime {
        let settings = self.auth
        var runtime = AuthRuntime(authentication: GatewayAuthentication())
        runtime.authentication.required = settings.required
        runtime.authentication.clientCertificates = self.gateway.tlsClientAuth != .none

        // API keys: a file (one gateway) or PostgreSQL (a fleet).
        let file =
            self.apiKeys.postgresURL == nil
            ? (self.apiKeys.file ?? Self.defaultKeysFile(walDirectory: self.walDirectory)) : self.apiKeys.file
        let store: any APIKeyStore
        do {
            store = try openAPIKeyStore(
                file: file,
                postgresURL: self.apiKeys.postgresURL,
                logger: Logger(label: "sluice.auth.keys")
            )
        } catch {
            throw SettingsError(description: "auth.api_keys: \(error.message)")
        }
        runtime.services.append(BackgroundLoop(name: "keys") { try await store.run() })
        runtime.reloaders.append { _ = await store.reload() }
        runtime.keyAuthenticator = APIKeyAuthenticator(store: store)
        runtime.authentication.verifyAPIKey = Self.keyCheck(APIKeyAuthenticator(store: store), noteUsed: store)
        runtime.summary.append(
            "API keys: " + ((store as? PostgresKeyStore).map { "PostgreSQL \($0.redactedURL)" } ?? file ?? "")
        )

        // OAuth 2.0: the configured issuers, and the built-in server as one more.
        var issuers = try self.issuerConfigurations()
        if settings.builtinServer.enabled {
            let builtin = settings.builtinServer
            var configuration = AuthorizationServerConfiguration(
                issuer: builtin.issuer ?? publicURL,
                signingKeyFile: builtin.signingKeyFile,
                clientsFile: builtin.clientsFile
            )
            configuration.audience = builtin.audience
            configuration.tokenTTL = builtin.tokenTTL
            configuration.signingAlgorithm = builtin.signingAlgorithm
            let server: AuthorizationServer
            do {
                server = try AuthorizationServer(configuration: configuration, logger: Logger(label: "sluice.oauth"))
            } catch {
                throw SettingsError(description: "auth.oauth.builtin_server: \(describe(error))")
            }
            runtime.authorizationServer = server
            if !issuers.contains(where: { $0.issuer == server.issuer }) {
                // The resource side treats it like any issuer: its JWKS over HTTPS.
                var jwks = JWKSPolicy()
                jwks.caFile = builtin.caFile ?? self.gateway.tlsCertFile
                issuers.append(
                    IssuerConfiguration(
                        issuer: server.issuer,
                        jwksURI: server.jwksURI,
                        audiences: [server.audience],
                        algorithms: [server.signingKey.algorithm.rawValue],
                        jwks: jwks
                    )
                )
            }
            runtime.summary.append("built-in authorization server: \(server.tokenEndpoint)")
        }
        runtime.issuers = issuers
        if !issuers.isEmpty {
            let verifier: TokenVerifier
            do {
                verifier = try TokenVerifier(
                    issuers: issuers,
                    leeway: settings.leeway,
                    maxTokenBytes: settings.maxTokenBytes,
                    cacheEntries: settings.tokenCacheEntries,
                    cacheMaxTTL: settings.tokenCacheMaxTTL,
                    logger: Logger(label: "sluice.auth.jwt")
                )
            } catch {
                throw SettingsError(description: error.message)
            }
            let listening = runtime.listening
            runtime.services.append(
                BackgroundLoop(name: "jwks") {
                    await listening.wait()
                    await verifier.run()
                    try? await verifier.shutdown()
                }
            )
            runtime.reloaders.append { await verifier.refresh() }
            runtime.authentication.verifyAccessToken = { token in
                await verifier.verifyResult(token).map { AccessGrant(principal: $0.principal) }
            }
            runtime.authentication.authReadiness = {
                let unavailable = verifier.status().filter(\.degraded).map(\.issuer)
                return unavailable.isEmpty ? nil : "no usable keys from \(unavailable.joined(separator: ", "))"
            }
            runtime.summary.append("OAuth issuers: \(issuers.map(\.issuer).joined(separator: ", "))")
        }

        runtime.authentication.policies = try self.principalPolicies()
        if settings.rateLimits.enabled {
            let limits = settings.rateLimits
            let server = try Self.rate(limits.serverRate, burst: limits.serverBurst, key: "rate_limits.default")
            let browser = try Self.rate(limits.browserRate, burst: limits.browserBurst, key: "rate_limits.publishable")
            runtime.authentication.rateLimits = PrincipalRateLimits(
                defaults: [.secretKey: server, .oauthClient: server, .certificate: server, .publishableKey: browser],
                overrides: try self.principalRateLimits(),
                cost: limits.cost
            )
            runtime.authentication.failedAuthPerIP = FailedAuthLimiter(
                limit: try Self.rate(
                    limits.failedAuthRate,
                    burst: limits.failedAuthBurst,
                    key: "rate_limits.failed_auth_per_ip"
                ),
                hold: limits.failedAuthHold
            )
        }
        return runtime
    }

    /// Checks `auth.*` and `rate_limits.*` as far as can be done without opening a store or
    /// fetching a key set (`sluice config check`).
    func validateAuth() throws {
        for issuer in try self.issuerConfigurations() {
            do { try issuer.validate() } catch { throw SettingsError(description: error.message) }
        }
        _ = try self.principalPolicies()
        _ = try self.principalRateLimits()
        let limits = self.auth.rateLimits
        _ = try Self.rate(limits.serverRate, burst: limits.serverBurst, key: "rate_limits.default")
        _ = try Self.rate(limits.browserRate, burst: limits.browserBurst, key: "rate_limits.publishable")
        _ = try Self.rate(limits.failedAuthRate, burst: limits.failedAuthBurst, key: "rate_limits.failed_auth_per_ip")
        if self.apiKeys.file != nil && self.apiKeys.postgresURL != nil {
            throw SettingsError(description: "set only one of auth.api_keys.file and auth.api_keys.postgres_url")
        }
    }

    /// `auth.api_keys.file` when unset: `keys.json` beside the WAL directory.
    static func defaultKeysFile(walDirectory: String) -> String {
        let parent = (walDirectory as NSString).deletingLastPathComponent
        return (parent.isEmpty ? "." : parent) + "/keys.json"
    }

    static func keyCheck(
        _ authenticator: APIKeyAuthenticator,
        noteUsed store: any APIKeyLookup
    ) -> @Sendable (String, String?, Bool) async -> Result<AccessGrant, AuthFailure> {
        { key, origin, browser in
            let now = Date()
            return authenticator.authenticate(key: key, origin: origin, browserEndpoint: browser, now: now).flatMap {
                // A key made to read stats only (--scope stats:read) must not write.
                guard $0.record.allows(APIKeyScope.eventsWrite) else {
                    return .failure(
                        AuthFailure(
                            .insufficientScope,
                            reason: "insufficient_scope",
                            detail: "this key may not send events",
                            scope: APIKeyScope.eventsWrite
                        )
                    )
                }
                store.noteUsed(id: $0.record.id, at: now)
                let record = $0.record
                let policy =
                    record.allowedActions == nil && record.maxBatch == nil
                    ? nil : AccessPolicy(allowedActions: record.allowedActions.map(Set.init), maxBatch: record.maxBatch)
                return .success(AccessGrant(principal: $0.principal, policy: policy, rateLimit: record.rateLimit))
            }
        }
    }

    /// A rate setting; without a burst, two windows' worth (a client idle for a moment may
    /// catch up without being refused).
    static func rate(_ text: String, burst: Int?, key: String) throws -> RateLimit {
        guard var limit = RateLimit(text, burst: burst) else {
            throw SettingsError(
                description: "\(key).rate = '\(text)' is invalid: expected a rate such as 100/s or 6000/m"
            )
        }
        if burst == nil { limit.burst = limit.count * 2 }
        return limit
    }

    /// `auth.oauth.issuers[]` as the verifier's configurations.
    func issuerConfigurations() throws -> [IssuerConfiguration] {
        try self.auth.issuerEntries.keys.sorted().map { index in
            let fields = self.auth.issuerEntries[index] ?? []
            let where_ = "auth.oauth.issuers[\(index)]"
            func value(_ name: String) -> SettingValue? { fields.last { $0.field == name }?.value }
            func duration(_ name: String) throws -> Duration? {
                try value(name).map { try $0.duration(SettingKey.named("\(where_).\(name)")) }
            }
            for (field, item) in fields where !Self.issuerFields.contains(field) {
                throw SettingsError(
                    description:
                        "\(item.origin): \(where_).\(field) is unknown (expected \(Self.issuerFields.sorted().joined(separator: ", ")))"
                )
            }
            guard let issuer = value("issuer")?.text, !issuer.isEmpty else {
                throw SettingsError(description: "\(where_) needs an issuer (its exact iss)")
            }
            var jwks = JWKSPolicy()
            if let ttl = try duration("jwks.default_ttl") { jwks.defaultTTL = ttl }
            if let ttl = try duration("jwks.min_ttl") { jwks.minTTL = ttl }
            if let ttl = try duration("jwks.max_ttl") { jwks.maxTTL = ttl }
            if let cooldown = try duration("jwks.unknown_kid_cooldown") { jwks.unknownKidCooldown = cooldown }
            if let stale = try duration("jwks.stale_if_error") { jwks.staleIfError = stale }
            if let timeout = try duration("jwks.timeout") { jwks.timeout = timeout }
            if let bytes = value("jwks.max_bytes") {
                jwks.maxBytes = Int(
                    try bytes.integer(SettingKey.named("\(where_).jwks.max_bytes"), range: 1024...(16 << 20))
                )
            }
            jwks.caFile = value("jwks.ca_file")?.text
            var configuration = IssuerConfiguration(
                issuer: issuer,
                jwksURI: value("jwks_uri")?.text,
                discovery: try value("discovery").map { try $0.boolean(SettingKey.named("\(where_).discovery")) }
                    ?? false,
                audiences: value("audiences")?.items ?? [],
                jwks: jwks
            )
            if let algorithms = value("algorithms")?.items { configuration.algorithms = algorithms }
            if let types = value("accepted_typ")?.items { configuration.acceptedTypes = types }
            if let scope = value("required_scope")?.text { configuration.requiredScope = scope }
            if let claim = value("principal_claim")?.text { configuration.principalClaim = claim }
            if let age = try duration("max_token_age") { configuration.maxTokenAge = age }
            return configuration
        }
    }

    static let issuerFields: Set<String> = [
        "issuer", "jwks_uri", "discovery", "audiences", "algorithms", "accepted_typ", "required_scope",
        "principal_claim", "max_token_age", "jwks.default_ttl", "jwks.min_ttl", "jwks.max_ttl",
        "jwks.unknown_kid_cooldown", "jwks.stale_if_error", "jwks.timeout", "jwks.max_bytes", "jwks.ca_file",
    ]

    /// `auth.policy[]`: `{principal, allow_actions, max_batch}`.
    func principalPolicies() throws -> [String: AccessPolicy] {
        var policies: [String: AccessPolicy] = [:]
        for index in self.auth.policyEntries.keys.sorted() {
            let fields = self.auth.policyEntries[index] ?? []
            let where_ = "auth.policy[\(index)]"
            var principal: String?
            var policy = AccessPolicy()
            for (field, value) in fields {
                switch field {
                case "principal": principal = value.text
                case "allow_actions": policy.allowedActions = Set(value.items)
                case "max_batch":
                    policy.maxBatch = Int(
                        try value.integer(SettingKey.named("\(where_).max_batch"), range: 1...1_000_000)
                    )
                default:
                    throw SettingsError(
                        description:
                            "\(value.origin): \(where_).\(field) is unknown (expected principal, allow_actions, max_batch)"
                    )
                }
            }
            guard let principal, principal.contains(":") else {
                throw SettingsError(
                    description:
                        "\(where_) needs a principal such as key:web-shop, client:backend or cert:spiffe://corp/app"
                )
            }
            policies[principal] = policy
        }
        return policies
    }

    /// `rate_limits.principals[]`: `{principal, rate, burst}`.
    func principalRateLimits() throws -> [String: RateLimit] {
        var limits: [String: RateLimit] = [:]
        for index in self.auth.rateLimits.principalEntries.keys.sorted() {
            let fields = self.auth.rateLimits.principalEntries[index] ?? []
            let where_ = "rate_limits.principals[\(index)]"
            var principal: String?
            var rate: String?
            var burst: Int?
            for (field, value) in fields {
                switch field {
                case "principal": principal = value.text
                case "rate": rate = value.text
                case "burst":
                    burst = Int(try value.integer(SettingKey.named("\(where_).burst"), range: 1...10_000_000))
                default:
                    throw SettingsError(
                        description: "\(value.origin): \(where_).\(field) is unknown (expected principal, rate, burst)"
                    )
                }
            }
            guard let principal, principal.contains(":"), let rate else {
                throw SettingsError(description: "\(where_) needs a principal (key:web-shop) and a rate (500/s)")
            }
            limits[principal] = try Self.rate(rate, burst: burst, key: where_)
        }
        return limits
    }
}

extension SettingKey {
    /// A key for error messages about a field inside a list item.
    static func named(_ path: String) -> SettingKey {
        SettingKey(path: path, kind: .string, help: "") { _, _, _ in }
    }
}
