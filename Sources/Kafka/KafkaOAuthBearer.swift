import CoreMetrics
import Crdkafka
import Logging
import Synchronization

/// An access token for SASL/OAUTHBEARER, as a token source hands it to librdkafka.
package struct OAuthBearerToken: Sendable {
    package var value: String
    /// When it expires, in milliseconds since the Unix epoch.
    package var expiresAtMilliseconds: Int64
    /// The principal the broker will see (the token's `sub`, or the client id).
    package var principal: String

    package init(value: String, expiresAtMilliseconds: Int64, principal: String) {
        self.value = value
        self.expiresAtMilliseconds = expiresAtMilliseconds
        self.principal = principal
    }
}

/// SASL/OAUTHBEARER with the token refresh driven by Sluice.
///
/// Debian's librdkafka 2.0.2 is built without libcurl, so its own OIDC client
/// (`sasl.oauthbearer.method=oidc`) is missing. Instead, every Kafka client of a process whose
/// properties say `sasl.mechanisms=OAUTHBEARER` gets a refresh callback that runs on
/// librdkafka's background thread (the SASL queue, so no poll loop of ours has to serve it):
/// it asks the process's token source — the client-credentials grant against
/// `kafka.security.sasl.oauthbearer.token_endpoint`, registered when the settings are read —
/// and hands librdkafka the token, or the failure, which librdkafka retries. librdkafka calls
/// again at 80 % of the token's lifetime.
///
/// One token source per process: a process has one Kafka configuration.
package enum KafkaOAuthBearer {
    /// What the latest refresh did; for tests and `/readyz`-style reporting.
    package struct Status: Sendable, Equatable {
        package var refreshes = 0
        package var failures = 0
        /// The latest token's expiry (ms since the epoch) and principal; nil before one.
        package var expiresAtMilliseconds: Int64?
        package var principal: String?
        /// The latest failure's reason (never a secret); nil after a success.
        package var lastError: String?
    }

    private static let source = Mutex<(@Sendable () throws -> OAuthBearerToken)?>(nil)
    private static let state = Mutex(Status())
    private static let logger = Logger(label: "sluice.kafka.oauthbearer")

    /// Makes `fetch` the token source of every OAUTHBEARER client this process creates. It
    /// runs on librdkafka's background thread and may block (a bounded HTTP request); its
    /// errors' descriptions are logged and passed to librdkafka, so they must carry no secret.
    package static func register(_ fetch: @escaping @Sendable () throws -> OAuthBearerToken) {
        self.source.withLock { $0 = fetch }
    }

    package static var status: Status { self.state.withLock { $0 } }

    /// Installs the refresh callback on `conf` when `properties` ask for OAUTHBEARER.
    static func prepare(_ conf: OpaquePointer, properties: [String: String]) -> Bool {
        guard properties["sasl.mechanisms"]?.uppercased() == "OAUTHBEARER" else { return false }
        rd_kafka_conf_enable_sasl_queue(conf, 1)
        rd_kafka_conf_set_oauthbearer_token_refresh_cb(conf, refresh)
        return true
    }

    /// Lets the callback run on librdkafka's background thread for the client `handle`.
    static func start(_ handle: OpaquePointer) throws(KafkaError) {
        if let error = rd_kafka_sasl_background_callbacks_enable(handle) {
            let message = String(cString: rd_kafka_error_string(error))
            rd_kafka_error_destroy(error)
            throw KafkaError(.failed, "enabling the OAUTHBEARER token refresh: \(message)")
        }
    }

    private static let refresh:
        @convention(c) (OpaquePointer?, UnsafePointer<CChar>?, UnsafeMutableRawPointer?) -> Void =
            { handle, _, _ in
                guard let handle else { return }
                KafkaOAuthBearer.refresh(handle)
            }

    private static func refresh(_ handle: OpaquePointer) {
        let metrics = (
            ok: Counter(label: "sluice_kafka_oauthbearer_refreshes_total", dimensions: [("outcome", "ok")]),
            failed: Counter(label: "sluice_kafka_oauthbearer_refreshes_total", dimensions: [("outcome", "failed")]),
            expiry: Gauge(label: "sluice_kafka_oauthbearer_token_expiry_seconds")
        )
        func fail(_ reason: String) {
            rd_kafka_oauthbearer_set_token_failure(handle, reason)
            metrics.failed.increment()
            self.state.withLock {
                $0.failures += 1
                $0.lastError = reason
            }
            self.logger.error("kafka.oauthbearer_refresh_failed", metadata: ["error": "\(reason)"])
        }
        guard let fetch = self.source.withLock({ $0 }) else {
            fail("no OAUTHBEARER token source: set kafka.security.sasl.oauthbearer.token_endpoint and its client")
            return
        }
        let token: OAuthBearerToken
        do {
            token = try fetch()
        } catch {
            fail("getting a token: \(error)")
            return
        }
        var errorBuffer = [CChar](repeating: 0, count: 512)
        let result = rd_kafka_oauthbearer_set_token(
            handle,
            token.value,
            token.expiresAtMilliseconds,
            token.principal,
            nil,
            0,
            &errorBuffer,
            errorBuffer.count
        )
        guard result == RD_KAFKA_RESP_ERR_NO_ERROR else {
            fail(
                "librdkafka refused the token: "
                    + String(decoding: errorBuffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            )
            return
        }
        metrics.ok.increment()
        metrics.expiry.record(Double(token.expiresAtMilliseconds) / 1000)
        self.state.withLock {
            $0.refreshes += 1
            $0.expiresAtMilliseconds = token.expiresAtMilliseconds
            $0.principal = token.principal
            $0.lastError = nil
        }
        self.logger.info(
            "kafka.oauthbearer_token_set",
            metadata: [
                "kafka.principal": "\(token.principal)", "kafka.token_expires_ms": "\(token.expiresAtMilliseconds)",
            ]
        )
    }
}
