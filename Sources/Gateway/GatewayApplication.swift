import EventModel
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Prometheus
import ServiceLifecycle
import WAL

/// The gateway's paths and the methods each takes: 405 answers list them in `Allow`. Every
/// GET route also answers HEAD.
let gatewayRoutes: [String: [HTTPRequest.Method]] = {
    var routes: [String: [HTTPRequest.Method]] = [
        "/v1/events": [.post], "/v1/events/batch": [.post], "/v1/pixel": [.get, .head],
        "/healthz": [.get, .head], "/readyz": [.get, .head], "/metrics": [.get, .head],
        // The built-in authorization server's, when it is on.
        "/oauth/token": [.post], "/.well-known/oauth-authorization-server": [.get, .head],
        "/.well-known/jwks.json": [.get, .head],
        // The browser tracker (also at /sluice/<version>.js).
        TrackerScript.path: [.get, .head],
    ]
    for path in SegmentRoutes.paths.keys { routes[path] = [.post] }
    routes.merge(StatsRoutes.all) { first, _ in first }
    return routes
}()

/// The API listener's routes: without the operational paths when the admin listener has them.
func gatewayRoutes(_ configuration: GatewayConfiguration) -> [String: [HTTPRequest.Method]] {
    configuration.adminHost == nil ? gatewayRoutes : gatewayRoutes.filter { !operationalPaths.contains($0.key) }
}

/// Builds the gateway's router: ingest routes, health, readiness and metrics.
///
/// - Parameters:
///   - wal: where accepted events go: the WAL (``EventLog``).
///   - registry: rendered at `/metrics`.
///   - authentication: who may write and how much; by default anyone, without limits.
public func buildGatewayRouter(
    configuration: GatewayConfiguration,
    wal: any EventLog,
    registry: PrometheusCollectorRegistry,
    authentication: GatewayAuthentication = .open,
    stats: StatsService? = nil,
    receipts: GatewayReceipts? = nil,
    stopGate: StopGate = StopGate(),
    logger: Logger
) -> Router<IngestRequestContext> {
    buildGatewayRouter(
        configuration: configuration,
        wal: wal,
        registry: registry,
        metrics: HTTPMetrics(),
        authentication: authentication,
        stats: stats,
        receipts: receipts,
        stopGate: stopGate,
        logger: logger
    )
}

func buildGatewayRouter(
    configuration: GatewayConfiguration,
    wal: any EventLog,
    registry: PrometheusCollectorRegistry,
    metrics: HTTPMetrics,
    authentication: GatewayAuthentication,
    stats: StatsService? = nil,
    receipts: GatewayReceipts? = nil,
    stopGate: StopGate,
    logger: Logger
) -> Router<IngestRequestContext> {
    let ingest = Ingest(
        wal: wal,
        configuration: configuration,
        metrics: metrics,
        logger: logger,
        authentication: authentication,
        receipts: receipts
    )
    let routes = gatewayRoutes(configuration)
    // HEAD on a GET route answers what GET would, without the body (RFC 9110 section 9.3.2);
    // NIO's encoder drops the body, so error answers to HEAD stay well framed too.
    let router = Router(context: IngestRequestContext.self, options: .autoGenerateHeadEndpoints)
    router.add(
        middleware: AccessLogMiddleware(
            logger: logger,
            proxies: TrustedProxies(configuration.trustedProxies),
            metrics: metrics,
            routes: routes
        )
    )
    router.add(middleware: StopGateMiddleware(gate: stopGate, retryAfterSeconds: configuration.retryAfterSeconds))
    if !configuration.corsAllowedOrigins.isEmpty {
        let origins = configuration.corsAllowedOrigins
        router.add(
            middleware: CORSMiddleware(
                allowOrigin: origins.contains("*") ? .all : .originBased,
                allowHeaders: [.contentType, .contentEncoding, .xRequestID, .authorization, .xWriteKey],
                allowMethods: [.get, .post, .options],
                maxAge: .seconds(600)
            )
        )
        router.add(middleware: CrossOriginAnswers())
        if !origins.contains("*") { router.add(middleware: OriginAllowList(origins: Set(origins))) }
    }
    router.add(middleware: AuthenticationMiddleware(authentication: authentication, metrics: AuthMetrics()))
    if let server = authentication.authorizationServer { addAuthorizationServerRoutes(to: router, server: server) }
    router.post("/v1/events") { request, context in try await ingest.events(request, context: context, batch: false) }
    router.post("/v1/events/batch") { request, context in
        try await ingest.events(request, context: context, batch: true)
    }
    router.get("/v1/pixel") { request, context in try await ingest.pixel(request, context: context) }
    router.get("/v1/receipts/:id") { request, context in try ingest.receiptStatus(request, context: context) }
    for (path, type) in SegmentRoutes.paths {
        router.post(RouterPath(path)) { request, context in
            try await ingest.segment(request, context: context, type: type)
        }
    }
    router.head("/v1/pixel") { request, context in try await ingest.pixel(request, context: context, store: false) }
    addTrackerRoutes(to: router, configuration: configuration)
    addStatsRoutes(to: router, service: stats, logger: logger)
    // With an admin listener (gateway.admin_listen) these are served there, and 404 here.
    if configuration.adminHost == nil {
        addOperationalRoutes(
            to: router,
            configuration: configuration,
            wal: wal,
            registry: registry,
            stopGate: stopGate,
            authReadiness: authentication.authReadiness
        )
    }
    return router
}

