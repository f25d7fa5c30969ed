import Foundation
import JWTKit
import Logging
import TestSupport
import Testing

@testable import Auth

/// A fresh server over a clients file and key in a temporary directory, with one client.
private struct Fixture {
    let directory: TemporaryDirectory
    let store: OAuthClientStore
    let server: AuthorizationServer
    let logs: CapturedLogs
    /// The secret of client `shop` (scopes `events:write events:read`).
    let secret: String

    static let issuer = "https://ingest.example.com"

    init(
        algorithm: AuthorizationServerSigningKey.Algorithm = .eddsa,
        audience: String? = nil,
        now: @escaping @Sendable () -> Date = { Date() }
    ) throws {
        self.directory = try TemporaryDirectory()
        self.store = try OAuthClientStore(path: self.directory.path + "/clients.json")
        self.secret = try self.store.add("shop", scopes: ["events:write", "events:read"]).secret
        self.logs = CapturedLogs()
        self.server = try AuthorizationServer(
            issuer: Self.issuer,
            audience: audience,
            signingKey: AuthorizationServerSigningKey(generating: algorithm),
            clients: self.store,
            logger: self.logs.logger,
            now: now
        )
    }

    func token(_ form: String, authorization: String? = nil) -> AuthorizationServer.Response {
        self.server.token(formBody: Array(form.utf8), authorization: authorization)
    }

    func basic(_ id: String = "shop", _ secret: String? = nil) -> String {
        "Basic " + Data("\(id):\(secret ?? self.secret)".utf8).base64EncodedString()
    }
}

private func header(_ response: AuthorizationServer.Response, _ name: String) -> String? {
    response.headers.first { $0.name.lowercased() == name.lowercased() }?.value
}

private func object(_ bytes: [UInt8]) throws -> [String: Any] {
    try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
}

