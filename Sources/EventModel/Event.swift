/// One user action, validated and normalized: what the gateway writes to the WAL and the
/// forwarder sends to Kafka.
public struct Event: Sendable, Equatable {
    /// Lower-case UUID: the client's idempotency key, or a UUIDv7 the gateway assigned.
    public var eventID: String
    /// A short identifier such as `page_view` or `click`.
    public var action: String
    /// The signed-in user; nil for an anonymous visitor, who has ``anonymousID`` instead.
    public var userID: String?
    /// A visitor id the client made up (the tracker keeps one in `localStorage`): counts a
    /// visitor who never signed in. An event has a `user_id`, an `anonymous_id`, or both.
    public var anonymousID: String?
    /// When it happened, unix milliseconds: the client's clock corrected by the skew its
    /// ``sentAtMillis`` shows, or the receive time.
    public var timestampMillis: Int64
    /// When the client sent it, by the client's clock, unix milliseconds, as sent.
    public var sentAtMillis: Int64?
    public var page: String?
    public var object: String?
    public var referrer: String?
    public var sessionID: String?
    /// A JSON object of free-form fields.
    public var properties: JSONValue?

    public static let schemaVersion = 1

    public init(
        eventID: String,
        action: String,
        userID: String?,
        anonymousID: String? = nil,
        timestampMillis: Int64,
        sentAtMillis: Int64? = nil,
        page: String? = nil,
        object: String? = nil,
        referrer: String? = nil,
        sessionID: String? = nil,
        properties: JSONValue? = nil
    ) {
        self.eventID = eventID
        self.action = action
        self.userID = userID
        self.anonymousID = anonymousID
        self.timestampMillis = timestampMillis
        self.sentAtMillis = sentAtMillis
        self.page = page
        self.object = object
        self.referrer = referrer
        self.sessionID = sessionID
        self.properties = properties
    }
}

/// What the gateway knows about the request an event came in.
public struct RequestOrigin: Sendable, Equatable {
    public var receivedAtMillis: Int64
    public var clientIP: String?
    public var userAgent: String?
    public var gatewayID: String
    /// The authenticated client or API key name.
    public var source: String?
    /// The user agent's browser family, operating system and device class (`desktop`,
    /// `mobile`, `tablet`, `bot`, `other`), and whether it is a known bot: what the gateway's
    /// classifier made of ``userAgent``; nil when not classified.
    public var browser: String?
    public var os: String?
    public var device: String?
    public var isBot: Bool?

    public init(
        receivedAtMillis: Int64,
        clientIP: String?,
        userAgent: String?,
        gatewayID: String,
        source: String? = nil,
        browser: String? = nil,
        os: String? = nil,
        device: String? = nil,
        isBot: Bool? = nil
    ) {
        self.receivedAtMillis = receivedAtMillis
        self.clientIP = clientIP
        self.userAgent = userAgent
        self.gatewayID = gatewayID
        self.source = source
        self.browser = browser
        self.os = os
        self.device = device
        self.isBot = isBot
    }
}

/// Bounds on what the gateway accepts.
public struct EventLimits: Sendable, Equatable {
    /// Largest `properties` object, serialized. Default: 16 KiB.
    public var maxPropertiesBytes = 16 << 10
    /// How far ahead of the receive time a timestamp may be. Default: 10 minutes.
    public var maxFutureMillis: Int64 = 10 * 60 * 1000
    /// How far behind the receive time a timestamp may be. Default: 30 days.
    public var maxPastMillis: Int64 = 30 * 24 * 3600 * 1000
    /// Longest `user_id`, `anonymous_id`, `object`, `session_id`. Default: 256 bytes.
    public var maxIdentifierBytes = 256
    /// Longest `page` and `referrer` URL. Default: 4096 bytes.
    public var maxURLBytes = 4096
    /// Most members in one event object. An event has eleven fields, so more is always an error;
    /// the limit keeps the answer to a body of 100,000 keys one error, found before any other
    /// work. Default: 64.
    public var maxEventMembers = 64
    /// Most members in the `properties` object (its top level; nested objects are bounded by
    /// ``maxPropertiesBytes``). Default: 256.
    public var maxPropertiesMembers = 256
    /// Longest `user_agent` stored; a longer header is cut at a UTF-8 character boundary.
    /// It is copied into every event of a request, so it must not dwarf them. Default: 512 bytes.
    public var maxUserAgentBytes = 512

