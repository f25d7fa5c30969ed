import ArgumentParser
import EventModel
import Foundation
import Logging
import SluiceCommands
import SluiceTestKit
import WAL

/// `sluice-bench stop DIR --bytes 1G`: the time from SIGTERM to drained. A WAL holding a backlog
/// of ~4 KB events (the reference size) is handed to a `sluice gateway` whose forwarder sends
/// to a 3-broker mock cluster (`sluice dev-kafka`); as soon as the gateway listens it gets
/// SIGTERM, and the figure is the time until it exited 0 with its forwarder cursor at the
/// WAL's end (`sluice wal drain` runs the same forwarder and drain).
struct StopBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stop",
        abstract: "Time from SIGTERM to drained for a gateway with a WAL backlog (docs/performance.md)."
    )

    @Argument(help: "A directory for the WAL (removed afterwards).")
    var directory: String

    @Option(help: "Backlog size in MiB.")
    var mebibytes: Int = 1024

    @Option(help: "Bytes per event (about).")
    var eventBytes: Int = 4096

    func run() async throws {
        let root = self.directory + "/sluice-stop-bench-\(getpid())"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        var quiet = Logger(label: "sluice.bench")
        quiet.logLevel = .error
        let walDirectory = root + "/wal"

        // The backlog: normalized events of about `eventBytes`, 20 per record.
        var configuration = WALConfiguration(directory: walDirectory)
        configuration.budget = DiskBudget(maxBytes: 1 << 40, minFreeBytes: 0)
        let wal = try await WAL.openAndStart(configuration, logger: quiet)
        let origin = RequestOrigin(
            receivedAtMillis: Timestamp.nowMillis(),
            clientIP: "203.0.113.7",
            userAgent: "bench",
            gatewayID: "gw-bench"
        )
        // Random letters, so that the producer's LZ4 does not shrink the backlog to nothing: a
        // slice of a 1 MiB pool at a random offset per event (LZ4 looks back 64 KiB).
        let letters = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789".utf8)
        let pool = (0..<(1 << 20)).map { _ in letters[Int.random(in: 0..<letters.count)] }
        let paddingBytes = max(0, self.eventBytes - 420)
        var written = 0
        var events = 0
        var batch: [[UInt8]] = []
        while written < self.mebibytes << 20 {
            let offset = Int.random(in: 0..<(pool.count - paddingBytes))
            let padding = String(decoding: pool[offset..<offset + paddingBytes], as: UTF8.self)
            let event = Event(
                eventID: UUIDText.v7(millis: origin.receivedAtMillis),
                action: "page_view",
                userID: "user-\(events % 10_000)",
                timestampMillis: origin.receivedAtMillis,
                page: "https://shop.example.com/p/\(events % 5000)",
                object: "product-card-\(events % 5000)",
                referrer: "https://www.example.org/search?q=running+shoes",
                sessionID: "s-\(events % 50_000)",
                properties: .object([("note", .string(padding)), ("price", .number("119.99"))])
            )
            let json = event.normalizedJSON(origin: origin)
            written += json.count
            events += 1
            batch.append(json)
            if batch.count == 20 {
                _ = try await wal.append(batch)
                batch.removeAll(keepingCapacity: true)
            }
        }
        if !batch.isEmpty { _ = try await wal.append(batch) }
        await wal.close()
        let megabytes = Double(written) / 1e6
        print(String(format: "backlog: %d events, %.0f MB of event JSON", events, megabytes))

        let cluster = try await DevKafka.start(topics: ["events:12"], sluice: siblingSluice())
        defer { cluster.process.signal(SIGTERM) }

        // The gateway: SIGTERM as soon as it listens.
        let gateway = try SluiceProcess(
            [
                "gateway", "--listen", "127.0.0.1:0", "--wal-dir", walDirectory, "--kafka-bootstrap",
                cluster.bootstrapServers, "--log-level", "notice",
            ],
            environment: ["SLUICE_AUTH_REQUIRED": "false", "SLUICE_FORWARDER_DRAIN_TIMEOUT": "1h"],
            executable: siblingSluice()
        )
        _ = try await gateway.listeningPort(timeout: .seconds(120))
        let cursorAtSignal = (try? WALInspector(directory: walDirectory).cursors().first?.lsn) ?? .zero
        let signalled = ContinuousClock.now
        gateway.signal(SIGTERM)
        let status = try await gateway.waitForExit(timeout: .seconds(3600))
        let stopSeconds = Self.seconds(ContinuousClock.now - signalled)
        let cursor = (try? WALInspector(directory: walDirectory).cursors().first?.lsn) ?? .zero
        guard status == 0, cursor == LSN(UInt64(events)) else {
            printError("sluice: the gateway exited \(status) with its cursor at \(cursor) of \(events)")
            throw ExitCode.failure
        }
        let left = Double(events - Int(cursorAtSignal.rawValue)) / Double(events)
        print(
            String(
                format:
                    "gateway: SIGTERM to exit 0 (drained): %.1f s; %.0f%% of the backlog was left at SIGTERM (%.0f MB/s)",
                stopSeconds,
                left * 100,
                megabytes * left / stopSeconds
            )
        )
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}
