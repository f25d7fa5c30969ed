import Foundation
import TestSupport
import Testing
import WAL

@testable import Gateway

#if canImport(Glibc)
import Glibc
#endif

/// `sluice gateway` with `gateway.tls.*` set through the environment: HTTPS from the
/// settings alone, SIGHUP reloads, start-up refusals, and `sluice tls self-signed`.
@Suite("TLS in the sluice process")
struct TLSProcessTests {
    @Test("sluice gateway serves HTTPS and reloads on SIGHUP")
    func sighupReload() async throws {
        let files = try TLSTestFiles(serial: [0x0A, 0x01])
        let wal = try TemporaryDirectory()
        let gateway = try await GatewayProcess(
            walDirectory: wal.path,
            environment: [
                "SLUICE_GATEWAY_TLS_CERT_FILE": files.certFile, "SLUICE_GATEWAY_TLS_KEY_FILE": files.keyFile,
                "SLUICE_GATEWAY_TLS_RELOAD_INTERVAL": "1h",
            ]
        )
        #expect(gateway.port != 0, "\(gateway.standardError)")
        _ = try await gateway.child.line(containing: "\"tls.reload_armed\"")
        #expect(try await OpenSSL.servedSerial(port: gateway.port, caFile: files.caFile) == "A01")

        try files.install(try TLSTestFiles.serverPair(ca: files.ca, serial: [0x0B, 0x02]))
        gateway.signal(SIGHUP)
        _ = try await gateway.child.line(containing: "\"tls.reloaded\"")
        #expect(try await OpenSSL.servedSerial(port: gateway.port, caFile: files.caFile) == "B02")
        #expect(gateway.child.isRunning)

        gateway.signal(SIGTERM)
        #expect(try await gateway.waitForExit() == 0)
    }

    @Test("sluice gateway refuses a key file readable by others, naming the chmod")
    func exposedKeyRefused() async throws {
        let files = try TLSTestFiles()
        chmod(files.keyFile, 0o640)
        let wal = try TemporaryDirectory()
        let gateway = try await GatewayProcess(
            walDirectory: wal.path,
            environment: [
                "SLUICE_GATEWAY_TLS_CERT_FILE": files.certFile, "SLUICE_GATEWAY_TLS_KEY_FILE": files.keyFile,
            ]
        )
        #expect(gateway.port == 0)
        #expect(try await gateway.waitForExit() == 2)
        #expect(gateway.standardError.contains("mode 0640"), "\(gateway.standardError)")
        #expect(gateway.standardError.contains("chmod 600 \(files.keyFile)"), "\(gateway.standardError)")
    }

    @Test("plain HTTP off loopback is logged as a warning; on loopback it is not")
    func plainHTTPWarning() async throws {
        let logs = CapturedLogs()
        let gateway = try await TestGateway.make()
        let wal = gateway.wal
        var configuration = GatewayConfiguration()
        configuration.host = "0.0.0.0"
        _ = buildGatewayApplication(configuration: configuration, wal: wal, registry: registry, logger: logs.logger)
        #expect(logs.count("gateway.plain_http") == 1)
        configuration.host = "127.0.0.1"
        _ = buildGatewayApplication(configuration: configuration, wal: wal, registry: registry, logger: logs.logger)
        let files = try TLSTestFiles()
        files.configure(&configuration)
        configuration.host = "0.0.0.0"
        _ = buildGatewayApplication(configuration: configuration, wal: wal, registry: registry, logger: logs.logger)
        #expect(logs.count("gateway.plain_http") == 1)
        await wal.close()
    }

    @Test("sluice tls self-signed writes a CA, a server and a client pair that verify")
    func selfSigned() async throws {
        let directory = try TemporaryDirectory()
        let out = directory.path + "/tls"
        let child = try SluiceProcess(["tls", "self-signed", "--out", out, "--host", "localhost", "--host", "10.1.2.3"])
        #expect(try await child.waitForExit() == 0, "\(child.standardError)")
        for name in ["ca.key", "server.key", "client.key"] {
            let attributes = try FileManager.default.attributesOfItem(atPath: out + "/" + name)
            #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600, "\(name)")
        }
        let server = try await OpenSSL.run(["verify", "-CAfile", out + "/ca.pem", out + "/server.pem"])
        #expect(server.output.contains(": OK"), "\(server.output)")
        let client = try await OpenSSL.run(["verify", "-CAfile", out + "/ca.pem", out + "/client.pem"])
        #expect(client.output.contains(": OK"), "\(client.output)")
        let text = try await OpenSSL.run(["x509", "-in", out + "/server.pem", "-noout", "-ext", "subjectAltName"])
        #expect(text.output.contains("DNS:localhost"), "\(text.output)")
        #expect(text.output.contains("IP Address:10.1.2.3"), "\(text.output)")
        // The written pair is one the gateway accepts.
        var configuration = GatewayConfiguration()
        configuration.tlsCertFile = out + "/server.pem"
        configuration.tlsKeyFile = out + "/server.key"
        configuration.tlsClientAuth = .require
        configuration.tlsClientCAFile = out + "/ca.pem"
        try configuration.validate()
    }
}
