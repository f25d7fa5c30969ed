import Testing

@testable import Auth

@Suite struct CredentialTests {
    let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    let secret = "slk_live_0123456789abcdefghijklmnopqrstuvwxyzABCDEF"
    let publishable = "slp_live_0123456789abcdefghijklmnopqrstuvwxyzABCDEF"

    func extract(
        authorization: [String] = [],
        writeKey: [String] = [],
        query: [(String, String)] = [],
        browser: Bool = false
    ) -> Result<PresentedCredential, AuthFailure> {
        CredentialExtraction.extract(
            authorization: authorization,
            writeKey: writeKey,
            query: query,
            browserEndpoint: browser
        )
    }

    @Test func nothingIsAnonymous() {
        #expect(self.extract() == .success(.none))
        #expect(self.extract(query: [("action", "view")]) == .success(.none))
    }

    @Test func bearerSchemeIsCaseInsensitive() {
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            #expect(self.extract(authorization: ["\(scheme) \(self.jwt)"]) == .success(.accessToken(self.jwt)))
        }
    }

    @Test func bearerKeysAreKeysAndEverythingElseIsAToken() {
        #expect(self.extract(authorization: ["Bearer \(self.secret)"]) == .success(.apiKey(self.secret, from: .bearer)))
        #expect(self.extract(authorization: ["Bearer  \(self.jwt) "]) == .success(.accessToken(self.jwt)))
    }

    @Test func basicCarriesTheKeyAsUserName() {
        let encoded = "c2xrX2xpdmVfMDEyMzQ1Njc4OWFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6QUJDREVGOg=="  // secret + ":"
        #expect(self.extract(authorization: ["Basic \(encoded)"]) == .success(.apiKey(self.secret, from: .basic)))
        // "user:password" is not a key.
        #expect(self.reason(self.extract(authorization: ["Basic dXNlcjpwYXNzd29yZA=="])) == "malformed_key")
        #expect(self.reason(self.extract(authorization: ["Basic ***"])) == "malformed_authorization")
    }

    @Test func twoCredentialsAreAnInvalidRequest() {
        let cases: [Result<PresentedCredential, AuthFailure>] = [
            self.extract(authorization: ["Bearer \(self.jwt)", "Bearer \(self.jwt)"]),
            self.extract(authorization: ["Bearer \(self.jwt)"], writeKey: [self.publishable]),
            self.extract(writeKey: [self.publishable], query: [("key", self.publishable)], browser: true),
            self.extract(query: [("key", self.publishable), ("writeKey", self.publishable)], browser: true),
        ]
        for result in cases {
            guard case .failure(let failure) = result else {
                Issue.record("accepted \(result)")
                continue
            }
            #expect(failure.status == 400)
            #expect(failure.code == .invalidRequest)
            #expect(failure.reason == "multiple_credentials")
        }
    }

    @Test func keysInTheQueryOnlyOnBrowserEndpointsAndOnlyPublishable() {
        #expect(
            self.extract(query: [("writeKey", self.publishable)], browser: true)
                == .success(.apiKey(self.publishable, from: .query))
        )
        let server = self.extract(query: [("key", self.publishable)], browser: false)
        #expect(self.reason(server) == "key_in_query")
        #expect(self.status(server) == 400)
        let secret = self.extract(query: [("key", self.secret)], browser: true)
        #expect(self.reason(secret) == "secret_key_in_browser")
        #expect(self.status(secret) == 403)
    }

    @Test func accessTokensInTheQueryAreRefused() {
        let result = self.extract(query: [("access_token", self.jwt)], browser: true)
        #expect(self.reason(result) == "token_in_query")
        #expect(self.status(result) == 400)
    }

    @Test func otherSchemesAndMalformedHeadersAreRefusedWithoutEchoingThem() {
        let digest = self.extract(authorization: ["Digest username=\"x\""])
        #expect(self.reason(digest) == "unsupported_scheme")
        #expect(self.reason(self.extract(authorization: ["Bearer"])) == "malformed_authorization")
        #expect(self.reason(self.extract(authorization: ["Bearer a b"])) == "malformed_authorization")
        #expect(self.reason(self.extract(writeKey: ["not-a-key"])) == "malformed_key")
        for result in [digest, self.extract(authorization: ["Bearer \(self.jwt) x"])] {
            if case .failure(let failure) = result { #expect(!failure.detail.contains(self.jwt)) }
        }
    }

    @Test func base64DecodesStrictly() {
        #expect(Base64Text.decode("YWJj") == Array("abc".utf8))
        #expect(Base64Text.decode("YWI=") == Array("ab".utf8))
        #expect(Base64Text.decode("YQ==") == Array("a".utf8))
        #expect(Base64Text.decode("YQ=") == nil)
        #expect(Base64Text.decode("Y=Q=") == nil)
        #expect(Base64Text.decode("YW-j") == nil)
        #expect(Base64Text.decode("") == nil)
    }

    func reason(_ result: Result<PresentedCredential, AuthFailure>) -> String? {
        if case .failure(let failure) = result { return failure.reason }
        return nil
    }

    func status(_ result: Result<PresentedCredential, AuthFailure>) -> Int? {
        if case .failure(let failure) = result { return failure.status }
        return nil
    }
}
