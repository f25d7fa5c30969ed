/// The reconciliation of the conservation ledger (docs/ledger.md): what each hop took and
/// handed on, from the records, and the events that are accounted for nowhere.
///
/// An event (gateway, LSN) the forwarder placed in Kafka is **accounted for** once a loader's
/// `loaded` record lists one of its copies (a row, a dead letter, an erased event); an event
/// the forwarder dead-lettered or the WAL quarantined is accounted for by that. A copy is
/// **on its way** while no loader has moved past its offset. A copy the loaders moved past
/// without listing it (its offset fell in a gap of a `loaded` range or between two of them:
/// it was not in Kafka when they read, or they were told to skip it) is **missing**; an
/// event all of whose copies are missing, for longer than the grace period, is
/// **unaccounted**. Records are applied in any order: a `forwarded` record may arrive after
/// the `loaded` record of its offsets.
///
/// Memory stays bounded by what is on its way: accounted LSNs and listed offsets are kept as
/// runs (a day of contiguous LSNs is one run), copies are dropped once accounted for.
public struct LedgerBook: Sendable {
    public struct Identity: Sendable, Hashable, Comparable {
        public var gateway: String
        public var lsn: UInt64

        public init(gateway: String, lsn: UInt64) {
            self.gateway = gateway
            self.lsn = lsn
        }

        public static func < (lhs: Self, rhs: Self) -> Bool { (lhs.gateway, lhs.lsn) < (rhs.gateway, rhs.lsn) }
    }

    public struct Place: Sendable, Hashable, Comparable {
        public var topic: String
        public var partition: Int32

        public init(topic: String, partition: Int32) {
            self.topic = topic
            self.partition = partition
        }

        public static func < (lhs: Self, rhs: Self) -> Bool {
            (lhs.topic, lhs.partition) < (rhs.topic, rhs.partition)
        }

        public var description: String { "\(self.topic)/\(self.partition)" }
    }

    /// What one gateway's WAL took and its forwarder handed on.
    public struct GatewayHop: Sendable, Equatable {
        /// The LSNs `accepted` records cover (the WAL held them, fsync'd).
        public var accepted = RunSet<UInt64>()
        /// The LSNs `forwarded` records cover (the cursor moved over them).
        public var forwarded = RunSet<UInt64>()
        /// Kafka messages placed (a re-sent event counts each time).
        public var placed = 0
        /// Events the forwarder put in the WAL's dead-letter file.
        public var deadLettered = 0
        /// LSNs the WAL quarantined as damaged.
        public var quarantined = RunSet<UInt64>()
    }

    /// What the loaders did with one Kafka partition.
    public struct PartitionHop: Sendable, Equatable {
        /// Messages the forwarders placed here.
        public var placed = 0
        /// Offsets `loaded` records list (rows, dead letters, erased).
        public var listed = RunSet<Int64>()
        /// The highest offset a loader moved past (exclusive).
        public var loadedTo: Int64 = 0
        public var rows = 0
        public var deadLetters = 0
        public var erased = 0
        /// Tables the rows went to.
        public var tables: Set<String> = []
        /// Offsets the loaders moved past without listing them, whoever placed them.
        public var gaps: RunSet<Int64> {
            var gaps = RunSet<Int64>()
            var next = self.listed.runs.first?.lowerBound ?? self.loadedTo
            for run in self.listed.runs {
                if run.lowerBound > next { gaps.insert(next..<run.lowerBound) }
                next = run.upperBound
            }
            if self.loadedTo > next { gaps.insert(next..<self.loadedTo) }
            return gaps
        }
    }

    /// A row a loader listed as inserted: the event's LSN and where its message was in Kafka.
    public struct ConfirmedRow: Sendable, Equatable {
        public var lsn: UInt64
        public var place: Place
        public var offset: Int64

        public init(lsn: UInt64, place: Place, offset: Int64) {
            self.lsn = lsn
            self.place = place
            self.offset = offset
        }
    }

    struct Copy: Sendable {
        var place: Place
        var offset: Int64
        /// When the copy was first seen behind the loaders (unix ms); nil: on its way.
        var missingSince: Int64?
    }

