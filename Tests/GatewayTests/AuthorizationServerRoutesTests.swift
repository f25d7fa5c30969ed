import Auth
import Crypto
import Foundation
import Gateway
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Testing

/// The built-in authorization server mounted on a router, with client `shop` (`events:write`).
private struct AuthorizationServerApp {
    let directory: TemporaryDirectory
    let server: AuthorizationServer
    let secret: String

    static let issuer = "https://ingest.example.com"

    init() throws {
        self.directory = try TemporaryDirectory()
        var configuration = AuthorizationServerConfiguration(
            issuer: Self.issuer,
            signingKeyFile: self.directory.path + "/signing.key",
            clientsFile: self.directory.path + "/clients.json"
        )
        configuration.signingAlgorithm = .eddsa
        self.server = try AuthorizationServer(configuration: configuration, logger: quietLogger)
        self.secret = try self.server.clients.add("shop", scopes: ["events:write"]).secret
    }

    var basic: String { "Basic " + Data("shop:\(self.secret)".utf8).base64EncodedString() }

    func application() -> some ApplicationProtocol {
        let router = Router()
        addAuthorizationServerRoutes(to: router, server: self.server)
        return Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
    }
}

private func jsonObject(_ response: TestResponse) throws -> [String: Any] {
    try #require(try JSONSerialization.jsonObject(with: Data(response.body.readableBytesView)) as? [String: Any])
}

private let form: [HTTPField.Name: String] = [.contentType: "application/x-www-form-urlencoded"]

@Suite struct AuthorizationServerRoutesTests {
    @Test func tokenEndpointAnswersAFormPostWithANoStoreToken() async throws {
        let fixture = try AuthorizationServerApp()
        try await fixture.application().test(.router) { client in
            let response = try await client.execute(
                uri: "/oauth/token",
                method: .post,
                headers: headers([
                    .contentType: "application/x-www-form-urlencoded; charset=utf-8", .authorization: fixture.basic,
                ]),
                body: buffer("grant_type=client_credentials&scope=events%3Awrite")
            )
            #expect(response.status == .ok)
            #expect(response.headers[.contentType] == "application/json")
            #expect(response.headers[.cacheControl] == "no-store")
            let body = try jsonObject(response)
            #expect(body["token_type"] as? String == "Bearer")
            #expect(body["expires_in"] as? Int == 900)
            #expect(body["scope"] as? String == "events:write")
            let token = try #require(body["access_token"] as? String)

            // A resource server's path: metadata → jwks_uri → verify.
            let metadata = try jsonObject(
                try await client.execute(uri: "/.well-known/oauth-authorization-server", method: .get)
            )
            let jwksURI = try #require(metadata["jwks_uri"] as? String)
            let jwksPath = try #require(URLComponents(string: jwksURI)?.path)
            let jwks = try await client.execute(uri: jwksPath, method: .get)
            #expect(jwks.status == .ok)
            let verified = try verifyEdDSA(token, jwks: Array(jwks.body.readableBytesView))
            #expect(verified["client_id"] as? String == "shop")
            #expect(verified["iss"] as? String == AuthorizationServerApp.issuer)
        }
    }

    @Test func wrongSecretIsA401WithAChallengeInOAuthShape() async throws {
        let fixture = try AuthorizationServerApp()
        try await fixture.application().test(.router) { client in
            let response = try await client.execute(
                uri: "/oauth/token",
                method: .post,
                headers: headers([
                    .contentType: "application/x-www-form-urlencoded",
                    .authorization: "Basic " + Data("shop:slc_wrong".utf8).base64EncodedString(),
                ]),
                body: buffer("grant_type=client_credentials")
            )
            #expect(response.status == .unauthorized)
            #expect(response.headers[.wwwAuthenticate] == "Basic realm=\"sluice\"")
            #expect(response.headers[.contentType] == "application/json")
            #expect(response.headers[.cacheControl] == "no-store")
            #expect(try jsonObject(response)["error"] as? String == "invalid_client")
        }
    }

    @Test func clientSecretPostWorksOverHTTP() async throws {
        let fixture = try AuthorizationServerApp()
        try await fixture.application().test(.router) { client in
            let response = try await client.execute(
                uri: "/oauth/token",
                method: .post,
                headers: headers(form),
                body: buffer("grant_type=client_credentials&client_id=shop&client_secret=\(fixture.secret)")
            )
            #expect(response.status == .ok)
        }
    }

