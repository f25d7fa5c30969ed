import AsyncHTTPClient
import CoreMetrics
import Foundation
import JWTKit
import Logging
import NIOSSL
import Synchronization

/// Verifies OAuth 2.0 JWT access tokens (RFC 9068, RFC 8725) from the configured issuers: the
/// resource-server side of `auth.oauth`.
///
/// ``verify(_:)`` runs the checks of security.md §7.3 step 5 in order (see ``JWTChecks``) and
/// answers a ``VerifiedToken`` or an ``AuthFailure`` ready for RFC 6750 (`invalid_token` with a
/// fixed `reason`, or 403 `insufficient_scope`). Each issuer's JWKS is fetched over HTTPS on
/// first use, refreshed by ``run()`` before it expires, refetched at most once per cooldown for an
/// unknown `kid` with one fetch in flight, and kept while the issuer is down until
/// `stale_if_error`. The verifier never fetches a URL a token names (`jku`, `x5u`).
///
/// Call ``shutdown()`` once done (it closes the HTTP client the verifier made).
public final class TokenVerifier: Sendable {
    /// Counts kept alongside the metrics, for `sluice auth explain` and tests.
    public struct Counters: Sendable, Equatable {
        /// Tokens answered from the verified-token cache.
        public var cacheHits: Int
        /// Tokens that carried `jku`, `x5u`, `jwk`, `x5c` or `x5t` (ignored).
        public var untrustedHeaders: Int
    }

    private let issuers: [IssuerConfiguration]
    private let caches: [String: JWKSCache]
    private let leeway: Duration
    private let maxTokenBytes: Int
    private let tokenCache: VerifiedTokenCache
    private let httpClient: HTTPClient
    private let ownsHTTPClient: Bool
    private let isShutDown = Atomic<Bool>(false)
    private let now: @Sendable () -> Date
    private let logger: Logger
    private let cacheHits = Atomic<Int>(0)
    private let untrustedHeaders = Atomic<Int>(0)
    private let cacheHitCounter: Counter
    private let untrustedHeaderCounters: [String: Counter]

    /// Creates a verifier for `issuers`, validating each (``IssuerConfiguration/validate()``).
    ///
    /// - Parameters:
    ///   - issuers: the trusted issuers; their `issuer` values must be distinct.
    ///   - leeway: clock skew allowed on `exp`, `nbf` and `iat` (`auth.oauth.leeway`).
    ///   - maxTokenBytes: longer tokens are refused before any decoding (`auth.max_token_bytes`).
    ///   - cacheEntries: the verified-token cache's size (`auth.oauth.token_cache.max_entries`).
    ///   - cacheMaxTTL: how long a verification is remembered (`auth.oauth.token_cache.max_ttl`).
    ///   - httpClient: the client for JWKS and metadata fetches. When nil the verifier makes one
    ///     that follows no redirects; a client passed in should not follow redirects either.
    ///   - logger: for key-set fetches (never tokens).
    ///   - metricsFactory: nil for the global `MetricsSystem`.
    ///   - now: the wall clock; tests inject their own.
    public init(
        issuers: [IssuerConfiguration],
        leeway: Duration = .seconds(60),
        maxTokenBytes: Int = 8192,
        cacheEntries: Int = 10_000,
        cacheMaxTTL: Duration = .seconds(60),
        httpClient: HTTPClient? = nil,
        logger: Logger = Logger(label: "sluice.auth.jwt"),
        metricsFactory: (any MetricsFactory)? = nil,
        now: @escaping @Sendable () -> Date = { Date() }
    ) throws(IssuerConfigurationError) {
        var seen: Set<String> = []
        for issuer in issuers {
            try issuer.validate()
            guard seen.insert(issuer.issuer).inserted else {
                throw IssuerConfigurationError(message: "auth.oauth.issuers: \(issuer.issuer) is listed twice")
            }
        }
        guard leeway >= .zero, leeway <= .seconds(600) else {
            throw IssuerConfigurationError(message: "auth.oauth.leeway: must lie between 0s and 10m")
        }
        guard maxTokenBytes > 0 else {
            throw IssuerConfigurationError(message: "auth.max_token_bytes: must be positive")
        }
        let factory = metricsFactory ?? MetricsSystem.factory
        let client: HTTPClient
        let owns: Bool
        if let httpClient {
            client = httpClient
            owns = false
        } else {
            client = HTTPClient(
                eventLoopGroup: HTTPClient.defaultEventLoopGroup,
                configuration: HTTPClient.Configuration(redirectConfiguration: .disallow)
            )
            owns = true
        }
        var caches: [String: JWKSCache] = [:]
        for issuer in issuers {
            let tls: TLSConfiguration?
            do {
                tls = try JWKSFetcher.tlsConfiguration(for: issuer.jwks)
            } catch {
                if owns { try? client.syncShutdown() }
                throw IssuerConfigurationError(
                    message: "auth.oauth.issuers[\(issuer.issuer)].jwks.ca_file: no PEM certificate could be read"
                )
            }
            caches[issuer.issuer] = JWKSCache(
                configuration: issuer,
                fetcher: JWKSFetcher(httpClient: client, policy: issuer.jwks, tlsConfiguration: tls),
                now: now,
                logger: logger,
                metricsFactory: factory
            )
        }
        self.issuers = issuers
        self.caches = caches
        self.leeway = leeway
        self.maxTokenBytes = maxTokenBytes
        self.tokenCache = VerifiedTokenCache(maxEntries: cacheEntries, maxTTL: cacheMaxTTL)
        self.httpClient = client
        self.ownsHTTPClient = owns
        self.now = now
        self.logger = logger
        self.cacheHitCounter = Counter(label: "sluice_auth_token_cache_hits_total", factory: factory)
        var untrusted: [String: Counter] = [:]
        for member in JWTChecks.untrustedHeaderMembers {
            untrusted[member] = Counter(
                label: "sluice_auth_untrusted_header_total",
                dimensions: [("header", member)],
                factory: factory
            )
        }
        self.untrustedHeaderCounters = untrusted
    }

