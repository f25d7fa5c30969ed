import EventModel
import HTTPTypes
import Hummingbird
import NIOCore

/// An RFC 9457 problem document, thrown by handlers and rendered as
/// `application/problem+json`.
public struct Problem: Error, HTTPResponseError, Sendable {
    /// The problem kinds the API answers with; each has a stable `type` URI (documented in
    /// docs/api.md).
    public struct Kind: Sendable, Equatable {
        public var slug: String
        public var title: String
        public var status: HTTPResponse.Status

        public static let malformed = Kind(slug: "malformed-body", title: "Malformed request body", status: .badRequest)
        public static let tooLarge = Kind(slug: "too-large", title: "Request too large", status: .contentTooLarge)
        public static let unsupportedMediaType = Kind(
            slug: "unsupported-media-type",
            title: "Unsupported media type",
            status: .unsupportedMediaType
        )
        public static let invalidEvents = Kind(
            slug: "invalid-events",
            title: "Invalid events",
            status: .unprocessableContent
        )
        public static let unavailable = Kind(
            slug: "unavailable",
            title: "Temporarily unable to accept events",
            status: .serviceUnavailable
        )
        /// 401: no credential, or one that is unknown, expired, revoked or badly signed.
        public static let unauthorized = Kind(slug: "unauthorized", title: "Unauthorized", status: .unauthorized)
        /// 403: a valid credential that may not do this (scope, endpoint, origin, action).
        public static let forbidden = Kind(slug: "forbidden", title: "Forbidden", status: .forbidden)
        /// 400: a malformed credential, or more than one.
        public static let invalidCredentials = Kind(
            slug: "invalid-credentials",
            title: "Invalid credentials",
            status: .badRequest
        )
        /// 429: this client's rate limit, or too many failed authentications from its address.
        public static let rateLimited = Kind(slug: "rate-limited", title: "Too many requests", status: .tooManyRequests)
        public static let notFound = Kind(slug: "not-found", title: "Not found", status: .notFound)
        public static let methodNotAllowed = Kind(
            slug: "method-not-allowed",
            title: "Method not allowed",
            status: .methodNotAllowed
        )
        public static let internalError = Kind(
            slug: "internal-error",
            title: "Internal server error",
            status: .internalServerError
        )
    }

    public var kind: Kind
    public var detail: String
    /// Per-field problems (422), each with a JSON Pointer into the request body.
    public var errors: [FieldError] = []
    /// Extra members (`limit`, `accepted_types`, ...).
    public var extensions: [(String, JSONValue)] = []
    public var headers: HTTPFields = [:]

    public init(_ kind: Kind, _ detail: String, errors: [FieldError] = [], extensions: [(String, JSONValue)] = []) {
        self.kind = kind
        self.detail = detail
        self.errors = errors
        self.extensions = extensions
    }

    public var status: HTTPResponse.Status { self.kind.status }

    /// The document, with the request's path and id filled in.
    func body(instance: String?, requestID: String?) -> [UInt8] {
        var members: [(String, JSONValue)] = [
            ("type", .string("/problems/" + self.kind.slug)),
            ("title", .string(self.kind.title)),
            ("status", .number(String(self.kind.status.code))),
            ("detail", .string(self.detail)),
        ]
        if let instance { members.append(("instance", .string(instance))) }
        if let requestID { members.append(("request_id", .string(requestID))) }
        if !self.errors.isEmpty {
            members.append(
                (
                    "errors",
                    .array(self.errors.map(Self.json(for:)))
                )
            )
        }
        members += self.extensions
        var writer = JSONWriter()
        writer.write(.object(members))
        return writer.bytes
    }

    /// One entry of an `errors` array: `pointer`, `detail`, and `limit` when a limit was exceeded.
    static func json(for error: FieldError) -> JSONValue {
        var members: [(String, JSONValue)] = [("pointer", .string(error.pointer)), ("detail", .string(error.detail))]
        if let limit = error.limit { members.append(("limit", .number(String(limit)))) }
        return .object(members)
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        let requestID = (context as? IngestRequestContext)?.requestID
        return self.response(instance: request.uri.path, requestID: requestID)
    }

    func response(instance: String?, requestID: String?) -> Response {
        var headers = self.headers
        headers[.contentType] = "application/problem+json"
        let body = self.body(instance: instance, requestID: requestID)
        return Response(
            status: self.kind.status,
            headers: headers,
            body: .init(byteBuffer: ByteBuffer(bytes: body))
        )
    }
}
