import ArgumentParser
import ClickHouse
import EventModel
import Foundation
import Kafka
import Loader
import Logging
import ServiceLifecycle
import Synchronization
import Telemetry
import UnixSignals

/// `sluice loader`: Kafka → ClickHouse.
struct LoaderCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loader",
        abstract: "Load Kafka topics into ClickHouse tables, committing offsets only after confirmed inserts.",
        discussion: "Runs until SIGTERM/SIGINT; then inserts and commits what it holds if ClickHouse answers."
    )

    @OptionGroup var options: ConfigOptions

    @OptionGroup var kafka: KafkaBootstrapOption

    @Option(help: "ClickHouse HTTP(S) URL, e.g. http://127.0.0.1:8123.")
    var clickhouseUrl: String?

    func run() async throws {
        var settings = try self.options.load()
        try self.kafka.apply(to: &settings)
        try ConfigOptions.apply(self.clickhouseUrl, to: "clickhouse.url", from: "--clickhouse-url", in: &settings)
        let configuration: LoaderConfiguration
        do {
            guard let loaded = try settings.loaderConfiguration() else {
                printError("sluice: no Kafka to read from: give --kafka-bootstrap or kafka.bootstrap_servers")
                throw ExitCode(2)
            }
            configuration = loaded
        } catch let error as SettingsError {
            printError("sluice: \(error)")
            throw ExitCode(2)
        }
        try await PipelineProcess(settings: settings, runsGateway: false, loader: configuration).run()
    }
}

/// Kafka connection options of the on-call tools.
struct KafkaOptions: ParsableArguments {
    @OptionGroup var options: ConfigOptions

    @OptionGroup var kafka: KafkaBootstrapOption

    func properties() throws -> [String: String] {
        var settings = try self.options.load()
        try self.kafka.apply(to: &settings)
        guard var properties = settings.kafkaClientProperties else {
            printError("sluice: give --kafka-bootstrap or kafka.bootstrap_servers")
            throw ExitCode(2)
        }
        properties["log_level"] = properties["log_level"] ?? "3"
        return properties
    }
}

/// `sluice offsets`: where a consumer group stands.
struct OffsetsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "offsets",
        abstract: "Show a consumer group's committed offset, end offset and lag per partition."
    )

    @OptionGroup var kafka: KafkaOptions

    @Option(help: "Consumer group.")
    var group: String = SettingsLoader.defaultText("loader.group_id")

    @Option(help: "Topic (repeatable).")
    var topic: [String] = [SettingsLoader.defaultText("forwarder.default_topic")]

    @Flag(help: "One JSON object per partition.")
    var json = false

    func run() async throws {
        let tools = OffsetTools(properties: try self.kafka.properties())
        if !self.json { print("GROUP\tTOPIC\tPARTITION\tCOMMITTED\tEND\tLAG") }
        for topic in self.topic {
            let states: [OffsetTools.PartitionState]
            do {
                states = try await tools.describe(group: self.group, topic: topic)
            } catch {
                printError("sluice: \(topic): \(error)")
                throw ExitCode.failure
            }
            for state in states {
                if self.json {
                    var writer = JSONWriter()
                    writer.raw("{")
                    writer.member("group", self.group, first: true)
                    writer.member("topic", topic)
                    writer.raw(
                        ",\"partition\":\(state.partition),\"committed\":\(state.committed.map(String.init) ?? "null"),\"end\":\(state.high),\"lag\":\(state.lag)}"
                    )
                    print(String(decoding: writer.bytes, as: UTF8.self))
                } else {
                    print(
                        "\(self.group)\t\(topic)\t\(state.partition)\t\(state.committed.map(String.init) ?? "-")\t\(state.high)\t\(state.lag)"
                    )
                }
            }
        }
    }
}

