import Kafka
import Ledger
import WAL

/// What the forwarder tells the conservation ledger (docs/ledger.md): the WAL range it has
/// read (`accepted`), and, as the committable position moves, where each event of the range
/// it moved over is in Kafka, or why it is in the dead-letter file instead (`forwarded`).
/// Pure bookkeeping, under the forwarder's lock; the records go to the sink outside it.
struct ForwarderLedger {
    struct Placed {
        var lsn: UInt64
        var topic: String
        var partition: Int32
        var offset: Int64
    }

    /// The identity's gateway: the configured `gateway.gateway_id`, or the one the WAL's
    /// events carry where they differ (a drainer on another host, an id changed since).
    private(set) var gateway: String
    /// Whether the gateway is known for this pass (the first event was read): no record is
    /// made before.
    private var settled = false
    /// `forwarded` records cover the LSNs below this.
    private(set) var forwarded: LSN = .zero
    /// `accepted` records cover the LSNs below this.
    private(set) var accepted: LSN = .zero
    /// Deliveries and dead letters not yet in a record, in arrival order.
    private var placed: [Placed] = []
    private var letters: [LedgerRecord.Letter] = []
    /// When a record was last made (monotonic nanoseconds).
    private var lastRecordNanos: UInt64 = 0

    /// Records are made at most this often from delivery reports (the cursor commit makes
    /// them whatever the time).
    static let minimumIntervalNanos: UInt64 = 20_000_000

    init(gateway: String) { self.gateway = gateway }

    /// A pass starts at `cursor`: what lies beyond it is sent (and recorded) again.
    mutating func begin(at cursor: LSN) {
        self.settled = false
        self.forwarded = cursor
        self.accepted = max(self.accepted, cursor)
        self.placed.removeAll { $0.lsn >= cursor.rawValue }
        self.letters.removeAll { $0.lsn >= cursor.rawValue }
    }

    /// The first event this pass read carries gateway id `id` (nil: none). Returns the id the
    /// records used before, when it differs.
    mutating func settle(eventGateway id: String?) -> String? {
        self.settled = true
        guard let id, !id.isEmpty, id != self.gateway else { return nil }
        defer { self.gateway = id }
        return self.gateway
    }

    mutating func delivered(_ report: DeliveryReport) {
        self.placed.append(
            Placed(lsn: report.id, topic: report.topic, partition: report.partition, offset: report.offset)
        )
    }

    mutating func deadLettered(lsn: LSN, reason: String) {
        self.letters.append(LedgerRecord.Letter(lsn: lsn.rawValue, reason: reason))
    }

    /// The records that bring the ledger up to `committable` (forwarded) and `walEnd`
    /// (accepted): none when neither moved, or when `force` is false and the last record is
    /// younger than ``minimumIntervalNanos``.
    mutating func records(
        committable: LSN,
        walEnd: LSN,
        nowNanos: UInt64,
        wallMillis: Int64,
        force: Bool
    ) -> [LedgerRecord] {
        guard self.settled, committable > self.forwarded || walEnd > self.accepted else { return [] }
        guard force || nowNanos &- self.lastRecordNanos >= Self.minimumIntervalNanos else { return [] }
        self.lastRecordNanos = nowNanos
        var records: [LedgerRecord] = []
        if walEnd > self.accepted {
            records.append(
                .accepted(
                    .init(
                        gateway: self.gateway,
                        from: self.accepted.rawValue,
                        to: walEnd.rawValue,
                        atMillis: wallMillis
                    )
                )
            )
            self.accepted = walEnd
        }
        if committable > self.forwarded {
            let limit = committable.rawValue
            var byPartition: [TopicPartition: PairList] = [:]
            var kept: [Placed] = []
            for entry in self.placed {
                guard entry.lsn < limit else {
                    kept.append(entry)
                    continue
                }
                byPartition[TopicPartition(entry.topic, entry.partition), default: PairList()]
                    .append(lsn: entry.lsn, offset: entry.offset)
            }
            self.placed = kept
            let letters = self.letters.filter { $0.lsn < limit }
            self.letters.removeAll { $0.lsn < limit }
            records.append(
                .forwarded(
                    .init(
                        gateway: self.gateway,
                        from: self.forwarded.rawValue,
                        to: limit,
                        placements: byPartition.sorted { $0.key < $1.key }.map {
                            LedgerRecord.Placement(topic: $0.key.topic, partition: $0.key.partition, pairs: $0.value)
                        },
                        deadLettered: letters,
                        atMillis: wallMillis
                    )
                )
            )
            self.forwarded = committable
        }
        return records
    }
}
