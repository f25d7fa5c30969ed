import CoreMetrics
import Foundation
import Logging
import NIOCore
import NIOSSL
import ServiceLifecycle
import SwiftASN1
import Synchronization
import UnixSignals
import X509

#if canImport(Glibc)
import Glibc
#endif

/// Whether the API listener asks clients for a certificate (mutual TLS).
public enum TLSClientAuth: String, Sendable, CaseIterable {
    /// No client certificate is asked for.
    case none
    /// A client certificate is asked for; one that is presented must chain to
    /// `gateway.tls.client_ca_file`, and a client without one is let through (to authenticate
    /// otherwise, with a token or a key).
    case optional
    /// Every client must present a certificate chaining to `gateway.tls.client_ca_file`, or the
    /// handshake fails.
    case require
}

/// A configuration the TLS listener cannot start with, or a pair a reload refused: says which
/// setting, which file and what to do. Never contains key material.
public struct TLSConfigurationError: Error, Sendable, CustomStringConvertible {
    public var message: String
    /// A short, bounded reason for logs (`tls.reload_failed`'s `reason`).
    public var reason: String
    public var description: String { self.message }

    init(_ reason: String, _ message: String) {
        self.reason = reason
        self.message = message
    }
}

/// A certificate chain and the private key that belongs to its first certificate, read from
/// PEM files and checked: the key file is private to its owner, both parse, and the key's
/// public half is the certificate's.
struct TLSCertificatePair: Sendable {
    var chain: [NIOSSLCertificate]
    var key: NIOSSLPrivateKey
    /// The leaf's serial number, upper-case hex without separators (as `openssl x509 -serial`).
    var serial: String
    var notValidAfter: Date

