import ArgumentParser
import ClickHouse
import Forwarder
import Foundation
import Gateway
import Kafka
import Loader
import LocalClickHouse
import Logging
import ServiceLifecycle
import SluiceCore
import Telemetry

/// `sluice all`: every role in one process against a real Kafka and ClickHouse.
struct AllCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "all",
        abstract: "Run the gateway, its forwarder and the loader in one process.",
        discussion: """
            Needs kafka.bootstrap_servers and clickhouse.url (file or environment). Stops cleanly on \
            SIGTERM/SIGINT: the server stops taking requests, the forwarder flushes, the loader inserts \
            and commits what it holds, the WAL closes.
            """
    )

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        var settings = try self.options.load()
        let loader: LoaderConfiguration
        do {
            try settings.prepareGateway()
            guard let configured = try settings.loaderConfiguration() else {
                printError(
                    "sluice: no Kafka configured: set kafka.bootstrap_servers (or SLUICE_KAFKA_BOOTSTRAP_SERVERS)"
                )
                throw ExitCode(2)
            }
            loader = configured
        } catch let error as ExitCode {
            throw error
        } catch {
            printError("sluice: \(describe(error))")
            throw ExitCode(2)
        }
        try await PipelineProcess(settings: settings, runsGateway: true, loader: loader).run()
    }
}

