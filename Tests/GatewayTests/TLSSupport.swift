import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOSSL
import Prometheus
import ServiceLifecycle
import Synchronization
import TestSupport
import Testing
import WAL

@testable import Gateway

#if canImport(Glibc)
import Glibc
#endif

/// A test PKI in a temporary directory: a CA, a server pair for localhost/127.0.0.1, and
/// helpers to write more pairs (key files mode 0600).
struct TLSTestFiles {
    let directory: TemporaryDirectory
    let ca: TLSCertificateMaterial
    let server: TLSCertificateMaterial
    var caFile: String { self.directory.path + "/ca.pem" }
    var certFile: String { self.directory.path + "/server.pem" }
    var keyFile: String { self.directory.path + "/server.key" }

    init(serial: [UInt8] = [0x10, 0x01]) throws {
        self.directory = try TemporaryDirectory()
        self.ca = try TLSSelfSigned.authority(commonName: "Sluice test CA")
        self.server = try Self.serverPair(ca: self.ca, serial: serial)
        try TLSSelfSigned.write(self.ca.certificatePEM, to: self.caFile, mode: 0o644)
        try self.install(self.server)
    }

    static func serverPair(ca: TLSCertificateMaterial, serial: [UInt8]) throws -> TLSCertificateMaterial {
        try TLSSelfSigned.issue(
            .server(hosts: ["localhost", "127.0.0.1"]),
            commonName: "localhost",
            by: ca,
            serial: serial
        )
    }

    /// Writes `pair` over the served certificate and key files, each replaced by a rename
    /// (as deployment tools do), so that no reader sees half a file.
    func install(_ pair: TLSCertificateMaterial) throws {
        try Self.replace(self.certFile, with: pair.certificatePEM, mode: 0o644)
        try Self.replace(self.keyFile, with: pair.privateKeyPEM, mode: 0o600)
    }

    static func replace(_ path: String, with text: String, mode: mode_t) throws {
        try TLSSelfSigned.write(text, to: path + ".tmp", mode: mode)
        guard rename(path + ".tmp", path) == 0 else { throw RawConnectionError(description: "rename \(path)") }
    }

    func write(_ material: TLSCertificateMaterial, name: String) throws -> (cert: String, key: String) {
        let cert = self.directory.path + "/\(name).pem"
        let key = self.directory.path + "/\(name).key"
        try TLSSelfSigned.write(material.certificatePEM, to: cert, mode: 0o644)
        try TLSSelfSigned.write(material.privateKeyPEM, to: key, mode: 0o600)
        return (cert, key)
    }

    func configure(_ configuration: inout GatewayConfiguration) {
        configuration.host = "127.0.0.1"
        configuration.port = 0
        configuration.tlsCertFile = self.certFile
        configuration.tlsKeyFile = self.keyFile
    }
}

/// A gateway application running in this process on a free port, with TLS from `tls`.
struct RunningTLSGateway: Sendable {
    let port: Int
    let adminPort: Int?
    let reloader: TLSCertificateReloader?

    /// Runs the gateway (``buildGatewayApplication``), calls `body`, then shuts it down.
    static func with(
        authentication: GatewayAuthentication = .open,
        stored: (@Sendable (TestGateway) -> Void)? = nil,
        configure: (inout GatewayConfiguration) -> Void,
        reloader makeReloader: (GatewayConfiguration) throws -> TLSCertificateReloader? = { configuration in
            try TLSCertificateReloader(configuration: configuration, reloadOnSIGHUP: false, logger: quietLogger)
        },
        _ body: @Sendable (RunningTLSGateway) async throws -> Void
    ) async throws {
        let gateway = try await TestGateway.make(authentication: authentication, configure: configure)
        stored?(gateway)
        let reloader = try makeReloader(gateway.configuration)
        let (ports, continuation) = AsyncStream.makeStream(of: (String, Int).self)
        let app = buildGatewayApplication(
            configuration: gateway.configuration,
            wal: gateway.wal,
            registry: registry,
            authentication: authentication,
            logger: quietLogger,
            tls: reloader,
            onServerRunning: { channel in continuation.yield(("api", channel.localAddress?.port ?? 0)) },
            onAdminServerRunning: { channel in continuation.yield(("admin", channel.localAddress?.port ?? 0)) }
        )
        try await runServing(app, ports: ports, expecting: gateway.configuration.adminHost == nil ? 1 : 2) { found in
            try await body(RunningTLSGateway(port: found["api"] ?? 0, adminPort: found["admin"], reloader: reloader))
        }
    }
}

