import ArgumentParser
import Forwarder
import Foundation
import Gateway
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Telemetry
import WAL

/// Options shared by the commands that run a role.
struct ConfigOptions: ParsableArguments {
    @Option(help: "A YAML configuration file (see docs/configuration.md).")
    var config: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String?

    func load() throws -> Settings {
        do {
            var settings = try SettingsLoader.load(file: self.config)
            if let level = self.logLevel {
                try SettingsLoader.key("logging.level").apply(
                    &settings,
                    SettingValue(text: level, list: nil, origin: "--log-level")
                )
            }
            return settings
        } catch let error as SettingsError {
            printError("sluice: \(error.description)")
            throw ExitCode(2)
        }
    }
}

struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "Run the HTTP ingest API over a write-ahead log.",
        discussion: "Answers 202 only after the events are fdatasync'd to the WAL. Stops cleanly on SIGTERM/SIGINT."
    )

    @OptionGroup var options: ConfigOptions

    @Option(help: "HOST:PORT to listen on (default 127.0.0.1:8080).")
    var listen: String?

    @Option(help: "The WAL directory (default ./data/wal).")
    var walDir: String?

    @Option(help: "Kafka bootstrap servers (host:port,...): run the forwarder in this process.")
    var kafkaBootstrap: String?

    @Flag(help: "BENCHMARK ONLY, UNSAFE: accept events without writing them anywhere.")
    var unsafeNoWAL = false

    func run() async throws {
        var settings = try self.options.load()
        do {
            if let listen = self.listen {
                try SettingsLoader.key("gateway.listen").apply(
                    &settings,
                    SettingValue(text: listen, list: nil, origin: "--listen")
                )
            }
            if let directory = self.walDir { settings.walDirectory = directory }
            if let bootstrap = self.kafkaBootstrap { settings.kafkaBootstrap = bootstrap }
            settings.gateway.unsafeSkipWAL = self.unsafeNoWAL
            settings.wal.ackTimeout = settings.gateway.appendTimeout
            try settings.gateway.validate()
            try settings.walConfiguration.validate()
        } catch {
            printError("sluice: \(describe(error))")
            throw ExitCode(2)
        }
        let registry = Telemetry.bootstrap(logLevel: settings.logLevel)
        let logger = Logger(label: "sluice.gateway")
        var wal: WAL?
        if self.unsafeNoWAL {
            logger.critical(
                "gateway.unsafe_no_wal",
                metadata: ["reason": "benchmark mode: accepted events are NOT stored"]
            )
        } else {
            do {
                wal = try await WAL.open(settings.walConfiguration, logger: Logger(label: "sluice.wal"))
            } catch {
                printError("sluice: cannot open the WAL in \(settings.walDirectory): \(describe(error))")
                throw ExitCode(2)
            }
        }
        var services: [any Service] = []
        if let wal, let forwarding = settings.forwarderConfiguration {
            services.append(Forwarder(wal: wal, configuration: forwarding, logger: Logger(label: "sluice.forwarder")))
        }
        let gateway = settings.gateway
        // Where to send events is printed whatever the log level: operators and scripts wait for it.
        var startupLogger = logger
        startupLogger.logLevel = min(startupLogger.logLevel, .notice)
        let announcer = startupLogger
        let app = buildGatewayApplication(
            configuration: gateway,
            wal: wal,
            registry: registry,
            logger: logger,
            services: services,
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? gateway.port
                announcer.notice(
                    "gateway.listening",
                    metadata: [
                        "server.address": "\(gateway.host)", "server.port": "\(port)",
                        "url.full": "http://\(gateway.host):\(port)/v1/events",
                        "gateway.append_timeout": "\(gateway.appendTimeout)",
                    ]
                )
            }
        )
        do {
            try await app.runService()
        } catch {
            if let wal { await wal.close() }
            printError("sluice: the gateway stopped: \(describe(error))")
            throw ExitCode.failure
        }
    }
}
