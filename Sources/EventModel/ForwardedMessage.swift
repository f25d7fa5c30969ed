#if canImport(Glibc)
import Glibc
#endif

/// The Kafka message the forwarder makes of one normalized event: the one definition of its
/// key, its headers and the field that routes it to a topic.
///
/// - value: the event's bytes exactly as ``Event/normalizedJSON(origin:)`` wrote them;
/// - key: `user_id`, or `anonymous_id` when there is none, so one user's (or visitor's)
///   events stay in one partition, in order (no key when the event has neither);
/// - headers, in this order: `content_type` (`application/json`), `schema_version`
///   (``Event/schemaVersion``), `wal_lsn` (the event's LSN, decimal), then `event_id` and
///   `gateway_id` when the event has them;
/// - routing input: `action` (``routingAction(in:)``).
///
/// The send path borrows the bytes (``withKey(in:_:)``, ``forEachHeader(in:walLSN:_:)``: no
/// copy per message); tests and tools read copies (``key(in:)``, ``headers(in:walLSN:)``)
/// made by the same two functions, so what they check is what is sent.
///
/// The fields are found by scanning for `"name":"` rather than by parsing (a full parse was
/// measured as the forwarder's main cost), which relies on the field order that
/// ``Event/normalizedJSON(origin:)`` guarantees. An event that is not the gateway's JSON at
/// all still gets a message (no key, the default topic), so nothing stalls the WAL.
public struct ForwardedMessage: Sendable, Equatable {
    /// Where a field's text is: the byte range of a plain JSON string inside the event, or
    /// the decoded text when the string holds an escape.
    public enum Field: Sendable, Equatable {
        case range(Range<Int>)
        case decoded([UInt8])
    }

    public private(set) var eventID: Field?
    public private(set) var action: Field?
    public private(set) var userID: Field?
    public private(set) var anonymousID: Field?
    public private(set) var gatewayID: Field?

    /// The `content_type` header's value.
    public static let contentType: StaticString = "application/json"
    /// The `schema_version` header's value: ``Event/schemaVersion`` in decimal.
    public static let schemaVersion: [UInt8] = Array(String(Event.schemaVersion).utf8)
    /// How many headers a message has at most.
    public static let maxHeaders = 5

    /// Finds the fields of a normalized event: by scanning, or by parsing when a value holds
    /// an escape. Anything else (not JSON, not an object) yields no fields.
    public init(of event: [UInt8]) {
        if let scanned = Self.scan(event) {
            self = scanned
            return
        }
        guard case .object(let members)? = try? JSONParser.parse(event) else { return }
        for (key, value) in members {
            guard case .string(let text) = value else { continue }
            let decoded = Field.decoded(Array(text.utf8))
            switch key {
            case "action": self.action = decoded
            case "user_id": self.userID = decoded
            case "anonymous_id": self.anonymousID = decoded
            case "event_id": self.eventID = decoded
            case "gateway_id": self.gatewayID = decoded
            default: break
            }
        }
    }

    private init() {}

    /// The `action` that routes the event to a topic; nil when it has none.
    public func routingAction(in event: [UInt8]) -> String? {
        self.action.map { Self.text($0, in: event) }
    }

    /// Calls `body` with the key's bytes (nil when the event has neither `user_id` nor
    /// `anonymous_id`), borrowed from `event` (the event's own bytes) where possible.
    public func withKey<R, E: Error>(
        in event: UnsafeRawBufferPointer,
        _ body: (UnsafeRawBufferPointer?) throws(E) -> R
    ) throws(E) -> R {
        guard let user = self.userID ?? self.anonymousID else { return try body(nil) }
        return try Self.withBytes(user, in: event) { (key: UnsafeRawBufferPointer) throws(E) -> R in try body(key) }
    }

    /// Calls `body` with each header's name and value, in the order they are sent; the
    /// values are borrowed and valid only during the call.
    public func forEachHeader(
        in event: UnsafeRawBufferPointer,
        walLSN: UInt64,
        _ body: (String, UnsafeRawBufferPointer) -> Void
    ) {
        Self.contentType.withUTF8Buffer { body("content_type", UnsafeRawBufferPointer($0)) }
        Self.schemaVersion.withUnsafeBytes { body("schema_version", $0) }
        var lsnText = String(walLSN)
        lsnText.withUTF8 { body("wal_lsn", UnsafeRawBufferPointer($0)) }
        if let id = self.eventID { Self.withBytes(id, in: event) { body("event_id", $0) } }
        if let gateway = self.gatewayID { Self.withBytes(gateway, in: event) { body("gateway_id", $0) } }
    }

    /// A copy of the key (see ``withKey(in:_:)``).
    public func key(in event: [UInt8]) -> [UInt8]? {
        event.withUnsafeBytes { raw in self.withKey(in: raw) { $0.map { Array($0) } } }
    }

