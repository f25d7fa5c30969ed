import Auth
import CoreMetrics
import EventModel
import HTTPTypes
import Hummingbird
import Logging
import Metrics
import NIOCore
import SluiceCore
import Synchronization

/// Who may write to the gateway and how much: the credential checks, the per-principal
/// policy and the rate limits, in the order of docs/security.md ("The checks, in order").
///
/// The checks themselves live in the `Auth` module; this holds them together for the
/// gateway. The library default lets anyone write (tests, benchmarks); `sluice gateway`
/// requires a credential unless `auth.required: false` is set explicitly.
public struct GatewayAuthentication: Sendable {
    /// A request without a credential (and without a client certificate) is refused with 401.
    public var required = false
    /// Checks an OAuth 2.0 access token (JWT); nil: tokens are refused.
    public var verifyAccessToken: (@Sendable (String) async -> Result<AccessGrant, AuthFailure>)?
    /// Checks an API key: the key, the request's browser origin if any, and whether the route
    /// is a browser endpoint. nil: keys are refused.
    public var verifyAPIKey:
        (
            @Sendable (_ key: String, _ origin: String?, _ browserEndpoint: Bool) async -> Result<
                AccessGrant, AuthFailure
            >
        )?
    /// A request with no credential but a verified client certificate is that certificate's
    /// principal (`cert:<identity>`).
    public var clientCertificates = false
    /// Rules per principal (`key:web-shop`, `client:backend`): which actions, how large a batch.
    public var policies: [String: AccessPolicy] = [:]
    /// Per-principal rate limits; nil: none.
    public var rateLimits: PrincipalRateLimits?
    /// Failed authentications per client IP, checked before any cryptography; nil: none.
    public var failedAuthPerIP: FailedAuthLimiter?
    /// Serves `/oauth/token`, its metadata and its JWKS when set (the built-in server).
    public var authorizationServer: AuthorizationServer?
    /// Why some credentials cannot be checked now (an issuer's keys unavailable past
    /// `stale_if_error`), for `/readyz`; nil: all can.
    public var authReadiness: (@Sendable () -> String?)?

    public init() {}

    /// Anyone may write; nothing is limited. What the library's callers get by default.
    public static let open = GatewayAuthentication()
}

/// What a checked credential grants.
public struct AccessGrant: Sendable, Equatable {
    public var principal: Principal
    /// Rules that came with the credential (an API key's allowed actions and largest batch);
    /// a configured policy for the principal takes precedence.
    public var policy: AccessPolicy?
    /// The credential's own rate limit (an API key's `rate`), over the kind's default.
    public var rateLimit: RateLimit?

    public init(principal: Principal, policy: AccessPolicy? = nil, rateLimit: RateLimit? = nil) {
        self.principal = principal
        self.policy = policy
        self.rateLimit = rateLimit
    }
}

/// What a principal may send.
public struct AccessPolicy: Sendable, Equatable {
    /// Actions it may send; nil: any.
    public var allowedActions: Set<String>?
    /// Most events in one request; nil: the gateway's limit.
    public var maxBatch: Int?

    public init(allowedActions: Set<String>? = nil, maxBatch: Int? = nil) {
        self.allowedActions = allowedActions
        self.maxBatch = maxBatch
    }

    /// The events' actions this policy forbids, in first-seen order.
    func forbiddenActions(_ actions: [String]) -> [String] {
        guard let allowed = self.allowedActions, !allowed.contains("*") else { return [] }
        var seen = Set<String>()
        return actions.filter { !allowed.contains($0) && seen.insert($0).inserted }
    }
}

/// Per-principal GCRA limits: a default per credential kind, overrides per principal.
public final class PrincipalRateLimits: Sendable {
    /// What one request costs.
    public enum Cost: String, Sendable {
        /// One per request, checked before the body is read.
        case requests
        /// One per event, checked once the body is decoded.
        case events
    }

    let defaults: [Principal.Kind: RateLimit]
    let overrides: [String: RateLimit]
    public let cost: Cost
    let limiter: RateLimiter
    let limited = Mutex<[String: Counter]>([:])

