import ClickHouse
import Foundation
import Loader
import LocalClickHouse
import TestSupport
import Testing

/// `sluice erase` as an operator runs it: the report, and a clear error and exit status for
/// each thing that can be wrong (2: input or configuration, 1: ClickHouse; run it again).
@Suite(.serialized, .timeLimit(.minutes(3))) struct EraseCommandTests {
    @Test func eraseReportsWhatItRemovedAndRefusesBadInputClearly() async throws {
        let server = try await ClickHouseServer.start()
        defer { server.stop() }
        let analyst = Analyst(url: server.httpURL)
        let version = try await analyst.client.serverVersion()
        let orders = LoaderRoute(
            topic: "orders",
            table: "shop.orders",
            columns: [
                LoaderColumn("event_id", .string, required: true),
                LoaderColumn("timestamp", .timestamp, required: true),
                LoaderColumn("amount", .float64),
            ]
        )
        for route in [LoaderRoute.events, orders] {
            try await analyst.client.execute("CREATE DATABASE IF NOT EXISTS \(route.table.split(separator: ".")[0])")
            try await analyst.client.execute(route.createTable(on: version))
        }
        var rows = ""
        for n in 0..<30 {
            let user = n % 3 == 0 ? "o'hara@example.org" : "bob"
            rows +=
                #"{"event_id":"e\#(n)","action":"click","user_id":"\#(user)","timestamp":"2026-11-30 10:00:00","received_at":"2026-11-30 10:00:00"}"#
                + "\n"
        }
        try await analyst.client.insert(
            "INSERT INTO sluice.events (event_id, action, user_id, timestamp, received_at) FORMAT JSONEachRow",
            body: Array(rows.utf8)
        )

        let directory = try TemporaryDirectory()
        let keyFile = directory.path + "/erasure.key"
        try Data((String(repeating: "5a", count: 32) + "\n").utf8).write(to: URL(fileURLWithPath: keyFile))
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: keyFile)
        let config = directory.path + "/sluice.yaml"
        try """
        clickhouse:
          url: \(server.httpURL)
        loader:
          erasure:
            key_file: \(keyFile)
          routes:
            events:
              table: sluice.events
            orders:
              table: shop.orders
              columns:
                event_id: {type: string, required: true}
                timestamp: {type: timestamp, required: true}
                amount: {type: float64}
        """.write(toFile: config, atomically: true, encoding: .utf8)

        let erase = try await ChildProcess.runSluice(
            ["erase", "--config", config, "--user-id", "o'hara@example.org", "--settle", "0s"]
        )
        #expect(erase.status == 0, "\(erase.standardError)")
        let lines = erase.standardOutput.split(separator: "\n").map(String.init)
        #expect(lines.first?.hasPrefix("recorded erasure ") == true, "\(lines)")
        #expect(lines.contains("erased 10 row(s) of the user from 2 table(s):"), "\(lines)")
        #expect(lines.contains("  sluice.events: 10 row(s) removed"), "\(lines)")
        #expect(lines.contains("  shop.orders: skipped (no user column)"), "\(lines)")
        #expect(!erase.standardOutput.contains("o'hara"), "the report does not repeat the id")
        #expect(
            try await analyst.number("SELECT count() FROM sluice.events WHERE user_id = 'o\\'hara@example.org'") == 0
        )
        #expect(try await analyst.number("SELECT count() FROM sluice.events") == 20)

        // Again, as JSON: nothing left to remove, and that is no error.
        let again = try await ChildProcess.runSluice(
            ["erase", "--config", config, "--user-id", "o'hara@example.org", "--settle", "0s", "--json"]
        )
        #expect(again.status == 0, "\(again.standardError)")
        #expect(
            again.standardOutput.contains(#""rows_removed":0,"tables":[{"table":"sluice.events","rows_removed":0}"#),
            "\(again.standardOutput)"
        )

        let cases: [([String], Int32, String)] = [
            (["--user-id", ""], 2, "sluice: erase: the user id is empty"),
            (
                ["--user-id", "bob", "--table", "shop.nothing"], 2,
                "sluice: erase: table shop.nothing is not a routed table (routed: sluice.events, shop.orders)"
            ),
            (["--user-id", "bob", "--settle", "soon"], 2, "--settle = 'soon' is invalid"),
            (
                ["--user-id", "bob", "--clickhouse-url", "http://127.0.0.1:\(try freeLoopbackPorts(1)[0])"], 1,
                "cannot reach ClickHouse"
            ),
        ]
        for (arguments, status, message) in cases {
            let run = try await ChildProcess.runSluice(["erase", "--config", config, "--settle", "0s"] + arguments)
            #expect(run.status == status, "\(arguments): \(run.standardError)")
            #expect(run.standardError.contains(message), "\(arguments): \(run.standardError)")
        }
        // Without a key: refused before anything changes.
        let keyless = directory.path + "/keyless.yaml"
        try "clickhouse:\n  url: \(server.httpURL)\n".write(toFile: keyless, atomically: true, encoding: .utf8)
        let noKey = try await ChildProcess.runSluice(["erase", "--config", keyless, "--user-id", "bob"])
        #expect(noKey.status == 2 && noKey.standardError.contains("loader.erasure.key_file"), "\(noKey.standardError)")
        #expect(try await analyst.number("SELECT count() FROM sluice.events WHERE user_id = 'bob'") == 20)
        await analyst.shutdown()
    }
}
