import Auth
import EventModel
import Foundation
import Gateway
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Synchronization
import Testing
@_spi(Testing) import WAL

/// The gateway's side of authentication: what it asks of a credential check, and what it
/// does with the answer (status, `WWW-Authenticate`, the principal in each event, policies,
/// limits). The checks themselves are tested in AuthTests; here they are small closures
/// that accept one credential, so that each rule of the middleware is seen on its own.
@Suite(.timeLimit(.minutes(2))) struct AuthenticationTests {
    static let json = headers([.contentType: "application/json"])
    static let event = #"{"action":"click","user_id":"u1"}"#
    static let goodToken = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJiYWNrZW5kIn0.c2ln"

    /// Accepts `goodToken` as `client:backend`; anything else is a bad signature. Counts calls.
    final class Checks: Sendable {
        let tokenCalls = Atomic<Int>(0)
        let keyCalls = Mutex<[(key: String, origin: String?, browser: Bool)]>([])

        func authentication(required: Bool = true) -> GatewayAuthentication {
            var authentication = GatewayAuthentication()
            authentication.required = required
            authentication.verifyAccessToken = { token in
                self.tokenCalls.add(1, ordering: .relaxed)
                if token == AuthenticationTests.goodToken {
                    return .success(AccessGrant(principal: Principal(kind: .oauthClient, name: "backend")))
                }
                if token == "no-scope.a.b" {
                    return .failure(
                        AuthFailure(
                            .insufficientScope,
                            reason: "insufficient_scope",
                            detail: "the token lacks the scope events:write",
                            scope: "events:write"
                        )
                    )
                }
                return .failure(.invalidToken("bad_signature", "the token's signature does not verify"))
            }
            authentication.verifyAPIKey = { key, origin, browser in
                self.keyCalls.withLock { $0.append((key, origin, browser)) }
                return .success(
                    AccessGrant(
                        principal: Principal(kind: .publishableKey, name: "web"),
                        policy: AccessPolicy(allowedActions: ["page_view"], maxBatch: 2)
                    )
                )
            }
            return authentication
        }
    }

    func bearer(_ token: String) -> HTTPFields {
        headers([.contentType: "application/json", .authorization: "Bearer \(token)"])
    }

    @Test func withoutACredentialTheAnswerIs401AndNothingIsStored() async throws {
        let gateway = try await TestGateway.make(authentication: Checks().authentication())
        try await gateway.test { client in
            let response = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: Self.json,
                body: buffer(Self.event)
            )
            #expect(response.status == .unauthorized)
            // RFC 6750 section 3: no error code when no credential was sent.
            #expect(response.headers[.wwwAuthenticate] == #"Bearer realm="sluice""#)
            let problem = try response.json()
            #expect(problem["type"] == .string("/problems/unauthorized"))
            #expect(problem["reason"] == .string("missing"))
            // Health and metrics need no credential.
            #expect(try await client.execute(uri: "/healthz", method: .get).status == .ok)
        }
        #expect(try gateway.storedEvents().isEmpty)
    }

    @Test func aGoodTokenWritesItsPrincipalIntoEveryEvent() async throws {
        let gateway = try await TestGateway.make(authentication: Checks().authentication())
        try await gateway.test { client in
            let response = try await client.execute(
                uri: "/v1/events/batch",
                method: .post,
                headers: self.bearer(Self.goodToken),
                body: buffer("[\(Self.event),\(Self.event)]")
            )
            #expect(response.status == .accepted)
        }
        let events = try gateway.storedEvents()
        #expect(events.count == 2)
        #expect(events.allSatisfy { $0["source"] == .string("client:backend") })
    }

    @Test func aBadTokenIs401WithTheErrorCodeAndNeverEchoed() async throws {
        let gateway = try await TestGateway.make(authentication: Checks().authentication())
        let forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJldmlsIn0.Zm9yZ2Vk"
        try await gateway.test { client in
            let response = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: self.bearer(forged),
                body: buffer(Self.event)
            )
            #expect(response.status == .unauthorized)
            let challenge = try #require(response.headers[.wwwAuthenticate])
            #expect(challenge.contains(#"error="invalid_token""#))
            #expect(!challenge.contains(forged) && !response.text.contains(forged))
            #expect(!response.text.contains("Zm9yZ2Vk"))
        }
        #expect(try gateway.storedEvents().isEmpty)
    }

    @Test func aMissingScopeIs403InsufficientScope() async throws {
        let gateway = try await TestGateway.make(authentication: Checks().authentication())
        try await gateway.test { client in
            let response = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: self.bearer("no-scope.a.b"),
                body: buffer(Self.event)
            )
            #expect(response.status == .forbidden)
            let challenge = try #require(response.headers[.wwwAuthenticate])
            #expect(challenge.contains(#"error="insufficient_scope""#))
            #expect(challenge.contains(#"scope="events:write""#))
        }
    }

    @Test func twoCredentialsAre400BeforeAnyCheck() async throws {
        let checks = Checks()
        let gateway = try await TestGateway.make(authentication: checks.authentication())
        try await gateway.test { client in
            var fields = self.bearer(Self.goodToken)
            fields[HTTPField.Name("X-Write-Key")!] = "slp_live_x"
            let response = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: fields,
                body: buffer(Self.event)
            )
            #expect(response.status == .badRequest)
            #expect(try response.json()["reason"] == .string("multiple_credentials"))
        }
        #expect(checks.tokenCalls.load(ordering: .relaxed) == 0)
    }

    @Test func thePixelTakesAPublishableKeyInTheQueryWithThePagesOrigin() async throws {
        let checks = Checks()
        let gateway = try await TestGateway.make(authentication: checks.authentication())
        try await gateway.test { client in
            let response = try await client.execute(
                uri: "/v1/pixel?action=page_view&user_id=u1&key=slp_live_abc",
                method: .get,
                headers: headers([.referer: "https://shop.example/cart?x=1"])
            )
            #expect(response.status == .ok)
        }
        let calls = checks.keyCalls.withLock { $0 }
        #expect(calls.count == 1)
        #expect(calls.first?.key == "slp_live_abc")
        #expect(calls.first?.origin == "https://shop.example")
        #expect(calls.first?.browser == true)
        #expect(try gateway.storedEvents().first?["source"] == .string("pkey:web"))
    }

    @Test func aPolicyLimitsActionsAndBatchSizeAndStoresNothingOnRefusal() async throws {
        let gateway = try await TestGateway.make(authentication: Checks().authentication())
        try await gateway.test { client in
            var fields = Self.json
            fields[HTTPField.Name("X-Write-Key")!] = "slp_live_abc"
            let click = try await client.execute(
                uri: "/v1/events/batch",
                method: .post,
                headers: fields,
                body: buffer(#"[{"action":"page_view","user_id":"u"},{"action":"click","user_id":"u"}]"#)
            )
            #expect(click.status == .forbidden)
            #expect(try click.json()["reason"] == .string("action_not_allowed"))
            fields[.contentType] = "application/x-ndjson"
            let three = try await client.execute(
                uri: "/v1/events/batch",
                method: .post,
                headers: fields,
                body: buffer(String(repeating: #"{"action":"page_view","user_id":"u"}"# + "\n", count: 3))
            )
            #expect(three.status == .forbidden)
            #expect(try three.json()["reason"] == .string("batch_too_large"))
        }
        #expect(try gateway.storedEvents().isEmpty)
    }

    @Test func configuredPoliciesOverrideTheCredentialsOwn() async throws {
        var authentication = Checks().authentication()
        authentication.policies["pkey:web"] = AccessPolicy(allowedActions: ["*"])
        let gateway = try await TestGateway.make(authentication: authentication)
        try await gateway.test { client in
            var fields = Self.json
            fields[HTTPField.Name("X-Write-Key")!] = "slp_live_abc"
            let response = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: fields,
                body: buffer(Self.event)
            )
            #expect(response.status == .accepted)
        }
    }

    @Test func aPrincipalOverItsLimitGets429WithRetryAfterAndRateLimitFields() async throws {
        var authentication = Checks().authentication()
        authentication.rateLimits = PrincipalRateLimits(
            defaults: [.oauthClient: try #require(RateLimit("1/m", burst: 2))]
        )
        let gateway = try await TestGateway.make(authentication: authentication)
        try await gateway.test { client in
            var statuses: [HTTPResponse.Status] = []
            var last: TestResponse?
            for _ in 0..<3 {
                let response = try await client.execute(
                    uri: "/v1/events",
                    method: .post,
                    headers: self.bearer(Self.goodToken),
                    body: buffer(Self.event)
                )
                statuses.append(response.status)
                #expect(response.headers[HTTPField.Name("RateLimit")!] != nil)
                #expect(response.headers[HTTPField.Name("RateLimit-Policy")!] != nil)
                last = response
            }
            #expect(statuses == [.accepted, .accepted, .tooManyRequests])
            let refused = try #require(last)
            let retry = try #require(refused.headers[.retryAfter].flatMap(Int.init))
            #expect(retry >= 1)
            #expect(refused.headers[HTTPField.Name("RateLimit")!]?.contains("r=0") == true)
            #expect(try refused.json()["type"] == .string("/problems/rate-limited"))
            // Another principal has its own budget.
            var fields = Self.json
            fields[HTTPField.Name("X-Write-Key")!] = "slp_live_abc"
            let other = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: fields,
                body: buffer(#"{"action":"page_view","user_id":"u"}"#)
            )
            #expect(other.status == .accepted)
        }
        #expect(try gateway.storedEvents().count == 3)
    }

    @Test func failedAuthenticationsFromOneAddressAre429BeforeAnyCheck() async throws {
        let checks = Checks()
        var authentication = checks.authentication()
        authentication.failedAuthPerIP = FailedAuthLimiter(limit: try #require(RateLimit("1/m", burst: 3)))
        let gateway = try await TestGateway.make(authentication: authentication)
        try await gateway.test { client in
            var statuses: [HTTPResponse.Status] = []
            for _ in 0..<5 {
                let response = try await client.execute(
                    uri: "/v1/events",
                    method: .post,
                    headers: self.bearer("bad.token.here"),
                    body: buffer(Self.event)
                )
                statuses.append(response.status)
            }
            #expect(statuses == [.unauthorized, .unauthorized, .unauthorized, .tooManyRequests, .tooManyRequests])
        }
        // The refused ones never reached the token check.
        #expect(checks.tokenCalls.load(ordering: .relaxed) == 3)
    }

    /// A blocked address's 429 is held before it is sent, so that a client waiting for each
    /// answer is slowed to one request per hold and connection (docs/performance.md, B4).
    @Test func aBlockedAddressesRefusalIsHeldBeforeItIsSent() async throws {
        let checks = Checks()
        var authentication = checks.authentication()
        let hold = Duration.milliseconds(400)
        authentication.failedAuthPerIP = FailedAuthLimiter(limit: try #require(RateLimit("1/m", burst: 1)), hold: hold)
        let gateway = try await TestGateway.make(authentication: authentication)
        try await gateway.test { client in
            let clock = ContinuousClock()
            let first = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: self.bearer("bad.token.here"),
                body: buffer(Self.event)
            )
            #expect(first.status == .unauthorized)
            let started = clock.now
            let second = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: self.bearer("bad.token.here"),
                body: buffer(Self.event)
            )
            #expect(second.status == .tooManyRequests)
            #expect(clock.now - started >= hold)
        }
    }

    /// At most `maxHeld` refusals wait; the next is answered at once, and a held one ends when
    /// its request is cancelled (the client went away).
    @Test func heldRefusalsAreBoundedAndEndWithTheirRequest() async throws {
        let limiter = FailedAuthLimiter(limit: try #require(RateLimit("1/m")), hold: .seconds(60), maxHeld: 1)
        let holding = Task { await limiter.holdRefusal() }
        while limiter.heldCount == 0 { await Task.yield() }
        let clock = ContinuousClock()
        let started = clock.now
        await limiter.holdRefusal()
        #expect(clock.now - started < .seconds(5), "over maxHeld: not held")
        #expect(limiter.heldCount == 1)
        holding.cancel()
        await holding.value
        #expect(limiter.heldCount == 0)
    }

    @Test func withAuthOffRequestsAreAnonymousAndCarryNoSource() async throws {
        let gateway = try await TestGateway.make(authentication: Checks().authentication(required: false))
        try await gateway.test { client in
            let response = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: Self.json,
                body: buffer(Self.event)
            )
            #expect(response.status == .accepted)
        }
        #expect(try gateway.storedEvents().first?["source"] == nil)
    }

    @Test func credentialsInTheQueryNeverReachTheAccessLog() async throws {
        let logs = CapturedLogs()
        let gateway = try await TestGateway.make(authentication: Checks().authentication())
        let router = buildGatewayRouter(
            configuration: gateway.configuration,
            wal: gateway.wal,
            registry: registry,
            authentication: gateway.authentication,
            logger: logs.logger
        )
        let app = Application(router: router, logger: quietLogger)
        try await app.test(.router) { client in
            let response = try await client.execute(
                uri: "/v1/events?writeKey=slp_live_secretvalue&atomic=true",
                method: .post,
                headers: Self.json,
                body: buffer(Self.event)
            )
            #expect(response.status == .badRequest)
            let accepted = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: self.bearer(Self.goodToken),
                body: buffer(Self.event)
            )
            #expect(accepted.status == .accepted)
        }
        await gateway.wal.close()
        let lines = logs.entries.filter { $0.message == "request" }
        #expect(lines.count == 2)
        let everything = logs.entries.map { "\($0.message) \($0.metadata)" }.joined(separator: "\n")
        #expect(!everything.contains("secretvalue"))
        #expect(!everything.contains(Self.goodToken))
        #expect(lines.first?.metadata["url.query"]?.description == "writeKey=REDACTED&atomic=true")
        #expect(lines.first?.metadata["event.reason"]?.description == "key_in_query")
        #expect(lines.last?.metadata["user.id"]?.description == "client:backend")
        #expect(lines.last?.metadata["sluice.auth.method"]?.description == "jwt")
    }
}