    @Test func onlyFormBodiesUpTo16KiBAreRead() async throws {
        let fixture = try AuthorizationServerApp()
        try await fixture.application().test(.router) { client in
            let json = try await client.execute(
                uri: "/oauth/token",
                method: .post,
                headers: headers([.contentType: "application/json", .authorization: fixture.basic]),
                body: buffer(#"{"grant_type":"client_credentials"}"#)
            )
            #expect(json.status == .badRequest)
            #expect(try jsonObject(json)["error"] as? String == "invalid_request")
            #expect(json.headers[.cacheControl] == "no-store")

            let padding = String(repeating: "a", count: 16 * 1024)
            let large = try await client.execute(
                uri: "/oauth/token",
                method: .post,
                headers: headers([.contentType: "application/x-www-form-urlencoded", .authorization: fixture.basic]),
                body: buffer("grant_type=client_credentials&pad=\(padding)")
            )
            #expect(large.status == .badRequest)
            #expect(try jsonObject(large)["error"] as? String == "invalid_request")
        }
    }

    @Test func metadataPointsUnderTheIssuer() async throws {
        let fixture = try AuthorizationServerApp()
        try await fixture.application().test(.router) { client in
            let response = try await client.execute(uri: "/.well-known/oauth-authorization-server", method: .get)
            #expect(response.status == .ok)
            #expect(response.headers[.contentType] == "application/json")
            let metadata = try jsonObject(response)
            let issuer = AuthorizationServerApp.issuer
            #expect(metadata["issuer"] as? String == issuer)
            #expect(metadata["token_endpoint"] as? String == issuer + "/oauth/token")
            #expect(metadata["jwks_uri"] as? String == issuer + "/.well-known/jwks.json")
            #expect(metadata["grant_types_supported"] as? [String] == ["client_credentials"])
        }
    }

    @Test func jwksHoldsThePublicKeyOnly() async throws {
        let fixture = try AuthorizationServerApp()
        try await fixture.application().test(.router) { client in
            let response = try await client.execute(uri: "/.well-known/jwks.json", method: .get)
            #expect(response.status == .ok)
            let keys = try #require(try jsonObject(response)["keys"] as? [[String: Any]])
            #expect(keys.count == 1)
            #expect(keys.first?["kid"] as? String == fixture.server.signingKey.keyID)
            #expect(keys.first?["alg"] as? String == "EdDSA")
            #expect(keys.first?["use"] as? String == "sig")
            #expect(keys.first?["d"] == nil)
        }
    }
}

/// `sluice oauth clients add` and `sluice oauth token` against a server on a real port.
@Suite(.timeLimit(.minutes(2))) struct AuthorizationServerCLITests {
    @Test func clientsAddThenTokenThroughARunningServer() async throws {
        let fixture = try AuthorizationServerApp()
        let clientsFile = fixture.server.clients.path
        let add = try SluiceProcess(["oauth", "clients", "add", "cli-client", "--clients-file", clientsFile, "--json"])
        #expect(try await finish(add, [.standardOutput, .standardError]) == 0)
        #expect(add.standardError.contains("will not be shown again"))
        let added = try #require(
            try JSONSerialization.jsonObject(with: Data(add.standardOutput.utf8)) as? [String: Any]
        )
        let secret = try #require(added["client_secret"] as? String)
        #expect(secret.hasPrefix("slc_"))
        let secretFile = fixture.directory.path + "/cli-client.secret"
        try Data((secret + "\n").utf8).write(to: URL(fileURLWithPath: secretFile))
        let wrongFile = fixture.directory.path + "/wrong.secret"
        try Data("slc_wrong".utf8).write(to: URL(fileURLWithPath: wrongFile))

        let list = try SluiceProcess(["oauth", "clients", "ls", "--clients-file", clientsFile])
        #expect(try await finish(list, [.standardOutput]) == 0)
        #expect(list.standardOutput.contains("cli-client"))
        #expect(!list.standardOutput.contains(secret))

        try await fixture.application().test(.live) { client in
            let port = try #require(client.port)
            let url = "http://127.0.0.1:\(port)"
            let token = try SluiceProcess([
                "oauth", "token", "--url", url, "--client", "cli-client", "--secret-file", secretFile,
            ])
            #expect(try await finish(token, [.standardOutput]) == 0, "\(token.standardError)")
            let accessToken = token.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
            let claims = try verifyEdDSA(accessToken, jwks: fixture.server.jwksJSON())
            #expect(claims["client_id"] as? String == "cli-client")
            #expect(claims["scope"] as? String == "events:write")

            let refused = try SluiceProcess([
                "oauth", "token", "--url", url + "/oauth/token", "--client", "cli-client", "--secret-file", wrongFile,
            ])
            #expect(try await finish(refused, [.standardError]) == 1)
            #expect(refused.standardError.contains("invalid_client"))
            #expect(refused.standardOutput.isEmpty)
        }

        let remove = try SluiceProcess(["oauth", "clients", "remove", "cli-client", "--clients-file", clientsFile])
        #expect(try await finish(remove, [.standardOutput]) == 0)
        #expect(try fixture.server.clients.client("cli-client") == nil)
        let again = try SluiceProcess(["oauth", "clients", "remove", "cli-client", "--clients-file", clientsFile])
        #expect(try await finish(again, [.standardError]) == 1)
    }

