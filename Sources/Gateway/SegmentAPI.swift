import Auth
import CoreMetrics
import EventModel
import HTTPTypes
import Hummingbird
import NIOCore

/// Segment's HTTP tracking API (`/v1/track`, `/v1/page`, `/v1/screen`, `/v1/identify`,
/// `/v1/group`, `/v1/alias`, `/v1/batch`), so that off-the-shelf SDKs (analytics-python,
/// rudder-sdk-python, …) send to Sluice unchanged. docs/segment.md is the user's side.
///
/// The messages are mapped onto Sluice events (``SegmentMapping``) and then take the path of
/// `POST /v1/events/batch`: the same validation, policy and rate limit, one WAL record, and
/// the answer only once it is durable.
enum SegmentRoutes {
    /// Path → the type its messages have; nil for `/v1/batch`, whose messages say.
    static let paths: [String: SegmentType?] = {
        var paths: [String: SegmentType?] = ["/v1/batch": nil]
        for type in SegmentType.allCases { paths["/v1/" + type.rawValue] = type }
        return paths
    }()
}

extension Ingest {
    /// One Segment request. Answers 200 `{"success":true}` once every valid message is durable,
    /// the answer the SDKs expect (rudder-sdk-python takes nothing else as success). Invalid
    /// messages beside valid ones are listed in the same 200 answer (`rejected`, `errors`):
    /// the SDKs retry only 429 and 5xx, so a 4xx would make them drop the valid ones too, and
    /// sending the invalid ones again cannot help. A request with no valid message is a 4xx.
    func segment(_ request: Request, context: IngestRequestContext, type: SegmentType?) async throws -> Response {
        guard let format = BodyFormat(contentType: request.headers[.contentType]),
            format == .json || format == .textJSON
        else {
            throw Problem(
                .unsupportedMediaType,
                "Content-Type \(request.headers[.contentType] ?? "(none)") is not accepted here; use application/json",
                extensions: [("accepted_types", .array([.string("application/json"), .string("text/plain")]))]
            )
        }
        let body = try await self.readBody(request)
        let root: JSONValue
        do {
            root = try JSONParser.parse(body.starts(with: [0xEF, 0xBB, 0xBF]) ? Array(body.dropFirst(3)) : body)
        } catch {
            throw Problem(.malformed, "the body is not valid JSON: \(error)")
        }
        guard case .object = root else {
            throw Problem(.malformed, "the body must be a JSON object (a Segment message), not \(root.typeName)")
        }
        // (message, its JSON Pointer in the body)
        var messages: [(JSONValue, String)]
        var batchContext: [(String, JSONValue)]?
        if type == nil {
            guard case .array(let batch)? = root["batch"] else {
                throw Problem(.malformed, "a /v1/batch body needs \"batch\": an array of messages")
            }
            messages = batch.enumerated().map { ($1, "/batch/\($0)") }
            switch root["context"] {
            case .object(let members)?: batchContext = members
            case nil, .null?: break
            case let other?:
                throw Problem(.malformed, "the batch's context must be a JSON object, not \(other.typeName)")
            }
        } else {
            messages = [(root, "")]
        }
        guard !messages.isEmpty else { throw Problem(.malformed, "the batch holds no messages") }
        guard messages.count <= self.configuration.maxBatchEvents else {
            throw Problem(
                .tooLarge,
                "\(messages.count) messages in one request; the limit is \(self.configuration.maxBatchEvents)",
                extensions: [("limit", .number(String(self.configuration.maxBatchEvents)))]
            )
        }
        let policy = self.policy(context)
        if let most = policy?.maxBatch, messages.count > most {
            throw Problem(
                .forbidden,
                "\(messages.count) messages in one request; \(context.grant?.principal.description ?? "this client") may send at most \(most)",
                extensions: [("reason", .string("batch_too_large")), ("limit", .number(String(most)))]
            )
        }

        let requestOrigin = self.origin(request, context: context)
        // A publishable key is in every visitor's browser: its messages may not claim another
        // client address.
        let trustContext = context.grant?.principal.kind != .publishableKey
        var accepted: [(Event, RequestOrigin)] = []
        var firstIndex: [String: Int] = [:]
        var errors: [FieldError] = []
        var rejected = 0
        for (index, (message, pointer)) in messages.enumerated() {
            let result = Self.segmentEvent(
                message,
                type: type,
                batchSentAt: type == nil ? root["sentAt"] : nil,
                batchContext: batchContext,
                trustContext: trustContext,
                origin: requestOrigin,
                pointer: pointer,
                limits: self.configuration.limits,
                clientIPPolicy: self.configuration.clientIPPolicy
            )
            switch result {
            case .success(let (event, origin)):
                if let earlier = firstIndex[event.eventID] {
                    rejected += 1
                    errors.append(
                        FieldError(
                            pointer: pointer + "/messageId",
                            detail:
                                "repeats the messageId of message \(earlier) in this request; every message needs its own"
                        )
                    )
                    continue
                }
                firstIndex[event.eventID] = index
                accepted.append((event, origin))
            case .failure(let failure):
                rejected += 1
                errors += failure.errors
            }
        }
        try self.authorize(accepted.map(\.0), policy: policy, context: context)
        guard !accepted.isEmpty else {
            throw Problem(
                .invalidEvents,
                messages.count == 1 ? "the message is invalid" : "none of the \(messages.count) messages is valid",
                errors: errors
            )
        }
        try await self.append(accepted.map { $0.0.normalizedJSON(origin: $0.1) })
        self.metrics.acceptedEvents.increment(by: Int64(accepted.count))
        self.metrics.acceptedBytes.increment(by: Int64(body.count))
        guard rejected > 0 else { return Self.json(.ok, .object([("success", .bool(true))])) }
        self.metrics.rejectedEvents.increment(by: Int64(rejected))
        return Self.json(
            .ok,
            .object([
                ("success", .bool(true)),
                ("accepted", .number(String(accepted.count))),
                ("rejected", .number(String(rejected))),
                ("errors", .array(errors.map(Problem.json(for:)))),
            ])
        )
    }