/// `sluice replay`: move a stopped group back (or forward) so the loader reads again, after
/// checking that the tables the topic loads into fold the copies.
struct ReplayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Reset a consumer group's offsets on a topic, e.g. to reload after a ClickHouse failure.",
        discussion: """
            Stop the group's loaders first: a group with active members is refused. Before moving \
            anything, replay reads the engine and sorting key of the table each route of the topic \
            loads into and says whether loading again is deduplicated (a ReplacingMergeTree with the \
            dedup column in its sorting key) or would count the events twice, which it refuses \
            unless --force. Exit status: 0 moved (or, with --dry-run, would move); 1 refused or \
            failed; 2 bad input or configuration; 3 --dry-run, and the replay would be refused.
            """
    )

    @OptionGroup var kafka: KafkaOptions

    @Option(help: "Consumer group.")
    var group: String = SettingsLoader.defaultText("loader.group_id")

    @Option(help: "Topic.")
    var topic: String = SettingsLoader.defaultText("forwarder.default_topic")

    @Option(help: "ClickHouse HTTP(S) URL, e.g. http://127.0.0.1:8123.")
    var clickhouseUrl: String?

    @Flag(help: "Back to the oldest message Kafka still has.")
    var toEarliest = false

    @Option(help: "PARTITION:OFFSET (repeatable).")
    var toOffset: [String] = []

    @Option(help: "The first message at or after this RFC 3339 time.")
    var toTime: String?

    @Flag(help: "Only print the verdict and what would change.")
    var dryRun = false

    @Flag(help: "Replay even into tables that would count the events twice (or that could not be checked).")
    var force = false

    @Flag(help: "Print the verdicts and the moves as one JSON object.")
    var json = false

    /// The exit status of a dry run whose replay would be refused.
    static let wouldBeRefused = ExitCode(3)

    func validate() throws {
        let chosen = [self.toEarliest, !self.toOffset.isEmpty, self.toTime != nil].filter { $0 }.count
        guard chosen == 1 else { throw ValidationError("give exactly one of --to-earliest, --to-offset, --to-time") }
    }

    func target() throws -> OffsetTools.Target {
        if self.toEarliest { return .earliest }
        if let time = self.toTime {
            guard let millis = Timestamp.parse(time) else {
                throw ValidationError("--to-time '\(time)' is not an RFC 3339 time, e.g. 2026-11-22T10:00:00Z")
            }
            return .time(millis)
        }
        var offsets: [Int32: Int64] = [:]
        for spec in self.toOffset {
            let parts = spec.split(separator: ":")
            guard parts.count == 2, let partition = Int32(parts[0]), let offset = Int64(parts[1]), offset >= 0 else {
                throw ValidationError("--to-offset '\(spec)' must be PARTITION:OFFSET, e.g. 3:120000")
            }
            offsets[partition] = offset
        }
        return .offsets(offsets)
    }

    func run() async throws {
        let target: OffsetTools.Target
        do {
            target = try self.target()
        } catch {
            printError("sluice: \(error)")
            throw ExitCode(2)
        }
        var settings = try self.kafka.options.load()
        let configuration: LoaderConfiguration
        do {
            try self.kafka.kafka.apply(to: &settings)
            try ConfigOptions.apply(self.clickhouseUrl, to: "clickhouse.url", from: "--clickhouse-url", in: &settings)
            guard let loaded = try settings.loaderConfiguration() else {
                printError("sluice: give --kafka-bootstrap or kafka.bootstrap_servers")
                throw ExitCode(2)
            }
            configuration = loaded
        } catch let error as SettingsError {
            printError("sluice: \(error)")
            throw ExitCode(2)
        }
        var properties = configuration.kafkaProperties
        properties["log_level"] = properties["log_level"] ?? "3"

        // The verdict comes before anything moves.
        let check = await self.check(configuration)
        for line in check.lines where !self.json { print(line) }
        let refused = !check.problems.isEmpty && !self.force
        if refused && !self.dryRun {
            if self.json { print(self.report(check, changes: nil)) }
            for problem in check.problems { printError("sluice: replay refused: \(problem)") }
            printError(
                "sluice: nothing was moved; --force replays all the same"
                    + " (docs/operations.md, \"Replaying after ClickHouse lost data\")"
            )
            throw ExitCode.failure
        }
        let changes: [OffsetTools.Change]
        do {
            changes = try await OffsetTools(properties: properties).reset(
                group: self.group,
                topic: self.topic,
                to: target,
                dryRun: self.dryRun
            )
        } catch {
            printError("sluice: \(error)")
            throw ExitCode.failure
        }
        if self.json {
            print(self.report(check, changes: changes))
        } else {
            print("\(self.dryRun ? "would move" : "moved") group \(self.group) on \(self.topic):")
            for change in changes {
                print("  partition \(change.partition): \(change.from.map(String.init) ?? "-") → \(change.to)")
            }
            if refused { print("the replay would be refused: \(check.problems.joined(separator: "; "))") }
        }
        if refused { throw Self.wouldBeRefused }
    }

    /// The verdicts on the topic's tables, and what stands against the replay.
    struct Check {
        var verdicts: [ReplayVerdict] = []
        /// Why the replay would count events twice, or could not be checked; empty: it may go.
        var problems: [String] = []
        /// The lines printed before the moves.
        var lines: [String] = []
    }

    /// Reads the table of every route of the topic and judges it.
    func check(_ configuration: LoaderConfiguration) async -> Check {
        var check = Check()
        let routes = configuration.routes.filter { $0.topic == self.topic }
        guard !routes.isEmpty else {
            let problem =
                "no loader route reads topic \(self.topic) (routes: \(configuration.routes.map(\.topic).joined(separator: ", ")));"
                + " give the loader's --config to check its table"
            check.problems.append(problem)
            check.lines.append("cannot check: \(problem)")
            return check
        }
        let clickHouse = ClickHouseClient(configuration.clickHouse, logger: Logger(label: "sluice.replay"))
        do {
            let version = try await clickHouse.serverVersion()
            for route in routes {
                let verdict = ReplayVerdict.judge(
                    try await ReplayTable.read(route, from: clickHouse),
                    route: route,
                    version: version
                )
                check.verdicts.append(verdict)
                let kind = verdict.kind == .deduplicated ? "deduplicated" : "would count the replayed events twice"
                check.lines.append(
                    "table \(verdict.table) (\(verdict.engine ?? "not created yet")): \(kind): \(verdict.reason)"
                )
                if verdict.kind == .wouldDoubleCount {
                    check.problems.append(
                        "table \(verdict.table) (\(verdict.engine ?? "-")) would count the replayed events twice:"
                            + " \(verdict.reason). Make it a ReplacingMergeTree with \(route.dedupColumn) in its sorting"
                            + " key, or delete the range from it first and give --force"
                    )
                }
            }
        } catch {
            let problem =
                "cannot read the tables of topic \(self.topic) from ClickHouse (\(configuration.clickHouse.url)): \(error)"
            check.problems.append(problem)
            check.lines.append("cannot check: \(problem)")
        }
        try? await clickHouse.shutdown()
        return check
    }

    /// `{"group":…,"topic":…,"dry_run":…,"forced":…,"refused":…,"tables":[…],"problems":[…],"partitions":[…]}`;
    /// `partitions` is null when nothing was asked of Kafka (refused).
    func report(_ check: Check, changes: [OffsetTools.Change]?) -> String {
        var tables: [JSONValue] = []
        for verdict in check.verdicts {
            tables.append(
                .object([
                    ("table", .string(verdict.table)), ("engine", verdict.engine.map(JSONValue.string) ?? .null),
                    ("verdict", .string(verdict.kind.rawValue)), ("reason", .string(verdict.reason)),
                ])
            )
        }
        let partitions: JSONValue =
            changes.map { changes in
                .array(
                    changes.map { change in
                        .object([
                            ("partition", .number(String(change.partition))),
                            ("from", change.from.map { .number(String($0)) } ?? .null),
                            ("to", .number(String(change.to))),
                        ])
                    }
                )
            } ?? .null
        var writer = JSONWriter()
        writer.write(
            .object([
                ("group", .string(self.group)), ("topic", .string(self.topic)), ("dry_run", .bool(self.dryRun)),
                ("forced", .bool(self.force)), ("refused", .bool(!check.problems.isEmpty && !self.force)),
                ("tables", .array(tables)), ("problems", .array(check.problems.map(JSONValue.string))),
                ("partitions", partitions),
            ])
        )
        return String(decoding: writer.bytes, as: UTF8.self)
    }
}

