import ArgumentParser
import Encryption
import Foundation
import Logging
import SluiceCore
import Synchronization
@_spi(Testing) import WAL

extension WALCommand {
    struct Bench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Measure appends through the real WAL against the disk's raw write+fdatasync ceiling.",
            discussion: """
                Runs in a fresh sub-directory of DIR (removed afterwards): first the raw baseline — a loop of
                pwrite + fdatasync with one record per sync, then with 1 MiB per sync — then C concurrent
                appenders through the WAL for the given time. Prints appends/s, MB/s, p50/p99 append latency
                and the ratios to the baseline measured in the same run.
                """
        )

        @Argument(help: "A directory on the disk to measure.")
        var directory: String

        @Option(help: "Bytes per event (one event per append).")
        var size: Int = 4096

        @Option(help: "Seconds of WAL appends.")
        var seconds: Double = 5

        @Option(help: "Seconds for each raw baseline.")
        var rawSeconds: Double = 2

        @Option(help: "Concurrent appenders.")
        var concurrency: Int = 64

        @Option(help: "Segment size in bytes.")
        var segmentBytes: Int64 = 64 << 20

        @Flag(help: "Encrypt the records (wal.encryption, under a key made for the run).")
        var encrypt = false

        @OptionGroup var output: OutputOptions

        struct Result: Codable {
            var encrypted: Bool
            var recordBytes: Int
            var concurrency: Int
            var seconds: Double
            var appends: Int
            var appendsPerSecond: Double
            var megabytesPerSecond: Double
            var p50Milliseconds: Double
            var p99Milliseconds: Double
            var maxMilliseconds: Double
            var meanGroupCommitRecords: Double
            var meanFsyncMilliseconds: Double
            var fsyncBusyFraction: Double
            var rawSyncsPerSecond: Double
            var rawSmallMegabytesPerSecond: Double
            var rawLargeMegabytesPerSecond: Double
            /// Raw write+fdatasync with the WAL's own mean bytes per group commit.
            var rawSameBatchMegabytesPerSecond: Double
            var ratioToRawSameBatch: Double
            var ratioToRawSyncs: Double
            var ratioToRawBandwidth: Double
        }

        func validate() throws {
            guard self.size > 0, self.size <= 8 << 20 else { throw ValidationError("--size must be 1 byte to 8 MiB") }
            guard self.concurrency > 0, self.concurrency <= 100_000 else {
                throw ValidationError("--concurrency must be 1 to 100000")
            }
            guard self.seconds > 0, self.rawSeconds > 0 else { throw ValidationError("durations must be positive") }
        }

        func run() async throws {
            let root = self.directory + "/sluice-bench-\(getpid())"
            try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: root) }

            let raw = try RawSyncBaseline(directory: root)
            let small = try raw.measure(chunk: self.size + 48, seconds: self.rawSeconds)
            let large = try raw.measure(chunk: 1 << 20, seconds: self.rawSeconds)

            var configuration = WALConfiguration(directory: root + "/wal")
            configuration.segmentBytes = self.segmentBytes
            configuration.budget = DiskBudget(maxBytes: 1 << 50, minFreeBytes: 0)
            if self.encrypt {
                let keyFile = root + "/bench.key"
                try Keyring.writeNewKeyFile(keyFile)
                configuration.encryption.enabled = true
                configuration.encryption.keyFile = keyFile
                configuration.encryption.keyID = "bench"
            }
            var logger = Logger(label: "sluice.bench")
            logger.logLevel = .warning
            let wal = try await WAL.openAndStart(configuration, logger: logger)
            let event = [UInt8](repeating: 0x61, count: self.size)
            let deadline = ContinuousClock.now + .milliseconds(Int(self.seconds * 1000))
            let started = ContinuousClock.now
            let latencies = try await withThrowingTaskGroup(of: [UInt64].self) { group in
                for _ in 0..<self.concurrency {
                    group.addTask {
                        var samples: [UInt64] = []
                        while ContinuousClock.now < deadline {
                            let begin = WallClock.monotonic()
                            _ = try await wal.append([event])
                            samples.append(WallClock.monotonic() - begin)
                        }
                        return samples
                    }
                }
                var all: [UInt64] = []
                for try await samples in group { all += samples }
                return all.sorted()
            }
            let elapsed = ContinuousClock.now - started
            let statistics = wal.statistics
            await wal.close()

            let seconds = elapsed.seconds
            // The fairest ceiling: a perfect writer syncing the same number of bytes each time.
            let meanBatchBytes = statistics.batches > 0 ? Int(statistics.bytes / statistics.batches) : self.size
            let sameBatch = try raw.measure(chunk: max(meanBatchBytes, 512), seconds: self.rawSeconds)
            raw.remove()
            let appendsPerSecond = Double(latencies.count) / seconds
            let megabytesPerSecond = Double(statistics.bytes) / seconds / 1e6
            func percentile(_ p: Double) -> Double {
                guard !latencies.isEmpty else { return 0 }
                let index = min(latencies.count - 1, Int((Double(latencies.count) * p).rounded(.up)) - 1)
                return Double(latencies[max(0, index)]) / 1e6
            }
            let result = Result(
                encrypted: self.encrypt,
                recordBytes: self.size,
                concurrency: self.concurrency,
                seconds: seconds,
                appends: latencies.count,
                appendsPerSecond: appendsPerSecond,
                megabytesPerSecond: megabytesPerSecond,
                p50Milliseconds: percentile(0.50),
                p99Milliseconds: percentile(0.99),
                maxMilliseconds: percentile(1.0),
                meanGroupCommitRecords: statistics.batches > 0
                    ? Double(statistics.records) / Double(statistics.batches) : 0,
                meanFsyncMilliseconds: statistics.batches > 0
                    ? Double(statistics.fsyncNanos) / Double(statistics.batches) / 1e6 : 0,
                fsyncBusyFraction: Double(statistics.fsyncNanos) / 1e9 / seconds,
                rawSyncsPerSecond: small.syncsPerSecond,
                rawSmallMegabytesPerSecond: small.megabytesPerSecond,
                rawLargeMegabytesPerSecond: large.megabytesPerSecond,
                rawSameBatchMegabytesPerSecond: sameBatch.megabytesPerSecond,
                ratioToRawSameBatch: megabytesPerSecond / sameBatch.megabytesPerSecond,
                ratioToRawSyncs: appendsPerSecond / small.syncsPerSecond,
                ratioToRawBandwidth: megabytesPerSecond / large.megabytesPerSecond
            )
            if self.output.json {
                try printJSON(result)
                return
            }
            let lines = [
                "wal bench: \(result.recordBytes) B records, concurrency \(result.concurrency), "
                    + String(format: "%.1f s", result.seconds),
                String(
                    format: "  raw write+fdatasync, 1 record/sync:    %.0f syncs/s, %.1f MB/s",
                    result.rawSyncsPerSecond,
                    result.rawSmallMegabytesPerSecond
                ),
                String(format: "  raw write+fdatasync, 1 MiB/sync:       %.1f MB/s", result.rawLargeMegabytesPerSecond),
                String(
                    format: "  raw write+fdatasync, WAL's batch size: %.1f MB/s",
                    result.rawSameBatchMegabytesPerSecond
                ),
                String(
                    format: "  WAL appends:   %.0f appends/s, %.1f MB/s, %.1f records per group commit",
                    result.appendsPerSecond,
                    result.megabytesPerSecond,
                    result.meanGroupCommitRecords
                ),
                String(
                    format: "  WAL latency:   p50 %.2f ms, p99 %.2f ms, max %.2f ms",
                    result.p50Milliseconds,
                    result.p99Milliseconds,
                    result.maxMilliseconds
                ),
                String(
                    format: "  WAL fsync:     %.3f ms mean, in fsync %.0f%% of the time",
                    result.meanFsyncMilliseconds,
                    result.fsyncBusyFraction * 100
                ),
                String(
                    format:
                        "  ratios:        %.2fx raw syncs/s, %.2fx raw 1 MiB bandwidth, %.2fx raw at the WAL's batch size",
                    result.ratioToRawSyncs,
                    result.ratioToRawBandwidth,
                    result.ratioToRawSameBatch
                ),
            ]
            print(lines.joined(separator: "\n"))
        }
    }
}

