import CoreMetrics
import HTTPTypes
import Metrics

/// The gateway's HTTP metrics (`sluice_http_…`, `sluice_gateway_…`).
struct HTTPMetrics: Sendable {
    let acceptedEvents = Counter(label: "sluice_gateway_accepted_events_total")
    let rejectedEvents = Counter(label: "sluice_gateway_rejected_events_total")
    let acceptedBytes = Counter(label: "sluice_gateway_accepted_body_bytes_total")
    let appendTimeouts = Counter(label: "sluice_gateway_append_timeouts_total")

    func record(route: String, method: HTTPRequest.Method, status: Int, duration: Duration) {
        Counter(
            label: "sluice_http_requests_total",
            dimensions: [("route", route), ("method", method.rawValue), ("status", String(status))]
        ).increment()
        Metrics.Timer(label: "sluice_http_request_duration_seconds", dimensions: [("route", route)])
            .recordNanoseconds(
                duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000
            )
    }
}