    public init() {}
}

/// A problem with one field of one event, located by a JSON Pointer (RFC 6901).
public struct FieldError: Sendable, Equatable, CustomStringConvertible {
    public var pointer: String
    public var detail: String
    /// The limit that was exceeded, for the member-count and `properties` size limits (rendered as `limit`).
    public var limit: Int?

    public init(pointer: String, detail: String, limit: Int? = nil) {
        self.pointer = pointer
        self.detail = detail
        self.limit = limit
    }

    public var description: String { "\(self.pointer): \(self.detail)" }
}

/// Why an event was refused: one entry per bad field.
public struct EventErrors: Error, Sendable, Equatable {
    public var errors: [FieldError]
    public init(_ errors: [FieldError]) { self.errors = errors }
}

extension Event {
    static let knownFields: [String] = [
        "event_id", "action", "user_id", "anonymous_id", "timestamp", "sent_at", "page", "object", "referrer",
        "session_id", "properties",
    ]

    /// Validates a JSON object as an event. Unknown fields are errors: custom data belongs in
    /// `properties`, and a misspelled field should not vanish silently.
    ///
    /// - Parameter pointer: the JSON Pointer of the object in the request (`""` or `"/3"`).
    public static func validate(
        _ value: JSONValue,
        pointer: String,
        origin: RequestOrigin,
        limits: EventLimits
    ) -> Result<Event, EventErrors> {
        guard case .object(let members) = value else {
            return .failure(
                EventErrors([
                    FieldError(pointer: pointer, detail: "an event must be a JSON object, not \(value.typeName)")
                ])
            )
        }
        // Checked before anything else: the work below is linear, but an answer listing
        // 100,000 unknown fields would not be.
        guard members.count <= limits.maxEventMembers else {
            return .failure(
                EventErrors([
                    FieldError(
                        pointer: pointer,
                        detail: "has \(members.count) members; the limit is \(limits.maxEventMembers)",
                        limit: limits.maxEventMembers
                    )
                ])
            )
        }
        var builder = Builder(pointer: pointer, origin: origin, limits: limits, flat: false)
        // One bit per known field: a repeated field is found without comparing keys pairwise.
        var seen: UInt16 = 0
        for (key, member) in members {
            guard let known = Self.knownFields.firstIndex(of: key) else {
                builder.fail(key, "is not an event field; put custom data in \"properties\"")
                continue
            }
            guard seen & (1 << known) == 0 else {
                builder.fail(key, "appears more than once")
                continue
            }
            seen |= 1 << known
            switch key {
            case "properties":
                builder.properties(member)
            case "timestamp", "sent_at":
                switch member {
                case .number(let text): builder.time(key, epochMillis: text)
                case .string(let text): builder.time(key, text: text)
                case .null: break
                default: builder.fail(key, "must be an RFC 3339 string or epoch milliseconds, not \(member.typeName)")
                }
            case "user_id", "anonymous_id":
                switch member {
                case .string(let text): builder.set(key, text)
                case .number(let text) where !text.contains(".") && !text.contains("e") && !text.contains("E"):
                    builder.set(key, text)
                default: builder.fail(key, "must be a string (or an integer), not \(member.typeName)")
                }
            default:
                switch member {
                case .string(let text): builder.set(key, text)
                case .null: break
                default: builder.fail(key, "must be a string, not \(member.typeName)")
                }
            }
        }
        return builder.finish()
    }

