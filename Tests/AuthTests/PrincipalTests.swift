import Auth
import Testing

@Suite struct PrincipalTests {
    @Test func sourceTextNamesTheCredentialKind() {
        #expect(Principal(kind: .secretKey, name: "web-shop").description == "key:web-shop")
        #expect(Principal(kind: .oauthClient, name: "backend").description == "client:backend")
        #expect(Principal(kind: .certificate, name: "spiffe://corp/x").description == "cert:spiffe://corp/x")
        #expect(Principal.anonymous.description == "")
    }

    @Test func failureStatusFollowsRFC6750() {
        #expect(AuthFailure.invalidToken("expired", "the token has expired").status == 401)
        #expect(AuthFailure.invalidRequest("two_credentials", "one credential per request").status == 400)
        #expect(AuthFailure(.insufficientScope, reason: "scope", detail: "x", scope: "events:write").status == 403)
        #expect(AuthFailure(.rateLimited, reason: "client", detail: "x", retryAfterSeconds: 1).status == 429)
    }
}
