import EventModel

#if canImport(Glibc)
import Glibc
#endif

/// Settings of the HTTP ingest API.
public struct GatewayConfiguration: Sendable {
    /// Address to listen on. Default: 127.0.0.1.
    public var host = "127.0.0.1"
    /// Port to listen on; 0 picks a free one. Default: 8080.
    public var port = 8080
    /// Written into every event as `gateway_id`. Default: the host name.
    public var gatewayID = GatewayConfiguration.hostName()
    /// Largest request body, compressed or not (checked again after decompression). Default: 5 MiB.
    public var maxBodyBytes = 5 << 20
    /// Most events in one batch request. Default: 1000.
    public var maxBatchEvents = 1000
    /// Field limits and timestamp bounds.
    public var limits = EventLimits()
    /// Peers whose `X-Forwarded-For` is believed: exact addresses or IPv4 CIDR blocks. Default: none.
    public var trustedProxies: [String] = []
    /// Origins allowed by CORS; `*` allows any. Default: none (no CORS headers).
    public var corsAllowedOrigins: [String] = []
    /// Serve `/demo`, a page of marked objects that sends through the tracker (docs/tracker.md).
    /// `sluice dev` turns it on. Default: false.
    public var demoPage = false
    /// Longest a request waits for its WAL append before answering 503. Default: 150 ms,
    /// inside the 200 ms acknowledgement contract.
    public var appendTimeout: Duration = .milliseconds(150)
    /// How much lower the priority (the nice value added) of the forwarder's, the loader's
    /// and the ledger followers' threads is than the answering threads', in a process that
    /// runs the gateway: under contention the acknowledgements go first. 0 runs them alike.
    /// Default: 10.
    public var backgroundNiceness = 10
    /// `Retry-After` seconds on 503. Default: 1.
    public var retryAfterSeconds = 1
    /// At a graceful stop (SIGTERM, SIGINT), how long the API keeps listening while `/readyz`
    /// and every new request answer 503 (``StopGate``), so that balancers take the gateway out
    /// before its listener closes. Default: 0 s (set it to the balancer's health-check
    /// interval × its fall count; Kubernetes: a few seconds, for endpoint propagation).
    public var shutdownDelay: Duration = .zero
    /// Longest a connection may wait for the first byte of its next request (a keep-alive
    /// connection between requests, or a new one) before it is closed without an answer.
    /// Default: 75 s, longer than the 60 s idle timeout of common load balancers, so that they
    /// close first and never send a request into a connection the gateway is closing.
    public var idleTimeout: Duration = .seconds(75)
    /// Longest from the first byte of a request to the end of its header section; then 408
    /// and the connection is closed. Default: 10 s.
    public var headerTimeout: Duration = .seconds(10)
    /// Longest from the end of the header section to the end of the body, however steadily
    /// the bytes arrive; then 408, nothing is stored and the connection is closed. Default: 60 s
    /// (a 5 MiB body at 700 kbit/s).
    public var bodyTimeout: Duration = .seconds(60)
    /// Most client connections open at once. At the limit the gateway stops accepting, and
    /// new connections wait in the kernel's listen backlog until one closes. Lowered at start
    /// to fit the process's descriptor limit (see ``ConnectionLimiter``). Default: 10,000.
    public var maxConnections = 10_000
    /// PEM certificate chain (the server's certificate first, then its intermediates) that
    /// turns on HTTPS for the API listener, with ``tlsKeyFile``. Without it the gateway speaks
    /// plain HTTP, and warns at start unless it listens on loopback. Reloaded without a
    /// restart (SIGHUP, file watch). Default: none.
    public var tlsCertFile: String?
    /// PEM private key of ``tlsCertFile``'s first certificate; must not be readable by group or
    /// others. Default: none.
    public var tlsKeyFile: String?
    /// PEM CA certificates that client certificates must chain to (mutual TLS); needed when
    /// ``tlsClientAuth`` is not `none`. Read at start only. Default: none.
    public var tlsClientCAFile: String?
    /// Whether clients must, may or need not present a certificate. Default: `none`.
    public var tlsClientAuth: TLSClientAuth = .none
    /// How often the certificate and key files are checked for a change (modification time,
    /// inode, size) and reloaded. Default: 10 s.
    public var tlsReloadInterval: Duration = .seconds(10)
    /// Where `/healthz`, `/readyz` and `/metrics` are served instead of the API listener
    /// (plain HTTP, meant for a private network): host and port. Default: nil, the API
    /// listener serves them.
    public var adminHost: String?
    /// Port of the admin listener; 0 picks a free one. Used only with ``adminHost``.
    public var adminPort = 0
    /// What stored events keep of the client's address. Default: `keep`.
    public var clientIPPolicy: ClientIPPolicy = .keep

