import ArgumentParser
import Forwarder
import Foundation
import Kafka
import Logging
import ServiceLifecycle
import SluiceCore
import Telemetry
import UnixSignals
import WAL

extension WALCommand {
    /// `sluice wal drain DIR`: forwards what a WAL holds beyond its forwarder cursor to Kafka
    /// and exits 0 once the cursor reaches the end — for the WAL a gateway left behind when it
    /// was stopped for good (a scaled-down StatefulSet's volume; the Kubernetes drainer Job
    /// runs exactly this).
    ///
    /// It is the gateway's own forwarder with the gateway's settings (`--config`, the
    /// `SLUICE_*` environment), stopped the way a gateway stops at SIGTERM: it sends the
    /// backlog, Kafka acknowledges it, the cursor is persisted. It takes the WAL's lock, so it
    /// refuses a directory a gateway still runs on.
    struct Drain: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Forward a WAL's backlog to Kafka; exit 0 once its forwarder cursor reaches the end.",
            discussion: """
                For a gateway stopped for good (scale-down): run it on that gateway's WAL volume with \
                the gateway's configuration. Exit status: 0 drained (or nothing to drain), 1 the \
                timeout passed first (what was sent stays sent; run it again), 2 the directory or \
                the configuration cannot be used (a gateway still holds the WAL, no Kafka configured).
                """
        )

        @Argument(help: "The WAL directory (overrides wal.directory).")
        var directory: String

        @OptionGroup var options: ConfigOptions

        @OptionGroup var kafka: KafkaBootstrapOption

        @Option(help: "Give up after this long, e.g. 30m (exit status 1).")
        var timeout: String = "1h"

        func run() async throws {
            var settings = try self.options.load()
            try ConfigOptions.apply(self.directory, to: "wal.directory", from: "DIRECTORY", in: &settings)
            try self.kafka.apply(to: &settings)
            let timeout = try timeoutOption(self.timeout)
            guard var forwarding = settings.forwarderConfiguration else {
                printError("sluice: no Kafka to drain into: give --kafka-bootstrap or kafka.bootstrap_servers")
                throw ExitStatus.unusable
            }
            do { _ = try forwarding.encryptionKeyring() } catch {
                printError("sluice: \(error)")
                throw ExitStatus.unusable
            }
            guard FileManager.default.fileExists(atPath: self.directory) else {
                printError("sluice: \(self.directory) does not exist")
                throw ExitStatus.unusable
            }
            // A drainer Job keeps trying while Kafka is away: no early give-up on a stall.
            forwarding.drainTimeout = timeout
            forwarding.drainStallTimeout = timeout
            _ = Telemetry.bootstrap(logLevel: settings.logLevel)
            let wal = try await settings.openWAL()
            let end = wal.durableNextLSN
            let start = wal.cursor(forwarding.cursorName)?.lsn ?? wal.oldestLSN
            guard start < end else {
                await wal.close()
                print("nothing to drain in \(self.directory): the forwarder cursor is at the end (LSN \(end))")
                return
            }
            print("draining \(end - start) event(s), LSN \(start) ..< \(end), from \(self.directory) into Kafka")
            let started = ContinuousClock.now
            let forwarder = Forwarder(wal: wal, configuration: forwarding, logger: Logger(label: "sluice.forwarder"))
            let group = ServiceGroup(
                configuration: .init(
                    services: [
                        .init(service: wal),
                        .init(service: forwarder),
                        // Returns at once: the group stops as a gateway does at SIGTERM, in
                        // reverse (the forwarder drains the backlog first, then the WAL closes).
                        .init(service: StopNow(), successTerminationBehavior: .gracefullyShutdownGroup),
                    ],
                    gracefulShutdownSignals: [],
                    cancellationSignals: [.sigterm, .sigint],
                    logger: Logger(label: "sluice")
                )
            )
            try await group.run()
            let cursor =
                try WALInspector(directory: self.directory, keyring: nil).cursors()
                .first { $0.name == forwarding.cursorName }?.lsn ?? start
            let seconds = String(format: "%.1f", Double((ContinuousClock.now - started).nanoseconds) / 1e9)
            guard cursor >= end else {
                printError(
                    "sluice: \(end - cursor) of \(end - start) event(s) not drained after \(seconds) s (cursor \(cursor), end \(end)); they stay in the WAL: run `sluice wal drain` again once Kafka takes them"
                )
                throw ExitStatus.damaged
            }
            print("drained: the forwarder cursor reached the end (LSN \(end)) in \(seconds) s")
        }
    }
}

/// `--timeout`'s value (at least a second), or exit status 2 with what is wrong with it.
private func timeoutOption(_ text: String) throws -> Duration {
    do {
        return try SettingValue(text: text, list: nil, origin: "the command line").duration(
            "--timeout",
            atLeast: .seconds(1)
        )
    } catch {
        printError("sluice: \(error)")
        throw ExitStatus.unusable
    }
}

