import AsyncHTTPClient
import Foundation
import LocalClickHouse
import NIOCore

/// Debian's HAProxy as a child process, in two roles: the balancer in front of namespaced
/// gateways, run with the shipped `ops/haproxy/sluice.cfg`, and the relay that carries each
/// namespaced gateway's Kafka connections to the mock cluster (``kafkaRelay(bootstrapServers:hosts:)``).
/// Killed when this object goes away.
public final class HAProxy: Sendable {
    public let process: ChildProcess
    /// The stats page (`/stats`, with `;csv` for machines).
    public let statsURL: String
    private let directory: TemporaryDirectory

    private init(
        configuration: String,
        environment: [String: String],
        statsPort: Int,
        directory: TemporaryDirectory
    )
        throws
    {
        self.directory = directory
        self.statsURL = "http://127.0.0.1:\(statsPort)/stats"
        // -db: stay in the foreground, logging to standard error; the test owns the process.
        self.process = try ChildProcess(executable: "haproxy", ["-db", "-f", configuration], environment: environment)
    }

    /// The balancer: `ops/haproxy/sluice.cfg` listening on a free loopback port with
    /// `certificate` (PEM: chain and key), in front of `gateways` (`host:port` each) whose
    /// certificates `gatewayCA` signed for `gatewayName`. Returns once it serves its stats page.
    public static func balancer(
        gateways: [String],
        certificate: String,
        gatewayCA: String,
        gatewayName: String
    ) async throws -> (balancer: HAProxy, port: Int) {
        precondition((1...4).contains(gateways.count), "ops/haproxy/sluice.cfg names four gateways at most")
        let ports = try freeLoopbackPorts(2)
        var environment = [
            "BALANCER_LISTEN": "127.0.0.1:\(ports[0])",
            "BALANCER_STATS_LISTEN": "127.0.0.1:\(ports[1])",
            "BALANCER_CERT": certificate,
            "BALANCER_GATEWAY_CA": gatewayCA,
            "BALANCER_GATEWAY_NAME": gatewayName,
        ]
        for (index, gateway) in gateways.enumerated() { environment["BALANCER_GATEWAY_\(index + 1)"] = gateway }
        let configuration = repositoryRoot().appendingPathComponent("ops/haproxy/sluice.cfg").path
        let haproxy = try HAProxy(
            configuration: configuration,
            environment: environment,
            statsPort: ports[1],
            directory: try TemporaryDirectory()
        )
        try await haproxy.waitForStats()
        return (haproxy, ports[0])
    }

    /// The relay for namespaced gateways: librdkafka's mock brokers listen on 127.0.0.1 here
    /// and advertise `127.0.0.1:PORT`, which inside a namespace is the namespace's own
    /// loopback. For every host and broker port the relay listens on `127.0.0.1:PORT` *inside*
    /// the host's namespace (HAProxy's `namespace` keyword), connects from inside it across
    /// the host's Kafka link to `kafkaPeer:PORT`, where it listens again on this side and
    /// connects to the broker. So the gateway uses the advertised addresses unchanged, and its
    /// Kafka traffic really crosses its Kafka link: with the link down nothing gets through.
    ///
    /// The relay health-checks the far side every 250 ms and closes its sessions once the link
    /// is down: as a gateway's own TCP keepalive would, only sooner, so that a test sees
    /// librdkafka reconnect within seconds of the link coming back rather than after its
    /// socket timeout.
    public static func kafkaRelay(bootstrapServers: String, hosts: [GatewayHost]) async throws -> HAProxy {
        let ports = bootstrapServers.split(separator: ",").compactMap { $0.split(separator: ":").last.map(String.init) }
        guard !ports.isEmpty, bootstrapServers.split(separator: ",").allSatisfy({ $0.hasPrefix("127.0.0.1:") }) else {
            throw ChildProcessError(description: "the relay needs mock brokers on 127.0.0.1, not \(bootstrapServers)")
        }
        let statsPort = try freeLoopbackPorts(1)[0]
        var text = """
            global
                log stderr format short local0 warning
            defaults
                mode tcp
                log global
                timeout connect 1s
                timeout client 1h
                timeout server 1h
                timeout check 500ms
            frontend stats
                mode http
                bind 127.0.0.1:\(statsPort)
                stats enable
                stats uri /stats

            """
        for (index, host) in hosts.enumerated() {
            for port in ports {
                text += """
                    frontend inside-\(index)-\(port)
                        bind 127.0.0.1:\(port) namespace \(host.namespace)
                        default_backend across-\(index)-\(port)
                    backend across-\(index)-\(port)
                        server link \(host.kafkaPeer):\(port) namespace \(host.namespace) check inter 250ms fall 2 rise 1 on-marked-down shutdown-sessions
                    frontend outside-\(index)-\(port)
                        bind \(host.kafkaPeer):\(port)
                        default_backend broker-\(port)

                    """
            }
        }
        for port in ports {
            text += """
                backend broker-\(port)
                    server broker 127.0.0.1:\(port)

                """
        }
        let directory = try TemporaryDirectory()
        let file = directory.path + "/kafka-relay.cfg"
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        let relay = try HAProxy(configuration: file, environment: [:], statsPort: statsPort, directory: directory)
        try await relay.waitForStats()
        try await relay.waitUntilUp(hosts.indices.flatMap { index in ports.map { "across-\(index)-\($0)/link" } })
        return relay
    }

