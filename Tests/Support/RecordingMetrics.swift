import CoreMetrics
import Synchronization

/// Records counters, gauges and timers by label and dimensions, for tests that hand a
/// component its own `MetricsFactory` and read back what it counted.
public final class RecordingMetrics: MetricsFactory, Sendable {
    private let values = Mutex<[String: Double]>([:])

    public init() {}

    private static func key(_ label: String, _ dimensions: [(String, String)]) -> String {
        label + "{" + dimensions.sorted { $0.0 < $1.0 }.map { "\($0.0)=\($0.1)" }.joined(separator: ",") + "}"
    }

    /// The current value of `label` with exactly `dimensions`; nil when never made.
    public func value(_ label: String, _ dimensions: [String: String]) -> Double? {
        let key = Self.key(label, dimensions.map { ($0.key, $0.value) })
        return self.values.withLock { $0[key] }
    }

    /// The sum of `label` over all its dimensions.
    public func total(_ label: String) -> Double {
        self.values.withLock { $0.filter { $0.key.hasPrefix(label + "{") }.values.reduce(0, +) }
    }

    /// Every metric's label and dimensions, as text.
    public var labelsAndDimensions: [String] { self.values.withLock { Array($0.keys) } }

    fileprivate func update(_ key: String, _ change: (inout Double) -> Void) {
        self.values.withLock { change(&$0[key, default: 0]) }
    }

    public func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        let key = Self.key(label, dimensions)
        self.update(key) { _ in }
        return Handler(key: key, metrics: self)
    }

    public func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        Handler(key: Self.key(label, dimensions), metrics: self)
    }

    public func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        Handler(key: Self.key(label, dimensions), metrics: self)
    }

    public func destroyCounter(_ handler: any CounterHandler) {}
    public func destroyRecorder(_ handler: any RecorderHandler) {}
    public func destroyTimer(_ handler: any TimerHandler) {}

    private final class Handler: CounterHandler, RecorderHandler, TimerHandler, Sendable {
        let key: String
        let metrics: RecordingMetrics

        init(key: String, metrics: RecordingMetrics) {
            self.key = key
            self.metrics = metrics
        }

        func increment(by amount: Int64) { self.metrics.update(self.key) { $0 += Double(amount) } }
        func reset() { self.metrics.update(self.key) { $0 = 0 } }
        func record(_ value: Int64) { self.metrics.update(self.key) { $0 = Double(value) } }
        func record(_ value: Double) { self.metrics.update(self.key) { $0 = value } }
        func recordNanoseconds(_ duration: Int64) { self.metrics.update(self.key) { $0 = Double(duration) } }
    }
}
