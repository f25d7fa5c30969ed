#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What an event keeps of its sender's address (`gateway.privacy.client_ip`), decided before
/// the event is written to the WAL: once there, the address travels to Kafka and ClickHouse
/// and into every replay.
///
/// Only the stored event is affected. The gateway still sees the whole address while it
/// handles the request — rate limits and the failed-authentication limiter need it, and the
/// access log records it for security operations (keep logs on a shorter retention than
/// events; docs/security.md).
public enum ClientIPPolicy: String, Sendable, CaseIterable {
    /// The address as the gateway determined it (after trusted proxies).
    case keep
    /// IPv4 to its /24 (`203.0.113.77` → `203.0.113.0`), IPv6 to its /48
    /// (`2001:db8:1234:5678::1` → `2001:db8:1234::`): enough for coarse geography and network
    /// analysis, no longer one subscriber's address.
    case truncate
    /// No `client_ip` in the event at all.
    case drop

    /// What the event stores for `address` (a canonical address from ``IPAddressText``).
    public func apply(to address: String?) -> String? {
        guard let address else { return nil }
        switch self {
        case .keep: return address
        case .drop: return nil
        case .truncate: return Self.truncated(address)
        }
    }

    /// `address` with its host bits zeroed (/24 for IPv4, /48 for IPv6), in canonical form;
    /// nil when it is not an address (the event then stores none rather than too much).
    static func truncated(_ address: String) -> String? {
        if !address.contains(":") {
            var ipv4 = in_addr()
            guard inet_pton(AF_INET, address, &ipv4) == 1 else { return nil }
            withUnsafeMutableBytes(of: &ipv4) { $0[3] = 0 }
            return IPAddressText.text(family: AF_INET, address: ipv4)
        }
        var ipv6 = in6_addr()
        guard inet_pton(AF_INET6, address, &ipv6) == 1 else { return nil }
        withUnsafeMutableBytes(of: &ipv6) { bytes in
            // An IPv4-mapped address (::ffff:a.b.c.d) is an IPv4 client: keep its /24.
            let mapped = bytes[0..<10].allSatisfy { $0 == 0 } && bytes[10] == 0xFF && bytes[11] == 0xFF
            for index in (mapped ? 15 : 6)..<16 { bytes[index] = 0 }
        }
        return IPAddressText.text(family: AF_INET6, address: ipv6)
    }
}