/// The JWS part `index` (0: header, 1: payload) as a JSON object.
private func part(_ token: String, _ index: Int) throws -> [String: Any] {
    let segments = token.split(separator: ".", omittingEmptySubsequences: false)
    try #require(segments.count == 3)
    var base64 = segments[index].replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
    base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
    return try object(Array(try #require(Data(base64Encoded: base64))))
}

/// What a resource server reads from the token, verified by jwt-kit.
private struct AccessTokenPayload: JWTPayload {
    var iss: IssuerClaim
    var sub: SubjectClaim
    var client_id: String
    var aud: AudienceClaim
    var iat: IssuedAtClaim
    var nbf: NotBeforeClaim
    var exp: ExpirationClaim
    var jti: IDClaim
    var scope: String

    func verify(using algorithm: some JWTAlgorithm) async throws {
        try self.exp.verifyNotExpired()
        try self.nbf.verifyNotBefore()
    }
}

@Suite struct AuthorizationServerTokenTests {
    @Test(arguments: AuthorizationServerSigningKey.Algorithm.allCases)
    func issuedTokenVerifiesWithThePublishedJWKS(algorithm: AuthorizationServerSigningKey.Algorithm) async throws {
        let fixture = try Fixture(algorithm: algorithm, audience: "https://ingest.example.com/v1")
        let response = fixture.token("grant_type=client_credentials", authorization: fixture.basic())
        #expect(response.status == 200)
        #expect(response.error == nil)
        #expect(header(response, "Cache-Control") == "no-store")
        #expect(header(response, "Content-Type") == "application/json")
        let body = try object(response.body)
        #expect(body["token_type"] as? String == "Bearer")
        #expect(body["expires_in"] as? Int == 900)
        #expect(body["scope"] as? String == "events:write events:read")
        let token = try #require(body["access_token"] as? String)

        // A resource server knows only the JWKS document, as it would fetch it.
        let keys = JWTKeyCollection()
        try await keys.add(jwksJSON: String(decoding: fixture.server.jwksJSON(), as: UTF8.self))
        let payload = try await keys.verify(token, as: AccessTokenPayload.self)
        #expect(payload.iss.value == Fixture.issuer)
        #expect(payload.sub.value == "shop")
        #expect(payload.client_id == "shop")
        #expect(payload.aud.value == ["https://ingest.example.com/v1"])
        #expect(payload.scope == "events:write events:read")
        #expect(payload.exp.value.timeIntervalSince(payload.iat.value) == 900)
        #expect(payload.nbf.value == payload.iat.value)
        #expect(abs(payload.iat.value.timeIntervalSinceNow) < 60)
        #expect(!payload.jti.value.isEmpty)

        let jose = try part(token, 0)
        #expect(jose["typ"] as? String == "at+jwt")
        #expect(jose["alg"] as? String == algorithm.rawValue)
        #expect(jose["kid"] as? String == fixture.server.signingKey.keyID)
        #expect(Set(jose.keys) == ["typ", "alg", "kid"])
        let claims = try part(token, 1)
        #expect(Set(claims.keys) == ["iss", "sub", "client_id", "aud", "iat", "nbf", "exp", "jti", "scope"])
    }

    @Test func eachTokenHasItsOwnID() throws {
        let fixture = try Fixture()
        let first = try object(fixture.token("grant_type=client_credentials", authorization: fixture.basic()).body)
        let second = try object(fixture.token("grant_type=client_credentials", authorization: fixture.basic()).body)
        let firstID = try part(try #require(first["access_token"] as? String), 1)["jti"] as? String
        let secondID = try part(try #require(second["access_token"] as? String), 1)["jti"] as? String
        #expect(firstID != nil && firstID != secondID)
    }

    @Test func audienceDefaultsToTheIssuerAndTheClockIsTheServers() throws {
        let fixture = try Fixture(now: { Date(timeIntervalSince1970: 1_800_000_000.7) })
        let body = try object(fixture.token("grant_type=client_credentials", authorization: fixture.basic()).body)
        let claims = try part(try #require(body["access_token"] as? String), 1)
        #expect(claims["aud"] as? String == Fixture.issuer)
        #expect(claims["iss"] as? String == Fixture.issuer)
        #expect(claims["iat"] as? Int == 1_800_000_000)
        #expect(claims["exp"] as? Int == 1_800_000_900)
    }

    @Test func clientSecretPostIsAccepted() throws {
        let fixture = try Fixture()
        let secret = fixture.secret.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""
        let response = fixture.token("grant_type=client_credentials&client_id=shop&client_secret=\(secret)")
        #expect(response.status == 200)
    }

    @Test func basicCredentialsAreFormURLDecoded() throws {
        // RFC 6749 §2.3.1: the id and secret are form-urlencoded before Base64.
        let fixture = try Fixture()
        let added = try fixture.store.add("a.b_c-d", scopes: ["events:write"])
        let encodedSecret = added.secret.replacingOccurrences(of: "_", with: "%5F")
        let response = fixture.token(
            "grant_type=client_credentials",
            authorization: fixture.basic("a.b_c-d", encodedSecret)
        )
        #expect(response.status == 200)
    }

    @Test func wrongSecretIsInvalidClientWithAChallenge() throws {
        let fixture = try Fixture()
        let wrong = OAuthClient.generateSecret()
        let response = fixture.token("grant_type=client_credentials", authorization: fixture.basic("shop", wrong))
        #expect(response.status == 401)
        #expect(response.error == .invalidClient)
        #expect(header(response, "WWW-Authenticate") == "Basic realm=\"sluice\"")
        #expect(header(response, "Cache-Control") == "no-store")
        let body = try object(response.body)
        #expect(body["error"] as? String == "invalid_client")
        #expect(body["access_token"] == nil)
        let text = String(decoding: response.body, as: UTF8.self)
        #expect(!text.contains(wrong) && !text.contains(fixture.secret))
    }

    @Test func unknownClientIsInvalidClient() throws {
        let fixture = try Fixture()
        let response = fixture.token("grant_type=client_credentials", authorization: fixture.basic("nobody"))
        #expect(response.status == 401)
        #expect(response.error == .invalidClient)
        #expect(header(response, "WWW-Authenticate") == "Basic realm=\"sluice\"")
    }

    @Test func noClientAuthenticationIsInvalidClient() throws {
        let fixture = try Fixture()
        let response = fixture.token("grant_type=client_credentials&client_id=shop")
        #expect(response.status == 401)
        #expect(response.error == .invalidClient)
    }

    @Test func malformedBasicHeaderIsInvalidClient() throws {
        let fixture = try Fixture()
        for value in ["Basic !!!", "Basic " + Data("no-colon".utf8).base64EncodedString(), "Bearer abc"] {
            let response = fixture.token("grant_type=client_credentials", authorization: value)
            #expect(response.error == .invalidClient, "\(value)")
        }
    }

    @Test func privateKeyJWTIsRefusedAsAnUnsupportedMethod() throws {
        let fixture = try Fixture()
        let response = fixture.token(
            "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=x.y.z"
        )
        #expect(response.error == .invalidClient)
    }

    @Test func otherGrantTypesAreUnsupported() throws {
        let fixture = try Fixture()
        for grant in [
            "password", "authorization_code", "refresh_token", "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer",
        ] {
            let response = fixture.token("grant_type=\(grant)", authorization: fixture.basic())
            #expect(response.status == 400, "\(grant)")
            #expect(response.error == .unsupportedGrantType, "\(grant)")
            #expect(try object(response.body)["error"] as? String == "unsupported_grant_type")
        }
    }

    @Test func malformedRequestsAreInvalidRequest() throws {
        let fixture = try Fixture()
        let secret = fixture.secret
        let cases: [(String, String?)] = [
            ("scope=events%3Awrite", fixture.basic()),  // no grant_type
            ("grant_type=", fixture.basic()),  // empty counts as absent (RFC 6749 §3.1)
            ("grant_type=client_credentials&grant_type=client_credentials", fixture.basic()),  // repeated
            ("grant_type=client_credentials&scope=%ZZ", fixture.basic()),  // bad escape
            ("grant_type=client_credentials&scope=%FF", fixture.basic()),  // not UTF-8
            ("grant_type=client_credentials&client_secret=\(secret)", fixture.basic()),  // two methods
            ("grant_type=client_credentials&client_id=other", fixture.basic()),  // two ids
        ]
        for (form, authorization) in cases {
            let response = fixture.token(form, authorization: authorization)
            #expect(response.status == 400, "\(form)")
            #expect(response.error == .invalidRequest, "\(form)")
            #expect(header(response, "Cache-Control") == "no-store")
        }
    }

    @Test func aRequestedScopeMustBeOneOfTheClients() throws {
        let fixture = try Fixture()
        let outside = fixture.token(
            "grant_type=client_credentials&scope=events%3Aadmin",
            authorization: fixture.basic()
        )
        #expect(outside.status == 400)
        #expect(outside.error == .invalidScope)
        #expect(try object(outside.body)["error"] as? String == "invalid_scope")

        let mixed = fixture.token(
            "grant_type=client_credentials&scope=events%3Awrite+events%3Aadmin",
            authorization: fixture.basic()
        )
        #expect(mixed.error == .invalidScope)

        let subset = fixture.token("grant_type=client_credentials&scope=events%3Awrite", authorization: fixture.basic())
        #expect(subset.status == 200)
        #expect(try object(subset.body)["scope"] as? String == "events:write")
    }

    @Test func aDisabledClientIsRefusedOnceAuthenticated() throws {
        let fixture = try Fixture()
        try fixture.store.disable("shop")
        let response = fixture.token("grant_type=client_credentials", authorization: fixture.basic())
        #expect(response.status == 400)
        #expect(response.error == .unauthorizedClient)
        #expect(try object(response.body)["error"] as? String == "unauthorized_client")
        // Without the secret, a disabled client looks like any failed authentication.
        let guessed = fixture.token(
            "grant_type=client_credentials",
            authorization: fixture.basic("shop", OAuthClient.generateSecret())
        )
        #expect(guessed.error == .invalidClient)
    }

    @Test func aRemovedClientGetsNoToken() throws {
        let fixture = try Fixture()
        try fixture.store.remove("shop")
        #expect(fixture.token("grant_type=client_credentials", authorization: fixture.basic()).error == .invalidClient)
    }

    @Test func logsNameTheClientAndReasonButNeverTheSecret() throws {
        let fixture = try Fixture()
        _ = fixture.token("grant_type=client_credentials", authorization: fixture.basic())
        let wrong = OAuthClient.generateSecret()
        _ = fixture.token("grant_type=client_credentials", authorization: fixture.basic("shop", wrong))
        // A secret pasted as the client id is not logged either.
        _ = fixture.token("grant_type=client_credentials", authorization: fixture.basic(wrong, wrong))

        let issued = fixture.logs.entries.filter { $0.message == "oauth.token_issued" }
        #expect(issued.count == 1)
        #expect(issued.first?.metadata["oauth.client_id"] == "shop")
        let refused = fixture.logs.entries.filter { $0.message == "oauth.token_refused" }
        #expect(refused.map { $0.metadata["event.reason"]?.description } == ["bad_secret", "unknown_client"])
        #expect(refused.first?.metadata["oauth.client_id"] == "shop")
        #expect(refused.last?.metadata["oauth.client_id"] == nil)
        for entry in fixture.logs.entries {
            let text = entry.message + " " + entry.metadata.description
            #expect(!text.contains(fixture.secret) && !text.contains(wrong) && !text.contains("eyJ"))
        }
    }

    @Test func issuerMustBeAnHTTPURLWithoutAPath() throws {
        let store = try OAuthClientStore(path: try TemporaryDirectory().path + "/clients.json")
        for bad in ["ingest.example.com", "ftp://x", "https://x/realms/a", "https://x?a=b", "https://"] {
            #expect(throws: AuthorizationServerError.self, "\(bad)") {
                try AuthorizationServer(
                    issuer: bad,
                    signingKey: AuthorizationServerSigningKey(generating: .eddsa),
                    clients: store,
                    logger: CapturedLogs().logger
                )
            }
        }
        let server = try AuthorizationServer(
            issuer: "http://127.0.0.1:8080/",
            signingKey: AuthorizationServerSigningKey(generating: .eddsa),
            clients: store,
            logger: CapturedLogs().logger
        )
        #expect(server.issuer == "http://127.0.0.1:8080")
        #expect(server.audience == "http://127.0.0.1:8080")
        #expect(server.tokenEndpoint == "http://127.0.0.1:8080/oauth/token")
    }
}

@Suite struct AuthorizationServerDocumentTests {
    @Test func metadataFollowsRFC8414() throws {
        let fixture = try Fixture()
        let metadata = try object(fixture.server.metadataJSON())
        #expect(metadata["issuer"] as? String == Fixture.issuer)
        #expect(metadata["token_endpoint"] as? String == Fixture.issuer + "/oauth/token")
        #expect(metadata["jwks_uri"] as? String == Fixture.issuer + "/.well-known/jwks.json")
        #expect(metadata["grant_types_supported"] as? [String] == ["client_credentials"])
        #expect(
            metadata["token_endpoint_auth_methods_supported"] as? [String] == [
                "client_secret_basic", "client_secret_post",
            ]
        )
        #expect(metadata["scopes_supported"] as? [String] == ["events:read", "events:write"])
        #expect(metadata["response_types_supported"] as? [String] == [])
    }

    @Test(arguments: AuthorizationServerSigningKey.Algorithm.allCases)
    func jwksPublishesOnlyThePublicKey(algorithm: AuthorizationServerSigningKey.Algorithm) throws {
        let fixture = try Fixture(algorithm: algorithm)
        let jwks = try object(fixture.server.jwksJSON())
        let keys = try #require(jwks["keys"] as? [[String: Any]])
        #expect(keys.count == 1)
        let key = try #require(keys.first)
        #expect(key["kid"] as? String == fixture.server.signingKey.keyID)
        #expect(key["alg"] as? String == algorithm.rawValue)
        #expect(key["use"] as? String == "sig")
        #expect(key["d"] == nil)
        switch algorithm {
        case .eddsa: #expect(key["kty"] as? String == "OKP" && key["crv"] as? String == "Ed25519")
        case .es256: #expect(key["kty"] as? String == "EC" && key["crv"] as? String == "P-256" && key["y"] != nil)
        }
    }

    @Test func keyIDIsTheRFC7638Thumbprint() throws {
        // RFC 8037 Appendix A.1 and A.3: this Ed25519 key's thumbprint.
        let seed = try #require(Data(base64Encoded: "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="))
        let der =
            Data([0x30, 0x2E, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20])
            + seed
        let pem = "-----BEGIN PRIVATE KEY-----\n\(der.base64EncodedString())\n-----END PRIVATE KEY-----\n"
        let key = try AuthorizationServerSigningKey(pem: pem)
        #expect(key.algorithm == .eddsa)
        #expect(key.keyID == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k")
        #expect(key.publicJWK["x"] == "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
    }
}

@Suite struct AuthorizationServerFileTests {
    private func mode(_ path: String) throws -> Int {
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        return try #require(attributes[.posixPermissions] as? Int)
    }

    @Test(arguments: AuthorizationServerSigningKey.Algorithm.allCases)
    func signingKeyIsCreatedPrivateAndReusedOnRestart(algorithm: AuthorizationServerSigningKey.Algorithm) throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/signing.key"
        let first = try AuthorizationServerSigningKey.loadOrCreate(path: path, algorithm: algorithm)
        #expect(try self.mode(path) == 0o600)
        #expect(first.algorithm == algorithm)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.hasPrefix("-----BEGIN PRIVATE KEY-----"))
        // No temporary file is left beside it.
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["signing.key"])

        // A restart, asked for the other algorithm, keeps the key on disk.
        let other: AuthorizationServerSigningKey.Algorithm = algorithm == .eddsa ? .es256 : .eddsa
        let second = try AuthorizationServerSigningKey.loadOrCreate(path: path, algorithm: other)
        #expect(second.keyID == first.keyID)
        #expect(second.algorithm == algorithm)
    }

    @Test func serverSignsWithTheKeyFromItsFile() throws {
        let directory = try TemporaryDirectory()
        var configuration = AuthorizationServerConfiguration(
            issuer: "http://127.0.0.1:8080",
            signingKeyFile: directory.path + "/signing.key",
            clientsFile: directory.path + "/clients.json"
        )
        configuration.tokenTTL = .seconds(60)
        let first = try AuthorizationServer(configuration: configuration, logger: CapturedLogs().logger)
        let second = try AuthorizationServer(configuration: configuration, logger: CapturedLogs().logger)
        #expect(first.signingKey.keyID == second.signingKey.keyID)
        #expect(first.jwksJSON() == second.jwksJSON())
        #expect(first.tokenTTL == .seconds(60))
    }

    @Test func gatewaysStartingTogetherShareOneKey() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/signing.key"
        let keyIDs = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<8 {
                group.addTask { try await offPool { try AuthorizationServerSigningKey.loadOrCreate(path: path).keyID } }
            }
            return try await group.reduce(into: Set<String>()) { $0.insert($1) }
        }
        #expect(keyIDs.count == 1)
        #expect(try AuthorizationServerSigningKey.load(path: path)?.keyID == keyIDs.first)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["signing.key"])
    }

    @Test func concurrentEditsOfTheClientsFileAreAllKept() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/clients.json"
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<8 {
                // Separate stores, as separate `sluice oauth clients add` processes would have.
                group.addTask {
                    try await offPool { _ = try OAuthClientStore(path: path).add("c\(index)", scopes: ["s"]) }
                }
            }
            try await group.waitForAll()
        }
        #expect(Set(try OAuthClientStore(path: path).clients().map(\.clientID)) == Set((0..<8).map { "c\($0)" }))
    }

    @Test func groupReadableKeyIsRefused() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/signing.key"
        _ = try AuthorizationServerSigningKey.loadOrCreate(path: path)
        for mode in [0o640, 0o604, 0o620] {
            #expect(chmod(path, mode_t(mode)) == 0)
            let error = #expect(throws: AuthorizationServerError.self) {
                try AuthorizationServerSigningKey.loadOrCreate(path: path)
            }
            #expect(error?.code == .insecureKeyFile)
            #expect(error?.description.contains("chmod 600 \(path)") == true)
        }
    }

    @Test func unparsableKeyIsRefusedAndNotReplaced() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/signing.key"
        for content in ["not a key\n", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"] {
            #expect(
                FileManager.default.createFile(
                    atPath: path,
                    contents: Data(content.utf8),
                    attributes: [.posixPermissions: 0o600]
                )
            )
            let error = #expect(throws: AuthorizationServerError.self) {
                try AuthorizationServerSigningKey.loadOrCreate(path: path)
            }
            #expect(error?.code == .unreadableKey)
            #expect(try String(contentsOfFile: path, encoding: .utf8) == content)
            try FileManager.default.removeItem(atPath: path)
        }
    }

    @Test func clientsFileKeepsOnlyTheDigestAndIsPrivate() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/clients.json"
        let store = try OAuthClientStore(path: path)
        let (client, secret) = try store.add("shop", scopes: ["events:write", "events:write"])
        #expect(secret.hasPrefix("slc_"))
        // 32 random bytes: 43 base64url characters, 256 bits.
        #expect(secret.utf8.count == 4 + 43)
        #expect(client.scopes == ["events:write"])
        #expect(try self.mode(path) == 0o600)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(!text.contains(secret))
        let document = try object(Array(text.utf8))
        let stored = try #require((document["clients"] as? [[String: Any]])?.first)
        #expect(stored["client_id"] as? String == "shop")
        #expect(
            stored["secret_sha256"] as? String == AuthorizationServerBytes.hex(OAuthClient.digest(ofSecret: secret))
        )
        #expect(stored["scopes"] as? [String] == ["events:write"])
        #expect(stored["created_at"] is String)
        #expect(stored["disabled_at"] == nil)

        // Another process sees the same clients.
        #expect(try OAuthClientStore(path: path).clients() == [client])
        #expect(throws: AuthorizationServerError.self) { try store.add("shop", scopes: []) }
        #expect(throws: AuthorizationServerError.self) { try store.add("bad name", scopes: []) }
        #expect(throws: AuthorizationServerError.self) { try store.add("x", scopes: ["has\"quote"]) }
        #expect(throws: AuthorizationServerError.self) { try store.remove("nobody") }
        #expect(OAuthClient.generateSecret() != OAuthClient.generateSecret())
    }

    @Test func aRunningServerSeesClientsAddedByAnotherProcess() throws {
        let fixture = try Fixture()
        // The CLI opens its own store on the same file.
        let other = try OAuthClientStore(path: fixture.store.path)
        let added = try other.add("late", scopes: ["events:write"])
        let response = fixture.token(
            "grant_type=client_credentials",
            authorization: fixture.basic("late", added.secret)
        )
        #expect(response.status == 200)
        try other.remove("late")
        #expect(
            fixture.token("grant_type=client_credentials", authorization: fixture.basic("late", added.secret)).error
                == .invalidClient
        )
    }

    @Test func aBrokenClientsFileKeepsTheLastGoodClients() throws {
        let fixture = try Fixture()
        #expect(fixture.token("grant_type=client_credentials", authorization: fixture.basic()).status == 200)
        try Data("{ not json".utf8).write(to: URL(fileURLWithPath: fixture.store.path))
        #expect(fixture.token("grant_type=client_credentials", authorization: fixture.basic()).status == 200)
        #expect(fixture.token("grant_type=client_credentials", authorization: fixture.basic()).status == 200)
        // Logged once for that version of the file, not once per request.
        #expect(fixture.logs.count("oauth.clients_unreadable") == 1)
        #expect(throws: AuthorizationServerError.self) { try OAuthClientStore(path: fixture.store.path) }
    }
}

