import Foundation
import LocalClickHouse
import Synchronization

/// Keeps the kernel from handing a mock broker's port to anyone else while the broker is down.
///
/// A test that takes a broker of librdkafka's mock cluster down and up again needs the broker
/// to bind the same port again; librdkafka 2.0.2 aborts the whole process when it cannot
/// ("Failed to create mock broker listener"). Meanwhile every other test's outgoing
/// connection and `bind(0)` draws from the same ephemeral range, and one of them can take the
/// port. Ports listed in `net.ipv4.ip_local_reserved_ports` are never chosen automatically,
/// while an explicit bind (the broker's) still works. Needs root (as CI runs); without it this
/// does nothing and the race stays as rare as it was.
public final class ReservedPorts: Sendable {
    private static let file = "/proc/sys/net/ipv4/ip_local_reserved_ports"
    /// The system's own reservations, read once, and every port reserved by live instances.
    private static let state = Mutex<(system: String?, ports: [Int: Int])>((nil, [:]))

    private let ports: [Int]

    /// Reserves the ports of `bootstrapServers` (`127.0.0.1:PORT,…`) until this is released.
    public convenience init(bootstrapServers: String) {
        self.init(
            ports: bootstrapServers.split(separator: ",").compactMap {
                $0.split(separator: ":").last.flatMap { Int($0) }
            }
        )
    }

    /// Reserves `ports` until this is released: for a server that a test stops and starts
    /// again on the same ports (a ClickHouse killed on purpose), so that no other test's
    /// free-port pick takes one meanwhile.
    public init(ports: [Int]) {
        self.ports = ports
        Self.update { reserved in for port in ports { reserved[port, default: 0] += 1 } }
    }

    deinit {
        let ports = self.ports
        Self.update { reserved in
            for port in ports {
                reserved[port, default: 1] -= 1
                if reserved[port] == 0 { reserved[port] = nil }
            }
        }
    }

    private static func update(_ change: (inout [Int: Int]) -> Void) {
        self.state.withLock { state in
            guard FileManager.default.isWritableFile(atPath: self.file) else { return }
            if state.system == nil {
                state.system = ((try? String(contentsOfFile: self.file, encoding: .utf8)) ?? "")
                    .trimmingCharacters(in: .whitespacesAndNewlines)
            }
            change(&state.ports)
            let list = ([state.system ?? ""] + state.ports.keys.sorted().map(String.init)).filter { !$0.isEmpty }
            try? (list.joined(separator: ",") + "\n").write(toFile: self.file, atomically: false, encoding: .utf8)
        }
    }
}

extension ClickHouseServer {
    /// Reserves this server's ports (``ReservedPorts``) for a test that restarts it.
    public func reservePorts() -> ReservedPorts {
        ReservedPorts(ports: [self.httpPort, self.tcpPort, self.interserverPort] + (self.httpsPort.map { [$0] } ?? []))
    }
}
