import ClickHouse
import EventModel
import TestSupport
import Testing

@testable import Loader

/// An install upgraded from a Sluice whose events had no anonymous id, send time or user-agent
/// classification: its `sluice.events` table lacks those columns. The loader adds them and
/// keeps loading in RowBinary; the rows already there keep their values.
@Suite(.timeLimit(.minutes(3))) struct LoaderColumnMigrationTests {
    @Test func aTableMadeByAnOlderSluiceGetsTheNewColumnsAndKeepsLoading() async throws {
        try await LoadPipeline.with { pipeline in
            try await pipeline.clickHouse.execute("CREATE DATABASE IF NOT EXISTS sluice")
            try await pipeline.clickHouse.execute(
                """
                CREATE TABLE sluice.events (event_id String, action String, user_id String,
                  timestamp DateTime('UTC'), received_at DateTime('UTC'), page String, object String,
                  referrer String, session_id String, properties String, client_ip String, user_agent String,
                  gateway_id String, source String, schema_version UInt64)
                ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(timestamp) ORDER BY (action, event_id)
                """
            )
            try await pipeline.clickHouse.execute(
                "INSERT INTO sluice.events (event_id, action, user_id, timestamp, received_at) VALUES ('old-1', 'click', 'u-old', now(), now())"
            )
            pipeline.startLoader()
            var origin = RequestOrigin(
                receivedAtMillis: Timestamp.nowMillis(),
                clientIP: nil,
                userAgent: "Googlebot/2.1",
                gatewayID: "gw"
            )
            origin.browser = "Googlebot"
            origin.device = "bot"
            origin.isBot = true
            let anonymous = Event(
                eventID: UUIDText.v7(millis: origin.receivedAtMillis),
                action: "view",
                userID: nil,
                anonymousID: "visitor-1",
                timestampMillis: origin.receivedAtMillis - 1000,
                sentAtMillis: origin.receivedAtMillis,
                object: "banner"
            )
            try await pipeline.send([anonymous.normalizedJSON(origin: origin), eventJSON(1)])
            try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(200)) {
                await pipeline.distinctIDs() == 3
            }
            #expect(pipeline.loader.insertFormats == ["events": .rowBinary])
            let row = try await pipeline.clickHouse.query(
                "SELECT user_id, anonymous_id, browser, device, is_bot, toUnixTimestamp(sent_at) FROM sluice.events WHERE action = 'view' FORMAT TabSeparated"
            )
            #expect(row == "\tvisitor-1\tGooglebot\tbot\t1\t\(origin.receivedAtMillis / 1000)\n")
            let old = try await pipeline.clickHouse.query(
                "SELECT user_id, anonymous_id, is_bot FROM sluice.events WHERE event_id = 'old-1' FORMAT TabSeparated"
            )
            #expect(old == "u-old\t\t0\n", "the rows already there keep their values")
            let columns = try await pipeline.clickHouse.query(
                "SELECT name FROM system.columns WHERE database = 'sluice' AND table = 'events' FORMAT TabSeparated"
            )
            #expect(Set(columns.split(separator: "\n").map(String.init)) == Set(LoaderRoute.events.columns.map(\.name)))
        }
    }
}
