import ArgumentParser
import Encryption
import Foundation
import Logging
import Synchronization
@_spi(Testing) import WAL

#if canImport(Glibc)
import Glibc
#endif

/// Appends deterministic records as fast as it can and prints one line per
/// acknowledgement, for the crash tests that SIGKILL it (WALTests/CrashTests).
struct TortureCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "torture",
        abstract: "Append test records forever, printing each acknowledged LSN (the crash tests' child)."
    )

    @Argument var directory: String
    @Option var round: UInt64 = 0
    @Option var concurrency: Int = 16
    @Option var segmentBytes: Int64 = 1 << 20
    @Option(help: "encrypt the WAL under this key file (wal.encryption.key_file)") var keyFile: String?
    @Option(help: "the key's id (wal.encryption.key_id)") var keyID = "torture"

    func run() async throws {
        var configuration = WALConfiguration(directory: self.directory)
        configuration.segmentBytes = self.segmentBytes
        if let keyFile = self.keyFile {
            configuration.encryption.enabled = true
            configuration.encryption.keyFile = keyFile
            configuration.encryption.keyID = self.keyID
        }
        configuration.budget = DiskBudget(maxBytes: 1 << 40, minFreeBytes: 0)
        var logger = Logger(label: "sluice.torture")
        logger.logLevel = .error
        let wal = try await WAL.openAndStart(configuration, logger: logger)
        let sequence = SequenceCounter()
        let round = self.round
        let ready = Array("ready\n".utf8)
        _ = ready.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<self.concurrency {
                group.addTask {
                    while true {
                        let seq = sequence.next()
                        let count = TortureRecord.eventCount(sequence: seq)
                        let events = (0..<count).map { TortureRecord.event(round: round, sequence: seq, index: $0) }
                        let receipt = try await wal.append(events)
                        let line = Array("ack \(receipt.firstLSN) \(round) \(seq) \(count)\n".utf8)
                        // One write(2) per line: lines from concurrent appenders never interleave.
                        _ = line.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
                    }
                }
            }
            try await group.waitForAll()
        }
    }
}

final class SequenceCounter: Sendable {
    private let value = Atomic<UInt64>(0)
    func next() -> UInt64 { self.value.add(1, ordering: .relaxed).newValue }
}
