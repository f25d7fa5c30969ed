import ArgumentParser
import EventModel
import Loader
import Logging
import SluiceCore

/// `sluice erase`: a user's right to erasure, across every routed table and future replays.
struct EraseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "erase",
        abstract: "Remove a user's rows from every routed table and record the erasure so replays drop them.",
        discussion: """
            Records a keyed hash of the id (loader.erasure.key_file) in loader.erasure.table, waits \
            for running loaders to read it, then deletes the user's rows (ALTER TABLE … DELETE) and \
            waits for ClickHouse to finish. Loaders drop the user's events from then on, also when \
            Kafka or the WAL is replayed. Safe to run again. Exit status: 0 done, 1 ClickHouse \
            failed (run it again), 2 bad input or configuration.
            """
    )

    @OptionGroup var options: ConfigOptions

    @Option(help: "The user id as the events carry it (the routes' user column, user_id by default).")
    var userId: String

    @Option(help: "Only this routed table, database.table (repeatable; default: every routed table).")
    var table: [String] = []

    @Option(help: "ClickHouse HTTP(S) URL, e.g. http://127.0.0.1:8123.")
    var clickhouseUrl: String?

    @Option(
        help:
            "How long to wait between recording and deleting (default: twice loader.erasure.refresh plus loader.batch_age)."
    )
    var settle: String?

    @Flag(help: "Print the report as one JSON object.")
    var json = false

    func run() async throws {
        var settings = try self.options.load()
        var erasure: UserErasure
        do {
            try ConfigOptions.apply(self.clickhouseUrl, to: "clickhouse.url", from: "--clickhouse-url", in: &settings)
            var configuration = settings.loader
            configuration.routes = try settings.loaderRoutes()
            do { try configuration.validate() } catch { throw SettingsError(description: "loader: \(error)") }
            erasure = UserErasure(configuration: configuration, logger: Logger(label: "sluice.erase"))
            if let settle = self.settle {
                erasure.settle = try SettingValue(text: settle, list: nil, origin: "--settle").duration("--settle")
            }
        } catch let error as SettingsError {
            printError("sluice: \(error)")
            throw ExitCode(2)
        }
        let json = self.json
        let report: UserErasure.Report
        do {
            report = try await erasure.erase(
                userID: self.userId,
                tables: self.table.isEmpty ? nil : self.table,
                progress: { if !json { print($0) } }
            )
        } catch {
            printError("sluice: erase: \(error)")
            throw ExitCode(error.code == .erasureFailed ? 1 : 2)
        }
        if json {
            var writer = JSONWriter()
            writer.raw("{")
            writer.member("record", report.record, first: true)
            writer.raw(",\"rows_removed\":\(report.rowsRemoved),\"tables\":[")
            for (index, table) in report.tables.enumerated() {
                writer.raw(index == 0 ? "{" : ",{")
                writer.member("table", table.table, first: true)
                writer.raw(",\"rows_removed\":\(table.rowsRemoved)")
                if let skipped = table.skipped { writer.member("skipped", skipped) }
                writer.raw("}")
            }
            writer.raw("]}")
            print(String(decoding: writer.bytes, as: UTF8.self))
            return
        }
        print("erased \(report.rowsRemoved) row(s) of the user from \(report.tables.count) table(s):")
        for table in report.tables {
            if let skipped = table.skipped {
                print("  \(table.table): skipped (\(skipped))")
            } else {
                print("  \(table.table): \(table.rowsRemoved) row(s) removed")
            }
        }
        print("loaders drop this user's events from now on, replays included (record \(report.record))")
    }
}
