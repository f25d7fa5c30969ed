import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTLS
import Logging
import NIOCore
import NIOSSL
import TestSupport
import Testing

@testable import Auth

/// `sluice oauth token` over HTTPS: it trusts the server only through `--ca-file`.
@Suite(.timeLimit(.minutes(2))) struct AuthorizationServerTokenCommandTests {
    static let openssl = "/usr/bin/openssl"

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: openssl)))
    func tokenCommandTrustsTheGivenCAOverHTTPS() async throws {
        let directory = try TemporaryDirectory()
        let certificate = directory.path + "/server.crt"
        let privateKey = directory.path + "/server.key"
        let made = try await ChildProcess.run(
            Self.openssl,
            [
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                "-keyout", privateKey, "-out", certificate,
            ]
        )
        try #require(made.status == 0, "\(made.standardError)")

        let store = try OAuthClientStore(path: directory.path + "/clients.json")
        let secret = try store.add("shop", scopes: ["events:write"]).secret
        let secretFile = directory.path + "/shop.secret"
        try Data(secret.utf8).write(to: URL(fileURLWithPath: secretFile))
        let server = try AuthorizationServer(
            issuer: "https://127.0.0.1",
            signingKey: AuthorizationServerSigningKey(generating: .eddsa),
            clients: store,
            logger: CapturedLogs().logger
        )
        let router = Router()
        router.post("/oauth/token") { request, _ -> Response in
            var request = request
            let body = try await request.collectBody(upTo: 16384)
            let answer = server.token(
                formBody: Array(body.readableBytesView),
                authorization: request.headers[.authorization]
            )
            var headers = HTTPFields()
            for (name, value) in answer.headers { if let field = HTTPField.Name(name) { headers[field] = value } }
            return Response(
                status: .init(code: answer.status),
                headers: headers,
                body: .init(byteBuffer: ByteBuffer(bytes: answer.body))
            )
        }
        let tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: privateKey, format: .pem))
        )
        let ports = AsyncStream<Int>.makeStream()
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let app = Application(
            router: router,
            server: try .tls(tlsConfiguration: tls),
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in ports.continuation.yield(channel.localAddress?.port ?? 0) },
            logger: logger
        )
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await app.runService() }
            var iterator = ports.stream.makeAsyncIterator()
            let port = try #require(await iterator.next())
            let url = "https://127.0.0.1:\(port)"

            let trusted = try await ChildProcess.runSluice([
                "oauth", "token", "--url", url, "--client", "shop", "--secret-file", secretFile,
                "--ca-file", certificate, "--scope", "events:write",
            ])
            #expect(trusted.status == 0, "\(trusted.standardError)")
            #expect(trusted.standardOutput.hasSuffix("\n"))
            #expect(trusted.standardOutput.split(separator: ".").count == 3)

            // Without --ca-file the system roots do not know this certificate: no token.
            let untrusted = try await ChildProcess.runSluice([
                "oauth", "token", "--url", url, "--client", "shop", "--secret-file", secretFile,
            ])
            #expect(untrusted.status == 1)
            #expect(untrusted.standardOutput.isEmpty)
            #expect(untrusted.standardError.contains("CERTIFICATE_VERIFY_FAILED"))
            group.cancelAll()
        }
    }
}
