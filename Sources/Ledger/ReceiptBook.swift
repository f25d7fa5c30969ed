import Synchronization

/// How far an event has gone, in order.
public enum AckLevel: Int, Sendable, Comparable, CaseIterable, CustomStringConvertible {
    /// In the gateway's WAL, fsync'd.
    case durable = 0
    /// In Kafka, acknowledged by every in-sync replica (the forwarder produces with acks=all).
    case replicated = 1
    /// A row of a ClickHouse table: a loader committed its offset after ClickHouse confirmed
    /// the insert.
    case queryable = 2

    public init?(name: String) {
        switch name {
        case "durable": self = .durable
        case "replicated": self = .replicated
        case "queryable": self = .queryable
        default: return nil
        }
    }

    public var description: String {
        switch self {
        case .durable: "durable"
        case .replicated: "replicated"
        case .queryable: "queryable"
        }
    }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// Where one event of a receipt is.
public enum EventPlace: Sendable, Equatable {
    /// In the WAL (its LSN), not yet reported in Kafka.
    case durable
    /// In Kafka.
    case replicated(topic: String, partition: Int32, offset: Int64)
    /// A row of `table`.
    case queryable(topic: String, partition: Int32, offset: Int64, table: String)
    /// Refused for good: by Kafka (kept in the WAL's dead-letter file, `topic` nil) or by the
    /// loader (sent to the dead-letter topic `topic`).
    case deadLettered(topic: String?, reason: String)
    /// Its user was erased before it was loaded: no row.
    case erased

    /// The level the event reached; nil for a final state that is no level (dead letter,
    /// erased).
    public var level: AckLevel? {
        switch self {
        case .durable: .durable
        case .replicated: .replicated
        case .queryable: .queryable
        case .deadLettered, .erased: nil
        }
    }
}

/// What a gateway knows of where its events went, for receipts and ack levels (docs/receipts.md),
/// built from the conservation ledger: its own forwarder's records as they are made (so that
/// `replicated` waits no Kafka round trip) and every record of the ledger topic (the other
/// gateways' `forwarded` records for their receipts, the loaders' `loaded` records for
/// `queryable`). A restarted gateway reads the topic again. Records older than `retention` are
/// forgotten: their events answer `durable` again (the receipt still proves they were).
public final class ReceiptBook: LedgerSink, Sendable {
    struct Forwarded {
        struct Placement {
            var topic: String
            var partition: Int32
            /// The (LSN, offset) pairs as varints (``PairList/varints``): 2–4 bytes an event,
            /// so that an hour at 5,000 events/s is tens of megabytes, not gigabytes.
            var pairs: [UInt8]
        }

        var from: UInt64
        var to: UInt64
        var atMillis: Int64
        var placements: [Placement]
        var letters: [UInt64: String]
    }

    struct Partition {
        var listed = RunSet<Int64>()
        var table = ""
        var deadLetterTopic = ""
        var letters: [Int64: String] = [:]
        var erased = RunSet<Int64>()
    }

    struct State {
        /// Per gateway, sorted by `from`.
        var forwarded: [String: [Forwarded]] = [:]
        var partitions: [LedgerBook.Place: Partition] = [:]
        var generation: UInt64 = 0
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter: UInt64 = 0
    }

    private let state = Mutex(State())
    let retentionMillis: Int64
    let clock: @Sendable () -> Int64

    public init(retentionMillis: Int64, clock: @escaping @Sendable () -> Int64) {
        self.retentionMillis = retentionMillis
        self.clock = clock
    }

    public func record(_ record: LedgerRecord) { self.apply([record]) }

