import Crypto
import Foundation
import SwiftASN1
import X509

/// A throwaway certificate authority and a server certificate for `localhost`, so that the
/// JWKS tests fetch over real HTTPS with verification on, trusting only this CA (`ca_file`).
struct TestPKI {
    /// The CA certificate, PEM.
    let caPEM: String
    /// The server's certificate (`DNS:localhost`), PEM.
    let serverCertificatePEM: String
    /// The server's P-256 private key, PEM.
    let serverKeyPEM: String

    init(commonName: String = "Sluice JWKS test CA") throws {
        let now = Date()
        let caKey = P256.Signing.PrivateKey()
        let caName = try DistinguishedName { CommonName(commonName) }
        let ca = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: Certificate.PublicKey(caKey.publicKey),
            notValidBefore: now - 3600,
            notValidAfter: now + 86400,
            issuer: caName,
            subject: caName,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
            },
            issuerPrivateKey: Certificate.PrivateKey(caKey)
        )
        let serverKey = P256.Signing.PrivateKey()
        let server = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: Certificate.PublicKey(serverKey.publicKey),
            notValidBefore: now - 3600,
            notValidAfter: now + 86400,
            issuer: caName,
            subject: try DistinguishedName { CommonName("localhost") },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth])
                SubjectAlternativeNames([.dnsName("localhost")])
            },
            issuerPrivateKey: Certificate.PrivateKey(caKey)
        )
        self.caPEM = try ca.serializeAsPEM().pemString
        self.serverCertificatePEM = try server.serializeAsPEM().pemString
        self.serverKeyPEM = serverKey.pemRepresentation
    }
}
