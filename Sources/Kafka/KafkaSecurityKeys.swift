import SluiceCore

extension KafkaSecurity {
    /// The `kafka.security.*` keys (docs/configuration.md, docs/security.md "Kafka"); their
    /// defaults are this struct's. Secrets come from files only.
    package static let keys: [ConfigurationKey<KafkaSecurity>] = [
        .choice(
            "kafka.security.protocol",
            \.securityProtocol,
            expected: "plaintext, ssl, sasl_plaintext or sasl_ssl",
            lowercased: true,
            help: "plaintext, ssl, sasl_plaintext or sasl_ssl"
        ),
        .string("kafka.security.ca_file", \.caFile, help: "PEM CAs the brokers' certificates must chain to"),
        .string("kafka.security.certificate_file", \.certificateFile, help: "PEM client certificate (mutual TLS)"),
        .string("kafka.security.key_file", \.keyFile, help: "PEM private key of certificate_file (mode 0600)"),
        .string(
            "kafka.security.key_password_file",
            \.keyPasswordFile,
            help: "file holding key_file's passphrase (mode 0600)"
        ),
        .boolean(
            "kafka.security.verify_hostname",
            \.verifyHostname,
            help: "check the broker's name in its certificate"
        ),
        .boolean(
            "kafka.security.allow_insecure",
            \.allowInsecure,
            help: "consent to no verification, or a SASL password over plaintext"
        ),
        .string(
            "kafka.security.sasl.mechanism",
            \.saslMechanism,
            help: "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER"
        ),
        .string("kafka.security.sasl.username", \.saslUsername, help: "SASL user name"),
        .string(
            "kafka.security.sasl.password_file",
            \.saslPasswordFile,
            help: "file holding the SASL password (mode 0600)"
        ),
        .string(
            "kafka.security.sasl.oauthbearer.token_endpoint",
            \.oauthTokenEndpoint,
            help: "OAUTHBEARER: the OAuth 2.0 token endpoint (client credentials)"
        ),
        .string("kafka.security.sasl.oauthbearer.client_id", \.oauthClientID, help: "OAUTHBEARER: the client id"),
        .string(
            "kafka.security.sasl.oauthbearer.client_secret_file",
            \.oauthClientSecretFile,
            help: "OAUTHBEARER: file holding the client secret (mode 0600)"
        ),
        .string("kafka.security.sasl.oauthbearer.scope", \.oauthScope, help: "OAUTHBEARER: scopes to ask for"),
        .string(
            "kafka.security.sasl.oauthbearer.ca_file",
            \.oauthCAFile,
            help: "OAUTHBEARER: PEM CAs for the token endpoint"
        ),
    ]
}
