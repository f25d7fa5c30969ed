import Foundation
import TestSupport
import Testing

/// The configuration as an operator meets it: `sluice config check`, the example file, the
/// documentation, and the errors.
@Suite struct ConfigurationTests {
    /// Runs `sluice arguments…` to completion: its exit status and its output, both streams.
    func run(
        _ arguments: [String],
        environment: [String: String] = [:]
    ) async throws -> (
        status: Int32, output: String
    ) {
        let process = try SluiceProcess(arguments, environment: environment)
        let status = try await process.waitForExit()
        return (status, process.standardOutput + process.standardError)
    }

    func writeFile(_ text: String, in directory: TemporaryDirectory) throws -> String {
        let path = directory.path + "/sluice.yaml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func theExampleFileIsValid() async throws {
        let example = repositoryRoot().appendingPathComponent("sluice.example.yaml").path
        let (status, output) = try await self.run(["config", "check", "--config", example])
        #expect(status == 0, "\(output)")
        #expect(output.contains("ok: the configuration is valid"))
        #expect(output.contains("route events → sluice.events"))
    }

    @Test func theDocumentedKeysAreTheBinarysKeys() async throws {
        let (status, table) = try await self.run(["config", "keys", "--markdown"])
        #expect(status == 0)
        let documentation = try String(
            contentsOf: repositoryRoot().appendingPathComponent("docs/configuration.md"),
            encoding: .utf8
        )
        #expect(
            documentation.contains(table),
            "docs/configuration.md is out of date: paste `sluice config keys --markdown`"
        )
        let example = try String(
            contentsOf: repositoryRoot().appendingPathComponent("sluice.example.yaml"),
            encoding: .utf8
        )
        // Every section of the example has the key's last part somewhere, commented or not.
        for line in table.split(separator: "\n").dropFirst(2) {
            let key = line.split(separator: "`")[1]
            let name = key.split(separator: ".").last.map(String.init) ?? ""
            #expect(name == "*" || example.contains(name + ":"), "sluice.example.yaml does not mention \(key)")
        }
    }

    /// The front door's lists of mappings: issuers, policies, per-principal limits.
    @Test func issuersPoliciesAndLimitsAreCheckedAndNamedWhenWrong() async throws {
        let directory = try TemporaryDirectory()
        let good = try self.writeFile(
            """
            auth:
              oauth:
                issuers:
                  - issuer: https://idp.example.com/realms/ingest
                    discovery: true
                    audiences: [https://ingest.example.com]
                    accepted_typ: [at+jwt, JWT]
              policy:
                - principal: key:web-shop
                  allow_actions: [page_view, click]
                  max_batch: 100
            rate_limits:
              principals:
                - principal: client:backend
                  rate: 5000/s
            """,
            in: directory
        )
        let (status, output) = try await self.run(["config", "check", "--config", good])
        #expect(status == 0, "\(output)")

        let cases: [(String, String)] = [
            (
                "auth:\n  oauth:\n    issuers:\n      - issuer: https://idp.example.com\n        jwks_uri: https://idp.example.com/jwks\n        audiences: [x]\n        algorithms: [HS256]\n",
                "HS256 is not allowed"
            ),
            (
                "auth:\n  oauth:\n    issuers:\n      - issuer: https://idp.example.com\n        jwks_url: https://idp.example.com/jwks\n",
                "auth.oauth.issuers[0].jwks_url is unknown"
            ),
            ("auth:\n  policy:\n    - allow_actions: [click]\n", "auth.policy[0] needs a principal"),
            ("rate_limits:\n  default:\n    rate: fast\n", "rate_limits.default.rate = 'fast' is invalid"),
        ]
        for (yaml, message) in cases {
            let file = try self.writeFile(yaml, in: directory)
            let (status, output) = try await self.run(["config", "check", "--config", file])
            #expect(status == 2, "\(yaml)")
            #expect(output.contains(message), "\(output)")
        }
    }

    @Test func anUnknownKeyIsRefusedWithTheClosestKnownOne() async throws {
        let directory = try TemporaryDirectory()
        let file = try self.writeFile("gateway:\n  listen: 127.0.0.1:8080\n  max_body_byte: 100\n", in: directory)
        let (status, output) = try await self.run(["config", "check", "--config", file])
        #expect(status == 2)
        #expect(
            output.contains("sluice.yaml:3: unknown key gateway.max_body_byte (did you mean gateway.max_body_bytes?)")
        )
    }

    @Test func aBadValueNamesTheKeyTheValueAndWhatIsExpected() async throws {
        let directory = try TemporaryDirectory()
        for (yaml, expected) in [
            ("loader:\n  batch_age: soon\n", "loader.batch_age = 'soon' is invalid: expected a duration"),
            ("wal:\n  soft_watermark: 3\n", "wal.soft_watermark = '3' is invalid: expected a number in 0.01...1.0"),
            (
                "clickhouse:\n  url: 127.0.0.1:8123\n",
                "clickhouse.url = '127.0.0.1:8123' is invalid: expected an http://"
            ),
            (
                "loader:\n  routes:\n    events:\n      table: events\n",
                "table 'events' must be database.table"
            ),
        ] {
            let (status, output) = try await self.run([
                "config", "check", "--config", try self.writeFile(yaml, in: directory),
            ])
            #expect(status == 2, "\(yaml)")
            #expect(output.contains(expected), "\(output)")
        }
    }

    @Test func theEnvironmentOverridesTheFileAndUnknownVariablesAreRefused() async throws {
        let directory = try TemporaryDirectory()
        let file = try self.writeFile("loader:\n  batch_age: 1s\n", in: directory)
        let (status, output) = try await self.run(
            ["config", "check", "--config", file],
            environment: [
                "SLUICE_LOADER_BATCH_AGE": "250ms", "SLUICE_CLICKHOUSE_PASSWORD": "hunter2",
                "SLUICE_KAFKA_PROPERTIES_SASL_PASSWORD": "swordfish",
            ]
        )
        #expect(status == 0, "\(output)")
        #expect(output.contains("loader.batch_age = 250ms\t(environment SLUICE_LOADER_BATCH_AGE)"))
        #expect(output.contains("kafka.properties.sasl.password = (secret)"))
        #expect(output.contains("clickhouse.password = (secret)"))
        #expect(!output.contains("hunter2") && !output.contains("swordfish"))

        let (refused, message) = try await self.run(
            ["config", "check"],
            environment: ["SLUICE_LOADER_BATCH_AEG": "1s"]
        )
        #expect(refused == 2)
        #expect(message.contains("environment SLUICE_LOADER_BATCH_AEG is not a Sluice setting"))

        // The development credentials `sluice dev` writes for `source` are not settings, and a
        // shell that sourced them (the README tour) still runs every command.
        let (sourced, sourcedOutput) = try await self.run(
            ["config", "check"],
            environment: [
                "SLUICE_URL": "https://127.0.0.1:8080", "SLUICE_KEY": "slk_test_x", "SLUICE_CLIENT_ID": "dev",
            ]
        )
        #expect(sourced == 0, "\(sourcedOutput)")
    }

    @Test func propertiesThatWouldWeakenTheDeliveryGuaranteeAreRefused() async throws {
        let directory = try TemporaryDirectory()
        let file = try self.writeFile("kafka:\n  properties:\n    enable.idempotence: false\n", in: directory)
        let (status, output) = try await self.run(["config", "check", "--config", file])
        #expect(status == 2)
        #expect(output.contains("kafka.properties.enable.idempotence = 'false' is refused"))
        let (fromEnvironment, _) = try await self.run(
            ["config", "check"],
            environment: ["SLUICE_KAFKA_PROPERTIES_ACKS": "1"]
        )
        #expect(fromEnvironment == 2)
    }
}
