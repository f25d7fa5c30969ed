import Foundation

/// One fact of the conservation ledger: what a hop took and what it handed on, by identity.
///
/// An event's identity is the gateway that accepted it and its WAL LSN (`gateway`, `lsn`):
/// every Kafka message carries both (headers `gateway_id`, `wal_lsn`), and both reach the
/// ClickHouse row. The hops publish, to the ledger topic (`ledger.topic`, default
/// `sluice.ledger`), one Kafka message per record, JSON, keyed by its ``LedgerRecord/key``
/// (a gateway's records stay in order, and a partition's):
///
/// - ``Accepted``: a gateway's WAL holds (fsync'd) the events of an LSN range. The forwarder
///   publishes it as it reads the records, before it sends them.
/// - ``Forwarded``: the forwarder's delivery reports for an LSN range the cursor moved over:
///   where in Kafka each event is (topic, partition, offset), and the events Kafka refused for
///   good (in the WAL's dead-letter file, with the reason).
/// - ``Quarantined``: an LSN range the WAL found damaged and set aside (never forwarded).
/// - ``Loaded``: a loader committed a partition's offsets `[from, to)` after ClickHouse
///   confirmed the insert: which events (identities) are rows of which table, which went to
///   the dead-letter topic (and why), which were erased.
///
/// An identity may be in several `Forwarded` records (sent again after a forwarder restart, from
/// its persisted cursor): it is then in Kafka at each of those places, and accounted for when
/// any of them is loaded.
///
/// Records are facts, published after the fact (a `Forwarded` after the delivery reports, a
/// `Loaded` after the commit), and best-effort: a lost record makes the ledger report a range
/// as unaccounted until a later record or `sluice audit` settles it; it never holds back data.
public enum LedgerRecord: Sendable, Equatable {
    case accepted(Accepted)
    case forwarded(Forwarded)
    case quarantined(Quarantined)
    case loaded(Loaded)

    /// The Kafka message key: the gateway for the gateway's records, `topic/partition` for
    /// a loader's.
    public var key: String {
        switch self {
        case .accepted(let record): record.gateway
        case .forwarded(let record): record.gateway
        case .quarantined(let record): record.gateway
        case .loaded(let record): "\(record.topic)/\(record.partition)"
        }
    }

    /// When the record was made (unix milliseconds).
    public var atMillis: Int64 {
        switch self {
        case .accepted(let record): record.atMillis
        case .forwarded(let record): record.atMillis
        case .quarantined(let record): record.atMillis
        case .loaded(let record): record.atMillis
        }
    }

    /// A gateway's WAL holds events `[from, to)`.
    public struct Accepted: Sendable, Equatable, Codable {
        public var gateway: String
        public var from: UInt64
        public var to: UInt64
        public var atMillis: Int64

        public init(gateway: String, from: UInt64, to: UInt64, atMillis: Int64) {
            self.gateway = gateway
            self.from = from
            self.to = to
            self.atMillis = atMillis
        }
    }

    /// Where the events `[from, to)` of a gateway went: each one is in ``placements`` (in
    /// Kafka) or in ``deadLettered`` (refused by Kafka for good, kept in the WAL's dead-letter
    /// file). LSNs of the range in neither were not events (a gap between segments).
    public struct Forwarded: Sendable, Equatable, Codable {
        public var gateway: String
        public var from: UInt64
        public var to: UInt64
        public var placements: [Placement]
        public var deadLettered: [Letter]
        public var atMillis: Int64

        public init(
            gateway: String,
            from: UInt64,
            to: UInt64,
            placements: [Placement],
            deadLettered: [Letter] = [],
            atMillis: Int64
        ) {
            self.gateway = gateway
            self.from = from
            self.to = to
            self.placements = placements
            self.deadLettered = deadLettered
            self.atMillis = atMillis
        }
    }

    /// A damaged WAL range `[from, to)`: accepted once, never forwarded.
    public struct Quarantined: Sendable, Equatable, Codable {
        public var gateway: String
        public var from: UInt64
        public var to: UInt64
        public var reason: String
        public var atMillis: Int64

        public init(gateway: String, from: UInt64, to: UInt64, reason: String, atMillis: Int64) {
            self.gateway = gateway
            self.from = from
            self.to = to
            self.reason = reason
            self.atMillis = atMillis
        }
    }

