import Foundation
import JWTKit
import Testing

@testable import Auth

/// Key-set normalisation (A22, A25, A32 fixtures), cache lifetimes and discovery URLs.
@Suite struct JWKSNormalizerTests {
    private func normalize(
        _ keys: [Any],
        allowed: [String] = ["RS256", "ES256", "EdDSA"]
    ) throws
        -> JWKSNormalizer.Result
    {
        try JWKSNormalizer.normalize(Array(json(["keys": keys]).utf8), allowedAlgorithms: allowed)
    }

    private func rsaKey() async throws -> TestSigningKey { try await TestSigningKey.rsa(kid: "rsa") }

    @Test func keycloakShapedSetKeepsTheSigningKeyAndSkipsTheEncryptionKey() async throws {  // A25, A32
        let rsa = try await self.rsaKey()
        var signing: [String: Any] = rsa.publicJWK
        signing.merge(["kid": "kc-sig", "alg": "RS256", "use": "sig", "x5c": ["MIIC..."], "x5t": "abc"]) { $1 }
        var encryption: [String: Any] = rsa.publicJWK
        encryption.merge(["kid": "kc-enc", "alg": "RSA-OAEP", "use": "enc"]) { $1 }
        var encryption256: [String: Any] = rsa.publicJWK
        encryption256.merge(["kid": "kc-enc2", "alg": "RSA-OAEP-256"]) { $1 }
        let result = try self.normalize([signing, encryption, encryption256])
        #expect(result.keys.map(\.kid) == ["kc-sig"])
        #expect(result.keys.map(\.alg) == ["RS256"])
        #expect(
            result.dropped == [
                DroppedKey(kid: "kc-enc", reason: "enc_key"), DroppedKey(kid: "kc-enc2", reason: "unsupported_alg"),
            ]
        )
    }

    @Test func entraShapedAlgLessKeysGetTheirAlgorithmFilledIn() async throws {  // A25, A32
        let rsa = try await self.rsaKey()
        let ec = try await TestSigningKey.p256(kid: "ec")
        let ed = try await TestSigningKey.ed25519(kid: "ed")
        var entra: [String: Any] = rsa.publicJWK
        entra.merge(["kid": "entra", "use": "sig", "x5t": "x", "x5c": ["MIIC"], "issuer": "https://login/x/v2.0"]) {
            $1
        }
        let result = try self.normalize([entra, ec.publicJWK, ed.publicJWK])
        #expect(
            Dictionary(uniqueKeysWithValues: result.keys.map { ($0.kid, $0.alg) }) == [
                "entra": "RS256", "ec": "ES256", "ed": "EdDSA",
            ]
        )
        #expect(result.dropped.isEmpty)
    }

    @Test func unsupportedOrIncompleteKeysAreDroppedOneByOne() async throws {  // A22, A25
        let rsa = try await self.rsaKey()
        var noKid: [String: Any] = rsa.publicJWK
        noKid["kid"] = nil
        var small: [String: Any] = rsa.publicJWK
        small.merge(["kid": "small", "n": JWTTestRSAKeys.modulus1024]) { $1 }
        var wrongCurveAlg: [String: Any] = try await TestSigningKey.p256(kid: "p256-384").publicJWK
        wrongCurveAlg["alg"] = "ES384"
        var notAllowed: [String: Any] = rsa.publicJWK
        notAllowed.merge(["kid": "ps", "alg": "PS256"]) { $1 }
        var good: [String: Any] = rsa.publicJWK
        good["kid"] = "good"
        let result = try self.normalize([
            ["kty": "oct", "kid": "hmac", "k": "c2VjcmV0"],
            ["kty": "AKP", "kid": "mldsa", "alg": "ML-DSA-65", "pub": "AAAA"],
            ["kty": "EC", "kid": "secp256k1", "crv": "secp256k1", "x": "AA", "y": "AA"],
            noKid, small, wrongCurveAlg, notAllowed,
            ["kty": "RSA", "kid": "no-n", "e": "AQAB"],
            ["kty": "RSA", "kid": "ops", "key_ops": ["encrypt"], "n": "AA", "e": "AQAB"],
            "not an object",
            good,
        ])
        #expect(result.keys.map(\.kid) == ["good"])
        #expect(
            result.dropped == [
                DroppedKey(kid: "hmac", reason: "unsupported_kty"),
                DroppedKey(kid: "mldsa", reason: "unsupported_kty"),
                DroppedKey(kid: "secp256k1", reason: "unsupported_kty"),
                DroppedKey(kid: nil, reason: "no_kid"),
                DroppedKey(kid: "small", reason: "rsa_too_small"),
                DroppedKey(kid: "p256-384", reason: "unsupported_alg"),
                DroppedKey(kid: "ps", reason: "alg_not_allowed"),
                DroppedKey(kid: "no-n", reason: "invalid_key"),
                DroppedKey(kid: "ops", reason: "enc_key"),
                DroppedKey(kid: nil, reason: "invalid_key"),
            ]
        )
    }

    @Test func normalisedKeysResistAlgCachePoisoningEvenWithoutTheAlgCheck() async throws {  // A32, §3.1 pitfall 2
        let key = try await TestSigningKey.rsa(kid: "entra")
        let result = try self.normalize([key.publicJWK])  // no alg, as Entra ID publishes it
        let (collection, loaded, _) = await JWKSNormalizer.makeCollection(result.keys)
        #expect(loaded.map(\.alg) == ["RS256"])
        let claims = accessTokenClaims(issuer: "https://idp", now: Date())
        // Straight to jwt-kit, skipping the verifier's header/key alg comparison.
        let forger = try await TestSigningKey.rsa(kid: "entra", pem: JWTTestRSAKeys.pem3, alg: "PS384")
        await #expect(throws: (any Error).self) {
            _ = try await collection.verify(try await forger.mint(payload: claims), as: NoClaims.self)
        }
        _ = try await collection.verify(try await key.mint(payload: claims), as: NoClaims.self)
        // A kid the set does not hold never falls back to a default key.
        let other = try await TestSigningKey.rsa(kid: "other")
        await #expect(throws: (any Error).self) {
            _ = try await collection.verify(
                try await other.mint(payload: claims) { $0["kid"] = "missing" },
                as: NoClaims.self
            )
        }
    }

    @Test func aKidPublishedTwiceIsNotUsed() async throws {
        let rsa = try await self.rsaKey()
        let ec = try await TestSigningKey.p256(kid: "same")
        var first: [String: Any] = rsa.publicJWK
        first["kid"] = "same"
        let result = try self.normalize([first, ec.publicJWK])
        #expect(result.keys.isEmpty)
        #expect(result.dropped.count == 2 && result.dropped.allSatisfy { $0.reason == "duplicate_kid" })
    }

    @Test func auth0AndGoogleShapedSetsLoad() async throws {
        let rsa1 = try await TestSigningKey.rsa(kid: "a0-1")
        let rsa2 = try await TestSigningKey.rsa(kid: "g-2", pem: JWTTestRSAKeys.pem2)
        var auth0: [String: Any] = rsa1.publicJWK
        auth0.merge(["use": "sig", "x5c": ["MIIDHTCC"], "x5t": "t"]) { $1 }
        var google: [String: Any] = rsa2.publicJWK
        google.merge(["use": "sig", "alg": "RS256"]) { $1 }
        let result = try self.normalize([auth0, google])
        #expect(Set(result.keys.map(\.kid)) == ["a0-1", "g-2"])
    }

    @Test func aDocumentThatIsNotAKeySetIsRefusedWhole() {
        for text in ["[]", "{}", #"{"keys":{}}"#, #"{"keys":[],"keys":[]}"#, "not json"] {
            #expect(throws: JWKSNormalizer.InvalidDocument.self) {
                _ = try JWKSNormalizer.normalize(Array(text.utf8), allowedAlgorithms: ["RS256"])
            }
        }
    }
}

