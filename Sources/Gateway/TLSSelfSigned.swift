import Crypto
import Foundation
import SwiftASN1
import X509

#if canImport(Glibc)
import Glibc
#endif

/// A certificate and its private key, in PEM.
public struct TLSCertificateMaterial: Sendable {
    public var certificatePEM: String
    public var privateKeyPEM: String
    /// Upper-case hex without separators (as `openssl x509 -serial` prints it).
    public var serial: String
}

/// A private CA and the certificates it signs (P-256, ECDSA with SHA-256), for tests,
/// `sluice dev` and trying HTTPS and mutual TLS without an existing PKI
/// (`sluice tls self-signed`). Not a production CA: its key sits in a file.
public enum TLSSelfSigned {
    /// What an issued certificate is for.
    public enum Usage: Sendable {
        /// A server certificate for these host names and IP addresses (subject alternative names).
        case server(hosts: [String])
        /// A client certificate whose identity is `uri` (a SAN URI, e.g. `spiffe://…`) when
        /// given, and the common name otherwise.
        case client(uri: String?)
    }

    /// A self-signed CA certificate (basic constraints CA, path length 0).
    public static func authority(
        commonName: String = "Sluice development CA",
        notValidBefore: Date = Date().addingTimeInterval(-3600),
        notValidAfter: Date = Date().addingTimeInterval(10 * 365 * 86400)
    ) throws -> TLSCertificateMaterial {
        let key = P256.Signing.PrivateKey()
        let publicKey = Certificate.PublicKey(key.publicKey)
        let name = try DistinguishedName {
            OrganizationName("Sluice")
            CommonName(commonName)
        }
        let serial = Certificate.SerialNumber()
        let certificate = try Certificate(
            version: .v3,
            serialNumber: serial,
            publicKey: publicKey,
            notValidBefore: notValidBefore,
            notValidAfter: notValidAfter,
            issuer: name,
            subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: publicKey)
            },
            issuerPrivateKey: Certificate.PrivateKey(key)
        )
        return TLSCertificateMaterial(
            certificatePEM: try certificate.serializeAsPEM().pemString,
            privateKeyPEM: key.pemRepresentation,
            serial: hex(serial)
        )
    }

    /// A certificate signed by `authority`.
    ///
    /// - Parameters:
    ///   - serial: the serial number's bytes; random (20 bytes) when nil.
    public static func issue(
        _ usage: Usage,
        commonName: String,
        by authority: TLSCertificateMaterial,
        serial: [UInt8]? = nil,
        notValidBefore: Date = Date().addingTimeInterval(-3600),
        notValidAfter: Date = Date().addingTimeInterval(825 * 86400)
    ) throws -> TLSCertificateMaterial {
        let caCertificate = try Certificate(pemEncoded: authority.certificatePEM)
        let caKey = try Certificate.PrivateKey(pemEncoded: authority.privateKeyPEM)
        let key = P256.Signing.PrivateKey()
        let publicKey = Certificate.PublicKey(key.publicKey)
        let serialNumber = serial.map { Certificate.SerialNumber(bytes: $0) } ?? Certificate.SerialNumber()
        var names: [GeneralName] = []
        let extendedUsage: ExtendedKeyUsage.Usage
        switch usage {
        case .server(let hosts):
            extendedUsage = .serverAuth
            for host in hosts {
                if let address = ipAddressBytes(host) {
                    names.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(address))))
                } else {
                    names.append(.dnsName(host))
                }
            }
        case .client(let uri):
            extendedUsage = .clientAuth
            if let uri { names.append(.uniformResourceIdentifier(uri)) }
        }
        let subject = try DistinguishedName {
            OrganizationName("Sluice")
            CommonName(commonName)
        }
        let authorityKeyID = try caCertificate.extensions.subjectKeyIdentifier?.keyIdentifier
        let certificate = try Certificate(
            version: .v3,
            serialNumber: serialNumber,
            publicKey: publicKey,
            notValidBefore: notValidBefore,
            notValidAfter: notValidAfter,
            issuer: caCertificate.subject,
            subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([extendedUsage])
                SubjectKeyIdentifier(hash: publicKey)
                if let authorityKeyID { AuthorityKeyIdentifier(keyIdentifier: authorityKeyID) }
                if !names.isEmpty { SubjectAlternativeNames(names) }
            },
            issuerPrivateKey: caKey
        )
        return TLSCertificateMaterial(
            certificatePEM: try certificate.serializeAsPEM().pemString,
            privateKeyPEM: key.pemRepresentation,
            serial: hex(serialNumber)
        )
    }

    /// The files `sluice tls self-signed` writes into `directory`.
    public struct Bundle: Sendable {
        public var ca: TLSCertificateMaterial
        public var server: TLSCertificateMaterial
        public var client: TLSCertificateMaterial
    }

    /// Writes `ca.pem`, `ca.key`, `server.pem`, `server.key`, `client.pem` and `client.key` into
    /// `directory` (created when missing); every `.key` file is mode 0600.
    @discardableResult
    public static func writeBundle(
        directory: String,
        hosts: [String],
        clientURI: String = "spiffe://sluice.local/client"
    ) throws -> Bundle {
        let ca = try authority()
        let server = try issue(.server(hosts: hosts), commonName: hosts.first ?? "localhost", by: ca)
        let client = try issue(.client(uri: clientURI), commonName: "sluice client", by: ca)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try write(ca.certificatePEM, to: directory + "/ca.pem", mode: 0o644)
        try write(ca.privateKeyPEM, to: directory + "/ca.key", mode: 0o600)
        try write(server.certificatePEM, to: directory + "/server.pem", mode: 0o644)
        try write(server.privateKeyPEM, to: directory + "/server.key", mode: 0o600)
        try write(client.certificatePEM, to: directory + "/client.pem", mode: 0o644)
        try write(client.privateKeyPEM, to: directory + "/client.key", mode: 0o600)
        return Bundle(ca: ca, server: server, client: client)
    }

    /// Writes `text` to `path` with `mode` (also when the file existed with another mode).
    public static func write(_ text: String, to path: String, mode: mode_t) throws {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard descriptor >= 0 else {
            throw TLSConfigurationError("unwritable", "cannot write \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(descriptor) }
        guard fchmod(descriptor, mode) == 0 else {
            throw TLSConfigurationError(
                "unwritable",
                "cannot set the mode of \(path): \(String(cString: strerror(errno)))"
            )
        }
        let bytes = Array(text.utf8)
        var written = 0
        while written < bytes.count {
            let count = bytes[written...].withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
            guard count > 0 else {
                throw TLSConfigurationError("unwritable", "cannot write \(path): \(String(cString: strerror(errno)))")
            }
            written += count
        }
    }

    static func hex(_ serial: Certificate.SerialNumber) -> String {
        serial.bytes.map { String(format: "%02X", $0) }.joined()
    }

    /// The 4 or 16 bytes of an IPv4 or IPv6 address in text form; nil for a host name.
    static func ipAddressBytes(_ text: String) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: 16)
        if inet_pton(AF_INET, text, &bytes) == 1 { return Array(bytes.prefix(4)) }
        if inet_pton(AF_INET6, text, &bytes) == 1 { return bytes }
        return nil
    }
}