    /// Validates flat key-value input (form bodies, pixel query strings, CSV rows): the
    /// known fields by name, `properties` as a JSON object string, and any other key as a
    /// string property. A field without a name is refused, and so is a property named twice
    /// (`x` and `properties.x`, or a key of a `properties` JSON value and `properties.x`).
    public static func validate(
        fields: [(String, String)],
        pointer: String,
        origin: RequestOrigin,
        limits: EventLimits
    ) -> Result<Event, EventErrors> {
        var builder = Builder(pointer: pointer, origin: origin, limits: limits, flat: true)
        var extra: [(String, JSONValue)] = []
        var seen: Set<String> = []
        for (key, value) in fields {
            guard !key.isEmpty else {
                builder.fail(key, "a field has no name (as in \"=1\" in a form or query string)")
                continue
            }
            guard seen.insert(key).inserted else {
                builder.fail(key, "appears more than once")
                continue
            }
            switch key {
            case "properties":
                guard !value.isEmpty else { continue }
                do {
                    builder.properties(try JSONParser.parse(Array(value.utf8)))
                } catch {
                    builder.fail(key, "is not valid JSON: \(error)")
                }
            case "timestamp", "sent_at":
                if value.isEmpty { continue }
                builder.time(key, text: value)
            case "user_id", "anonymous_id":
                // An empty column (a CSV of signed-in and anonymous visitors) is an absent
                // id; ``Builder/finish()`` asks for one of the two.
                if !value.isEmpty { builder.set(key, value) }
            case _ where Self.knownFields.contains(key):
                if !value.isEmpty || key == "action" { builder.set(key, value) }
            default:
                let property = key.hasPrefix("properties.") ? String(key.dropFirst("properties.".count)) : key
                guard !property.isEmpty else {
                    builder.fail(key, "names a property with no name")
                    continue
                }
                extra.append((property, .string(value)))
            }
        }
        if !extra.isEmpty { builder.mergeProperties(extra) }
        return builder.finish()
    }

    /// The event as the gateway stores and forwards it: one compact UTF-8 JSON object.
    ///
    /// - Important: the field order is a contract. ``ForwardedMessage`` finds the Kafka key
    ///   and headers by scanning these bytes, not by parsing them, and relies on `event_id`,
    ///   `action`, `user_id` and `anonymous_id` coming before `properties` (the first match
    ///   before it is the top-level field) and `gateway_id` after it (the last match is), with
    ///   only string values before `properties`. Moving a field across
    ///   `properties` would let a client's property of the same name become the key, the
    ///   topic or a header; change ``ForwardedMessage`` in the same commit.
    public func normalizedJSON(origin: RequestOrigin) -> [UInt8] {
        var writer = JSONWriter(capacity: 256 + (self.page?.utf8.count ?? 0))
        writer.raw("{")
        writer.member("event_id", self.eventID, first: true)
        writer.member("action", self.action)
        if let user = self.userID { writer.member("user_id", user) }
        if let anonymous = self.anonymousID { writer.member("anonymous_id", anonymous) }
        writer.member("timestamp", Timestamp.format(millis: self.timestampMillis))
        if let sent = self.sentAtMillis { writer.member("sent_at", Timestamp.format(millis: sent)) }
        writer.member("received_at", Timestamp.format(millis: origin.receivedAtMillis))
        if let page = self.page { writer.member("page", page) }
        if let object = self.object { writer.member("object", object) }
        if let referrer = self.referrer { writer.member("referrer", referrer) }
        if let session = self.sessionID { writer.member("session_id", session) }
        if let properties = self.properties {
            writer.raw(",\"properties\":")
            writer.write(properties)
        }
        if let ip = origin.clientIP { writer.member("client_ip", ip) }
        if let agent = origin.userAgent { writer.member("user_agent", agent) }
        if let browser = origin.browser { writer.member("browser", browser) }
        if let os = origin.os { writer.member("os", os) }
        if let device = origin.device { writer.member("device", device) }
        if let bot = origin.isBot { writer.raw(bot ? ",\"is_bot\":true" : ",\"is_bot\":false") }
        writer.member("gateway_id", origin.gatewayID)
        if let source = origin.source { writer.member("source", source) }
        writer.raw(",\"schema_version\":\(Self.schemaVersion)}")
        return writer.bytes
    }
}

/// Collects fields and errors for one event.
private struct Builder {
    let pointer: String
    let origin: RequestOrigin
    let limits: EventLimits
    /// Form, CSV or pixel input, where `x` and `properties.x` name the same property.
    let flat: Bool
    var errors: [FieldError] = []
    var eventID: String?
    var action: String?
    var userID: String?
    var anonymousID: String?
    /// As the client sent them; ``finish()`` corrects the timestamp's skew and checks bounds.
    var timestampMillis: Int64?
    var sentAtMillis: Int64?
    var page: String?
    var object: String?
    var referrer: String?
    var sessionID: String?
    var properties: [(String, JSONValue)]?