/// The disk's ceiling: sequential pwrite + fdatasync on a preallocated file, the best any
/// WAL on this disk could do with the same bytes per sync.
struct RawSyncBaseline {
    let path: String
    let fd: Int32
    static let fileBytes: Int64 = 256 << 20

    init(directory: String) throws {
        self.path = directory + "/raw-baseline"
        self.fd = open(self.path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard self.fd >= 0 else { throw WALError(.io, "cannot create \(self.path)", errno: errno) }
        let status = posix_fallocate(self.fd, 0, off_t(Self.fileBytes))
        guard status == 0 else { throw WALError(.io, "cannot preallocate \(self.path)", errno: status) }
        // Zero-filled like the WAL's segments, so both measure overwrites of written extents.
        let zeros = [UInt8](repeating: 0, count: 1 << 20)
        for offset in stride(from: Int64(0), to: Self.fileBytes, by: zeros.count) {
            guard zeros.withUnsafeBytes({ pwrite(self.fd, $0.baseAddress, $0.count, off_t(offset)) }) == zeros.count
            else {
                throw WALError(.io, "cannot zero-fill \(self.path)", errno: errno)
            }
        }
        fsync(self.fd)
    }

    struct Measurement {
        var syncsPerSecond: Double
        var megabytesPerSecond: Double
    }

    func measure(chunk: Int, seconds: Double) throws -> Measurement {
        let buffer = [UInt8](repeating: 0x62, count: chunk)
        var offset: Int64 = 0
        var syncs = 0
        let start = WallClock.monotonic()
        let end = start + UInt64(seconds * 1e9)
        var now = start
        while now < end {
            if offset + Int64(chunk) > Self.fileBytes { offset = 0 }
            let written = buffer.withUnsafeBytes { pwrite(self.fd, $0.baseAddress, chunk, off_t(offset)) }
            guard written == chunk else { throw WALError(.io, "pwrite failed on \(self.path)", errno: errno) }
            guard fdatasync(self.fd) == 0 else { throw WALError(.io, "fdatasync failed on \(self.path)", errno: errno) }
            offset += Int64(chunk)
            syncs += 1
            now = WallClock.monotonic()
        }
        let elapsed = Double(now - start) / 1e9
        return Measurement(
            syncsPerSecond: Double(syncs) / elapsed,
            megabytesPerSecond: Double(syncs * chunk) / elapsed / 1e6
        )
    }

    func remove() {
        close(self.fd)
        unlink(self.path)
    }
}
