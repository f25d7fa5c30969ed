import CoreMetrics
import HTTPTypes
import Metrics
import SluiceCore
import Synchronization

/// The gateway's HTTP metrics (`sluice_http_…`, `sluice_gateway_…`).
final class HTTPMetrics: Sendable {
    let acceptedEvents = Counter(label: "sluice_gateway_accepted_events_total")
    let rejectedEvents = Counter(label: "sluice_gateway_rejected_events_total")
    let acceptedBytes = Counter(label: "sluice_gateway_accepted_body_bytes_total")
    let appendTimeouts = Counter(label: "sluice_gateway_append_timeouts_total")

    /// Client connections open now, and the most allowed (``ConnectionLimiter``).
    let connections = Gauge(label: "sluice_http_connections")
    let connectionsLimit = Gauge(label: "sluice_http_connections_limit")
    /// Times accepting stopped: at `max_connections`, or because the process ran out of
    /// descriptors (EMFILE/ENFILE).
    let acceptPausedAtLimit = Counter(
        label: "sluice_http_accept_pauses_total",
        dimensions: [("reason", "max_connections")]
    )
    let acceptPausedAtFDLimit = Counter(label: "sluice_http_accept_pauses_total", dimensions: [("reason", "fd_limit")])
    /// Connections closed right after accept: over the limit, or taken only to clear the
    /// backlog while out of descriptors.
    let refusedAtLimit = Counter(
        label: "sluice_http_connections_refused_total",
        dimensions: [("reason", "max_connections")]
    )
    let refusedAtFDLimit = Counter(label: "sluice_http_connections_refused_total", dimensions: [("reason", "fd_limit")])
    /// Connections closed by a timeout (``HTTPRequestGuard``).
    let idleTimeouts = Counter(label: "sluice_http_timeouts_total", dimensions: [("reason", "idle")])
    let headerTimeouts = Counter(label: "sluice_http_timeouts_total", dimensions: [("reason", "header")])
    let bodyTimeouts = Counter(label: "sluice_http_timeouts_total", dimensions: [("reason", "body")])

    private struct Key: Hashable {
        var route: String
        var method: String
        var status: Int
    }

    /// Metric objects are looked up in the registry once per label set, not per request.
    private let counters = Mutex<[Key: Counter]>([:])
    private let timers = Mutex<[String: Metrics.Timer]>([:])

    func record(route: String, method: HTTPRequest.Method, status: Int, duration: Duration) {
        self.record(route: route, method: method.rawValue, status: status, duration: duration)
    }

    /// `method` and `route` must come from a bounded set: the parser's methods, known paths,
    /// `other`, `(unparsed)`.
    func record(route: String, method: String, status: Int, duration: Duration) {
        let key = Key(route: route, method: method, status: status)
        let counter = self.counters.withLock { counters in
            if let counter = counters[key] { return counter }
            let counter = Counter(
                label: "sluice_http_requests_total",
                dimensions: [("route", route), ("method", key.method), ("status", String(status))]
            )
            counters[key] = counter
            return counter
        }
        counter.increment()
        let timer = self.timers.withLock { timers in
            if let timer = timers[route] { return timer }
            let timer = Metrics.Timer(label: "sluice_http_request_duration_seconds", dimensions: [("route", route)])
            timers[route] = timer
            return timer
        }
        timer.recordNanoseconds(
            duration.nanoseconds
        )
    }
}
