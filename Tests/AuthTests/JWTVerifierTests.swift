import Auth
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The verifier end to end against an HTTPS identity provider that counts its requests: the
/// attack table of security.md §2 (A1–A26 where they apply to a token) and A27–A33.
@Suite struct JWTVerifierTests {
    // MARK: A27, A28: valid tokens and leeway

    @Test func validRS256ES256AndEdDSATokensAreAccepted() async throws {  // A27
        try await withJWTEnvironment { env in
            let keys = [
                try await TestSigningKey.rsa(kid: "rsa-1"),
                try await TestSigningKey.p256(kid: "ec-1"),
                try await TestSigningKey.ed25519(kid: "ed-1"),
            ]
            env.publish(keys.map(\.jwk))
            let verifier = try env.verifier([env.configuration()])
            for (index, key) in keys.enumerated() {
                let token = try await key.mint(
                    payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now, client: "client-\(index)")
                )
                let verified = try await expectAccepted(verifier, token)
                #expect(verified.principal.description == "client:client-\(index)")
                #expect(verified.issuer == env.issuer())
                #expect(verified.scopes == ["events:write", "profile"])
            }
            #expect(env.fetches() == 1)
            #expect(verifier.status().first?.state == .fresh)
            #expect(verifier.status().first?.keyCount == 3)
        }
    }

    @Test func expiryLeewayIsSixtySeconds() async throws {  // A28
        try await withJWTEnvironment { env in
            let key = try await TestSigningKey.rsa(kid: "k1")
            env.publish([key.jwk])
            let verifier = try env.verifier([env.configuration()])
            let now = Int(env.clock.now.timeIntervalSince1970)
            var claims = accessTokenClaims(issuer: env.issuer(), now: env.clock.now)
            claims["iat"] = now - 600
            claims["exp"] = now - 30
            try await expectAccepted(verifier, try await key.mint(payload: claims))
            claims["exp"] = now - 61
            await expectRefused(verifier, try await key.mint(payload: claims), reason: "expired")
            claims["exp"] = nil
            await expectRefused(verifier, try await key.mint(payload: claims), reason: "malformed")
        }
    }

    // MARK: A1–A5: algorithms and key ids

    @Test func algNoneInAnyCaseIsRefusedBeforeCryptography() async throws {  // A1
        try await withJWTEnvironment { env in
            let key = try await TestSigningKey.rsa(kid: "k1")
            env.publish([key.jwk])
            let verifier = try env.verifier([env.configuration()])
            let payload = json(accessTokenClaims(issuer: env.issuer(), now: env.clock.now))
            for alg in ["none", "None", "NONE", "nOnE"] {
                let header = json(["alg": alg, "kid": "k1", "typ": "at+jwt"])
                let token = base64URL(Array(header.utf8)) + "." + base64URL(Array(payload.utf8)) + "."
                await expectRefused(verifier, token, reason: "alg_not_allowed")
            }
            #expect(env.fetches() == 0)
        }
    }

    @Test func hmacSignedWithTheIssuersPublicKeyIsRefused() async throws {  // A2
        try await withJWTEnvironment { env in
            let key = try await TestSigningKey.rsa(kid: "k1")
            env.publish([key.jwk])
            // Even with every asymmetric algorithm allowed, HS256 never is.
            let verifier = try env.verifier([
                env.configuration(algorithms: Array(IssuerConfiguration.supportedAlgorithms))
            ])
            let forger = await TestSigningKey.hmac(kid: "k1", secret: Array(JWTTestRSAKeys.pem1.utf8))
            let token = try await forger.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now))
            await expectRefused(verifier, token, reason: "alg_not_allowed")
        }
    }

    @Test func headerAlgOtherThanTheKeysIsRefused() async throws {  // A3
        try await withJWTEnvironment { env in
            let key = try await TestSigningKey.rsa(kid: "k1")
            env.publish([key.jwk])
            let verifier = try env.verifier([env.configuration(algorithms: ["RS256", "RS512", "PS256"])])
            for alg in ["PS256", "RS512"] {
                let forger = try await TestSigningKey.rsa(kid: "k1", alg: alg)
                let token = try await forger.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now))
                await expectRefused(verifier, token, reason: "alg_mismatch")
            }
        }
    }

    @Test func kidInjectionIsOnlyAnInMemoryLookup() async throws {  // A4, A5
        try await withJWTEnvironment { env in
            let key = try await TestSigningKey.rsa(kid: "k1")
            env.publish([key.jwk])
            let verifier = try env.verifier([env.configuration()])
            let claims = accessTokenClaims(issuer: env.issuer(), now: env.clock.now)
            try await expectAccepted(verifier, try await key.mint(payload: claims))
            let before = env.fetches()
            for kid in ["../../../../dev/null", "' OR 1=1--", "http://127.0.0.1:1/jwks", "k1\u{0}"] {
                let token = try await key.mint(payload: claims) { $0["kid"] = kid }
                await expectRefused(verifier, token, reason: "unknown_kid")
            }
            // One refetch for the first unknown kid, none for the rest (cooldown).
            #expect(env.fetches() == before + 1)
            let long = try await key.mint(payload: claims) { $0["kid"] = String(repeating: "a", count: 1000) }
            await expectRefused(verifier, long, reason: "bad_header")
            // A 10 KB kid makes the token too large before its header is even decoded.
            let huge = try await key.mint(payload: claims) { $0["kid"] = String(repeating: "a", count: 10_000) }
            await expectRefused(verifier, huge, reason: "too_large")
            await expectRefused(verifier, try await key.mint(payload: claims) { $0["kid"] = nil }, reason: "bad_header")
            await expectRefused(verifier, try await key.mint(payload: claims) { $0["kid"] = 7 }, reason: "bad_header")
        }
    }

    // MARK: A6, A7: key-locating headers

    @Test func jkuAndX5uAreNeverFetched() async throws {  // A6, A7
        try await withJWTEnvironment { env in
            let listener = try LoopbackListener()
            #expect(listener.pendingConnections() == 0)
            let key = try await TestSigningKey.rsa(kid: "k1")
            env.publish([key.jwk])
            let verifier = try env.verifier([env.configuration()])
            let attacker = try await TestSigningKey.rsa(kid: "attacker", pem: JWTTestRSAKeys.pem3)
            let claims = accessTokenClaims(issuer: env.issuer(), now: env.clock.now)
            let url = "https://127.0.0.1:\(listener.port)/jwks.json"
            let jku = try await attacker.mint(payload: claims) { $0["jku"] = url }
            await expectRefused(verifier, jku, reason: "unknown_kid")
            let x5u = try await attacker.mint(payload: claims) { $0["x5u"] = "http://127.0.0.1:\(listener.port)/c.pem" }
            await expectRefused(verifier, x5u, reason: "unknown_kid")
            // The attacker's key embedded under the real kid (CVE-2018-0114): the real key decides.
            let embedded = try await TestSigningKey.rsa(kid: "k1", pem: JWTTestRSAKeys.pem3)
            let jwk = try await embedded.mint(payload: claims) { $0["jwk"] = embedded.jwk }
            await expectRefused(verifier, jwk, reason: "bad_signature")
            #expect(listener.pendingConnections() == 0)
            #expect(verifier.counters.untrustedHeaders == 3)
            // The listener does see a connection when one is made: the zero above means something.
            try listener.connectToSelf()
            #expect(listener.pendingConnections() == 1)
        }
    }

    // MARK: A8–A20 on signed tokens

    @Test func critAndStructureFaultsAreRefusedOnSignedTokens() async throws {  // A8, A16, A17, A18
        try await withJWTEnvironment { env in
            let key = try await TestSigningKey.rsa(kid: "k1")
            env.publish([key.jwk])
            let verifier = try env.verifier([env.configuration()])
            let claims = accessTokenClaims(issuer: env.issuer(), now: env.clock.now)
            await expectRefused(verifier, try await key.mint(payload: claims) { $0["crit"] = ["exp"] }, reason: "crit")
            await expectRefused(
                verifier,
                try await key.mint(payload: claims) {
                    $0["crit"] = ["b64"]
                    $0["b64"] = false
                },
                reason: "crit"
            )
            let token = try await key.mint(payload: claims)
            let parts = token.split(separator: ".").map(String.init)
            await expectRefused(verifier, parts[0] + "." + parts[1], reason: "malformed")
            await expectRefused(verifier, token + ".e30", reason: "malformed")
            await expectRefused(verifier, token + ".e30.e30", reason: "malformed")
            await expectRefused(verifier, parts[0] + "." + parts[1] + ".", reason: "bad_signature")
            await expectRefused(verifier, token + "=", reason: "malformed")
            await expectRefused(verifier, " " + token, reason: "malformed")
            let plus = parts[0] + "." + parts[1] + "." + parts[2].replacingOccurrences(of: "-", with: "+")
            if plus != token { await expectRefused(verifier, plus, reason: "malformed") }
            let padded = token + String(repeating: "A", count: 8193 - token.utf8.count)
            await expectRefused(verifier, padded, reason: "too_large")
            #expect(env.fetches() == 1)
        }
    }

    @Test func timeAudienceTypeAndScopeFaultsOnSignedTokens() async throws {  // A9–A15
        try await withJWTEnvironment { env in
            let key = try await TestSigningKey.rsa(kid: "k1")
            env.publish([key.jwk])
            let verifier = try env.verifier([env.configuration()])
            let now = Int(env.clock.now.timeIntervalSince1970)
            func token(
                _ edit: (inout [String: Any]) -> Void,
                header: (inout [String: Any]) -> Void = { _ in }
            ) async throws
                -> String
            {
                var claims = accessTokenClaims(issuer: env.issuer(), now: env.clock.now)
                edit(&claims)
                return try await key.mint(payload: claims, header: header)
            }
            await expectRefused(verifier, try await token { $0["nbf"] = now + 120 }, reason: "not_yet_valid")
            await expectRefused(verifier, try await token { $0["iat"] = now + 120 }, reason: "not_yet_valid")
            await expectRefused(verifier, try await token { $0["exp"] = now + 10 * 365 * 86400 }, reason: "too_old")
            await expectRefused(verifier, try await token { $0["iss"] = env.issuer() + "/" }, reason: "unknown_issuer")
            await expectRefused(verifier, try await token { $0["aud"] = "https://other" }, reason: "wrong_audience")
            await expectRefused(verifier, try await token { $0["aud"] = nil }, reason: "wrong_audience")
            try await expectAccepted(verifier, try await token { $0["aud"] = ["https://other", testAudience] })
            // An ID token: typ JWT, aud = the client.
            await expectRefused(
                verifier,
                try await token({ $0["aud"] = "analytics-backend" }, header: { $0["typ"] = "JWT" }),
                reason: "typ_not_allowed"
            )
            await expectRefused(
                verifier,
                try await token({ _ in }, header: { $0["typ"] = "logout+jwt" }),
                reason: "typ_not_allowed"
            )
            await expectRefused(
                verifier,
                try await token { $0["scope"] = "profile" },
                reason: "insufficient_scope",
                status: 403
            )
        }
    }

    @Test func psychicSignaturesAreRefused() async throws {  // A19
        try await withJWTEnvironment { env in
            let key = try await TestSigningKey.p256(kid: "ec-1")
            env.publish([key.jwk])
            let verifier = try env.verifier([env.configuration()])
            let token = try await key.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now))
            try await expectAccepted(verifier, token)
            let signingInput = token.split(separator: ".").prefix(2).joined(separator: ".")
            await expectRefused(
                verifier,
                signingInput + "." + String(repeating: "A", count: 86),
                reason: "bad_signature"
            )
            await expectRefused(verifier, signingInput + ".MAYCAQACAQA", reason: "bad_signature")
        }
    }

    @Test func duplicateMembersSignedByTheRealKeyAreRefused() async throws {  // A20, A33
        try await withJWTEnvironment { env in
            let key = try await TestSigningKey.rsa(kid: "k1")
            env.publish([key.jwk])
            let verifier = try env.verifier([env.configuration()])
            let now = Int(env.clock.now.timeIntervalSince1970)
            let body =
                #""iss":"\#(env.issuer())","client_id":"c","scope":"events:write","iat":\#(now),"exp":\#(now + 300)"#
            let header = #"{"alg":"RS256","kid":"k1","typ":"at+jwt"}"#
            let valid = try await key.mint(rawHeader: header, rawPayload: #"{\#(body),"aud":"\#(testAudience)"}"#)
            try await expectAccepted(verifier, valid)
            let duplicateAud = try await key.mint(
                rawHeader: header,
                rawPayload: #"{\#(body),"aud":"https://evil","aud":"\#(testAudience)"}"#
            )
            await expectRefused(verifier, duplicateAud, reason: "duplicate_member")
            let duplicateAlg = try await key.mint(
                rawHeader: #"{"alg":"none","alg":"RS256","kid":"k1","typ":"at+jwt"}"#,
                rawPayload: #"{\#(body),"aud":"\#(testAudience)"}"#
            )
            await expectRefused(verifier, duplicateAlg, reason: "duplicate_member")
        }
    }

    // MARK: A12: issuers never share keys

    @Test func aTokenIsVerifiedOnlyWithItsOwnIssuersKeys() async throws {  // A12, A24
        try await withJWTEnvironment { env in
            let keyA = try await TestSigningKey.rsa(kid: "a1")
            let keyB = try await TestSigningKey.rsa(kid: "b1", pem: JWTTestRSAKeys.pem2)
            env.publish([keyA.jwk], tenant: "a")
            env.publish([keyB.jwk], tenant: "b")
            let verifier = try env.verifier([env.configuration("a"), env.configuration("b")])
            try await expectAccepted(
                verifier,
                try await keyA.mint(payload: accessTokenClaims(issuer: env.issuer("a"), now: env.clock.now))
            )
            try await expectAccepted(
                verifier,
                try await keyB.mint(payload: accessTokenClaims(issuer: env.issuer("b"), now: env.clock.now))
            )
            // Signed by A's key, claiming to be from B: B's set has no a1.
            let crossed = try await keyA.mint(payload: accessTokenClaims(issuer: env.issuer("b"), now: env.clock.now))
            await expectRefused(verifier, crossed, reason: "unknown_kid")
            // Even under a kid B publishes, A's key does not verify.
            let relabelled = try await TestSigningKey.rsa(kid: "b1")
            let forged = try await relabelled.mint(
                payload: accessTokenClaims(issuer: env.issuer("b"), now: env.clock.now)
            )
            await expectRefused(verifier, forged, reason: "bad_signature")
            let unknown = try await keyA.mint(payload: accessTokenClaims(issuer: env.issuer("c"), now: env.clock.now))
            await expectRefused(verifier, unknown, reason: "unknown_issuer")
        }
    }

    // MARK: A22, A23, A29–A31: the key set over time

    @Test func keyRotationCostsExactlyOneRefetch() async throws {  // A29
        try await withJWTEnvironment { env in
            let k1 = try await TestSigningKey.rsa(kid: "k1")
            let k2 = try await TestSigningKey.p256(kid: "k2")
            env.publish([k1.jwk])
            let verifier = try env.verifier([env.configuration()])
            try await expectAccepted(
                verifier,
                try await k1.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now))
            )
            #expect(env.fetches() == 1)
            env.publish([k1.jwk, k2.jwk])
            for _ in 0..<5 {
                try await expectAccepted(
                    verifier,
                    try await k2.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now))
                )
            }
            try await expectAccepted(
                verifier,
                try await k1.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now))
            )
            #expect(env.fetches() == 2)
        }
    }

    @Test func fiftyConcurrentTokensWithANewKidShareOneFetch() async throws {  // A23 single-flight
        try await withJWTEnvironment { env in
            let k1 = try await TestSigningKey.rsa(kid: "k1")
            let k2 = try await TestSigningKey.ed25519(kid: "k2")
            env.publish([k1.jwk])
            let verifier = try env.verifier([env.configuration()])
            await verifier.refresh()
            #expect(env.fetches() == 1)
            // The IdP answers slowly, so all fifty are waiting while the one fetch is in flight.
            env.server.set(
                env.jwksPath(),
                JWKSTestServer.Route(body: jwks([k1.jwk, k2.jwk]), delay: .milliseconds(300))
            )
            var tokens: [String] = []
            for index in 0..<50 {
                tokens.append(
                    try await k2.mint(
                        payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now, client: "c\(index)")
                    )
                )
            }
            let accepted = await withTaskGroup(of: Bool.self) { group in
                for token in tokens {
                    group.addTask { if case .success = await verifier.verifyResult(token) { true } else { false } }
                }
                return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
            }
            #expect(accepted == 50)
            #expect(env.fetches() == 2)
        }
    }

    @Test func unknownKidFloodFetchesAtMostOncePerCooldown() async throws {  // A23 cooldown
        try await withJWTEnvironment { env in
            let k1 = try await TestSigningKey.rsa(kid: "k1")
            env.publish([k1.jwk])
            let verifier = try env.verifier([env.configuration()])
            await verifier.refresh()
            let claims = accessTokenClaims(issuer: env.issuer(), now: env.clock.now)
            let tokens = try await (0..<50).asyncMap { index in
                try await k1.mint(payload: claims) { $0["kid"] = "random-\(index)" }
            }
            let refused = await withTaskGroup(of: String?.self) { group in
                for token in tokens {
                    group.addTask {
                        if case .failure(let failure) = await verifier.verifyResult(token) {
                            failure.reason
                        } else {
                            nil
                        }
                    }
                }
                return await group.reduce(into: [String]()) { if let reason = $1 { $0.append(reason) } }
            }
            #expect(refused == Array(repeating: "unknown_kid", count: 50))
            #expect(env.fetches() == 2)
            env.clock.advance(seconds: 59)
            await expectRefused(verifier, tokens[0], reason: "unknown_kid")
            #expect(env.fetches() == 2)
            env.clock.advance(seconds: 2)
            await expectRefused(verifier, tokens[1], reason: "unknown_kid")
            #expect(env.fetches() == 3)
        }
    }

    @Test func aRemovedKeyStopsWorkingAfterTheNextRefresh() async throws {  // A30
        try await withJWTEnvironment { env in
            let k1 = try await TestSigningKey.rsa(kid: "k1")
            let k2 = try await TestSigningKey.rsa(kid: "k2", pem: JWTTestRSAKeys.pem2)
            env.publish([k1.jwk, k2.jwk], cacheControl: "max-age=600")
            let verifier = try env.verifier([env.configuration()])
            let cachedToken = try await k1.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now))
            try await expectAccepted(verifier, cachedToken)
            env.publish([k2.jwk], cacheControl: "max-age=600")
            // Within the token cache's 60 s the verification stands, without a fetch.
            env.clock.advance(seconds: 30)
            try await expectAccepted(verifier, cachedToken)
            #expect(verifier.counters.cacheHits == 1)
            // A fresh set still lists k1 until its TTL: a new k1 token passes with no refetch.
            let fresh = try await k1.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now))
            try await expectAccepted(verifier, fresh)
            #expect(env.fetches() == 1)
            // After the TTL the set is refetched and k1 is gone, for new and cached tokens alike.
            env.clock.advance(seconds: 600)
            let late = try await k1.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now))
            await expectRefused(verifier, late, reason: "unknown_kid")
            #expect(env.fetches() == 2)
            try await expectAccepted(
                verifier,
                try await k2.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now))
            )
        }
    }

    @Test func whileTheIdPIsDownStaleKeysServeThenAuthFailsClosed() async throws {  // A31
        try await withJWTEnvironment { env in
            let k1 = try await TestSigningKey.rsa(kid: "k1")
            env.publish([k1.jwk])
            let verifier = try env.verifier([env.configuration()])
            await verifier.refresh()
            #expect(!verifier.isDegraded)
            env.server.fail(env.jwksPath(), status: 500)
            env.clock.advance(seconds: 11 * 60)
            try await expectAccepted(
                verifier,
                try await k1.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now))
            )
            #expect(env.fetches() == 2)
            let status = try #require(verifier.status().first)
            #expect(status.state == .stale)
            #expect(!status.degraded)
            #expect(status.lastError == "http_status: HTTP 500")
            #expect((status.ageSeconds ?? 0) >= 660)
            // A failed fetch is retried at most once per cooldown.
            try await expectAccepted(
                verifier,
                try await k1.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now))
            )
            #expect(env.fetches() == 2)
            // Past stale_if_error (24 h after expiry) the keys are no longer trusted.
            env.clock.advance(seconds: 24 * 3600)
            await expectRefused(
                verifier,
                try await k1.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now)),
                reason: "jwks_unavailable"
            )
            #expect(verifier.isDegraded)
            #expect(verifier.status().first?.state == .unavailable)
            // The IdP comes back: the next fetch (after the cooldown) restores service.
            env.publish([k1.jwk])
            env.clock.advance(seconds: 61)
            try await expectAccepted(
                verifier,
                try await k1.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now))
            )
            #expect(!verifier.isDegraded)
        }
    }

    @Test func anUnreachableOrSlowOrHugeJWKSIsUnavailableNotFatal() async throws {  // A31
        try await withJWTEnvironment { env in
            let k1 = try await TestSigningKey.rsa(kid: "k1")
            env.server.set(env.jwksPath(), JWKSTestServer.Route(body: jwks([k1.jwk]), delay: .seconds(2)))
            env.publish([k1.jwk], tenant: "huge")
            env.server.set(env.jwksPath("huge"), body: jwks([k1.jwk]) + String(repeating: " ", count: 70_000))
            let verifier = try env.verifier([
                env.configuration(policy: JWKSPolicy(timeout: .milliseconds(300))), env.configuration("huge"),
            ])
            // The IdP answers after 2 s, so without the 300 ms fetch timeout this token would be
            // accepted; the refusal and the "timeout" state below are the proof. (A wall-clock
            // bound proved less and failed once under the start-up burst of the full test run.)
            let slow = try await k1.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now))
            await expectRefused(verifier, slow, reason: "jwks_unavailable")
            let huge = try await k1.mint(payload: accessTokenClaims(issuer: env.issuer("huge"), now: env.clock.now))
            await expectRefused(verifier, huge, reason: "jwks_unavailable")
            let states = verifier.status().map { $0.lastError?.split(separator: ":").first.map(String.init) }
            #expect(states == ["timeout", "too_large"])
            #expect(verifier.isDegraded)
        }
    }

    @Test func aSmallRSAKeyIsDroppedFromTheSet() async throws {  // A22
        try await withJWTEnvironment { env in
            let k1 = try await TestSigningKey.rsa(kid: "k1")
            var small = k1.jwk
            small["kid"] = "small"
            small["n"] = JWTTestRSAKeys.modulus1024
            env.publish([small, k1.jwk])
            let verifier = try env.verifier([env.configuration()])
            let claims = accessTokenClaims(issuer: env.issuer(), now: env.clock.now)
            try await expectAccepted(verifier, try await k1.mint(payload: claims))
            #expect(verifier.status().first?.keyCount == 1)
            await expectRefused(
                verifier,
                try await k1.mint(payload: claims) { $0["kid"] = "small" },
                reason: "unknown_kid"
            )
        }
    }

    // MARK: A25, A32: real-world key sets and the poison test

    @Test func algLessKeysCannotBePoisonedByAForgedAlgorithm() async throws {  // A32
        try await withJWTEnvironment { env in
            let k1 = try await TestSigningKey.rsa(kid: "entra-1")
            var entra = k1.publicJWK  // no alg, as Entra ID publishes it
            entra["use"] = "sig"
            entra["x5t"] = "bm90LWEtdGh1bWJwcmludA"
            var encryption = try await TestSigningKey.rsa(kid: "kc-enc", pem: JWTTestRSAKeys.pem2).publicJWK
            encryption["use"] = "enc"
            encryption["alg"] = "RSA-OAEP"
            env.publish([encryption, entra, ["kty": "oct", "kid": "h", "k": "c2VjcmV0"]])
            // PS384 is allowed for this issuer, so only the key's own alg can stop the forgery.
            let verifier = try env.verifier([env.configuration(algorithms: ["RS256", "PS384"])])
            let claims = accessTokenClaims(issuer: env.issuer(), now: env.clock.now)
            let forger = try await TestSigningKey.rsa(kid: "entra-1", pem: JWTTestRSAKeys.pem3, alg: "PS384")
            await expectRefused(verifier, try await forger.mint(payload: claims), reason: "alg_mismatch")
            try await expectAccepted(verifier, try await k1.mint(payload: claims))
            #expect(verifier.status().first?.keyCount == 1)
        }
    }

    // MARK: discovery

    @Test func discoveryReadsRFC8414MetadataThenOIDC() async throws {
        try await withJWTEnvironment { env in
            let k1 = try await TestSigningKey.p256(kid: "k1")
            env.publish([k1.jwk], tenant: "as")
            env.publish([k1.jwk], tenant: "oidc")
            let origin = env.server.origin
            env.server.set(
                "/.well-known/oauth-authorization-server/as",
                body: json(["issuer": env.issuer("as"), "jwks_uri": origin + env.jwksPath("as")])
            )
            env.server.set(
                "/oidc/.well-known/openid-configuration",
                body: json(["issuer": env.issuer("oidc"), "jwks_uri": origin + env.jwksPath("oidc")])
            )
            env.server.set(
                "/.well-known/oauth-authorization-server/liar",
                body: json(["issuer": env.issuer("as"), "jwks_uri": origin + env.jwksPath("as")])
            )
            func discovering(_ tenant: String) -> IssuerConfiguration {
                var configuration = env.configuration(tenant)
                configuration.jwksURI = nil
                configuration.discovery = true
                return configuration
            }
            let verifier = try env.verifier([discovering("as"), discovering("oidc"), discovering("liar")])
            try await expectAccepted(
                verifier,
                try await k1.mint(payload: accessTokenClaims(issuer: env.issuer("as"), now: env.clock.now))
            )
            try await expectAccepted(
                verifier,
                try await k1.mint(payload: accessTokenClaims(issuer: env.issuer("oidc"), now: env.clock.now))
            )
            #expect(env.server.hits("/.well-known/oauth-authorization-server/oidc") == 1)
            // Metadata that names another issuer is not believed.
            let liar = try await k1.mint(payload: accessTokenClaims(issuer: env.issuer("liar"), now: env.clock.now))
            await expectRefused(verifier, liar, reason: "jwks_unavailable")
            #expect(verifier.status().last?.lastError?.hasPrefix("discovery") == true)
        }
    }

    @Test func aVerifiedTokenIsServedFromTheCache() async throws {
        try await withJWTEnvironment { env in
            let k1 = try await TestSigningKey.ed25519(kid: "k1")
            env.publish([k1.jwk])
            let verifier = try env.verifier([env.configuration()])
            let token = try await k1.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now))
            let first = try await expectAccepted(verifier, token)
            let second = try await expectAccepted(verifier, token)
            #expect(first == second)
            #expect(verifier.counters.cacheHits == 1)
            // The cache is keyed by the whole token: one more signature character misses it.
            await expectRefused(verifier, token + "A", reason: "bad_signature")
        }
    }
}

