import Auth
import Foundation
import Testing

/// Each check of security.md §7.3 step 5 on its own, without keys or network.
@Suite struct JWTChecksTests {
    /// The failure's reason label, nil when `body` passes.
    private func reason(_ body: () throws -> Void) -> String? {
        do {
            try body()
            return nil
        } catch let failure as AuthFailure {
            return failure.reason
        } catch {
            return "unexpected \(error)"
        }
    }

    private func segment(_ text: String) -> Substring { Substring(base64URL(Array(text.utf8))) }

    private let issuer = IssuerConfiguration(
        issuer: "https://idp.example.com/realms/ingest",
        jwksURI: "https://idp.example.com/jwks",
        audiences: [testAudience]
    )

    // MARK: 5.1

    @Test func sizeLimitIsInclusiveAndCheckedFirst() {  // A18
        #expect(self.reason { try JWTChecks.checkSize(String(repeating: "a", count: 8192), maxBytes: 8192) } == nil)
        #expect(
            self.reason { try JWTChecks.checkSize(String(repeating: "a", count: 8193), maxBytes: 8192) } == "too_large"
        )
        #expect(
            self.reason { try JWTChecks.checkSize(String(repeating: "a", count: 70_000), maxBytes: 8192) }
                == "too_large"
        )
        #expect(self.reason { try JWTChecks.checkSize("", maxBytes: 8192) } == "malformed")
    }

    @Test(arguments: ["a.b", "a.b.c.d", "a.b.c.d.e", "abc", ".b.c", "a..c", "a.b.c."])
    func onlyThreeSegmentsWithHeaderAndPayloadPass(token: String) {  // A16
        #expect(self.reason { _ = try JWTChecks.splitSegments(token) } == "malformed")
    }

    @Test func threeSegmentsSplitWithAnEmptySignatureAllowedHere() throws {
        let segments = try JWTChecks.splitSegments("aGk.aGk.")
        #expect(segments.header == "aGk" && segments.payload == "aGk" && segments.signature.isEmpty)
    }

    @Test func base64URLDecodesCanonicalText() throws {
        #expect(try JWTChecks.decodeBase64URL("") == [])
        #expect(try JWTChecks.decodeBase64URL("aGk") == Array("hi".utf8))
        #expect(try JWTChecks.decodeBase64URL("aGVsbG8") == Array("hello".utf8))
        #expect(try JWTChecks.decodeBase64URL("_-8") == [0xFF, 0xEF])
    }

    @Test(arguments: ["aGk=", "a+k", "a/k", "aG k", "aGk\n", "a", "aGl", "aGVsbG9", "aé"])
    func base64URLRefusesNonCanonicalText(segment: String) {  // A17
        #expect(self.reason { _ = try JWTChecks.decodeBase64URL(Substring(segment)) } == "malformed")
    }

    @Test func jsonMustBeAnObjectInUTF8WithoutDuplicates() {  // A17, A20, A33
        let invalidUTF8 = Substring(base64URL([0x7B, 0x22, 0xC3, 0x28, 0x22, 0x3A, 0x31, 0x7D]))
        #expect(self.reason { _ = try JWTChecks.decodeJSONObject(invalidUTF8, part: "header") } == "malformed")
        #expect(self.reason { _ = try JWTChecks.decodeJSONObject(self.segment("[1]"), part: "header") } == "malformed")
        #expect(self.reason { _ = try JWTChecks.decodeJSONObject(self.segment("{\"a\":1"), part: "x") } == "malformed")
        #expect(self.reason { _ = try JWTChecks.decodeJSONObject(self.segment("{} {}"), part: "x") } == "malformed")
        #expect(
            self.reason {
                _ = try JWTChecks.decodeJSONObject(self.segment(#"{"alg":"none","alg":"RS256"}"#), part: "h")
            }
                == "duplicate_member"
        )
        #expect(
            self.reason {
                _ = try JWTChecks.decodeJSONObject(self.segment(#"{"aud":"evil","aud":"sluice"}"#), part: "p")
            }
                == "duplicate_member"
        )
        // The same name spelt with an escape is the same member.
        #expect(
            self.reason { _ = try JWTChecks.decodeJSONObject(self.segment(#"{"aud":"a","\u0061ud":"b"}"#), part: "p") }
                == "duplicate_member"
        )
        let deep = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        #expect(
            self.reason { _ = try JWTChecks.decodeJSONObject(self.segment("{\"a\":\(deep)}"), part: "p") }
                == "malformed"
        )
    }

    @Test func jsonValuesAreReadExactly() throws {
        let object = try JWTChecks.decodeJSONObject(
            self.segment(#"{"s":"a\"b\u00e9\ud83d\ude00","n":-1.5e2,"t":true,"z":null,"a":[1,"x"],"o":{"k":false}}"#),
            part: "p"
        )
        #expect(object["s"] == .string("a\"bé😀"))
        #expect(object["n"] == .number(-150))
        #expect(object["t"] == .bool(true))
        #expect(object["z"] == .null)
        #expect(object["a"] == .array([.number(1), .string("x")]))
        #expect(object["o"] == .object(["k": .bool(false)]))
    }

    // MARK: 5.2–5.3

    @Test func headerNeedsAlgAndAStringKidOfAtMost256Bytes() {  // A4, A5
        #expect(self.reason { _ = try JWTChecks.checkHeader(["kid": .string("k")]) } == "bad_header")
        #expect(self.reason { _ = try JWTChecks.checkHeader(["alg": .string("RS256")]) } == "bad_header")
        #expect(
            self.reason { _ = try JWTChecks.checkHeader(["alg": .string("RS256"), "kid": .number(7)]) } == "bad_header"
        )
        let long = String(repeating: "k", count: 257)
        #expect(
            self.reason { _ = try JWTChecks.checkHeader(["alg": .string("RS256"), "kid": .string(long)]) }
                == "bad_header"
        )
        let longest = String(repeating: "k", count: 256)
        #expect(
            self.reason { _ = try JWTChecks.checkHeader(["alg": .string("RS256"), "kid": .string(longest)]) } == nil
        )
    }

    @Test func anyCritIsRefused() {  // A8
        for crit: JWTJSONValue in [.array([.string("exp")]), .array([.string("b64")]), .array([])] {
            #expect(
                self.reason {
                    _ = try JWTChecks.checkHeader(["alg": .string("RS256"), "kid": .string("k"), "crit": crit])
                } == "crit"
            )
        }
    }

    @Test func keyLocatingMembersAreNotedNotUsed() throws {  // A6, A7
        let header = try JWTChecks.checkHeader([
            "alg": .string("RS256"), "kid": .string("k"), "jku": .string("https://evil/jwks"),
            "x5u": .string("https://evil/cert"), "jwk": .object([:]), "x5c": .array([]),
        ])
        #expect(header.untrustedMembers == ["jku", "x5u", "jwk", "x5c"])
    }

    @Test(arguments: ["none", "None", "NONE", "nOnE", "HS256", "HS512", "PS256", "RS256 ", "rs256"])
    func algorithmOutsideTheIssuerAllowlistIsRefused(alg: String) {  // A1, A2
        let header = JWTChecks.Header(alg: alg, kid: "k", typ: "at+jwt", untrustedMembers: [])
        #expect(self.reason { try JWTChecks.checkHeader(header, for: self.issuer) } == "alg_not_allowed")
    }

    @Test func typMustBeAnAccessTokenTypeUnlessJWTIsOptedIn() {  // A14
        func check(_ typ: String?, _ issuer: IssuerConfiguration) -> String? {
            self.reason {
                try JWTChecks.checkHeader(
                    JWTChecks.Header(alg: "RS256", kid: "k", typ: typ, untrustedMembers: []),
                    for: issuer
                )
            }
        }
        #expect(check("at+jwt", self.issuer) == nil)
        #expect(check("application/at+jwt", self.issuer) == nil)
        #expect(check("AT+JWT", self.issuer) == nil)
        #expect(check("JWT", self.issuer) == "typ_not_allowed")
        #expect(check(nil, self.issuer) == "typ_not_allowed")
        #expect(check("logout+jwt", self.issuer) == "typ_not_allowed")
        var lenient = self.issuer
        lenient.acceptedTypes.append("JWT")
        #expect(check("JWT", lenient) == nil)
    }

    // MARK: 5.4

    @Test func issuerIsChosenByExactIss() throws {  // A12
        let other = IssuerConfiguration(
            issuer: "https://other.example.com",
            jwksURI: "https://o/jwks",
            audiences: ["x"]
        )
        let chosen = try JWTChecks.selectIssuer(["iss": .string(self.issuer.issuer)], from: [other, self.issuer])
        #expect(chosen.issuer == self.issuer.issuer)
        for iss in [
            self.issuer.issuer + "/", "https://IDP.example.com/realms/ingest", "https://idp.example.com/realms",
        ] {
            #expect(
                self.reason { _ = try JWTChecks.selectIssuer(["iss": .string(iss)], from: [self.issuer]) }
                    == "unknown_issuer"
            )
        }
        #expect(self.reason { _ = try JWTChecks.selectIssuer([:], from: [self.issuer]) } == "unknown_issuer")
        #expect(
            self.reason {
                _ = try JWTChecks.selectIssuer(["iss": .array([.string(self.issuer.issuer)])], from: [self.issuer])
            }
                == "unknown_issuer"
        )
    }

    @Test func headerAlgMustEqualTheKeyAlg() {  // A3
        #expect(self.reason { try JWTChecks.checkKeyAlgorithm(headerAlg: "RS256", keyAlg: "RS256") } == nil)
        #expect(self.reason { try JWTChecks.checkKeyAlgorithm(headerAlg: "PS256", keyAlg: "RS256") } == "alg_mismatch")
        #expect(self.reason { try JWTChecks.checkKeyAlgorithm(headerAlg: "RS512", keyAlg: "RS256") } == "alg_mismatch")
    }

    // MARK: 5.8

    private let now = Date(timeIntervalSince1970: 1_800_000_000)

    private func claims(_ edit: (inout [String: JWTJSONValue]) -> Void = { _ in }) -> [String: JWTJSONValue] {
        let t = self.now.timeIntervalSince1970
        var claims: [String: JWTJSONValue] = [
            "iss": .string(self.issuer.issuer), "aud": .string(testAudience), "client_id": .string("backend"),
            "sub": .string("user"), "scope": .string("events:write"), "iat": .number(t - 10), "exp": .number(t + 300),
        ]
        edit(&claims)
        return claims
    }

    private func claimReason(_ claims: [String: JWTJSONValue]) -> String? {
        self.reason { _ = try JWTChecks.checkClaims(claims, issuer: self.issuer, now: self.now, leeway: .seconds(60)) }
    }

    @Test func validClaimsGiveTheClientPrincipal() throws {  // A27
        let verified = try JWTChecks.checkClaims(
            self.claims(),
            issuer: self.issuer,
            now: self.now,
            leeway: .seconds(60)
        )
        #expect(verified.principal == Principal(kind: .oauthClient, name: "backend"))
        #expect(verified.principal.description == "client:backend")
        #expect(verified.issuer == self.issuer.issuer)
        #expect(verified.scopes == ["events:write"])
        #expect(verified.expiresAt == self.now + 300)
    }

    @Test func expiryHonoursTheLeewayAndIsRequired() {  // A9, A28
        let t = self.now.timeIntervalSince1970
        #expect(
            self.claimReason(
                self.claims {
                    $0["exp"] = .number(t - 30)
                    $0["iat"] = .number(t - 100)
                }
            ) == nil
        )
        #expect(
            self.claimReason(
                self.claims {
                    $0["exp"] = .number(t - 59.9)
                    $0["iat"] = .number(t - 100)
                }
            ) == nil
        )
        #expect(
            self.claimReason(
                self.claims {
                    $0["exp"] = .number(t - 60)
                    $0["iat"] = .number(t - 100)
                }
            ) == "expired"
        )
        #expect(
            self.claimReason(
                self.claims {
                    $0["exp"] = .number(t - 61)
                    $0["iat"] = .number(t - 100)
                }
            ) == "expired"
        )
        #expect(self.claimReason(self.claims { $0["exp"] = nil }) == "malformed")
        #expect(self.claimReason(self.claims { $0["exp"] = .string("\(t + 300)") }) == "malformed")
    }

    @Test func notBeforeAndIssuedAtMayNotBeInTheFuture() {  // A10
        let t = self.now.timeIntervalSince1970
        #expect(self.claimReason(self.claims { $0["nbf"] = .number(t + 60) }) == nil)
        #expect(self.claimReason(self.claims { $0["nbf"] = .number(t + 61) }) == "not_yet_valid")
        #expect(self.claimReason(self.claims { $0["iat"] = .number(t + 120) }) == "not_yet_valid")
        #expect(self.claimReason(self.claims { $0["iat"] = nil }) == "malformed")
    }

    @Test func lifetimeIsCappedByMaxTokenAge() {  // A11
        let t = self.now.timeIntervalSince1970
        #expect(self.claimReason(self.claims { $0["exp"] = .number(t + 10 * 365 * 86400) }) == "too_old")
        #expect(
            self.claimReason(
                self.claims {
                    $0["iat"] = .number(t - 100)
                    $0["exp"] = .number(t - 100 + 86400)
                }
            ) == nil
        )
        #expect(
            self.claimReason(
                self.claims {
                    $0["iat"] = .number(t - 100)
                    $0["exp"] = .number(t - 99 + 86400)
                }
            ) == "too_old"
        )
    }

    @Test func audienceMustContainOurs() {  // A13, A24
        #expect(self.claimReason(self.claims { $0["aud"] = .string("https://other.example.com") }) == "wrong_audience")
        #expect(self.claimReason(self.claims { $0["aud"] = nil }) == "wrong_audience")
        #expect(self.claimReason(self.claims { $0["aud"] = .array([]) }) == "wrong_audience")
        #expect(
            self.claimReason(self.claims { $0["aud"] = .array([.string("https://x"), .string(testAudience)]) }) == nil
        )
        #expect(self.claimReason(self.claims { $0["aud"] = .string(testAudience + "/") }) == "wrong_audience")
    }

    @Test func missingScopeIs403WithTheScope() throws {  // A15
        do {
            _ = try JWTChecks.checkClaims(
                self.claims { $0["scope"] = .string("events:read profile") },
                issuer: self.issuer,
                now: self.now,
                leeway: .seconds(60)
            )
            Issue.record("accepted a token without events:write")
        } catch {
            #expect(error.code == .insufficientScope)
            #expect(error.status == 403)
            #expect(error.scope == "events:write")
        }
        #expect(self.claimReason(self.claims { $0["scope"] = .string("events:writer") }) == "insufficient_scope")
        #expect(self.claimReason(self.claims { $0["scope"] = nil }) == "insufficient_scope")
        #expect(
            self.claimReason(
                self.claims {
                    $0["scope"] = nil
                    $0["scp"] = .array([.string("a"), .string("events:write")])
                }
            )
                == nil
        )
        #expect(
            self.claimReason(
                self.claims {
                    $0["scope"] = nil
                    $0["scp"] = .string("a events:write")
                }
            ) == nil
        )
    }

    @Test func principalFallsBackFromClientIDToAzpToSub() throws {
        func name(_ edit: (inout [String: JWTJSONValue]) -> Void) throws -> String {
            try JWTChecks.checkClaims(self.claims(edit), issuer: self.issuer, now: self.now, leeway: .seconds(60))
                .principal.name
        }
        #expect(try name { _ in } == "backend")
        #expect(
            try name {
                $0["client_id"] = nil
                $0["azp"] = .string("spa")
            } == "spa"
        )
        #expect(try name { $0["client_id"] = nil } == "user")
        #expect(
            try name {
                $0["client_id"] = .string("")
                $0["azp"] = .number(3)
            } == "user"
        )
        #expect(
            self.claimReason(
                self.claims {
                    $0["client_id"] = nil
                    $0["sub"] = nil
                }
            ) == "no_principal"
        )
    }

    // MARK: configuration

    @Test func validationRefusesNoneHMACAndPlainHTTPNamingTheSetting() {  // A21
        func message(_ edit: (inout IssuerConfiguration) -> Void) -> String? {
            var configuration = self.issuer
            edit(&configuration)
            do {
                try configuration.validate()
                return nil
            } catch {
                return error.message
            }
        }
        #expect(message { _ in } == nil)
        #expect(message { $0.algorithms = ["RS256", "none"] }?.contains(".algorithms: \"none\"") == true)
        #expect(message { $0.algorithms = ["HS256"] }?.contains(".algorithms: HS256 is not allowed") == true)
        #expect(message { $0.algorithms = ["hs512"] }?.contains(".algorithms:") == true)
        #expect(message { $0.algorithms = ["RSA-OAEP"] }?.contains("not supported") == true)
        #expect(
            message { $0.jwksURI = "http://idp.example.com/jwks" }?.contains(".jwks_uri: must be an https URL") == true
        )
        #expect(message { $0.discovery = true }?.contains(".jwks_uri:") == true)
        #expect(message { $0.jwksURI = nil }?.contains(".jwks_uri:") == true)
        #expect(message { $0.issuer = "http://idp.example.com" }?.contains(".issuer:") == true)
        #expect(message { $0.audiences = [] }?.contains(".audiences:") == true)
        #expect(message { $0.acceptedTypes = [] }?.contains(".accepted_typ:") == true)
        #expect(
            message {
                $0.jwks.minTTL = .seconds(3600)
                $0.jwks.maxTTL = .seconds(60)
            }?.contains(".jwks.min_ttl") == true
        )
        #expect(message { $0.jwks.caFile = "/nonexistent/ca.pem" }?.contains(".jwks.ca_file") == true)
    }

    @Test func verifierRefusesAnInvalidIssuerAndDuplicates() {
        var bad = self.issuer
        bad.algorithms = ["HS256"]
        #expect(throws: IssuerConfigurationError.self) { _ = try TokenVerifier(issuers: [bad]) }
        #expect(throws: IssuerConfigurationError.self) { _ = try TokenVerifier(issuers: [self.issuer, self.issuer]) }
    }
}
