import ArgumentParser
import Forwarder
import Foundation
import Gateway
import Hummingbird
import Ledger
import Loader
import Logging
import NIOCore
import Prometheus
import ServiceLifecycle
import SluiceCore
import Telemetry
import UnixSignals
import WAL

/// The roles one `sluice` process runs, from one set of settings: the gateway (with its
/// forwarder when Kafka is configured), the loader, or both (`sluice all`, `sluice dev`).
///
/// Shutdown (SIGTERM/SIGINT) runs in reverse of start: the HTTP server stops taking
/// requests, the forwarder flushes what it sent, the loader inserts and commits what it holds,
/// the WAL closes.
struct PipelineProcess {
    var settings: Settings
    var runsGateway: Bool
    var loader: LoaderConfiguration?
    /// Services that look after the pipeline's neighbours (`sluice dev`'s ClickHouse): they
    /// start first and stop last.
    var supervisors: [any Service] = []
    /// Runs while the loader still runs, after the forwarder stopped (`sluice dev` waits here
    /// until the loader has loaded what was forwarded).
    var beforeLoaderStops: (any Service)?
    /// Called once the HTTP server (gateway or metrics) listens, with its port.
    var onListening: @Sendable (Int) async -> Void = { _ in }
    /// Where the gateway stores accepted events instead of the WAL: only `sluice-bench gateway`
    /// sets it (the same server without the disk, as a baseline). Without the WAL there is no
    /// forwarder.
    var eventLog: (any EventLog)?

    /// In a process that answers clients, the roles that do not run on
    /// ``BackgroundExecutor``'s lower-priority threads, so that under contention the
    /// acknowledgements go first.
    private func background(_ service: any Service) -> any Service {
        guard let executor = self.backgroundExecutor else { return service }
        return InBackground(service, executor: executor)
    }

    /// Runs `body` on the background executor, if any.
    private func inBackground<T: Sendable>(_ body: @Sendable () throws -> T) async throws -> T {
        guard let executor = self.backgroundExecutor else { return try body() }
        return try await withTaskExecutorPreference(executor) { try body() }
    }

    /// Created once per process, when it runs the gateway with a nonzero
    /// `gateway.background_niceness` (nil also when no thread could be made).
    private var backgroundExecutor: BackgroundExecutor? {
        let niceness = self.settings.gateway.backgroundNiceness
        guard self.runsGateway, niceness > 0 else { return nil }
        return BackgroundExecutor.process(niceness: Int32(niceness))
    }

    func run() async throws {
        let registry = Telemetry.bootstrap(logLevel: self.settings.logLevel)
        // One ledger publisher for the process's roles (the forwarder's records and the
        // loader's), closed — flushed — once they stopped.
        let ledger: LedgerPublisher?
        do {
            let forwards = self.runsGateway && self.eventLog == nil
            // Made on a background thread, if any: its Kafka client's threads inherit the
            // priority.
            ledger =
                forwards || self.loader != nil
                ? try await self.inBackground {
                    try self.settings.ledgerPublisher(logger: Logger(label: "sluice.ledger"))
                } : nil
        } catch {
            printError("sluice: \(error)")
            throw ExitCode(2)
        }
        do {
            try await self.run(registry: registry, ledger: ledger)
        } catch {
            await ledger?.close()
            throw error
        }
        await ledger?.close()
    }

