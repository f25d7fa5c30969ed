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

struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "Run the HTTP ingest API over a write-ahead log.",
        discussion: """
            Answers 202 only after the events are fdatasync'd to the WAL. With Kafka (--kafka-bootstrap \
            or kafka.bootstrap_servers) it runs the forwarder in this process. Stops cleanly on SIGTERM/SIGINT.
            """
    )

    @OptionGroup var options: ConfigOptions

    @Option(help: ArgumentHelp("HOST:PORT to listen on (default \(SettingsLoader.defaultText("gateway.listen")))."))
    var listen: String?

    @OptionGroup var wal: WALDirectoryOption

    @OptionGroup var kafka: KafkaBootstrapOption

    func run() async throws {
        var settings = try self.options.load()
        try self.wal.apply(to: &settings)
        try self.kafka.apply(to: &settings)
        try Self.prepare(&settings, listen: self.listen, program: "sluice")
        try await PipelineProcess(settings: settings, runsGateway: true, loader: nil).run()
    }

    /// `--listen`, then the gateway's checks; exit status 2 with the reason when they fail.
    static func prepare(_ settings: inout Settings, listen: String?, program: String) throws {
        do {
            try ConfigOptions.apply(listen, to: "gateway.listen", from: "--listen", in: &settings)
            try settings.prepareGateway()
        } catch {
            printError("\(program): \(describe(error))")
            throw ExitCode(2)
        }
    }
}

/// `sluice gateway --config FILE [--listen …]` with `log` in place of the WAL and no
/// forwarder: the same server, settings and authentication, without the disk. Only
/// `sluice-bench gateway` calls this (the baseline of docs/performance.md).
package func runGatewayWithoutWAL(configFile: String?, listen: String?, log: any EventLog) async throws {
    var settings: Settings
    do {
        settings = try SettingsLoader.load(file: configFile)
    } catch {
        printError("sluice-bench: \(describe(error))")
        throw ExitCode(2)
    }
    settings.kafkaBootstrap = nil
    try GatewayCommand.prepare(&settings, listen: listen, program: "sluice-bench")
    var process = PipelineProcess(settings: settings, runsGateway: true, loader: nil)
    process.eventLog = log
    try await process.run()
}

/// Why a server stopped, in one sentence for an operator: a taken or unusable address is
/// named, with what to do about it.
func describeServerStop(_ error: any Error, host: String, port: Int) -> String {
    let address = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    if let error = error as? IOError {
        switch error.errnoCode {
        case EADDRINUSE:
            return
                "\(address) is already in use by another process (another sluice?); stop it, or listen elsewhere with --listen HOST:PORT or gateway.listen"
        case EADDRNOTAVAIL:
            return
                "cannot listen on \(address): \(host) is not an address of this host; use 0.0.0.0 for every interface"
        case EACCES:
            return
                "cannot listen on \(address): permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        default:
            break
        }
    }
    return "stopped: \(describe(error))"
}
