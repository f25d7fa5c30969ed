import Auth
import Crypto
import Foundation
import JWTKit
import Synchronization
import TestSupport
import Testing

/// A wall clock the tests move by hand, so time-dependent behaviour is tested without sleeping.
final class TestClock: Sendable {
    private let current: Mutex<Date>

    init(_ start: Date = Date()) { self.current = Mutex(start) }

    var now: Date { self.current.withLock { $0 } }

    func advance(seconds: TimeInterval) { self.current.withLock { $0 += seconds } }

    /// For `TokenVerifier(now:)`.
    var function: @Sendable () -> Date { { self.now } }
}

/// Base64url without padding.
func base64URL(_ bytes: some Sequence<UInt8>) -> String {
    Data(bytes).base64EncodedString()
        .replacingOccurrences(of: "+", with: "-")
        .replacingOccurrences(of: "/", with: "_")
        .replacingOccurrences(of: "=", with: "")
}

/// Compact JSON with sorted keys, for headers, payloads and key sets.
func json(_ object: [String: Any]) -> String {
    let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]))
    return String(decoding: data ?? Data(), as: UTF8.self)
}

/// A signing key of a test identity provider (or an attacker): mints tokens and publishes its
/// public JWK.
struct TestSigningKey: Sendable {
    let kid: String
    let alg: String
    /// The public JWK members, without `alg` and `use` (tests add them as an IdP would).
    let publicJWK: [String: String]
    /// The private key as PEM, for PyJWT.
    let privatePEM: String
    private let keys: JWTKeyCollection

    /// An RSA key from a fixed PEM, signing with RS256/384/512 or PS256/384/512.
    static func rsa(
        kid: String,
        pem: String = JWTTestRSAKeys.pem1,
        alg: String = "RS256"
    ) async throws
        -> TestSigningKey
    {
        let key = try Insecure.RSA.PrivateKey(pem: pem)
        let keys = JWTKeyCollection()
        let digest: DigestAlgorithm =
            switch alg.suffix(3) {
            case "384": .sha384
            case "512": .sha512
            default: .sha256
            }
        if alg.hasPrefix("PS") {
            await keys.add(pss: key, digestAlgorithm: digest, kid: JWKIdentifier(string: kid))
        } else {
            await keys.add(rsa: key, digestAlgorithm: digest, kid: JWKIdentifier(string: kid))
        }
        let primitives = try key.publicKey.getKeyPrimitives()
        return TestSigningKey(
            kid: kid,
            alg: alg,
            publicJWK: [
                "kty": "RSA", "kid": kid, "n": base64URL(primitives.modulus), "e": base64URL(primitives.publicExponent),
            ],
            privatePEM: pem,
            keys: keys
        )
    }

    /// A fresh P-256 key (ES256).
    static func p256(kid: String) async throws -> TestSigningKey {
        let key = P256.Signing.PrivateKey()
        let keys = JWTKeyCollection()
        await keys.add(ecdsa: try ES256PrivateKey(backing: key), kid: JWKIdentifier(string: kid))
        let point = Array(key.publicKey.x963Representation.dropFirst())
        return TestSigningKey(
            kid: kid,
            alg: "ES256",
            publicJWK: [
                "kty": "EC", "crv": "P-256", "kid": kid, "x": base64URL(point.prefix(32)),
                "y": base64URL(point.suffix(32)),
            ],
            privatePEM: key.pemRepresentation,
            keys: keys
        )
    }

    /// A fresh Ed25519 key (EdDSA).
    static func ed25519(kid: String) async throws -> TestSigningKey {
        let key = Curve25519.Signing.PrivateKey()
        let keys = JWTKeyCollection()
        await keys.add(eddsa: EdDSA.PrivateKey(backing: key), kid: JWKIdentifier(string: kid))
        // PKCS #8 for an Ed25519 key: a fixed prefix (RFC 8410 §7) and the 32-byte seed.
        let der =
            [0x30, 0x2E, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]
            .map { UInt8($0) } + Array(key.rawRepresentation)
        let pem = "-----BEGIN PRIVATE KEY-----\n\(Data(der).base64EncodedString())\n-----END PRIVATE KEY-----\n"
        return TestSigningKey(
            kid: kid,
            alg: "EdDSA",
            publicJWK: [
                "kty": "OKP", "crv": "Ed25519", "kid": kid, "x": base64URL(key.publicKey.rawRepresentation),
            ],
            privatePEM: pem,
            keys: keys
        )
    }

    /// An HMAC "key" made of `secret` (for the key-confusion attack).
    static func hmac(kid: String, secret: [UInt8]) async -> TestSigningKey {
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256, kid: JWKIdentifier(string: kid))
        return TestSigningKey(kid: kid, alg: "HS256", publicJWK: [:], privatePEM: "", keys: keys)
    }

    /// The public JWK with `alg` and `use: sig`, as most IdPs publish it.
    var jwk: [String: String] {
        var jwk = self.publicJWK
        jwk["alg"] = self.alg
        jwk["use"] = "sig"
        return jwk
    }

    /// Signs `header.payload`, both given as raw JSON text (so tests can write duplicates).
    func mint(rawHeader: String, rawPayload: String) async throws -> String {
        let input = base64URL(Array(rawHeader.utf8)) + "." + base64URL(Array(rawPayload.utf8))
        let signature = try await self.keys.getKey(for: JWKIdentifier(string: self.kid)).sign(Array(input.utf8))
        return input + "." + base64URL(signature)
    }

    /// Signs `payload` under a header of `alg`, `kid`, `typ: at+jwt`, changed by `header`.
    func mint(payload: [String: Any], header edit: (inout [String: Any]) -> Void = { _ in }) async throws -> String {
        var header: [String: Any] = ["alg": self.alg, "kid": self.kid, "typ": "at+jwt"]
        edit(&header)
        let rawHeader = json(header)
        let rawPayload = json(payload)
        return try await self.mint(rawHeader: rawHeader, rawPayload: rawPayload)
    }
}