    private func run(registry: PrometheusCollectorRegistry, ledger: LedgerPublisher?) async throws {
        let settings = self.settings
        var services: [any Service] = self.supervisors
        if var loader = self.loader {
            loader.ledger = ledger
            services.append(self.background(Loader(configuration: loader, logger: Logger(label: "sluice.loader"))))
            if settings.ledger.enabled, settings.ledger.audit, let properties = settings.kafkaClientProperties {
                let logger = Logger(label: "sluice.ledger")
                let follower = LedgerFollower(
                    properties: properties,
                    topic: settings.ledger.topic,
                    name: loader.groupID,
                    logger: logger
                )
                services.append(
                    self.background(
                        LedgerAuditService(
                            auditor: LedgerAuditor(follower: follower, grace: settings.ledger.grace, logger: logger),
                            logger: logger
                        )
                    )
                )
            }
        }
        if let drain = self.beforeLoaderStops { services.append(drain) }

        guard self.runsGateway else {
            try await Self.run(services, settings: settings, registry: registry, onListening: self.onListening)
            return
        }
        let log: any EventLog
        var receipts: GatewayReceipts?
        if let injected = self.eventLog {
            Logger(label: "sluice.gateway").critical(
                "gateway.unsafe_no_wal",
                metadata: ["reason": "sluice-bench: accepted events are NOT stored"]
            )
            log = injected
        } else {
            // Unreadable payload keys stop the start: never forward plaintext by mistake.
            do { _ = try settings.forwarderConfiguration?.encryptionKeyring() } catch {
                printError("sluice: \(error)")
                throw ExitCode(2)
            }
            let wal = try await settings.openWAL()
            if var forwarding = settings.forwarderConfiguration {
                forwarding.ledger = ledger
                if let ledger, let properties = settings.kafkaClientProperties {
                    let book = ReceiptBook(
                        retentionMillis: settings.receipts.retention.components.seconds * 1000,
                        clock: { Int64(Date().timeIntervalSince1970 * 1000) }
                    )
                    do {
                        receipts = GatewayReceipts(
                            book: book,
                            gatewayID: settings.gateway.gatewayID,
                            key: try settings.receiptKey(),
                            maxWait: settings.receipts.maxWait
                        )
                    } catch {
                        await wal.close()
                        printError("sluice: \(error)")
                        throw ExitCode(2)
                    }
                    // Its own forwarder's records at once; everyone's through the topic.
                    forwarding.ledger = LedgerFanOut([ledger, book])
                    let logger = Logger(label: "sluice.ledger")
                    services.append(
                        self.background(
                            ReceiptFollowService(
                                follower: LedgerFollower(
                                    properties: properties,
                                    topic: settings.ledger.topic,
                                    name: settings.gateway.gatewayID,
                                    logger: logger
                                ),
                                book: book,
                                logger: logger
                            )
                        )
                    )
                }
                services.append(
                    self.background(
                        Forwarder(wal: wal, configuration: forwarding, logger: Logger(label: "sluice.forwarder"))
                    )
                )
            }
            log = wal
        }
        let gateway = settings.gateway
        let scheme = gateway.tlsEnabled ? "https" : "http"
        let publicHost = gateway.host == "0.0.0.0" || gateway.host == "::" ? "127.0.0.1" : gateway.host
        let auth: AuthRuntime
        do {
            auth = try settings.authRuntime(
                publicURL: "\(scheme)://\(publicHost):\(gateway.port)",
                logger: Logger(label: "sluice.auth")
            )
        } catch {
            await log.close()
            printError("sluice: \(describe(error))")
            throw ExitCode(2)
        }
        services += auth.services
        services.append(SignalReloads(reloaders: auth.reloaders, logger: Logger(label: "sluice.auth")))
        let authLogger = Logger(label: "sluice.auth")
        if !settings.auth.required {
            authLogger.warning(
                "auth.disabled",
                metadata: [
                    "reason": .string(
                        "auth.required is false (\(settings.auth.requiredOrigin ?? "set")): anyone who can reach the port can write events"
                    )
                ]
            )
        }
        for line in auth.summary { authLogger.info("auth.configured", metadata: ["detail": .string(line)]) }
        var authentication = auth.authentication
        authentication.authorizationServer = auth.authorizationServer
        let stats: StatsService?
        do { stats = try settings.statsService(auth: auth, services: &services, logger: authLogger) } catch {
            await log.close()
            printError("sluice: \(describe(error))")
            throw ExitCode(2)
        }
        let announcer = Self.announcer(label: "sluice.gateway")
        let onListening = self.onListening
        let stopGate = StopGate()
        let app = buildGatewayApplication(
            configuration: gateway,
            wal: log,
            registry: registry,
            authentication: authentication,
            stats: stats,
            receipts: receipts,
            logger: Logger(label: "sluice.gateway"),
            services: services,
            stopGate: stopGate,
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? gateway.port
                announcer.notice(
                    "gateway.listening",
                    metadata: [
                        "server.address": "\(gateway.host)", "server.port": "\(port)",
                        "url.full": "\(scheme)://\(gateway.host):\(port)/v1/events",
                        "gateway.append_timeout": "\(gateway.appendTimeout)",
                    ]
                )
                auth.listening.open()
                await onListening(port)
            }
        )
        // The stop service comes after the application: a group stops in reverse, so at
        // SIGTERM the gate closes (and the delay runs) before the server stops.
        let group = ServiceGroup(
            configuration: .init(
                services: [
                    app,
                    GracefulStopService(
                        gate: stopGate,
                        delay: gateway.shutdownDelay,
                        logger: Logger(label: "sluice.gateway")
                    ),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: Logger(label: "sluice")
            )
        )
        do {
            try await group.run()
        } catch {
            await log.close()
            printError("sluice: \(describeServerStop(error, host: gateway.host, port: gateway.port))")
            throw ExitCode.failure
        }
    }

