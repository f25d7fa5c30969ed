import ArgumentParser

@main
struct Sluice: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sluice",
        abstract: "A durable ingest path for user-action and clickstream events.",
        subcommands: [
            GatewayCommand.self, ForwarderCommand.self, LoaderCommand.self, WALCommand.self, OffsetsCommand.self,
            ReplayCommand.self, DLQCommand.self, DevKafkaCommand.self, ForwarderBenchCommand.self,
            LoaderBenchCommand.self,
        ]
    )
}
