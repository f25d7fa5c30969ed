import Crdkafka
import SluiceCore

#if canImport(Glibc)
import Glibc
#endif

/// How Sluice's Kafka clients (forwarder, loader, offset tools) protect their connections:
/// TLS with server verification and optional client certificates, and SASL — stated by named
/// keys (`kafka.security.*`) rather than raw librdkafka properties, so that start-up can refuse
/// what would silently weaken it (docs/security.md, "Kafka").
public struct KafkaSecurity: Sendable, Equatable {
    public enum SecurityProtocol: String, Sendable, CaseIterable {
        case plaintext, ssl
        case saslPlaintext = "sasl_plaintext"
        case saslSSL = "sasl_ssl"

        var usesTLS: Bool { self == .ssl || self == .saslSSL }
        var usesSASL: Bool { self == .saslPlaintext || self == .saslSSL }
    }

    public var securityProtocol: SecurityProtocol = .plaintext
    /// PEM CAs the brokers' certificates must chain to; nil: the system's.
    public var caFile: String?
    /// PEM client certificate and its key, for brokers that verify clients (mTLS).
    public var certificateFile: String?
    public var keyFile: String?
    /// File holding the client key's passphrase (mode 0600).
    public var keyPasswordFile: String?
    /// Check that the broker's certificate names the host connected to. Turning it off needs
    /// ``allowInsecure``.
    public var verifyHostname = true
    /// The explicit consent to a weaker setup: no host name or certificate verification, or
    /// a SASL password sent over plaintext.
    public var allowInsecure = false
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    public var saslMechanism: String?
    public var saslUsername: String?
    /// File holding the SASL password (mode 0600).
    public var saslPasswordFile: String?
    /// OAUTHBEARER: the OAuth 2.0 token endpoint Sluice gets tokens from with the
    /// client-credentials grant (the built-in server's `/oauth/token`, Keycloak, Entra ID, …).
    public var oauthTokenEndpoint: String?
    public var oauthClientID: String?
    /// File holding the client secret (mode 0600).
    public var oauthClientSecretFile: String?
    /// Scopes to ask for, space-separated; nil: the client's default.
    public var oauthScope: String?
    /// PEM CAs the token endpoint's certificate must chain to; nil: the system's.
    public var oauthCAFile: String?

    public init() {}

    /// The named settings over `raw`, refusing a property set both ways and a weakening asked
    /// for by a raw property without `allow_insecure`.
    private static func merge(
        _ named: [String: (key: String, value: String)],
        into raw: [String: String],
        allowInsecure: Bool
    ) throws(KafkaError) -> [String: String] {
        func refuse(_ message: String) -> KafkaError { KafkaError(.invalidArgument, message) }
        var merged = raw
        for (property, entry) in named {
            if let other = raw[property], other != entry.value {
                throw refuse("\(entry.key) and kafka.properties.\(property) both set it: keep one")
            }
            merged[property] = entry.value
        }
        // Weakening is refused whichever way it was asked for.
        let verificationOff = merged["enable.ssl.certificate.verification"]?.lowercased() == "false"
        let hostnameOff = merged["ssl.endpoint.identification.algorithm"]?.lowercased() == "none"
        if (verificationOff || hostnameOff) && !allowInsecure {
            throw refuse(
                verificationOff
                    ? "kafka.properties.enable.ssl.certificate.verification=false turns off broker certificate checks: set kafka.security.allow_insecure to mean it"
                    : "turning off the broker host name check (kafka.security.verify_hostname=false or ssl.endpoint.identification.algorithm=none) needs kafka.security.allow_insecure"
            )
        }
        try Self.librarySupports(merged)
        return merged
    }

    /// OAUTHBEARER needs the token endpoint and its client, a bearer token is not sent over
    /// plaintext unasked, and librdkafka's own OIDC (missing from Debian's build) is not asked
    /// for behind Sluice's back.
    private func checkOAuthBearer() throws(KafkaError) {
        func refuse(_ message: String) -> KafkaError { KafkaError(.invalidArgument, message) }
        guard let endpoint = self.oauthTokenEndpoint, self.oauthClientID != nil,
            let secretFile = self.oauthClientSecretFile
        else {
            throw refuse(
                "SASL OAUTHBEARER needs kafka.security.sasl.oauthbearer.token_endpoint, .client_id and .client_secret_file"
            )
        }
        guard endpoint.hasPrefix("https://") || (endpoint.hasPrefix("http://") && self.allowInsecure) else {
            throw refuse(
                "kafka.security.sasl.oauthbearer.token_endpoint must be an https:// URL (http:// sends the client secret in clear: set kafka.security.allow_insecure to mean it)"
            )
        }
        do {
            try SecretFile.ownerOnly(
                secretFile,
                key: "kafka.security.sasl.oauthbearer.client_secret_file",
                origin: "kafka"
            )
        } catch {
            throw refuse(error.description)
        }
        if self.securityProtocol == .saslPlaintext && !self.allowInsecure {
            throw refuse(
                "SASL OAUTHBEARER over sasl_plaintext sends the bearer token in clear: use sasl_ssl, or set kafka.security.allow_insecure"
            )
        }
    }