    /// Applies `records` and wakes the requests waiting for a level.
    public func apply(_ records: [LedgerRecord]) {
        let now = self.clock()
        let woken: [CheckedContinuation<Void, Never>] = self.state.withLock { state in
            var changed = false
            for record in records {
                switch record {
                case .forwarded(let forwarded):
                    changed = Self.add(forwarded, to: &state) || changed
                case .loaded(let loaded):
                    Self.add(loaded, to: &state)
                    changed = true
                case .accepted, .quarantined:
                    break
                }
            }
            guard changed else { return [] }
            if state.generation % 256 == 0 { Self.forget(before: now - self.retentionMillis, in: &state) }
            state.generation &+= 1
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for continuation in woken { continuation.resume() }
    }

    private static func add(_ record: LedgerRecord.Forwarded, to state: inout State) -> Bool {
        var entry = Forwarded(
            from: record.from,
            to: record.to,
            atMillis: record.atMillis,
            placements: record.placements.map {
                Forwarded.Placement(topic: $0.topic, partition: $0.partition, pairs: $0.pairs.varints)
            },
            letters: [:]
        )
        for letter in record.deadLettered { entry.letters[letter.lsn] = letter.reason }
        var entries = state.forwarded[record.gateway, default: []]
        // The own forwarder's record arrives twice: from the forwarder, then from the topic.
        let index = Self.firstIndex(in: entries, fromAbove: record.from)
        if index > entries.startIndex {
            let before = entries[index - 1]
            if before.from == record.from && before.to == record.to && before.atMillis == record.atMillis {
                return false
            }
        }
        entries.insert(entry, at: index)
        state.forwarded[record.gateway] = entries
        return true
    }

    /// The index of the first entry whose `from` is above `lsn`.
    private static func firstIndex(in entries: [Forwarded], fromAbove lsn: UInt64) -> Int {
        var low = 0
        var high = entries.count
        while low < high {
            let middle = (low + high) / 2
            if entries[middle].from <= lsn { low = middle + 1 } else { high = middle }
        }
        return low
    }

    private static func add(_ record: LedgerRecord.Loaded, to state: inout State) {
        let place = LedgerBook.Place(topic: record.topic, partition: record.partition)
        var partition = state.partitions[place, default: Partition()]
        partition.table = record.table
        partition.deadLetterTopic = record.deadLetterTopic
        for identities in record.rows {
            for pair in identities.pairs { partition.listed.insert(pair.offset) }
        }
        for identities in record.erased {
            for pair in identities.pairs {
                partition.listed.insert(pair.offset)
                partition.erased.insert(pair.offset)
            }
        }
        for letter in record.deadLettered {
            partition.listed.insert(letter.offset)
            partition.letters[letter.offset] = letter.reason
        }
        state.partitions[place] = partition
    }

    private static func forget(before millis: Int64, in state: inout State) {
        for gateway in state.forwarded.keys {
            state.forwarded[gateway]?.removeAll { $0.atMillis < millis }
        }
    }

    /// Where each event `lsns` of `gateway` is.
    public func places(gateway: String, lsns: Range<UInt64>) -> [EventPlace] {
        self.state.withLock { Self.places(gateway: gateway, lsns: lsns, in: $0) }
    }

    private static func places(gateway: String, lsns: Range<UInt64>, in state: State) -> [EventPlace] {
        guard !lsns.isEmpty else { return [] }
        var result = [EventPlace](repeating: .durable, count: lsns.count)
        guard let entries = state.forwarded[gateway] else { return result }
        // Entries start below the range's end; walk back from there past the last one that
        // reaches into it (a pass re-sent after a restart overlaps the one before: a few more).
        var index = Self.firstIndex(in: entries, fromAbove: lsns.upperBound - 1)
        var covering: [Forwarded] = []
        var beyond = 0
        while index > entries.startIndex, beyond < 16 {
            index -= 1
            if entries[index].to > lsns.lowerBound { covering.append(entries[index]) } else { beyond += 1 }
        }
        for entry in covering.reversed() {
            for (lsn, reason) in entry.letters where lsns.contains(lsn) {
                result[Int(lsn - lsns.lowerBound)] = .deadLettered(topic: nil, reason: reason)
            }
            for placement in entry.placements {
                for pair in PairList.decode(varints: placement.pairs) ?? [] where lsns.contains(pair.lsn) {
                    let index = Int(pair.lsn - lsns.lowerBound)
                    let place = Self.place(of: placement, offset: pair.offset, in: state)
                    // A copy further along wins (an event sent twice).
                    if Self.rank(place) >= Self.rank(result[index]) { result[index] = place }
                }
            }
        }
        return result
    }

    /// Where the message at `offset` of `placement`'s partition is.
    private static func place(of placement: Forwarded.Placement, offset: Int64, in state: State) -> EventPlace {
        let (topic, partitionID) = (placement.topic, placement.partition)
        guard let partition = state.partitions[LedgerBook.Place(topic: topic, partition: partitionID)],
            partition.listed.contains(offset)
        else { return .replicated(topic: topic, partition: partitionID, offset: offset) }
        if let reason = partition.letters[offset] {
            return .deadLettered(topic: partition.deadLetterTopic, reason: reason)
        }
        if partition.erased.contains(offset) { return .erased }
        return .queryable(topic: topic, partition: partitionID, offset: offset, table: partition.table)
    }

    private static func rank(_ place: EventPlace) -> Int {
        switch place {
        case .durable: 0
        case .replicated: 1
        case .queryable, .deadLettered, .erased: 2
        }
    }

    /// The level every event of `places` reached, dead letters and erased events aside (they
    /// are final); `.queryable` when none is left.
    public static func reached(_ places: [EventPlace]) -> AckLevel {
        places.compactMap(\.level).min() ?? .queryable
    }

    /// Waits until every event `lsns` of `gateway` reached `level` (or is final), for at most
    /// `timeout`; returns the level reached.
    public func wait(gateway: String, lsns: Range<UInt64>, level: AckLevel, timeout: Duration) async -> AckLevel {
        let deadline = ContinuousClock.now + timeout
        while true {
            let (reached, generation) = self.state.withLock { state in
                (Self.reached(Self.places(gateway: gateway, lsns: lsns, in: state)), state.generation)
            }
            if reached >= level || ContinuousClock.now >= deadline || Task.isCancelled { return reached }
            await self.nextChange(after: generation, deadline: deadline)
        }
    }

    /// Returns at the next applied record after `generation`, or at `deadline`.
    private func nextChange(after generation: UInt64, deadline: ContinuousClock.Instant) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                let id = self.state.withLock { state -> UInt64 in
                    state.nextWaiter &+= 1
                    return state.nextWaiter
                }
                await withTaskCancellationHandler {
                    await withCheckedContinuation { continuation in
                        let resumeNow = self.state.withLock { state -> Bool in
                            // Cancelled before it got here: the cancellation handler found no waiter.
                            guard state.generation == generation, !Task.isCancelled else { return true }
                            state.waiters[id] = continuation
                            return false
                        }
                        if resumeNow { continuation.resume() }
                    }
                } onCancel: {
                    self.state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
                }
            }
            group.addTask { try? await Task.sleep(until: deadline) }
            await group.next()
            group.cancelAll()
        }
    }
}
