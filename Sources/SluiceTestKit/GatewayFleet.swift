import AsyncHTTPClient
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Several `sluice gateway` processes, each on a host of its own (``GatewayHost``: a network
/// namespace with its own address), behind the balancer as shipped (`ops/haproxy/sluice.cfg`),
/// writing to a mock Kafka cluster through ``HAProxy/kafkaRelay(bootstrapServers:hosts:)``.
///
/// The front door is as deployed: HTTPS at the balancer with a test CA's certificate, HTTPS
/// again from the balancer to every gateway (checked against ``gatewayName``), one secret API
/// key every gateway accepts (the same keys file), `gateway.trusted_proxies` naming the
/// balancer's address. Every gateway listens on port ``port`` of its own address, as separate
/// machines would, and keeps its WAL in a directory of its own that outlives a crash.
///
/// Everything (processes, namespaces, links, files) goes away with this object.
public final class GatewayFleet: Sendable {
    /// The name in every gateway's certificate, which the balancer checks.
    public static let gatewayName = "gateway.sluice.internal"
    /// Every gateway's HTTPS port, on its own address.
    public static let port = 8443

    public let network: TestNetwork
    public let relay: HAProxy
    public let balancer: HAProxy
    /// `https://127.0.0.1:PORT`: the balancer, where clients send events.
    public let url: String
    /// The secret API key every gateway accepts.
    public let key: String
    /// The test CA (clients trust it).
    public let caFile: String
    private let directory: TemporaryDirectory
    private let bootstrapServers: String
    private let environment: [String: String]
    private let sluice: String
    private let gateways: Mutex<[ChildProcess?]>

    /// `count` hosts and their gateways against `bootstrapServers` (a mock cluster on
    /// 127.0.0.1), with `environment` added to each gateway's, running `sluice` (default: the
    /// built one); returns once the balancer sees every gateway ready.
    public static func start(
        gateways count: Int,
        bootstrapServers: String,
        environment: [String: String] = [:],
        sluice: String? = nil
    ) async throws -> GatewayFleet {
        let sluice = try sluice ?? sluiceBinary()
        let network = try await TestNetwork.make(hosts: count)
        let directory = try TemporaryDirectory()
        let hosts = [Self.gatewayName, "127.0.0.1", "localhost"] + network.hosts.map(\.frontAddress)
        let tls = try await ChildProcess.run(
            sluice,
            ["tls", "self-signed", "--out", directory.path + "/tls"] + hosts.flatMap { ["--host", $0] }
        )
        guard tls.status == 0 else {
            throw ChildProcessError(description: "sluice tls self-signed failed: \(tls.standardError)")
        }
        let keys = try await ChildProcess.run(
            sluice,
            [
                "keys", "create", "fleet", "--kind", "secret", "--rate", "1000000/s", "--file",
                directory.path + "/keys.json",
            ]
        )
        guard keys.status == 0,
            let key = keys.standardOutput.split(whereSeparator: \.isWhitespace).first(where: { $0.hasPrefix("slk_") })
        else { throw ChildProcessError(description: "sluice keys create failed: \(keys.standardError)") }
        // HAProxy wants the chain and the key in one file; sluice writes no final newline.
        let certificate = directory.path + "/balancer.pem"
        let pem =
            try String(contentsOfFile: directory.path + "/tls/server.pem", encoding: .utf8) + "\n"
            + String(contentsOfFile: directory.path + "/tls/server.key", encoding: .utf8) + "\n"
        try pem.write(toFile: certificate, atomically: true, encoding: .utf8)
        chmod(certificate, 0o600)

        let relay = try await HAProxy.kafkaRelay(bootstrapServers: bootstrapServers, hosts: network.hosts)
        let (balancer, port) = try await HAProxy.balancer(
            gateways: network.hosts.map { "\($0.frontAddress):\(Self.port)" },
            certificate: certificate,
            gatewayCA: directory.path + "/tls/ca.pem",
            gatewayName: Self.gatewayName
        )
        let fleet = GatewayFleet(
            network: network,
            relay: relay,
            balancer: balancer,
            url: "https://127.0.0.1:\(port)",
            key: String(key),
            directory: directory,
            bootstrapServers: bootstrapServers,
            environment: environment,
            sluice: sluice
        )
        for index in 0..<count { try await fleet.startGateway(index) }
        try await fleet.waitUntilBalancerSees(up: Array(0..<count))
        return fleet
    }

    private init(
        network: TestNetwork,
        relay: HAProxy,
        balancer: HAProxy,
        url: String,
        key: String,
        directory: TemporaryDirectory,
        bootstrapServers: String,
        environment: [String: String],
        sluice: String
    ) {
        self.sluice = sluice
        self.network = network
        self.relay = relay
        self.balancer = balancer
        self.url = url
        self.key = key
        self.caFile = directory.path + "/tls/ca.pem"
        self.directory = directory
        self.bootstrapServers = bootstrapServers
        self.environment = environment
        self.gateways = Mutex(Array(repeating: nil, count: network.hosts.count))
    }

    /// Another balancer (`ops/haproxy/sluice.cfg` too) in front of gateways `indices` only,
    /// with the same certificate: to compare fewer gateways with all of them in one run.
    public func balancer(over indices: [Int]) async throws -> (balancer: HAProxy, url: String) {
        let (balancer, port) = try await HAProxy.balancer(
            gateways: indices.map { "\(self.network.hosts[$0].frontAddress):\(Self.port)" },
            certificate: self.directory.path + "/balancer.pem",
            gatewayCA: self.caFile,
            gatewayName: Self.gatewayName
        )
        try await balancer.waitUntilUp(indices.map(Self.serverName))
        return (balancer, "https://127.0.0.1:\(port)")
    }

    /// The balancer's name for gateway `index` (0-based), as in its stats and logs.
    public static func serverName(_ index: Int) -> String { "gateways/gateway\(index + 1)" }

    /// The `gateway_id` gateway `index` writes into its events.
    public static func gatewayID(_ index: Int) -> String { "gateway\(index + 1)" }

    /// The Kafka relay's servers that cross host `index`'s Kafka link (one per broker): `DOWN`
    /// in ``HAProxy/serverStates()`` once the link is cut.
    public func kafkaLinkServers(_ index: Int) -> [String] {
        self.bootstrapServers.split(separator: ",").compactMap { $0.split(separator: ":").last }.map {
            "across-\(index)-\($0)/link"
        }
    }

    /// Gateway `index`'s own URL, bypassing the balancer (its front address).
    public func directURL(_ index: Int) -> String { "https://\(self.network.hosts[index].frontAddress):\(Self.port)" }

    /// Gateway `index`'s WAL directory.
    public func walDirectory(_ index: Int) -> String { self.directory.path + "/wal-\(index + 1)" }

    /// The running process of gateway `index`, if any.
    public func gateway(_ index: Int) -> ChildProcess? { self.gateways.withLock { $0[index] } }

    /// Starts gateway `index` in its namespace (again, after a crash: on the same WAL); returns
    /// once it listens.
    public func startGateway(_ index: Int) async throws {
        let host = self.network.hosts[index]
        let (executable, arguments) = try host.command(
            self.sluice,
            [
                "gateway", "--listen", "\(host.frontAddress):\(Self.port)", "--wal-dir", self.walDirectory(index),
                "--kafka-bootstrap", self.bootstrapServers,
            ]
        )
        let environment = [
            "SLUICE_GATEWAY_TLS_CERT_FILE": self.directory.path + "/tls/server.pem",
            "SLUICE_GATEWAY_TLS_KEY_FILE": self.directory.path + "/tls/server.key",
            "SLUICE_AUTH_API_KEYS_FILE": self.directory.path + "/keys.json",
            "SLUICE_GATEWAY_TRUSTED_PROXIES": host.frontPeer,
            "SLUICE_GATEWAY_GATEWAY_ID": Self.gatewayID(index),
            "SLUICE_KAFKA_PROPERTIES_LOG__LEVEL": "2",
            "SLUICE_LOGGING_LEVEL": "warning",
        ].merging(self.environment) { $1 }
        let process = try ChildProcess(executable: executable, arguments, environment: environment)
        self.gateways.withLock { $0[index] = process }
        _ = try await process.listeningPort()
    }

    /// Kills gateway `index` the way a crash or the OOM killer does (SIGKILL) and waits for it.
    public func killGateway(_ index: Int) async throws {
        guard let process = self.gateway(index) else { return }
        _ = try await process.stop(SIGKILL)
    }

    /// Waits until the balancer's health checks (`/readyz`) find gateways `indices` ready.
    public func waitUntilBalancerSees(up indices: [Int], timeout: Duration = .seconds(30)) async throws {
        try await self.balancer.waitUntilUp(indices.map(Self.serverName), timeout: timeout)
    }

    /// SIGTERM to every running gateway; their exit statuses.
    public func stopGateways() async throws -> [Int32] {
        var statuses: [Int32] = []
        for process in self.gateways.withLock({ $0 }).compactMap({ $0 }) {
            statuses.append(try await process.stop(SIGTERM, timeout: .seconds(60)))
        }
        return statuses
    }

    /// An HTTP client that trusts the test CA; the caller shuts it down.
    public func client() -> HTTPClient { EventPoster.client(trusting: self.caFile) }
}