    init(pointer: String, origin: RequestOrigin, limits: EventLimits, flat: Bool) {
        self.pointer = pointer
        self.origin = origin
        self.limits = limits
        self.flat = flat
    }

    mutating func fail(_ field: String, _ detail: String) {
        self.errors.append(FieldError(pointer: self.pointer + "/" + escapePointer(field), detail: detail))
    }

    mutating func set(_ field: String, _ value: String) {
        switch field {
        case "event_id":
            guard let uuid = UUIDText.normalize(value) else {
                self.fail(field, "must be a UUID such as 0190f5d2-7a3c-7cc2-9b4e-3f6a1d2c4b5a")
                return
            }
            // Every client that sends the nil (or max) UUID would share one id, and ClickHouse
            // would keep one of their events.
            guard uuid != UUIDText.nilUUID && uuid != UUIDText.maxUUID else {
                self.fail(
                    field,
                    "is the \(uuid == UUIDText.nilUUID ? "nil" : "max") UUID, which is reserved; omit event_id and the gateway assigns one"
                )
                return
            }
            self.eventID = uuid
        case "action":
            guard Self.isIdentifier(value) else {
                self.fail(field, "must be 1-64 characters: a lower-case letter, then a-z, 0-9, '_', '.', '-'")
                return
            }
            self.action = value
        case "user_id", "anonymous_id":
            guard !value.isEmpty, value.utf8.count <= self.limits.maxIdentifierBytes else {
                self.fail(field, "must be 1-\(self.limits.maxIdentifierBytes) bytes")
                return
            }
            if field == "user_id" { self.userID = value } else { self.anonymousID = value }
        case "object", "session_id":
            guard value.utf8.count <= self.limits.maxIdentifierBytes else {
                self.fail(field, "must be at most \(self.limits.maxIdentifierBytes) bytes")
                return
            }
            if field == "object" { self.object = value } else { self.sessionID = value }
        case "page", "referrer":
            guard value.utf8.count <= self.limits.maxURLBytes else {
                self.fail(field, "must be at most \(self.limits.maxURLBytes) bytes")
                return
            }
            if field == "page" { self.page = value } else { self.referrer = value }
        default:
            self.fail(field, "is not an event field")
        }
    }

    static func isIdentifier(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard (1...64).contains(bytes.count), (0x61...0x7A).contains(bytes[0]) else { return false }
        return bytes.allSatisfy {
            (0x61...0x7A).contains($0) || (0x30...0x39).contains($0) || $0 == 0x5F || $0 == 0x2E || $0 == 0x2D
        }
    }

    /// `timestamp` or `sent_at`: epoch milliseconds written as digits (in a string, as flat
    /// formats always send them), or RFC 3339.
    mutating func time(_ field: String, text: String) {
        let digits = text.utf8.first == UInt8(ascii: "-") ? text.utf8.dropFirst() : Substring(text).utf8
        if !digits.isEmpty && digits.allSatisfy({ (0x30...0x39).contains($0) }) {
            self.time(field, epochMillis: text)
        } else if let millis = Timestamp.parse(text) {
            self.setTime(field, millis)
        } else {
            self.fail(field, "must be RFC 3339 (2026-11-22T10:15:30.250Z) or epoch milliseconds")
        }
    }

    mutating func time(_ field: String, epochMillis text: String) {
        guard let millis = Int64(text) else {
            self.fail(field, "a numeric \(field) must be whole epoch milliseconds")
            return
        }
        self.setTime(field, millis)
    }

    private mutating func setTime(_ field: String, _ millis: Int64) {
        if field == "timestamp" {
            self.timestampMillis = millis
        } else if millis < 0 || millis >= Timestamp.maxStoredMillis {
            // Stored as a ClickHouse DateTime, which ends in 2106.
            self.fail(field, "must be between 1970 and 2100")
        } else {
            self.sentAtMillis = millis
        }
    }

