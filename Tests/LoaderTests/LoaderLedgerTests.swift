import Ledger
import Testing

@testable import Kafka
@testable import Loader

@Suite struct LoaderLedgerTests {
    static func message(
        _ partition: Int32,
        _ offset: Int64,
        gateway: String? = "gw-1",
        lsn: UInt64? = nil
    ) -> ConsumedMessage {
        var headers: [(name: String, value: [UInt8])] = []
        if let gateway { headers.append(("gateway_id", Array(gateway.utf8))) }
        if let lsn { headers.append(("wal_lsn", Array(String(lsn).utf8))) }
        return ConsumedMessage(
            topic: "events",
            partition: partition,
            offset: offset,
            key: nil,
            value: Array("{}".utf8),
            headers: headers,
            timestampMillis: -1
        )
    }

    /// Rows for the messages at `rowPositions` of `messages`.
    static func rows(_ messages: [ConsumedMessage], _ rowPositions: [Int]) -> EncodedRows {
        var rows = EncodedRows()
        for position in rowPositions { rows.appended(source: position, receivedAtMillis: nil) }
        rows.source = messages[...]
        return rows
    }

    @Test func aCommitRecordsEachPartitionsRowsDeadLettersAndErasures() throws {
        var ledger = LoaderLedger(group: "g")
        let messages = [
            Self.message(0, 10, lsn: 100), Self.message(1, 5, lsn: 101), Self.message(0, 11, lsn: 102),
            Self.message(0, 12, lsn: 103), Self.message(1, 6, gateway: nil, lsn: nil),
        ]
        // 102 is erased (no row); 103 is rejected and dead-lettered.
        ledger.encoded(7, route: .events, rows: Self.rows(messages, [0, 1, 3, 4]))
        ledger.deadLettered(7, [DeadLetter(message: messages[3], reason: "Cannot parse input")])
        let records = ledger.committed(
            7,
            offsets: [TopicPartition("events", 0): 13, TopicPartition("events", 1): 7],
            atMillis: 42
        )
        #expect(records.count == 2)
        guard case .loaded(let zero) = records[0], case .loaded(let one) = records[1] else {
            Issue.record("not loaded records: \(records)")
            return
        }
        #expect(zero.partition == 0 && zero.from == 10 && zero.to == 13)
        #expect(zero.table == "sluice.events" && zero.deadLetterTopic == "events.dlq" && zero.group == "g")
        #expect(zero.rows == [.init(gateway: "gw-1", pairs: PairList([.init(lsn: 100, offset: 10)]))])
        #expect(zero.erased == [.init(gateway: "gw-1", pairs: PairList([.init(lsn: 102, offset: 11)]))])
        #expect(zero.deadLettered == [.init(gateway: "gw-1", lsn: 103, offset: 12, reason: "Cannot parse input")])
        #expect(one.partition == 1 && one.from == 5 && one.to == 7)
        // A message that is not the forwarder's is listed under gateway "" with LSN 0.
        #expect(
            one.rows == [
                .init(gateway: "", pairs: PairList([.init(lsn: 0, offset: 6)])),
                .init(gateway: "gw-1", pairs: PairList([.init(lsn: 101, offset: 5)])),
            ]
        )
        #expect(ledger.committed(7, offsets: [TopicPartition("events", 0): 13], atMillis: 43).isEmpty)
    }

    @Test func onlyCommittedPartitionsAreRecordedAndOlderBatchesAreForgotten() {
        var ledger = LoaderLedger(group: "g")
        let old = [Self.message(2, 1, lsn: 1)]
        let new = [Self.message(0, 3, lsn: 2), Self.message(1, 4, lsn: 3)]
        ledger.encoded(1, route: .events, rows: Self.rows(old, [0]))
        ledger.encoded(2, route: .events, rows: Self.rows(new, [0, 1]))
        // Partition 1 was revoked before the commit: only partition 0 is committed.
        let records = ledger.committed(2, offsets: [TopicPartition("events", 0): 4], atMillis: 0)
        #expect(records.count == 1)
        if case .loaded(let record) = records.first { #expect(record.partition == 0 && record.to == 4) }
        // Batch 1 never committed (its partition moved): forgotten, its messages are the next owner's.
        #expect(ledger.committed(1, offsets: [TopicPartition("events", 2): 2], atMillis: 0).isEmpty)
    }
}
