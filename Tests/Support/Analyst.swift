import ClickHouse
import Logging
import SluiceTestKit

/// Queries a ClickHouse server the way an analyst would, over HTTP: what the end-to-end and
/// browser tests assert on.
public struct Analyst: Sendable {
    public let client: ClickHouseClient

    public init(url: String) {
        var logger = Logger(label: "test.clickhouse")
        logger.logLevel = .critical
        self.client = KeptClients.keep(
            ClickHouseClient(ClickHouseConfiguration(url: url, timeout: .seconds(10)), logger: logger)
        )
    }

    public func rows(_ sql: String) async throws -> [String] {
        try await self.client.query(sql + " FORMAT TabSeparated").split(separator: "\n").map(String.init)
    }

    public func number(_ sql: String) async throws -> Int {
        guard let first = try await self.rows(sql).first, let value = Int(first) else {
            throw SluiceProcessError(description: "\(sql) did not return a number")
        }
        return value
    }

    /// The distinct event ids in `table`; empty while the table does not exist.
    public func eventIDs(_ table: String = "sluice.events") async -> Set<String> {
        (try? await Set(self.rows("SELECT DISTINCT event_id FROM \(table)"))) ?? []
    }

    public func shutdown() async { try? await self.client.shutdown() }
}
