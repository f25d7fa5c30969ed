import Ledger
import Synchronization
import Testing

/// What a gateway answers for a receipt, from the ledger's records, and how a request waits
/// for its ack level.
@Suite struct ReceiptBookTests {
    static func book(now: Int64 = 1_000_000) -> ReceiptBook {
        ReceiptBook(retentionMillis: 3_600_000, clock: { now })
    }

    static func forwarded(
        _ gateway: String,
        lsns: Range<UInt64>,
        offsets: Int64,
        letters: [UInt64] = [],
        at millis: Int64 = 1_000_000
    )
        -> LedgerRecord
    {
        var pairs = PairList()
        var offset = offsets
        for lsn in lsns where !letters.contains(lsn) {
            pairs.append(lsn: lsn, offset: offset)
            offset += 1
        }
        return .forwarded(
            .init(
                gateway: gateway,
                from: lsns.lowerBound,
                to: lsns.upperBound,
                placements: [.init(topic: "events", partition: 1, pairs: pairs)],
                deadLettered: letters.map { .init(lsn: $0, reason: "message too large") },
                atMillis: millis
            )
        )
    }

    static func loaded(
        _ gateway: String,
        offsets: Range<Int64>,
        firstLSN: UInt64,
        letters: [Int64] = []
    ) -> LedgerRecord {
        var rows = PairList()
        var dead: [LedgerRecord.LoadLetter] = []
        for offset in offsets {
            let lsn = firstLSN + UInt64(offset - offsets.lowerBound)
            if letters.contains(offset) {
                dead.append(.init(gateway: gateway, lsn: lsn, offset: offset, reason: "missing action"))
            } else {
                rows.append(lsn: lsn, offset: offset)
            }
        }
        return .loaded(
            .init(
                group: "sluice-loader",
                topic: "events",
                partition: 1,
                from: offsets.lowerBound,
                to: offsets.upperBound,
                table: "sluice.events",
                deadLetterTopic: "events.dlq",
                rows: [.init(gateway: gateway, pairs: rows)],
                deadLettered: dead,
                atMillis: 0
            )
        )
    }

    @Test func eachEventIsWhereTheLedgerLastSawIt() {
        let book = Self.book()
        #expect(book.places(gateway: "gw-a", lsns: 10..<12) == [.durable, .durable])
        book.record(Self.forwarded("gw-a", lsns: 10..<14, offsets: 100, letters: [13]))
        #expect(
            book.places(gateway: "gw-a", lsns: 10..<14) == [
                .replicated(topic: "events", partition: 1, offset: 100),
                .replicated(topic: "events", partition: 1, offset: 101),
                .replicated(topic: "events", partition: 1, offset: 102),
                .deadLettered(topic: nil, reason: "message too large"),
            ]
        )
        #expect(ReceiptBook.reached(book.places(gateway: "gw-a", lsns: 10..<14)) == .replicated)
        book.apply([Self.loaded("gw-a", offsets: 100..<103, firstLSN: 10, letters: [101])])
        let places = book.places(gateway: "gw-a", lsns: 10..<14)
        #expect(
            places == [
                .queryable(topic: "events", partition: 1, offset: 100, table: "sluice.events"),
                .deadLettered(topic: "events.dlq", reason: "missing action"),
                .queryable(topic: "events", partition: 1, offset: 102, table: "sluice.events"),
                .deadLettered(topic: nil, reason: "message too large"),
            ]
        )
        #expect(ReceiptBook.reached(places) == .queryable)
        // Another gateway's LSNs are its own.
        #expect(book.places(gateway: "gw-b", lsns: 10..<11) == [.durable])
    }

    @Test func aCopySentAgainAfterARestartCountsWhereItGotFurthest() {
        let book = Self.book()
        book.record(Self.forwarded("gw-a", lsns: 0..<4, offsets: 0))
        book.record(Self.forwarded("gw-a", lsns: 2..<6, offsets: 4))
        // The same record again, from the topic: kept once.
        book.apply([Self.forwarded("gw-a", lsns: 2..<6, offsets: 4)])
        book.apply([Self.loaded("gw-a", offsets: 0..<4, firstLSN: 0)])
        #expect(
            book.places(gateway: "gw-a", lsns: 0..<6).map(\.level) == [
                .queryable, .queryable, .queryable, .queryable, .replicated, .replicated,
            ]
        )
    }

    @Test func aWaitEndsWhenTheLevelIsReachedOrAtItsDeadline() async {
        let book = Self.book()
        let started = ContinuousClock.now
        // Nothing comes: the deadline, with the level reached so far.
        #expect(
            await book.wait(gateway: "gw-a", lsns: 0..<2, level: .replicated, timeout: .milliseconds(200)) == .durable
        )
        #expect(ContinuousClock.now - started >= .milliseconds(200))

        let waiting = Task { await book.wait(gateway: "gw-a", lsns: 0..<2, level: .queryable, timeout: .seconds(30)) }
        book.record(Self.forwarded("gw-a", lsns: 0..<2, offsets: 0))
        book.apply([Self.loaded("gw-a", offsets: 0..<2, firstLSN: 0)])
        let before = ContinuousClock.now
        #expect(await waiting.value == .queryable)
        #expect(ContinuousClock.now - before < .seconds(10))
        // Reached already: no wait at all.
        #expect(await book.wait(gateway: "gw-a", lsns: 0..<2, level: .queryable, timeout: .zero) == .queryable)
    }

    @Test func recordsOlderThanTheRetentionAreForgotten() {
        let now = Mutex<Int64>(10_000_000)
        let book = ReceiptBook(retentionMillis: 60_000, clock: { now.withLock { $0 } })
        book.record(Self.forwarded("gw-a", lsns: 0..<1, offsets: 0, at: 9_000_000))
        // Forgetting runs with the records that follow.
        for lsn in 1..<300 as Range<UInt64> {
            book.record(Self.forwarded("gw-a", lsns: lsn..<(lsn + 1), offsets: Int64(lsn), at: 10_000_000))
        }
        #expect(book.places(gateway: "gw-a", lsns: 0..<1) == [.durable])
        #expect(
            book.places(gateway: "gw-a", lsns: 299..<300) == [.replicated(topic: "events", partition: 1, offset: 299)]
        )
    }
}