    /// Verifies a bearer token (the text after `Bearer `).
    ///
    /// Throws 401 `invalid_token` (``AuthFailure/reason`` says which check failed) or 403
    /// `insufficient_scope`. May wait for one JWKS fetch of the token's issuer.
    public func verify(_ token: String) async throws(AuthFailure) -> VerifiedToken {
        // 5.1 structure
        try JWTChecks.checkSize(token, maxBytes: self.maxTokenBytes)
        // 5.5, taken first: a hit is this exact token, which passed every check below within
        // the last `cacheMaxTTL` and before its `exp`; parsing it again would cost as much as
        // half a signature check (docs/performance.md, B1).
        if let cached = self.tokenCache.lookup(token, now: self.now()) {
            self.cacheHits.add(1, ordering: .relaxed)
            self.cacheHitCounter.increment()
            return cached
        }
        let segments = try JWTChecks.splitSegments(token)
        // 5.2–5.3 header
        let headerObject = try JWTChecks.decodeJSONObject(segments.header, part: "header")
        let header = try JWTChecks.checkHeader(headerObject)
        for member in header.untrustedMembers {
            self.untrustedHeaders.add(1, ordering: .relaxed)
            self.untrustedHeaderCounters[member]?.increment()
        }
        // 5.4 payload and issuer
        let payload = try JWTChecks.decodeJSONObject(segments.payload, part: "payload")
        let signature = try JWTChecks.decodeBase64URL(segments.signature)
        let issuer = try JWTChecks.selectIssuer(payload, from: self.issuers)
        try JWTChecks.checkHeader(header, for: issuer)
        // 5.6 key, resolved here in the issuer's own set: never jwt-kit's default key.
        guard let keys = self.caches[issuer.issuer] else {
            throw .invalidToken("unknown_issuer", "the token's issuer is not trusted here")
        }
        let key = try await keys.key(for: header.kid).get()
        try JWTChecks.checkKeyAlgorithm(headerAlg: header.alg, keyAlg: key.alg)
        // 5.7 signature, with the key's own algorithm (the header's `alg` equals it, checked
        // above): what jwt-kit's `verify` does after parsing the token a second time.
        let signingInput = Array(token.utf8[..<segments.payload.endIndex])
        guard let algorithm = key.algorithm, (try? algorithm.verify(signature, signs: signingInput)) == true else {
            throw .invalidToken("bad_signature", "the signature does not verify")
        }
        // 5.8 claims
        let now = self.now()
        let verified = try JWTChecks.checkClaims(payload, issuer: issuer, now: now, leeway: self.leeway)
        self.tokenCache.insert(token, verified, now: now)
        return verified
    }

    /// Like ``verify(_:)``, as a `Result`.
    public func verifyResult(_ token: String) async -> Result<VerifiedToken, AuthFailure> {
        do {
            return .success(try await self.verify(token))
        } catch {
            return .failure(error)
        }
    }

    /// Fetches every issuer's key set that is due (all of them at first), waiting for the
    /// fetches. Call it at start so the first requests find keys.
    public func refresh() async {
        await withTaskGroup(of: Void.self) { group in
            for cache in self.caches.values {
                group.addTask { await cache.refreshIfDue() }
            }
        }
    }

    /// Keeps every issuer's key set fresh: refreshes each at ¾ of its TTL (retrying failures once
    /// per cooldown) and updates `sluice_auth_jwks_age_seconds`, until the task is cancelled.
    public func run() async {
        await withTaskGroup(of: Void.self) { group in
            for cache in self.caches.values {
                group.addTask {
                    while !Task.isCancelled {
                        let next = await cache.refreshIfDue()
                        let wait = min(max(next.timeIntervalSince(self.now()), 1), 60)
                        try? await Task.sleep(for: .milliseconds(Int64(wait * 1000)))
                    }
                }
            }
        }
    }

    /// The state of each issuer's key set, for `/readyz` (degraded when any is
    /// ``IssuerStatus/State/unavailable``).
    public func status() -> [IssuerStatus] {
        self.issuers.compactMap { self.caches[$0.issuer]?.status() }
    }

    /// True when some issuer has no usable keys: readiness should report degraded auth.
    public var isDegraded: Bool { self.status().contains(where: \.degraded) }

    /// Counts since start.
    public var counters: Counters {
        Counters(
            cacheHits: self.cacheHits.load(ordering: .relaxed),
            untrustedHeaders: self.untrustedHeaders.load(ordering: .relaxed)
        )
    }

    /// Waits for fetches in flight and closes the HTTP client the verifier made. Idempotent.
    deinit {
        // Dropped without `shutdown()` (a start-up that failed half-way, a test that stopped
        // at a failed expectation): AsyncHTTPClient traps when a client it made is released
        // still running, which would take the whole process down. Shut it down instead, in
        // the background (the callback keeps the client alive until it is done).
        if self.ownsHTTPClient, !self.isShutDown.exchange(true, ordering: .acquiringAndReleasing) {
            let client = self.httpClient
            client.shutdown(queue: .global()) { _ in withExtendedLifetime(client) {} }
        }
    }

    public func shutdown() async throws {
        for cache in self.caches.values { await cache.drain() }
        guard self.ownsHTTPClient, !self.isShutDown.exchange(true, ordering: .acquiringAndReleasing) else { return }
        try await self.httpClient.shutdown()
    }
}
