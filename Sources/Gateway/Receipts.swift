import Auth
import Crypto
import EventModel
import Foundation
import HTTPTypes
import Hummingbird
import Ledger

/// Delivery receipts and ack levels (docs/receipts.md): what a gateway with the ledger adds
/// to its answers, and `GET /v1/receipts/{id}`.
public struct GatewayReceipts: Sendable {
    public let book: ReceiptBook
    /// The identity the gateway's events carry (`gateway.gateway_id`).
    public let gatewayID: String
    /// The longest a request may wait for its ack level.
    public let maxWait: Duration
    let key: SymmetricKey

    /// - Parameter key: the receipts' MAC key: the same on every gateway behind one balancer,
    ///   so that any of them verifies any receipt.
    public init(book: ReceiptBook, gatewayID: String, key: [UInt8], maxWait: Duration) {
        self.book = book
        self.gatewayID = gatewayID
        self.key = SymmetricKey(data: key)
        self.maxWait = maxWait
    }
}

/// A receipt names the events of one request: the gateway, the first LSN and the count, and
/// a MAC over them and the principal that sent them, so that only that principal can read
/// it. Text: `r1.<gateway, base64url>.<first LSN>.<count>.<MAC, base64url>`.
struct ReceiptID: Equatable {
    var gateway: String
    var first: UInt64
    var count: Int

    var lsns: Range<UInt64> { self.first..<(self.first + UInt64(self.count)) }

    func text(principal: String, key: SymmetricKey) -> String {
        "r1.\(Self.base64url(Array(self.gateway.utf8))).\(self.first).\(self.count)."
            + Self.base64url(self.mac(principal: principal, key: key))
    }

    /// The receipt `text` names, when it is one and was issued to `principal`.
    static func parse(_ text: String, principal: String, key: SymmetricKey) -> ReceiptID? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0] == "r1", let gatewayBytes = Self.unbase64url(String(parts[1])),
            let first = UInt64(parts[2]), let count = Int(parts[3]), count > 0, count <= 1_000_000,
            first <= UInt64.max - UInt64(count), let mac = Self.unbase64url(String(parts[4]))
        else { return nil }
        let id = ReceiptID(gateway: String(decoding: gatewayBytes, as: UTF8.self), first: first, count: count)
        // Constant time: a guessed MAC learns nothing from the answer's timing.
        let expected = id.mac(principal: principal, key: key)
        guard mac.count == expected.count else { return nil }
        var difference: UInt8 = 0
        for (a, b) in zip(mac, expected) { difference |= a ^ b }
        return difference == 0 ? id : nil
    }

    private func mac(principal: String, key: SymmetricKey) -> [UInt8] {
        let message = "\(self.gateway)\n\(self.first)\n\(self.count)\n\(principal)"
        return Array(HMAC<SHA256>.authenticationCode(for: Array(message.utf8), using: key).prefix(16))
    }

    static func base64url(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func unbase64url(_ text: String) -> [UInt8]? {
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while base64.count % 4 != 0 { base64 += "=" }
        return Data(base64Encoded: base64).map { [UInt8]($0) }
    }
}

/// What a request asked for: `?ack=` or `Sluice-Ack`, and how long it will wait
/// (`?ack_timeout=` or `Sluice-Ack-Timeout`, at most `receipts.max_wait`).
struct AckRequest {
    var level: AckLevel
    var timeout: Duration

    static let header = HTTPField.Name("Sluice-Ack")!
    static let timeoutHeader = HTTPField.Name("Sluice-Ack-Timeout")!
    static let receiptHeader = HTTPField.Name("Sluice-Receipt")!

    static func parse(_ request: Request, maxWait: Duration?) throws -> AckRequest {
        let query = request.uri.queryParameters
        let name = query["ack"].map(String.init) ?? request.headers[Self.header]
        var level = AckLevel.durable
        if let name {
            guard let parsed = AckLevel(name: name.lowercased()) else {
                throw Problem(
                    .malformed,
                    "ack '\(name)' is not a level; use durable, replicated or queryable",
                    extensions: [("reason", .string("invalid_ack"))]
                )
            }
            level = parsed
        }
        guard level > .durable else { return AckRequest(level: level, timeout: .zero) }
        guard let maxWait else {
            throw Problem(
                .malformed,
                "ack=\(level) needs delivery receipts, which this gateway does not keep (ledger.enabled is false, or it "
                    + "has no Kafka); nothing was stored: send without ack, or to a gateway with the ledger",
                extensions: [("reason", .string("ack_unavailable"))]
            )
        }
        var timeout = maxWait
        if let text = query["ack_timeout"].map(String.init) ?? request.headers[Self.timeoutHeader] {
            guard let asked = Self.duration(text) else {
                throw Problem(
                    .malformed,
                    "ack_timeout '\(text)' is not a duration; use milliseconds or seconds, e.g. 500ms, 5s",
                    extensions: [("reason", .string("invalid_ack_timeout"))]
                )
            }
            timeout = min(asked, maxWait)
        }
        return AckRequest(level: level, timeout: timeout)
    }