/// Runs a tool to completion and returns its exit status and output.
private func runTool(
    _ executable: String,
    _ arguments: [String],
    input: String? = nil
) async throws -> (status: Int32, output: String, errors: String) {
    let result = try await ChildProcess.run(executable, arguments, input: input)
    return (result.status, result.standardOutput, result.standardError)
}

/// Keys and tokens checked by other implementations: OpenSSL for the PEM files, PyJWT for the
/// tokens (what a resource server in another language would do).
@Suite struct AuthorizationServerInteropTests {
    static let openssl = "/usr/bin/openssl"

    /// The public key OpenSSL derives from a private key file, as raw bytes (the end of the SPKI).
    private func opensslPublicKey(_ path: String, count: Int) async throws -> [UInt8] {
        let directory = (path as NSString).deletingLastPathComponent
        let der = directory + "/public.der"
        let result = try await runTool(Self.openssl, ["pkey", "-in", path, "-pubout", "-outform", "DER", "-out", der])
        try #require(result.status == 0, "\(result.errors)")
        return Array(try Data(contentsOf: URL(fileURLWithPath: der)).suffix(count))
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: openssl)))
    func keysMadeByOpenSSLAreReadAndOursAreReadByOpenSSL() async throws {
        let directory = try TemporaryDirectory()
        let made: [([String], AuthorizationServerSigningKey.Algorithm)] = [
            (["genpkey", "-algorithm", "ed25519"], .eddsa),
            (["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"], .es256),  // PKCS#8
            (["ecparam", "-name", "prime256v1", "-genkey", "-noout"], .es256),  // SEC 1
        ]
        for (index, (command, algorithm)) in made.enumerated() {
            let path = directory.path + "/openssl-\(index).key"
            let result = try await runTool(Self.openssl, command + ["-out", path])
            try #require(result.status == 0, "\(result.errors)")
            #expect(chmod(path, 0o600) == 0)
            let key = try #require(try AuthorizationServerSigningKey.load(path: path))
            #expect(key.algorithm == algorithm)
            try await self.expectSamePublicKey(key, path: path)
        }
        for algorithm in AuthorizationServerSigningKey.Algorithm.allCases {
            let path = directory.path + "/ours-\(algorithm.rawValue).key"
            let key = try AuthorizationServerSigningKey.loadOrCreate(path: path, algorithm: algorithm)
            try await self.expectSamePublicKey(key, path: path)
        }
    }

    private func expectSamePublicKey(_ key: AuthorizationServerSigningKey, path: String) async throws {
        let jwk = key.publicJWK
        switch key.algorithm {
        case .eddsa:
            #expect(try await self.opensslPublicKey(path, count: 32) == Base64URLForTests.decode(jwk["x"] ?? ""))
        case .es256:
            let point = try await self.opensslPublicKey(path, count: 65)
            #expect(point.first == 0x04)
            #expect(Array(point[1..<33]) == Base64URLForTests.decode(jwk["x"] ?? ""))
            #expect(Array(point[33..<65]) == Base64URLForTests.decode(jwk["y"] ?? ""))
        }
    }

    /// PyJWT is installed by scripts/setup for cross-implementation checks.
    @Test(arguments: AuthorizationServerSigningKey.Algorithm.allCases)
    func pyJWTVerifiesTheIssuedToken(algorithm: AuthorizationServerSigningKey.Algorithm) async throws {
        let fixture = try Fixture(algorithm: algorithm)
        let body = try object(fixture.token("grant_type=client_credentials", authorization: fixture.basic()).body)
        let token = try #require(body["access_token"] as? String)
        let script = """
            import json, sys, jwt
            data = json.load(sys.stdin)
            header = jwt.get_unverified_header(data["token"])
            key = jwt.PyJWK(data["jwks"]["keys"][0]).key
            claims = jwt.decode(data["token"], key=key, algorithms=[header["alg"]], audience=data["aud"],
                                issuer=data["iss"], options={"require": ["exp", "iat", "nbf", "sub", "jti"]})
            print(json.dumps({"typ": header["typ"], "client_id": claims["client_id"]}))
            """
        let input = try JSONSerialization.data(withJSONObject: [
            "token": token, "aud": Fixture.issuer, "iss": Fixture.issuer,
            "jwks": try JSONSerialization.jsonObject(with: Data(fixture.server.jwksJSON())),
        ])
        let result = try await runTool(
            "/usr/bin/env",
            ["python3", "-c", script],
            input: String(decoding: input, as: UTF8.self)
        )
        try #require(result.status == 0, "PyJWT refused the token: \(result.errors)")
        let verified = try object(Array(result.output.utf8))
        #expect(verified["typ"] as? String == "at+jwt")
        #expect(verified["client_id"] as? String == "shop")
    }
}

private enum Base64URLForTests {
    static func decode(_ text: String) -> [UInt8] {
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
        return Data(base64Encoded: base64).map(Array.init) ?? []
    }
}