    /// - Parameters:
    ///   - defaults: the limit of each credential kind; a kind without one is not limited.
    ///   - overrides: by principal (`client:backend`), over the credential's and the kind's.
    public init(defaults: [Principal.Kind: RateLimit], overrides: [String: RateLimit] = [:], cost: Cost = .requests) {
        self.defaults = defaults
        self.overrides = overrides
        self.cost = cost
        self.limiter = RateLimiter()
    }

    /// The limit that applies to a grant, and the policy name shown in `RateLimit-Policy`.
    func limit(for grant: AccessGrant) -> (RateLimit, String)? {
        self.limit(for: grant, name: grant.principal.description)
    }

    private func limit(for grant: AccessGrant, name: String) -> (RateLimit, String)? {
        if !self.overrides.isEmpty, let limit = self.overrides[name] { return (limit, "principal") }
        if let limit = grant.rateLimit { return (limit, "key") }
        if let limit = self.defaults[grant.principal.kind] { return (limit, grant.principal.kind.method) }
        return nil
    }

    /// Spends `cost` of the grant's budget; the answer carries the headers either way.
    ///
    /// A publishable key is shared by every visitor of a site, so its budget is per key *and*
    /// client address: one abuser of a leaked browser key is limited without throttling the
    /// site's other visitors. Every other principal has one budget.
    func acquire(_ grant: AccessGrant, cost: Int, client: String?) -> RateLimitAnswer? {
        var key = grant.principal.description
        guard let (limit, policy) = self.limit(for: grant, name: key) else { return nil }
        if grant.principal.kind == .publishableKey { key += "|" + (client ?? "unknown") }
        let decision = self.limiter.check(key, cost: cost, limit: limit)
        if !decision.allowed { self.counter(policy).increment() }
        return RateLimitAnswer(decision: decision, limit: limit, policy: policy)
    }

    private func counter(_ policy: String) -> Counter {
        self.limited.withLock { counters in
            if let counter = counters[policy] { return counter }
            let counter = Counter(label: "sluice_ratelimit_limited_total", dimensions: [("policy", policy)])
            counters[policy] = counter
            return counter
        }
    }
}

/// Failed authentications per client IP: once an address has spent its budget, its requests
/// are answered 429 before any token is parsed or key hashed, so that a flood of bad
/// credentials cannot take the CPU that good clients need.
///
/// A refusal still costs an HTTP exchange, about as much CPU as a good request, so a client
/// that keeps sending on its connections would still compete with good clients (docs/performance.md,
/// B4). The refusal of a blocked address is therefore *held* for `hold` before it is sent: a
/// client that waits for each answer (every HTTP/1.1 client does, per connection) is slowed to
/// one request per `hold` per connection. At most `maxHeld` refusals wait at once (each holds a
/// connection and a task, nothing more); beyond that they are answered at once.
public final class FailedAuthLimiter: Sendable {
    let limit: RateLimit
    let limiter: RateLimiter
    let hold: Duration
    let maxHeld: Int
    private let held = Atomic<Int>(0)
    let refused = Counter(label: "sluice_ratelimit_limited_total", dimensions: [("policy", "failed_auth_per_ip")])

    /// - Parameters:
    ///   - limit: failed authentications an address may make.
    ///   - hold: how long a blocked address's 429 waits before it is sent (zero: not at all).
    ///   - maxHeld: the most refusals waiting at once.
    public init(limit: RateLimit, hold: Duration = .zero, maxHeld: Int = 512) {
        self.limit = limit
        self.limiter = RateLimiter()
        self.hold = hold
        self.maxHeld = maxHeld
    }

    /// Waits `hold` before a blocked address's refusal is sent, unless `maxHeld` already wait
    /// (or the request is cancelled: the connection closed).
    package func holdRefusal() async {
        guard self.hold > .zero else { return }
        guard self.held.wrappingAdd(1, ordering: .relaxed).newValue <= self.maxHeld else {
            self.held.wrappingSubtract(1, ordering: .relaxed)
            return
        }
        defer { self.held.wrappingSubtract(1, ordering: .relaxed) }
        try? await Task.sleep(for: self.hold)
    }

    /// Refusals waiting now.
    package var heldCount: Int { self.held.load(ordering: .relaxed) }

    /// Whether the address may try now; nil if yes, else the seconds to wait.
    func blocked(_ address: String) -> Int? {
        let decision = self.limiter.peek(address, limit: self.limit)
        if decision.allowed { return nil }
        self.refused.increment()
        return decision.retryAfterSeconds
    }