    public private(set) var gateways: [String: GatewayHop] = [:]
    public private(set) var partitions: [Place: PartitionHop] = [:]
    /// Per gateway, the LSNs accounted for (loaded, dead-lettered, quarantined).
    private var accounted: [String: RunSet<UInt64>] = [:]
    /// Events placed and not yet accounted for, with their copies.
    private var open: [Identity: [Copy]] = [:]
    /// Whether to keep ``confirmedRows`` (`sluice audit --rows`; the continuous auditor does not).
    public var tracksRows = false
    /// Per table and gateway, the rows ClickHouse confirmed in `loaded` records of the window:
    /// what `sluice audit --rows` expects to find there.
    public private(set) var confirmedRows: [String: [String: [ConfirmedRow]]] = [:]
    /// Events found as rows in ClickHouse by their identity although no `loaded` record
    /// lists them (`sluice audit --rows`): accounted for.
    public private(set) var foundInClickHouse = 0
    /// The first record's time (unix ms), for the report.
    public private(set) var firstMillis: Int64?
    public private(set) var lastMillis: Int64?
    public private(set) var records = 0

    public init() {}

    /// Applies `record`. Placements made before `sinceMillis` are ignored (the window of
    /// `sluice audit --since`); everything else is kept, since a recent `loaded` record may
    /// settle an older placement.
    public mutating func apply(_ record: LedgerRecord, sinceMillis: Int64 = .min) {
        self.records += 1
        self.firstMillis = min(self.firstMillis ?? record.atMillis, record.atMillis)
        self.lastMillis = max(self.lastMillis ?? record.atMillis, record.atMillis)
        switch record {
        case .accepted(let accepted):
            guard accepted.atMillis >= sinceMillis else { return }
            self.gateways[accepted.gateway, default: GatewayHop()].accepted.insert(accepted.from..<accepted.to)
        case .quarantined(let quarantined):
            self.gateways[quarantined.gateway, default: GatewayHop()].quarantined.insert(
                quarantined.from..<quarantined.to
            )
            self.settle(gateway: quarantined.gateway, lsns: quarantined.from..<quarantined.to)
        case .forwarded(let forwarded):
            guard forwarded.atMillis >= sinceMillis else { return }
            self.applyForwarded(forwarded)
        case .loaded(let loaded):
            self.applyLoaded(loaded)
            if self.tracksRows && loaded.atMillis >= sinceMillis { self.keepRows(loaded) }
        }
    }

    private mutating func applyForwarded(_ forwarded: LedgerRecord.Forwarded) {
        var hop = self.gateways[forwarded.gateway, default: GatewayHop()]
        hop.forwarded.insert(forwarded.from..<forwarded.to)
        hop.deadLettered += forwarded.deadLettered.count
        for placement in forwarded.placements { hop.placed += placement.pairs.count }
        self.gateways[forwarded.gateway] = hop
        for letter in forwarded.deadLettered { self.settle(Identity(gateway: forwarded.gateway, lsn: letter.lsn)) }
        for placement in forwarded.placements {
            let place = Place(topic: placement.topic, partition: placement.partition)
            var partition = self.partitions[place, default: PartitionHop()]
            partition.placed += placement.pairs.count
            for pair in placement.pairs {
                let identity = Identity(gateway: forwarded.gateway, lsn: pair.lsn)
                if partition.listed.contains(pair.offset) {
                    self.settle(identity)
                } else if self.accounted[identity.gateway]?.contains(identity.lsn) != true {
                    self.open[identity, default: []].append(Copy(place: place, offset: pair.offset))
                }
            }
            self.partitions[place] = partition
        }
    }

    private mutating func applyLoaded(_ loaded: LedgerRecord.Loaded) {
        let place = Place(topic: loaded.topic, partition: loaded.partition)
        var partition = self.partitions[place, default: PartitionHop()]
        partition.tables.insert(loaded.table)
        partition.loadedTo = max(partition.loadedTo, loaded.to)
        var settled: [Identity] = []
        for identities in loaded.rows {
            partition.rows += identities.pairs.count
            for pair in identities.pairs {
                partition.listed.insert(pair.offset)
                settled.append(Identity(gateway: identities.gateway, lsn: pair.lsn))
            }
        }
        for identities in loaded.erased {
            partition.erased += identities.pairs.count
            for pair in identities.pairs {
                partition.listed.insert(pair.offset)
                settled.append(Identity(gateway: identities.gateway, lsn: pair.lsn))
            }
        }
        partition.deadLetters += loaded.deadLettered.count
        for letter in loaded.deadLettered {
            partition.listed.insert(letter.offset)
            settled.append(Identity(gateway: letter.gateway, lsn: letter.lsn))
        }
        self.partitions[place] = partition
        // Messages without the forwarder's identity (gateway "") are counted, not settled.
        for identity in settled where !identity.gateway.isEmpty { self.settle(identity) }
    }

    private mutating func keepRows(_ loaded: LedgerRecord.Loaded) {
        let place = Place(topic: loaded.topic, partition: loaded.partition)
        for identities in loaded.rows where !identities.gateway.isEmpty {
            self.confirmedRows[loaded.table, default: [:]][identities.gateway, default: []].append(
                contentsOf: identities.pairs.map { ConfirmedRow(lsn: $0.lsn, place: place, offset: $0.offset) }
            )
        }
    }