/// `sluice dev`: the whole pipeline on this host, for a first look and for development.
struct DevCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dev",
        abstract: "Run the whole pipeline on this host: mock Kafka, a local ClickHouse, gateway, forwarder, loader.",
        discussion: """
            Kafka is librdkafka's in-memory mock cluster (3 brokers) inside this process; ClickHouse is \
            Debian's clickhouse-server with its data under the state directory. Prints where to send \
            events and how to see them. Ctrl-C stops everything: the gateway stops taking requests, \
            what was forwarded is loaded (up to 15 s), then ClickHouse and the mock cluster stop. \
            The WAL and ClickHouse's data stay in the state directory; Kafka's do not.
            """
    )

    @OptionGroup var options: ConfigOptions

    @Option(help: "HOST:PORT for the gateway.")
    var listen = "127.0.0.1:8080"

    @Option(help: "Port of ClickHouse's HTTP interface.")
    var clickhouseHttpPort = 8123

    @Option(help: "Where the WAL and ClickHouse's data live.")
    var stateDir = "./data/dev"

    @Option(help: "Partitions of each topic in the mock cluster.")
    var partitions = 6

    func validate() throws {
        guard (1...65535).contains(self.clickhouseHttpPort) else {
            throw ValidationError("--clickhouse-http-port must be 1-65535")
        }
        guard (1...256).contains(self.partitions) else { throw ValidationError("--partitions must be 1-256") }
    }

    func run() async throws {
        var settings = try self.options.load()
        var credentials: DevCredentials?
        if self.options.logLevel == nil && ProcessInfo.processInfo.environment["SLUICE_LOGGING_LEVEL"] == nil {
            settings.logLevel = .warning  // the terminal shows the banner and problems, not every request
        }
        do {
            try SettingsLoader.key("gateway.listen").apply(
                &settings,
                SettingValue(text: self.listen, list: nil, origin: "--listen")
            )
            settings.walDirectory = self.stateDir + "/wal"
            settings.analytics.enabled = true
            // The built-in authorization server's issuer URL names the port: find it first.
            if settings.gateway.port == 0 { settings.gateway.port = try freeLoopbackPorts(1)[0] }
            credentials = try await DevCredentials.prepare(
                settings: &settings,
                stateDir: self.stateDir,
                port: settings.gateway.port
            )
            settings.gateway.demoPage = true
            try settings.prepareGateway()
            settings.kafkaBootstrap = "127.0.0.1:0"  // checked now, replaced by the mock's below
            _ = try settings.loaderConfiguration()
        } catch {
            printError("sluice: \(describe(error))")
            throw ExitCode(2)
        }
        guard FileManager.default.isExecutableFile(atPath: ClickHouseServer.binary) else {
            printError(
                "sluice: \(ClickHouseServer.binary) is missing: run scripts/setup (or make run), or set CLICKHOUSE_SERVER"
            )
            throw ExitCode(2)
        }

        Telemetry.bootstrap(logLevel: settings.logLevel)  // before the mock cluster logs anything
        let cluster: KafkaMockCluster
        do {
            cluster = try KafkaMockCluster(brokers: 3)
            settings.kafkaBootstrap = cluster.bootstrapServers
            // librdkafka writes its own log lines to stderr; here they would bury the banner
            // (every outage prints dozens). Sluice's own warnings say what matters.
            if settings.kafkaProperties["log_level"] == nil { settings.kafkaProperties["log_level"] = "2" }
            for topic in try Self.topics(settings) { try cluster.createTopic(topic, partitions: self.partitions) }
        } catch {
            printError("sluice: cannot start the mock Kafka cluster: \(error)")
            throw ExitCode.failure
        }
        let outage = KafkaOutageSwitch(cluster: cluster)
        printError("sluice: starting ClickHouse (data in \(self.stateDir)/clickhouse)…")
        let clickHouse: ClickHouseServer
        do {
            // One host: ClickHouse's merges yield to the gateway's answers (operations.md).
            clickHouse = try await ClickHouseServer.start(
                keepingDataIn: self.stateDir + "/clickhouse",
                httpPort: self.clickhouseHttpPort,
                niceness: 10
            )
        } catch {
            printError(
                """
                sluice: cannot start ClickHouse: \(error)
                  Another server on the port? Debian's clickhouse-server package may run one as a service
                  (sudo systemctl stop clickhouse-server), or choose another port: --clickhouse-http-port 18123
                """
            )
            throw ExitCode.failure
        }
        defer { clickHouse.stop() }
        settings.clickHouse.url = clickHouse.httpURL
        guard let loader = try settings.loaderConfiguration() else { throw ExitCode.failure }

        guard let credentials else { throw ExitCode.failure }
        let publicHost = settings.gateway.host == "0.0.0.0" ? "127.0.0.1" : settings.gateway.host
        let banner = Self.banner(
            settings: settings,
            loader: loader,
            kafka: cluster.bootstrapServers,
            clickHouse: clickHouse,
            stateDir: self.stateDir,
            credentials: credentials
        )
        let pipeline = PipelineProcess(
            settings: settings,
            runsGateway: true,
            loader: loader,
            supervisors: [ClickHouseSupervisor(server: clickHouse, logger: Logger(label: "sluice.dev"))],
            beforeLoaderStops: LoadBeforeStopping(
                tools: OffsetTools(properties: ["bootstrap.servers": cluster.bootstrapServers, "log_level": "3"]),
                group: loader.groupID,
                topics: loader.routes.map(\.topic),
                logger: Logger(label: "sluice.dev")
            ),
            onListening: { port in
                do {
                    try credentials.writeEnv(url: "https://\(publicHost):\(port)")
                } catch {
                    printError("sluice: cannot write \(credentials.envFile): \(describe(error))")
                }
                FileHandle.standardOutput.write(Data(banner(port).utf8))
            }
        )
        try await pipeline.run()
        withExtendedLifetime((cluster, outage)) {}
        printError("sluice: stopping ClickHouse…")
    }

    /// The forwarder's and the loader's topics, created up front with `--partitions`.
    static func topics(_ settings: Settings) throws -> [String] {
        var topics = [settings.routing.defaultTopic] + settings.routing.topicsByAction.values.sorted()
        topics += try settings.loaderRoutes().map(\.topic)
        var seen: Set<String> = []
        return topics.filter { seen.insert($0).inserted }
    }

    static func banner(
        settings: Settings,
        loader: LoaderConfiguration,
        kafka: String,
        clickHouse: ClickHouseServer,
        stateDir: String,
        credentials: DevCredentials
    ) -> @Sendable (Int) -> String {
        let host = settings.gateway.host == "0.0.0.0" ? "127.0.0.1" : settings.gateway.host
        let table = loader.routes.first?.table ?? "sluice.events"
        let wal = settings.walDirectory
        let binary = CommandLine.arguments[0]
        let clickHouseURL = clickHouse.httpURL
        let client = clickHouse.clientCommand
        let env = credentials.envFile
        let browserKey = credentials.browserKey
        let statsKey = credentials.statsKey
        return { port in
            let url = "https://\(host):\(port)"
            return """

                Sluice is running: HTTPS → WAL → Kafka → ClickHouse, all on this host.

                  gateway      \(url)/v1/events   (metrics: \(url)/metrics)
                  Segment API  \(url)/v1/batch   (Segment and RudderStack SDKs: host \(url), write key $SLUICE_KEY; docs/segment.md)
                  demo page    \(url)/demo?key=\(browserKey)   (the tracker; scroll and click)
                  analytics    \(url)/analytics#key=\(statsKey)
                  WAL          \(wal)
                  Kafka        \(kafka)   (mock cluster, 3 brokers, in memory)
                  ClickHouse   \(clickHouseURL)   (table \(table), data in \(stateDir)/clickhouse)

                Credentials (a test CA, a secret key, a browser key, an OAuth client) are in \(env):
                  source \(env)

                Send an event:
                  curl -i \(url)/v1/events -H "Authorization: Bearer $SLUICE_KEY" \\
                    -H 'Content-Type: application/json' \\
                    -d '{"action":"click","user_id":"u1","page":"https://shop.example/","object":"buy"}'

                Or with an OAuth 2.0 access token from the built-in authorization server:
                  TOKEN=$(curl -s -u "$SLUICE_CLIENT_ID:$SLUICE_CLIENT_SECRET" -d grant_type=client_credentials \\
                    \(url)/oauth/token | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
                  curl -i \(url)/v1/events -H "Authorization: Bearer $TOKEN" -d 'action=signup&user_id=u2'

                See it in ClickHouse about a second later:
                  echo 'SELECT action, user_id, source, timestamp FROM \(table) ORDER BY timestamp DESC LIMIT 10 FORMAT PrettyCompact' \\
                    | curl -s '\(clickHouseURL)/' --data-binary @-
                  \(client)

                Watch the backlog:  \(binary) wal stat \(wal)
                Kafka lag:          \(binary) offsets --kafka-bootstrap \(kafka)

                Simulate a Kafka outage: kill -USR1 \(getpid())   (every broker down; events wait in the WAL)
                           and end it: kill -USR2 \(getpid())

                Logs show warnings and errors (--log-level info shows every request). Ctrl-C stops everything.

                """
        }
    }
}

