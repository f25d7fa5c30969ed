import CoreMetrics
import EventModel
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import SluiceCore

extension Problem.Kind {
    /// HTTP/1.1 the parser refuses, broken body framing, a missing or repeated `Host`.
    static let malformedRequest = Problem.Kind(
        slug: "malformed-request",
        title: "Malformed request",
        status: .badRequest
    )
    static let headersTooLarge = Problem.Kind(
        slug: "headers-too-large",
        title: "Request header fields too large",
        status: .requestHeaderFieldsTooLarge
    )
    static let requestTimeout = Problem.Kind(slug: "request-timeout", title: "Request timeout", status: .requestTimeout)
    static let expectationFailed = Problem.Kind(
        slug: "expectation-failed",
        title: "Expectation failed",
        status: .expectationFailed
    )
}

/// What every connection's ``HTTPRequestGuard`` shares: limits, metrics, the logger.
struct HTTPGuardSettings: Sendable {
    var idleTimeout: TimeAmount
    var headerTimeout: TimeAmount
    var bodyTimeout: TimeAmount
    var maxBodyBytes: Int
    var proxies: TrustedProxies
    /// Path → allowed methods: the metric's `route` label is a known path or `other`.
    var routes: [String: [HTTPRequest.Method]]
    var metrics: HTTPMetrics
    var logger: Logger

    init(
        configuration: GatewayConfiguration,
        routes: [String: [HTTPRequest.Method]],
        metrics: HTTPMetrics,
        logger: Logger
    ) {
        func amount(_ duration: Duration) -> TimeAmount {
            .nanoseconds(duration.nanoseconds)
        }
        self.idleTimeout = amount(configuration.idleTimeout)
        self.headerTimeout = amount(configuration.headerTimeout)
        self.bodyTimeout = amount(configuration.bodyTimeout)
        self.maxBodyBytes = configuration.maxBodyBytes
        self.proxies = TrustedProxies(configuration.trustedProxies)
        self.routes = routes
        self.metrics = metrics
        self.logger = logger
    }
}

