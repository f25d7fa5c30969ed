import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A machine of its own for one gateway, on this machine: a Linux network namespace joined to
/// this one by two veth links, as a gateway host in a data centre has its own address and its
/// own cables.
///
/// - The *front* link carries the balancer's connections to the gateway (`frontAddress`,
///   reached from `frontPeer` on this side).
/// - The *Kafka* link carries the gateway's connections to the brokers (`kafkaAddress` inside,
///   `kafkaPeer` on this side, where ``KafkaRelay`` listens). Taking it down
///   (``setKafkaLink(up:)``) cuts the gateway off from Kafka while its front link stays up.
///
/// Two links rather than one so that a test can cut exactly one path. Names carry this
/// process's id and a random tag: tests running in parallel, and the leftovers of a run that
/// crashed, never collide; ``TestNetwork`` removes the namespaces of processes that are gone.
/// The namespace (and with it both veth pairs) is deleted when this object goes away.
///
/// Needs root (`ip netns`), as CI runs.
public final class GatewayHost: Sendable {
    /// The namespace's name, for `ip netns exec` and HAProxy's `namespace` keyword.
    public let namespace: String
    /// The gateway's address on its front link.
    public let frontAddress: String
    /// This side's address on the front link: where the balancer's connections come from.
    public let frontPeer: String
    /// The namespace's address on its Kafka link.
    public let kafkaAddress: String
    /// This side's address on the Kafka link (the relay towards the brokers listens there).
    public let kafkaPeer: String
    /// This side's end of the Kafka link (`ip link set … down` cuts it).
    public let kafkaInterface: String

    init(namespace: String, subnet: String, index: Int, tag: String) async throws {
        self.namespace = namespace
        let base = index * 8
        self.frontPeer = "\(subnet).\(base + 1)"
        self.frontAddress = "\(subnet).\(base + 2)"
        self.kafkaPeer = "\(subnet).\(base + 5)"
        self.kafkaAddress = "\(subnet).\(base + 6)"
        self.kafkaInterface = "s\(tag)k\(index)"
        let frontInterface = "s\(tag)f\(index)"
        try await Self.ip(["netns", "add", namespace])
        do {
            try await Self.ip(["-n", namespace, "link", "set", "lo", "up"])
            for (outside, inside, peer, address) in [
                (frontInterface, "front", self.frontPeer, self.frontAddress),
                (self.kafkaInterface, "kafka", self.kafkaPeer, self.kafkaAddress),
            ] {
                try await Self.ip(["link", "add", outside, "type", "veth", "peer", "name", inside, "netns", namespace])
                try await Self.ip(["addr", "add", "\(peer)/30", "dev", outside])
                try await Self.ip(["link", "set", outside, "up"])
                try await Self.ip(["-n", namespace, "addr", "add", "\(address)/30", "dev", inside])
                try await Self.ip(["-n", namespace, "link", "set", inside, "up"])
            }
        } catch {
            _ = try? ChildProcess.runBlocking("ip", ["netns", "del", namespace], timeout: .seconds(10))
            throw error
        }
    }

    deinit {
        // Deleting the namespace destroys the veth ends inside it, and so their peers here.
        _ = try? ChildProcess.runBlocking("ip", ["netns", "del", self.namespace], timeout: .seconds(10))
    }

    /// `executable arguments…` run inside the namespace (`ip netns exec`, which execs it: the
    /// child's process id is the program's, so a signal reaches it directly).
    public func command(_ executable: String, _ arguments: [String]) throws -> (String, [String]) {
        ("ip", ["netns", "exec", self.namespace, try ChildProcess.resolve(executable)] + arguments)
    }

    /// Takes the Kafka link down (its carrier drops on both ends; packets go nowhere) or
    /// brings it back up.
    public func setKafkaLink(up: Bool) async throws {
        try await Self.ip(["link", "set", self.kafkaInterface, up ? "up" : "down"])
    }