    /// Copies of the headers, in order (see ``forEachHeader(in:walLSN:_:)``).
    public func headers(in event: [UInt8], walLSN: UInt64) -> [(name: String, value: [UInt8])] {
        var headers: [(name: String, value: [UInt8])] = []
        event.withUnsafeBytes { raw in
            self.forEachHeader(in: raw, walLSN: walLSN) { name, value in headers.append((name, Array(value))) }
        }
        return headers
    }

    private static func text(_ field: Field, in event: [UInt8]) -> String {
        switch field {
        case .range(let range): String(decoding: event[range], as: UTF8.self)
        case .decoded(let bytes): String(decoding: bytes, as: UTF8.self)
        }
    }

    private static func withBytes<R, E: Error>(
        _ field: Field,
        in raw: UnsafeRawBufferPointer,
        _ body: (UnsafeRawBufferPointer) throws(E) -> R
    ) throws(E) -> R {
        switch field {
        case .range(let range): return try body(UnsafeRawBufferPointer(rebasing: raw[range]))
        case .decoded(let bytes):
            let result: Result<R, E> = bytes.withUnsafeBytes { bytes in
                do throws(E) { return .success(try body(bytes)) } catch { return .failure(error) }
            }
            return try result.get()
        }
    }

    /// Finds `"key":"` patterns (inside a JSON string every quote is escaped, so the pattern
    /// only matches real keys); nil when a value holds an escape, or the event lacks
    /// `event_id`, `action` or `gateway_id`. ``Event/normalizedJSON(origin:)`` writes
    /// `event_id`, `action`, `user_id` and `anonymous_id` (string values only) before
    /// `properties` and `gateway_id` after it: so the first `"properties":` is the top-level
    /// one, the fields before it are searched only before it — an anonymous event's
    /// property named `user_id` is not its key — and the last `gateway_id` is the top-level one.
    static func scan(_ bytes: [UInt8]) -> ForwardedMessage? {
        bytes.withUnsafeBufferPointer { whole -> ForwardedMessage? in
            let propertiesStart = Self.propertiesKey.withUTF8Buffer { Self.firstIndex(of: $0, in: whole) }
            let head = UnsafeBufferPointer(rebasing: whole[..<(propertiesStart ?? whole.count)])
            func value(_ pattern: StaticString, last: Bool = false) -> Field?? {
                let buffer = last ? whole : head
                let found = pattern.withUTF8Buffer { needle in
                    last ? Self.lastIndex(of: needle, in: buffer) : Self.firstIndex(of: needle, in: buffer)
                }
                guard let start = found else { return .some(nil) }
                var end = start + pattern.utf8CodeUnitCount
                while end < buffer.count && buffer[end] != UInt8(ascii: "\"") {
                    if buffer[end] == UInt8(ascii: "\\") { return nil }
                    end += 1
                }
                guard end < buffer.count else { return nil }
                return .some(.range((start + pattern.utf8CodeUnitCount)..<end))
            }
            guard let eventID = value("\"event_id\":\""), let action = value("\"action\":\""),
                let userID = value("\"user_id\":\""), let anonymousID = value("\"anonymous_id\":\""),
                let gatewayID = value("\"gateway_id\":\"", last: true)
            else { return nil }
            var message = ForwardedMessage()
            message.eventID = eventID
            message.action = action
            message.userID = userID
            message.anonymousID = anonymousID
            message.gatewayID = gatewayID
            return message
        }
    }

    private static let propertiesKey: StaticString = "\"properties\":"

    private static func lastIndex(of pattern: UnsafeBufferPointer<UInt8>, in bytes: UnsafeBufferPointer<UInt8>) -> Int?
    {
        guard let base = bytes.baseAddress, let needle = pattern.baseAddress, bytes.count >= pattern.count else {
            return nil
        }
        var index = bytes.count - pattern.count
        while index >= 0 {
            if bytes[index] == pattern[0] && memcmp(base + index, needle, pattern.count) == 0 { return index }
            index -= 1
        }
        return nil
    }

    private static func firstIndex(of pattern: UnsafeBufferPointer<UInt8>, in bytes: UnsafeBufferPointer<UInt8>) -> Int?
    {
        guard let base = bytes.baseAddress, let needle = pattern.baseAddress, bytes.count >= pattern.count else {
            return nil
        }
        var index = 0
        let first = pattern[0]
        while index <= bytes.count - pattern.count {
            guard let hit = memchr(base + index, Int32(first), bytes.count - pattern.count - index + 1) else {
                return nil
            }
            index = base.distance(to: hit.assumingMemoryBound(to: UInt8.self))
            if memcmp(base + index, needle, pattern.count) == 0 { return index }
            index += 1
        }
        return nil
    }
}
