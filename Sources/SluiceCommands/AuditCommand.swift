import ArgumentParser
import Foundation
import Kafka
import Ledger
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
            offset ranges. Exit status: 0 when every event is accounted for or on its way, 1 when \
            some are unaccounted, 2 when the ledger could not be read. See docs/ledger.md.
            """
    )

    @OptionGroup var kafka: KafkaOptions

    @Option(help: "Only events forwarded in this window before now, e.g. 1h, 30m, 7d.")
    var since: String = "1h"

    @Option(help: "Ledger topic (default: ledger.topic).")
    var topic: String?

    @Option(help: "Give up when the ledger yields nothing for this many seconds.")
    var timeout: Int = 30

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
        let reconciliation = book.reconcile(nowMillis: now, graceMillis: 0)
        print(book.report(reconciliation, topic: topic))
        if reconciliation.unaccounted > 0 { throw ExitCode.failure }
    }
}