/// Refuses cross-origin browser requests from origins not on the list (CORS headers alone
/// only stop the browser from reading the answer; the event would still be stored).
struct OriginAllowList: RouterMiddleware {
    typealias Context = IngestRequestContext
    let origins: Set<String>

    func handle(
        _ request: Request,
        context: IngestRequestContext,
        next: (Request, IngestRequestContext) async throws -> Response
    ) async throws -> Response {
        if let origin = request.headers[.origin], !self.origins.contains(origin) {
            throw Problem(
                Problem.Kind(slug: "origin-not-allowed", title: "Origin not allowed", status: .forbidden),
                "origin \(origin) is not allowed to send events here"
            )
        }
        return try await next(request, context)
    }
}

/// The gateway as a runnable Hummingbird application, with the WAL closed after the server
/// stops. `services` (the forwarder) start after the WAL and stop before it.
///
/// HTTPS: with `gateway.tls.cert_file`/`key_file` set, the API listener speaks only TLS
/// (1.2 or 1.3), through `tls` or, when it is nil, a ``TLSCertificateReloader`` made here from
/// `configuration` (trapping SIGHUP). The reloader runs as a service (file watch, SIGHUP). A
/// TLS configuration that cannot be used makes the application fail at start with the
/// reason; it never falls back to plain HTTP. Plain HTTP off loopback is logged as a warning.
///
/// Admin listener: with ``GatewayConfiguration/adminHost`` set, `/healthz`, `/readyz` and
/// `/metrics` are served there over plain HTTP (a service started before the API server and
/// stopped after it), and `onAdminServerRunning` learns its channel.
public func buildGatewayApplication(
    configuration: GatewayConfiguration,
    wal: any EventLog,
    registry: PrometheusCollectorRegistry,
    authentication: GatewayAuthentication = .open,
    stats: StatsService? = nil,
    receipts: GatewayReceipts? = nil,
    logger: Logger,
    services: [any Service] = [],
    tls: TLSCertificateReloader? = nil,
    stopGate: StopGate = StopGate(),
    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in },
    onAdminServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }
) -> some ApplicationProtocol {
    let metrics = HTTPMetrics()
    let router = buildGatewayRouter(
        configuration: configuration,
        wal: wal,
        registry: registry,
        metrics: metrics,
        authentication: authentication,
        stats: stats,
        receipts: receipts,
        stopGate: stopGate,
        logger: logger
    )
    var connectionLimit = configuration.maxConnections
    if let descriptors = ConnectionLimiter.descriptorLimit() {
        connectionLimit = ConnectionLimiter.effectiveLimit(configured: connectionLimit, descriptorLimit: descriptors)
        if connectionLimit < configuration.maxConnections {
            logger.notice(
                "gateway.max_connections.lowered",
                metadata: [
                    "gateway.max_connections": "\(connectionLimit)",
                    "detail": .string(
                        "gateway.max_connections \(configuration.maxConnections) does not fit the process's descriptor limit of \(descriptors) (ulimit -n, LimitNOFILE) with \(ConnectionLimiter.reservedDescriptors) kept for the WAL and Kafka; raise the limit to allow more"
                    ),
                ]
            )
        }
    }
    let limit = connectionLimit
    // The reloader, made once: the server builder and the service list share it.
    let reloader: Result<TLSCertificateReloader, any Error>?
    if let tls {
        reloader = .success(tls)
    } else if configuration.tlsEnabled {
        reloader = Result { try TLSCertificateReloader(configuration: configuration, logger: logger) }
    } else {
        reloader = nil
        if !GatewayConfiguration.isLoopback(configuration.host) {
            logger.warning(
                "gateway.plain_http",
                metadata: [
                    "server.address": "\(configuration.host)",
                    "detail": .string(
                        "the API listener speaks plain HTTP off loopback: credentials and events cross the network readable; set gateway.tls.cert_file and gateway.tls.key_file (sluice tls self-signed makes a test pair)"
                    ),
                ]
            )
        }
    }
    var extraServices: [any Service] = []
    if case .success(let reloader) = reloader { extraServices.append(reloader) }
    if let adminHost = configuration.adminHost {
        extraServices.append(
            buildAdminApplication(
                configuration: configuration,
                host: adminHost,
                port: configuration.adminPort,
                wal: wal,
                registry: registry,
                stopGate: stopGate,
                authReadiness: authentication.authReadiness,
                logger: logger,
                onServerRunning: onAdminServerRunning
            )
        )
    }
    return Application(
        router: router,
        server: .gateway(
            HTTPGuardSettings(
                configuration: configuration,
                routes: gatewayRoutes(configuration),
                metrics: metrics,
                logger: logger
            ),
            tls: reloader.map { result in { @Sendable () throws -> TLSCertificateReloader? in try result.get() } }
        ),
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "sluice"),
        // Shutdown runs in reverse: the server stops, then these (the forwarder flushes to
        // Kafka, the admin listener stops), then the WAL closes.
        services: [wal] + extraServices + services,
        onServerRunning: { channel in
            // Added before anything is accepted in earnest: the caller learns the port here.
            try? await channel.eventLoop.submit {
                // One accept per wakeup, so that accepting stops exactly at the limit.
                try channel.syncOptions?.setOption(ChannelOptions.maxMessagesPerRead, value: 1)
                try channel.pipeline.syncOperations.addHandler(
                    ConnectionLimiter(limit: limit, metrics: metrics, logger: logger),
                    position: .first
                )
            }.get()
            await onServerRunning(channel)
        },
        logger: logger
    )
}

/// `/metrics` and `/healthz` alone, for roles that run without the gateway (`sluice loader`,
/// `sluice forwarder`): Prometheus scrapes them the same way. `services` run with it and stop
/// after it, in reverse order.
public func buildMetricsApplication(
    host: String,
    port: Int,
    registry: PrometheusCollectorRegistry,
    logger: Logger,
    services: [any Service],
    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }
) -> some ApplicationProtocol {
    let router = Router()
    router.get("/healthz") { _, _ in Ingest.json(.ok, .object([("status", .string("ok"))])) }
    router.get("/metrics") { _, _ in prometheusExposition(registry) }
    return Application(
        router: router,
        configuration: .init(address: .hostname(host, port: port), serverName: "sluice"),
        services: services,
        onServerRunning: onServerRunning,
        logger: logger
    )
}

/// Every metric in Prometheus' text format.
func prometheusExposition(_ registry: PrometheusCollectorRegistry) -> Response {
    var headers = HTTPFields()
    headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
    return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer())))
}
