import Kafka
import Ledger

/// What the loader tells the conservation ledger (docs/ledger.md): after each successful
/// commit, per partition, the offsets it moved over and what became of each message — a row
/// of the route's table, a dead letter (with the reason), or nothing (its user was erased).
/// Pure bookkeeping in the loader's event loop.
struct LoaderLedger {
    struct Message {
        var offset: Int64
        var gateway: String
        var lsn: UInt64
        var isRow: Bool
    }

    struct Batch {
        var table: String
        var deadLetterTopic: String
        var messages: [TopicPartition: [Message]] = [:]
        /// Acknowledged dead letters: reason by partition and offset.
        var letters: [TopicPartition: [Int64: String]] = [:]
    }

    let group: String
    private var batches: [UInt64: Batch] = [:]

    init(group: String) { self.group = group }

    /// The identity a message carries: the `gateway_id` and `wal_lsn` headers the forwarder
    /// sets; `""` and 0 for a message that has neither (not the forwarder's).
    static func identity(of message: ConsumedMessage) -> (gateway: String, lsn: UInt64) {
        var gateway = ""
        var lsn: UInt64 = 0
        for header in message.headers {
            if header.name == "gateway_id" {
                gateway = String(decoding: header.value, as: UTF8.self)
            } else if header.name == "wal_lsn" {
                lsn = UInt64(String(decoding: header.value, as: UTF8.self)) ?? 0
            }
        }
        return (gateway, lsn)
    }

    /// Batch `id` of `route` was encoded into `rows` (whose source is the batch's messages).
    mutating func encoded(_ id: UInt64, route: LoaderRoute, rows: EncodedRows) {
        var batch = Batch(table: route.table, deadLetterTopic: route.deadLetterTopic)
        var isRow = [Bool](repeating: false, count: rows.source.count)
        for source in rows.sources { isRow[source] = true }
        for (position, message) in rows.source.enumerated() {
            let (gateway, lsn) = Self.identity(of: message)
            batch.messages[message.topicPartition, default: []].append(
                Message(offset: message.offset, gateway: gateway, lsn: lsn, isRow: isRow[position])
            )
        }
        self.batches[id] = batch
    }

    /// Dead letters of batch `id` that Kafka acknowledged.
    mutating func deadLettered(_ id: UInt64, _ letters: [DeadLetter]) {
        guard !letters.isEmpty, self.batches[id] != nil else { return }
        for letter in letters {
            self.batches[id]?.letters[letter.message.topicPartition, default: [:]][letter.message.offset] =
                letter.reason
        }
    }

    /// Batch `id`'s commit of `offsets` succeeded: its records, one per partition. Batches cut
    /// before it that never committed (their partitions moved to another loader) are
    /// forgotten: their messages are the next owner's to record.
    mutating func committed(_ id: UInt64, offsets: [TopicPartition: Int64], atMillis: Int64) -> [LedgerRecord] {
        for stale in self.batches.keys where stale < id { self.batches[stale] = nil }
        guard let batch = self.batches.removeValue(forKey: id) else { return [] }
        var records: [LedgerRecord] = []
        for (partition, next) in offsets.sorted(by: { $0.key < $1.key }) {
            guard let messages = batch.messages[partition], let first = messages.first else { continue }
            let letters = batch.letters[partition] ?? [:]
            var rows: [String: PairList] = [:]
            var erased: [String: PairList] = [:]
            var dead: [LedgerRecord.LoadLetter] = []
            for message in messages where message.offset < next {
                if let reason = letters[message.offset] {
                    dead.append(
                        .init(gateway: message.gateway, lsn: message.lsn, offset: message.offset, reason: reason)
                    )
                } else if message.isRow {
                    rows[message.gateway, default: PairList()].append(lsn: message.lsn, offset: message.offset)
                } else {
                    erased[message.gateway, default: PairList()].append(lsn: message.lsn, offset: message.offset)
                }
            }
            records.append(
                .loaded(
                    .init(
                        group: self.group,
                        topic: partition.topic,
                        partition: partition.partition,
                        from: first.offset,
                        to: next,
                        table: batch.table,
                        deadLetterTopic: batch.deadLetterTopic,
                        rows: rows.sorted { $0.key < $1.key }.map { .init(gateway: $0.key, pairs: $0.value) },
                        deadLettered: dead,
                        erased: erased.sorted { $0.key < $1.key }.map { .init(gateway: $0.key, pairs: $0.value) },
                        atMillis: atMillis
                    )
                )
            )
        }
        return records
    }
}
