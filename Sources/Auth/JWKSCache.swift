import CoreMetrics
import Foundation
import JWTKit
import Logging
import SluiceCore
import Synchronization

/// The health of one issuer's key set, for `/readyz` and for operators.
public struct IssuerStatus: Sendable, Equatable {
    public enum State: String, Sendable {
        /// Keys fetched within their TTL.
        case fresh
        /// Past its TTL (the issuer could not be reached), still serving within `stale_if_error`.
        case stale
        /// No usable keys: never fetched, or stale beyond `stale_if_error`. Tokens of this issuer
        /// are refused with `jwks_unavailable`.
        case unavailable
    }

    public var issuer: String
    public var state: State
    /// Signing keys loaded.
    public var keyCount: Int
    /// When the current set was fetched.
    public var fetchedAt: Date?
    /// Seconds since then.
    public var ageSeconds: Double?
    /// The last fetch's failure, if the last fetch failed (safe to show).
    public var lastError: String?
    /// Fetches started so far (successful or not).
    public var fetches: Int

    /// Readiness should report degraded auth.
    public var degraded: Bool { self.state == .unavailable }
}

/// One issuer's JWKS: the last good normalised key set, fetched on first use, refreshed before it
/// expires, refetched once per cooldown for an unknown `kid`, and kept while the issuer is down
/// until `stale_if_error` runs out. At most one fetch is in flight; concurrent callers wait for
/// it (single-flight). Keys of different issuers never meet.
final class JWKSCache: Sendable {
    /// A key set as fetched at one time; replaced whole, never edited.
    struct KeySet: Sendable {
        var keys: [String: NormalizedKey]
        var fetchedAt: Date
        var expiresAt: Date
    }

    private struct State: Sendable {
        var keySet: KeySet?
        var discoveredURI: String?
        var inFlight: Task<Void, Never>?
        var lastUnknownKidFetch: Date?
        var lastFailure: Date?
        var lastError: String?
        var fetches = 0
    }

    private enum Decision {
        case found(NormalizedKey)
        case wait(Task<Void, Never>)
        case failure(AuthFailure)
    }

    let configuration: IssuerConfiguration
    private let fetcher: JWKSFetcher
    private let now: @Sendable () -> Date
    private let logger: Logger
    private let state = Mutex(State())
    private let refreshOK: Counter
    private let refreshFailed: Counter
    private let age: Gauge
    private let factory: any MetricsFactory

    init(
        configuration: IssuerConfiguration,
        fetcher: JWKSFetcher,
        now: @escaping @Sendable () -> Date,
        logger: Logger,
        metricsFactory: any MetricsFactory
    ) {
        self.configuration = configuration
        self.fetcher = fetcher
        self.now = now
        self.logger = logger
        self.factory = metricsFactory
        let issuer = configuration.issuer
        self.refreshOK = Counter(
            label: "sluice_auth_jwks_refresh_total",
            dimensions: [("issuer", issuer), ("result", "ok")],
            factory: metricsFactory
        )
        self.refreshFailed = Counter(
            label: "sluice_auth_jwks_refresh_total",
            dimensions: [("issuer", issuer), ("result", "error")],
            factory: metricsFactory
        )
        self.age = Gauge(
            label: "sluice_auth_jwks_age_seconds",
            dimensions: [("issuer", issuer)],
            factory: metricsFactory
        )
    }

    private var policy: JWKSPolicy { self.configuration.jwks }

    /// The key named `kid` (with its verifier). May wait for one fetch.
    func key(for kid: String) async -> Result<NormalizedKey, AuthFailure> {
        var allowFetch = true
        while true {
            switch self.decide(kid: kid, allowFetch: allowFetch) {
            case .found(let key): return .success(key)
            case .failure(let failure): return .failure(failure)
            case .wait(let task):
                await task.value
                allowFetch = false
            }
        }
    }

    private func decide(kid: String, allowFetch: Bool) -> Decision {
        let now = self.now()
        return self.state.withLock { state -> Decision in
            let failureCooldownOver =
                state.lastFailure.map { now >= $0 + self.policy.unknownKidCooldown.seconds } ?? true
            guard let set = state.keySet else {
                if allowFetch {
                    if let task = state.inFlight { return .wait(task) }
                    if failureCooldownOver { return .wait(self.startFetch(&state)) }
                }
                return .failure(.invalidToken("jwks_unavailable", "the issuer's keys are not available"))
            }
            let fresh = now < set.expiresAt
            let usable = now < set.expiresAt + self.policy.staleIfError.seconds
            if fresh, let key = set.keys[kid] { return .found(key) }
            if allowFetch {
                if let task = state.inFlight { return .wait(task) }
                if !fresh, failureCooldownOver { return .wait(self.startFetch(&state)) }
                let unknownKidCooldownOver =
                    state.lastUnknownKidFetch.map { now >= $0 + self.policy.unknownKidCooldown.seconds } ?? true
                if fresh, unknownKidCooldownOver, failureCooldownOver {
                    state.lastUnknownKidFetch = now
                    return .wait(self.startFetch(&state))
                }
            }
            guard usable else {
                return .failure(.invalidToken("jwks_unavailable", "the issuer's keys are not available"))
            }
            if let key = set.keys[kid] { return .found(key) }
            return .failure(.invalidToken("unknown_kid", "the token's key is not among the issuer's keys"))
        }
    }

