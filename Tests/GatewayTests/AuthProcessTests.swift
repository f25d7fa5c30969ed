import AsyncHTTPClient
import Foundation
import LocalClickHouse
import NIOCore
import NIOHTTP1
import NIOSSL
import TestSupport
import Testing

/// The front door as an operator meets it: `sluice gateway` with its defaults, keys made and
/// revoked with `sluice keys`, tokens from the built-in authorization server, over HTTPS with
/// a certificate from `sluice tls self-signed`.
@Suite(.serialized, .timeLimit(.minutes(3))) struct AuthProcessTests {
    /// Runs `sluice args…` to completion; its exit status and standard output.
    func sluice(_ arguments: [String], environment: [String: String] = [:]) async throws -> (Int32, String, String) {
        let process = try SluiceProcess(arguments, environment: environment)
        let status = try await process.waitForExit()
        return (status, process.standardOutput, process.standardError)
    }

    /// `sluice keys create NAME …` and the key it printed once.
    func createKey(_ name: String, file: String, extra: [String] = ["--kind", "secret"]) async throws -> String {
        let (status, output, errors) = try await self.sluice(["keys", "create", name, "--file", file] + extra)
        #expect(status == 0, "\(errors)")
        let key = output.split(whereSeparator: \.isWhitespace).first { $0.hasPrefix("slk_") || $0.hasPrefix("slp_") }
        return String(try #require(key, "no key in: \(output)"))
    }

    func post(
        _ client: HTTPClient,
        _ url: String,
        authorization: String?,
        body: String = #"{"action":"click","user_id":"u1"}"#
    ) async throws -> (HTTPResponseStatus, HTTPHeaders, String) {
        let answer = try await EventPoster(url: url, authorization: authorization, client: client).post(body)
        return (answer.status, answer.headers, answer.body)
    }

    @Test func theGatewayRequiresACredentialByDefaultAndSaysSoWhenTurnedOff() async throws {
        let directory = try TemporaryDirectory()
        let strict = try await GatewayProcess(
            walDirectory: directory.path + "/wal",
            environment: ["SLUICE_AUTH_REQUIRED": "true"]
        )
        let client = KeptClients.keep(HTTPClient(eventLoopGroupProvider: .singleton))
        let (status, headers, _) = try await self.post(client, strict.url, authorization: nil)
        #expect(status == .unauthorized)
        #expect(headers["WWW-Authenticate"].first == #"Bearer realm="sluice""#)
        strict.signal(SIGTERM)
        #expect(try await strict.waitForExit() == 0)
        #expect(!strict.standardOutput.contains("auth.disabled"))

        let open = try await GatewayProcess(walDirectory: directory.path + "/wal2")
        #expect(try await self.post(client, open.url, authorization: nil).0 == .accepted)
        #expect(open.standardOutput.contains(#""message":"auth.disabled""#))
        open.signal(SIGTERM)
        _ = try await open.waitForExit()
        try await client.shutdown()
    }

    /// K10 and S1: a key revoked with `sluice keys revoke` is refused within a second, without
    /// a restart; nothing secret reaches the log, the metrics or an error body.
    @Test func aRevokedKeyIsRefusedWithinASecondAndNoSecretIsEverLogged() async throws {
        let directory = try TemporaryDirectory()
        let keys = directory.path + "/keys.json"
        let key = try await self.createKey("billing", file: keys)
        let other = try await self.createKey("web", file: keys)
        let gateway = try await GatewayProcess(
            walDirectory: directory.path + "/wal",
            environment: ["SLUICE_AUTH_REQUIRED": "true", "SLUICE_AUTH_API_KEYS_FILE": keys]
        )
        let client = KeptClients.keep(HTTPClient(eventLoopGroupProvider: .singleton))
        #expect(try await self.post(client, gateway.url, authorization: "Bearer \(key)").0 == .accepted)
        #expect(try await self.post(client, gateway.url, authorization: "bearer \(other)").0 == .accepted)
        let forged = String(key.dropLast(3)) + "AAA"
        let (forgedStatus, _, forgedBody) = try await self.post(client, gateway.url, authorization: "Bearer \(forged)")
        #expect(forgedStatus == .unauthorized)

        let (status, _, errors) = try await self.sluice(["keys", "revoke", "billing", "--file", keys])
        #expect(status == 0, "\(errors)")
        let revokedAt = ContinuousClock.now
        // When the refused request was sent, not when its answer came: on a machine busy with
        // the whole suite an answer can take longer than the revocation did to arrive.
        var refusedRequestSent = revokedAt
        // The gateway rereads the file every second: about a second on a quiet machine; CI,
        // starting every suite at once, once took 4.6 s. A gateway that never rereads fails.
        try await waitUntil(timeout: .seconds(30), pollEvery: .milliseconds(50)) {
            refusedRequestSent = ContinuousClock.now
            return (try? await self.post(client, gateway.url, authorization: "Bearer \(key)").0) == .unauthorized
        }
        #expect(refusedRequestSent - revokedAt < .seconds(30))
        #expect(try await self.post(client, gateway.url, authorization: "Bearer \(other)").0 == .accepted)

        var metrics = HTTPClientRequest(url: gateway.url + "/metrics")
        metrics.method = .GET
        let exposition = String(
            buffer: try await client.execute(metrics, timeout: .seconds(5)).body.collect(upTo: 4 << 20)
        )
        let refusals = exposition.split(separator: "\n").filter { $0.hasPrefix("sluice_auth_requests_total{") }
        #expect(refusals.contains { $0.contains(#"reason="revoked""#) && $0.contains(#"result="refused""#) })
        #expect(refusals.contains { $0.contains(#"reason="bad_checksum""#) || $0.contains(#"reason="unknown_key""#) })
        gateway.signal(SIGTERM)
        _ = try await gateway.waitForExit()
        try await client.shutdown()
        let (_, listing, _) = try await self.sluice(["keys", "ls", "--file", keys])
        let everything = [gateway.standardOutput, gateway.standardError, exposition, forgedBody, listing]
            .joined(separator: "\n")
        for secret in [key, other, forged, String(key.suffix(32)), String(other.suffix(32))] {
            #expect(!everything.contains(secret), "a key reached the log, the metrics or an answer")
        }
        #expect(gateway.standardOutput.contains(#""user.id":"key:web""#))
    }

    /// The built-in authorization server over HTTPS, used the way a client would: a client made
    /// with `sluice oauth clients add`, a token from `/oauth/token`, an event with that token.
    @Test func aTokenFromTheBuiltInServerWritesEventsOverHTTPS() async throws {
        let directory = try TemporaryDirectory()
        let tls = directory.path + "/tls"
        let (tlsStatus, _, tlsErrors) = try await self.sluice([
            "tls", "self-signed", "--out", tls, "--host", "127.0.0.1",
        ])
        #expect(tlsStatus == 0, "\(tlsErrors)")
        let clients = directory.path + "/clients.json"
        let (addStatus, added, addErrors) = try await self.sluice([
            "oauth", "clients", "add", "backend", "--clients-file", clients,
        ])
        #expect(addStatus == 0, "\(addErrors)")
        let secret = String(try #require(added.split(whereSeparator: \.isWhitespace).first { $0.hasPrefix("slc_") }))
        let port = try freeLoopbackPorts(1)[0]
        let gateway = try SluiceProcess(
            ["gateway", "--listen", "127.0.0.1:\(port)", "--wal-dir", directory.path + "/wal"],
            environment: [
                "SLUICE_AUTH_REQUIRED": "true",
                "SLUICE_GATEWAY_TLS_CERT_FILE": tls + "/server.pem",
                "SLUICE_GATEWAY_TLS_KEY_FILE": tls + "/server.key",
                "SLUICE_AUTH_OAUTH_BUILTIN_SERVER_ENABLED": "true",
                "SLUICE_AUTH_OAUTH_BUILTIN_SERVER_ISSUER": "https://127.0.0.1:\(port)",
                "SLUICE_AUTH_OAUTH_BUILTIN_SERVER_CLIENTS_FILE": clients,
                "SLUICE_AUTH_OAUTH_BUILTIN_SERVER_SIGNING_KEY_FILE": directory.path + "/signing.key",
                "SLUICE_AUTH_OAUTH_BUILTIN_SERVER_CA_FILE": tls + "/ca.pem",
            ]
        )
        _ = try await gateway.listeningPort()
        let url = "https://127.0.0.1:\(port)"
        try secret.write(toFile: directory.path + "/secret", atomically: true, encoding: .utf8)
        let (tokenStatus, tokenOutput, tokenErrors) = try await self.sluice([
            "oauth", "token", "--url", url, "--client", "backend", "--secret-file", directory.path + "/secret",
            "--ca-file", tls + "/ca.pem",
        ])
        #expect(tokenStatus == 0, "\(tokenErrors)")
        let token = tokenOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(token.split(separator: ".").count == 3)

        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.trustRoots = .file(tls + "/ca.pem")
        let client = KeptClients.keep(
            HTTPClient(
                eventLoopGroupProvider: .singleton,
                configuration: HTTPClient.Configuration(tlsConfiguration: configuration)
            )
        )
        let (status, _, body) = try await self.post(client, url, authorization: "Bearer \(token)")
        #expect(status == .accepted, "\(body)\n\(gateway.standardOutput.suffix(2000))")
        // A token whose signature was changed is refused, and does not reach the log.
        let tampered = String(token.dropLast(4)) + (token.hasSuffix("AAAA") ? "BBBB" : "AAAA")
        #expect(try await self.post(client, url, authorization: "Bearer \(tampered)").0 == .unauthorized)
        try await client.shutdown()
        gateway.signal(SIGTERM)
        #expect(try await gateway.waitForExit() == 0)
        #expect(gateway.standardOutput.contains(#""user.id":"client:backend""#))
        let signature = String(token.split(separator: ".").last ?? "")
        #expect(!signature.isEmpty && !gateway.standardOutput.contains(signature))
        #expect(!gateway.standardOutput.contains(secret))
    }
}