/// Restarts `sluice dev`'s ClickHouse when it dies, and says so on the terminal and in the log:
/// the loader only sees failing inserts, which look like a slow server. Gives up after
/// ``maximumRestarts`` deaths within a minute (a server that crashes as it starts would
/// otherwise restart forever), leaving the rest of the pipeline running: events wait in the
/// WAL and Kafka, and the loader inserts them once a server answers on the port again.
struct ClickHouseSupervisor: Service {
    let server: ClickHouseServer
    let logger: Logger
    var maximumRestarts = 3

    func run() async throws {
        await cancelWhenGracefulShutdown { await self.supervise() }
    }

    private func supervise() async {
        var deaths: [ContinuousClock.Instant] = []
        while let exit = await self.server.unexpectedExit() {
            let now = ContinuousClock.now
            deaths = deaths.filter { now - $0 < .seconds(60) } + [now]
            self.logger.error(
                "dev.clickhouse_exited",
                metadata: ["process.exit": "\(exit)", "url.full": "\(self.server.httpURL)"]
            )
            guard deaths.count <= self.maximumRestarts else {
                printError(
                    """
                    sluice: ClickHouse \(exit) again (\(deaths.count) times within a minute); not restarting it.
                      Its log: \(self.server.directory)/log. Events wait in the WAL and Kafka; the loader
                      inserts them once a server answers at \(self.server.httpURL).
                    """
                )
                return
            }
            printError("sluice: ClickHouse \(exit); restarting it (the loader retries; nothing is lost)…")
            do {
                try await self.server.restart()
                self.logger.notice("dev.clickhouse_restarted", metadata: ["url.full": "\(self.server.httpURL)"])
                printError("sluice: ClickHouse is back at \(self.server.httpURL)")
            } catch {
                printError("sluice: cannot restart ClickHouse: \(error)")
                return
            }
        }
    }
}