    /// Starts a fetch; called with the lock held and no fetch in flight.
    private func startFetch(_ state: inout State) -> Task<Void, Never> {
        state.fetches += 1
        let task = Task { await self.fetch() }
        state.inFlight = task
        return task
    }

    /// Refreshes the set if it is due (¾ of its TTL passed, or never fetched), waiting for the
    /// fetch. Returns when the next refresh is due.
    @discardableResult
    func refreshIfDue() async -> Date {
        let now = self.now()
        let task: Task<Void, Never>? = self.state.withLock { state in
            if let task = state.inFlight { return task }
            guard now >= self.nextRefresh(state) else { return nil }
            return self.startFetch(&state)
        }
        if let task { await task.value }
        self.recordAge()
        return self.state.withLock { self.nextRefresh($0) }
    }

    private func nextRefresh(_ state: State) -> Date {
        if let lastFailure = state.lastFailure,
            state.keySet.map({ lastFailure > $0.fetchedAt }) ?? true
        {
            return lastFailure + self.policy.unknownKidCooldown.seconds
        }
        guard let set = state.keySet else { return .distantPast }
        return set.fetchedAt + set.expiresAt.timeIntervalSince(set.fetchedAt) * 0.75
    }

    /// Fetches, normalises and installs a new set; keeps the old set on failure.
    private func fetch() async {
        let result: Result<(KeySet, [DroppedKey]), JWKSFetchError> = await self.load()
        let now = self.now()
        switch result {
        case .success(let (set, dropped)):
            self.state.withLock { state in
                state.keySet = set
                state.lastFailure = nil
                state.lastError = nil
                state.inFlight = nil
            }
            self.refreshOK.increment()
            for key in dropped {
                Counter(
                    label: "sluice_auth_jwks_keys_dropped_total",
                    dimensions: [("issuer", self.configuration.issuer), ("reason", key.reason)],
                    factory: self.factory
                ).increment()
            }
            if !dropped.isEmpty {
                self.logger.info(
                    "JWKS keys skipped",
                    metadata: [
                        "issuer": "\(self.configuration.issuer)",
                        "dropped": "\(dropped.map { "\($0.kid ?? "-"):\($0.reason)" }.joined(separator: ","))",
                    ]
                )
            }
            self.logger.debug(
                "JWKS loaded",
                metadata: ["issuer": "\(self.configuration.issuer)", "keys": "\(set.keys.count)"]
            )
        case .failure(let error):
            self.state.withLock { state in
                state.lastFailure = now
                state.lastError = error.description
                state.inFlight = nil
                if error.label != "not_https" { state.discoveredURI = nil }
            }
            self.refreshFailed.increment()
            self.logger.warning(
                "JWKS fetch failed",
                metadata: ["issuer": "\(self.configuration.issuer)", "error": "\(error)"]
            )
        }
        self.recordAge()
    }

    private func load() async -> Result<(KeySet, [DroppedKey]), JWKSFetchError> {
        do throws(JWKSFetchError) {
            let uri = try await self.jwksURI()
            let document = try await self.fetcher.get(uri)
            let normalized: JWKSNormalizer.Result
            do {
                normalized = try JWKSNormalizer.normalize(
                    document.body,
                    allowedAlgorithms: self.configuration.algorithms
                )
            } catch {
                throw JWKSFetchError(label: "invalid_jwks", message: "the document is not a JWKS")
            }
            let (_, loaded, refused) = await JWKSNormalizer.makeCollection(normalized.keys)
            guard !loaded.isEmpty else {
                throw JWKSFetchError(label: "no_usable_keys", message: "the JWKS has no usable signing key")
            }
            let fetchedAt = self.now()
            let ttl = JWKSFetcher.timeToLive(cacheControl: document.cacheControl, policy: self.policy)
            let set = KeySet(
                keys: Dictionary(uniqueKeysWithValues: loaded.map { ($0.kid, $0) }),
                fetchedAt: fetchedAt,
                expiresAt: fetchedAt + ttl.seconds
            )
            return .success((set, normalized.dropped + refused))
        } catch {
            return .failure(error)
        }
    }

    private func jwksURI() async throws(JWKSFetchError) -> String {
        if let uri = self.configuration.jwksURI { return uri }
        if let uri = self.state.withLock({ $0.discoveredURI }) { return uri }
        let uri = try await self.fetcher.discoverJWKSURI(issuer: self.configuration.issuer)
        self.state.withLock { $0.discoveredURI = uri }
        return uri
    }

    /// Waits for a fetch in flight, if any.
    func drain() async {
        if let task = self.state.withLock({ $0.inFlight }) { await task.value }
    }

    private func recordAge() {
        if let age = self.status().ageSeconds { self.age.record(age) }
    }

    func status() -> IssuerStatus {
        let now = self.now()
        return self.state.withLock { state in
            let set = state.keySet
            let statusState: IssuerStatus.State
            if let set {
                if now < set.expiresAt {
                    statusState = .fresh
                } else if now < set.expiresAt + self.policy.staleIfError.seconds {
                    statusState = .stale
                } else {
                    statusState = .unavailable
                }
            } else {
                statusState = .unavailable
            }
            return IssuerStatus(
                issuer: self.configuration.issuer,
                state: statusState,
                keyCount: set?.keys.count ?? 0,
                fetchedAt: set?.fetchedAt,
                ageSeconds: set.map { now.timeIntervalSince($0.fetchedAt) },
                lastError: state.lastError,
                fetches: state.fetches
            )
        }
    }
}
