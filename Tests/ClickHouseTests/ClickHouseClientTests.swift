import ClickHouse
import Foundation
import LocalClickHouse
import Logging
import Synchronization
import TestSupport
import Testing

/// The client against a real ClickHouse 18.16 started for each test.
@Suite("ClickHouse client", .serialized, .timeLimit(.minutes(3)))
struct ClickHouseClientTests {
    @Test func detectsTheServerVersionOnceAndRemembersIt() async throws {
        try await withClickHouse { server in
            try await withClient(server) { client in
                #expect(await client.ping())
                let version = try await client.serverVersion()
                #expect(version.major == 18 && version.minor == 16, "\(version)")
                #expect(version >= ClickHouseVersion(major: 18, minor: 16))
                #expect(version < ClickHouseVersion(major: 23, minor: 8))

                try await offPool { server.kill() }
                #expect(await !client.ping())
                await #expect(throws: ClickHouseError.self) { try await client.query("SELECT 1") }
                #expect(try await client.serverVersion() == version)
            }
        }
    }

    @Test func insertsJSONEachRowPlainAndGzipped() async throws {
        try await withClickHouse { server in
            try await withClient(server) { client in
                try await createEventsTable(client)
                try await client.insert("INSERT INTO sluice_test.events FORMAT JSONEachRow", body: rows(0..<4000))
            }
            let logs = CapturedLogs()
            var configuration = ClickHouseConfiguration(url: server.httpURL, database: "sluice_test")
            configuration.compressRequestsAbove = 1024
            try await withClient(configuration, logger: logs.logger) { client in
                try await client.insert("INSERT INTO events FORMAT JSONEachRow", body: rows(4000..<8000))
                // Each row is new (ReplacingMergeTree has nothing to fold), so all of them count.
                let summary = try await client.query(
                    "SELECT count(), uniqExact(event_id), sum(n), min(day) FROM events FORMAT TabSeparated"
                )
                #expect(summary == "8000\t8000\t\((0..<8000).reduce(0, +))\t2024-05-17\n")
            }
            let insert = try #require(
                logs.entries.first { $0.metadata["clickhouse.statement"]?.description.hasPrefix("INSERT") == true }
            )
            let raw = try #require(Int(insert.metadata["clickhouse.request_bytes"]?.description ?? ""))
            let sent = try #require(Int(insert.metadata["clickhouse.sent_bytes"]?.description ?? ""))
            #expect(sent * 4 < raw, "gzip sent \(sent) of \(raw) bytes")
        }
    }

    @Test func rowsTheTableRejectsArePermanentDataErrors() async throws {
        try await withClickHouse { server in
            try await withClient(server) { client in
                try await createEventsTable(client)
                let prefix = "INSERT INTO sluice_test.events FORMAT JSONEachRow"

                var unknownField = rows(0..<100)
                unknownField += Array(#"{"event_id":"x","day":"2024-05-17","n":1,"s":"","color":"red"}"#.utf8) + [10]
                let extra = try await #require(throws: ClickHouseError.self) {
                    try await client.insert(prefix, body: unknownField)
                }
                #expect(extra.code == 117 && extra.codeName == "INCORRECT_DATA", "\(extra)")
                #expect(extra.isDataError && !extra.isRetriable && extra.kind == .server)
                #expect(extra.httpStatus == 500)  // 18.16 answers 500 even for bad input
                #expect(extra.message.contains("Unknown field found while parsing JSONEachRow format: color"))

                let wrongType = try await #require(throws: ClickHouseError.self) {
                    try await client.insert(
                        prefix,
                        body: Array(#"{"event_id":"x","day":"2024-05-17","n":"many","s":""}"#.utf8)
                    )
                }
                #expect(wrongType.code == 27 && wrongType.isDataError && !wrongType.isRetriable, "\(wrongType)")

                let negative = try await #require(throws: ClickHouseError.self) {
                    try await client.insert(
                        prefix,
                        body: Array(#"{"event_id":"x","day":"2024-05-17","n":-1,"s":""}"#.utf8)
                    )
                }
                #expect(negative.code == 72 && negative.isDataError && negative.httpStatus == 400, "\(negative)")

                let unknownColumn = try await #require(throws: ClickHouseError.self) {
                    try await client.insert(
                        "INSERT INTO sluice_test.events (color) FORMAT JSONEachRow",
                        body: Array(#"{"color":"red"}"#.utf8)
                    )
                }
                #expect(unknownColumn.code == 16 && !unknownColumn.isRetriable && !unknownColumn.isDataError)

                // A rejected block is rejected whole: the 100 good rows before the bad one are not in.
                #expect(try await client.query("SELECT count() FROM sluice_test.events") == "0\n")
            }
        }
    }

    @Test func missingTablesAndBadSQLArePermanent() async throws {
        try await withClickHouse { server in
            try await withClient(server) { client in
                let table = try await #require(throws: ClickHouseError.self) {
                    try await client.query("SELECT count() FROM default.nope")
                }
                #expect(table.code == 60 && table.codeName == "UNKNOWN_TABLE" && table.httpStatus == 404)
                #expect(!table.isRetriable && !table.isDataError)
                #expect(table.message == "Table default.nope doesn't exist.")

                let insert = try await #require(throws: ClickHouseError.self) {
                    try await client.insert(
                        "INSERT INTO default.nope FORMAT JSONEachRow",
                        body: Array(#"{"a":1}"#.utf8)
                    )
                }
                #expect(insert.code == 60 && !insert.isRetriable)

                let database = try await #require(throws: ClickHouseError.self) {
                    try await client.execute("CREATE TABLE nodb.t (a UInt8) ENGINE = Memory")
                }
                #expect(database.code == 81 && !database.isRetriable)

                let syntax = try await #require(throws: ClickHouseError.self) { try await client.query("SELEC 1") }
                #expect(syntax.code == 62 && syntax.httpStatus == 400 && !syntax.isRetriable)
                #expect(syntax.message.hasPrefix("Syntax error: failed at position 1"))
            }
        }
    }

    @Test func failuresInsideLargeResultsTimeoutsAndOversizedAnswersAreErrors() async throws {
        try await withClickHouse { server in
            try await withClient(server) { client in
                // Without wait_end_of_query the server would already have sent 200 and rows
                // when the exception strikes, and append its text to the body.
                let late = try await #require(throws: ClickHouseError.self) {
                    _ = try await client.query(
                        "SELECT throwIf(number = 2000000) FROM numbers(3000000)",
                        settings: ["max_block_size": "1000"]
                    )
                }
                #expect(late.code == 395 && late.httpStatus == 500, "\(late)")
            }

            let impatient = ClickHouseConfiguration(url: server.httpURL, timeout: .milliseconds(300))
            try await withClient(impatient) { client in
                let slow = try await #require(throws: ClickHouseError.self) {
                    try await client.query("SELECT sleep(2)")
                }
                #expect(slow.kind == .timedOut && slow.isRetriable && slow.httpStatus == nil, "\(slow)")
            }
            // The size limit with a patient client: under the full suite's load even these
            // small queries took over 300 ms once.
            var limited = ClickHouseConfiguration(url: server.httpURL, timeout: .seconds(30))
            limited.maxResponseBytes = 1000
            try await withClient(limited) { client in
                let large = try await #require(throws: ClickHouseError.self) {
                    try await client.query("SELECT number FROM numbers(10000)")
                }
                #expect(large.kind == .invalidResponse && !large.isRetriable, "\(large)")
                #expect(try await client.query("SELECT 40 + 2") == "42\n")
            }
        }
    }

    @Test func aKilledServerIsRetriableAndKeepsItsDataAcrossRestart() async throws {
        try await withClickHouse { server in
            try await withClient(server) { client in
                try await createEventsTable(client)
                let prefix = "INSERT INTO sluice_test.events FORMAT JSONEachRow"
                try await client.insert(prefix, body: rows(0..<1000))

                let serverPorts = server.reservePorts()  // Nobody else's while it is down.
                defer { withExtendedLifetime(serverPorts) {} }
                try await offPool { server.kill() }
                let down = try await #require(throws: ClickHouseError.self) {
                    try await client.insert(prefix, body: rows(1000..<2000))
                }
                #expect(down.isRetriable && down.httpStatus == nil && down.code == nil && down.kind == .transport)
                #expect(await !client.ping())

                try await server.restart()
                #expect(await client.ping())
                #expect(try await client.query("SELECT count() FROM sluice_test.events") == "1000\n")
                try await client.insert(prefix, body: rows(1000..<2000))
                #expect(try await client.query("SELECT count() FROM sluice_test.events") == "2000\n")
            }
        }
    }

    @Test func passwordsNeverAppearInErrors() async throws {
        let password = "Correct-Horse-9"
        try await withClickHouse(users: ["loader": password]) { server in
            let good = ClickHouseConfiguration(url: server.httpURL, user: "loader", password: password)
            try await withClient(good) { client in
                // 18.16 has no currentUser(); the running query sees itself in system.processes.
                let user = try await client.query("SELECT user FROM system.processes WHERE query LIKE '%who-am-i%'")
                #expect(user == "loader\n")
            }

            let wrongPassword = "Wrong-Staple-7"
            let bad = ClickHouseConfiguration(url: server.httpURL, user: "loader", password: wrongPassword)
            try await withClient(bad) { client in
                let error = try await #require(throws: ClickHouseError.self) { try await client.query("SELECT 1") }
                #expect(error.code == 193 && error.codeName == "WRONG_PASSWORD" && error.httpStatus == 401)
                #expect(!error.isRetriable && !error.isDataError)
                #expect(!"\(error)".contains(wrongPassword) && !String(reflecting: error).contains(wrongPassword))
            }

            let unreachable = try await ClickHouseServer.start()
            let closedURL = unreachable.httpURL
            try await offPool { unreachable.stop() }
            try await withClient(ClickHouseConfiguration(url: closedURL, user: "loader", password: password)) {
                client in
                let error = try await #require(throws: ClickHouseError.self) { try await client.query("SELECT 1") }
                #expect(error.kind == .transport && error.isRetriable)
                #expect(!"\(error)".contains(password) && !String(reflecting: error).contains(password))
            }

            let inURL = "http://loader:\(password)@127.0.0.1:\(server.httpPort)"
            try await withClient(ClickHouseConfiguration(url: inURL)) { client in
                let error = try await #require(throws: ClickHouseError.self) { try await client.query("SELECT 1") }
                #expect(error.kind == .invalidRequest && !"\(error)".contains(password))
            }
        }
    }

    @Test func httpsTrustsOnlyTheConfiguredCA() async throws {
        try await withClickHouse(tls: true) { server in
            let url = try #require(server.httpsURL)
            var trusting = ClickHouseConfiguration(url: url, caFile: server.certificateFile)
            trusting.compressRequestsAbove = 0
            try await withClient(trusting) { client in
                #expect(await client.ping())
                try await client.execute("CREATE TABLE default.t (s String) ENGINE = Memory")
                try await client.insert(
                    "INSERT INTO default.t FORMAT JSONEachRow",
                    body: Array(#"{"s":"over TLS"}"#.utf8)
                )
                let rows = try await client.query("SELECT s FROM default.t")
                #expect(rows == "over TLS\n")
            }

            // The system's CAs do not know a self-signed certificate.
            try await withClient(ClickHouseConfiguration(url: url)) { client in
                #expect(await !client.ping())
                let error = try await #require(throws: ClickHouseError.self) { try await client.query("SELECT 1") }
                #expect(error.kind == .transport && error.httpStatus == nil, "\(error)")
                #expect("\(error)".contains("CERTIFICATE_VERIFY_FAILED"), "\(error)")
            }
        }
    }

    @Test func namesAndSettingsWithURLSpecialCharactersArriveIntact() async throws {
        try await withClickHouse { server in
            try await withClient(server) { client in
                try await client.execute("CREATE DATABASE sluice_test")
                try await client.execute("CREATE TABLE sluice_test.`odd&name=+ü %20` (s String) ENGINE = Memory")
                try await client.insert(
                    "INSERT INTO sluice_test.`odd&name=+ü %20` (s) FORMAT JSONEachRow",
                    body: Array(#"{"s":"a&b=c+d ü"}"#.utf8)
                )
                #expect(try await client.query("SELECT s FROM sluice_test.`odd&name=+ü %20`") == "a&b=c+d ü\n")
                let delimiter = try await client.query(
                    "SELECT value FROM system.settings WHERE name = 'format_csv_delimiter'",
                    settings: ["format_csv_delimiter": "&"]
                )
                #expect(delimiter == "&\n")
            }
        }
    }
}

// MARK: - Helpers

/// Starts a server for `body` and stops it afterwards, off the cooperative pool.
private func withClickHouse(
    users: [String: String] = [:],
    tls: Bool = false,
    _ body: (ClickHouseServer) async throws -> Void
) async throws {
    let server = try await ClickHouseServer.start(users: users, tls: tls)
    do {
        try await body(server)
    } catch {
        Issue.record("server log:\n\(server.logTail())")
        try? await offPool { server.stop() }
        throw error
    }
    try await offPool { server.stop() }
}

private func withClient(_ server: ClickHouseServer, _ body: (ClickHouseClient) async throws -> Void) async throws {
    try await withClient(ClickHouseConfiguration(url: server.httpURL), body)
}

/// Runs `body` with a client and shuts the client down however `body` ends.
private func withClient(
    _ configuration: ClickHouseConfiguration,
    logger: Logger = Logger(label: "clickhouse-test"),
    _ body: (ClickHouseClient) async throws -> Void
) async throws {
    let client = ClickHouseClient(configuration, logger: logger)
    do {
        try await body(client)
    } catch {
        try? await client.shutdown()
        throw error
    }
    try await client.shutdown()
}

private func createEventsTable(_ client: ClickHouseClient) async throws {
    try await client.execute("CREATE DATABASE IF NOT EXISTS sluice_test")
    try await client.execute(
        """
        CREATE TABLE sluice_test.events (event_id String, day Date, n UInt32, s String)
        ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(day) ORDER BY (event_id)
        """
    )
}

/// JSONEachRow rows `{"event_id":"e7","day":"2024-05-17","n":7,"s":"..."}`, one per line.
private func rows(_ range: Range<Int>) -> [UInt8] {
    var text = ""
    for index in range {
        text += #"{"event_id":"e\#(index)","day":"2024-05-17","n":\#(index),"s":"page /catalog/item/\#(index)"}"#
        text += "\n"
    }
    return Array(text.utf8)
}

/// The test harness itself: what the other suites rely on.
@Suite("ClickHouse test server", .serialized, .timeLimit(.minutes(3)))
struct ClickHouseServerTests {
    @Test func twoServersRunSideBySideAndStopPromptly() async throws {
        let first = try await ClickHouseServer.start()
        let second = try await ClickHouseServer.start()
        #expect(Set([first.httpPort, first.tcpPort, second.httpPort, second.tcpPort]).count == 4)

        let started = ContinuousClock.now
        try await offPool { second.stop() }
        // SIGTERM is seen (not blocked) and the exit is noticed while another server runs.
        #expect(ContinuousClock.now - started < .seconds(5))
        #expect(!FileManager.default.fileExists(atPath: second.directory))
        try await offPool { second.stop() }

        try await withClient(first) { client in
            #expect(await client.ping())
        }
        let killed = ContinuousClock.now
        try await offPool { first.kill() }
        // SIGKILL, not the graceful stop: returns once the process is gone. The kernel's
        // teardown of ClickHouse's large mappings took 2.5 s once on a loaded CI machine, so
        // the bound is the graceful stop's above, not a tighter guess.
        #expect(ContinuousClock.now - killed < .seconds(5))
        try await offPool { first.stop() }
        #expect(!FileManager.default.fileExists(atPath: first.directory))
    }
}
