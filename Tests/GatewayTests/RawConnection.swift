import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A plain TCP connection to 127.0.0.1, for the requests no HTTP client sends: broken framing,
/// dribbled bytes, half-closes. Every call blocks (bounded by its timeout); call it through
/// `offPool`.
final class RawConnection: Sendable {
    let descriptor: Int32

    /// Connects, or throws when the connection is not established within `timeout` (a full
    /// listen backlog).
    init(port: Int, timeout: Duration = .seconds(5)) throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw RawConnectionError(description: "socket: errno \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let flags = fcntl(descriptor, F_GETFL)
        _ = fcntl(descriptor, F_SETFL, flags | O_NONBLOCK)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        if result != 0 {
            guard errno == EINPROGRESS else {
                close(descriptor)
                throw RawConnectionError(description: "connect: errno \(errno)")
            }
            var poller = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
            var failure: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            guard poll(&poller, 1, Int32(Self.milliseconds(timeout))) == 1,
                getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &failure, &length) == 0, failure == 0
            else {
                close(descriptor)
                throw RawConnectionError(description: "connect did not complete within \(timeout)")
            }
        }
        _ = fcntl(descriptor, F_SETFL, flags)
        self.descriptor = descriptor
    }

    deinit { close(self.descriptor) }

    static func milliseconds(_ duration: Duration) -> Int {
        Int(duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000)
    }

    func send(_ text: String) throws { try self.send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes {
                Glibc.send(self.descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
            }
            guard written > 0 else { throw RawConnectionError(description: "send: errno \(errno)") }
            offset += written
        }
    }

    /// Sends FIN: the request is complete as far as the client is concerned.
    func shutdownWrite() { shutdown(self.descriptor, Int32(SHUT_WR)) }

    /// Reads until the peer closes the connection, `enough` says the bytes so far suffice, or
    /// `timeout` passes.
    func read(timeout: Duration, until enough: ([UInt8]) -> Bool = { _ in false }) -> (bytes: [UInt8], closed: Bool) {
        let deadline = ContinuousClock.now + timeout
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while !enough(bytes) {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { return (bytes, false) }
            var poller = pollfd(fd: self.descriptor, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, Int32(max(1, Self.milliseconds(left)))) == 1 else { continue }
            let count = chunk.withUnsafeMutableBytes { recv(self.descriptor, $0.baseAddress, $0.count, 0) }
            if count <= 0 { return (bytes, true) }
            bytes += chunk[..<count]
        }
        return (bytes, false)
    }

    /// The next complete response (a 1xx interim one counts), or nil when none arrived in time.
    func response(timeout: Duration = .seconds(5), method: String = "GET") -> RawResponse? {
        let (bytes, _) = self.read(timeout: timeout) { RawResponse.parse($0, method: method) != nil }
        return RawResponse.parse(bytes, method: method)
    }

    /// True when the peer closes the connection within `timeout` (bytes it sends first are
    /// ignored).
    func closes(within timeout: Duration) -> Bool { self.read(timeout: timeout).closed }
}

struct RawConnectionError: Error, CustomStringConvertible {
    var description: String
}

/// A response as it came off the wire.
struct RawResponse: Sendable {
    var status: Int
    var headers: [(name: String, value: String)]
    var body: [UInt8]
    /// Bytes after this response (a second response, or garbage).
    var rest: [UInt8]

    func header(_ name: String) -> String? {
        self.headers.first { $0.name.lowercased() == name.lowercased() }?.value
    }

    var text: String { String(decoding: self.body, as: UTF8.self) }

    /// A response framed by Content-Length (or without a body: 1xx, 204, 304); nil while
    /// incomplete.
    static func parse(_ bytes: [UInt8], method: String = "GET") -> RawResponse? {
        let separator: [UInt8] = [13, 10, 13, 10]
        guard let end = bytes.indices.first(where: { bytes[$0...].starts(with: separator) }) else { return nil }
        let head = String(decoding: bytes[..<end], as: UTF8.self).components(separatedBy: "\r\n")
        let statusLine = head[0].split(separator: " ")
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else { return nil }
        let headers = head.dropFirst().compactMap { line -> (String, String)? in
            guard let colon = line.firstIndex(of: ":") else { return nil }
            return (
                String(line[..<colon]), String(line[line.index(after: colon)...]).trimmingCharacters(in: .whitespaces)
            )
        }
        var response = RawResponse(status: status, headers: headers, body: [], rest: [])
        let bodyStart = end + 4
        let length =
            (100..<200).contains(status) || method == "HEAD" ? 0 : Int(response.header("Content-Length") ?? "0") ?? 0
        guard bytes.count >= bodyStart + length else { return nil }
        response.body = Array(bytes[bodyStart..<(bodyStart + length)])
        response.rest = Array(bytes[(bodyStart + length)...])
        return response
    }
}
