import ClickHouse
import Foundation
import LocalClickHouse
import Logging
import TestSupport
import Testing

/// A ClickHouse 18.16 whose HTTPS port requires client certificates (`verificationMode strict`
/// with a `caConfig`): the client with its certificate and key gets in, without them it is
/// refused with an error that says TLS.
@Suite("ClickHouse client certificates", .serialized, .timeLimit(.minutes(3)))
struct ClickHouseClientCertificateTests {
    @Test func aServerRequiringClientCertificatesAdmitsOnlyAClientWithOne() async throws {
        let pki = try await TestClientPKI()
        let server = try await ClickHouseServer.start(tls: true, clientCA: pki.caFile)
        defer { server.stop() }
        let url = try #require(server.httpsURL)
        let logger = Logger(label: "clickhouse-test")

        let with = ClickHouseClient(
            ClickHouseConfiguration(
                url: url,
                caFile: server.certificateFile,
                clientCertificateFile: pki.clientCertificate,
                clientKeyFile: pki.clientKey
            ),
            logger: logger
        )
        let answer = try await with.query("SELECT 'with a certificate'")
        try await with.shutdown()
        #expect(answer == "with a certificate\n")

        let without = ClickHouseClient(
            ClickHouseConfiguration(url: url, caFile: server.certificateFile),
            logger: logger
        )
        let refusal = await #expect(throws: ClickHouseError.self) { try await without.query("SELECT 1") }
        try await without.shutdown()
        #expect(refusal?.kind == .transport, "\(String(describing: refusal))")
        #expect(refusal?.isRetriable == true)
        #expect("\(String(describing: refusal))".uppercased().contains("SSL"), "\(String(describing: refusal))")

        // A certificate from another CA is refused too.
        let stranger = try await TestClientPKI()
        let other = ClickHouseClient(
            ClickHouseConfiguration(
                url: url,
                caFile: server.certificateFile,
                clientCertificateFile: stranger.clientCertificate,
                clientKeyFile: stranger.clientKey
            ),
            logger: logger
        )
        await #expect(throws: ClickHouseError.self) { try await other.query("SELECT 1") }
        try await other.shutdown()
    }
}

/// A CA and a client certificate it issued, made with the `openssl` command in a temporary
/// directory.
struct TestClientPKI {
    let directory: TemporaryDirectory
    var caFile: String { self.directory.path + "/ca.crt" }
    var clientCertificate: String { self.directory.path + "/client.crt" }
    var clientKey: String { self.directory.path + "/client.key" }

    init() async throws {
        self.directory = try TemporaryDirectory()
        let path = self.directory.path
        let steps: [[String]] = [
            [
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                "-subj", "/CN=Sluice test client CA", "-keyout", path + "/ca.key", "-out", path + "/ca.crt",
            ],
            [
                "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj",
                "/CN=sluice-loader", "-keyout", path + "/client.key", "-out", path + "/client.csr",
            ],
            [
                "x509", "-req", "-in", path + "/client.csr", "-CA", path + "/ca.crt", "-CAkey", path + "/ca.key",
                "-CAcreateserial", "-days", "2", "-out", path + "/client.crt",
            ],
        ]
        for step in steps {
            let run = try await ChildProcess.run("openssl", step, errorsToOutput: true, timeout: .seconds(30))
            try #require(run.status == 0, "openssl \(step.joined(separator: " ")): \(run.standardOutput)")
        }
    }
}