    static func duration(_ text: String) -> Duration? {
        if text.hasSuffix("ms"), let value = Int64(text.dropLast(2)), value >= 0 { return .milliseconds(value) }
        if text.hasSuffix("s"), let value = Int64(text.dropLast(1)), value >= 0 { return .seconds(value) }
        if let value = Int64(text), value >= 0 { return .milliseconds(value) }
        return nil
    }
}

extension Ingest {
    /// The principal a receipt is bound to.
    static func receiptPrincipal(_ context: IngestRequestContext) -> String {
        let name = context.grant?.principal.description ?? ""
        return name.isEmpty ? "anonymous" : name
    }

    /// After the append of `count` events at `first`: the receipt, and the level reached
    /// within the request's wait.
    func receipt(
        first: UInt64?,
        count: Int,
        ack: AckRequest,
        context: IngestRequestContext
    ) async -> (text: String, reached: AckLevel)? {
        guard let receipts = self.receipts, let first else { return nil }
        let id = ReceiptID(gateway: receipts.gatewayID, first: first, count: count)
        let text = id.text(principal: Self.receiptPrincipal(context), key: receipts.key)
        guard ack.level > .durable else { return (text, .durable) }
        let reached = await receipts.book.wait(
            gateway: id.gateway,
            lsns: id.lsns,
            level: ack.level,
            timeout: ack.timeout
        )
        return (text, reached)
    }

    /// The members an answer gains from its receipt.
    static func receiptMembers(_ receipt: (text: String, reached: AckLevel)?, ack: AckRequest) -> [(String, JSONValue)]
    {
        guard let receipt else { return [] }
        return [
            ("receipt", .string(receipt.text)),
            ("ack", .object([("requested", .string("\(ack.level)")), ("reached", .string("\(receipt.reached)"))])),
        ]
    }

    /// `GET /v1/receipts/{id}`: where each event of a receipt is.
    func receiptStatus(_ request: Request, context: IngestRequestContext) throws -> Response {
        guard let receipts = self.receipts else {
            throw Problem(
                .notFound,
                "this gateway keeps no receipts (ledger.enabled is false, or it has no Kafka)"
            )
        }
        let text = context.parameters.get("id") ?? ""
        guard let id = ReceiptID.parse(text, principal: Self.receiptPrincipal(context), key: receipts.key) else {
            throw Problem(
                .notFound,
                "no such receipt for this client: receipts are readable only by the credential that sent the events"
            )
        }
        let places = receipts.book.places(gateway: id.gateway, lsns: id.lsns)
        let events: [JSONValue] = places.enumerated().map { index, place in
            var members: [(String, JSONValue)] = [
                ("index", .number(String(index))), ("lsn", .number(String(id.first + UInt64(index)))),
            ]
            switch place {
            case .durable:
                members.append(("state", .string("durable")))
            case .replicated(let topic, let partition, let offset):
                members += [
                    ("state", .string("replicated")), ("topic", .string(topic)),
                    ("partition", .number(String(partition))), ("offset", .number(String(offset))),
                ]
            case .queryable(let topic, let partition, let offset, let table):
                members += [
                    ("state", .string("queryable")), ("topic", .string(topic)),
                    ("partition", .number(String(partition))), ("offset", .number(String(offset))),
                    ("table", .string(table)),
                ]
            case .deadLettered(let topic, let reason):
                members += [
                    ("state", .string("dead_lettered")),
                    ("dead_letter", .string(topic ?? "wal")), ("reason", .string(reason)),
                ]
            case .erased:
                members.append(("state", .string("erased")))
            }
            return .object(members)
        }
        return Self.json(
            .ok,
            .object([
                ("receipt", .string(text)), ("gateway", .string(id.gateway)),
                ("first_lsn", .number(String(id.first))), ("count", .number(String(id.count))),
                ("reached", .string("\(ReceiptBook.reached(places))")),
                ("events", .array(events)),
            ])
        )
    }
}