    /// HTTPS is configured for the API listener.
    public var tlsEnabled: Bool { self.tlsCertFile != nil || self.tlsKeyFile != nil }

    /// Whether `host` is a loopback address (127.0.0.0/8, ::1, localhost), where plain HTTP
    /// cannot be read off a network.
    public static func isLoopback(_ host: String) -> Bool {
        let host = host.lowercased()
        if host == "localhost" || host == "::1" || host == "[::1]" || host == "0:0:0:0:0:0:0:1" { return true }
        if let address = TrustedProxies.ipv4(host) { return address >> 24 == 127 }
        return false
    }

    public init() {}

    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return "sluice" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Throws a message naming the setting when a value cannot work.
    public func validate() throws {
        func fail(_ message: String) -> GatewayConfigurationError { GatewayConfigurationError(message: message) }
        guard (0...65535).contains(self.port) else { throw fail("port \(self.port) is not 0-65535") }
        guard self.maxBodyBytes >= 1024 else { throw fail("max body bytes \(self.maxBodyBytes) is below 1024") }
        guard self.maxBatchEvents >= 1 else { throw fail("max batch events must be at least 1") }
        guard self.appendTimeout > .zero else { throw fail("append timeout must be positive") }
        guard self.idleTimeout > .zero else { throw fail("idle timeout must be positive") }
        guard self.headerTimeout > .zero else { throw fail("header timeout must be positive") }
        guard self.bodyTimeout > .zero else { throw fail("body timeout must be positive") }
        guard self.maxConnections >= 1 else { throw fail("max connections must be at least 1") }
        for proxy in self.trustedProxies where TrustedProxies.parse(proxy) == nil {
            throw fail("trusted proxy '\(proxy)' is neither an IP address nor an IPv4 CIDR block")
        }
        try self.validateTLS()
    }

    /// The TLS settings: both files or neither, the files readable and private, the key
    /// matching the certificate, a CA file for mutual TLS.
    func validateTLS() throws {
        func fail(_ message: String) -> GatewayConfigurationError { GatewayConfigurationError(message: message) }
        if let host = self.adminHost {
            guard (0...65535).contains(self.adminPort) else {
                throw fail("admin port \(self.adminPort) is not 0-65535")
            }
            if host == self.host && self.adminPort == self.port && self.port != 0 {
                throw fail(
                    "gateway.admin_listen \(host):\(self.adminPort) is the API listener's address; choose another port"
                )
            }
        }
        guard self.tlsReloadInterval >= .milliseconds(10) else {
            throw fail("gateway.tls.reload_interval must be at least 10ms")
        }
        switch (self.tlsCertFile, self.tlsKeyFile) {
        case (nil, nil):
            if self.tlsClientAuth != .none {
                throw fail(
                    "gateway.tls.client_auth \(self.tlsClientAuth.rawValue) needs HTTPS: set gateway.tls.cert_file and gateway.tls.key_file"
                )
            }
            return
        case (.some(let cert), nil):
            throw fail(
                "gateway.tls.cert_file \(cert) is set without gateway.tls.key_file; set both, or neither for plain HTTP"
            )
        case (nil, .some(let key)):
            throw fail(
                "gateway.tls.key_file \(key) is set without gateway.tls.cert_file; set both, or neither for plain HTTP"
            )
        case (.some(let cert), .some(let key)):
            do {
                _ = try TLSCertificatePair.load(certFile: cert, keyFile: key)
            } catch let error as TLSConfigurationError {
                throw fail(error.message)
            }
        }
        if self.tlsClientAuth != .none {
            guard let ca = self.tlsClientCAFile else {
                throw fail(
                    "gateway.tls.client_auth \(self.tlsClientAuth.rawValue) needs gateway.tls.client_ca_file (the CA certificates client certificates must chain to)"
                )
            }
            do {
                _ = try TLSCertificatePair.readText(ca, setting: "gateway.tls.client_ca_file")
            } catch let error as TLSConfigurationError {
                throw fail(error.message)
            }
        }
    }
}