    /// Counts one failure against the address.
    func failed(_ address: String) {
        _ = self.limiter.check(address, limit: self.limit)
    }
}

/// A rate-limit decision with what the response headers need.
struct RateLimitAnswer: Sendable {
    var decision: RateLimitDecision
    var limit: RateLimit
    var policy: String

    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers), and
    /// `Retry-After` when refused.
    func apply(to headers: inout HTTPFields) {
        headers[.rateLimitPolicy] = RateLimitHeaders.policy(name: self.policy, limit: self.limit)
        headers[.rateLimit] = RateLimitHeaders.state(name: self.policy, decision: self.decision)
        if !self.decision.allowed { headers[.retryAfter] = String(self.decision.retryAfterSeconds) }
    }
}

/// What authentication found out about a request, for the access log (the context is a value
/// passed inward; the log line is written on the way out).
final class RequestAuthRecord: Sendable {
    struct State: Sendable {
        var principal: Principal?
        var method: String?
        var failure: String?
        var rateLimit: RateLimitAnswer?
    }

    let state = Mutex(State())
}

/// The routes that take events, and which of them browsers call without headers.
enum IngestRoutes {
    static let all: Set<String> = Set(["/v1/events", "/v1/events/batch", "/v1/pixel"] + SegmentRoutes.paths.keys)
    static let browser: Set<String> = ["/v1/pixel"]
    /// `GET /v1/receipts/{id}`: readable only by the principal that sent the events.
    static let receiptPrefix = "/v1/receipts/"

    static func isReceipt(_ request: Request) -> Bool {
        (request.method == .get || request.method == .head) && request.uri.path.hasPrefix(Self.receiptPrefix)
    }
}

/// Runs the checks for the ingest routes: credential, failed-auth limit, principal, policy
/// (what can be checked before the body), rate limit. Puts the grant into the context.
struct AuthenticationMiddleware: RouterMiddleware {
    typealias Context = IngestRequestContext

    let authentication: GatewayAuthentication
    let metrics: AuthMetrics

    func handle(
        _ request: Request,
        context: IngestRequestContext,
        next: (Request, IngestRequestContext) async throws -> Response
    ) async throws -> Response {
        if request.uri.path == "/oauth/token", let limiter = self.authentication.failedAuthPerIP {
            return try await self.tokenEndpoint(request, context: context, limiter: limiter, next: next)
        }
        // Only requests a route will take: a wrong method is the router's 405, not a 401.
        guard
            (IngestRoutes.all.contains(request.uri.path)
                && gatewayRoutes[request.uri.path]?.contains(request.method) == true)
                || IngestRoutes.isReceipt(request)
        else {
            return try await next(request, context)
        }
        let started = ContinuousClock.now
        var context = context
        let grant = try await self.authenticate(request, context: context)
        context.grant = grant
        let method = grant.principal.kind.method
        context.authRecord.state.withLock {
            $0.principal = grant.principal
            $0.method = method
        }
        self.metrics.record(method: method, result: "accepted", reason: "ok", since: started)
        var answer: RateLimitAnswer?
        if let limits = self.authentication.rateLimits, limits.cost == .requests {
            answer = limits.acquire(grant, cost: 1, client: context.clientIP)
            if let answer {
                context.authRecord.state.withLock { $0.rateLimit = answer }
                if !answer.decision.allowed { throw Self.rateLimited(answer, who: "this client") }
            }
        }
        var response = try await next(request, context)
        if let answer = answer ?? context.authRecord.state.withLock({ $0.rateLimit }) {
            answer.apply(to: &response.headers)
        }
        return response
    }

    /// The built-in server's token endpoint: a wrong client secret counts as a failed
    /// authentication of the address, and an address over its budget is refused before the
    /// secret is hashed.
    private func tokenEndpoint(
        _ request: Request,
        context: IngestRequestContext,
        limiter: FailedAuthLimiter,
        next: (Request, IngestRequestContext) async throws -> Response
    ) async throws -> Response {
        let address = context.clientIP ?? "unknown"
        if let wait = limiter.blocked(address) {
            self.metrics.record(method: "client_secret", result: "refused", reason: "failed_auth_per_ip", since: nil)
            await limiter.holdRefusal()
            throw AuthProblem(
                failure: AuthFailure(
                    .rateLimited,
                    reason: "failed_auth_per_ip",
                    detail: "too many failed authentications from this address; retry in \(wait) s",
                    retryAfterSeconds: wait
                )
            ).problem
        }
        let response = try await next(request, context)
        if response.status == .unauthorized { limiter.failed(address) }
        return response
    }