    /// A loader's commit of `topic`/`partition` offsets `[from, to)`, made after ClickHouse
    /// confirmed the insert into `table`. Every message of the range is in exactly one of
    /// ``rows`` (a row of `table`), ``deadLettered`` (sent to `deadLetterTopic`) or ``erased``
    /// (its user was erased: no row); an offset in none was not in Kafka any more when the
    /// loader read (a gap the ledger reports).
    public struct Loaded: Sendable, Equatable, Codable {
        public var group: String
        public var topic: String
        public var partition: Int32
        public var from: Int64
        public var to: Int64
        public var table: String
        public var deadLetterTopic: String
        public var rows: [Identities]
        public var deadLettered: [LoadLetter]
        public var erased: [Identities]
        public var atMillis: Int64

        public init(
            group: String,
            topic: String,
            partition: Int32,
            from: Int64,
            to: Int64,
            table: String,
            deadLetterTopic: String,
            rows: [Identities],
            deadLettered: [LoadLetter] = [],
            erased: [Identities] = [],
            atMillis: Int64
        ) {
            self.group = group
            self.topic = topic
            self.partition = partition
            self.from = from
            self.to = to
            self.table = table
            self.deadLetterTopic = deadLetterTopic
            self.rows = rows
            self.deadLettered = deadLettered
            self.erased = erased
            self.atMillis = atMillis
        }
    }

    /// Events of one gateway at Kafka offsets of one partition: pairs (LSN, offset), in
    /// ascending offset order.
    public struct Placement: Sendable, Equatable, Codable {
        public var topic: String
        public var partition: Int32
        public var pairs: PairList

        public init(topic: String, partition: Int32, pairs: PairList) {
            self.topic = topic
            self.partition = partition
            self.pairs = pairs
        }
    }

    /// Messages of one partition that came from one gateway: pairs (LSN, offset). A message
    /// without `gateway_id` and `wal_lsn` headers (not the forwarder's) is listed under the
    /// gateway `""` with LSN 0.
    public struct Identities: Sendable, Equatable, Codable {
        public var gateway: String
        public var pairs: PairList

        public init(gateway: String, pairs: PairList) {
            self.gateway = gateway
            self.pairs = pairs
        }
    }

    /// An event the forwarder could not put in Kafka for good.
    public struct Letter: Sendable, Equatable, Codable {
        public var lsn: UInt64
        public var reason: String

        public init(lsn: UInt64, reason: String) {
            self.lsn = lsn
            self.reason = reason
        }
    }

    /// A message the loader sent to the dead-letter topic.
    public struct LoadLetter: Sendable, Equatable, Codable {
        public var gateway: String
        public var lsn: UInt64
        public var offset: Int64
        public var reason: String

        public init(gateway: String, lsn: UInt64, offset: Int64, reason: String) {
            self.gateway = gateway
            self.lsn = lsn
            self.offset = offset
            self.reason = reason
        }
    }
}

/// (LSN, offset) pairs, sorted by offset, stored compactly: in JSON a base64 string of
/// zig-zag varint deltas (LSN delta, offset delta), about 2–4 bytes a pair where a list of
/// numbers would take 20.
public struct PairList: Sendable, Equatable, Codable, RandomAccessCollection {
    public struct Pair: Sendable, Equatable, Hashable {
        public var lsn: UInt64
        public var offset: Int64

        public init(lsn: UInt64, offset: Int64) {
            self.lsn = lsn
            self.offset = offset
        }
    }

    public private(set) var pairs: [Pair]

    public init(_ pairs: [Pair] = []) { self.pairs = pairs.sorted { $0.offset < $1.offset } }

    public var startIndex: Int { self.pairs.startIndex }
    public var endIndex: Int { self.pairs.endIndex }
    public subscript(position: Int) -> Pair { self.pairs[position] }