/// Guards one HTTP/1.1 connection, between the HTTP parser and Hummingbird, so that
/// Hummingbird only sees requests worth answering and every request gets a real answer:
///
/// - deadlines (``ConnectionTimeouts``): an idle connection is closed, a head that does not
///   complete in time gets 408, a body that does not gets 408 through the handler reading it;
/// - what the parser refuses gets 400 (431 for too many or too large headers) with a problem
///   document, an access-log line and a count, instead of an empty 400 and silence; broken
///   body framing becomes a 400 problem instead of an internal error;
/// - HTTP/1.1 without exactly one `Host` is 400 (RFC 9112 §3.2); `Expect: 100-continue` is
///   answered, another expectation is 417, a declared `Content-Length` over the body limit is
///   413 before the body is read;
/// - a request that does not keep the connection alive (HTTP/1.0 without keep-alive,
///   `Connection: close`) has the connection closed after its answer, and so does an answer
///   with `Connection: close`.
///
/// Every request it answers itself ends the connection: what follows on the wire cannot be
/// trusted. Runs on the channel's event loop; one instance per connection.
final class HTTPRequestGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// An answer the guard gives in place of Hummingbird.
    private struct Refusal {
        var problem: Problem
        var head: HTTPRequestHead?
        var started: NIODeadline
    }

    private let settings: HTTPGuardSettings
    private var timeouts: ConnectionTimeouts
    private var watchdog: Scheduled<Void>?
    /// A read delivered a request part (so its bytes were not the start of a new head).
    private var partsInThisRead = false
    /// The pipeline asked for more bytes and none came yet; false while Hummingbird applies
    /// back-pressure, when a slow client is not to blame for the wait.
    private var readRequested = false
    /// Input after this point is dropped: a refusal or the parser's error ended the request
    /// stream.
    private var inputEnded = false
    /// Close once every answer is written (no keep-alive, or the guard refused a request).
    private var closeWhenAnswered = false
    /// A refusal waiting for earlier pipelined answers to be written.
    private var pendingRefusal: Refusal?
    /// The last request was HTTP/1.0 with `Connection: keep-alive`.
    private var keepAliveHTTP10 = false

    init(settings: HTTPGuardSettings) {
        self.settings = settings
        self.timeouts = ConnectionTimeouts(
            idle: settings.idleTimeout,
            header: settings.headerTimeout,
            body: settings.bodyTimeout,
            now: .now()
        )
    }

    // MARK: Lifecycle and the watchdog

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.armWatchdog(context: context, now: .now()) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.armWatchdog(context: context, now: .now())
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.watchdog?.cancel()
        self.watchdog = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.watchdog?.cancel()
        self.watchdog = nil
        self.timeouts.close()
        context.fireChannelInactive()
    }

    /// One timer per connection, never moved earlier: it fires at the next deadline or after
    /// one ``ConnectionTimeouts/tick``, whichever is sooner, so requests cost no timer work.
    private func armWatchdog(context: ChannelHandlerContext, now: NIODeadline) {
        guard self.watchdog == nil else { return }
        var at = now + self.timeouts.tick
        if let deadline = self.timeouts.deadline, deadline.at < at { at = deadline.at }
        self.watchdog = context.eventLoop.assumeIsolated().scheduleTask(deadline: at) {
            self.watchdog = nil
            self.watchdogFired(context: context)
        }
    }

    private func watchdogFired(context: ChannelHandlerContext) {
        let now = NIODeadline.now()
        guard context.channel.isActive else { return }
        switch self.timeouts.expired(now: now) {
        case nil:
            break
        case .idle:
            self.settings.metrics.idleTimeouts.increment()
            self.timeouts.close()
            context.close(promise: nil)
            return
        case .header where self.readRequested:
            self.settings.metrics.headerTimeouts.increment()
            let started: NIODeadline
            if case .head(let since) = self.timeouts.phase { started = since } else { started = now }
            self.refuse(
                Refusal(
                    problem: Problem(
                        .requestTimeout,
                        "the request's header section did not arrive within \(Self.seconds(self.settings.headerTimeout))"
                    ),
                    head: nil,
                    started: started
                ),
                context: context
            )
            return
        case .body where self.readRequested:
            self.settings.metrics.bodyTimeouts.increment()
            // Hummingbird holds the request: the handler reading the body gets this error and
            // answers it (access log, metrics); nothing is stored.
            self.endInput(context: context)
            context.fireErrorCaught(
                Problem(
                    .requestTimeout,
                    "the request body did not arrive within \(Self.seconds(self.settings.bodyTimeout)) of its headers; nothing was stored"
                )
            )
            if self.timeouts.unanswered == 0 { context.close(promise: nil) }
            return
        case .header, .body:
            break  // the gateway is not reading (back-pressure): not the client's delay
        }
        self.armWatchdog(context: context, now: now)
    }

    static func seconds(_ amount: TimeAmount) -> String {
        let milliseconds = amount.nanoseconds / 1_000_000
        return milliseconds % 1000 == 0 ? "\(milliseconds / 1000) s" : "\(milliseconds) ms"
    }

    // MARK: Inbound

    func read(context: ChannelHandlerContext) {
        self.readRequested = true
        context.read()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if !self.partsInThisRead { self.timeouts.bytesArrived(now: .now()) }
        self.partsInThisRead = false
        self.readRequested = false
        context.fireChannelReadComplete()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.inputEnded else { return }
        self.partsInThisRead = true
        let part = Self.unwrapInboundIn(data)
        switch part {
        case .head(let head):
            let now = NIODeadline.now()
            let started: NIODeadline
            if case .head(let since) = self.timeouts.phase { started = since } else { started = now }
            let expectsContinue: Bool
            switch self.check(head) {
            case .refuse(let problem):
                self.refuse(Refusal(problem: problem, head: head, started: started), context: context)
                return
            case .pass(let continues):
                expectsContinue = continues
            }
            // Behind earlier pipelined answers an interim answer cannot be placed; the client
            // then sends the body after its own short wait, as RFC 9110 section 10.1.1 allows.
            if expectsContinue && self.timeouts.unanswered == 0 {
                let interim = HTTPResponseHead(version: .http1_1, status: .continue)
                context.writeAndFlush(Self.wrapOutboundOut(.head(interim)), promise: nil)
            }
            self.timeouts.headReceived(now: now)
            let keepAlive = head.isKeepAlive
            if !keepAlive {
                // The last request on this connection: anything after it is not read.
                self.closeWhenAnswered = true
            }
            // An HTTP/1.0 client keeps the connection only when the answer says so.
            self.keepAliveHTTP10 = keepAlive && head.version == .http1_0
            context.fireChannelRead(data)
        case .body:
            context.fireChannelRead(data)
        case .end:
            self.timeouts.requestEnded(now: .now())
            if self.closeWhenAnswered { self.inputEnded = true }
            context.fireChannelRead(data)
        }
    }

    private enum Verdict {
        /// Pass it on; `expectsContinue`: answer `100 Continue` first.
        case pass(expectsContinue: Bool)
        case refuse(Problem)
    }

    /// The checks on a request head, in one pass over its fields.
    private func check(_ head: HTTPRequestHead) -> Verdict {
        var hosts = 0
        var expectation: String?
        var declaredLength: Int?
        for (name, value) in head.headers {
            if Self.equalsIgnoringCase(name, "host") {
                hosts += 1
            } else if Self.equalsIgnoringCase(name, "expect") {
                expectation = expectation.map { $0 + ", " + value } ?? value
            } else if Self.equalsIgnoringCase(name, "content-length") {
                declaredLength = Int(value)
            }
        }
        if hosts > 1 || (hosts == 0 && head.version.major == 1 && head.version.minor >= 1) {
            return .refuse(
                Problem(
                    .malformedRequest,
                    hosts == 0
                        ? "an HTTP/1.1 request needs a Host header (RFC 9112 section 3.2)"
                        : "the request has \(hosts) Host headers; exactly one is allowed (RFC 9112 section 3.2)"
                )
            )
        }
        if let declaredLength, declaredLength > self.settings.maxBodyBytes {
            let limit = self.settings.maxBodyBytes
            return .refuse(
                Problem(
                    .tooLarge,
                    "the declared body of \(declaredLength) bytes exceeds \(limit) bytes; it was not read",
                    extensions: [("limit", .number(String(limit)))]
                )
            )
        }
        // RFC 9110 section 10.1.1: a server ignores 100-continue in an HTTP/1.0 request, and
        // 1.0 has no expectations to fail.
        guard let expectation, head.version != .http1_0 else { return .pass(expectsContinue: false) }
        guard expectation.trimmingSpaces().lowercased() == "100-continue" else {
            return .refuse(
                Problem(.expectationFailed, "Expect: \(expectation) is not supported; only 100-continue is")
            )
        }
        return .pass(expectsContinue: true)
    }

    static func equalsIgnoringCase(_ name: String, _ lowercase: StaticString) -> Bool {
        let expected = UnsafeBufferPointer(start: lowercase.utf8Start, count: lowercase.utf8CodeUnitCount)
        guard name.utf8.count == expected.count else { return false }
        return zip(name.utf8, expected).allSatisfy { $0 | 0x20 == $1 }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let parserError = error as? HTTPParserError
        guard parserError != nil || error is ByteToMessageDecoderError else {
            context.fireErrorCaught(error)
            return
        }
        guard !self.inputEnded else { return }  // the parser repeats itself on every later read
        let reason = parserError.map { "\($0.debugDescription)" } ?? "\(error)"
        if case .body = self.timeouts.phase {
            // Hummingbird holds this request: the handler reading the body answers 400 with
            // this problem, and logs and counts it like any other answer.
            self.endInput(context: context)
            context.fireErrorCaught(
                Problem(.malformedRequest, "the request body's framing is broken (\(reason)); nothing was stored")
            )
            if self.timeouts.unanswered == 0 { context.close(promise: nil) }
            return
        }
        let started: NIODeadline
        if case .head(let since) = self.timeouts.phase { started = since } else { started = .now() }
        let problem =
            parserError == .headerOverflow
            ? Problem(
                .headersTooLarge,
                "the header section is too large or has too many fields (at most \(Self.headerLimits))"
            )
            : Problem(.malformedRequest, "the request is not valid HTTP/1.1: \(reason)")
        self.refuse(Refusal(problem: problem, head: nil, started: started), context: context)
    }

    /// The parser's limits (NIO's defaults, kept by Hummingbird).
    static let headerLimits = "80 KiB and 1,000 fields"

    private func endInput(context: ChannelHandlerContext) {
        self.inputEnded = true
        self.closeWhenAnswered = true
        self.timeouts.close()
    }

    // MARK: Outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch Self.unwrapOutboundIn(data) {
        case .head(var head):
            // A handler that answers `Connection: close` (a gateway that is stopping) ends the
            // connection: what the client sends after it is not read.
            if !Self.isInterim(head.status),
                head.headers[canonicalForm: "connection"].contains(where: { $0.lowercased() == "close" })
            {
                self.endInput(context: context)
            }
            if self.closeWhenAnswered && self.timeouts.unanswered <= 1 && !Self.isInterim(head.status) {
                head.headers.replaceOrAdd(name: "Connection", value: "close")
                context.write(Self.wrapOutboundOut(.head(head)), promise: promise)
            } else if self.keepAliveHTTP10 && self.timeouts.unanswered == 1 && !Self.isInterim(head.status) {
                head.headers.replaceOrAdd(name: "Connection", value: "keep-alive")
                context.write(Self.wrapOutboundOut(.head(head)), promise: promise)
            } else {
                context.write(data, promise: promise)
            }
        case .body:
            context.write(data, promise: promise)
        case .end:
            self.timeouts.answerEnded(now: .now())
            guard self.timeouts.unanswered == 0 else {
                context.write(data, promise: promise)
                return
            }
            if let refusal = self.pendingRefusal {
                self.pendingRefusal = nil
                context.write(data, promise: promise)
                self.writeRefusal(refusal, context: context)
            } else if self.closeWhenAnswered {
                let written = promise ?? context.eventLoop.makePromise()
                context.write(data, promise: written)
                written.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            } else {
                context.write(data, promise: promise)
            }
        }
    }

    static func isInterim(_ status: HTTPResponseStatus) -> Bool {
        (100..<200).contains(status.code) && status.code != 101
    }

    // MARK: Refusals

    /// Answers a request Hummingbird never sees, after the answers it still owes, and closes.
    private func refuse(_ refusal: Refusal, context: ChannelHandlerContext) {
        self.endInput(context: context)
        if self.timeouts.unanswered == 0 {
            self.writeRefusal(refusal, context: context)
        } else {
            self.pendingRefusal = refusal
        }
    }

    private func writeRefusal(_ refusal: Refusal, context: ChannelHandlerContext) {
        let requestID = AccessLogMiddleware.requestID(from: refusal.head?.headers.first(name: "X-Request-Id"))
        let path = refusal.head.map { String($0.uri.prefix { $0 != "?" }) }
        let body = refusal.problem.body(instance: path, requestID: requestID)
        let head = HTTPResponseHead(
            version: .http1_1,
            status: HTTPResponseStatus(statusCode: refusal.problem.status.code),
            headers: [
                "Content-Type": "application/problem+json", "Content-Length": String(body.count),
                "Connection": "close", "X-Request-Id": requestID,
            ]
        )
        context.write(Self.wrapOutboundOut(.head(head)), promise: nil)
        context.write(Self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(Self.wrapOutboundOut(.end(nil)), promise: written)
        written.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        self.record(
            refusal,
            status: Int(refusal.problem.status.code),
            requestID: requestID,
            path: path,
            context: context
        )
    }

    /// The access-log line and the metrics, shaped like ``AccessLogMiddleware``'s.
    private func record(
        _ refusal: Refusal,
        status: Int,
        requestID: String,
        path: String?,
        context: ChannelHandlerContext
    ) {
        let elapsed = NIODeadline.now() - refusal.started
        let peer = context.channel.remoteAddress?.ipAddress
        var metadata: Logger.Metadata = [
            "http.response.status_code": "\(status)",
            "event.duration": "\(elapsed.nanoseconds)",
            "http.request.id": "\(requestID)",
            "error.message": "\(refusal.problem.detail)",
        ]
        let route: String
        let method: String
        if let head = refusal.head, let path {
            method = head.method.rawValue
            route = self.settings.routes[path] != nil ? path : "other"
            metadata["http.request.method"] = "\(method)"
            metadata["url.path"] = "\(path)"
            if let agent = head.headers.first(name: "User-Agent") {
                metadata["user_agent.original"] = "\(agent.truncatedUTF8(maxBytes: EventLimits().maxUserAgentBytes))"
            }
            if let length = head.headers.first(name: "Content-Length") {
                metadata["http.request.body.bytes"] = "\(length)"
            }
            let client = self.settings.proxies.clientAddress(
                peer: peer,
                forwardedFor: head.headers.first(name: "X-Forwarded-For")
            )
            if let address = client.address { metadata["client.ip"] = "\(address)" }
        } else {
            route = "(unparsed)"
            method = "(unparsed)"
            if let peer { metadata["client.ip"] = "\(peer)" }
        }
        self.settings.metrics.record(
            route: route,
            method: method,
            status: status,
            duration: .nanoseconds(elapsed.nanoseconds)
        )
        self.settings.logger.info("request", metadata: metadata)
    }
}

