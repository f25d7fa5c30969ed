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

/// Records counters and gauges by label and dimensions.
final class RecordingMetrics: MetricsFactory, Sendable {
    private let values = Mutex<[String: Double]>([:])

    private static func key(_ label: String, _ dimensions: [(String, String)]) -> String {
        label + "{" + dimensions.sorted { $0.0 < $1.0 }.map { "\($0.0)=\($0.1)" }.joined(separator: ",") + "}"
    }

    /// The current value of `label` with exactly `dimensions`.
    func value(_ label: String, _ dimensions: [String: String]) -> Double? {
        let key = Self.key(label, dimensions.map { ($0.key, $0.value) })
        return self.values.withLock { $0[key] }
    }

    /// Every metric's label and dimensions, as text.
    var labelsAndDimensions: [String] { self.values.withLock { Array($0.keys) } }

    fileprivate func update(_ key: String, _ change: (inout Double) -> Void) {
        self.values.withLock { change(&$0[key, default: 0]) }
    }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        let key = Self.key(label, dimensions)
        self.update(key) { _ in }
        return Handler(key: key, metrics: self)
    }

    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        Handler(key: Self.key(label, dimensions), metrics: self)
    }

    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        Handler(key: Self.key(label, dimensions), metrics: self)
    }

    func destroyCounter(_ handler: any CounterHandler) {}
    func destroyRecorder(_ handler: any RecorderHandler) {}
    func destroyTimer(_ handler: any TimerHandler) {}

    private final class Handler: CounterHandler, RecorderHandler, TimerHandler, Sendable {
        let key: String
        let metrics: RecordingMetrics

        init(key: String, metrics: RecordingMetrics) {
            self.key = key
            self.metrics = metrics
        }

        func increment(by amount: Int64) { self.metrics.update(self.key) { $0 += Double(amount) } }
        func reset() { self.metrics.update(self.key) { $0 = 0 } }
        func record(_ value: Int64) { self.metrics.update(self.key) { $0 = Double(value) } }
        func record(_ value: Double) { self.metrics.update(self.key) { $0 = value } }
        func recordNanoseconds(_ duration: Int64) { self.metrics.update(self.key) { $0 = Double(duration) } }
    }
}
