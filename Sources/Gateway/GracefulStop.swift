import Hummingbird
import Logging
import ServiceLifecycle
import Synchronization

/// The first step of a gateway's graceful stop (SIGTERM, SIGINT): from that moment `/readyz`
/// answers 503 and the API answers every new request 503 with `Retry-After` and
/// `Connection: close`, for ``GatewayConfiguration/shutdownDelay``, so that a balancer's health
/// check takes this gateway out and its clients send again elsewhere while the listener is
/// still open. Then the HTTP server stops (requests in flight finish and are answered), the
/// forwarder drains the WAL's backlog into Kafka (`forwarder.drain_timeout`), the WAL closes,
/// and the process exits 0.
///
/// Without the delay a balancer would learn of the stop from refused connections, which
/// HAProxy retries on another server but not every client or balancer does; with it the
/// answers say what happened and when to come back.
public final class StopGate: Sendable {
    private let closed = Atomic<Bool>(false)

    public init() {}

    /// The stop has begun: refuse new requests.
    public var isClosed: Bool { self.closed.load(ordering: .acquiring) }

    /// Begins the stop; idempotent.
    public func close() { self.closed.store(true, ordering: .releasing) }
}

/// Refuses every request but `/healthz`, `/readyz` and `/metrics` once the gate is closed.
struct StopGateMiddleware<Context: RequestContext>: RouterMiddleware {
    let gate: StopGate
    let retryAfterSeconds: Int

    func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        guard self.gate.isClosed, !operationalPaths.contains(request.uri.path) else {
            return try await next(request, context)
        }
        var problem = Problem(
            .unavailable,
            "this gateway is shutting down; nothing was stored, send again (the balancer routes to another gateway)"
        )
        problem.headers[.retryAfter] = String(self.retryAfterSeconds)
        problem.headers[.connection] = "close"
        throw problem
    }
}

/// Runs until the graceful stop begins, then closes the gate and keeps the server listening
/// for `delay` before it lets the stop go on. It must come after the HTTP server in its
/// service group: a group stops its services in reverse order.
public struct GracefulStopService: Service {
    let gate: StopGate
    let delay: Duration
    let logger: Logger

    public init(gate: StopGate, delay: Duration, logger: Logger) {
        self.gate = gate
        self.delay = delay
        self.logger = logger
    }

    public func run() async throws {
        do { try await gracefulShutdown() } catch { return }
        self.gate.close()
        self.logger.notice(
            "gateway.stopping",
            metadata: [
                "gateway.shutdown_delay": "\(self.delay)",
                "detail": "/readyz answers 503 and new requests get 503 with Retry-After; requests in flight finish",
            ]
        )
        // Cancelled (a second signal, or the group's end): stop waiting at once.
        try? await Task.sleep(for: self.delay)
    }
}