public struct GatewayConfigurationError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { self.message }
}

/// Decides which peers may speak for the client through `X-Forwarded-For`.
struct TrustedProxies: Sendable {
    enum Entry: Sendable, Equatable {
        case exact(String)
        case ipv4(network: UInt32, mask: UInt32)
    }

    let entries: [Entry]

    init(_ specs: [String]) { self.entries = specs.compactMap(Self.parse) }

    static func parse(_ spec: String) -> Entry? {
        let parts = spec.split(separator: "/")
        if parts.count == 2, let address = Self.ipv4(String(parts[0])), let bits = Int(parts[1]),
            (0...32).contains(bits)
        {
            let mask: UInt32 = bits == 0 ? 0 : ~UInt32(0) << (32 - bits)
            return .ipv4(network: address & mask, mask: mask)
        }
        guard parts.count == 1, Self.ipv4(spec) != nil || spec.contains(":") else { return nil }
        // Canonical, to match the canonical form clientAddress compares ("2001:DB8::1").
        return .exact(IPAddressText.canonical(Substring(spec)) ?? spec)
    }

    static func ipv4(_ text: String) -> UInt32? {
        let octets = text.split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4 else { return nil }
        var value: UInt32 = 0
        for octet in octets {
            guard let byte = UInt8(octet) else { return nil }
            value = value << 8 | UInt32(byte)
        }
        return value
    }

    func contains(_ address: String) -> Bool {
        let v4 = Self.ipv4(address)
        return self.entries.contains { entry in
            switch entry {
            case .exact(let text): return text == address
            case .ipv4(let network, let mask): return v4.map { $0 & mask == network } ?? false
            }
        }
    }

    /// The client address: the peer itself, unless the peer is a trusted proxy, in which case
    /// the right-most `X-Forwarded-For` entry that is not a trusted proxy. Every hop walked
    /// over must be an IP address (a port is stripped); when one is not, the header cannot be
    /// trusted and the peer's address is used, with the offending hop (at most 64 bytes) in
    /// `invalidHop` for the log.
    func clientAddress(peer: String?, forwardedFor: String?) -> ClientAddress {
        guard let peer, self.contains(peer), let forwardedFor else { return ClientAddress(address: peer) }
        var leftmost: String?
        for hop in forwardedFor.split(separator: ",").reversed() {
            let hop = hop.trimmingSpaces()
            if hop.isEmpty { continue }
            guard let address = IPAddressText.canonical(hop) else {
                return ClientAddress(address: peer, invalidHop: String(hop).truncatedUTF8(maxBytes: 64))
            }
            if !self.contains(address) { return ClientAddress(address: address) }
            leftmost = address
        }
        return ClientAddress(address: leftmost ?? peer)
    }
}

/// Who sent a request, as far as the gateway can tell.
struct ClientAddress: Sendable, Equatable {
    var address: String?
    /// An `X-Forwarded-For` hop that was not an IP address (cut to 64 bytes), when there was one.
    var invalidHop: String?
}

extension Substring {
    /// Without leading and trailing spaces and tabs.
    fileprivate func trimmingSpaces() -> Substring {
        var text = self
        while text.first == " " || text.first == "\t" { text.removeFirst() }
        while text.last == " " || text.last == "\t" { text.removeLast() }
        return text
    }
}