    /// One message as a validated event and the origin it is stored with. Errors point into
    /// the request body at the Segment field that caused them.
    static func segmentEvent(
        _ message: JSONValue,
        type: SegmentType?,
        batchSentAt: JSONValue?,
        batchContext: [(String, JSONValue)]?,
        trustContext: Bool,
        origin requestOrigin: RequestOrigin,
        pointer: String,
        limits: EventLimits = EventLimits(),
        clientIPPolicy: ClientIPPolicy = .keep
    ) -> Result<(Event, RequestOrigin), EventErrors> {
        let mapped: SegmentMappedMessage
        switch SegmentMapping.map(
            message,
            type: type,
            batchSentAt: batchSentAt,
            batchContext: batchContext,
            source: requestOrigin.source,
            trustContext: trustContext
        ) {
        case .success(let value): mapped = value
        case .failure(let failure):
            return .failure(
                EventErrors(
                    failure.errors.map { FieldError(pointer: pointer + $0.pointer, detail: $0.detail, limit: $0.limit) }
                )
            )
        }
        var origin = requestOrigin
        if let ip = mapped.clientIP { origin.clientIP = clientIPPolicy.apply(to: ip) }
        if let agent = mapped.userAgent {
            origin.userAgent = agent.truncatedUTF8(maxBytes: limits.maxUserAgentBytes)
            origin.classifyUserAgent()
        } else {
            // The request's user agent is the SDK's (analytics-python/2.4.0): stored as on every
            // route, but it says nothing about the visitor's browser or device.
            (origin.browser, origin.os, origin.device, origin.isBot) = (nil, nil, nil, nil)
        }
        switch Event.validate(mapped.event, pointer: "", origin: origin, limits: limits) {
        case .success(let event): return .success((event, origin))
        case .failure(let failure):
            return .failure(
                EventErrors(failure.errors.map { Self.segmentPointer($0, mapped: mapped, pointer: pointer) })
            )
        }
    }

    /// An error about a Sluice field (`/user_id`), pointed at the Segment field it came from
    /// (`/batch/3/userId`).
    static func segmentPointer(_ error: FieldError, mapped: SegmentMappedMessage, pointer: String) -> FieldError {
        var error = error
        let parts = error.pointer.split(separator: "/", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 2, let source = mapped.sources[String(parts[1])] else {
            error.pointer = pointer + error.pointer
            return error
        }
        let rest = parts.count > 2 ? "/" + parts[2] : ""
        error.pointer = source.hasPrefix("@") ? String(source.dropFirst()) : pointer + source + rest
        return error
    }
}
