import ArgumentParser
import Gateway
import ServiceLifecycle
import SluiceCommands

/// `sluice-bench gateway`: `sluice gateway` with the WAL replaced by ``DiscardingLog``, the
/// baseline that shows what the gateway costs without the disk (scripts/bench-gateway,
/// scripts/bench-auth).
struct GatewayBaselineCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "UNSAFE, benchmark only: the gateway, answering 202 without storing anything.",
        discussion: "Reads the same configuration as `sluice gateway` (--config, SLUICE_* variables); no forwarder."
    )

    @Option(help: "A YAML configuration file (see docs/configuration.md).")
    var config: String?

    @Option(help: "HOST:PORT to listen on (default 127.0.0.1:8080).")
    var listen: String?

    func run() async throws {
        // Logs `gateway.unsafe_no_wal` (critical) once logging is set up.
        try await runGatewayWithoutWAL(configFile: self.config, listen: self.listen, log: DiscardingLog())
    }
}

/// Accepts every record and keeps nothing: the WAL's place in the no-disk baseline.
struct DiscardingLog: EventLog {
    func store(_ events: [[UInt8]]) async throws {}
    var isWritable: Bool { true }
    var unavailableReason: String? { nil }
    var pressureLevel: String { "ok" }
    func close() async {}
    func run() async throws { try? await gracefulShutdown() }
}