    private func authenticate(_ request: Request, context: IngestRequestContext) async throws -> AccessGrant {
        let path = request.uri.path
        // A browser request: the pixel (an image sends no Origin), or any request with an
        // Origin (fetch with CORS, and sendBeacon, which POSTs with one and cannot set headers).
        let browser = IngestRoutes.browser.contains(path) || request.headers[.origin] != nil
        let query = request.uri.queryParameters.map { (String($0.key), String($0.value)) }
        let extracted = CredentialExtraction.extract(
            authorization: request.headers[values: .authorization],
            writeKey: request.headers[values: .xWriteKey],
            query: query,
            browserEndpoint: browser
        )
        let credential: PresentedCredential
        switch extracted {
        case .success(let found): credential = found
        case .failure(let failure): throw self.refuse(failure, method: "none", context: context)
        }
        let address = context.clientIP ?? "unknown"
        if credential != .none, let limiter = self.authentication.failedAuthPerIP,
            let wait = limiter.blocked(address)
        {
            let failure = AuthFailure(
                .rateLimited,
                reason: "failed_auth_per_ip",
                detail: "too many failed authentications from this address; retry in \(wait) s",
                retryAfterSeconds: wait
            )
            self.metrics.record(method: "none", result: "refused", reason: failure.reason, since: nil)
            context.authRecord.state.withLock { $0.failure = failure.reason }
            await limiter.holdRefusal()
            throw AuthProblem(failure: failure).problem
        }
        let result: Result<AccessGrant, AuthFailure>
        let method: String
        switch credential {
        case .none:
            if self.authentication.clientCertificates, let identity = context.clientCertificateIdentity {
                return AccessGrant(principal: Principal(kind: .certificate, name: identity))
            }
            guard self.authentication.required else { return AccessGrant(principal: .anonymous) }
            throw self.refuse(
                AuthFailure(
                    .invalidToken,
                    reason: "missing",
                    detail:
                        "this endpoint needs a credential: Authorization: Bearer <access token or API key>, or a publishable key (X-Write-Key)"
                ),
                method: "none",
                context: context,
                countsAsFailure: false
            )
        case .accessToken(let token):
            method = Principal.Kind.oauthClient.method
            guard let verify = self.authentication.verifyAccessToken else {
                result = .failure(.invalidToken("no_issuer", "this gateway accepts no access tokens; use an API key"))
                break
            }
            result = await verify(token)
        case .apiKey(let key, _):
            method =
                key.hasPrefix(CredentialExtraction.publishableKeyPrefix)
                ? Principal.Kind.publishableKey.method : Principal.Kind.secretKey.method
            guard let verify = self.authentication.verifyAPIKey else {
                result = .failure(.invalidToken("no_key_store", "this gateway accepts no API keys"))
                break
            }
            result = await verify(key, Self.browserOrigin(request), browser)
        }
        switch result {
        case .success(let grant): return grant
        case .failure(let failure):
            if failure.status == 401 { self.authentication.failedAuthPerIP?.failed(address) }
            throw self.refuse(failure, method: method, context: context)
        }
    }

    private func refuse(
        _ failure: AuthFailure,
        method: String,
        context: IngestRequestContext,
        countsAsFailure: Bool = true
    ) -> Problem {
        self.metrics.record(method: method, result: "refused", reason: failure.reason, since: nil)
        context.authRecord.state.withLock {
            $0.method = method
            $0.failure = failure.reason
        }
        if countsAsFailure, failure.status == 400, let limiter = self.authentication.failedAuthPerIP {
            limiter.failed(context.clientIP ?? "unknown")
        }
        return AuthProblem(failure: failure).problem
    }

