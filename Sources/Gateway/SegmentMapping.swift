import Crypto
import EventModel

/// The message types of Segment's HTTP tracking API that Sluice accepts, and their paths.
package enum SegmentType: String, Sendable, CaseIterable {
    case track, page, screen, identify, group, alias

    /// The Sluice action a message of this type becomes (`track` takes its event name).
    var action: String? {
        switch self {
        case .track: nil
        case .page: "page_view"
        case .screen: "screen_view"
        case .identify: "identify"
        case .group: "group"
        case .alias: "alias"
        }
    }
}

/// One Segment message turned into a Sluice event object, with what the request-level origin
/// needs from it.
package struct SegmentMappedMessage: Sendable, Equatable {
    /// A Sluice event object for ``Event/validate(_:pointer:origin:limits:)``.
    package var event: JSONValue
    /// For each Sluice field, the JSON Pointer of the Segment field it came from (relative to
    /// the message, or from the body's root after an `@`), so that errors name what the
    /// client sent.
    package var sources: [String: String]
    /// `context.ip`, canonical, when the message may set it.
    package var clientIP: String?
    /// `context.userAgent`: the visitor's browser, not the SDK's.
    package var userAgent: String?
}

/// Segment's message format onto Sluice events (docs/segment.md has the table).
///
/// A pure function of the message: the handler validates the result as any other event, so
/// every limit and error of `/v1/events` applies unchanged.
package enum SegmentMapping {
    /// The key in `properties` under which what has no Sluice field is kept (the original event
    /// name, the page name, the context, a messageId that is not a UUID).
    package static let reservedProperty = "$segment"

    /// Maps one message.
    ///
    /// - Parameters:
    ///   - type: the path's type (`/v1/track`), or nil in a batch, where `type` says it.
    ///   - batchSentAt, batchContext: the batch's own `sentAt` and `context`, which apply to
    ///     every message that has none of its own.
    ///   - source: the authenticated principal (`key:web-shop`): part of a derived event id.
    ///   - trustContext: whether `context.ip` may replace the request's client address (a
    ///     server-side key), which a browser's publishable key may not.
    package static func map(
        _ message: JSONValue,
        type fixedType: SegmentType?,
        batchSentAt: JSONValue? = nil,
        batchContext: [(String, JSONValue)]? = nil,
        source: String?,
        trustContext: Bool
    ) -> Result<SegmentMappedMessage, EventErrors> {
        guard case .object(let members) = message else {
            return .failure(
                EventErrors([
                    FieldError(pointer: "", detail: "a message must be a JSON object, not \(message.typeName)")
                ])
            )
        }
        var errors: [FieldError] = []
        func fail(_ field: String, _ detail: String) { errors.append(FieldError(pointer: "/" + field, detail: detail)) }
        func member(_ key: String) -> JSONValue? {
            guard let value = members.first(where: { $0.0 == key })?.1, value != .null else { return nil }
            return value
        }

        let type: SegmentType
        if let fixedType {
            type = fixedType
        } else {
            guard case .string(let name) = member("type") ?? .null, let known = SegmentType(rawValue: name) else {
                let got = member("type").map { Self.text($0).map { " (got '\($0)')" } ?? " (got \($0.typeName))" } ?? ""
                fail("type", "must be one of \(SegmentType.allCases.map(\.rawValue).joined(separator: ", "))" + got)
                return .failure(EventErrors(errors))
            }
            type = known
        }

        var event: [(String, JSONValue)] = []
        var sources: [String: String] = [:]
        var extra: [(String, JSONValue)] = [("type", .string(type.rawValue))]

        // messageId: a UUID is the event id as sent; anything else is hashed into one, so that
        // a retry of the same message still carries the same id.
        if let id = member("messageId") {
            switch id {
            case .string(let text) where !text.isEmpty:
                if let uuid = UUIDText.normalize(text), uuid != UUIDText.nilUUID, uuid != UUIDText.maxUUID {
                    event.append(("event_id", .string(uuid)))
                } else {
                    event.append(("event_id", .string(Self.derivedEventID(messageID: text, source: source))))
                    extra.append(("messageId", .string(text)))
                }
                sources["event_id"] = "/messageId"
            case .number(let text):
                event.append(("event_id", .string(Self.derivedEventID(messageID: text, source: source))))
                extra.append(("messageId", .string(text)))
                sources["event_id"] = "/messageId"
            case .string: fail("messageId", "must not be empty; omit it and the gateway assigns an id")
            default: fail("messageId", "must be a string, not \(id.typeName)")
            }
        }

        switch type {
        case .track:
            switch member("event") {
            case .string(let name)?:
                if let action = Self.action(fromEventName: name) {
                    event.append(("action", .string(action)))
                    sources["action"] = "/event"
                } else {
                    fail("event", "must name the event with at least one letter or digit")
                }
                extra.append(("event", .string(name)))
            case nil: fail("event", "is required in a track message: the name of the event")
            case let other?: fail("event", "must be a string, not \(other.typeName)")
            }
        default:
            event.append(("action", .string(type.action ?? type.rawValue)))
        }

        var hasIdentity = false
        for (segment, sluice) in [("userId", "user_id"), ("anonymousId", "anonymous_id")] {
            switch member(segment) {
            case nil, .string("")?: continue
            case .string(let text)?: event.append((sluice, .string(text)))
            case .number(let text)? where !text.contains(".") && !text.lowercased().contains("e"):
                event.append((sluice, .string(text)))
            case let other?:
                fail(segment, "must be a string (or an integer), not \(other.typeName)")
                continue
            }
            sources[sluice] = "/" + segment
            hasIdentity = true
        }
        if !hasIdentity && !errors.contains(where: { $0.pointer == "/userId" || $0.pointer == "/anonymousId" }) {
            fail("userId", "userId or anonymousId is required")
        }

        if let timestamp = member("timestamp") {
            event.append(("timestamp", timestamp))
            sources["timestamp"] = "/timestamp"
        } else if let original = member("originalTimestamp") {
            event.append(("timestamp", original))
            sources["timestamp"] = "/originalTimestamp"
        }
        if let sentAt = member("sentAt") {
            event.append(("sent_at", sentAt))
            sources["sent_at"] = "/sentAt"
        } else if let sentAt = batchSentAt, sentAt != .null {
            event.append(("sent_at", sentAt))
            // The batch's, not the message's: "@" marks a pointer from the body's root.
            sources["sent_at"] = "@/sentAt"
        }

        // The context: the batch's, with the message's own keys over it.
        var context: [(String, JSONValue)] = batchContext ?? []
        switch member("context") {
        case .object(let own)?:
            for (key, value) in own {
                if let index = context.firstIndex(where: { $0.0 == key }) {
                    context[index].1 = value
                } else {
                    context.append((key, value))
                }
            }
        case nil: break
        case let other?: fail("context", "must be a JSON object, not \(other.typeName)")
        }
        var mapped = SegmentMappedMessage(event: .null, sources: sources)
        let contextPage = context.first { $0.0 == "page" }?.1
        let payloadKey = type == .identify || type == .group ? "traits" : "properties"
        var properties: [(String, JSONValue)] = []
        switch member(payloadKey) {
        case .object(let given)?: properties = given
        case nil: break
        case let other?: fail(payloadKey, "must be a JSON object, not \(other.typeName)")
        }
        if properties.contains(where: { $0.0 == Self.reservedProperty }) {
            fail(payloadKey + "/" + Self.reservedProperty, "is reserved for what Sluice keeps of the Segment message")
        }
        for (field, key) in [("page", "url"), ("referrer", "referrer")] {
            let fromProperties = type == .page ? properties.first { $0.0 == key }?.1 : nil
            if case .string(let text)? = fromProperties, !text.isEmpty {
                event.append((field, .string(text)))
                mapped.sources[field] = "/\(payloadKey)/\(key)"
            } else if case .string(let text)? = contextPage?[key], !text.isEmpty {
                event.append((field, .string(text)))
                mapped.sources[field] = "/context/page/\(key)"
            }
        }
        switch context.first(where: { $0.0 == "sessionId" })?.1 {
        case .string(let text)? where !text.isEmpty:
            event.append(("session_id", .string(text)))
            mapped.sources["session_id"] = "/context/sessionId"
        case .number(let text)?:
            event.append(("session_id", .string(text)))
            mapped.sources["session_id"] = "/context/sessionId"
        default: break
        }
        if case .string(let agent)? = context.first(where: { $0.0 == "userAgent" })?.1, !agent.isEmpty {
            mapped.userAgent = agent
        }
        if trustContext, let ip = context.first(where: { $0.0 == "ip" })?.1 {
            if case .string(let text) = ip, let canonical = IPAddressText.canonical(Substring(text)) {
                mapped.clientIP = canonical
            } else {
                fail("context/ip", "must be one IPv4 or IPv6 address")
            }
        }
        // The address and user agent have columns of their own (and the address its privacy
        // policy, gateway.client_ip); the rest of the context is kept as sent.
        context.removeAll { $0.0 == "ip" || $0.0 == "userAgent" }

        // Kept under "$segment", so checked here: a field that is stored must be what its
        // name says.
        let kept: [(String, Bool)]
        switch type {
        case .page, .screen: kept = [("name", false), ("category", false)]
        case .group: kept = [("groupId", true)]
        case .alias: kept = [("previousId", true)]
        case .track, .identify: kept = []
        }
        for (key, mayBeInteger) in kept {
            switch member(key) {
            case nil: continue
            case .string(let text)?: extra.append((key, .string(text)))
            case .number(let text)? where mayBeInteger && !text.contains(".") && !text.lowercased().contains("e"):
                extra.append((key, .string(text)))
            case let other?:
                fail(key, "must be a string\(mayBeInteger ? " (or an integer)" : ""), not \(other.typeName)")
            }
        }
        if !context.isEmpty { extra.append(("context", .object(context))) }
        properties.append((Self.reservedProperty, .object(extra)))
        event.append(("properties", .object(properties)))
        mapped.sources["properties"] = "/" + payloadKey
        guard errors.isEmpty else { return .failure(EventErrors(errors)) }
        mapped.event = .object(event)
        return .success(mapped)
    }

    /// A Segment event name as a Sluice action: ASCII letters lower-cased, every run of other
    /// characters one `_`, no `_` at either end, `e_` before a leading digit, at most 64
    /// bytes. `Order Completed` → `order_completed`, `Signed Up!` → `signed_up`. nil when
    /// nothing is left.
    package static func action(fromEventName name: String) -> String? {
        var out: [UInt8] = []
        out.reserveCapacity(min(name.utf8.count, 64))
        var pendingSeparator = false
        for byte in name.utf8 {
            let lower = (0x41...0x5A).contains(byte) ? byte + 0x20 : byte
            let kept = (0x61...0x7A).contains(lower) || (0x30...0x39).contains(lower) || lower == 0x2E || lower == 0x2D
            if kept {
                if pendingSeparator && !out.isEmpty { out.append(0x5F) }
                pendingSeparator = false
                out.append(lower)
            } else {
                pendingSeparator = true
            }
        }
        guard let first = out.first else { return nil }
        if !(0x61...0x7A).contains(first) { out.insert(contentsOf: Array("e_".utf8), at: 0) }
        while out.count > 64 { out.removeLast() }
        while let last = out.last, last == 0x5F { out.removeLast() }
        return String(decoding: out, as: UTF8.self)
    }

    /// The event id of a message whose `messageId` is not a UUID: a UUIDv8 (RFC 9562 §5.8)
    /// from the first 122 bits of SHA-256 over a fixed label, the principal and the
    /// messageId. The same message from the same credential always gets the same id (retries
    /// deduplicate); the principal keeps two sources' `messageId: "1"` apart.
    package static func derivedEventID(messageID: String, source: String?) -> String {
        var input = Array("sluice/segment-message-id\n".utf8)
        input += Array((source ?? "").utf8)
        input.append(0x0A)
        input += Array(messageID.utf8)
        return UUIDText.format(Array(SHA256.hash(data: input)), version: 8)
    }

    private static func text(_ value: JSONValue) -> String? {
        if case .string(let text) = value { return String(text.prefix(64)) }
        return nil
    }
}