    /// Settles `lsns` of `gateway`, found in ClickHouse by `sluice audit --rows`.
    public mutating func settleFoundInClickHouse(gateway: String, lsns: [UInt64]) {
        for lsn in lsns {
            let identity = Identity(gateway: gateway, lsn: lsn)
            if self.open[identity] != nil { self.foundInClickHouse += 1 }
            self.settle(identity)
        }
    }

    private mutating func settle(_ identity: Identity) {
        self.accounted[identity.gateway, default: RunSet()].insert(identity.lsn)
        self.open[identity] = nil
    }

    private mutating func settle(gateway: String, lsns: Range<UInt64>) {
        self.accounted[gateway, default: RunSet()].insert(lsns)
        for identity in self.open.keys where identity.gateway == gateway && lsns.contains(identity.lsn) {
            self.open[identity] = nil
        }
    }

    /// An event missing from where the ledger expects it.
    public struct Missing: Sendable, Equatable {
        public var gateway: String
        /// Its LSNs, as runs.
        public var lsns: [Range<UInt64>]
        /// Where its copies were in Kafka: per partition, the offset runs.
        public var offsets: [Place: [Range<Int64>]]
        public var count: Int

        public init(gateway: String, lsns: [Range<UInt64>], offsets: [Place: [Range<Int64>]], count: Int) {
            self.gateway = gateway
            self.lsns = lsns
            self.offsets = offsets
            self.count = count
        }

        /// Events as ranges per gateway: each event's LSN, and where its copies were in Kafka.
        /// The reconciliation and `sluice audit --rows` name what is missing the same way.
        public static func grouped(
            _ events: [(gateway: String, lsn: UInt64, copies: [(place: Place, offset: Int64)])]
        ) -> [Missing] {
            let byGateway = Dictionary(grouping: events, by: \.gateway)
            return byGateway.keys.sorted().map { gateway in
                let events = byGateway[gateway] ?? []
                var offsets: [Place: [Int64]] = [:]
                for event in events {
                    for copy in event.copies { offsets[copy.place, default: []].append(copy.offset) }
                }
                return Missing(
                    gateway: gateway,
                    lsns: RunSet.runs(of: events.map(\.lsn)),
                    offsets: offsets.mapValues { RunSet.runs(of: $0) },
                    count: Set(events.map(\.lsn)).count
                )
            }
        }
    }

    public struct Reconciliation: Sendable, Equatable {
        /// Events all of whose copies the loaders moved past for longer than the grace period,
        /// without listing any of them: lost between Kafka and ClickHouse.
        public var unaccounted: Int
        /// The unaccounted events, per gateway, as ranges.
        public var missing: [Missing]
        /// Events placed in Kafka that no loader has reached yet (or missing for less than the
        /// grace period).
        public var inKafka: Int
        /// Per gateway, accepted LSNs the forwarder has not moved over yet (an upper bound on
        /// the events still in the WAL: LSNs may skip).
        public var inWAL: [String: Int]
    }

    /// Judges the open events at `nowMillis`: a copy the loaders moved past becomes missing,
    /// and an event missing in every copy for `graceMillis` is unaccounted.
    public mutating func reconcile(nowMillis: Int64, graceMillis: Int64) -> Reconciliation {
        var lost: [Identity] = []
        var inKafka = 0
        for (identity, copies) in self.open {
            var copies = copies
            var allMissing = true
            for index in copies.indices {
                let copy = copies[index]
                let loadedTo = self.partitions[copy.place]?.loadedTo ?? 0
                if copy.offset < loadedTo {
                    if copy.missingSince == nil { copies[index].missingSince = nowMillis }
                    if nowMillis - (copies[index].missingSince ?? nowMillis) < graceMillis { allMissing = false }
                } else {
                    allMissing = false
                }
            }
            self.open[identity] = copies
            if allMissing { lost.append(identity) } else { inKafka += 1 }
        }
        var inWAL: [String: Int] = [:]
        for (gateway, hop) in self.gateways {
            let pending = hop.accepted.count - hop.accepted.overlapCount(with: hop.forwarded)
            if pending > 0 { inWAL[gateway] = pending }
        }
        return Reconciliation(
            unaccounted: lost.count,
            missing: self.describe(lost),
            inKafka: inKafka,
            inWAL: inWAL
        )
    }

    private func describe(_ lost: [Identity]) -> [Missing] {
        Missing.grouped(
            lost.map { identity in
                (identity.gateway, identity.lsn, (self.open[identity] ?? []).map { ($0.place, $0.offset) })
            }
        )
    }
}