    static func ip(_ arguments: [String]) async throws {
        let result = try await ChildProcess.run("ip", arguments, errorsToOutput: true, timeout: .seconds(20))
        guard result.status == 0 else {
            throw ChildProcessError(
                description:
                    "ip \(arguments.joined(separator: " ")) failed (\(result.status)): \(result.standardOutput)"
            )
        }
    }
}

/// The gateway hosts of one test: a /24 of 10.0.0.0/8 that no interface here uses, cut into a
/// front and a Kafka /30 per host.
public final class TestNetwork: Sendable {
    public let hosts: [GatewayHost]
    /// `10.X.Y`: given back to other tests of this process when this goes away.
    let subnet: String

    init(hosts: [GatewayHost], subnet: String) {
        self.hosts = hosts
        self.subnet = subnet
    }

    deinit {
        let subnet = self.subnet
        Self.subnetsInUse.withLock { _ = $0.remove(subnet) }
    }

    /// Whether this machine can run namespaced tests: root, `ip` and `haproxy` installed.
    public static var isAvailable: Bool {
        getuid() == 0 && ChildProcess.find("ip") != nil && ChildProcess.find("haproxy") != nil
    }

    /// Subnets handed out by this process and not yet given back.
    private static let subnetsInUse = Mutex<Set<String>>([])

    /// `count` gateway hosts (at most 31), after removing what runs of dead processes left.
    public static func make(hosts count: Int) async throws -> TestNetwork {
        precondition((1...31).contains(count), "a /24 holds 31 pairs of /30 links")
        try await Self.removeLeftovers()
        let subnet = try await Self.freeSubnet()
        let tag = String(UInt32.random(in: 0..<(1 << 24)), radix: 16).leftPadded(to: 6)
        do {
            var hosts: [GatewayHost] = []
            for index in 0..<count {
                let name = "sluice-\(getpid())-\(tag)-g\(index + 1)"
                hosts.append(try await GatewayHost(namespace: name, subnet: subnet, index: index, tag: tag))
            }
            return TestNetwork(hosts: hosts, subnet: subnet)
        } catch {
            Self.subnetsInUse.withLock { _ = $0.remove(subnet) }
            throw error
        }
    }

    /// Deletes the `sluice-PID-…` namespaces whose process is gone (a run that crashed or was
    /// killed before its clean-up ran).
    static func removeLeftovers() async throws {
        let list = try await ChildProcess.run("ip", ["netns", "list"], timeout: .seconds(20))
        for line in list.standardOutput.split(separator: "\n") {
            let name = String(line.split(separator: " ").first ?? "")
            let parts = name.split(separator: "-")
            guard parts.count == 4, parts[0] == "sluice", let pid = Int32(parts[1]), pid != getpid(),
                kill(pid, 0) != 0 && errno == ESRCH
            else { continue }
            _ = try? await ChildProcess.run("ip", ["netns", "del", name], timeout: .seconds(20))
        }
    }

    /// `10.X.Y` with no address or route of this machine in `10.X.Y.0/24`.
    static func freeSubnet() async throws -> String {
        let routes = try await ChildProcess.run("ip", ["-4", "route", "show", "table", "all"], timeout: .seconds(20))
        let addresses = try await ChildProcess.run("ip", ["-4", "-o", "addr"], timeout: .seconds(20))
        let taken = routes.standardOutput + addresses.standardOutput
        for _ in 0..<200 {
            let subnet = "10.\(Int.random(in: 100...199)).\(Int.random(in: 0...255))"
            guard !taken.contains(subnet + "."), !taken.contains(" 10.0.0.0/8"), !taken.contains("\(subnet).0/") else {
                continue
            }
            let fresh = Self.subnetsInUse.withLock { $0.insert(subnet).inserted }
            if fresh { return subnet }
        }
        throw ChildProcessError(description: "no free /24 in 10.100.0.0-10.199.255.0 for the test network")
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        String(repeating: "0", count: max(0, width - self.count)) + self
    }
}
