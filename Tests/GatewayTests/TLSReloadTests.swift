import Foundation
import Logging
import ServiceLifecycle
import TestSupport
import Testing
import WAL

@testable import Gateway

#if canImport(Glibc)
import Glibc
#endif

/// Certificate reload without a restart (security.md §7.5 T4) and the start-up checks.
@Suite("TLS certificate reload")
struct TLSReloadTests {
    /// T4: after the files are replaced and reloaded, a new connection gets the new serial
    /// while a connection opened before keeps working; a bad pair is refused with a log line
    /// and the previous certificate is still served.
    @Test("reload: new connections get the new certificate, open ones continue, a bad pair is refused")
    func reload() async throws {
        let files = try TLSTestFiles(serial: [0x10, 0x01])
        let logs = CapturedLogs()
        let makeReloader: (GatewayConfiguration) throws -> TLSCertificateReloader? = { configuration in
            try TLSCertificateReloader(configuration: configuration, reloadOnSIGHUP: false, logger: logs.logger)
        }
        try await RunningTLSGateway.with(configure: files.configure, reloader: makeReloader) { gateway in
            let reloader = try #require(gateway.reloader)
            #expect(try await OpenSSL.servedSerial(port: gateway.port, caFile: files.caFile) == "1001")

            // A connection opened (and used) before the reload.
            let open = try OpenSSLConnection(port: gateway.port, caFile: files.caFile)
            let first = try await open.get("/healthz", answers: 1)
            #expect(first.contains("HTTP/1.1 200"))

            try files.install(try TLSTestFiles.serverPair(ca: files.ca, serial: [0x20, 0x02]))
            #expect(reloader.reload(trigger: "test"))
            #expect(try await OpenSSL.servedSerial(port: gateway.port, caFile: files.caFile) == "2002")
            #expect(reloader.currentSerial == "2002")

            // The old connection still answers.
            let second = try await open.get("/healthz", answers: 2)
            #expect(second.components(separatedBy: "HTTP/1.1 200").count - 1 == 2)
            await open.close()

            // A key that belongs to another certificate: refused, logged, the old pair stays.
            let other = try TLSTestFiles.serverPair(ca: files.ca, serial: [0x30, 0x03])
            try TLSTestFiles.replace(files.keyFile, with: other.privateKeyPEM, mode: 0o600)
            #expect(!reloader.reload(trigger: "test"))
            let failure = try #require(logs.entries.last { $0.message == "tls.reload_failed" })
            #expect(failure.metadata["reason"]?.description == "key_mismatch")
            #expect(failure.level == .error)
            // Never key material in the log line.
            let logged = failure.metadata.values.map(\.description).joined(separator: " ")
            #expect(!logged.contains("PRIVATE KEY"))
            #expect(!logged.contains(String(other.privateKeyPEM.split(separator: "\n")[1].prefix(20))))
            #expect(try await OpenSSL.servedSerial(port: gateway.port, caFile: files.caFile) == "2002")

            // Unparsable certificate: refused too.
            try TLSTestFiles.replace(files.certFile, with: "not a certificate\n", mode: 0o644)
            #expect(!reloader.reload(trigger: "test"))
            #expect(
                logs.entries.last { $0.message == "tls.reload_failed" }?.metadata["reason"] == "unparsable_certificate"
            )
            #expect(try await OpenSSL.servedSerial(port: gateway.port, caFile: files.caFile) == "2002")
        }
    }

    /// The file watch reloads a changed pair with no signal and no call.
    @Test("the file watch picks up replaced files")
    func fileWatch() async throws {
        let files = try TLSTestFiles(serial: [0x40, 0x04])
        let configure: (inout GatewayConfiguration) -> Void = { configuration in
            files.configure(&configuration)
            configuration.tlsReloadInterval = .milliseconds(50)
        }
        try await RunningTLSGateway.with(configure: configure) { gateway in
            #expect(try await OpenSSL.servedSerial(port: gateway.port, caFile: files.caFile) == "4004")
            try files.install(try TLSTestFiles.serverPair(ca: files.ca, serial: [0x50, 0x05]))
            try await waitUntil(timeout: .seconds(20)) { gateway.reloader?.currentSerial == "5005" }
            #expect(try await OpenSSL.servedSerial(port: gateway.port, caFile: files.caFile) == "5005")
        }
    }

    /// SIGHUP reloads. The reloader traps the signal before the test sends it, so the default
    /// action (terminate) never applies to the test process.
    @Test("SIGHUP reloads the pair")
    func sighup() async throws {
        let files = try TLSTestFiles(serial: [0x60, 0x06])
        var configuration = GatewayConfiguration()
        files.configure(&configuration)
        configuration.tlsReloadInterval = .seconds(3600)  // only the signal may reload
        let (trapped, trappedContinuation) = AsyncStream.makeStream(of: Void.self)
        let reloader = try TLSCertificateReloader(
            configuration: configuration,
            listener: "api",
            reloadOnSIGHUP: true,
            logger: quietLogger,
            onSignalTrapped: { trappedContinuation.yield() }
        )
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await reloader.run() }
            for await _ in trapped { break }
            try files.install(try TLSTestFiles.serverPair(ca: files.ca, serial: [0x70, 0x07]))
            kill(getpid(), SIGHUP)
            try await waitUntil(timeout: .seconds(20)) { reloader.currentSerial == "7007" }
            group.cancelAll()
        }
    }

    /// Start-up refusals, each with a message naming the setting and what to do.
    @Test("start refuses incomplete, unreadable, mismatched or exposed key files")
    func startupChecks() throws {
        let files = try TLSTestFiles()
        func message(_ configure: (inout GatewayConfiguration) -> Void) -> String? {
            var configuration = GatewayConfiguration()
            files.configure(&configuration)
            configure(&configuration)
            do {
                try configuration.validate()
                return nil
            } catch {
                return "\(error)"
            }
        }
        #expect(message { _ in } == nil)
        #expect(message { $0.tlsKeyFile = nil }?.contains("gateway.tls.cert_file") == true)
        #expect(message { $0.tlsKeyFile = nil }?.contains("without gateway.tls.key_file") == true)
        #expect(message { $0.tlsCertFile = nil }?.contains("without gateway.tls.cert_file") == true)
        let missing = message { $0.tlsCertFile = files.directory.path + "/missing.pem" }
        #expect(missing?.contains("missing.pem cannot be read") == true, "\(missing ?? "")")

        let other = try files.write(TLSTestFiles.serverPair(ca: files.ca, serial: [0x01]), name: "other")
        let mismatch = message { $0.tlsKeyFile = other.key }
        #expect(mismatch?.contains("does not belong to the first certificate") == true, "\(mismatch ?? "")")

        chmod(other.key, 0o644)
        let exposed = message {
            $0.tlsCertFile = other.cert
            $0.tlsKeyFile = other.key
        }
        #expect(exposed?.contains("mode 0644") == true, "\(exposed ?? "")")
        #expect(exposed?.contains("chmod 600 \(other.key)") == true, "\(exposed ?? "")")

        #expect(message { $0.tlsClientAuth = .require }?.contains("gateway.tls.client_ca_file") == true)
        #expect(
            message {
                $0.tlsClientAuth = .optional
                $0.tlsClientCAFile = files.caFile
            } == nil
        )
        #expect(
            message { configuration in
                configuration.tlsCertFile = nil
                configuration.tlsKeyFile = nil
                configuration.tlsClientAuth = .require
            }?.contains("needs HTTPS") == true
        )
    }

    /// A configured pair that is broken at start never falls back to plain HTTP: the
    /// application fails to start with the reason.
    @Test("a broken pair fails the server's start")
    func brokenPairFailsStart() async throws {
        let files = try TLSTestFiles()
        let gateway = try await TestGateway.make(configure: { configuration in
            files.configure(&configuration)
            configuration.tlsKeyFile = files.directory.path + "/absent.key"
        })
        let app = buildGatewayApplication(
            configuration: gateway.configuration,
            wal: gateway.wal,
            registry: registry,
            logger: quietLogger
        )
        await #expect(throws: TLSConfigurationError.self) { try await app.run() }
        await gateway.wal.close()
    }

    @Test("loopback addresses")
    func loopback() {
        for host in ["127.0.0.1", "127.1.2.3", "::1", "localhost", "LOCALHOST"] {
            #expect(GatewayConfiguration.isLoopback(host), "\(host)")
        }
        for host in ["0.0.0.0", "10.0.0.1", "::", "example.com", "128.0.0.1"] {
            #expect(!GatewayConfiguration.isLoopback(host), "\(host)")
        }
    }
}
