import ArgumentParser
import Foundation
import SluiceCommands

/// `sluice-bench`: the benchmarks of docs/performance.md and the crash tests' child. Kept out
/// of `sluice` so that the product links no mock cluster, ClickHouse launcher or load
/// generator, and carries no benchmark switch (`sluice wal bench` stays in `sluice`: operators
/// measure their disks with it).
@main
struct SluiceBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sluice-bench",
        abstract: "Benchmarks of the Sluice pipeline (docs/performance.md).",
        subcommands: [
            GatewayBaselineCommand.self, ForwarderBenchCommand.self, LoaderBenchCommand.self,
            PipelineBenchCommand.self, TortureCommand.self,
        ]
    )

    static func main() async {
        limitMallocArenas()
        await Self.main(nil)
    }
}

/// The `sluice` executable built beside this one: the pipeline bench runs `sluice all` and
/// the mock cluster (`sluice dev-kafka`) as child processes.
func siblingSluice() -> String {
    let own = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
    return own.deletingLastPathComponent().appendingPathComponent("sluice").path
}
