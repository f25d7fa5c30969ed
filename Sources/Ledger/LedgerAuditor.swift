import Kafka
import Logging
import Metrics
import Synchronization

/// The continuous reconciliation (docs/ledger.md): follows the ledger topic, keeps a
/// ``LedgerBook`` and, every second, publishes what does not add up:
///
/// - `sluice_unaccounted_events`: events acknowledged to clients that are neither in
///   ClickHouse, nor in a dead-letter topic, nor on their way (0 in a healthy pipeline);
/// - `sluice_ledger_in_flight_events{hop="kafka"}`: placed in Kafka, not loaded yet;
///
/// and logs `ledger.unaccounted` (error) with the missing ranges whenever they change.
/// The loader runs one; several loaders each run one and agree (alert on the maximum).
public final class LedgerAuditor: Sendable {
    let follower: LedgerFollower
    let graceMillis: Int64
    let logger: Logger
    let book = Mutex(LedgerBook())
    let latest = Mutex<LedgerBook.Reconciliation?>(nil)

    /// - Parameter grace: how long every copy of an event must have been missing before the
    ///   event counts as unaccounted: a loader's `loaded` record may reach the ledger after
    ///   another loader's later one (a rebalance).
    public init(follower: LedgerFollower, grace: Duration, logger: Logger) {
        self.follower = follower
        self.graceMillis = grace.components.seconds * 1000 + grace.components.attoseconds / 1_000_000_000_000_000
        self.logger = logger
    }

    /// The last reconciliation (nil before the first).
    public var reconciliation: LedgerBook.Reconciliation? { self.latest.withLock { $0 } }

    /// Follows the ledger until the task is cancelled.
    public func run(clock: @escaping @Sendable () -> Int64) async throws(KafkaError) {
        let unaccounted = Gauge(label: "sluice_unaccounted_events")
        let inKafka = Gauge(label: "sluice_ledger_in_flight_events", dimensions: [("hop", "kafka")])
        let lastJudged = Mutex<Int64>(0)
        let lastMissing = Mutex<[LedgerBook.Missing]>([])
        try await self.follower.run { records in
            let now = clock()
            let result: LedgerBook.Reconciliation? = self.book.withLock { book in
                for record in records { book.apply(record) }
                let due = lastJudged.withLock { last in
                    guard now - last >= 1000 else { return false }
                    last = now
                    return true
                }
                return due ? book.reconcile(nowMillis: now, graceMillis: self.graceMillis) : nil
            }
            guard let result else { return }
            self.latest.withLock { $0 = result }
            unaccounted.record(result.unaccounted)
            inKafka.record(result.inKafka)
            let changed = lastMissing.withLock { last in
                defer { last = result.missing }
                return last != result.missing
            }
            if changed && !result.missing.isEmpty {
                self.logger.error(
                    "ledger.unaccounted",
                    metadata: [
                        "events": "\(result.unaccounted)",
                        "ranges": "\(result.missing.map(\.description).joined(separator: " | "))",
                    ]
                )
            }
        }
    }
}
