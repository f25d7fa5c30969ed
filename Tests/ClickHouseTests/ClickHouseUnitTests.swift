import Logging
import Testing

@testable import ClickHouse

@Suite("ClickHouse values", .timeLimit(.minutes(3)))
struct ClickHouseValueTests {
    @Test func versionsParseAndCompareNumerically() throws {
        let old = try #require(ClickHouseVersion(parsing: "18.16.1\n"))
        #expect(old == ClickHouseVersion(major: 18, minor: 16, patch: 1))
        #expect(old.description == "18.16.1")
        let new = try #require(ClickHouseVersion(parsing: "23.8.2.7"))
        #expect(new.build == 7 && new.description == "23.8.2.7")
        #expect(ClickHouseVersion(parsing: "24.3.1.2672 (official build)")?.build == 2672)
        #expect(old < new)
        #expect(ClickHouseVersion(major: 23, minor: 8, patch: 2) < ClickHouseVersion(major: 23, minor: 10))
        #expect(ClickHouseVersion(major: 23, minor: 9) < ClickHouseVersion(major: 23, minor: 10))
        #expect(ClickHouseVersion(parsing: "18.16") == ClickHouseVersion(major: 18, minor: 16, patch: 0, build: 0))
        for bad in ["", "18", "abc", "18.x.1", "1.2.3.4.5", "18..1", "-1.2.3", "+1.2.3", "١٨.16.1"] {
            #expect(ClickHouseVersion(parsing: bad) == nil, "\(bad)")
        }
    }

    @Test func exceptionTextOf18_16IsParsed() {
        let parsed = ClickHouseError.parseException(
            "Code: 60, e.displayText() = DB::Exception: Table t1.nope doesn't exist., e.what() = DB::Exception\n"
        )
        #expect(parsed.code == 60)
        #expect(parsed.message == "Table t1.nope doesn't exist.")

        // Parse errors put a line break before ", e.what()".
        let multiline = ClickHouseError.parseException(
            """
            Code: 27, e.displayText() = DB::Exception: Cannot parse input: expected " before: abc"}: (while read the value of key n): (at row 1)
            , e.what() = DB::Exception

            """
        )
        #expect(multiline.code == 27)
        #expect(
            multiline.message
                == #"Cannot parse input: expected " before: abc"}: (while read the value of key n): (at row 1)"#
        )
    }

    @Test func exceptionTextOfNewerServersIsParsed() {
        let parsed = ClickHouseError.parseException(
            "Code: 60. DB::Exception: Table default.nope does not exist. (UNKNOWN_TABLE) (version 23.8.2.7 (official build))\n"
        )
        #expect(parsed.code == 60)
        #expect(parsed.message == "Table default.nope does not exist.")
    }

    @Test func textWithoutACodeIsKeptWhole() {
        let parsed = ClickHouseError.parseException("<html><body>502 Bad Gateway</body></html>\n")
        #expect(parsed.code == nil)
        #expect(parsed.message == "<html><body>502 Bad Gateway</body></html>")
        #expect(ClickHouseError.parseException(String(repeating: "x", count: 10_000)).message.count == 4096)
    }

    @Test func errorsAreClassifiedByCodeThenByStatus() {
        func error(_ code: Int?, _ status: Int?, _ kind: ClickHouseError.Kind = .server) -> ClickHouseError {
            ClickHouseError(kind, code: code, httpStatus: status, message: "m")
        }
        // 18.16 answers 500 for rows it cannot parse: the code decides.
        let badRow = error(27, 500)
        #expect(!badRow.isRetriable && badRow.isDataError && badRow.codeName == "CANNOT_PARSE_INPUT_ASSERTION_FAILED")
        #expect(!error(117, 500).isRetriable && error(117, 500).isDataError)
        let missingTable = error(60, 404)
        #expect(!missingTable.isRetriable && !missingTable.isDataError)
        #expect(!error(16, 500).isRetriable && !error(16, 500).isDataError)
        #expect(!error(193, 401).isRetriable && !error(62, 400).isRetriable)
        for transient in [252, 241, 159, 202, 209, 210, 242, 319, 999] {
            #expect(error(transient, 500).isRetriable, "\(transient)")
            #expect(!error(transient, 500).isDataError, "\(transient)")
        }
        // Unknown codes and proxy answers: 5xx, 408 and 429 pass, other 4xx do not.
        #expect(error(9999, 500).isRetriable && !error(9999, 400).isRetriable)
        #expect(error(nil, 503, .httpStatus).isRetriable && error(nil, 429, .httpStatus).isRetriable)
        #expect(!error(nil, 403, .httpStatus).isRetriable)
        #expect(error(nil, nil, .transport).isRetriable && error(nil, nil, .timedOut).isRetriable)
        #expect(!error(nil, nil, .invalidRequest).isRetriable && !error(nil, 200, .invalidResponse).isRetriable)
        #expect("\(missingTable)" == "ClickHouseError(server, code 60 UNKNOWN_TABLE, HTTP 404): m [permanent]")
    }

    @Test func urlParametersArePercentEncoded() {
        #expect(ClickHouseClient.percentEncoded("az-AZ_09.~") == "az-AZ_09.~")
        #expect(ClickHouseClient.percentEncoded("a b&c=d+e/f?g#h%") == "a%20b%26c%3Dd%2Be%2Ff%3Fg%23h%25")
        #expect(ClickHouseClient.percentEncoded("ü\n") == "%C3%BC%0A")
        let url = ClickHouseClient.url(
            base: "http://127.0.0.1:8123",
            path: "/",
            parameters: [("query", "INSERT INTO t FORMAT JSONEachRow"), ("max_threads", "2")]
        )
        #expect(url == "http://127.0.0.1:8123/?query=INSERT%20INTO%20t%20FORMAT%20JSONEachRow&max_threads=2")
        #expect(ClickHouseClient.url(base: "http://h:1/p", path: "/", parameters: []) == "http://h:1/p/")
    }

    @Test func configuredDatabaseAndSettingsBecomeParametersInKeyOrder() async throws {
        let client = ClickHouseClient(
            ClickHouseConfiguration(url: "http://127.0.0.1:1/", database: "events"),
            logger: .init(label: "test")
        )
        let insert = client.parameters(query: "INSERT INTO t FORMAT JSONEachRow", settings: ["b": "2", "a": "1"])
        #expect(insert.map(\.0) == ["query", "database", "a", "b"])
        // A database in the settings wins over the configured one; a `query` setting cannot
        // replace the statement.
        let overridden = client.parameters(query: nil, settings: ["database": "other", "query": "DROP TABLE t"])
        #expect(overridden.map(\.0) == ["database"] && overridden.map(\.1) == ["other"])
        try await client.shutdown()
    }

    @Test func configurationNeverShowsThePassword() {
        let configuration = ClickHouseConfiguration(url: "https://ch:8443", user: "loader", password: "pa55-w0rd-xyz")
        #expect(!"\(configuration)".contains("pa55-w0rd-xyz"))
        #expect(!String(reflecting: configuration).contains("pa55-w0rd-xyz"))
        var dumped = ""
        dump(configuration, to: &dumped)
        #expect(!dumped.contains("pa55-w0rd-xyz") && dumped.contains("loader"))
    }
}