/// `sluice dlq`: dead letters of the loader.
struct DLQCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlq",
        abstract: "Inspect dead-letter topics and send their messages back after a fix.",
        subcommands: [List.self, Show.self, Redrive.self]
    )

    /// Reads a whole topic from its start with a throwaway group (nothing is committed).
    static func readAll(_ properties: [String: String], topic: String, limit: Int) async throws -> [ConsumedMessage] {
        var properties = properties
        properties["group.id"] = "sluice-dlq-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let consumer = try KafkaConsumer(properties: properties, topics: [topic])
        let marks = try await consumer.watermarks(topic: topic)
        let total = marks.values.reduce(Int64(0)) { $0 + ($1.high - $1.low) }
        var messages: [ConsumedMessage] = []
        let deadline = ContinuousClock.now + .seconds(30)
        while Int64(messages.count) < min(total, Int64(limit)) && ContinuousClock.now < deadline {
            messages += await consumer.poll(maxMessages: 1000, timeout: .milliseconds(200)).messages
        }
        await consumer.close()
        return Array(messages.prefix(limit))
    }

    static func text(_ bytes: [UInt8]?) -> String { bytes.map { String(decoding: $0, as: UTF8.self) } ?? "" }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "Count dead letters by reason.")
        @OptionGroup var kafka: KafkaOptions
        @Option(help: "Dead-letter topic.") var topic: String = "events.dlq"

        func run() async throws {
            let messages = try await DLQCommand.readAll(try self.kafka.properties(), topic: self.topic, limit: .max)
            print("\(messages.count) dead letter(s) in \(self.topic)")
            let reasons = Dictionary(grouping: messages) { DLQCommand.text($0.header("dlq_reason")) }
            for (reason, group) in reasons.sorted(by: { $0.value.count > $1.value.count }) {
                print("  \(group.count)\t\(reason)")
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "show",
            abstract: "Print dead letters as JSON lines: origin, reason and the message."
        )
        @OptionGroup var kafka: KafkaOptions
        @Option(help: "Dead-letter topic.") var topic: String = "events.dlq"
        @Option(help: "At most this many.") var limit: Int = 100

        func run() async throws {
            for message in try await DLQCommand.readAll(
                try self.kafka.properties(),
                topic: self.topic,
                limit: self.limit
            ) {
                var writer = JSONWriter()
                writer.raw("{")
                writer.member("topic", DLQCommand.text(message.header("dlq_topic")), first: true)
                writer.raw(",\"partition\":\(DLQCommand.text(message.header("dlq_partition")))")
                writer.raw(",\"offset\":\(DLQCommand.text(message.header("dlq_offset")))")
                writer.member("table", DLQCommand.text(message.header("dlq_table")))
                writer.member("reason", DLQCommand.text(message.header("dlq_reason")))
                writer.member("value", String(decoding: message.value, as: UTF8.self))
                writer.raw("}")
                print(String(decoding: writer.bytes, as: UTF8.self))
            }
        }
    }

    struct Redrive: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "redrive",
            abstract: "Send dead letters back to the topic they came from (after fixing the table or route).",
            discussion: "Messages that fail again return to the dead-letter topic; duplicates fold by event_id."
        )
        @OptionGroup var kafka: KafkaOptions
        @Option(help: "Dead-letter topic.") var topic: String = "events.dlq"
        @Option(help: "Send to this topic instead of each message's origin.") var to: String?
        @Flag(help: "Only count what would be sent.") var dryRun = false

        func run() async throws {
            let properties = try self.kafka.properties()
            let messages = try await DLQCommand.readAll(properties, topic: self.topic, limit: .max)
            let destinations = Dictionary(grouping: messages) { self.to ?? DLQCommand.text($0.header("dlq_topic")) }
            if self.dryRun {
                for (topic, group) in destinations { print("would send \(group.count) message(s) to \(topic)") }
                return
            }
            let reports = Reports()
            var producerProperties = properties
            producerProperties["enable.idempotence"] = "true"
            let producer = try KafkaProducer(properties: producerProperties, onDelivery: { reports.add($0) })
            for (index, message) in messages.enumerated() {
                let topic = self.to ?? DLQCommand.text(message.header("dlq_topic"))
                try producer.send(
                    topic: topic,
                    key: message.key,
                    value: message.value,
                    headers: message.headers.filter { !$0.name.hasPrefix("dlq_") }.map { ($0.name, $0.value) },
                    id: UInt64(index)
                )
            }
            _ = producer.flush(timeoutMilliseconds: 30_000)
            producer.close()
            let failed = reports.failed
            for (topic, group) in destinations { print("sent \(group.count) message(s) to \(topic)") }
            if failed > 0 {
                printError("sluice: \(failed) message(s) were not acknowledged by Kafka; run redrive again")
                throw ExitCode.failure
            }
            print("the dead letters stay in \(self.topic) (Kafka topics are append-only); \(messages.count) resent")
        }
    }
}

/// Delivery reports of a producer: how many failed. Also used by `sluice-bench`.
package final class Reports: Sendable {
    private let failures = Mutex(0)
    package init() {}
    package func add(_ reports: [DeliveryReport]) {
        let failed = reports.filter { $0.error != nil }.count
        self.failures.withLock { $0 += failed }
    }
    package var failed: Int { self.failures.withLock { $0 } }
}