    static let mechanisms = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]

    /// The OAUTHBEARER client, when that is the mechanism; its secret is read (and its file
    /// checked) by ``properties(merging:)``.
    public var usesOAuthBearer: Bool {
        self.securityProtocol.usesSASL && self.saslMechanism?.uppercased() == "OAUTHBEARER"
    }

    /// `raw` (the `kafka.properties.*` passed through) with the named settings added, after
    /// refusing what would weaken the connection unasked, a property set both ways, a key file
    /// others can read, and what this librdkafka cannot do. Errors name keys and files, never
    /// a secret.
    public func properties(merging raw: [String: String]) throws(KafkaError) -> [String: String] {
        func refuse(_ message: String) -> KafkaError { KafkaError(.invalidArgument, message) }
        var named: [String: (key: String, value: String)] = [:]
        func set(_ property: String, _ value: String, from key: String) {
            named[property] = (key, value)
        }
        if self.securityProtocol != .plaintext {
            set("security.protocol", self.securityProtocol.rawValue, from: "kafka.security.protocol")
        }
        let tlsKeys: [(String, String?)] = [
            ("kafka.security.ca_file", self.caFile), ("kafka.security.certificate_file", self.certificateFile),
            ("kafka.security.key_file", self.keyFile), ("kafka.security.key_password_file", self.keyPasswordFile),
        ]
        if !self.securityProtocol.usesTLS, let (key, _) = tlsKeys.first(where: { $0.1 != nil }) {
            throw refuse("\(key) needs kafka.security.protocol ssl or sasl_ssl")
        }
        if let caFile = self.caFile { set("ssl.ca.location", caFile, from: "kafka.security.ca_file") }
        if (self.certificateFile == nil) != (self.keyFile == nil) {
            throw refuse("kafka.security.certificate_file and kafka.security.key_file go together")
        }
        if let certificate = self.certificateFile, let key = self.keyFile {
            do { try SecretFile.ownerOnly(key, key: "kafka.security.key_file", origin: "kafka") } catch {
                throw refuse(error.description)
            }
            set("ssl.certificate.location", certificate, from: "kafka.security.certificate_file")
            set("ssl.key.location", key, from: "kafka.security.key_file")
        }
        if let file = self.keyPasswordFile {
            let password: String
            do { password = try SecretFile.read(file, key: "kafka.security.key_password_file", origin: "kafka") } catch
            {
                throw refuse(error.description)
            }
            set("ssl.key.password", password, from: "kafka.security.key_password_file")
        }
        if !self.verifyHostname {
            set("ssl.endpoint.identification.algorithm", "none", from: "kafka.security.verify_hostname")
        } else if self.securityProtocol.usesTLS {
            set("ssl.endpoint.identification.algorithm", "https", from: "kafka.security.verify_hostname")
        }
        let saslKeys: [(String, String?)] = [
            ("kafka.security.sasl.mechanism", self.saslMechanism), ("kafka.security.sasl.username", self.saslUsername),
            ("kafka.security.sasl.password_file", self.saslPasswordFile),
            ("kafka.security.sasl.oauthbearer.token_endpoint", self.oauthTokenEndpoint),
            ("kafka.security.sasl.oauthbearer.client_id", self.oauthClientID),
            ("kafka.security.sasl.oauthbearer.client_secret_file", self.oauthClientSecretFile),
        ]
        if !self.securityProtocol.usesSASL, let (key, _) = saslKeys.first(where: { $0.1 != nil }) {
            throw refuse("\(key) needs kafka.security.protocol sasl_plaintext or sasl_ssl")
        }
        if self.securityProtocol.usesSASL {
            guard let mechanism = self.saslMechanism?.uppercased() else {
                throw refuse(
                    "kafka.security.protocol \(self.securityProtocol.rawValue) needs kafka.security.sasl.mechanism"
                )
            }
            guard Self.mechanisms.contains(mechanism) else {
                throw refuse(
                    "kafka.security.sasl.mechanism \(mechanism) is not one Sluice drives: \(Self.mechanisms.joined(separator: ", "))"
                )
            }
            if mechanism == "OAUTHBEARER" {
                try self.checkOAuthBearer()
                set("sasl.mechanisms", mechanism, from: "kafka.security.sasl.mechanism")
                return try Self.merge(named, into: raw, allowInsecure: self.allowInsecure)
            }
            guard let username = self.saslUsername, let file = self.saslPasswordFile else {
                throw refuse(
                    "SASL \(mechanism) needs kafka.security.sasl.username and kafka.security.sasl.password_file"
                )
            }
            let password: String
            do { password = try SecretFile.read(file, key: "kafka.security.sasl.password_file", origin: "kafka") } catch
            {
                throw refuse(error.description)
            }
            if self.securityProtocol == .saslPlaintext && mechanism == "PLAIN" && !self.allowInsecure {
                throw refuse(
                    "SASL PLAIN over sasl_plaintext sends the password in clear: use sasl_ssl, or set kafka.security.allow_insecure"
                )
            }
            set("sasl.mechanisms", mechanism, from: "kafka.security.sasl.mechanism")
            set("sasl.username", username, from: "kafka.security.sasl.username")
            set("sasl.password", password, from: "kafka.security.sasl.password_file")
        }
        return try Self.merge(named, into: raw, allowInsecure: self.allowInsecure)
    }

    /// Whether this librdkafka accepts the security properties (Debian's 2.0.2 is built with
    /// TLS and SASL; a build without them refuses `security.protocol=ssl` here, at start,
    /// instead of at the first connection).
    static func librarySupports(_ properties: [String: String]) throws(KafkaError) {
        guard let conf = rd_kafka_conf_new() else { throw KafkaError(.failed, "librdkafka: no configuration") }
        defer { rd_kafka_conf_destroy(conf) }
        var errorBuffer = [CChar](repeating: 0, count: 512)
        for key in ["security.protocol", "sasl.mechanisms"] {
            guard let value = properties[key] else { continue }
            guard rd_kafka_conf_set(conf, key, value, &errorBuffer, errorBuffer.count) == RD_KAFKA_CONF_OK else {
                let reason = String(
                    decoding: errorBuffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) },
                    as: UTF8.self
                )
                throw KafkaError(.invalidArgument, "this librdkafka cannot do \(key)=\(value): \(reason)")
            }
        }
    }
}
