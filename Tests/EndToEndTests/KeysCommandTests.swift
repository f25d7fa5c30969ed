import Foundation
import TestSupport
import Testing

/// `sluice keys` as an operator runs it: the key is printed once, everything else is masked,
/// mistakes are one sentence and exit status 1.
@Suite struct KeysCommandTests {
    struct Outcome {
        var status: Int32
        var output: String
        var errors: String
    }

    func sluice(_ arguments: [String], environment: [String: String] = [:]) async throws -> Outcome {
        let process = try SluiceProcess(arguments, environment: environment)
        let status = try await process.waitForExit()
        return Outcome(status: status, output: process.standardOutput, errors: process.standardError)
    }

    /// The one line of `create` or `roll` output that is a key.
    func key(in output: String, prefix: String) -> String? {
        output.split(separator: "\n").map(String.init).first { $0.hasPrefix(prefix) && $0.count == 57 }
    }

    @Test func createListRollRevokeWithAFile() async throws {
        let directory = try TemporaryDirectory()
        let file = directory.path + "/keys.json"

        let created = try await self.sluice([
            "keys", "create", "backend", "--kind", "secret", "--rate", "50/s", "--file", file,
        ])
        #expect(created.status == 0, "\(created.errors)")
        let secret = try #require(self.key(in: created.output, prefix: "slk_live_"))
        #expect(created.output.contains("will not be shown again"))
        #expect(created.output.components(separatedBy: secret).count == 2, "the key is printed exactly once")

        let browser = try await self.sluice([
            "keys", "create", "web-shop", "--kind", "publishable", "--origin", "https://shop.example",
            "--origin", "https://www.shop.example", "--expires", "90d", "--file", file,
        ])
        #expect(browser.status == 0, "\(browser.errors)")
        let publishable = try #require(self.key(in: browser.output, prefix: "slp_live_"))

        let listed = try await self.sluice(["keys", "ls", "--file", file])
        #expect(listed.status == 0, "\(listed.errors)")
        #expect(listed.output.contains("ID") && listed.output.contains("LAST_USED"))
        #expect(listed.output.contains("backend") && listed.output.contains("web-shop"))
        #expect(listed.output.contains("https://shop.example,https://www.shop.example"))
        let masked = "slk_live_\(secret.dropFirst(9).prefix(10))…\(secret.suffix(4))"
        #expect(listed.output.contains(masked), "S2: masked as prefix, id and last four")
        for key in [secret, publishable] {
            #expect(!listed.output.contains(key))
            #expect(!listed.output.contains(key.dropFirst(19).prefix(32)))
        }
        #expect(!(try String(contentsOfFile: file, encoding: .utf8)).contains(secret))

        let rolled = try await self.sluice(["keys", "roll", "backend", "--grace", "1h", "--file", file])
        #expect(rolled.status == 0, "\(rolled.errors)")
        let newSecret = try #require(self.key(in: rolled.output, prefix: "slk_live_"))
        #expect(newSecret != secret)
        let afterRoll = try await self.sluice(["keys", "ls", "--json", "--file", file])
        let rows = try #require(
            try JSONSerialization.jsonObject(with: Data(afterRoll.output.utf8)) as? [[String: Any]]
        )
        #expect(rows.compactMap { $0["state"] as? String }.sorted() == ["active", "active", "rolled"])

        let revoked = try await self.sluice(["keys", "revoke", "backend", "--file", file])
        #expect(revoked.status == 0, "\(revoked.errors)")
        #expect(revoked.output.contains("Revoked backend"))
        let afterRevoke = try await self.sluice(["keys", "ls", "--file", file])
        #expect(afterRevoke.output.split(separator: "\n").filter { $0.contains("revoked") }.count == 2)
    }

    @Test func mistakesAreOneSentenceAndExitStatusOne() async throws {
        let directory = try TemporaryDirectory()
        let file = directory.path + "/keys.json"
        let first = try await self.sluice(["keys", "create", "web", "--kind", "secret", "--file", file])
        #expect(first.status == 0, "\(first.errors)")
        let cases: [([String], String)] = [
            (["keys", "create", "web", "--kind", "secret"], "a key named web already exists"),
            (["keys", "revoke", "nobody"], "no key is named nobody"),
            (["keys", "roll", "nobody"], "no key is named nobody"),
            (
                ["keys", "create", "shop", "--kind", "publishable", "--origin", "shop.example"],
                "'shop.example' is not an origin"
            ),
            (["keys", "create", "shop", "--kind", "publishable"], "a publishable key needs at least one --origin"),
            (["keys", "create", "tmp", "--kind", "secret", "--expires", "90x"], "--expires '90x' is not a duration"),
            (["keys", "roll", "web", "--grace", "soon"], "--grace 'soon' is not a duration"),
            (["keys", "create", "tmp", "--kind", "secret", "--rate", "fast"], "--rate 'fast' is not a rate"),
            (["keys", "create", "tmp", "--kind", "admin"], "--kind must be secret or publishable"),
        ]
        for (arguments, message) in cases {
            let outcome = try await self.sluice(arguments + ["--file", file])
            #expect(outcome.status == 1, "\(arguments)")
            #expect(outcome.errors.contains("sluice: \(message)"), "\(arguments): \(outcome.errors)")
            #expect(!outcome.output.contains("slk_") && !outcome.output.contains("slp_"))
        }
        let noStore = try await self.sluice(["keys", "ls"])
        #expect(noStore.status == 1)
        #expect(noStore.errors.contains("no key store"))
    }

    @Test func theStoreComesFromTheConfigurationAndItsPasswordIsNeverPrinted() async throws {
        let directory = try TemporaryDirectory()
        let file = directory.path + "/keys.json"
        let configuration = directory.path + "/sluice.yaml"
        try "auth:\n  api_keys:\n    file: \(file)\n".write(toFile: configuration, atomically: true, encoding: .utf8)
        let created = try await self.sluice([
            "keys", "create", "backend", "--kind", "secret", "--config", configuration,
        ])
        #expect(created.status == 0, "\(created.errors)")
        #expect(FileManager.default.fileExists(atPath: file))
        let listed = try await self.sluice(["keys", "ls", "--config", configuration])
        #expect(listed.output.contains("backend"))

        let url = "postgres://sluice:hunter2-secret-pw@127.0.0.1:1/keys?sslmode=disable"
        let check = try await self.sluice(
            ["config", "check"],
            environment: ["SLUICE_AUTH_API_KEYS_POSTGRES_URL": url]
        )
        #expect(check.output.contains("auth.api_keys.postgres_url = (secret)"), "\(check.output)\(check.errors)")
        #expect(!(check.output + check.errors).contains("hunter2-secret-pw"))
        let unreachable = try await self.sluice(["keys", "ls", "--postgres", url])
        #expect(unreachable.status == 1)
        #expect(unreachable.errors.contains("cannot connect to PostgreSQL at postgres://sluice:***@127.0.0.1:1/keys"))
        #expect(!(unreachable.output + unreachable.errors).contains("hunter2-secret-pw"))
    }
}