/// The JWKS cache lifetime rules, discovery URLs and the verified-token cache.
@Suite struct JWKSCacheRulesTests {
    @Test func cacheControlMaxAgeIsClamped() {
        let policy = JWKSPolicy()
        #expect(JWKSFetcher.timeToLive(cacheControl: nil, policy: policy) == .seconds(600))
        #expect(JWKSFetcher.timeToLive(cacheControl: "public, max-age=3600", policy: policy) == .seconds(3600))
        #expect(JWKSFetcher.timeToLive(cacheControl: "max-age=10", policy: policy) == .seconds(300))
        #expect(JWKSFetcher.timeToLive(cacheControl: "max-age=999999", policy: policy) == .seconds(86400))
        #expect(JWKSFetcher.timeToLive(cacheControl: "no-store", policy: policy) == .seconds(300))
        #expect(JWKSFetcher.timeToLive(cacheControl: "max-age=abc", policy: policy) == .seconds(600))
        #expect(JWKSFetcher.timeToLive(cacheControl: "=, ,max-age=\"900\"", policy: policy) == .seconds(900))
    }

    @Test func metadataURLsFollowRFC8414ThenOIDC() {
        #expect(
            JWKSFetcher.metadataURLs(for: "https://idp.example.com/realms/ingest") == [
                "https://idp.example.com/.well-known/oauth-authorization-server/realms/ingest",
                "https://idp.example.com/realms/ingest/.well-known/openid-configuration",
            ]
        )
        #expect(
            JWKSFetcher.metadataURLs(for: "https://idp.example.com:8443/") == [
                "https://idp.example.com:8443/.well-known/oauth-authorization-server",
                "https://idp.example.com:8443/.well-known/openid-configuration",
            ]
        )
    }

    @Test func verifiedTokensLiveAtMostMaxTTLAndNeverPastExp() {  // A30
        let cache = VerifiedTokenCache(maxEntries: 2, maxTTL: .seconds(60))
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        let long = VerifiedToken(
            principal: Principal(kind: .oauthClient, name: "a"),
            issuer: "i",
            scopes: [],
            expiresAt: now + 3600
        )
        let short = VerifiedToken(
            principal: Principal(kind: .oauthClient, name: "b"),
            issuer: "i",
            scopes: [],
            expiresAt: now + 5
        )
        cache.insert("t1", long, now: now)
        cache.insert("t2", short, now: now)
        #expect(cache.lookup("t1", now: now + 59) == long)
        #expect(cache.lookup("t1", now: now + 60) == nil)
        #expect(cache.lookup("t2", now: now + 4) == short)
        #expect(cache.lookup("t2", now: now + 5) == nil)
        for index in 0..<10 { cache.insert("x\(index)", long, now: now) }
        #expect(cache.count <= 2)
    }
}

private struct NoClaims: JWTPayload {
    func verify(using algorithm: some JWTAlgorithm) async throws {}
}
