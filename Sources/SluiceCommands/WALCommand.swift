import ArgumentParser
import Encryption
import Foundation
import SluiceCore
@_spi(Testing) import WAL

/// `sluice wal …`: operator tools for a WAL directory. Read-only commands are safe beside a
/// running gateway.
struct WALCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wal",
        abstract: "Inspect, verify and benchmark a write-ahead log directory.",
        subcommands: [
            List.self, Stat.self, Dump.self, Verify.self, CursorCommand.self, Drain.self, DeadLetters.self, Bench.self,
        ]
    )
}

struct OutputOptions: ParsableArguments {
    @Flag(help: "Print JSON instead of text.")
    var json = false
}

/// Exit codes the read-only commands share: 2 means the directory could not be used.
enum ExitStatus {
    static let damaged = ExitCode(1)
    static let unusable = ExitCode(2)
}

/// `--config`: where the read commands find the `wal.encryption` keys of an encrypted WAL (the
/// gateway's configuration file; the `SLUICE_WAL_ENCRYPTION_*` environment serves too).
struct WALKeysOption: ParsableArguments {
    @Option(help: "A configuration file whose wal.encryption keys read encrypted segments.")
    var config: String?

    /// The keys configured by the file and the environment, or nil when none are; exit status
    /// 2 with the reason when they cannot be read.
    func keyring() throws -> Keyring? {
        let settings: Settings
        do {
            // Only the keys' own variables: an operator's shell may hold other SLUICE_ ones
            // (`source ./data/dev/env` sets SLUICE_URL, SLUICE_KEY, …) that a read-only tool
            // has no business refusing.
            let environment = ProcessInfo.processInfo.environment.filter { $0.key.hasPrefix("SLUICE_WAL_ENCRYPTION_") }
            settings = try SettingsLoader.load(file: self.config, environment: environment)
        } catch let error as SettingsError {
            printError("sluice: \(error.description)")
            throw ExitStatus.unusable
        }
        do {
            return try settings.wal.encryption.keyring(prefix: "wal.encryption", origin: self.config ?? "environment")
        } catch {
            printError("sluice: \(error.description)")
            throw ExitStatus.unusable
        }
    }
}

func openInspector(_ directory: String, keys: WALKeysOption) throws -> WALInspector {
    let keyring = try keys.keyring()
    do {
        let inspector = try WALInspector(directory: directory, keyring: keyring)
        // Refused up front, by name, rather than halfway through a dump.
        if let missing = try inspector.missingKeys().first {
            printError(
                "sluice: \(missing.segment) and maybe others are encrypted under key '\(missing.keyID)', which is not "
                    + "configured: give the gateway's configuration with --config (wal.encryption.key_file and "
                    + "previous_keys)"
            )
            throw ExitStatus.unusable
        }
        return inspector
    } catch let exit as ExitCode {
        throw exit
    } catch {
        printError("sluice: \(describe(error))")
        throw ExitStatus.unusable
    }
}

func describe(_ error: any Error) -> String {
    if let error = error as? WALError {
        var text = error.message
        if let code = error.errno { text += ": " + String(cString: strerror(code)) }
        return text
    }
    return "\(error)"
}

package func printError(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}

func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    encoder.keyEncodingStrategy = .convertToSnakeCase
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

func formatBytes(_ bytes: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes)
    var unit = 0
    while abs(value) >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
}

func formatTime(_ nanos: UInt64?) -> String {
    guard let nanos else { return "-" }
    let date = Date(timeIntervalSince1970: Double(nanos) / 1e9)
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return formatter.string(from: date)
}

package func table(_ rows: [[String]]) -> String {
    guard let header = rows.first else { return "" }
    var widths = header.map(\.count)
    for row in rows { for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) } }
    return rows.map { row in
        row.enumerated().map { index, cell in
            index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }.joined(separator: "\n")
}

