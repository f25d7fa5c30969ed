import ArgumentParser
import Foundation
import Gateway

/// `sluice tls …`: certificates for HTTPS and mutual TLS.
struct TLSCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tls",
        abstract: "Certificates for the gateway's HTTPS listener and mutual TLS.",
        subcommands: [SelfSignedCommand.self]
    )

    /// Writes a private CA with a server and a client certificate: enough to try HTTPS and
    /// mutual TLS, and what `sluice dev` and the tests use. Not for production.
    struct SelfSignedCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "self-signed",
            abstract: "Write a test CA, a server certificate and a client certificate (P-256).",
            discussion: """
                Writes ca.pem/ca.key (the CA), server.pem/server.key (for every --host, as \
                subject alternative names) and client.pem/client.key (SAN URI --client-uri), \
                all signed by the CA; every .key file is mode 0600. Use them as:
                  gateway.tls.cert_file: DIR/server.pem    gateway.tls.key_file: DIR/server.key
                  gateway.tls.client_ca_file: DIR/ca.pem   (mutual TLS)
                  curl --cacert DIR/ca.pem [--cert DIR/client.pem --key DIR/client.key] https://localhost:8080/healthz
                """
        )

        @Option(help: "The directory to write into (created when missing).")
        var out: String

        @Option(
            name: .customLong("host"),
            help:
                "A host name or IP address for the server certificate (repeatable; default localhost, 127.0.0.1, ::1)."
        )
        var hosts: [String] = []

        @Option(help: "The client certificate's identity, as a SAN URI.")
        var clientURI = "spiffe://sluice.local/client"

        func run() async throws {
            let hosts = self.hosts.isEmpty ? ["localhost", "127.0.0.1", "::1"] : self.hosts
            do {
                let bundle = try TLSSelfSigned.writeBundle(directory: self.out, hosts: hosts, clientURI: self.clientURI)
                print("wrote \(self.out)/ca.pem, ca.key, server.pem, server.key, client.pem, client.key")
                print("server certificate for \(hosts.joined(separator: ", ")), serial \(bundle.server.serial)")
                print("client certificate identity \(self.clientURI)")
            } catch {
                printError("sluice: \(describe(error))")
                throw ExitCode(1)
            }
        }
    }
}