    /// The timestamp corrected by the client's clock skew: the client's clock ran
    /// `sent_at − received_at` ahead, so the event happened that much earlier by the
    /// gateway's clock (Segment's rule). Then it must lie within the bounds around the
    /// receive time. nil (with an error) when it does not.
    private mutating func correctedTimestamp() -> Int64? {
        let received = self.origin.receivedAtMillis
        guard let raw = self.timestampMillis else { return received }
        let (skew, skewOverflow) = received.subtractingReportingOverflow(self.sentAtMillis ?? received)
        let (millis, overflow) = raw.addingReportingOverflow(skew)
        let corrected = self.sentAtMillis == nil ? "" : " (corrected by the clock skew sent_at shows)"
        if skewOverflow || overflow || millis > received + self.limits.maxFutureMillis {
            self.fail("timestamp", "is more than \(self.limits.maxFutureMillis / 1000) s in the future" + corrected)
        } else if millis < received - self.limits.maxPastMillis {
            self.fail(
                "timestamp",
                "is more than \(self.limits.maxPastMillis / 86_400_000) days in the past" + corrected
            )
        } else {
            return millis
        }
        return nil
    }

    mutating func properties(_ value: JSONValue) {
        switch value {
        case .null: return
        case .object(let members): self.mergeProperties(members)
        default: self.fail("properties", "must be a JSON object, not \(value.typeName)")
        }
    }

    mutating func mergeProperties(_ members: [(String, JSONValue)]) {
        self.properties = (self.properties ?? []) + members
    }

    mutating func finish() -> Result<Event, EventErrors> {
        let timestamp = self.correctedTimestamp()
        var errors = self.errors
        if self.action == nil && !errors.contains(where: { $0.pointer.hasSuffix("/action") }) {
            errors.append(FieldError(pointer: self.pointer + "/action", detail: "is required"))
        }
        if self.userID == nil && self.anonymousID == nil
            && !errors.contains(where: { $0.pointer.hasSuffix("/user_id") || $0.pointer.hasSuffix("/anonymous_id") })
        {
            errors.append(FieldError(pointer: self.pointer + "/user_id", detail: "user_id or anonymous_id is required"))
        }
        var properties: JSONValue?
        if let members = self.properties {
            let value = JSONValue.object(members)
            // Cheapest check first: the member count, then the size, and only a bounded object
            // is searched for duplicate keys.
            if members.count > self.limits.maxPropertiesMembers {
                errors.append(
                    FieldError(
                        pointer: self.pointer + "/properties",
                        detail: "has \(members.count) members; the limit is \(self.limits.maxPropertiesMembers)",
                        limit: self.limits.maxPropertiesMembers
                    )
                )
            } else {
                var writer = JSONWriter()
                writer.write(value)
                if writer.bytes.count > self.limits.maxPropertiesBytes {
                    errors.append(
                        FieldError(
                            pointer: self.pointer + "/properties",
                            detail: "is \(writer.bytes.count) bytes; the limit is \(self.limits.maxPropertiesBytes)",
                            limit: self.limits.maxPropertiesBytes
                        )
                    )
                } else {
                    let detail =
                        self.flat
                        ? "appears more than once (x and properties.x name the same property)"
                        : "appears more than once"
                    for duplicate in DuplicateKeys.pointers(in: value) {
                        errors.append(FieldError(pointer: self.pointer + "/properties" + duplicate, detail: detail))
                    }
                }
            }
            properties = value
        }
        guard errors.isEmpty, let action = self.action, let timestamp else {
            return .failure(EventErrors(errors))
        }
        return .success(
            Event(
                eventID: self.eventID ?? UUIDText.v7(millis: self.origin.receivedAtMillis),
                action: action,
                userID: self.userID,
                anonymousID: self.anonymousID,
                timestampMillis: timestamp,
                sentAtMillis: self.sentAtMillis,
                page: self.page,
                object: self.object,
                referrer: self.referrer,
                sessionID: self.sessionID,
                properties: properties
            )
        )
    }
}

/// Escapes a key for use in a JSON Pointer (RFC 6901).
public func escapePointer(_ key: String) -> String {
    key.replacingOccurrences(of: "~", with: "~0").replacingOccurrences(of: "/", with: "~1")
}

extension String {
    fileprivate func replacingOccurrences(of target: String, with replacement: String) -> String {
        guard self.contains(target) else { return self }
        return self.split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