extension WALCommand {
    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ls",
            abstract: "List segments: LSN range, size, records, time range, state."
        )

        @Argument(help: "The WAL directory.")
        var directory: String

        @OptionGroup var keys: WALKeysOption
        @OptionGroup var output: OutputOptions

        func run() async throws {
            let inspector = try openInspector(self.directory, keys: self.keys)
            let segments = try inspector.segments()
            if self.output.json {
                try printJSON(segments)
                return
            }
            var rows = [
                [
                    "SEGMENT", "FIRST_LSN", "LAST_LSN", "EVENTS", "RECORDS", "DATA", "FILE", "OLDEST", "NEWEST", "KEY",
                    "STATE",
                ]
            ]
            for segment in segments {
                rows.append([
                    segment.name,
                    "\(segment.firstLSN)",
                    segment.events > 0 ? "\(segment.nextLSN.rawValue - 1)" : "-",
                    "\(segment.events)",
                    "\(segment.records)",
                    formatBytes(segment.dataEnd),
                    formatBytes(segment.fileBytes),
                    formatTime(segment.minTimestampNanos),
                    formatTime(segment.maxTimestampNanos),
                    segment.keyID ?? "-",
                    segment.state.rawValue + Self.damageMark(segment),
                ])
            }
            print(table(rows))
            for segment in segments {
                for damage in segment.damage { print("!! \(damage)") }
            }
        }

        static func damageMark(_ segment: SegmentSummary) -> String {
            if segment.headerDamage != nil { return " (damaged header)" }
            if segment.footerDamage != nil { return " (damaged footer)" }
            return segment.damage.isEmpty ? "" : " (damaged)"
        }
    }

    struct Stat: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Totals, disk pressure, and each cursor's lag in events, bytes and age."
        )

        @Argument(help: "The WAL directory.")
        var directory: String

        @Option(
            help: "The WAL budget in bytes (wal.max_bytes) to compute pressure with; default: the running writer's."
        )
        var maxBytes: Int64?

        @Option(help: "The free space to leave on the volume (wal.min_free_bytes); default: the running writer's.")
        var minFreeBytes: Int64?

        @OptionGroup var keys: WALKeysOption
        @OptionGroup var output: OutputOptions

        func run() async throws {
            let inspector = try openInspector(self.directory, keys: self.keys)
            // The writer's own numbers (it records them in wal.settings when it opens), so this
            // agrees with its pressure gauge and /readyz; flags override, defaults come last.
            let recorded = inspector.writerSettings()
            let running = inspector.writerPID() != nil
            var budget = recorded?.budget ?? DiskBudget()
            var source: String
            switch recorded {
            case nil:
                source = "defaults (no wal.settings; pass --max-bytes and --min-free-bytes to match the gateway)"
            case .some(let settings) where running:
                source = "the running writer (wal.settings, pid \(settings.pid))"
            case .some(let settings):
                source = "the last writer (wal.settings, pid \(settings.pid), no longer running)"
            }
            if let maxBytes = self.maxBytes { budget.maxBytes = maxBytes }
            if let minFreeBytes = self.minFreeBytes { budget.minFreeBytes = minFreeBytes }
            if self.maxBytes != nil || self.minFreeBytes != nil { source = "flags, then " + source }
            var stat = try inspector.stat(budget: budget)
            stat.budgetSource = source
            if self.output.json {
                try printJSON(stat)
                return
            }
            print("directory:   \(stat.directory)")
            print("writer:      \(stat.writerPID.map { "running (pid \($0))" } ?? "none")")
            print(
                "segments:    \(stat.segments) (\(formatBytes(stat.bytes)) of a \(formatBytes(stat.budgetBytes)) budget)"
            )
            print("events:      LSN \(stat.firstLSN) ..< \(stat.nextLSN) in \(stat.records) records")
            print(
                "volume free: \(formatBytes(stat.volumeAvailableBytes)) (wal.min_free_bytes: \(formatBytes(stat.minFreeBytes)))"
            )
            print("pressure:    \(stat.pressure.rawValue)" + (stat.pressureReason.map { ": \($0)" } ?? ""))
            print("budget from: \(source)")
            print("quarantine:  \(stat.quarantinedFiles) file(s)")
            if stat.cursors.isEmpty && stat.firstLSN > .zero {
                print(
                    "cursors:     NONE, but segments below LSN \(stat.firstLSN) were deleted, so a consumer existed: "
                        + "its cursor file is missing (a running forwarder rewrites it at its next commit; "
                        + "a restarted one begins at LSN \(stat.firstLSN))"
                )
                return
            }
            if stat.cursors.isEmpty {
                print("cursors:     none (nothing consumes this WAL yet; no segment is deleted)")
                return
            }
            print("")
            var rows = [["CURSOR", "LSN", "LAG_EVENTS", "LAG_BYTES", "OLDEST_UNCONSUMED", "UPDATED"]]
            for cursor in stat.cursors {
                rows.append([
                    cursor.name, "\(cursor.lsn)", "\(cursor.lagEvents)", formatBytes(cursor.lagBytes),
                    cursor.oldestUnconsumedAgeSeconds.map { String(format: "%.1f s", $0) } ?? "-",
                    formatTime(cursor.updatedNanos),
                ])
            }
            print(table(rows))
        }
    }

    struct Dump: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print records and the events inside them, from an LSN on."
        )

        @Argument(help: "The WAL directory.")
        var directory: String

        @Option(help: "The first LSN to show.")
        var from: UInt64 = 0

        @Option(help: "Most events to show.")
        var limit: Int?

        @OptionGroup var keys: WALKeysOption
        @OptionGroup var output: OutputOptions

        struct EventLine: Encodable {
            var lsn: UInt64
            var recordLSN: UInt64
            var segment: String
            var offset: Int64
            var timestamp: String
            /// The event as text when it is UTF-8 (Sluice events are JSON), else nil.
            var event: String?
            var eventBase64: String?
        }

        struct DamageLine: Encodable {
            var damage: Damage
        }

        func run() async throws {
            let inspector = try openInspector(self.directory, keys: self.keys)
            var shown = 0
            let from = LSN(self.from)
            let limit = self.limit ?? .max
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            encoder.keyEncodingStrategy = .convertToSnakeCase
            try inspector.records(from: from) { item in
                switch item {
                case .damage(let damage):
                    if self.output.json {
                        print(String(decoding: try encoder.encode(DamageLine(damage: damage)), as: UTF8.self))
                    } else {
                        print("!! damage: \(damage)")
                    }
                case .record(let record, let segment, let offset):
                    for (index, event) in record.events.enumerated() {
                        let lsn = record.lsn + UInt64(index)
                        guard lsn >= from else { continue }
                        guard shown < limit else { return false }
                        shown += 1
                        let text = String(validating: event, as: UTF8.self)
                        if self.output.json {
                            let line = EventLine(
                                lsn: lsn.rawValue,
                                recordLSN: record.lsn.rawValue,
                                segment: segment,
                                offset: offset,
                                timestamp: formatTime(record.timestampNanos),
                                event: text,
                                eventBase64: text == nil ? Data(event).base64EncodedString() : nil
                            )
                            print(String(decoding: try encoder.encode(line), as: UTF8.self))
                        } else {
                            let body = text ?? "base64:" + Data(event).base64EncodedString()
                            print("\(lsn)\t\(formatTime(record.timestampNanos))\t\(segment)@\(offset)\t\(body)")
                        }
                    }
                }
                return shown < limit
            }
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check every frame's checksums, LSN continuity, footers and cursors.",
            discussion: "Exit status: 0 clean, 1 damage found (each range printed), 2 directory unusable."
        )

        @Argument(help: "The WAL directory.")
        var directory: String

        @OptionGroup var keys: WALKeysOption
        @OptionGroup var output: OutputOptions

        func run() async throws {
            let inspector = try openInspector(self.directory, keys: self.keys)
            let report: VerifyReport
            do {
                report = try inspector.verify()
            } catch {
                printError("sluice: \(describe(error))")
                throw ExitStatus.unusable
            }
            if self.output.json {
                try printJSON(report)
            } else {
                for problem in report.problems {
                    var line = "DAMAGE \(problem.segment ?? "-"): \(problem.detail)"
                    if let first = problem.firstLSN, let last = problem.lastLSN {
                        line += "; lost LSN \(first)...\(last)"
                    }
                    print(line)
                }
                for note in report.notes { print("note: \(note)") }
                print(
                    "\(report.isClean ? "clean" : "DAMAGED"): \(report.segments) segment(s), \(report.records) record(s), "
                        + "\(report.problems.count) problem(s)"
                )
            }
            if !report.isClean { throw ExitStatus.damaged }
        }
    }

    struct CursorCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "cursor",
            abstract: "Show cursors, or move one (only with --force and no writer running)."
        )

        @Argument(help: "The WAL directory.")
        var directory: String

        @Argument(help: "A cursor name; all cursors when omitted.")
        var name: String?

        @Option(help: "Move the cursor to this LSN (events below it count as consumed).")
        var set: UInt64?

        @Flag(help: "Required with --set: moving a cursor forward skips events, backward resends them.")
        var force = false

        @OptionGroup var keys: WALKeysOption
        @OptionGroup var output: OutputOptions

        func validate() throws {
            if self.set != nil && self.name == nil { throw ValidationError("--set needs a cursor name") }
            if self.set != nil && !self.force {
                throw ValidationError("--set changes what the forwarder sends next; add --force to confirm")
            }
        }

        func run() async throws {
            let inspector = try openInspector(self.directory, keys: self.keys)
            if let lsn = self.set, let name = self.name {
                do {
                    let before = try inspector.cursors().first { $0.name == name }
                    let after = try inspector.setCursor(name, to: LSN(lsn))
                    if self.output.json {
                        try printJSON(after)
                    } else {
                        print("cursor \(name): \(before.map { "\($0.lsn)" } ?? "(new)") -> \(after.lsn)")
                    }
                } catch let error as WALError where error.code == .locked {
                    printError("sluice: \(error.message); stop the gateway before moving a cursor")
                    throw ExitCode.failure
                }
                return
            }
            var cursors = try inspector.cursors()
            if let name = self.name {
                cursors = cursors.filter { $0.name == name }
                if cursors.isEmpty {
                    printError("sluice: no cursor named \(name) in \(self.directory)")
                    throw ExitCode.failure
                }
            }
            if self.output.json {
                try printJSON(cursors)
                return
            }
            var rows = [["CURSOR", "LSN", "GENERATION", "UPDATED"]]
            for cursor in cursors {
                rows.append([cursor.name, "\(cursor.lsn)", "\(cursor.generation)", formatTime(cursor.updatedNanos)])
            }
            print(table(rows))
        }
    }
}
