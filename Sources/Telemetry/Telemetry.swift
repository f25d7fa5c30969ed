import CoreMetrics
import Logging
import Metrics
import Prometheus
import Synchronization

/// Process-wide logging and metrics set-up, done once by the executable.
public enum Telemetry {
    private static let bootstrapped = Mutex<PrometheusCollectorRegistry?>(nil)

    /// Installs the ECS JSON log handler and the Prometheus metrics factory, and returns the
    /// registry `/metrics` renders. Idempotent: later calls return the first registry.
    @discardableResult
    public static func bootstrap(logLevel: Logger.Level = .info) -> PrometheusCollectorRegistry {
        self.bootstrapped.withLock { existing in
            if let existing { return existing }
            let registry = PrometheusCollectorRegistry()
            var factory = PrometheusMetricsFactory(registry: registry)
            factory.defaultDurationHistogramBuckets = [
                .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2),
                .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
                .milliseconds(200), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5),
            ]
            factory.defaultValueHistogramBuckets = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
            // Delays that include a backlog (Kafka or ClickHouse down) run to minutes or hours.
            let backlogBuckets: [Duration] = [
                .milliseconds(10), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
                .seconds(1), .seconds(2), .seconds(5), .seconds(10), .seconds(30), .seconds(60), .seconds(300),
                .seconds(900), .seconds(3600),
            ]
            factory.durationHistogramBuckets["sluice_loader_ingest_to_insert_seconds"] = backlogBuckets
            factory.durationHistogramBuckets["sluice_forwarder_delivery_latency_seconds"] = backlogBuckets
            factory.valueHistogramBuckets["sluice_loader_batch_rows"] = [
                1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100_000,
            ]
            factory.valueHistogramBuckets["sluice_wal_group_commit_bytes"] = [
                512, 4096, 16384, 65536, 262_144, 1_048_576, 4_194_304,
            ]
            MetricsSystem.bootstrap(factory)
            LoggingSystem.bootstrap { label in ECSLogHandler(label: label, level: logLevel) }
            existing = registry
            return registry
        }
    }
}
