import ArgumentParser
import AsyncHTTPClient
import ClickHouse
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
            LoaderTLSBenchCommand.self, PipelineBenchCommand.self, TortureCommand.self, AnalyticsBenchCommand.self,
            StopBenchCommand.self, CurveBenchCommand.self,
            ScaleOutBenchCommand.self,
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

/// Something with an async `shutdown()`: the ClickHouse and HTTP clients.
protocol AsyncShutdown: Sendable {
    func shutdown() async throws
}

extension ClickHouseClient: AsyncShutdown {}
extension HTTPClient: AsyncShutdown {}

/// Runs `body`, then shuts `resource` down whether `body` threw or not: the `defer` an async
/// cleanup cannot have (a `Task` in a `defer` would outlive the command).
func withShutdown<T>(_ resource: some AsyncShutdown, _ body: () async throws -> T) async throws -> T {
    let result: T
    do {
        result = try await body()
    } catch {
        try? await resource.shutdown()
        throw error
    }
    try? await resource.shutdown()
    return result
}
