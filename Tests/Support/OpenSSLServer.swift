import Foundation
import LocalClickHouse
import SluiceTestKit

#if canImport(Glibc)
import Glibc
#endif

/// A TLS server that is no Kafka broker: `openssl s_server` with a certificate for `hosts`
/// from `sluice tls self-signed`, signed by a CA of its own (`ca`). The mock cluster speaks no
/// TLS, so the Kafka clients' TLS settings are tested against this: a handshake it completes
/// proves the client trusted it (Kafka's protocol then fails, which is fine).
public struct OpenSSLServer: Sendable {
    public let directory: TemporaryDirectory
    public let server: ChildProcess
    public let port: Int
    /// The CA that signed the server's certificate (PEM).
    public var ca: String { self.directory.path + "/ca.pem" }

    public static func start(hosts: [String]) async throws -> OpenSSLServer {
        let directory = try TemporaryDirectory()
        let made = try await ChildProcess.runSluice(
            ["tls", "self-signed", "--out", directory.path] + hosts.flatMap { ["--host", $0] }
        )
        guard made.status == 0 else { throw SluiceProcessError(description: "sluice tls: \(made.standardError)") }
        guard let port = try freeLoopbackPorts(1).first else {
            throw SluiceProcessError(description: "no free loopback port")
        }
        let server = try ChildProcess(
            executable: "openssl",
            [
                "s_server", "-accept", "127.0.0.1:\(port)", "-cert", directory.path + "/server.pem", "-key",
                directory.path + "/server.key", "-quiet",
            ]
        )
        // With -quiet s_server prints nothing until a client comes: wait for the port instead.
        try await waitUntil(timeout: .seconds(20)) { Self.accepts(port: port) }
        return OpenSSLServer(directory: directory, server: server, port: port)
    }

    /// A plain TCP connect to loopback: is anything listening on `port`?
    static func accepts(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        } == 0
    }
}
