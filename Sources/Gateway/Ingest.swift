import Auth
import CoreMetrics
import EventModel
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Synchronization
import WAL

/// The ingest endpoints: read the body, validate each event, append the valid ones to the
/// WAL as one record, and answer only after that record is durable.
struct Ingest: Sendable {

    let wal: any EventLog
    let configuration: GatewayConfiguration
    let metrics: HTTPMetrics
    let logger: Logger
    var authentication = GatewayAuthentication.open
    /// Receipts and ack levels past `durable`; nil without the ledger.
    var receipts: GatewayReceipts?

    static let singleFormats: [BodyFormat] = [.json, .form, .textJSON]
    static let batchFormats: [BodyFormat] = [.json, .ndjson, .csv, .textJSON]

    /// `POST /v1/events` and `POST /v1/events/batch`.
    func events(_ request: Request, context: IngestRequestContext, batch: Bool) async throws -> Response {
        let accepted = batch ? Self.batchFormats : Self.singleFormats
        guard let format = BodyFormat(contentType: request.headers[.contentType]), accepted.contains(format) else {
            throw Problem(
                .unsupportedMediaType,
                "Content-Type \(request.headers[.contentType] ?? "(none)") is not accepted here; use one of "
                    + accepted.map(\.rawValue).joined(separator: ", "),
                extensions: [("accepted_types", .array(accepted.map { .string($0.rawValue) }))]
            )
        }
        let ack = try AckRequest.parse(request, maxWait: self.receipts?.maxWait)
        let body = try await self.readBody(request)
        let items: [DecodedItem]
        do {
            items = try BodyDecoder.decode(body, format: format, batch: batch)
        } catch {
            throw Problem(.malformed, error.detail)
        }
        guard !items.isEmpty else { throw Problem(.malformed, "the body holds no events") }
        guard items.count <= self.configuration.maxBatchEvents else {
            throw Problem(
                .tooLarge,
                "\(items.count) events in one request; the limit is \(self.configuration.maxBatchEvents)",
                extensions: [("limit", .number(String(self.configuration.maxBatchEvents)))]
            )
        }
        let policy = self.policy(context)
        if let most = policy?.maxBatch, items.count > most {
            throw Problem(
                .forbidden,
                "\(items.count) events in one request; \(context.grant?.principal.description ?? "this client") may send at most \(most)",
                extensions: [("reason", .string("batch_too_large")), ("limit", .number(String(most)))]
            )
        }
        let origin = self.origin(request, context: context)
        var results = items.enumerated().map { index, item in
            Self.validate(item, pointer: batch ? "/\(index)" : "", origin: origin, limits: self.configuration.limits)
        }
        if results.count > 1 { Self.refuseRepeatedEventIDs(&results) }
        let valid = results.compactMap { try? $0.get() }
        try self.authorize(valid, policy: policy, context: context)
        let errors = results.flatMap { result -> [FieldError] in
            if case .failure(let failure) = result { return failure.errors }
            return []
        }
        let atomic: Bool
        switch request.uri.queryParameters["atomic"].map(String.init) {
        case nil, "false", "0": atomic = false
        case "true", "1": atomic = true
        case .some(let other): throw Problem(.malformed, "query parameter atomic='\(other)' must be true or false")
        }
        if valid.isEmpty || (atomic && !errors.isEmpty) {
            let detail =
                atomic && !valid.isEmpty
                ? "\(errors.count) problem(s) in \(results.count - valid.count) event(s); nothing was accepted (atomic=true)"
                : results.count == 1 ? "the event is invalid" : "none of the \(results.count) events is valid"
            throw Problem(.invalidEvents, detail, errors: errors)
        }
        let first = try await self.append(valid.map { $0.normalizedJSON(origin: origin) })
        self.metrics.acceptedEvents.increment(by: Int64(valid.count))
        self.metrics.acceptedBytes.increment(by: Int64(body.count))
        let receipt = await self.receipt(first: first, count: valid.count, ack: ack, context: context)
        if errors.isEmpty {
            var response = Self.json(
                .accepted,
                .object(
                    [
                        ("accepted", .number(String(valid.count))),
                        ("event_ids", .array(valid.map { .string($0.eventID) })),
                    ] + Self.receiptMembers(receipt, ack: ack)
                )
            )
            if let receipt { response.headers[AckRequest.receiptHeader] = receipt.text }
            return response
        }
        // Some valid, some not: the valid ones are durable; say which is which.
        self.metrics.rejectedEvents.increment(by: Int64(results.count - valid.count))
        var ids = valid.map(\.eventID).makeIterator()
        let perItem: [JSONValue] = results.enumerated().map { index, result in
            switch result {
            case .success:
                return .object([
                    ("index", .number(String(index))), ("status", .number("202")),
                    ("event_id", .string(ids.next() ?? "")),
                ])
            case .failure(let failure):
                let problems = failure.errors
                return .object([
                    ("index", .number(String(index))), ("status", .number("422")),
                    (
                        "errors",
                        .array(
                            problems.map(Problem.json(for:))
                        )
                    ),
                ])
            }
        }
        var response = Self.json(
            HTTPResponse.Status(code: 207, reasonPhrase: "Multi-Status"),
            .object(
                [
                    ("accepted", .number(String(valid.count))),
                    ("rejected", .number(String(results.count - valid.count))),
                    ("results", .array(perItem)),
                ] + Self.receiptMembers(receipt, ack: ack)
            )
        )
        if let receipt { response.headers[AckRequest.receiptHeader] = receipt.text }
        return response
    }