    @Test func clientsFileComesFromTheConfigFile() async throws {
        let directory = try TemporaryDirectory()
        let config = directory.path + "/sluice.yaml"
        let clientsFile = directory.path + "/from-config.json"
        try Data(
            """
            auth:
              oauth:
                builtin_server:
                  clients_file: \(clientsFile)
            """.utf8
        ).write(to: URL(fileURLWithPath: config))
        let add = try SluiceProcess(["oauth", "clients", "add", "shop", "--scope", "events:write", "--config", config])
        #expect(try await add.waitForExit() == 0)
        #expect(try OAuthClientStore(path: clientsFile).client("shop")?.scopes == ["events:write"])
    }
}

/// SASL/OAUTHBEARER as a Sluice role uses it: the forwarder's Kafka client gets its token from
/// the built-in server's token endpoint through the refresh Sluice drives (Debian's librdkafka
/// has no OIDC of its own). The mock cluster speaks no SASL, so what is shown is the refresh:
/// the token set for the client's principal, and a refused secret reported without the secret.
@Suite(.timeLimit(.minutes(2))) struct KafkaOAuthBearerRefreshTests {
    @Test func theForwardersKafkaClientGetsItsTokenFromTheBuiltInServerAndReportsARefusal() async throws {
        let fixture = try AuthorizationServerApp()
        try await fixture.application().test(.live) { client in
            let port = try #require(client.port)
            for (secret, expectation) in [
                (fixture.secret, "kafka.oauthbearer_token_set"),
                ("slc_not-the-secret", "kafka.oauthbearer_refresh_failed"),
            ] {
                let secretFile = fixture.directory.path + "/kafka-client.secret"
                try? FileManager.default.removeItem(atPath: secretFile)
                try Data((secret + "\n").utf8).write(to: URL(fileURLWithPath: secretFile))
                try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: secretFile)
                let config = fixture.directory.path + "/sluice.yaml"
                try Data(
                    """
                    kafka:
                      bootstrap_servers: 127.0.0.1:9
                      security:
                        protocol: sasl_plaintext
                        allow_insecure: true   # the test's token endpoint and broker are plain http/tcp
                        sasl:
                          mechanism: OAUTHBEARER
                          oauthbearer:
                            token_endpoint: http://127.0.0.1:\(port)/oauth/token
                            client_id: shop
                            client_secret_file: \(secretFile)
                    """.utf8
                ).write(to: URL(fileURLWithPath: config))
                let forwarder = try SluiceProcess([
                    "forwarder", "--config", config, "--wal-dir", fixture.directory.path + "/wal",
                ])
                let line = try await forwarder.line(containing: expectation, timeout: .seconds(30))
                if secret == fixture.secret {
                    #expect(line.contains("\"kafka.principal\":\"shop\""), "\(line)")
                } else {
                    #expect(line.contains("invalid_client"), "\(line)")
                }
                _ = try await forwarder.stop()
                #expect(!forwarder.standardOutput.contains(secret))
                #expect(!forwarder.standardError.contains(secret))
            }
        }
    }
}

/// Waits for the exit, then for each named stream's last line: a pipe's final bytes can be
/// read after the exit has been seen.
private func finish(_ process: SluiceProcess, _ streams: [SluiceProcess.Stream]) async throws -> Int32 {
    let status = try await process.waitForExit()
    try await waitUntil(timeout: .seconds(10)) {
        streams.allSatisfy { ($0 == .standardOutput ? process.standardOutput : process.standardError).hasSuffix("\n") }
    }
    return status
}

private func base64URLDecode(_ text: some StringProtocol) throws -> Data {
    var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
    base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
    return try #require(Data(base64Encoded: base64))
}

/// Checks an EdDSA JWT against a JWKS with swift-crypto alone (a second implementation beside
/// the server's) and returns its claims.
private func verifyEdDSA(_ token: String, jwks: [UInt8]) throws -> [String: Any] {
    let parts = token.split(separator: ".", omittingEmptySubsequences: false)
    try #require(parts.count == 3)
    let header = try #require(try JSONSerialization.jsonObject(with: try base64URLDecode(parts[0])) as? [String: Any])
    #expect(header["typ"] as? String == "at+jwt")
    #expect(header["alg"] as? String == "EdDSA")
    let document = try #require(try JSONSerialization.jsonObject(with: Data(jwks)) as? [String: Any])
    let keys = try #require(document["keys"] as? [[String: Any]])
    let key = try #require(keys.first { $0["kid"] as? String == header["kid"] as? String })
    let publicKey = try Curve25519.Signing.PublicKey(
        rawRepresentation: try base64URLDecode(try #require(key["x"] as? String))
    )
    let signed = Data("\(parts[0]).\(parts[1])".utf8)
    try #require(publicKey.isValidSignature(try base64URLDecode(parts[2]), for: signed))
    let claims = try #require(try JSONSerialization.jsonObject(with: try base64URLDecode(parts[1])) as? [String: Any])
    let expiry = try #require(claims["exp"] as? Int)
    #expect(expiry > Int(Date().timeIntervalSince1970))
    return claims
}