/// Runs `app` in a service group until `body` returns, once `expecting` listeners reported
/// their ports on `ports`.
func runServing(
    _ app: some ApplicationProtocol,
    ports: AsyncStream<(String, Int)>,
    expecting: Int,
    _ body: ([String: Int]) async throws -> Void
) async throws {
    let group = ServiceGroup(services: [app], logger: quietLogger)
    try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask { try await group.run() }
        var found: [String: Int] = [:]
        for await (name, port) in ports {
            found[name] = port
            if found.count == expecting { break }
        }
        do {
            try await body(found)
        } catch {
            await group.triggerGracefulShutdown()
            try? await tasks.waitForAll()
            throw error
        }
        await group.triggerGracefulShutdown()
        try await tasks.waitForAll()
    }
}

/// `openssl` (Debian's OpenSSL 3) run once, off the cooperative pool.
struct OpenSSL {
    struct Result: Sendable {
        var status: Int32
        var output: String
    }

    /// Runs `openssl arguments`, with `input` on standard input; standard output and error
    /// together in `output`. Killed after `timeout`.
    static func run(_ arguments: [String], input: String = "", timeout: Duration = .seconds(20)) async throws -> Result
    {
        let result = try await ChildProcess.run(
            "/usr/bin/openssl",
            arguments,
            input: input,
            errorsToOutput: true,
            timeout: timeout
        )
        return Result(status: result.status, output: result.standardOutput)
    }

    /// `openssl s_client` against 127.0.0.1:`port`, trusting `caFile`, with extra arguments.
    static func connect(port: Int, caFile: String, _ extra: [String], input: String = "") async throws -> Result {
        try await run(
            ["s_client", "-connect", "127.0.0.1:\(port)", "-servername", "localhost", "-CAfile", caFile] + extra,
            input: input
        )
    }

    /// The serial number (upper-case hex, no leading zero bytes) of the certificate the server
    /// at `port` presents to a new connection.
    static func servedSerial(port: Int, caFile: String) async throws -> String? {
        let result = try await connect(port: port, caFile: caFile, ["-showcerts"])
        guard let start = result.output.range(of: "-----BEGIN CERTIFICATE-----"),
            let end = result.output.range(
                of: "-----END CERTIFICATE-----",
                range: start.upperBound..<result.output.endIndex
            )
        else { return nil }
        let pem = String(result.output[start.lowerBound..<end.upperBound])
        let certificate = try NIOSSLCertificate(bytes: Array(pem.utf8), format: .pem)
        return normalizedSerial(certificate.serialNumber.map { String(format: "%02X", $0) }.joined())
    }

    static func normalizedSerial(_ hex: String) -> String {
        let trimmed = hex.uppercased().drop { $0 == "0" }
        return trimmed.isEmpty ? "0" : String(trimmed)
    }
}

/// A long-lived `openssl s_client -quiet` connection: requests written to its standard input,
/// the server's answers read from its standard output.
struct OpenSSLConnection: Sendable {
    private let child: ChildProcess

    init(port: Int, caFile: String, extra: [String] = []) throws {
        self.child = try ChildProcess(
            executable: "/usr/bin/openssl",
            ["s_client", "-connect", "127.0.0.1:\(port)", "-servername", "localhost", "-CAfile", caFile, "-quiet"]
                + extra,
            input: .pipe
        )
    }

    var text: String { self.child.standardOutput }

    /// Sends a GET for `path` on this connection and waits for the `count`-th answer.
    func get(_ path: String, answers count: Int, timeout: Duration = .seconds(20)) async throws -> String {
        try self.child.write("GET \(path) HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try await waitUntil(timeout: timeout) {
            self.text.components(separatedBy: "HTTP/1.1 ").count - 1 >= count
        }
        return self.text
    }

    func close() async {
        self.child.closeInput()
        _ = try? await self.child.stop(SIGKILL)
    }
}

/// The value of `sluice_tls_handshake_failures_total{reason}` in the shared registry.
func handshakeFailures(_ reason: String) -> Double {
    let text = String(decoding: registry.emitToBuffer(), as: UTF8.self)
    let prefix = "sluice_tls_handshake_failures_total{reason=\"\(reason)\"} "
    guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(prefix) }) else { return 0 }
    return Double(line.dropFirst(prefix.count)) ?? 0
}