    /// `GET /v1/pixel?action=…&user_id=…`: for image beacons. Answers a 1×1 transparent GIF.
    ///
    /// `HEAD` (`store: false`) answers what GET would (200 and the GIF's headers, or the same
    /// 4xx) without storing the event: link checkers, crawlers and browsers' prefetchers send
    /// HEAD, and they are not page views.
    func pixel(_ request: Request, context: IngestRequestContext, store: Bool = true) async throws -> Response {
        let query = Array((request.uri.query ?? "").utf8)
        let fields: [DecodedItem.Field]
        do {
            fields = try BodyDecoder.form(query)
        } catch {
            throw Problem(.malformed, error.detail)
        }
        let origin = self.origin(request, context: context)
        let event: Event
        switch Self.validate(.fields(fields), pointer: "", origin: origin, limits: self.configuration.limits) {
        case .success(let valid): event = valid
        case .failure(let failure): throw Problem(.invalidEvents, "the event is invalid", errors: failure.errors)
        }
        if store { try self.authorize([event], policy: self.policy(context), context: context) }
        var headers = HTTPFields()
        headers[.contentType] = "image/gif"
        headers[.cacheControl] = "no-store"
        guard store else {
            headers[.contentLength] = String(Self.gif.count)
            return Response(status: .ok, headers: headers, body: .init())
        }
        try await self.append([event.normalizedJSON(origin: origin)])
        self.metrics.acceptedEvents.increment()
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: Self.gif)))
    }

    /// The smallest transparent 1×1 GIF.
    static let gif: [UInt8] = [
        0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
        0xFF, 0xFF, 0xFF, 0x21, 0xF9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2C, 0x00, 0x00, 0x00, 0x00,
        0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3B,
    ]

    static func validate(
        _ item: DecodedItem,
        pointer: String,
        origin: RequestOrigin,
        limits: EventLimits
    ) -> Result<Event, EventErrors> {
        switch item {
        case .json(let value):
            return Event.validate(value, pointer: pointer, origin: origin, limits: limits)
        case .fields(let fields):
            return Event.validate(
                fields: fields.map { ($0.name, $0.value) },
                pointer: pointer,
                origin: origin,
                limits: limits
            )
        case .unreadable(let reason):
            return .failure(EventErrors([FieldError(pointer: pointer, detail: reason)]))
        }
    }

    /// Two events with one `event_id` in one request are a client bug (ClickHouse would keep
    /// one of them): the first valid one is accepted, the later ones refused.
    static func refuseRepeatedEventIDs(_ results: inout [Result<Event, EventErrors>]) {
        var first: [String: Int] = [:]
        first.reserveCapacity(results.count)
        for index in results.indices {
            guard case .success(let event) = results[index] else { continue }
            if let earlier = first[event.eventID] {
                results[index] = .failure(
                    EventErrors([
                        FieldError(
                            pointer: "/\(index)/event_id",
                            detail: "repeats the event_id of item \(earlier) in this request; every event needs its own"
                        )
                    ])
                )
            } else {
                first[event.eventID] = index
            }
        }
    }

    /// The rules for the request's principal: configured ones first, then the credential's own.
    func policy(_ context: IngestRequestContext) -> AccessPolicy? {
        guard let grant = context.grant else { return nil }
        return self.authentication.policies[grant.principal.description] ?? grant.policy
    }

    /// The policy's allowed actions, then the rate limit when it counts events.
    func authorize(_ events: [Event], policy: AccessPolicy?, context: IngestRequestContext) throws {
        if let policy {
            let forbidden = policy.forbiddenActions(events.map(\.action))
            if !forbidden.isEmpty {
                throw Problem(
                    .forbidden,
                    "\(context.grant?.principal.description ?? "this client") may not send the action(s) "
                        + forbidden.prefix(5).joined(separator: ", ") + "; nothing was accepted",
                    extensions: [("reason", .string("action_not_allowed"))]
                )
            }
        }
        if let limits = self.authentication.rateLimits, limits.cost == .events, let grant = context.grant,
            !events.isEmpty, let answer = limits.acquire(grant, cost: events.count, client: context.clientIP)
        {
            context.authRecord.state.withLock { $0.rateLimit = answer }
            if !answer.decision.allowed {
                throw AuthenticationMiddleware.rateLimited(answer, who: grant.principal.description)
            }
        }
    }

    func origin(_ request: Request, context: IngestRequestContext) -> RequestOrigin {
        var origin = RequestOrigin(
            receivedAtMillis: Timestamp.nowMillis(),
            // Before the WAL: what is stored travels on to Kafka, ClickHouse and every replay.
            clientIP: self.configuration.clientIPPolicy.apply(to: context.clientIP),
            // Copied into every event of the request: bounded, so that a 100 KB header does not
            // turn 1,000 small events into a 100 MB record.
            userAgent: request.headers[.userAgent].map {
                $0.truncatedUTF8(maxBytes: self.configuration.limits.maxUserAgentBytes)
            },
            gatewayID: self.configuration.gatewayID,
            source: context.grant.flatMap { $0.principal.kind == .anonymous ? nil : $0.principal.description }
        )
        origin.classifyUserAgent()
        return origin
    }

    /// Reads the body up to the limit and undoes `Content-Encoding`, applying the limit to the
    /// decompressed size too (a small gzip body must not become gigabytes).
    func readBody(_ request: Request) async throws -> [UInt8] {
        let limit = self.configuration.maxBodyBytes
        var request = request
        var buffer: ByteBuffer
        do {
            buffer = try await request.collectBody(upTo: limit)
        } catch is NIOTooManyBytesError {
            throw Problem(
                .tooLarge,
                "the body exceeds \(limit) bytes",
                extensions: [("limit", .number(String(limit)))]
            )
        }
        let header = (request.headers[.contentEncoding] ?? "identity").lowercased().trimmingSpaces()
        if header == "identity" || header.isEmpty { return Array(buffer.readableBytesView) }
        guard let encoding = ContentEncoding(header: header) else {
            throw Problem(
                .unsupportedMediaType,
                "Content-Encoding \(header) is not supported; use gzip, deflate or none",
                extensions: [
                    ("accepted_encodings", .array([.string("gzip"), .string("deflate"), .string("identity")]))
                ]
            )
        }
        let compressed = Array(buffer.readableBytesView)
        buffer.clear()
        do throws(ContentDecodingError) {
            return try ContentDecoding.decode(compressed, encoding: encoding, maxBytes: limit)
        } catch  where error.reason == .tooLarge {
            throw Problem(
                .tooLarge,
                "the body decompresses to more than \(limit) bytes",
                extensions: [("limit", .number(String(limit)))]
            )
        } catch {
            // All or nothing: no prefix of an incomplete body is ever parsed.
            throw Problem(.malformed, "the body is not valid \(header) data: \(error.detail)")
        }
    }

    /// Appends the events as one WAL record and returns once it is durable, or throws a 503
    /// problem when that cannot happen within the configured time.
    @discardableResult
    func append(_ events: [[UInt8]]) async throws -> UInt64? {
        do {
            // The WAL enforces the acknowledgement deadline (its ackTimeout, set from
            // appendTimeout): a stalled disk fails the append instead of hanging it.
            guard self.receipts != nil else {
                try await self.wal.store(events)
                return nil
            }
            return try await self.wal.storeReturningLSN(events)
        } catch let error as WALError {
            if error.code == .timedOut || error.code == .overloaded { self.metrics.appendTimeouts.increment() }
            if error.code == .recordTooLarge {
                throw Problem(
                    .tooLarge,
                    "stored, the events of this request are too large for one WAL record (\(error.message)); "
                        + "send fewer events per request"
                )
            }
            var problem = Problem(.unavailable, Self.describe(error))
            problem.headers[.retryAfter] = String(self.configuration.retryAfterSeconds)
            throw problem
        }
    }

    static func describe(_ error: WALError) -> String {
        switch error.code {
        case .timedOut:
            return "the disk did not confirm the write in time; retry with the same event ids (duplicates are removed)"
        case .diskFull: return "the gateway's disk buffer is full; nothing was stored, retry later"
        case .overloaded: return "the gateway is overloaded; nothing was stored, retry shortly"
        case .closed: return "the gateway is shutting down; nothing was stored, retry against another instance"
        default: return "the gateway could not store the events (\(error.code)); nothing was acknowledged, retry"
        }
    }

    static func json(_ status: HTTPResponse.Status, _ value: JSONValue) -> Response {
        var writer = JSONWriter()
        writer.write(value)
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: writer.bytes)))
    }
}
