import ClickHouse
import Foundation
import Loader
import LocalClickHouse
import Logging
import TestSupport
import Testing

/// Holds the running gateway to docs/openapi.yaml with schemathesis: every documented
/// operation, generated and mutated inputs, response codes, content types and schemas.
///
/// `positive_data_acceptance` is left out on purpose: the timestamp window and the
/// properties size depend on the request time and configuration, which a schema cannot
/// state, so schema-valid data is legitimately refused sometimes.
@Suite(.serialized, .timeLimit(.minutes(5))) struct OpenAPITests {
    @Test func theServerMatchesItsOpenAPIDescription() async throws {
        let st = try #require(ChildProcess.find("st"), "schemathesis (st) is not installed; scripts/setup installs it")
        let directory = try TemporaryDirectory()
        // A generous acknowledgement deadline: this test is about conformance, and on a machine
        // busy with the other tests a 150 ms deadline can turn a valid request into a 503.
        // With credentials, as clients use it: a secret key from `sluice keys create`.
        let keys = directory.path + "/keys.json"
        let create = try SluiceProcess([
            "keys", "create", "schemathesis", "--kind", "secret", "--scope", "events:write", "--scope", "stats:read",
            "--file", keys,
        ])
        #expect(try await create.waitForExit() == 0, "\(create.standardError)")
        let key = try #require(
            create.standardOutput.split(whereSeparator: \.isWhitespace).first { $0.hasPrefix("slk_") }
        )
        // The stats API answers from a real ClickHouse holding the events table and its
        // rollups, as the loader makes them.
        let clickHouse = try await ClickHouseServer.start()
        defer { clickHouse.stop() }
        let client = ClickHouseClient(ClickHouseConfiguration(url: clickHouse.httpURL), logger: Logger(label: "test"))
        let version = try await client.serverVersion()
        try await client.execute("CREATE DATABASE IF NOT EXISTS sluice")
        try await client.execute(LoaderRoute.events.createTable(on: version))
        for rollup in Clickstream(table: "sluice.events").rollups() {
            try await client.execute(rollup.createTable)
            try await client.execute(rollup.createView)
        }
        try await client.shutdown()
        let gateway = try await GatewayProcess(
            walDirectory: directory.path + "/wal",
            arguments: ["--log-level", "warning"],
            environment: [
                "SLUICE_GATEWAY_APPEND_TIMEOUT": "10s", "SLUICE_AUTH_REQUIRED": "true",
                "SLUICE_AUTH_API_KEYS_FILE": keys, "SLUICE_ANALYTICS_ENABLED": "true",
                "SLUICE_CLICKHOUSE_URL": clickHouse.httpURL,
            ]
        )
        defer { gateway.signal(SIGTERM) }
        let root = repositoryRoot()
        let run = try await ChildProcess.run(
            st,
            [
                "run", root.appendingPathComponent("docs/openapi.yaml").path, "--url", gateway.url,
                "--header", "Authorization: Bearer \(key)",
                "--max-examples", "25", "--seed", "1", "--checks", "all",
                "--exclude-checks", "positive_data_acceptance", "--no-color",
            ],
            currentDirectory: directory.path,
            errorsToOutput: true,
            timeout: .seconds(240)
        )
        let output = run.standardOutput
        let failures =
            output.range(of: "FAILURES").map { String(output[$0.lowerBound...].prefix(4000)) }
            ?? String(output.suffix(4000))
        let gatewayLog = gateway.standardOutput.split(separator: "\n").filter { !$0.contains("\"request\"") }.suffix(20)
        #expect(
            run.status == 0,
            "schemathesis found problems:\n\(failures)\ngateway log:\n\(gatewayLog.joined(separator: "\n"))"
        )
        #expect(output.contains("passed"))
    }
}