/// A service that ends at once, for a group that is to stop as soon as it started.
private struct StopNow: Service {
    func run() async throws {}
}

extension WALCommand {
    /// `sluice wal dead-letters ls|resend DIR`: the events Kafka refused for good, which the
    /// forwarder keeps in `<wal>/forwarder/dead-letters.ndjson` (``DeadLetterResend``).
    struct DeadLetters: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "dead-letters",
            abstract: "Count the forwarder's dead letters, or send them to Kafka again after a fix.",
            subcommands: [List.self, Resend.self]
        )

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "ls",
                abstract: "Count the forwarder's dead letters by reason (safe beside a running gateway)."
            )

            @Argument(help: "The WAL directory.")
            var directory: String

            func run() async throws {
                let resend = DeadLetterResend(walDirectory: self.directory)
                let pending: (byReason: [String: Int], unreadable: Int)
                do { pending = try resend.pending() } catch {
                    printError("sluice: \(error)")
                    throw ExitStatus.unusable
                }
                let total = pending.byReason.values.reduce(0, +)
                print("\(total) dead letter(s) in \(resend.directory)")
                for (reason, count) in pending.byReason.sorted(by: { ($0.value, $1.key) > ($1.value, $0.key) }) {
                    print("  \(count)\t\(reason)")
                }
                if pending.unreadable > 0 { print("  \(pending.unreadable)\t(unreadable lines, never sent)") }
            }
        }

        struct Resend: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Send the forwarder's dead letters to Kafka again, as the forwarder would have.",
                discussion: """
                    Fix the cause first (the topic's max.message.bytes, an ACL, a missing topic). Give the \
                    gateway's configuration (--config, SLUICE_* environment): the same topics, Kafka \
                    security and payload encryption apply. Safe beside a running gateway. What Kafka \
                    acknowledges is recorded in dead-letters.resent-<ms>.ndjson; what it refuses again \
                    stays for the next run (exit status 1). Duplicates fold by event_id in ClickHouse.
                    """
            )

            @Argument(help: "The WAL directory.")
            var directory: String

            @OptionGroup var options: ConfigOptions

            @OptionGroup var kafka: KafkaBootstrapOption

            @Option(help: "How long to wait for Kafka's acknowledgements, e.g. 60s.")
            var timeout: String = "60s"

            func run() async throws {
                var settings = try self.options.load()
                try self.kafka.apply(to: &settings)
                let timeout = try timeoutOption(self.timeout)
                guard let forwarding = settings.forwarderConfiguration else {
                    printError("sluice: no Kafka to send to: give --kafka-bootstrap or kafka.bootstrap_servers")
                    throw ExitStatus.unusable
                }
                let messages: ForwarderMessages
                do { messages = try ForwarderMessages(forwarding) } catch {
                    printError("sluice: \(error)")
                    throw ExitStatus.unusable
                }
                let resend = DeadLetterResend(walDirectory: self.directory)
                guard FileManager.default.fileExists(atPath: resend.directory) else {
                    print("no dead letters in \(self.directory)")
                    return
                }
                _ = Telemetry.bootstrap(logLevel: settings.logLevel)
                let reports = DeliveryReports()
                let outcome: DeadLetterResend.Outcome
                do {
                    let producer = try KafkaProducer(
                        properties: messages.producerProperties(forwarding),
                        onDelivery: { reports.add($0) }
                    )
                    defer { producer.close(flushTimeoutMilliseconds: 1000) }
                    outcome = try await resend.resend(
                        messages: messages,
                        producer: producer,
                        reports: reports,
                        timeout: timeout
                    )
                } catch {
                    printError("sluice: \(error)")
                    throw ExitStatus.unusable
                }
                if outcome.sent.isEmpty && outcome.failed.isEmpty && outcome.unreadable == 0 {
                    print("no dead letters in \(self.directory)")
                    return
                }
                for (topic, count) in outcome.sent.sorted(by: { $0.key < $1.key }) {
                    print("sent \(count) event(s) to \(topic)")
                }
                for file in outcome.resentFiles { print("recorded in \(file)") }
                if outcome.unreadable > 0 {
                    print(
                        "\(outcome.unreadable) unreadable line(s) kept, never sent: \(outcome.leftFiles.joined(separator: ", "))"
                    )
                }
                guard outcome.failed.isEmpty else {
                    for (reason, count) in outcome.failed.sorted(by: { $0.key < $1.key }) {
                        printError("sluice: \(count) event(s) refused again: \(reason)")
                    }
                    printError(
                        "sluice: they stay in \(outcome.leftFiles.joined(separator: ", ")); run resend again after the fix"
                    )
                    throw ExitStatus.damaged
                }
            }
        }
    }
}
