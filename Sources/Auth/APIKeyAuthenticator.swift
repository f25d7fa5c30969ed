import Foundation
import Synchronization

/// An API key that passed every check: who it proves, and its record for the policy (allowed
/// actions, largest batch, rate). Holds no secret.
public struct AuthenticatedKey: Sendable, Hashable {
    /// `key:<name>` for a secret key, `pkey:<name>` for a publishable one.
    public var principal: Principal
    public var record: StoredAPIKey
    /// The origin the request came from, normalised, when a publishable key was checked
    /// against it (what CORS answers with).
    public var origin: String?
}

/// The API-key path of §7.3 step 4: format and checksum (no store lookup on failure), SHA-256
/// lookup, revocation and expiry, then the key's class against the endpoint and origin.
///
/// Per request the gateway calls ``authenticate(key:origin:browserEndpoint:now:)``; it answers
/// from the store's in-memory copy and never blocks.
public final class APIKeyAuthenticator: Sendable {
    private let store: any APIKeyLookup
    private let lookupCount = Atomic<Int>(0)

    public init(store: any APIKeyLookup) { self.store = store }

    /// How many store lookups were made: a malformed key or a bad checksum makes none.
    public var lookups: Int { self.lookupCount.load(ordering: .relaxed) }

    /// Checks `key` as presented by a request.
    ///
    /// - Parameters:
    ///   - key: The credential text (`slk_…` or `slp_…`), already taken out of its header.
    ///   - origin: The request's `Origin` (for a pixel GET without one, the origin of its
    ///     `Referer`); nil when the request has none.
    ///   - browserEndpoint: Whether the route is a browser endpoint (pixel, beacon, CORS).
    ///   - now: The time to judge expiry against.
    /// - Returns: The principal and record, or the failure to answer with: 401 `invalid_token`
    ///   (`malformed_key`, `bad_checksum`, `unknown_key`, `revoked`, `expired`) or 403 `forbidden`
    ///   (`secret_key_in_browser`, `publishable_key_on_server_endpoint`, `origin_required`,
    ///   `origin_not_allowed`).
    public func authenticate(
        key: some StringProtocol,
        origin: String?,
        browserEndpoint: Bool,
        now: Date = Date()
    ) -> Result<AuthenticatedKey, AuthFailure> {
        let parsed: APIKey
        switch APIKey.parse(key) {
        case .success(let key): parsed = key
        case .failure(let failure): return .failure(failure)
        }
        self.lookupCount.add(1, ordering: .relaxed)
        guard let record = self.store.lookup(sha256: parsed.sha256), record.kind == parsed.kind else {
            return .failure(.invalidToken("unknown_key", "The API key is not known."))
        }
        if let revoked = record.revokedAt, revoked <= now {
            return .failure(.invalidToken("revoked", "The API key has been revoked."))
        }
        if let expires = record.expiresAt, expires <= now {
            return .failure(.invalidToken("expired", "The API key has expired."))
        }
        var allowedOrigin: String?
        switch record.kind {
        case .secret:
            if browserEndpoint || origin != nil {
                return .failure(
                    .forbidden(
                        "secret_key_in_browser",
                        "A secret API key may not be used from a browser; use a publishable key (slp_)."
                    )
                )
            }
        case .publishable:
            if !browserEndpoint {
                return .failure(
                    .forbidden(
                        "publishable_key_on_server_endpoint",
                        "A publishable API key may only be used on the browser endpoints."
                    )
                )
            }
            guard let origin else {
                if record.allowedOrigins.contains("*") { break }
                return .failure(.forbidden("origin_required", "A publishable API key needs the request's Origin."))
            }
            let normalized = try? APIKeyRing.normalizeOrigin(origin)
            guard
                record.allowedOrigins.contains("*")
                    || normalized.map({ record.allowedOrigins.contains($0) }) == true
            else {
                return .failure(.forbidden("origin_not_allowed", "This origin may not use this API key."))
            }
            allowedOrigin = normalized
        }
        self.store.noteUsed(id: record.id, at: now)
        return .success(AuthenticatedKey(principal: record.principal, record: record, origin: allowedOrigin))
    }
}