    /// Reads and checks the pair. `certSetting`/`keySetting` name the keys in messages.
    static func load(
        certFile: String,
        keyFile: String,
        certSetting: String = "gateway.tls.cert_file",
        keySetting: String = "gateway.tls.key_file"
    ) throws -> TLSCertificatePair {
        try checkPrivate(keyFile, setting: keySetting)
        let certText = try readText(certFile, setting: certSetting)
        let keyText = try readText(keyFile, setting: keySetting)
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMBytes(Array(certText.utf8))
        } catch {
            throw TLSConfigurationError(
                "unparsable_certificate",
                "\(certSetting) \(certFile) holds no PEM certificate that can be parsed"
            )
        }
        guard let leaf = chain.first else {
            throw TLSConfigurationError(
                "unparsable_certificate",
                "\(certSetting) \(certFile) holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
            )
        }
        let key: NIOSSLPrivateKey
        let keyForCheck: Certificate.PrivateKey
        do {
            key = try NIOSSLPrivateKey(bytes: Array(keyText.utf8), format: .pem)
            keyForCheck = try Certificate.PrivateKey(pemEncoded: keyText)
        } catch {
            throw TLSConfigurationError(
                "unparsable_key",
                "\(keySetting) \(keyFile) holds no unencrypted PEM private key that can be parsed (RSA, P-256, P-384, P-521 or Ed25519)"
            )
        }
        let certificate: Certificate
        do {
            certificate = try Certificate(derEncoded: leaf.toDERBytes())
        } catch {
            throw TLSConfigurationError(
                "unparsable_certificate",
                "\(certSetting) \(certFile): the first certificate cannot be parsed (\(error))"
            )
        }
        guard keyForCheck.publicKey == certificate.publicKey else {
            throw TLSConfigurationError(
                "key_mismatch",
                "\(keySetting) \(keyFile) does not belong to the first certificate in \(certSetting) \(certFile) (their public keys differ); the first certificate must be the server's own, followed by its intermediates"
            )
        }
        return TLSCertificatePair(
            chain: chain,
            key: key,
            serial: certificate.serialNumber.bytes.map { String(format: "%02X", $0) }.joined(),
            notValidAfter: certificate.notValidAfter
        )
    }

    /// A private key readable by group or others is refused (`chmod 600`).
    static func checkPrivate(_ path: String, setting: String) throws {
        var status = stat()
        guard stat(path, &status) == 0 else {
            let reason = String(cString: strerror(errno))
            throw TLSConfigurationError("unreadable", "\(setting) \(path) cannot be read: \(reason)")
        }
        let mode = status.st_mode & 0o777
        if mode & 0o077 != 0 {
            throw TLSConfigurationError(
                "key_permissions",
                "\(setting) \(path) is accessible by group or others (mode \(String(mode, radix: 8, uppercase: false).leftPadded(to: 4))); a private key must be private to its owner: run chmod 600 \(path)"
            )
        }
    }

    static func readText(_ path: String, setting: String) throws -> String {
        guard let handle = fopen(path, "rb") else {
            let reason = String(cString: strerror(errno))
            throw TLSConfigurationError("unreadable", "\(setting) \(path) cannot be read: \(reason)")
        }
        defer { fclose(handle) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 << 10)
        while true {
            let count = fread(&chunk, 1, chunk.count, handle)
            if count > 0 { bytes.append(contentsOf: chunk[0..<count]) }
            if count < chunk.count { break }
            if bytes.count > 1 << 20 {
                throw TLSConfigurationError("too_large", "\(setting) \(path) is over 1 MiB: not a PEM file")
            }
        }
        if ferror(handle) != 0 {
            throw TLSConfigurationError("unreadable", "\(setting) \(path) cannot be read: I/O error")
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// What the file watch compares: modification time, inode and size of a file.
    struct FileStamp: Equatable, Sendable {
        var seconds: Int
        var nanoseconds: Int
        var inode: UInt64
        var size: Int64

        init?(_ path: String) {
            var status = stat()
            guard stat(path, &status) == 0 else { return nil }
            self.seconds = Int(status.st_mtim.tv_sec)
            self.nanoseconds = Int(status.st_mtim.tv_nsec)
            self.inode = UInt64(status.st_ino)
            self.size = Int64(status.st_size)
        }
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        self.count >= width ? self : String(repeating: "0", count: width - self.count) + self
    }
}

/// The API listener's certificate and key, reloaded without a restart.
///
/// The pair in use sits in a `Mutex` box and is handed to every handshake through NIOSSL's
/// `sslContextCallback` (run once per ClientHello): a connection opened after a reload gets the
/// new certificate, connections already open keep theirs. A reload reads both files and checks
/// them (parsable, the key matches the certificate, the key file is private) before it swaps
/// anything: a bad pair is refused with `tls.reload_failed` and the old pair stays.
///
/// Reloads happen on ``reload(trigger:)``, on SIGHUP and when the file watch sees either file
/// change (modification time, inode or size, every ``GatewayConfiguration/tlsReloadInterval``):
/// both run in ``run()``, so the reloader is a `Service` of the gateway's service group.
///
/// Metrics: `sluice_tls_cert_expiry_timestamp_seconds{listener}`,
/// `sluice_tls_reloads_total{result}` (`success`, `failure`) and, from the channels,
/// `sluice_tls_handshake_failures_total{reason}`.
public final class TLSCertificateReloader: Service, Sendable {
    private struct State: Sendable {
        var pair: TLSCertificatePair
        var override: NIOSSLContextConfigurationOverride
        var stamps: [TLSCertificatePair.FileStamp?]
    }

    public let certFile: String
    public let keyFile: String
    let clientAuth: TLSClientAuth
    let clientCAs: [NIOSSLCertificate]
    let reloadInterval: Duration
    let watchSignal: Bool
    let listener: String
    let logger: Logger
    private let state: Mutex<State>
    private let expiry: Gauge
    private let reloadSuccesses = Counter(label: "sluice_tls_reloads_total", dimensions: [("result", "success")])
    private let reloadFailures = Counter(label: "sluice_tls_reloads_total", dimensions: [("result", "failure")])
    /// Called once `run()` traps SIGHUP (tests send the signal only after).
    let onSignalTrapped: @Sendable () -> Void

    /// Loads and checks the configured pair (and the client CAs for mTLS); throws a
    /// ``TLSConfigurationError`` that names the setting and says what to do.
    ///
    /// - Parameters:
    ///   - configuration: `tlsCertFile` and `tlsKeyFile` must be set.
    ///   - listener: the `listener` label of the expiry metric.
    ///   - reloadOnSIGHUP: whether ``run()`` traps SIGHUP (a process has one owner of each signal).
    public convenience init(
        configuration: GatewayConfiguration,
        listener: String = "api",
        reloadOnSIGHUP: Bool = true,
        logger: Logger
    ) throws {
        try self.init(
            configuration: configuration,
            listener: listener,
            reloadOnSIGHUP: reloadOnSIGHUP,
            logger: logger,
            onSignalTrapped: {}
        )
    }

    init(
        configuration: GatewayConfiguration,
        listener: String,
        reloadOnSIGHUP: Bool,
        logger: Logger,
        onSignalTrapped: @escaping @Sendable () -> Void
    ) throws {
        guard let certFile = configuration.tlsCertFile, let keyFile = configuration.tlsKeyFile else {
            throw TLSConfigurationError(
                "incomplete",
                "gateway.tls.cert_file and gateway.tls.key_file must both be set to serve HTTPS"
            )
        }
        self.certFile = certFile
        self.keyFile = keyFile
        self.clientAuth = configuration.tlsClientAuth
        self.reloadInterval = configuration.tlsReloadInterval
        self.watchSignal = reloadOnSIGHUP
        self.listener = listener
        self.logger = logger
        self.onSignalTrapped = onSignalTrapped
        if configuration.tlsClientAuth != .none {
            guard let caFile = configuration.tlsClientCAFile else {
                throw TLSConfigurationError(
                    "incomplete",
                    "gateway.tls.client_auth \(configuration.tlsClientAuth.rawValue) needs gateway.tls.client_ca_file (the CA certificates client certificates must chain to)"
                )
            }
            let text = try TLSCertificatePair.readText(caFile, setting: "gateway.tls.client_ca_file")
            let roots = (try? NIOSSLCertificate.fromPEMBytes(Array(text.utf8))) ?? []
            guard !roots.isEmpty else {
                throw TLSConfigurationError(
                    "unparsable_certificate",
                    "gateway.tls.client_ca_file \(caFile) holds no PEM certificate that can be parsed"
                )
            }
            self.clientCAs = roots
        } else {
            self.clientCAs = []
        }
        let stamps = [TLSCertificatePair.FileStamp(certFile), TLSCertificatePair.FileStamp(keyFile)]
        let pair = try TLSCertificatePair.load(certFile: certFile, keyFile: keyFile)
        self.state = Mutex(State(pair: pair, override: Self.override(pair), stamps: stamps))
        self.expiry = Gauge(label: "sluice_tls_cert_expiry_timestamp_seconds", dimensions: [("listener", listener)])
        self.expiry.record(pair.notValidAfter.timeIntervalSince1970)
    }

    private static func override(_ pair: TLSCertificatePair) -> NIOSSLContextConfigurationOverride {
        var override = NIOSSLContextConfigurationOverride()
        override.certificateChain = pair.chain.map { .certificate($0) }
        override.privateKey = .privateKey(pair.key)
        return override
    }

    /// The serial number of the certificate new connections get (upper-case hex).
    public var currentSerial: String { self.state.withLock { $0.pair.serial } }

    /// The cipher suites offered under TLS 1.2: ECDHE only (forward secrecy), AEAD only.
    /// TLS 1.3's suites are all AEAD with ECDHE and are not configurable in BoringSSL.
    static let tls12CipherSuites = [
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    ].joined(separator: ":")

    /// The server's TLS configuration: TLS 1.2 at least (NIOSSL's default is 1.0), 1.3 when
    /// the client has it, ECDHE suites only under 1.2, the current pair served per handshake,
    /// and the client certificate policy of `gateway.tls.client_auth`.
    public func tlsConfiguration() -> TLSConfiguration {
        let pair = self.state.withLock { $0.pair }
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: pair.chain.map { .certificate($0) },
            privateKey: .privateKey(pair.key)
        )
        tls.minimumTLSVersion = .tlsv12
        tls.cipherSuites = Self.tls12CipherSuites
        switch self.clientAuth {
        case .none:
            tls.certificateVerification = .none
        case .optional:
            tls.certificateVerification = .optionalVerification
            tls.trustRoots = .certificates(self.clientCAs)
            tls.sendCANameList = true
        case .require:
            tls.certificateVerification = .noHostnameVerification
            tls.trustRoots = .certificates(self.clientCAs)
            tls.sendCANameList = true
        }
        tls.sslContextCallback = { [self] _, promise in
            promise.succeed(self.state.withLock { $0.override })
        }
        return tls
    }

    /// Reads both files again and, when they make a good pair, serves it to new connections.
    /// A bad pair is refused: `tls.reload_failed` is logged with the reason and the old pair
    /// stays. Returns whether the new pair is in use.
    @discardableResult
    public func reload(trigger: String = "manual") -> Bool {
        let stamps = [TLSCertificatePair.FileStamp(self.certFile), TLSCertificatePair.FileStamp(self.keyFile)]
        do {
            let pair = try TLSCertificatePair.load(certFile: self.certFile, keyFile: self.keyFile)
            let previous = self.state.withLock { state in
                let previous = state.pair.serial
                state = State(pair: pair, override: Self.override(pair), stamps: stamps)
                return previous
            }
            self.expiry.record(pair.notValidAfter.timeIntervalSince1970)
            self.reloadSuccesses.increment()
            self.logger.notice(
                "tls.reloaded",
                metadata: [
                    "trigger": "\(trigger)", "tls.listener": "\(self.listener)",
                    "tls.server.x509.serial_number": "\(pair.serial)",
                    "tls.server.previous_serial_number": "\(previous)",
                    "tls.server.not_after": "\(pair.notValidAfter)",
                ]
            )
            return true
        } catch {
            // The stamps are taken anyway: a bad pair is retried when a file changes again.
            self.state.withLock { $0.stamps = stamps }
            self.reloadFailures.increment()
            let failure = error as? TLSConfigurationError
            self.logger.error(
                "tls.reload_failed",
                metadata: [
                    "trigger": "\(trigger)", "tls.listener": "\(self.listener)",
                    "reason": "\(failure?.reason ?? "error")",
                    "error.message": "\(failure?.message ?? "\(error)"); the previous certificate stays in use",
                    "tls.server.x509.serial_number": "\(self.currentSerial)",
                ]
            )
            return false
        }
    }

    /// Whether either file changed since the last load; reloads when it did.
    func checkFiles() {
        let stamps = [TLSCertificatePair.FileStamp(self.certFile), TLSCertificatePair.FileStamp(self.keyFile)]
        let changed = self.state.withLock { $0.stamps != stamps }
        if changed { self.reload(trigger: "file_watch") }
    }

    /// Reloads on SIGHUP and when the files change, until the service group shuts down.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                if self.watchSignal {
                    let signals = await UnixSignalsSequence(trapping: .sighup)
                    self.onSignalTrapped()
                    group.addTask {
                        for await _ in signals { self.reload(trigger: "sighup") }
                    }
                }
                // Logged once SIGHUP is trapped: before, the signal's default action applies.
                self.logger.notice(
                    "tls.reload_armed",
                    metadata: [
                        "tls.listener": "\(self.listener)", "sighup": "\(self.watchSignal)",
                        "tls.reload_interval": "\(self.reloadInterval)",
                        "tls.server.x509.serial_number": "\(self.currentSerial)",
                    ]
                )
                group.addTask {
                    while true {
                        do { try await Task.sleep(for: self.reloadInterval) } catch { return }
                        self.checkFiles()
                    }
                }
            }
        }
    }
}