    /// Services without the gateway (the loader, or the forwarder alone), until SIGTERM or
    /// SIGINT: with `/metrics` and `/healthz` on `metrics.listen` when it is set.
    static func run(
        _ services: [any Service],
        settings: Settings,
        registry: PrometheusCollectorRegistry,
        onListening: @escaping @Sendable (Int) async -> Void = { _ in }
    ) async throws {
        let logger = Logger(label: "sluice")
        guard let (host, port) = settings.metricsListen else {
            let group = ServiceGroup(
                configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
            )
            try await group.run()
            return
        }
        let announcer = Self.announcer(label: "sluice.metrics")
        let app = buildMetricsApplication(
            host: host,
            port: port,
            registry: registry,
            logger: logger,
            services: services,
            onServerRunning: { channel in
                let bound = channel.localAddress?.port ?? port
                announcer.notice(
                    "metrics.listening",
                    metadata: [
                        "server.address": "\(host)", "server.port": "\(bound)",
                        "url.full": "http://\(host):\(bound)/metrics",
                    ]
                )
                await onListening(bound)
            }
        )
        try await app.runService()
    }

    /// Where the process listens is logged whatever the log level: operators and scripts wait
    /// for it.
    private static func announcer(label: String) -> Logger {
        var logger = Logger(label: label)
        logger.logLevel = min(logger.logLevel, .notice)
        return logger
    }
}

/// SIGHUP reloads what can change without a restart: the API key store and the issuers' key
/// sets (the TLS certificate has its own reloader).
struct SignalReloads: Service {
    let reloaders: [@Sendable () async -> Void]
    let logger: Logger

    func run() async throws {
        guard !self.reloaders.isEmpty else { return }
        await cancelWhenGracefulShutdown {
            for await _ in await UnixSignalsSequence(trapping: .sighup) {
                self.logger.notice("auth.reload", metadata: ["trigger": "SIGHUP"])
                for reload in self.reloaders { await reload() }
            }
        }
    }
}

extension Settings {
    /// The WAL of `wal.*`, or exit status 2 with the reason (the gateway's and the forwarder's
    /// start).
    func openWAL() async throws -> WAL {
        do {
            return try await WAL.open(self.walConfiguration, logger: Logger(label: "sluice.wal"))
        } catch {
            printError("sluice: cannot open the WAL in \(self.walDirectory): \(describe(error))")
            throw ExitCode(2)
        }
    }
}

/// The loader's continuous reconciliation of the ledger. A ledger it cannot read is logged,
/// never a reason to stop loading.
struct LedgerAuditService: Service {
    let auditor: LedgerAuditor
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown {
            do {
                try await self.auditor.run { Int64(Date().timeIntervalSince1970 * 1000) }
            } catch {
                self.logger.error("ledger.audit_stopped", metadata: ["error": "\(error)"])
            }
        }
        // A service that returns would stop the process: wait for the shutdown instead.
        try? await gracefulShutdown()
    }
}

/// A gateway's receipts follow the ledger topic: the other gateways' records and the
/// loaders'. A ledger it cannot read is logged; receipts then stay at what the own forwarder
/// reports.
struct ReceiptFollowService: Service {
    let follower: LedgerFollower
    let book: ReceiptBook
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown {
            do {
                try await self.follower.run { records in
                    if !records.isEmpty { self.book.apply(records) }
                }
            } catch {
                self.logger.error("receipts.follow_stopped", metadata: ["error": "\(error)"])
            }
        }
        // A service that returns would stop the process: wait for the shutdown instead.
        try? await gracefulShutdown()
    }
}