    /// The page's origin: `Origin`, else the origin of `Referer` (an image pixel sends no
    /// `Origin`). nil for requests from servers.
    static func browserOrigin(_ request: Request) -> String? {
        if let origin = request.headers[.origin], origin != "null" { return origin }
        guard let referer = request.headers[.referer] else { return nil }
        // scheme://host[:port] of the Referer.
        let scheme = referer.prefix { $0 != ":" && $0 != "/" }
        let rest = referer.dropFirst(scheme.count)
        guard !scheme.isEmpty, rest.hasPrefix("://") else { return nil }
        let host = rest.dropFirst(3).prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        guard !host.isEmpty else { return nil }
        return scheme.lowercased() + "://" + host
    }

    static func rateLimited(_ answer: RateLimitAnswer, who: String) -> Problem {
        var problem = Problem(
            .rateLimited,
            "\(who) sent more than its limit of \(answer.limit); retry in \(answer.decision.retryAfterSeconds) s",
            extensions: [("violated-policies", .array([.string(answer.policy)]))]
        )
        answer.apply(to: &problem.headers)
        return problem
    }
}

/// An ``AuthFailure`` as an RFC 9457 problem with RFC 6750's `WWW-Authenticate`.
struct AuthProblem {
    let failure: AuthFailure

    var problem: Problem {
        let kind: Problem.Kind
        switch self.failure.code {
        case .invalidRequest: kind = .invalidCredentials
        case .invalidToken: kind = .unauthorized
        case .insufficientScope, .forbidden: kind = .forbidden
        case .rateLimited: kind = .rateLimited
        }
        var problem = Problem(kind, self.failure.detail, extensions: [("reason", .string(self.failure.reason))])
        switch self.failure.code {
        case .invalidRequest, .invalidToken, .insufficientScope:
            problem.headers[.wwwAuthenticate] = self.wwwAuthenticate
        case .forbidden:
            break
        case .rateLimited:
            if let wait = self.failure.retryAfterSeconds { problem.headers[.retryAfter] = String(wait) }
        }
        return problem
    }

    /// RFC 6750 §3: no error code when no credential was sent; else the code and a coarse
    /// description (never the credential).
    var wwwAuthenticate: String {
        if self.failure.reason == "missing" { return "Bearer realm=\"sluice\"" }
        var value = "Bearer realm=\"sluice\", error=\"\(self.failure.code.rawValue)\""
        value += ", error_description=\"\(Self.quoted(self.failure.detail))\""
        if let scope = self.failure.scope { value += ", scope=\"\(Self.quoted(scope))\"" }
        return value
    }

    /// Inside a quoted-string: no quotes or backslashes, printable ASCII only.
    static func quoted(_ text: String) -> String {
        String(
            text.unicodeScalars.filter { $0.isASCII && $0.value >= 0x20 && $0 != "\"" && $0 != "\\" }.map(
                Character.init
            )
        )
    }
}

/// `sluice_auth_requests_total{method,result,reason}` and `sluice_auth_duration_seconds{method}`.
final class AuthMetrics: Sendable {
    private struct Key: Hashable {
        var method: String
        var result: String
        var reason: String
    }

    private let counters = Mutex<[Key: Counter]>([:])
    private let timers = Mutex<[String: Metrics.Timer]>([:])

    /// `reason` must come from the fixed labels of ``AuthFailure/reason``.
    func record(method: String, result: String, reason: String, since started: ContinuousClock.Instant?) {
        let key = Key(method: method, result: result, reason: reason)
        let counter = self.counters.withLock { counters in
            if let counter = counters[key] { return counter }
            let counter = Counter(
                label: "sluice_auth_requests_total",
                dimensions: [("method", method), ("result", result), ("reason", reason)]
            )
            counters[key] = counter
            return counter
        }
        counter.increment()
        guard let started else { return }
        let timer = self.timers.withLock { timers in
            if let timer = timers[method] { return timer }
            let timer = Metrics.Timer(label: "sluice_auth_duration_seconds", dimensions: [("method", method)])
            timers[method] = timer
            return timer
        }
        let elapsed = ContinuousClock.now - started
        timer.recordNanoseconds(
            elapsed.nanoseconds
        )
    }
}

extension HTTPField.Name {
    static let xWriteKey = Self("X-Write-Key")!
    static let rateLimit = Self("RateLimit")!
    static let rateLimitPolicy = Self("RateLimit-Policy")!
}
