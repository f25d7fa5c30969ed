import Auth
import CoreMetrics
import EventModel
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import SluiceCore
import Synchronization

/// The per-request context: Hummingbird's core storage plus what the gateway resolves once
/// per request (request id, client address).
public struct IngestRequestContext: RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?
    /// `X-Request-Id` from the client when it is sane, else a generated UUIDv7.
    public var requestID: String = ""
    /// The client's address, honouring `X-Forwarded-For` only from trusted proxies.
    public var clientIP: String?
    /// What the request's credential grants; set by the authentication middleware on the
    /// ingest routes.
    public var grant: AccessGrant?
    /// Who the request turned out to be, for the access log.
    let authRecord = RequestAuthRecord()
    /// With mutual TLS, the verified client certificate's identity: its first SAN URI, else
    /// its first SAN DNS name, else its subject CN. Nil without a client certificate.
    public let clientCertificateIdentity: String?

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.remoteAddress = source.channel.remoteAddress
        self.clientCertificateIdentity = TLSClientIdentities.identity(for: source.channel)
    }

    /// Bodies are read by the ingest handlers with their own limit.
    public var maxUploadSize: Int { 5 << 20 }
}

/// Stamps every request with an id, resolves the client address, turns errors into problem
/// documents, and writes one ECS access-log line and the HTTP metrics per request.
struct AccessLogMiddleware: RouterMiddleware {
    typealias Context = IngestRequestContext

    let logger: Logger
    let proxies: TrustedProxies
    let metrics: HTTPMetrics
    /// Path → allowed methods, to tell 405 from 404.
    let routes: [String: [HTTPRequest.Method]]
    /// Requests from a trusted proxy whose `X-Forwarded-For` held something other than an IP address.
    let invalidForwardedFor = Counter(label: "sluice_gateway_invalid_forwarded_for_total")

    func handle(
        _ request: Request,
        context: IngestRequestContext,
        next: (Request, IngestRequestContext) async throws -> Response
    ) async throws -> Response {
        let started = ContinuousClock.now
        var context = context
        context.requestID = Self.requestID(from: request.headers[.xRequestID])
        let client = self.proxies.clientAddress(
            peer: context.remoteAddress?.ipAddress,
            forwardedFor: request.headers[.xForwardedFor]
        )
        context.clientIP = client.address
        if client.invalidHop != nil { self.invalidForwardedFor.increment() }
        var response: Response
        do {
            response = try await next(request, context)
        } catch let problem as Problem {
            response = problem.response(instance: request.uri.path, requestID: context.requestID)
        } catch let error as any HTTPResponseError {
            response = self.problem(for: error, request: request).response(
                instance: request.uri.path,
                requestID: context.requestID
            )
        } catch {
            self.logger.error(
                "request.failed",
                metadata: ["error": "\(error)", "http.request.id": "\(context.requestID)"]
            )
            response = Problem(.internalError, "the request failed unexpectedly; it was logged").response(
                instance: request.uri.path,
                requestID: context.requestID
            )
        }
        response.headers[.xRequestID] = context.requestID
        let elapsed = ContinuousClock.now - started
        let route =
            self.routes[request.uri.path] != nil
            ? request.uri.path : request.uri.path.hasPrefix(IngestRoutes.receiptPrefix) ? "/v1/receipts/{id}" : "other"
        self.metrics.record(route: route, method: request.method, status: response.status.code, duration: elapsed)
        self.log(request: request, response: response, context: context, client: client, elapsed: elapsed)
        return response
    }

    private func problem(for error: any HTTPResponseError, request: Request) -> Problem {
        switch error.status {
        case .notFound:
            if let allowed = self.routes[request.uri.path], !allowed.contains(request.method) {
                var problem = Problem(
                    .methodNotAllowed,
                    "\(request.uri.path) takes \(allowed.map(\.rawValue).joined(separator: ", "))"
                )
                problem.headers[.allow] = allowed.map(\.rawValue).joined(separator: ", ")
                return problem
            }
            return Problem(.notFound, "no route for \(request.method.rawValue) \(request.uri.path); see /docs/api.md")
        case .contentTooLarge:
            return Problem(.tooLarge, "the request body is too large")
        default:
            let kind = Problem.Kind(
                slug: "http-\(error.status.code)",
                title: error.status.reasonPhrase,
                status: error.status
            )
            return Problem(kind, "\(error)")
        }
    }

    static func requestID(from header: String?) -> String {
        if let header, (1...128).contains(header.utf8.count),
            header.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F })
        {
            return header
        }
        return UUIDText.v7(millis: Timestamp.nowMillis())
    }

    /// Query parameters that may carry a credential: their values never reach the log.
    static let credentialParameters: Set<Substring> = ["key", "writekey", "token", "access_token", "api_key", "apikey"]

    /// The query with the values of credential parameters replaced by `REDACTED`.
    static func redactingCredentials(_ query: String) -> String {
        query.split(separator: "&", omittingEmptySubsequences: false).map { pair -> String in
            let name = pair.prefix { $0 != "=" }
            guard Self.credentialParameters.contains(Substring(name.lowercased())) else { return String(pair) }
            return name + "=REDACTED"
        }.joined(separator: "&")
    }

    /// Header values copied into the log are cut to this many bytes.
    static let maxLoggedHeaderBytes = 512

    private func log(
        request: Request,
        response: Response,
        context: IngestRequestContext,
        client: ClientAddress,
        elapsed: Duration
    ) {
        guard self.logger.logLevel <= .info else { return }
        // Sized once for every field below: no rehashing as it fills.
        var metadata = Logger.Metadata(minimumCapacity: 16)
        metadata["http.request.method"] = .string(request.method.rawValue)
        metadata["url.path"] = .string(request.uri.path)
        metadata["http.response.status_code"] = .string(String(response.status.code))
        metadata["event.duration"] = .string(String(elapsed.nanoseconds))
        metadata["http.request.id"] = .string(context.requestID)
        if let ip = context.clientIP { metadata["client.ip"] = "\(ip)" }
        if let agent = request.headers[.userAgent] {
            metadata["user_agent.original"] = "\(agent.truncatedUTF8(maxBytes: Self.maxLoggedHeaderBytes))"
        }
        if let hop = client.invalidHop { metadata["sluice.forwarded_for.invalid_hop"] = "\(hop)" }
        let auth = context.authRecord.state.withLock { $0 }
        if let principal = auth.principal, principal.kind != .anonymous {
            metadata["user.id"] = "\(principal.description)"
        }
        if let method = auth.method { metadata["sluice.auth.method"] = "\(method)" }
        if let reason = auth.failure { metadata["event.reason"] = "\(reason)" }
        if let length = request.headers[.contentLength] { metadata["http.request.body.bytes"] = "\(length)" }
        if let length = response.body.contentLength { metadata["http.response.body.bytes"] = "\(length)" }
        if let query = request.uri.query, request.uri.path != "/v1/pixel" {
            metadata["url.query"] = "\(Self.redactingCredentials(query))"
        }
        self.logger.info("request", metadata: metadata)
    }
}

extension HTTPField.Name {
    static let xRequestID = Self("X-Request-Id")!
    static let xForwardedFor = Self("X-Forwarded-For")!
}
