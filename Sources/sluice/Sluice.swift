import ArgumentParser
import Foundation

#if canImport(Glibc)
import Glibc
#endif

@main
struct Sluice: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sluice",
        abstract: "A durable ingest path for user-action and clickstream events.",
        subcommands: [
            DevCommand.self, AllCommand.self, GatewayCommand.self, ForwarderCommand.self, LoaderCommand.self,
            WALCommand.self, OffsetsCommand.self, KeysCommand.self,
            ReplayCommand.self, DLQCommand.self, ConfigCommand.self, DevKafkaCommand.self, DevClickHouseCommand.self,
            ForwarderBenchCommand.self,
            LoaderBenchCommand.self, PipelineBenchCommand.self, OAuthCommand.self, TLSCommand.self,
        ]
    )

    static func main() async {
        #if canImport(Glibc)
        // glibc gives each thread that allocates its own arena; the forwarder allocates
        // events on pool threads and frees them on librdkafka's poll thread, and over a
        // 5 GB drain resident memory crept from 211 to 344 MiB. Two arenas kept it flat
        // (135-153 MiB) and no slower (docs/performance.md). MALLOC_ARENA_MAX still wins.
        if ProcessInfo.processInfo.environment["MALLOC_ARENA_MAX"] == nil,
            let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt")
        {
            // malloc.h is not part of Swift's Glibc module: look mallopt up.
            typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
            _ = unsafeBitCast(symbol, to: Mallopt.self)(-8, 2)  // M_ARENA_MAX, 2
        }
        #endif
        await Self.main(nil)
    }
}