    /// Each server's state by `backend/server` (`UP`, `DOWN`, `UP 1/2`, `MAINT`…), from the
    /// stats page's CSV.
    public func serverStates() async throws -> [String: String] {
        try await self.serverStatistics().compactMapValues { $0["status"] }
    }

    /// Each server's row of the stats page's CSV by `backend/server`, by column (`status`,
    /// `hrsp_2xx`, `stot`…: HAProxy's management guide, "CSV format").
    public func serverStatistics() async throws -> [String: [String: String]] {
        let response = try await HTTPClient.shared.execute(
            HTTPClientRequest(url: self.statsURL + ";csv"),
            timeout: .seconds(5)
        )
        let csv = String(buffer: try await response.body.collect(upTo: 4 << 20))
        let lines = csv.split(separator: "\n")
        guard let header = lines.first, header.hasPrefix("# ") else {
            throw ChildProcessError(description: "no stats CSV from HAProxy: \(csv.prefix(200))")
        }
        let columns = header.dropFirst(2).split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        var rows: [String: [String: String]] = [:]
        for line in lines.dropFirst() {
            let fields = line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            guard fields.count >= 2, fields[1] != "FRONTEND", fields[1] != "BACKEND" else { continue }
            rows["\(fields[0])/\(fields[1])"] = Dictionary(zip(columns, fields)) { first, _ in first }
        }
        return rows
    }

    /// Waits until every server of `servers` (`backend/server`) is `UP`.
    public func waitUntilUp(_ servers: [String], timeout: Duration = .seconds(30)) async throws {
        try await self.waitForState("UP", of: servers, timeout: timeout)
    }

    /// Waits until every server of `servers` has state `state` (`UP`, `DOWN`).
    public func waitForState(_ state: String, of servers: [String], timeout: Duration = .seconds(30)) async throws {
        var last: [String: String] = [:]
        do {
            try await waitUntil(timeout: timeout, pollEvery: .milliseconds(100)) {
                last = try await self.serverStates()
                return servers.allSatisfy { last[$0] == state }
            }
        } catch {
            throw ChildProcessError(
                description:
                    "HAProxy: \(servers) not all \(state) within \(timeout): \(last)\n\(self.process.standardError.suffix(2000))"
            )
        }
    }

    private func waitForStats() async throws {
        do {
            try await waitUntil(timeout: .seconds(30), pollEvery: .milliseconds(50)) {
                guard self.process.isRunning else { return true }
                return (try? await self.serverStates()) != nil
            }
        } catch {}
        guard self.process.isRunning, (try? await self.serverStates()) != nil else {
            throw ChildProcessError(
                description: "\(self.process.commandLine) did not start: \(self.process.standardError.suffix(3000))"
            )
        }
    }
}
