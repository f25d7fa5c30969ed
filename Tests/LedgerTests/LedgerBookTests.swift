import Testing

@testable import Ledger

/// The reconciliation: a healthy flow adds up to 0, and a loss is found as exactly its range.
@Suite struct LedgerBookTests {
    /// Gateway `gateway` placed LSNs `lsns` at `offsets` of events/`partition`.
    static func forwarded(
        _ gateway: String,
        lsns: Range<UInt64>,
        partition: Int32,
        firstOffset: Int64,
        letters: [UInt64] = [],
        at millis: Int64 = 0
    ) -> LedgerRecord {
        var pairs = PairList()
        var offset = firstOffset
        for lsn in lsns where !letters.contains(lsn) {
            pairs.append(lsn: lsn, offset: offset)
            offset += 1
        }
        return .forwarded(
            .init(
                gateway: gateway,
                from: lsns.lowerBound,
                to: lsns.upperBound,
                placements: [.init(topic: "events", partition: partition, pairs: pairs)],
                deadLettered: letters.map { .init(lsn: $0, reason: "message too large") },
                atMillis: millis
            )
        )
    }

    /// A loader loaded offsets `offsets` of events/`partition`, which hold LSNs from
    /// `firstLSN` on, as rows (except `letters`, dead letters, by offset).
    static func loaded(
        _ gateway: String,
        partition: Int32,
        offsets: Range<Int64>,
        firstLSN: UInt64,
        letters: [Int64] = [],
        from: Int64? = nil
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
                partition: partition,
                from: from ?? offsets.lowerBound,
                to: offsets.upperBound,
                table: "sluice.events",
                deadLetterTopic: "events.dlq",
                rows: [.init(gateway: gateway, pairs: rows)],
                deadLettered: dead,
                atMillis: 0
            )
        )
    }

    @Test func aHealthyFlowAddsUpToZeroWhateverTheOrderOfItsRecords() {
        let records: [LedgerRecord] = [
            .accepted(.init(gateway: "gw-a", from: 0, to: 120, atMillis: 0)),
            Self.forwarded("gw-a", lsns: 0..<60, partition: 0, firstOffset: 0, letters: [59]),
            Self.forwarded("gw-a", lsns: 60..<100, partition: 1, firstOffset: 0),
            Self.loaded("gw-a", partition: 0, offsets: 0..<30, firstLSN: 0),
            // LSN 59 went to the WAL's dead-letter file; offset 40 to the loader's.
            Self.loaded("gw-a", partition: 0, offsets: 30..<59, firstLSN: 30, letters: [40]),
            Self.loaded("gw-a", partition: 1, offsets: 0..<40, firstLSN: 60),
        ]
        for order in [records, records.reversed()] {
            var book = LedgerBook()
            for record in order { book.apply(record) }
            let result = book.reconcile(nowMillis: 1_000, graceMillis: 0)
            #expect(result.unaccounted == 0)
            #expect(result.inKafka == 0)
            #expect(result.inWAL == ["gw-a": 20])
            #expect(book.gateways["gw-a"]?.placed == 99)
            #expect(book.gateways["gw-a"]?.deadLettered == 1)
            #expect(book.partitions[.init(topic: "events", partition: 0)]?.rows == 58)
            #expect(book.partitions[.init(topic: "events", partition: 0)]?.deadLetters == 1)
            #expect(book.partitions[.init(topic: "events", partition: 0)]?.gaps.isEmpty == true)
        }
    }

    @Test func offsetsTheLoaderSkippedAreFoundAsExactlyTheirLSNs() {
        var book = LedgerBook()
        book.apply(.accepted(.init(gateway: "gw-a", from: 0, to: 100, atMillis: 0)))
        book.apply(Self.forwarded("gw-a", lsns: 0..<100, partition: 0, firstOffset: 500))
        // The loader read 500..<520, then found 520..<535 gone (retention) and went on at 535.
        book.apply(Self.loaded("gw-a", partition: 0, offsets: 500..<520, firstLSN: 0))
        book.apply(Self.loaded("gw-a", partition: 0, offsets: 535..<560, firstLSN: 35))
        let result = book.reconcile(nowMillis: 1_000, graceMillis: 0)
        #expect(result.unaccounted == 15)
        #expect(
            result.missing == [
                .init(
                    gateway: "gw-a",
                    lsns: [20..<35],
                    offsets: [.init(topic: "events", partition: 0): [520..<535]],
                    count: 15
                )
            ]
        )
        // 560..<600 are still on their way.
        #expect(result.inKafka == 40)
        #expect(book.partitions[.init(topic: "events", partition: 0)]?.gaps.runs == [520..<535])
    }

    @Test func unaccountedEventsFoundInClickHouseAreAccountedForAndCounted() {
        var book = LedgerBook()
        book.apply(.accepted(.init(gateway: "gw-a", from: 0, to: 40, atMillis: 0)))
        book.apply(Self.forwarded("gw-a", lsns: 0..<40, partition: 0, firstOffset: 0))
        // The loader committed 0..<40 but published the record of 0..<20 only, then died.
        book.apply(Self.loaded("gw-a", partition: 0, offsets: 0..<20, firstLSN: 0))
        book.apply(Self.loaded("gw-a", partition: 0, offsets: 40..<40, firstLSN: 40, from: 20))
        #expect(book.reconcile(nowMillis: 1_000, graceMillis: 0).unaccounted == 20)
        // `sluice audit --rows` finds 20..<35 in ClickHouse by identity; 35..<40 are not there.
        book.settleFoundInClickHouse(gateway: "gw-a", lsns: Array(20..<35))
        let result = book.reconcile(nowMillis: 1_000, graceMillis: 0)
        #expect(result.unaccounted == 5)
        #expect(result.missing.map(\.lsns) == [[35..<40]])
        #expect(book.foundInClickHouse == 15)
        #expect(book.report(result, topic: "t").contains("found in ClickHouse by identity: 15 events"))
    }

    @Test func aGapInsideOneLoadedRangeIsFoundToo() {
        var book = LedgerBook()
        book.apply(Self.forwarded("gw-a", lsns: 0..<10, partition: 3, firstOffset: 0))
        var pairs = PairList()
        for offset in [0, 1, 2, 6, 7, 8, 9] as [Int64] { pairs.append(lsn: UInt64(offset), offset: offset) }
        book.apply(
            .loaded(
                .init(
                    group: "g",
                    topic: "events",
                    partition: 3,
                    from: 0,
                    to: 10,
                    table: "sluice.events",
                    deadLetterTopic: "events.dlq",
                    rows: [.init(gateway: "gw-a", pairs: pairs)],
                    atMillis: 0
                )
            )
        )
        let result = book.reconcile(nowMillis: 0, graceMillis: 0)
        #expect(result.missing.map(\.lsns) == [[3..<6]])
        #expect(result.missing.first?.description == "gw-a LSN 3..<6 (3 events): events/3 offsets 3..<6")
    }

    @Test func aMissingCopyCountsOnlyAfterTheGraceAndNotWhenAnotherCopyWasLoaded() {
        var book = LedgerBook()
        // Sent twice (a forwarder restart): offsets 0..<10 of partition 0, then 0..<10 of partition 1.
        book.apply(Self.forwarded("gw-a", lsns: 0..<10, partition: 0, firstOffset: 0))
        book.apply(Self.forwarded("gw-a", lsns: 0..<10, partition: 1, firstOffset: 0))
        // Partition 0's loader skipped 5..<10; partition 1 was loaded whole.
        book.apply(Self.loaded("gw-a", partition: 0, offsets: 0..<5, firstLSN: 0))
        book.apply(Self.loaded("gw-a", partition: 0, offsets: 10..<11, firstLSN: 99))
        #expect(book.reconcile(nowMillis: 0, graceMillis: 0).unaccounted == 0)
        #expect(book.reconcile(nowMillis: 0, graceMillis: 0).inKafka == 5)
        book.apply(Self.loaded("gw-a", partition: 1, offsets: 0..<10, firstLSN: 0))
        #expect(
            book.reconcile(nowMillis: 0, graceMillis: 0) == .init(unaccounted: 0, missing: [], inKafka: 0, inWAL: [:])
        )

        // Alone, a missing copy waits out the grace period.
        var alone = LedgerBook()
        alone.apply(Self.forwarded("gw-b", lsns: 0..<4, partition: 0, firstOffset: 0))
        alone.apply(Self.loaded("gw-b", partition: 0, offsets: 2..<4, firstLSN: 2))
        #expect(alone.reconcile(nowMillis: 10_000, graceMillis: 60_000).unaccounted == 0)
        #expect(alone.reconcile(nowMillis: 69_999, graceMillis: 60_000).unaccounted == 0)
        #expect(alone.reconcile(nowMillis: 70_000, graceMillis: 60_000).missing.map(\.lsns) == [[0..<2]])
    }

    @Test func quarantinedAndForwarderDeadLetteredEventsAreAccountedFor() {
        var book = LedgerBook()
        book.apply(Self.forwarded("gw-a", lsns: 0..<5, partition: 0, firstOffset: 0, letters: [4]))
        book.apply(.quarantined(.init(gateway: "gw-a", from: 0, to: 2, reason: "CRC", atMillis: 0)))
        // The loader moved past offsets 0..<4 (LSNs 0..<4) listing only 2 and 3.
        book.apply(Self.loaded("gw-a", partition: 0, offsets: 2..<4, firstLSN: 2, from: 0))
        #expect(book.reconcile(nowMillis: 0, graceMillis: 0).unaccounted == 0)
    }

    @Test func theSinceWindowLeavesOlderPlacementsOut() {
        var book = LedgerBook()
        book.apply(Self.forwarded("gw-a", lsns: 0..<10, partition: 0, firstOffset: 0, at: 100), sinceMillis: 1_000)
        book.apply(Self.forwarded("gw-a", lsns: 10..<20, partition: 0, firstOffset: 10, at: 2_000), sinceMillis: 1_000)
        book.apply(Self.loaded("gw-a", partition: 0, offsets: 15..<20, firstLSN: 15), sinceMillis: 1_000)
        #expect(book.reconcile(nowMillis: 3_000, graceMillis: 0).missing.map(\.lsns) == [[10..<15]])
    }

    @Test func runSetsMergeAndCount() {
        var set = RunSet<Int64>()
        for run in [10..<20, 30..<40, 20..<25, 50..<51, 0..<5, 24..<31] as [Range<Int64>] { set.insert(run) }
        #expect(set.runs == [0..<5, 10..<40, 50..<51])
        #expect(set.count == 36)
        #expect(set.contains(39) && !set.contains(40) && !set.contains(5) && set.contains(0))
        #expect(set.overlapCount(with: RunSet([3..<12, 38..<60])) == 2 + 2 + 2 + 1)
        #expect(RunSet<UInt64>.runs(of: [5, 3, 4, 9, 1]) == [1..<2, 3..<6, 9..<10])
    }
}