extension JWTVerifierTests {
    /// A small deterministic generator, so a failure can be replayed.
    private struct SplitMix64: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            self.state &+= 0x9E37_79B9_7F4A_7C15
            var z = self.state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    @Test func noMutationOfAValidTokenIsAccepted() async throws {  // F1 in small
        try await withJWTEnvironment { env in
            let key = try await TestSigningKey.p256(kid: "k1")
            env.publish([key.jwk])
            let verifier = try env.verifier([env.configuration()])
            let token = try await key.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now))
            try await expectAccepted(verifier, token)
            var random = SplitMix64(state: 11)
            let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ")
            var reasons: [String: Int] = [:]
            for _ in 0..<2000 {
                var characters = Array(token)
                for _ in 0...Int.random(in: 0...2, using: &random) {
                    let index = Int.random(in: 0..<characters.count, using: &random)
                    switch Int.random(in: 0..<3, using: &random) {
                    case 0: characters[index] = alphabet.randomElement(using: &random) ?? "A"
                    case 1: characters.remove(at: index)
                    default: characters.insert(alphabet.randomElement(using: &random) ?? "A", at: index)
                    }
                }
                let mutated = String(characters)
                guard mutated != token else { continue }
                switch await verifier.verifyResult(mutated) {
                case .success: Issue.record("a mutated token was accepted")
                case .failure(let failure): reasons[failure.reason, default: 0] += 1
                }
            }
            #expect(reasons["bad_signature", default: 0] > 0)
            #expect(reasons["malformed", default: 0] > 0)
            // Mutated kids cost at most the one refetch the cooldown allows.
            #expect(env.fetches() <= 2)
        }
    }
}

extension Sequence {
    fileprivate func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var result: [T] = []
        for element in self { result.append(try await transform(element)) }
        return result
    }
}

/// A TCP socket listening on 127.0.0.1 that never accepts: a connection made to it waits in the
/// kernel's backlog, where ``pendingConnections()`` sees it. Proves that nothing connected.
final class LoopbackListener: @unchecked Sendable {
    private let descriptor: Int32
    let port: Int

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EMFILE) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            close(fd)
            throw POSIXError(.EADDRINUSE)
        }
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.descriptor = fd
        self.port = Int(UInt16(bigEndian: address.sin_port))
    }

    /// Connections waiting to be accepted (0 or 1: readiness is all poll reports).
    func pendingConnections() -> Int {
        var entry = pollfd(fd: self.descriptor, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, 0) > 0 ? 1 : 0
    }

    /// Connects to itself, as a control that ``pendingConnections()`` works.
    func connectToSelf() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(self.port).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else {
            close(fd)
            throw POSIXError(.ECONNREFUSED)
        }
        var entry = pollfd(fd: self.descriptor, events: Int16(POLLIN), revents: 0)
        _ = poll(&entry, 1, 1000)
        close(fd)
    }

    deinit { close(self.descriptor) }
}
