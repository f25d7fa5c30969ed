import ClickHouse
import Foundation
import Kafka
import LocalClickHouse
import Logging
import ServiceLifecycle
import TestSupport
import Testing

@testable import Loader

/// Route `ttl` and `storage_policy`: the DDL per server version, and on the local 18.16 (which
/// has neither) the fallback for the one and the refusal of the other.
@Suite(.serialized, .timeLimit(.minutes(3))) struct RetentionTests {
    static let v18 = ClickHouseVersion(major: 18, minor: 16, patch: 1)
    static let v19_6 = ClickHouseVersion(major: 19, minor: 6, patch: 2)
    static let v23 = ClickHouseVersion(major: 23, minor: 8, patch: 2)

    @Test func theTTLAndTheStoragePolicyGoIntoTheTableWhereTheServerHasThem() throws {
        var route = LoaderRoute.events
        try route.applyOption("ttl", "400d")
        try route.applyOption("storage_policy", "encrypted")
        #expect(route.ttl == .seconds(400 * 86_400))
        let old = route.createTable(on: Self.v18)
        #expect(!old.contains("TTL") && !old.contains("SETTINGS"))
        #expect(
            route.unsupported(on: Self.v18)?.contains("storage_policy 'encrypted', which needs ClickHouse 19.15.0")
                == true
        )
        #expect(route.createTable(on: Self.v19_6).hasSuffix("TTL toDateTime(`timestamp`) + INTERVAL 400 DAY"))
        #expect(route.unsupported(on: Self.v23) == nil)
        #expect(
            route.createTable(on: Self.v23).hasSuffix(
                "TTL toDateTime(`timestamp`) + INTERVAL 400 DAY\nSETTINGS non_replicated_deduplication_window = 1000, storage_policy = 'encrypted'"
            )
        )
        try route.applyOption("ttl", "36h")
        #expect(route.createTable(on: Self.v23).contains("INTERVAL 129600 SECOND"))
    }

    @Test func badRouteOptionsAreRefusedWithWhatIsExpected() throws {
        var route = LoaderRoute.events
        for bad in ["400", "1.5d", "-3d", "d", "400y"] {
            let error = #expect(throws: LoaderError.self) { try route.applyOption("ttl", bad) }
            #expect(error?.message == "ttl '\(bad)' of route events must be a duration such as 400d or 720h")
        }
        try route.applyOption("ttl", "3h")
        #expect(throws: LoaderError.self) { try route.validate() }
        route.ttl = nil
        try route.applyOption("storage_policy", "no'quotes")
        #expect(throws: LoaderError.self) { try route.validate() }
        route.storagePolicy = nil
        try route.applyOption("user_column", "customer")
        #expect(throws: LoaderError.self) { try route.validate() }
    }

    @Test func monthsWhollyOlderThanTheTTLExpire() {
        // 2026-12-01T00:00:00Z
        let now: Int64 = 1_796_083_200
        let ttl = Duration.seconds(400 * 86_400)  // back to 2025-10-27
        #expect(
            RetentionSweep.expired(
                ["202001", "202509", "202510", "202511", "202612", "bogus", "202613"],
                ttl: ttl,
                nowSeconds: now
            )
                == ["202001", "202509"]
        )
        #expect(RetentionSweep.days(1970, 1, 1) == 0)
        #expect(RetentionSweep.days(2026, 12, 1) * 86_400 == now)
    }

    /// On 18.16 the loader says at start that the TTL falls back, then drops the expired months.
    @Test func withoutTableTTLTheLoaderDropsExpiredMonthsOn1816() async throws {
        var route = LoaderRoute.events
        route.ttl = .seconds(400 * 86_400)
        try await LoadPipeline.with(routes: [route], partitions: 1) { pipeline in
            try await pipeline.clickHouse.execute("CREATE DATABASE IF NOT EXISTS sluice")
            try await pipeline.clickHouse.execute(route.createTable(on: try await pipeline.clickHouse.serverVersion()))
            try await pipeline.clickHouse.execute(
                "INSERT INTO sluice.events (event_id, action, user_id, timestamp, received_at) VALUES "
                    + "('old-1', 'a', 'u', '2020-01-05 00:00:00', now()), ('old-2', 'a', 'u', '2020-02-05 00:00:00', now()), ('new', 'a', 'u', now(), now())"
            )
            let logs = CapturedLogs()
            let loader = Loader(configuration: pipeline.configuration, logger: logs.logger)
            let group = ServiceGroup(services: [loader], logger: quietLogger)
            let task = Task { try await group.run() }
            try await waitUntil(timeout: .seconds(30), pollEvery: .milliseconds(100)) {
                try await pipeline.scalar("SELECT count() FROM sluice.events") == 1
            }
            let left = try await pipeline.clickHouse.query("SELECT event_id FROM sluice.events FORMAT TabSeparated")
            #expect(left == "new\n")
            let warning = try #require(logs.entries.first { $0.message == "loader.ttl_unsupported" })
            #expect(warning.metadata["fallback"]?.description.contains("drops whole months") == true)
            #expect(
                Set(
                    logs.entries.filter { $0.message == "loader.retention_dropped" }.compactMap {
                        $0.metadata["partition"]?.description
                    }
                )
                    == ["202001", "202002"]
            )
            await group.triggerGracefulShutdown()
            try await task.value
        }
    }

    @Test func aStoragePolicyOn1816IsRefusedAtStartNotIgnored() async throws {
        var route = LoaderRoute.events
        route.storagePolicy = "encrypted"
        try await LoadPipeline.with(routes: [route], partitions: 1) { pipeline in
            pipeline.startLoader()
            let refusal = await #expect(throws: LoaderError.self) { try await pipeline.task.value }
            #expect(refusal?.code == .invalidRoute)
            #expect(
                refusal?.message
                    == "route events sets storage_policy 'encrypted', which needs ClickHouse 19.15.0 or later (this server is 18.16.1); remove the option or upgrade the server"
            )
            pipeline.task = nil
            // No table was made without the policy.
            let exists = try await pipeline.clickHouse.query("EXISTS TABLE sluice.events FORMAT TabSeparated")
            #expect(exists == "0\n")
        }
    }
}
