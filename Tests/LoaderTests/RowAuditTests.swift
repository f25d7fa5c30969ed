import ClickHouse
import EventModel
import Kafka
import Ledger
import TestSupport
import Testing

@testable import Loader

/// `sluice audit --rows` against ClickHouse 18.16 and the mock Kafka: rows the loader
/// confirmed that the table no longer holds are told apart — folded into another copy of the
/// same event, erased, or missing — and the missing ones are named exactly.
@Suite(.serialized, .timeLimit(.minutes(4))) struct RowAuditTests {
    static let gateway = "gw-test"

    @Test func missingRowsAreNamedExactlyAndFoldedOrErasedOnesAreNot() async throws {
        try await LoadPipeline.with(partitions: 1) { pipeline in
            // 40 events with the forwarder's headers (LSN 1000 + n at offset n), and at offset 40
            // a client's retry of event 5, accepted again under LSN 1040.
            let sends: [(n: Int, lsn: UInt64)] = (0..<40).map { ($0, UInt64(1000 + $0)) } + [(5, 1040)]
            let before = pipeline.delivered.value
            for (offset, send) in sends.enumerated() {
                let (n, lsn) = send
                try pipeline.producer.send(
                    topic: "events",
                    key: Array("user-\(n % 11)".utf8),
                    value: Self.event(n),
                    headers: [
                        ("wal_lsn", Array(String(lsn).utf8)), ("event_id", Array(Self.eventID(n).utf8)),
                        ("gateway_id", Array(Self.gateway.utf8)),
                    ],
                    id: UInt64(offset)
                )
            }
            try await waitUntil(timeout: .seconds(30)) { pipeline.delivered.value == before + sends.count }
            pipeline.startLoader()
            try await waitUntil(timeout: .seconds(60)) {
                (try? await pipeline.scalar("SELECT count() FROM sluice.events")) == 41
            }
            try await pipeline.stopLoader()
            // The loader wrote each row's LSN from its header.
            #expect(
                try await pipeline.scalar("SELECT uniqExact(wal_lsn) FROM sluice.events WHERE wal_lsn >= 1000") == 41
            )

            // ReplacingMergeTree folds the retry into one row; `sluice erase` deletes user-3's
            // rows (offsets 3, 14, 25, 36); and rows 15..<25 are deleted by hand — the loss.
            try await pipeline.clickHouse.execute("OPTIMIZE TABLE sluice.events FINAL")
            try await pipeline.clickHouse.execute("ALTER TABLE sluice.events DELETE WHERE `user_id` = 'user-3'")
            try await pipeline.clickHouse.execute(
                "ALTER TABLE sluice.events DELETE WHERE wal_lsn >= 1015 AND wal_lsn < 1025"
            )
            try await waitUntil(timeout: .seconds(30)) {
                (try? await pipeline.scalar("SELECT count() FROM system.mutations WHERE is_done = 0")) == 0
            }
            #expect(try await pipeline.scalar("SELECT count() FROM sluice.events") == 41 - 1 - 4 - 10)

            // What the ledger says the loader confirmed, and one row Kafka no longer holds.
            let place = LedgerBook.Place(topic: "events", partition: 0)
            var rows = sends.enumerated().map { offset, send in
                LedgerBook.ConfirmedRow(lsn: send.lsn, place: place, offset: Int64(offset))
            }
            rows.append(LedgerBook.ConfirmedRow(lsn: 2000, place: place, offset: 500))
            let audit = RowAudit(
                clickHouse: pipeline.clickHouse,
                kafkaProperties: ["bootstrap.servers": pipeline.cluster.bootstrapServers, "log_level": "0"],
                routes: [.events]
            )
            let checks = try await audit.check(["sluice.events": [Self.gateway: rows]])
            let check = try #require(checks.first)
            #expect(check.confirmed == 42)
            #expect(check.present == 26)
            #expect(check.folded == 1)
            #expect(check.erased == 4)
            #expect(check.missingCount == 11)
            #expect(check.unchecked == 1)
            #expect(
                check.missing.map(\.description) == [
                    "gw-test LSN 1015..<1025, 2000 (11 events): events/0 offsets 15..<25, 500"
                ]
            )
            let report = RowAudit.report(checks)
            #expect(report.contains("MISSING FROM CLICKHOUSE: 11 rows"), "\(report)")
            #expect(report.contains("(1 of them are no longer in Kafka either"), "\(report)")

            // Of events the ledger cannot account for, those the table holds by identity.
            let found = try await audit.rowsAmong(
                [
                    LedgerBook.Missing(
                        gateway: Self.gateway,
                        lsns: [1010..<1020, 3000..<3001],
                        offsets: [place: [10..<20]],
                        count: 11
                    )
                ],
                tables: ["sluice.events"]
            )
            // 1014 is user-3's (erased), 1015..<1020 were deleted, 3000 never existed.
            #expect(found == [Self.gateway: [1010, 1011, 1012, 1013]])

            // A table without the identity columns (a custom route) is named, not checked, and
            // not taken for a loss; the unaccounted-events lookup passes over it.
            try await pipeline.clickHouse.execute("CREATE TABLE sluice.other (x UInt8) ENGINE = MergeTree ORDER BY x")
            let other = try await audit.check(["sluice.other": [Self.gateway: Array(rows[0..<3])]])
            #expect(other.first?.notChecked?.contains("no `gateway_id` and `wal_lsn` columns") == true, "\(other)")
            #expect(other.first?.missingCount == 0 && other.first?.confirmed == 3)
            #expect(RowAudit.report(other).contains("sluice.other: confirmed 3 rows · not checked: "))
            let foundElsewhere = try await audit.rowsAmong(
                [LedgerBook.Missing(gateway: Self.gateway, lsns: [1010..<1012], offsets: [:], count: 2)],
                tables: ["sluice.other", "sluice.events"]
            )
            #expect(foundElsewhere == [Self.gateway: [1010, 1011]])

            // Rows the table still holds all of report nothing missing.
            let whole = try await audit.check(["sluice.events": [Self.gateway: Array(rows[26..<36])]])
            #expect(whole.first?.missingCount == 0 && whole.first?.present == 10, "\(whole)")
            #expect(RowAudit.report(whole).contains("missing from ClickHouse: 0 rows"))
        }
    }

    @Test func theCountingQueryComparesBucketsOfLSNs() {
        let width = RowAudit.bucketWidth
        let lsns = RunSet<UInt64>([3..<10, (width - 2)..<(width + 3), (5 * width)..<(5 * width + 1)])
        #expect(RowAudit.bucketCounts(lsns) == [0: 9, 1: 3, 5: 1])
        #expect(RowAudit.parseCounts("0\t9\n1\t2\nbad\n") == [0: 9, 1: 2])
        // Few runs: the count covers exactly the expected LSNs.
        let query = RowAudit.countQuery(route: .events, gateway: "gw'a", runs: lsns.runs)
        #expect(query.contains("`gateway_id` = 'gw\\'a'"), "\(query)")
        #expect(query.contains("(`wal_lsn` >= 3 AND `wal_lsn` < 10) OR (`wal_lsn` >= 4094"), "\(query)")
        // Many: their span.
        let many = (0..<UInt64(RowAudit.exactRuns + 1)).map { ($0 * 2)..<($0 * 2 + 1) }
        let spanQuery = RowAudit.countQuery(route: .events, gateway: "g", runs: many)
        #expect(spanQuery.contains("(`wal_lsn` >= 0 AND `wal_lsn` < 401)"), "\(spanQuery)")
    }

    static func eventID(_ n: Int) -> String { "evt-\(n)" }

    /// Event `n`, with an id of its own that a second call repeats (a client's retry).
    static func event(_ n: Int) -> [UInt8] {
        Event(
            eventID: Self.eventID(n),
            action: "click",
            userID: "user-\(n % 11)",
            timestampMillis: 1_795_342_530_000 + Int64(n),
            page: "https://shop.example/p/\(n % 5)",
            object: "button-\(n % 7)",
            referrer: nil,
            sessionID: "s-\(n % 13)",
            properties: .object([])
        ).normalizedJSON(
            origin: RequestOrigin(
                receivedAtMillis: Timestamp.nowMillis(),
                clientIP: "203.0.113.9",
                userAgent: "test",
                gatewayID: Self.gateway
            )
        )
    }
}
