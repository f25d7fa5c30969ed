import Foundation
import Ledger
import Testing

@Suite struct LedgerRecordTests {
    @Test func everyKindSurvivesItsJSON() throws {
        var pairs = PairList()
        pairs.append(lsn: 1_000_000, offset: 7)
        pairs.append(lsn: 999_990, offset: 9)
        pairs.append(lsn: 1_000_003, offset: 8)
        let records: [LedgerRecord] = [
            .accepted(.init(gateway: "gw-1", from: 0, to: 400, atMillis: 1_700_000_000_000)),
            .forwarded(
                .init(
                    gateway: "gw-1",
                    from: 0,
                    to: 400,
                    placements: [.init(topic: "events", partition: 2, pairs: pairs)],
                    deadLettered: [.init(lsn: 5, reason: "message too large")],
                    atMillis: 1
                )
            ),
            .quarantined(.init(gateway: "gw-2", from: 10, to: 12, reason: "payload CRC mismatch", atMillis: 2)),
            .loaded(
                .init(
                    group: "sluice-loader",
                    topic: "events",
                    partition: 2,
                    from: 7,
                    to: 10,
                    table: "sluice.events",
                    deadLetterTopic: "events.dlq",
                    rows: [.init(gateway: "gw-1", pairs: pairs)],
                    deadLettered: [.init(gateway: "gw-1", lsn: 3, offset: 6, reason: "missing action")],
                    erased: [],
                    atMillis: 3
                )
            ),
        ]
        for record in records {
            let parsed = try LedgerRecord.parse(record.json()).get()
            #expect(parsed == record)
        }
        // Sorted by offset, whatever the order they were added in.
        #expect(pairs.map(\.offset) == [7, 8, 9])
        #expect(pairs.map(\.lsn) == [1_000_000, 1_000_003, 999_990])
    }

    @Test func pairsTakeAFewBytesEach() {
        var pairs = PairList()
        for index in 0..<10_000 { pairs.append(lsn: 5_000_000 + UInt64(index) * 3, offset: 90_000 + Int64(index) * 6) }
        // Base64 of two one-byte varints a pair: under 3 bytes, where decimal JSON takes ~17.
        #expect(pairs.encoded.utf8.count < 10_000 * 3)
    }

    @Test func whatIsNotARecordIsAnErrorThatSaysSo() {
        for bytes in [Array("{}".utf8), Array("{\"kind\":\"shipped\",\"record\":{}}".utf8), Array("garbage".utf8)] {
            guard case .failure(let error) = LedgerRecord.parse(bytes) else {
                Issue.record("parsed \(String(decoding: bytes, as: UTF8.self))")
                continue
            }
            #expect(error.description.hasPrefix("not a ledger record"))
        }
        let badPairs = Array(
            #"{"kind":"loaded","record":{"group":"g","topic":"t","partition":0,"from":0,"to":1,"table":"x","deadLetterTopic":"d","rows":[{"gateway":"g","pairs":"gA=="}],"deadLettered":[],"erased":[],"atMillis":0}}"#
                .utf8
        )
        guard case .failure = LedgerRecord.parse(badPairs) else {
            Issue.record("a truncated varint parsed")
            return
        }
    }
}
