import ClickHouse
import Testing

@testable import Loader

@Suite struct RouteTests {
    static let old = ClickHouseVersion(major: 18, minor: 16, patch: 1)
    static let new = ClickHouseVersion(major: 24, minor: 3, patch: 1)

    @Test func eventsBecomeRowsWithTimesEachServerParses() throws {
        let event = Array(
            #"{"event_id":"e1","action":"click","user_id":"u\"1","timestamp":"2026-11-22T10:15:30.250Z","received_at":"2026-11-22T10:15:31.000Z","properties":{"a":[1,2]},"gateway_id":"gw","schema_version":1}"#
                .utf8
        )
        let oldRow = try RowEncoder(route: .events, version: Self.old).encode(event)
        let text = String(decoding: oldRow.line, as: UTF8.self)
        #expect(
            text.hasPrefix(#"{"event_id":"e1","action":"click","user_id":"u\"1","timestamp":"2026-11-22 10:15:30","#)
        )
        #expect(text.contains(#""properties":"{\"a\":[1,2]}""#))
        #expect(text.contains(#""page":"""#))
        #expect(text.hasSuffix("\"schema_version\":1}\n"))
        #expect(oldRow.receivedAtMillis == 1_795_342_531_000)
        let newRow = try RowEncoder(route: .events, version: Self.new).encode(event)
        #expect(String(decoding: newRow.line, as: UTF8.self).contains(#""timestamp":"2026-11-22 10:15:30.250""#))
    }

    @Test func invalidMessagesSayWhy() {
        let encoder = RowEncoder(route: .events, version: Self.old)
        func reason(_ text: String) -> String? {
            do {
                _ = try encoder.encode(Array(text.utf8))
                return nil
            } catch {
                return error.description
            }
        }
        #expect(reason("not json")?.hasPrefix("not JSON") == true)
        #expect(reason("[1]") == "not a JSON object but a array")
        #expect(
            reason(
                #"{"event_id":"e","action":"a","timestamp":"2026-11-22T10:15:30Z","received_at":"2026-11-22T10:15:30Z"}"#
            ) == "missing required field 'user_id'"
        )
        #expect(
            reason(
                #"{"event_id":"e","action":"a","user_id":"u","timestamp":"yesterday","received_at":"2026-11-22T10:15:30Z"}"#
            )?.contains("not a time") == true
        )
        #expect(
            reason(
                #"{"event_id":"e","action":"a","user_id":"u","timestamp":1795342530000,"received_at":"2026-11-22T10:15:30Z","schema_version":"x"}"#
            )?.contains("does not fit uint64") == true
        )
    }

    @Test func tablesAreCreatedWithWhatTheServerHas() {
        let old = LoaderRoute.events.createTable(on: Self.old)
        #expect(old.contains("`timestamp` DateTime('UTC')"))
        #expect(old.contains("ENGINE = ReplacingMergeTree()"))
        #expect(old.contains("ORDER BY (`action`, `event_id`)"))
        #expect(!old.contains("SETTINGS"))
        let new = LoaderRoute.events.createTable(on: Self.new)
        #expect(new.contains("`timestamp` DateTime64(3, 'UTC')"))
        #expect(new.contains("non_replicated_deduplication_window"))
    }

    @Test func badRoutesAreRefusedWithAReason() {
        var route = LoaderRoute.events
        #expect(route.validate() == nil)
        route.table = "events"
        #expect(route.validate()?.contains("database.table") == true)
        route = .events
        route.timeColumn = "page"
        #expect(route.validate()?.contains("time column") == true)
        route = .events
        route.orderBy = ["action"]
        #expect(route.validate()?.contains("dedup column") == true)
        route = .events
        route.table = "sluice.x; DROP TABLE y"
        #expect(route.validate() != nil)
    }
}