    public mutating func append(lsn: UInt64, offset: Int64) {
        let pair = Pair(lsn: lsn, offset: offset)
        if let last = self.pairs.last, last.offset > offset {
            var low = 0
            var high = self.pairs.count
            while low < high {
                let middle = (low + high) / 2
                if self.pairs[middle].offset <= offset { low = middle + 1 } else { high = middle }
            }
            self.pairs.insert(pair, at: low)
        } else {
            self.pairs.append(pair)
        }
    }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let pairs = Self.decode(text) else {
            throw DecodingError.dataCorrupted(
                DecodingError.Context(codingPath: decoder.codingPath, debugDescription: "not a pair list")
            )
        }
        self.pairs = pairs
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(self.encoded)
    }

    /// The base64 text.
    public var encoded: String { Data(self.varints).base64EncodedString() }

    /// The pairs as zig-zag varint deltas (what ``encoded`` holds in base64): 2–4 bytes a pair.
    var varints: [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(self.pairs.count * 4)
        var lsn: UInt64 = 0
        var offset: Int64 = 0
        for pair in self.pairs {
            Self.appendVarint(Self.zigzag(Int64(bitPattern: pair.lsn &- lsn)), to: &bytes)
            Self.appendVarint(Self.zigzag(pair.offset &- offset), to: &bytes)
            lsn = pair.lsn
            offset = pair.offset
        }
        return bytes
    }

    static func decode(_ text: String) -> [Pair]? {
        guard let data = Data(base64Encoded: text) else { return nil }
        return Self.decode(varints: [UInt8](data))
    }

    static func decode(varints bytes: [UInt8]) -> [Pair]? {
        var pairs: [Pair] = []
        var index = 0
        var lsn: UInt64 = 0
        var offset: Int64 = 0
        while index < bytes.count {
            guard let lsnDelta = Self.readVarint(bytes, &index), let offsetDelta = Self.readVarint(bytes, &index) else {
                return nil
            }
            lsn = lsn &+ UInt64(bitPattern: Self.unzigzag(lsnDelta))
            offset = offset &+ Self.unzigzag(offsetDelta)
            pairs.append(Pair(lsn: lsn, offset: offset))
        }
        return pairs
    }

    static func zigzag(_ value: Int64) -> UInt64 { UInt64(bitPattern: (value << 1) ^ (value >> 63)) }
    static func unzigzag(_ value: UInt64) -> Int64 { Int64(bitPattern: value >> 1) ^ -Int64(bitPattern: value & 1) }

    static func appendVarint(_ value: UInt64, to bytes: inout [UInt8]) {
        var value = value
        while value >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        bytes.append(UInt8(value))
    }

    static func readVarint(_ bytes: [UInt8], _ index: inout Int) -> UInt64? {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while index < bytes.count, shift < 64 {
            let byte = bytes[index]
            index += 1
            value |= UInt64(byte & 0x7f) << shift
            if byte < 0x80 { return value }
            shift += 7
        }
        return nil
    }
}

extension LedgerRecord {
    private enum Kind: String, Codable {
        case accepted, forwarded, quarantined, loaded
    }

    private struct Envelope<Body: Codable>: Codable {
        var kind: Kind
        var record: Body
    }

    private struct KindOnly: Codable {
        var kind: Kind
    }

    /// The record as the JSON of its Kafka message: `{"kind":"loaded","record":{…}}`.
    public func json() -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding these plain structs cannot fail.
        let data: Data? =
            switch self {
            case .accepted(let record): try? encoder.encode(Envelope(kind: .accepted, record: record))
            case .forwarded(let record): try? encoder.encode(Envelope(kind: .forwarded, record: record))
            case .quarantined(let record): try? encoder.encode(Envelope(kind: .quarantined, record: record))
            case .loaded(let record): try? encoder.encode(Envelope(kind: .loaded, record: record))
            }
        return [UInt8](data ?? Data())
    }

    /// A ledger message's record; nil (with why) for what is not one.
    public static func parse(_ bytes: [UInt8]) -> Result<LedgerRecord, LedgerParseError> {
        let decoder = JSONDecoder()
        let data = Data(bytes)
        do {
            switch try decoder.decode(KindOnly.self, from: data).kind {
            case .accepted: return .success(.accepted(try decoder.decode(Envelope<Accepted>.self, from: data).record))
            case .forwarded:
                return .success(.forwarded(try decoder.decode(Envelope<Forwarded>.self, from: data).record))
            case .quarantined:
                return .success(.quarantined(try decoder.decode(Envelope<Quarantined>.self, from: data).record))
            case .loaded: return .success(.loaded(try decoder.decode(Envelope<Loaded>.self, from: data).record))
            }
        } catch {
            return .failure(LedgerParseError(description: "not a ledger record: \(error)"))
        }
    }
}

public struct LedgerParseError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
}
