import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import TestSupport
import Testing

@testable import Gateway

/// HTTPS on the API listener (security.md §7.5 T1–T3): which protocol versions and suites the
/// gateway accepts, and that it never answers plaintext on its TLS port.
@Suite("TLS handshakes")
struct TLSHandshakeTests {
    /// T1: a TLS 1.0 or 1.1 ClientHello is refused by the server with a protocol_version
    /// alert. The client's own security level is lowered so that it does offer them: the
    /// refusal is the gateway's.
    @Test("TLS 1.0 and 1.1 are refused", arguments: ["-tls1", "-tls1_1"])
    func oldVersionsRefused(version: String) async throws {
        let files = try TLSTestFiles()
        try await RunningTLSGateway.with(configure: files.configure) { gateway in
            let result = try await OpenSSL.connect(
                port: gateway.port,
                caFile: files.caFile,
                [version, "-cipher", "DEFAULT@SECLEVEL=0", "-brief"]
            )
            #expect(result.status != 0, "\(result.output)")
            #expect(
                result.output.contains("protocol version"),
                "the server must answer protocol_version: \(result.output)"
            )
            #expect(!result.output.contains("CONNECTION ESTABLISHED"))
            #expect(handshakeFailures("protocol_version") >= 1)
        }
    }

    /// T2: TLS 1.3 is negotiated when the client offers it, TLS 1.2 works with an ECDHE suite,
    /// and a 1.2 client offering only ECDHE suites with CBC finds no shared cipher.
    @Test("TLS 1.2 (ECDHE only) and 1.3 succeed")
    func modernVersions() async throws {
        let files = try TLSTestFiles()
        try await RunningTLSGateway.with(configure: files.configure) { gateway in
            let tls13 = try await OpenSSL.connect(port: gateway.port, caFile: files.caFile, ["-brief"])
            #expect(tls13.output.contains("Protocol version: TLSv1.3"), "\(tls13.output)")
            #expect(tls13.output.contains("Verification: OK"), "\(tls13.output)")

            let tls12 = try await OpenSSL.connect(port: gateway.port, caFile: files.caFile, ["-tls1_2", "-brief"])
            #expect(tls12.output.contains("Protocol version: TLSv1.2"), "\(tls12.output)")
            let suite = tls12.output.split(separator: "\n").first { $0.hasPrefix("Ciphersuite: ") }
            #expect(suite?.hasPrefix("Ciphersuite: ECDHE-") == true, "\(tls12.output)")

            // ECDHE with CBC (in NIOSSL's default list) is not offered: AEAD suites only.
            let weak = try await OpenSSL.connect(
                port: gateway.port,
                caFile: files.caFile,
                ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384@SECLEVEL=0", "-brief"]
            )
            #expect(!weak.output.contains("CONNECTION ESTABLISHED"), "\(weak.output)")
            #expect(weak.output.contains("handshake failure"), "\(weak.output)")
            #expect(handshakeFailures("no_shared_cipher") >= 1)
        }
    }

    /// T3: plain HTTP sent to the TLS port gets no plaintext HTTP answer; the connection is
    /// closed (after a TLS alert at most).
    @Test("plain HTTP to the TLS port gets no plaintext answer")
    func plainHTTPRefused() async throws {
        let files = try TLSTestFiles()
        try await RunningTLSGateway.with(configure: files.configure) { gateway in
            let port = gateway.port
            let (bytes, closed) = try await offPool {
                let connection = try RawConnection(port: port)
                try connection.send("GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                return connection.read(timeout: .seconds(10))
            }
            #expect(closed)
            let text = String(decoding: bytes, as: UTF8.self)
            #expect(!text.contains("HTTP/"), "a plaintext answer: \(text)")
            // Anything sent is a TLS record (content type 21, alert), never HTTP.
            if let first = bytes.first { #expect(first == 21) }
            #expect(handshakeFailures("not_tls") >= 1)
        }
    }

    /// HTTPS end to end: AsyncHTTPClient trusting the test CA posts an event and gets 202;
    /// a client that does not trust the CA fails verification.
    @Test("POST /v1/events over HTTPS with the test CA is accepted")
    func httpsIngest() async throws {
        let files = try TLSTestFiles()
        try await RunningTLSGateway.with(configure: files.configure) { gateway in
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(files.caFile))
            tls.minimumTLSVersion = .tlsv12
            let client = KeptClients.keep(
                HTTPClient(
                    eventLoopGroupProvider: .singleton,
                    configuration: HTTPClient.Configuration(tlsConfiguration: tls)
                )
            )
            let answer = try await EventPoster(url: "https://127.0.0.1:\(gateway.port)", client: client)
                .post(#"{"action":"tls_test","user_id":"u1"}"#)
            #expect(answer.status == .accepted, "\(answer.body)")

            let untrusting = KeptClients.keep(HTTPClient(eventLoopGroupProvider: .singleton))
            var plain = HTTPClientRequest(url: "https://127.0.0.1:\(gateway.port)/healthz")
            plain.method = .GET
            await #expect(throws: (any Error).self) { _ = try await untrusting.execute(plain, timeout: .seconds(10)) }
            try await client.shutdown()
            try await untrusting.shutdown()
        }
    }
}
