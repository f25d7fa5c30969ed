import EventModel
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Prometheus

/// The operational paths: on the API listener, or on the admin listener when
/// `gateway.admin_listen` is set (then the API listener answers 404 for them).
let operationalPaths: Set<String> = ["/healthz", "/readyz", "/metrics"]

/// `/healthz`, `/readyz` and `/metrics` on `router`: the API router, or the admin listener's.
func addOperationalRoutes<Context: RequestContext>(
    to router: Router<Context>,
    configuration: GatewayConfiguration,
    wal: any EventLog,
    registry: PrometheusCollectorRegistry,
    stopGate: StopGate,
    authReadiness: (@Sendable () -> String?)? = nil
) {
    router.get("/healthz") { _, _ in Ingest.json(.ok, .object([("status", .string("ok"))])) }
    router.get("/readyz") { _, _ in
        if stopGate.isClosed {
            var response = Ingest.json(
                .serviceUnavailable,
                .object([
                    ("status", .string("unavailable")), ("reason", .string("the gateway is shutting down")),
                    ("wal_pressure", .string(wal.pressureLevel)),
                ])
            )
            response.headers[.retryAfter] = String(configuration.retryAfterSeconds)
            return response
        }
        if wal.isWritable {
            var members: [(String, JSONValue)] = [
                ("status", .string("ready")), ("wal_pressure", .string(wal.pressureLevel)),
            ]
            // Degraded, not unready: API keys and cached tokens still work, and taking every
            // gateway out of the balancer because an identity provider is down would stop them too.
            if let problem = authReadiness?() { members.append(("auth", .string("degraded: \(problem)"))) }
            return Ingest.json(.ok, .object(members))
        }
        let reason = wal.unavailableReason ?? "the WAL is closed"
        var response = Ingest.json(
            .serviceUnavailable,
            .object([
                ("status", .string("unavailable")), ("reason", .string(reason)),
                ("wal_pressure", .string(wal.pressureLevel)),
            ])
        )
        response.headers[.retryAfter] = String(configuration.retryAfterSeconds)
        return response
    }
    router.get("/metrics") { _, _ in prometheusExposition(registry) }
}

/// The admin listener: `/healthz`, `/readyz` and `/metrics` over plain HTTP on
/// `gateway.admin_listen`, so that they need not be exposed with the API. Runs as a service of
/// the gateway's application (``buildGatewayApplication(configuration:wal:registry:authentication:stats:logger:services:tls:stopGate:onServerRunning:onAdminServerRunning:)``).
func buildAdminApplication(
    configuration: GatewayConfiguration,
    host: String,
    port: Int,
    wal: any EventLog,
    registry: PrometheusCollectorRegistry,
    stopGate: StopGate,
    authReadiness: (@Sendable () -> String?)? = nil,
    logger: Logger,
    onServerRunning: @escaping @Sendable (any Channel) async -> Void
) -> some ApplicationProtocol {
    let router = Router(options: .autoGenerateHeadEndpoints)
    addOperationalRoutes(
        to: router,
        configuration: configuration,
        wal: wal,
        registry: registry,
        stopGate: stopGate,
        authReadiness: authReadiness
    )
    return Application(
        router: router,
        configuration: .init(address: .hostname(host, port: port), serverName: "sluice"),
        onServerRunning: onServerRunning,
        logger: logger
    )
}