/// `{"keys":[…]}`.
func jwks(_ keys: [[String: String]]) -> String {
    json(["keys": keys])
}

/// The audience every test issuer is configured with.
let testAudience = "https://ingest.example.com"

/// An RFC 9068 access token's claims for `issuer`, issued 10 s before `now`, valid 5 minutes.
func accessTokenClaims(issuer: String, now: Date, client: String = "analytics-backend") -> [String: Any] {
    let seconds = Int(now.timeIntervalSince1970)
    return [
        "iss": issuer, "aud": testAudience, "client_id": client, "sub": client, "scope": "events:write profile",
        "iat": seconds - 10, "exp": seconds + 300, "jti": UUID().uuidString,
    ]
}

/// A test IdP (the HTTPS server), a clock, and the verifiers made from them, shut down at the
/// end of ``withJWTEnvironment(_:)``.
final class JWTTestEnvironment: Sendable {
    let server: JWKSTestServer
    let clock = TestClock()
    let directory: TemporaryDirectory
    private let verifiers = Mutex<[TokenVerifier]>([])

    init(server: JWKSTestServer, directory: TemporaryDirectory) {
        self.server = server
        self.directory = directory
    }

    /// The issuer identifier for the IdP's tenant at `tenant` (`https://localhost:<port>/<tenant>`).
    func issuer(_ tenant: String = "idp") -> String { "\(self.server.origin)/\(tenant)" }

    /// The JWKS path of `tenant`.
    func jwksPath(_ tenant: String = "idp") -> String { "/\(tenant)/jwks" }

    /// The configuration of `tenant`, fetching its JWKS by URL and trusting the test CA. The
    /// fetch limit is 30 s unless `policy` says otherwise: these suites start beside hundreds of
    /// others on two cores, where a TLS handshake and an answer can take longer than the 5 s
    /// default, and a fetch that times out would fail the test for a reason it does not test.
    func configuration(
        _ tenant: String = "idp",
        algorithms: [String] = ["RS256", "ES256", "EdDSA"],
        acceptedTypes: [String] = ["at+jwt", "application/at+jwt"],
        policy: JWKSPolicy = JWKSPolicy(timeout: .seconds(30))
    ) -> IssuerConfiguration {
        var jwks = policy
        jwks.caFile = self.server.caFile
        return IssuerConfiguration(
            issuer: self.issuer(tenant),
            jwksURI: self.server.origin + self.jwksPath(tenant),
            audiences: [testAudience],
            algorithms: algorithms,
            acceptedTypes: acceptedTypes,
            jwks: jwks
        )
    }

    /// Publishes `keys` as `tenant`'s JWKS.
    func publish(_ keys: [[String: String]], tenant: String = "idp", cacheControl: String? = nil) {
        self.server.set(self.jwksPath(tenant), body: jwks(keys), cacheControl: cacheControl)
    }

    /// JWKS requests `tenant`'s endpoint received.
    func fetches(_ tenant: String = "idp") -> Int { self.server.hits(self.jwksPath(tenant)) }

    func verifier(_ issuers: [IssuerConfiguration], cacheEntries: Int = 10_000) throws -> TokenVerifier {
        let verifier = try TokenVerifier(issuers: issuers, cacheEntries: cacheEntries, now: self.clock.function)
        self.verifiers.withLock { $0.append(verifier) }
        return verifier
    }

    func close() async {
        for verifier in self.verifiers.withLock({ $0 }) { try? await verifier.shutdown() }
        await self.server.stop()
    }
}

func withJWTEnvironment(_ body: (JWTTestEnvironment) async throws -> Void) async throws {
    let directory = try TemporaryDirectory()
    let environment = JWTTestEnvironment(server: try await JWKSTestServer.start(in: directory), directory: directory)
    do {
        try await body(environment)
    } catch {
        await environment.close()
        throw error
    }
    await environment.close()
}

/// Expects `token` to be refused with `reason` (401 unless `status` says otherwise).
func expectRefused(
    _ verifier: TokenVerifier,
    _ token: String,
    reason: String,
    status: Int = 401,
    sourceLocation: SourceLocation = #_sourceLocation
) async {
    switch await verifier.verifyResult(token) {
    case .success(let verified):
        Issue.record("accepted \(verified.principal), expected \(reason)", sourceLocation: sourceLocation)
    case .failure(let failure):
        #expect(failure.reason == reason, sourceLocation: sourceLocation)
        #expect(failure.status == status, sourceLocation: sourceLocation)
        #expect(!failure.detail.contains(token), sourceLocation: sourceLocation)
    }
}

/// Expects `token` to be accepted and returns what the verifier said.
@discardableResult
func expectAccepted(
    _ verifier: TokenVerifier,
    _ token: String,
    sourceLocation: SourceLocation = #_sourceLocation
) async throws -> VerifiedToken {
    switch await verifier.verifyResult(token) {
    case .success(let verified): return verified
    case .failure(let failure):
        Issue.record("refused: \(failure)", sourceLocation: sourceLocation)
        throw failure
    }
}
