import Auth
import CoreMetrics
import Foundation
import Synchronization
import TestSupport
import Testing

/// The verifier's metrics and its background refresh loop.
@Suite struct JWTMetricsTests {
    @Test func fetchesCacheHitsAndUntrustedHeadersAreCounted() async throws {
        try await withJWTEnvironment { env in
            let metrics = RecordingMetrics()
            let key = try await TestSigningKey.rsa(kid: "k1")
            var encryption = key.publicJWK
            encryption["kid"] = "enc"
            encryption["use"] = "enc"
            env.publish([key.jwk, encryption])
            let verifier = try TokenVerifier(
                issuers: [env.configuration()],
                metricsFactory: metrics,
                now: env.clock.function
            )
            let issuer = ["issuer": env.issuer()]
            let token = try await key.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now))
            try await expectAccepted(verifier, token)
            try await expectAccepted(verifier, token)
            let jku = try await key.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now)) {
                $0["jku"] = "https://127.0.0.1:1/jwks"
            }
            try await expectAccepted(verifier, jku)
            #expect(metrics.value("sluice_auth_jwks_refresh_total", issuer.merging(["result": "ok"]) { $1 }) == 1)
            #expect(metrics.value("sluice_auth_token_cache_hits_total", [:]) == 1)
            #expect(metrics.value("sluice_auth_untrusted_header_total", ["header": "jku"]) == 1)
            #expect(
                metrics.value("sluice_auth_jwks_keys_dropped_total", issuer.merging(["reason": "enc_key"]) { $1 }) == 1
            )
            env.clock.advance(seconds: 90)
            env.server.fail(env.jwksPath())
            env.clock.advance(seconds: 600)
            try await expectAccepted(
                verifier,
                try await key.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now))
            )
            #expect(metrics.value("sluice_auth_jwks_refresh_total", issuer.merging(["result": "error"]) { $1 }) == 1)
            #expect(metrics.value("sluice_auth_jwks_age_seconds", issuer) == 690)
            // No label or value carries the token or its signature.
            let signature = String(token.split(separator: ".")[2])
            #expect(!metrics.labelsAndDimensions.contains { $0.contains(signature) || $0.contains(token) })
            try await verifier.shutdown()
        }
    }

    @Test func runFetchesAtStartAndStopsWhenCancelled() async throws {
        try await withJWTEnvironment { env in
            let key = try await TestSigningKey.p256(kid: "k1")
            env.publish([key.jwk])
            let verifier = try env.verifier([env.configuration()])
            #expect(verifier.isDegraded)
            let running = Task { await verifier.run() }
            try await waitUntil { env.fetches() == 1 && !verifier.isDegraded }
            #expect(verifier.status().first?.state == .fresh)
            running.cancel()
            await running.value
            let token = try await key.mint(payload: accessTokenClaims(issuer: env.issuer(), now: env.clock.now))
            try await expectAccepted(verifier, token)
            #expect(env.fetches() == 1)
        }
    }
}
