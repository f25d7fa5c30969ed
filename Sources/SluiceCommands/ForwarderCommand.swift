import ArgumentParser
import Forwarder
import Gateway
import Logging
import ServiceLifecycle
import Telemetry
import UnixSignals
import WAL

/// `sluice forwarder`: drain a WAL into Kafka without the HTTP server (normally the gateway
/// runs the forwarder itself; one process owns a WAL directory at a time).
struct ForwarderCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forwarder",
        abstract: "Drain a WAL directory into Kafka (when no gateway owns it).",
        discussion: "Runs until SIGTERM/SIGINT, then flushes to Kafka and persists its cursor."
    )

    @OptionGroup var options: ConfigOptions

    @OptionGroup var wal: WALDirectoryOption

    @OptionGroup var kafka: KafkaBootstrapOption

    func run() async throws {
        var settings = try self.options.load()
        try self.wal.apply(to: &settings)
        try self.kafka.apply(to: &settings)
        guard let forwarding = settings.forwarderConfiguration else {
            printError("sluice: no Kafka to forward to: give --kafka-bootstrap or kafka.bootstrap_servers")
            throw ExitCode(2)
        }
        do { _ = try forwarding.encryptionKeyring() } catch {
            printError("sluice: \(error)")
            throw ExitCode(2)
        }
        let registry = Telemetry.bootstrap(logLevel: settings.logLevel)
        let wal = try await settings.openWAL()
        let logger = Logger(label: "sluice.forwarder")
        try await PipelineProcess.run(
            [wal, Forwarder(wal: wal, configuration: forwarding, logger: logger)],
            settings: settings,
            registry: registry
        )
    }
}
