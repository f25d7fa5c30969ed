#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// IP addresses as text, strictly: what may be stored as an event's `client_ip`.
enum IPAddressText {
    /// The address in canonical form (`inet_ntop`: IPv6 lower-case and compressed), or nil
    /// when `text` is not exactly one IPv4 or IPv6 address. ASCII digits only, no leading
    /// zeros in IPv4, no IPv6 zone. A port is stripped from the `1.2.3.4:80` and `[::1]:80`
    /// forms some proxies write.
    static func canonical(_ text: Substring) -> String? {
        // The longest IPv6 text with a port, "[ffff:…:255.255.255.255]:65535", is 53 bytes.
        guard (2...64).contains(text.utf8.count), text.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            return nil
        }
        if text.first == "[" {
            guard let close = text.firstIndex(of: "]") else { return nil }
            let rest = text[text.index(after: close)...]
            guard rest.isEmpty || (rest.first == ":" && Self.isPort(rest.dropFirst())) else { return nil }
            return Self.parse(text[text.index(after: text.startIndex)..<close], family: AF_INET6)
        }
        switch text.utf8.count(where: { $0 == UInt8(ascii: ":") }) {
        case 0:
            return Self.parse(text, family: AF_INET)
        case 1:
            let colon = text.firstIndex(of: ":")!
            guard Self.isPort(text[text.index(after: colon)...]) else { return nil }
            return Self.parse(text[..<colon], family: AF_INET)
        default:
            return Self.parse(text, family: AF_INET6)
        }
    }

    private static func isPort(_ text: Substring) -> Bool {
        (1...5).contains(text.utf8.count) && text.utf8.allSatisfy { (0x30...0x39).contains($0) }
            && Int(text).map { $0 <= 65535 } == true
    }

    private static func parse(_ text: Substring, family: Int32) -> String? {
        var address = in6_addr()  // large enough for either family
        guard String(text).withCString({ inet_pton(family, $0, &address) }) == 1 else { return nil }
        return Self.text(family: family, address: address)
    }

    /// The canonical text of an address in network byte order (`in_addr` or `in6_addr`).
    static func text<Address>(family: Int32, address: Address) -> String? {
        var out = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let written = withUnsafeBytes(of: address) { inet_ntop(family, $0.baseAddress, &out, socklen_t(out.count)) }
        guard written != nil else { return nil }
        return String(decoding: out.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
