import Auth
import Testing

@testable import Gateway

/// Whose budget a request spends.
@Suite struct PrincipalRateLimitTests {
    let web = AccessGrant(principal: Principal(kind: .publishableKey, name: "web"))
    let backend = AccessGrant(principal: Principal(kind: .oauthClient, name: "backend"))

    func limits() throws -> PrincipalRateLimits {
        let one = try #require(RateLimit("1/m", burst: 1))
        return PrincipalRateLimits(defaults: [.publishableKey: one, .oauthClient: one])
    }

    /// One browser key serves every visitor of a site: one visitor over the limit does not
    /// throttle the others.
    @Test func aPublishableKeysBudgetIsPerClientAddress() throws {
        let limits = try self.limits()
        #expect(limits.acquire(self.web, cost: 1, client: "198.51.100.1")?.decision.allowed == true)
        #expect(limits.acquire(self.web, cost: 1, client: "198.51.100.1")?.decision.allowed == false)
        #expect(limits.acquire(self.web, cost: 1, client: "198.51.100.2")?.decision.allowed == true)
    }

    /// A server credential has one budget wherever its requests come from.
    @Test func aServerPrincipalsBudgetIsShared() throws {
        let limits = try self.limits()
        #expect(limits.acquire(self.backend, cost: 1, client: "10.0.0.1")?.decision.allowed == true)
        #expect(limits.acquire(self.backend, cost: 1, client: "10.0.0.2")?.decision.allowed == false)
    }

    /// Overrides by principal come before the key's own rate, which comes before the kind's.
    @Test func overridesComeFirstThenTheKeysRateThenTheKinds() throws {
        let kind = try #require(RateLimit("10/s"))
        let own = try #require(RateLimit("20/s"))
        let override = try #require(RateLimit("30/s"))
        let limits = PrincipalRateLimits(defaults: [.secretKey: kind], overrides: ["key:billing": override])
        let billing = AccessGrant(principal: Principal(kind: .secretKey, name: "billing"), rateLimit: own)
        let shop = AccessGrant(principal: Principal(kind: .secretKey, name: "shop"), rateLimit: own)
        let plain = AccessGrant(principal: Principal(kind: .secretKey, name: "plain"))
        #expect(limits.limit(for: billing)?.0 == override)
        #expect(limits.limit(for: shop)?.0 == own)
        #expect(limits.limit(for: plain)?.0 == kind)
        #expect(limits.limit(for: AccessGrant(principal: .anonymous)) == nil)
    }
}
