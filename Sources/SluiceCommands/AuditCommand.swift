import ArgumentParser
import ClickHouse
import Foundation
import Kafka
import Ledger
import Loader
import Logging

/// `sluice audit`: the conservation ledger's reconciliation, per hop, once.
struct AuditCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Reconcile the conservation ledger: what each hop took and handed on, and what is missing.",
        discussion: """
            Reads the ledger topic to its end and prints, per gateway, what its WAL accepted and its \
            forwarder placed in Kafka, per partition what the loaders loaded, dead-lettered or erased, \
            and the events acknowledged to clients that are accounted for nowhere, with their LSN and \
            offset ranges. With --rows it also asks ClickHouse whether the rows the loaders confirmed \
            in the window are still there (a dropped part, a lost disk). Exit status: 0 when every \
            event is accounted for or on its way, 1 when some are unaccounted or missing from \
            ClickHouse, 2 when the ledger or ClickHouse could not be read. See docs/ledger.md.
            """
    )

    @OptionGroup var kafka: KafkaOptions

    @Option(help: "Only events forwarded in this window before now, e.g. 1h, 30m, 7d.")
    var since: String = "1h"

    @Option(help: "Ledger topic (default: ledger.topic).")
    var topic: String?

    @Option(help: "Give up when the ledger yields nothing for this many seconds.")
    var timeout: Int = 30

    @Flag(help: "Also check that the rows the loaders confirmed in the window are still in ClickHouse.")
    var rows = false

    @Option(help: "ClickHouse HTTP(S) URL for --rows (default: clickhouse.url).")
    var clickhouseUrl: String?

    func run() async throws {
        let window = try KeysCommand.duration(self.since, option: "--since")
        var properties = try self.kafka.properties()
        let topic = try self.topic ?? self.kafka.options.load().ledger.topic
        properties["group.id"] = "sluice-audit-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        properties["auto.offset.reset"] = "earliest"
        properties["enable.auto.commit"] = "false"
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let sinceMillis = now - window.components.seconds * 1000
        var book = LedgerBook()
        book.tracksRows = self.rows
        do {
            let consumer = try KafkaConsumer(properties: properties, topics: [topic])
            let marks = try await consumer.watermarks(topic: topic)
            var remaining = Dictionary(
                uniqueKeysWithValues: marks.compactMap { partition, mark in
                    mark.high > mark.low ? (partition, mark.high) : nil
                }
            )
            var idleSince = ContinuousClock.now
            while !remaining.isEmpty {
                let poll = await consumer.poll(maxMessages: 1000, timeout: .milliseconds(200))
                if poll.messages.isEmpty {
                    if ContinuousClock.now - idleSince > .seconds(self.timeout) {
                        await consumer.close()
                        printError(
                            "sluice: the ledger topic \(topic) yielded nothing for \(self.timeout) s with"
                                + " \(remaining.count) partition(s) not read to their end"
                        )
                        throw ExitCode(2)
                    }
                    continue
                }
                idleSince = ContinuousClock.now
                for message in poll.messages {
                    if let high = remaining[message.partition], message.offset + 1 >= high {
                        remaining[message.partition] = nil
                    }
                    switch LedgerRecord.parse(message.value) {
                    case .success(let record): book.apply(record, sinceMillis: sinceMillis)
                    case .failure(let error):
                        printError("sluice: skipped \(topic)/\(message.partition)@\(message.offset): \(error)")
                    }
                }
            }
            await consumer.close()
        } catch let error as KafkaError {
            printError("sluice: reading the ledger topic \(topic): \(error)")
            throw ExitCode(2)
        }
        var reconciliation = book.reconcile(nowMillis: now, graceMillis: 0)
        var checks: [RowAudit.TableCheck] = []
        if self.rows {
            checks = try await self.checkRows(&book, reconciliation: &reconciliation, now: now, kafka: properties)
        }
        print(book.report(reconciliation, topic: topic))
        if self.rows {
            print("")
            print(RowAudit.report(checks))
        }
        let missingRows = checks.reduce(0) { $0 + $1.missingCount }
        if reconciliation.unaccounted > 0 || missingRows > 0 { throw ExitCode.failure }
    }

    /// Asks ClickHouse for the confirmed rows of the window, and for the unaccounted events
    /// (which are accounted for when a table holds them).
    private func checkRows(
        _ book: inout LedgerBook,
        reconciliation: inout LedgerBook.Reconciliation,
        now: Int64,
        kafka: [String: String]
    ) async throws -> [RowAudit.TableCheck] {
        var settings = try self.kafka.options.load()
        try ConfigOptions.apply(self.clickhouseUrl, to: "clickhouse.url", from: "--clickhouse-url", in: &settings)
        let routes = try settings.loaderRoutes()
        let configuration = settings.loader.clickHouse
        let clickHouse = ClickHouseClient(configuration, logger: Logger(label: "sluice.audit"))
        let audit = RowAudit(clickHouse: clickHouse, kafkaProperties: kafka, routes: routes)
        do {
            if !reconciliation.missing.isEmpty {
                let tables = Set(routes.map(\.table)).union(book.partitions.values.flatMap(\.tables))
                let found = try await audit.rowsAmong(reconciliation.missing, tables: tables.sorted())
                for (gateway, lsns) in found { book.settleFoundInClickHouse(gateway: gateway, lsns: lsns) }
                if !found.isEmpty { reconciliation = book.reconcile(nowMillis: now, graceMillis: 0) }
            }
            let checks = try await audit.check(book.confirmedRows)
            try? await clickHouse.shutdown()
            return checks
        } catch {
            try? await clickHouse.shutdown()
            printError("sluice: checking the rows in ClickHouse (\(configuration.url)): \(error)")
            throw ExitCode(2)
        }
    }
}
