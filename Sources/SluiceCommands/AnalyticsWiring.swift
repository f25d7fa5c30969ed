import Auth
import ClickHouse
import Foundation
import Gateway
import Logging
import ServiceLifecycle
import SluiceCore

extension Settings {
    /// The gateway's stats API when `analytics.enabled`: a ClickHouse client on the loader's
    /// `clickhouse.*` settings, and the `stats:read` checks — API keys made with that scope,
    /// and access tokens that carry it (verified by a verifier of their own, because the
    /// ingest verifier requires each issuer's `required_scope`, `events:write` by default).
    /// nil when analytics is off. Appends the services that must stop with the gateway.
    func statsService(auth: AuthRuntime, services: inout [any Service], logger: Logger) throws -> StatsService? {
        guard self.analytics.enabled else { return nil }
        let client = ClickHouseClient(self.clickHouse, logger: Logger(label: "sluice.analytics.clickhouse"))
        services.append(
            BackgroundLoop(name: "analytics") {
                // Holds the client until the gateway stops, then closes its connections.
                try? await Task.sleep(for: .seconds(1_000_000_000))
                try? await client.shutdown()
            }
        )
        var tokenCheck: (@Sendable (String) async -> Result<Principal, AuthFailure>)?
        if !auth.issuers.isEmpty {
            let issuers = auth.issuers.map { issuer in
                var issuer = issuer
                issuer.requiredScope = APIKeyScope.statsRead
                return issuer
            }
            let verifier: TokenVerifier
            do {
                verifier = try TokenVerifier(
                    issuers: issuers,
                    leeway: self.auth.leeway,
                    maxTokenBytes: self.auth.maxTokenBytes,
                    cacheEntries: self.auth.tokenCacheEntries,
                    cacheMaxTTL: self.auth.tokenCacheMaxTTL,
                    logger: Logger(label: "sluice.analytics.jwt")
                )
            } catch {
                throw SettingsError(description: error.message)
            }
            let listening = auth.listening
            services.append(
                BackgroundLoop(name: "analytics-jwks") {
                    await listening.wait()
                    await verifier.run()
                    try? await verifier.shutdown()
                }
            )
            tokenCheck = { token in await verifier.verifyResult(token).map(\.principal) }
        }
        let keys = auth.keyAuthenticator
        let tokens = tokenCheck
        logger.info(
            "analytics.enabled",
            metadata: ["table": "\(self.analytics.table)", "clickhouse": "\(self.clickHouse.url)"]
        )
        return StatsService(
            table: self.analytics.table,
            query: { sql in try await client.query(sql) },
            authorize: { credential in
                switch credential {
                case .none:
                    return .failure(.invalidToken("missing", "the stats API needs a credential"))
                case .accessToken(let token):
                    guard let tokenCheck = tokens else {
                        return .failure(.invalidToken("no_issuer", "this gateway accepts no access tokens"))
                    }
                    return await tokenCheck(token)
                case .apiKey(let key, _):
                    guard let keys else { return .failure(.invalidToken("no_key_store", "no API keys here")) }
                    return Self.statsKeyCheck(keys, key: key)
                }
            }
        )
    }

    /// A key for the stats API: a secret key with the `stats:read` scope. A publishable key
    /// never, whatever its record says: browser pages give their keys to anyone.
    static func statsKeyCheck(_ authenticator: APIKeyAuthenticator, key: String) -> Result<Principal, AuthFailure> {
        authenticator.authenticate(key: key, origin: nil, browserEndpoint: false).flatMap { found in
            guard found.record.kind == .secret, found.record.allows(APIKeyScope.statsRead) else {
                return .failure(
                    AuthFailure(
                        .insufficientScope,
                        reason: "insufficient_scope",
                        detail: "this key may not read stats; create one with sluice keys create --scope stats:read",
                        scope: APIKeyScope.statsRead
                    )
                )
            }
            return .success(found.principal)
        }
    }
}
