import Encryption
import Foundation
import Testing

@testable import WAL

/// The `sluice wal` commands as an operator runs them: the real binary, real directories.
@Suite(.timeLimit(.minutes(2))) struct CLITests {
    /// A WAL with a few segments and one cursor still in the first segment (so nothing is
    /// deleted), closed.
    static func populated() async throws -> TemporaryDirectory {
        let directory = try TemporaryDirectory()
        let wal = try await WAL.openAndStart(testConfiguration(directory.path), logger: quietLogger)
        _ = try await wal.openCursor("forwarder")
        for index in 0..<30 {
            _ = try await wal.append([Array("{\"n\":\(index),\"pad\":\"\(String(repeating: "x", count: 4000))\"}".utf8)]
            )
        }
        try await wal.commitCursor("forwarder", to: LSN(3))
        await wal.close()
        return directory
    }

    @Test func verifyExitsZeroWhenCleanOneOnDamageAndTwoWhenUnusable() async throws {
        let directory = try await Self.populated()
        let clean = try await ChildProcess.runSluice(["wal", "verify", directory.path])
        #expect(clean.status == 0)
        #expect(clean.standardOutput.contains("clean:"))

        let sealed = try #require(try WALInspector(directory: directory.path).segments().first)
        try flipByte(in: directory.path + "/" + sealed.name, at: sealed.dataEnd - 100)
        let damaged = try await ChildProcess.runSluice(["wal", "verify", directory.path])
        #expect(damaged.status == 1)
        #expect(damaged.standardOutput.contains("DAMAGE \(sealed.name)"))
        #expect(damaged.standardOutput.contains("lost LSN"))

        let json = try await ChildProcess.runSluice(["wal", "verify", directory.path, "--json"])
        #expect(json.status == 1)
        let report = try JSONSerialization.jsonObject(with: Data(json.standardOutput.utf8)) as? [String: Any]
        #expect((report?["problems"] as? [Any])?.count == 1)

        let missing = try await ChildProcess.runSluice(["wal", "verify", directory.path + "/nope"])
        #expect(missing.status == 2)
        #expect(missing.standardError.contains("does not exist"))
    }

    @Test func dumpPrintsEventsFromAnLSNAsTextOrJSON() async throws {
        let directory = try await Self.populated()
        let text = try await ChildProcess.runSluice(["wal", "dump", directory.path, "--from", "7", "--limit", "2"])
        #expect(text.status == 0)
        let lines = text.standardOutput.split(separator: "\n")
        #expect(lines.count == 2)
        #expect(lines.first?.hasPrefix("7\t") == true)
        #expect(lines.first?.contains("{\"n\":7,") == true)

        let json = try await ChildProcess.runSluice(["wal", "dump", directory.path, "--from", "28", "--json"])
        let objects = try json.standardOutput.split(separator: "\n").map {
            try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
        #expect(objects.map { $0["lsn"] as? Int } == [28, 29])
        #expect((objects.first?["event"] as? String)?.hasPrefix("{\"n\":28,") == true)
    }

    @Test func lsAndStatShowSegmentsAndCursorLag() async throws {
        let directory = try await Self.populated()
        let ls = try await ChildProcess.runSluice(["wal", "ls", directory.path, "--json"])
        let segments = try #require(
            try JSONSerialization.jsonObject(with: Data(ls.standardOutput.utf8)) as? [[String: Any]]
        )
        #expect(segments.count >= 2)
        #expect(segments.last?["state"] as? String == "active")

        let stat = try await ChildProcess.runSluice(["wal", "stat", directory.path, "--json"])
        let object = try #require(
            try JSONSerialization.jsonObject(with: Data(stat.standardOutput.utf8)) as? [String: Any]
        )
        #expect(object["next_lsn"] as? Int == 30)
        let cursor = try #require((object["cursors"] as? [[String: Any]])?.first)
        #expect(cursor["name"] as? String == "forwarder")
        #expect(cursor["lag_events"] as? Int == 27)
        #expect((cursor["lag_bytes"] as? Int ?? 0) > 27 * 4000)
        #expect(cursor["oldest_unconsumed_age_seconds"] is Double)

        let human = try await ChildProcess.runSluice(["wal", "stat", directory.path])
        #expect(human.standardOutput.contains("forwarder"))
        #expect(human.standardOutput.contains("pressure:    normal"))
    }

    @Test func movingACursorNeedsForceAndAStoppedWriter() async throws {
        let directory = try await Self.populated()
        let refused = try await ChildProcess.runSluice(["wal", "cursor", directory.path, "forwarder", "--set", "1"])
        #expect(refused.status != 0)
        #expect(refused.standardError.contains("--force"))

        let wal = try await WAL.openAndStart(testConfiguration(directory.path), logger: quietLogger)
        let locked = try await ChildProcess.runSluice([
            "wal", "cursor", directory.path, "forwarder", "--set", "1", "--force",
        ])
        #expect(locked.status != 0)
        #expect(locked.standardError.contains("stop the gateway"))
        // Read-only commands work beside the live writer.
        #expect(try await ChildProcess.runSluice(["wal", "verify", directory.path]).status == 0)
        await wal.close()

        let moved = try await ChildProcess.runSluice([
            "wal", "cursor", directory.path, "forwarder", "--set", "1", "--force",
        ])
        #expect(moved.status == 0)
        #expect(moved.standardOutput.contains("3 -> 1"))
        let reopened = try await WAL.openAndStart(testConfiguration(directory.path), logger: quietLogger)
        #expect(reopened.cursor("forwarder")?.lsn == LSN(1))
        await reopened.close()
    }

    @Test func theReadCommandsReadAnEncryptedWALGivenTheGatewaysConfigurationAndNameAMissingKey() async throws {
        let directory = try TemporaryDirectory()
        let keyFile = directory.path + "/wal-2026.key"
        let made = try await ChildProcess.runSluice(["encryption", "new-key", keyFile])
        #expect(made.status == 0)
        #expect(try FileManager.default.attributesOfItem(atPath: keyFile)[.posixPermissions] as? Int == 0o600)
        let again = try await ChildProcess.runSluice(["encryption", "new-key", keyFile])
        #expect(again.status == 2)
        #expect(again.standardError.contains("exists already"))
        var configuration = testConfiguration(directory.path + "/wal")
        configuration.encryption.enabled = true
        configuration.encryption.keyFile = keyFile
        configuration.encryption.keyID = "wal-2026"
        let wal = try await WAL.openAndStart(configuration, logger: quietLogger)
        for index in 0..<3 { _ = try await wal.append([Array("{\"n\":\(index)}".utf8)]) }
        await wal.close()
        let file = directory.path + "/sluice.yaml"
        try """
        wal:
          directory: \(directory.path)/wal
          encryption:
            enabled: true
            key_file: \(keyFile)
            key_id: wal-2026
        """.write(toFile: file, atomically: true, encoding: .utf8)

        let dump = try await ChildProcess.runSluice(["wal", "dump", directory.path + "/wal", "--config", file])
        #expect(dump.status == 0, "\(dump.standardError)")
        #expect(
            dump.standardOutput.split(separator: "\n").map { $0.split(separator: "\t").last } == [
                "{\"n\":0}", "{\"n\":1}", "{\"n\":2}",
            ]
        )
        let verify = try await ChildProcess.runSluice(["wal", "verify", directory.path + "/wal", "--config", file])
        #expect(verify.status == 0, "\(verify.standardOutput)")
        let ls = try await ChildProcess.runSluice(["wal", "ls", directory.path + "/wal", "--config", file])
        #expect(ls.standardOutput.contains(" wal-2026 "))
        // The keys from the environment, in a shell that also holds other SLUICE_ variables
        // (the README tour sources ./data/dev/env): read, not refused.
        let fromEnvironment = try await ChildProcess.runSluice(
            ["wal", "stat", directory.path + "/wal"],
            environment: [
                "SLUICE_WAL_ENCRYPTION_KEY_FILE": keyFile, "SLUICE_WAL_ENCRYPTION_KEY_ID": "wal-2026",
                "SLUICE_URL": "https://127.0.0.1:8080", "SLUICE_KEY": "slk_test_not-a-setting",
            ]
        )
        #expect(fromEnvironment.status == 0, "\(fromEnvironment.standardError)")

        for command in ["dump", "verify", "stat", "ls"] {
            let without = try await ChildProcess.runSluice(["wal", command, directory.path + "/wal"])
            #expect(without.status == 2, "\(command)")
            #expect(without.standardError.contains("encrypted under key 'wal-2026', which is not configured"))
            #expect(without.standardError.contains("--config"))
        }
    }

    @Test func benchReportsThroughputLatencyAndTheRawCeiling() async throws {
        let directory = try TemporaryDirectory()
        let result = try await ChildProcess.runSluice([
            "wal", "bench", directory.path, "--size", "400", "--concurrency", "8", "--seconds", "0.5",
            "--raw-seconds", "0.3", "--json",
        ])
        #expect(result.status == 0, "\(result.standardError)")
        let object = try #require(
            try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any]
        )
        #expect((object["appends"] as? Int ?? 0) > 0)
        #expect((object["raw_syncs_per_second"] as? Double ?? 0) > 0)
        #expect((object["ratio_to_raw_syncs"] as? Double ?? 0) > 0)
        #expect((object["p99_milliseconds"] as? Double ?? 0) >= (object["p50_milliseconds"] as? Double ?? 0))
        // The benchmark cleans up after itself.
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path).isEmpty)
    }
}
