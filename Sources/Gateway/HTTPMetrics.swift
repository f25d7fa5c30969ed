import CoreMetrics
import HTTPTypes
import Metrics
import Synchronization

/// The gateway's HTTP metrics (`sluice_http_…`, `sluice_gateway_…`).
final class HTTPMetrics: Sendable {
    let acceptedEvents = Counter(label: "sluice_gateway_accepted_events_total")
    let rejectedEvents = Counter(label: "sluice_gateway_rejected_events_total")
    let acceptedBytes = Counter(label: "sluice_gateway_accepted_body_bytes_total")
    let appendTimeouts = Counter(label: "sluice_gateway_append_timeouts_total")

    private struct Key: Hashable {
        var route: String
        var method: String
        var status: Int
    }

    /// Metric objects are looked up in the registry once per label set, not per request.
    private let counters = Mutex<[Key: Counter]>([:])
    private let timers = Mutex<[String: Metrics.Timer]>([:])

    func record(route: String, method: HTTPRequest.Method, status: Int, duration: Duration) {
        let key = Key(route: route, method: method.rawValue, status: status)
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
            duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000
        )
    }
}
