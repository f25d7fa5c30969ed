import CoreMetrics
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOSSL
import NIOTLS
import SwiftASN1
import Synchronization
import X509

/// The gateway's HTTP/1.1 channel (``GatewayHTTP1Channel``, with its ``HTTPRequestGuard``)
/// behind TLS: the TLS handler comes first in each connection's pipeline, then a
/// ``TLSConnectionObserver``, then everything the plain gateway has, so every guard (timeouts,
/// limits, the listening socket's ``ConnectionLimiter``) stays in force. The TLS handshake
/// counts as the start of the first request: `gateway.header_timeout` bounds the handshake and
/// the first request head together.
struct TLSGatewayChannel: ServerChildChannel, HTTPChannelHandler {
    typealias Value = GatewayHTTP1Channel.Value

    let base: GatewayHTTP1Channel
    let context: NIOSSLContext
    let observer: TLSConnectionObserver.Settings

    var responder: HTTPChannelHandler.Responder { self.base.responder }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let context = self.context
        let observer = self.observer
        return channel.eventLoop.makeCompletedFuture {
            let operations = channel.pipeline.syncOperations
            try operations.addHandler(NIOSSLServerHandler(context: context))
            try operations.addHandler(TLSConnectionObserver(settings: observer))
        }.flatMap {
            self.base.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Value, logger: Logger) async {
        await self.base.handle(value: value, logger: logger)
    }
}

/// The client certificate identities of the open mTLS connections, found by channel: a
/// request context reads its connection's identity here (``IngestRequestContext`` is built
/// off the event loop, where the TLS handler cannot be asked). An entry is added when a
/// handshake with a client certificate completes and removed when the connection closes;
/// the certificate is parsed once per connection.
enum TLSClientIdentities {
    private static let table = Mutex<[ObjectIdentifier: String]>([:])
    /// Entries in the table: with no mTLS connection open, a request costs one atomic load.
    private static let count = Atomic<Int>(0)

    static func identity(for channel: any Channel) -> String? {
        guard self.count.load(ordering: .relaxed) > 0 else { return nil }
        return self.table.withLock { $0[ObjectIdentifier(channel)] }
    }

    static func set(_ identity: String, for channel: any Channel) {
        let added = self.table.withLock { $0.updateValue(identity, forKey: ObjectIdentifier(channel)) == nil }
        if added { self.count.add(1, ordering: .relaxed) }
    }

    static func remove(_ channel: any Channel) {
        let removed = self.table.withLock { $0.removeValue(forKey: ObjectIdentifier(channel)) != nil }
        if removed { self.count.subtract(1, ordering: .relaxed) }
    }

    /// A certificate's identity: its first SAN URI (a SPIFFE id, say), else its first SAN DNS
    /// name, else its subject's common name; nil when it has none or does not parse.
    static func identity(of certificate: NIOSSLCertificate) -> String? {
        guard let parsed = try? Certificate(derEncoded: certificate.toDERBytes()) else { return nil }
        if let names = try? parsed.extensions.subjectAlternativeNames {
            for name in names {
                if case .uniformResourceIdentifier(let uri) = name { return uri }
            }
            for name in names {
                if case .dnsName(let dns) = name { return dns }
            }
        }
        for rdn in parsed.subject {
            for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
                if let text = String(attribute.value) { return text }
            }
        }
        return nil
    }
}

/// Watches one TLS connection, right after the TLS handler: counts handshake failures by
/// reason (`sluice_tls_handshake_failures_total{reason}`), and with mTLS records the client
/// certificate's identity once the handshake completes.
final class TLSConnectionObserver: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    struct Settings: Sendable {
        var readsClientCertificate: Bool
        var metrics: TLSHandshakeMetrics
        var logger: Logger
    }

    private let settings: Settings
    private var handshakeDone = false
    private var failureCounted = false

    init(settings: Settings) { self.settings = settings }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let tlsEvent = event as? TLSUserEvent, case .handshakeCompleted = tlsEvent {
            self.handshakeDone = true
            if self.settings.readsClientCertificate,
                let tls = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self),
                let certificate = tls.peerCertificate,
                let identity = TLSClientIdentities.identity(of: certificate)
            {
                TLSClientIdentities.set(identity, for: context.channel)
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !self.handshakeDone && !self.failureCounted {
            self.failureCounted = true
            let reason = TLSHandshakeMetrics.reason(for: error)
            self.settings.metrics.failed(reason)
            self.settings.logger.debug(
                "tls.handshake_failed",
                metadata: [
                    "reason": "\(reason)", "error.message": "\(error)",
                    "client.ip": "\(context.channel.remoteAddress?.ipAddress ?? "")",
                ]
            )
        }
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if self.settings.readsClientCertificate { TLSClientIdentities.remove(context.channel) }
        context.fireChannelInactive()
    }
}

@available(*, unavailable)
extension TLSConnectionObserver: Sendable {}

/// `sluice_tls_handshake_failures_total{reason}`, with a bounded set of reasons.
final class TLSHandshakeMetrics: Sendable {
    static let reasons = [
        "protocol_version", "no_shared_cipher", "not_tls", "no_client_certificate", "bad_client_certificate",
        "closed", "other",
    ]
    private let counters: [String: Counter]

    init() {
        var counters: [String: Counter] = [:]
        for reason in Self.reasons {
            counters[reason] = Counter(label: "sluice_tls_handshake_failures_total", dimensions: [("reason", reason)])
        }
        self.counters = counters
    }

    func failed(_ reason: String) { self.counters[reason]?.increment() }

    /// A bounded reason from BoringSSL's error text.
    static func reason(for error: any Error) -> String {
        if case .uncleanShutdown = error as? NIOSSLError { return "closed" }
        let text = "\(error)".uppercased()
        if text.contains("UNSUPPORTED_PROTOCOL") || text.contains("VERSION_TOO_LOW") { return "protocol_version" }
        if text.contains("HTTP_REQUEST") || text.contains("WRONG_VERSION_NUMBER") || text.contains("HTTPS_PROXY") {
            return "not_tls"
        }
        if text.contains("NO_SHARED_CIPHER") { return "no_shared_cipher" }
        if text.contains("PEER_DID_NOT_RETURN_A_CERTIFICATE") { return "no_client_certificate" }
        if text.contains("CERTIFICATE") || text.contains("KEY_USAGE") {
            return "bad_client_certificate"
        }
        return "other"
    }
}
