import EventModel
import Foundation
import Hummingbird
import NIOCore
import NIOSSL
import Synchronization
import TestSupport
import Testing
@_spi(Testing) import WAL

@testable import Gateway

/// Mutual TLS (security.md §7.5 T5, T6): `require` refuses clients without a good
/// certificate in the handshake; `optional` lets certificate-less clients through but still
/// refuses a bad certificate; the identity reaches the request context.
@Suite("TLS client certificates")
struct TLSClientAuthTests {
    /// The test PKI plus client certificates: a good one (SAN URI), one from another CA, an
    /// expired one.
    struct ClientFiles {
        let files: TLSTestFiles
        let good: (cert: String, key: String)
        let wrongCA: (cert: String, key: String)
        let expired: (cert: String, key: String)
        static let identity = "spiffe://sluice.test/ns/analytics/sa/backend"

        init() throws {
            self.files = try TLSTestFiles()
            let now = Date()
            self.good = try self.files.write(
                TLSSelfSigned.issue(.client(uri: Self.identity), commonName: "backend", by: self.files.ca),
                name: "client"
            )
            let otherCA = try TLSSelfSigned.authority(commonName: "Another CA")
            self.wrongCA = try self.files.write(
                TLSSelfSigned.issue(.client(uri: Self.identity), commonName: "backend", by: otherCA),
                name: "client-wrong-ca"
            )
            self.expired = try self.files.write(
                TLSSelfSigned.issue(
                    .client(uri: Self.identity),
                    commonName: "backend",
                    by: self.files.ca,
                    notValidBefore: now.addingTimeInterval(-2 * 86400),
                    notValidAfter: now.addingTimeInterval(-86400)
                ),
                name: "client-expired"
            )
        }
    }

