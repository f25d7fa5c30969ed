import EventModel
import SluiceCore

extension GatewayConfiguration {
    /// The `gateway.*` keys (docs/configuration.md); their defaults are this struct's.
    package static let keys: [ConfigurationKey<GatewayConfiguration>] = [
        ConfigurationKey(
            path: "gateway.listen",
            kind: .string,
            help: "HOST:PORT to listen on",
            read: { ConfigurationValue.text(host: $0.host, port: $0.port) },
            apply: { configuration, value, _ in
                (configuration.host, configuration.port) = try value.listenAddress()
            }
        ),
        ConfigurationKey(
            path: "gateway.gateway_id",
            kind: .string,
            help: "written into events as gateway_id",
            computedDefault: "the host name",
            read: { $0.gatewayID },
            apply: { configuration, value, _ in configuration.gatewayID = value.text }
        ),
        .integer(
            "gateway.max_body_bytes",
            \.maxBodyBytes,
            range: 1024...(1 << 30),
            help: "largest body, also after decompression"
        ),
        .integer(
            "gateway.max_batch_events",
            \.maxBatchEvents,
            range: 1...1_000_000,
            help: "most events in one request"
        ),
        .list("gateway.trusted_proxies", \.trustedProxies, help: "peers whose X-Forwarded-For is believed"),
        .list("gateway.cors_allowed_origins", \.corsAllowedOrigins, help: "browser origins allowed (* for any)"),
        .boolean("gateway.demo_page", \.demoPage, help: "serve /demo, a page that sends through the tracker"),
        .duration("gateway.append_timeout", \.appendTimeout, help: "answer 503 if the WAL takes longer"),
        .integer(
            "gateway.background_niceness",
            \.backgroundNiceness,
            range: 0...19,
            help: "nice value added to the forwarder's and loader's threads in the gateway's process (0: none)"
        ),
        .duration(
            "gateway.shutdown_delay",
            \.shutdownDelay,
            help: "at a graceful stop, answer 503 (readyz too) this long before the listener closes"
        ),
        .duration(
            "gateway.idle_timeout",
            \.idleTimeout,
            help: "close a connection that waits this long for its next request"
        ),
        .duration(
            "gateway.header_timeout",
            \.headerTimeout,
            help: "408 when a request's headers take longer from its first byte"
        ),
        .duration(
            "gateway.body_timeout",
            \.bodyTimeout,
            help: "408 when a request's whole body takes longer after its headers"
        ),
        .integer(
            "gateway.max_connections",
            \.maxConnections,
            range: 1...1_000_000,
            help: "most open client connections; more wait in the backlog (capped by the fd limit)"
        ),
        .string(
            "gateway.tls.cert_file",
            \.tlsCertFile,
            emptyIsNone: true,
            help: "PEM certificate chain: turns on HTTPS"
        ),
        .string(
            "gateway.tls.key_file",
            \.tlsKeyFile,
            emptyIsNone: true,
            help: "PEM private key of cert_file (mode 0600)"
        ),
        .string(
            "gateway.tls.client_ca_file",
            \.tlsClientCAFile,
            emptyIsNone: true,
            help: "PEM CAs client certificates must chain to (mutual TLS)"
        ),
        .choice(
            "gateway.tls.client_auth",
            \.tlsClientAuth,
            expected: "none, optional or require",
            lowercased: true,
            help: "client certificates: none, optional, require"
        ),
        .duration(
            "gateway.tls.reload_interval",
            \.tlsReloadInterval,
            atLeast: .milliseconds(10),
            help: "how often the certificate files are checked for a change"
        ),
        ConfigurationKey(
            path: "gateway.admin_listen",
            kind: .string,
            help: "HOST:PORT serving /healthz, /readyz, /metrics instead of the API listener",
            read: { configuration in
                configuration.adminHost.map { ConfigurationValue.text(host: $0, port: configuration.adminPort) }
            },
            apply: { configuration, value, _ in
                guard !value.text.isEmpty else {
                    configuration.adminHost = nil
                    return
                }
                let (host, port) = try value.listenAddress()
                configuration.adminHost = host
                configuration.adminPort = port
            }
        ),
        .integer(
            "gateway.properties_max_bytes",
            \.limits.maxPropertiesBytes,
            range: 2...(1 << 24),
            help: "largest properties object"
        ),
        // The event model counts in milliseconds; the key takes a duration (whole seconds).
        ConfigurationKey(
            path: "gateway.timestamp_max_future",
            kind: .duration,
            help: "how far ahead timestamps may be",
            read: { ConfigurationValue.text(of: .milliseconds($0.limits.maxFutureMillis)) },
            apply: { configuration, value, key in
                configuration.limits.maxFutureMillis = try value.duration(key.path).components.seconds * 1000
            }
        ),
        ConfigurationKey(
            path: "gateway.timestamp_max_past",
            kind: .duration,
            help: "how far back timestamps may be",
            read: { ConfigurationValue.text(of: .milliseconds($0.limits.maxPastMillis)) },
            apply: { configuration, value, key in
                configuration.limits.maxPastMillis = try value.duration(key.path).components.seconds * 1000
            }
        ),
        .choice(
            "gateway.privacy.client_ip",
            \.clientIPPolicy,
            expected: "keep, truncate or drop",
            lowercased: true,
            help: "what events store of the client address: keep, truncate (/24, /48), drop"
        ),
    ]
}