@available(*, unavailable)
extension HTTPRequestGuard: Sendable {}

/// Hummingbird's HTTP/1.1 channel with an ``HTTPRequestGuard`` right after the HTTP parser,
/// where the HTTP version, every raw header and the parser's errors are still visible.
struct GatewayHTTP1Channel: ServerChildChannel, HTTPChannelHandler {
    typealias Value = HTTP1Channel.Value

    let http1: HTTP1Channel
    let settings: HTTPGuardSettings

    var responder: HTTPChannelHandler.Responder { self.http1.responder }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let settings = self.settings
        return self.http1.setup(channel: channel, logger: logger).flatMapThrowing { value in
            let operations = channel.pipeline.syncOperations
            let parser = try operations.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self)
            try operations.addHandler(HTTPRequestGuard(settings: settings), position: .after(parser))
            return value
        }
    }

    func handle(value: Value, logger: Logger) async {
        await self.http1.handle(value: value, logger: logger)
    }
}

extension HTTPServerBuilder {
    /// HTTP/1.1 with the gateway's ``HTTPRequestGuard`` on every connection, behind TLS when
    /// `tls` gives a reloader (``TLSGatewayChannel``). `tls` runs when the server is built: a
    /// TLS configuration that cannot be used fails the server's start, never falls back to
    /// plain HTTP.
    static func gateway(
        _ settings: HTTPGuardSettings,
        tls: (@Sendable () throws -> TLSCertificateReloader?)? = nil
    ) -> HTTPServerBuilder {
        .init { responder in
            let http = GatewayHTTP1Channel(http1: HTTP1Channel(responder: responder), settings: settings)
            guard let reloader = try tls?() else { return http }
            return TLSGatewayChannel(
                base: http,
                context: try NIOSSLContext(configuration: reloader.tlsConfiguration()),
                observer: TLSConnectionObserver.Settings(
                    readsClientCertificate: reloader.clientAuth != .none,
                    metrics: TLSHandshakeMetrics(),
                    logger: settings.logger
                )
            )
        }
    }
}