    /// A TLS server with the gateway's channel (guard included) whose `/whoami` answers the
    /// request context's ``IngestRequestContext/clientCertificateIdentity``.
    static func withWhoAmI(
        _ files: TLSTestFiles,
        clientAuth: TLSClientAuth,
        _ body: @Sendable (Int) async throws -> Void
    ) async throws {
        var configuration = GatewayConfiguration()
        files.configure(&configuration)
        configuration.tlsClientAuth = clientAuth
        configuration.tlsClientCAFile = files.caFile
        try configuration.validate()
        let reloader = try TLSCertificateReloader(
            configuration: configuration,
            reloadOnSIGHUP: false,
            logger: quietLogger
        )
        let router = Router(context: IngestRequestContext.self)
        router.get("/whoami") { _, context in "identity=\(context.clientCertificateIdentity ?? "(none)")\n" }
        let (ports, continuation) = AsyncStream.makeStream(of: (String, Int).self)
        let app = Application(
            router: router,
            server: .gateway(
                HTTPGuardSettings(
                    configuration: configuration,
                    routes: [:],
                    metrics: HTTPMetrics(),
                    logger: quietLogger
                ),
                tls: { reloader }
            ),
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in continuation.yield(("api", channel.localAddress?.port ?? 0)) },
            logger: quietLogger
        )
        try await runServing(app, ports: ports, expecting: 1) { found in try await body(found["api"] ?? 0) }
    }

    /// One request to `/whoami` through `openssl s_client`, presenting `certificate` if given;
    /// the whole transcript (handshake errors included).
    static func whoami(
        port: Int,
        files: TLSTestFiles,
        certificate: (cert: String, key: String)?,
        version: String = "-tls1_3"
    ) async throws -> String {
        var extra = ["-ign_eof", version]
        if let certificate { extra += ["-cert", certificate.cert, "-key", certificate.key] }
        return try await OpenSSL.connect(
            port: port,
            caFile: files.caFile,
            extra,
            input: "GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        ).output
    }

    /// T5: with `require`, no certificate, one from another CA and an expired one each fail
    /// the handshake (no HTTP answer); a good one gets through with its identity.
    @Test("require: missing, wrong-CA and expired certificates fail the handshake", arguments: ["-tls1_2", "-tls1_3"])
    func require(version: String) async throws {
        let client = try ClientFiles()
        try await Self.withWhoAmI(client.files, clientAuth: .require) { port in
            let none = try await Self.whoami(port: port, files: client.files, certificate: nil, version: version)
            #expect(!none.contains("HTTP/1.1"), "\(none)")
            #expect(none.contains("alert"), "\(none)")
            let wrong = try await Self.whoami(
                port: port,
                files: client.files,
                certificate: client.wrongCA,
                version: version
            )
            #expect(!wrong.contains("HTTP/1.1"), "\(wrong)")
            #expect(wrong.contains("alert"), "\(wrong)")
            let expired = try await Self.whoami(
                port: port,
                files: client.files,
                certificate: client.expired,
                version: version
            )
            #expect(!expired.contains("HTTP/1.1"), "\(expired)")
            #expect(expired.contains("alert certificate expired"), "\(expired)")
            let good = try await Self.whoami(
                port: port,
                files: client.files,
                certificate: client.good,
                version: version
            )
            #expect(good.contains("HTTP/1.1 200"), "\(good)")
            #expect(good.contains("identity=\(ClientFiles.identity)"), "\(good)")
        }
    }

    /// T6: with `optional`, a client without a certificate reaches the handler (with no
    /// identity), one from another CA fails the handshake, a good one's SAN URI is the
    /// identity.
    @Test("optional: no certificate passes, a wrong CA fails, a good one gives its identity")
    func optional() async throws {
        let client = try ClientFiles()
        try await Self.withWhoAmI(client.files, clientAuth: .optional) { port in
            let none = try await Self.whoami(port: port, files: client.files, certificate: nil)
            #expect(none.contains("HTTP/1.1 200"), "\(none)")
            #expect(none.contains("identity=(none)"), "\(none)")
            let wrong = try await Self.whoami(port: port, files: client.files, certificate: client.wrongCA)
            #expect(!wrong.contains("HTTP/1.1"), "\(wrong)")
            let good = try await Self.whoami(port: port, files: client.files, certificate: client.good)
            #expect(good.contains("identity=\(ClientFiles.identity)"), "\(good)")
        }
    }

    /// The client certificate as the credential: with auth required, a request with a good
    /// certificate and nothing else is written as `cert:<identity>`; without one it is a 401.
    @Test("a client certificate is a principal")
    func certificateIsAPrincipal() async throws {
        let client = try ClientFiles()
        var authentication = GatewayAuthentication()
        authentication.required = true
        authentication.clientCertificates = true
        let walDirectory = Mutex<String?>(nil)
        let stored: @Sendable (TestGateway) -> Void = { gateway in
            walDirectory.withLock { $0 = gateway.directory.path + "/wal" }
        }
        let configure: (inout GatewayConfiguration) -> Void = { configuration in
            client.files.configure(&configuration)
            configuration.tlsClientAuth = .optional
            configuration.tlsClientCAFile = client.files.caFile
        }
        try await RunningTLSGateway.with(authentication: authentication, stored: stored, configure: configure) {
            running in
            let body = #"{"action":"click","user_id":"u1"}"#
            let request =
                "POST /v1/events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
            let with = try await OpenSSL.connect(
                port: running.port,
                caFile: client.files.caFile,
                ["-ign_eof", "-cert", client.good.cert, "-key", client.good.key],
                input: request
            )
            #expect(with.output.contains("HTTP/1.1 202"), "\(with.output.suffix(1500))")
            let without = try await OpenSSL.connect(
                port: running.port,
                caFile: client.files.caFile,
                ["-ign_eof"],
                input: request
            )
            #expect(without.output.contains("HTTP/1.1 401"), "\(without.output.suffix(1500))")
            // Read while the gateway (and its temporary directory) is still there.
            var sources: [String] = []
            try WALInspector(directory: try #require(walDirectory.withLock { $0 })).records(from: .zero) { item in
                if case .record(let record, _, _) = item {
                    for event in record.events {
                        if case .string(let source)? = try JSONParser.parse(event)["source"] { sources.append(source) }
                    }
                }
                return true
            }
            #expect(sources == ["cert:\(ClientFiles.identity)"])
        }
    }

    /// The identity: SAN URI first, then SAN DNS name, then the subject's common name.
    @Test("identity precedence: SAN URI, SAN DNS, CN")
    func identityPrecedence() throws {
        let ca = try TLSSelfSigned.authority()
        func identity(_ material: TLSCertificateMaterial) throws -> String? {
            TLSClientIdentities.identity(
                of: try NIOSSLCertificate(bytes: Array(material.certificatePEM.utf8), format: .pem)
            )
        }
        #expect(
            try identity(TLSSelfSigned.issue(.client(uri: "spiffe://a/b"), commonName: "cn", by: ca)) == "spiffe://a/b"
        )
        #expect(
            try identity(TLSSelfSigned.issue(.server(hosts: ["svc.example"]), commonName: "cn", by: ca))
                == "svc.example"
        )
        #expect(try identity(TLSSelfSigned.issue(.client(uri: nil), commonName: "just-cn", by: ca)) == "just-cn")
    }
}