/// On shutdown, after the forwarder stopped and before the loader stops, waits until the
/// loader's group has committed everything in its topics (at most `timeout`): the mock
/// cluster keeps messages only in memory, so what is not loaded by then is gone.
struct LoadBeforeStopping: Service {
    let tools: OffsetTools
    let group: String
    let topics: [String]
    let logger: Logger
    var timeout: Duration = .seconds(15)

    func run() async throws {
        try? await gracefulShutdown()
        let deadline = ContinuousClock.now + self.timeout
        var remaining: Int64 = 0
        repeat {
            remaining = 0
            for topic in self.topics {
                guard let states = try? await self.tools.describe(group: self.group, topic: topic) else {
                    remaining = -1
                    break
                }
                remaining += states.reduce(0) { $0 + $1.lag }
            }
            if remaining == 0 { return }
            try? await Task.sleep(for: .milliseconds(200))
        } while ContinuousClock.now < deadline
        self.logger.warning(
            "dev.unloaded_on_exit",
            metadata: [
                "sluice.unloaded_messages": "\(remaining < 0 ? "unknown" : String(remaining))",
                "reason": "the loader did not catch up within \(self.timeout); the mock cluster's messages are lost",
            ]
        )
    }
}

/// `sluice dev-clickhouse`: Debian's clickhouse-server in the foreground on loopback, its data
/// kept in a directory: for benchmarks and experiments (tests and `sluice dev` start their own).
struct DevClickHouseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dev-clickhouse",
        abstract: "Run a local ClickHouse server on 127.0.0.1 with its data in a directory (development only).",
        discussion: "Prints its HTTP URL on the first line of stdout, then runs until SIGTERM or SIGINT."
    )

    @Argument(help: "Where the server keeps its data (created if missing; kept afterwards).")
    var directory: String

    @Option(help: "Port of the HTTP interface.")
    var httpPort = 8123

    @Option(help: "Port of the native protocol (clickhouse-client); default: a free port.")
    var tcpPort: Int?

    func run() async throws {
        let server: ClickHouseServer
        do {
            server = try await ClickHouseServer.start(
                keepingDataIn: self.directory,
                httpPort: self.httpPort,
                tcpPort: self.tcpPort
            )
        } catch {
            printError("sluice: cannot start ClickHouse: \(error)")
            throw ExitCode.failure
        }
        FileHandle.standardOutput.write(Data((server.httpURL + "\n").utf8))
        printError("sluice: ClickHouse at \(server.httpURL) (\(server.clientCommand)); Ctrl-C stops it")
        await waitForTermination()
        server.stop()
    }
}

/// `sluice dev`'s Kafka outage on demand: SIGUSR1 takes every broker of the mock cluster down,
/// SIGUSR2 brings them back.
final class KafkaOutageSwitch: @unchecked Sendable {  // sources: set once in init
    private let sources: [any DispatchSourceSignal]

    init(cluster: KafkaMockCluster) {
        let queue = DispatchQueue(label: "sluice.dev.outage")
        var sources: [any DispatchSourceSignal] = []
        for (number, down) in [(SIGUSR1, true), (SIGUSR2, false)] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler {
                for broker in 1...cluster.brokerCount {
                    if down { cluster.setBrokerDown(Int32(broker)) } else { cluster.setBrokerUp(Int32(broker)) }
                }
                printError(
                    down
                        ? "sluice: Kafka is DOWN (every broker); the gateway keeps accepting, events wait in the WAL"
                        : "sluice: Kafka is back; the forwarder drains the WAL"
                )
            }
            source.resume()
            sources.append(source)
        }
        self.sources = sources
    }

    deinit { for source in self.sources { source.cancel() } }
}
