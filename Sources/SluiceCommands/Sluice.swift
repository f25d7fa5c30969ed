import ArgumentParser
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The `sluice` command: its `main` is the executable's (Sources/sluice/main.swift). The
/// commands live in this library so that `sluice-bench` can start the same gateway with a
/// stub in place of the WAL (``runGatewayWithoutWAL(configFile:listen:log:)``).
package struct Sluice: AsyncParsableCommand {
    package static let configuration = CommandConfiguration(
        commandName: "sluice",
        abstract: "A durable ingest path for user-action and clickstream events.",
        version: Sluice.version,
        subcommands: [
            DevCommand.self, AllCommand.self, GatewayCommand.self, ForwarderCommand.self, LoaderCommand.self,
            WALCommand.self, OffsetsCommand.self, KeysCommand.self,
            ReplayCommand.self, DLQCommand.self, AuditCommand.self, ConfigCommand.self, DevKafkaCommand.self,
            DevClickHouseCommand.self,
            OAuthCommand.self, TLSCommand.self, EncryptionCommand.self, EraseCommand.self,
        ]
    )

    /// What `sluice --version` prints: the first check of a built image (scripts/build-image)
    /// and how an operator tells which release a host or container runs.
    package static let version = "0.15.0"

    package init() {}

    package static func main() async {
        limitMallocArenas()
        await Self.main(nil)
    }
}

/// glibc gives each thread that allocates its own arena; the forwarder allocates events on
/// pool threads and frees them on librdkafka's poll thread, and over a 5 GB drain resident
/// memory crept from 211 to 344 MiB. Two arenas kept it flat (135-153 MiB) and no slower
/// (docs/performance.md). MALLOC_ARENA_MAX still wins. For `sluice` and `sluice-bench`.
package func limitMallocArenas() {
    #if canImport(Glibc)
    if ProcessInfo.processInfo.environment["MALLOC_ARENA_MAX"] == nil,
        let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt")
    {
        // malloc.h is not part of Swift's Glibc module: look mallopt up.
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
        _ = unsafeBitCast(symbol, to: Mallopt.self)(-8, 2)  // M_ARENA_MAX, 2
    }
    #endif
}
