import Foundation
import TestSupport
import Testing

/// The scripts and helper binaries beside `sluice`, run the way a developer runs them.
@Suite struct ToolTests {
    /// Runs `executable arguments…` with `environment` added to this process's (minus its
    /// `SLUICE_` variables), to completion: exit status, standard output, standard error.
    func run(
        _ executable: String,
        _ arguments: [String],
        environment: [String: String] = [:]
    ) async throws -> (status: Int32, output: String, errors: String) {
        let result = try await ChildProcess.run(executable, arguments, environment: environment)
        return (result.status, result.standardOutput, result.standardError)
    }

    /// The product carries no benchmark: `sluice` lists no bench command and has no switch
    /// that skips the WAL; `sluice-bench gateway` is that baseline, the same server answering
    /// 202 without storing anything (scripts/bench-gateway, scripts/bench-auth).
    @Test func benchmarksLiveInSluiceBenchNotInTheProduct() async throws {
        let help = try await self.run(try sluiceBinary(), ["--help"])
        #expect(help.status == 0)
        for command in ["forwarder-bench", "loader-bench", "pipeline-bench", "torture"] {
            #expect(!help.output.contains(command), "\(command) in sluice --help")
        }
        let flag = try await self.run(try sluiceBinary(), ["gateway", "--unsafe-no-wal"])
        #expect(flag.status == 64, "\(flag.errors)")
        #expect(flag.errors.contains("Unknown option '--unsafe-no-wal'"))
        let benches = try await self.run(try sluiceBenchBinary(), ["--help"])
        for command in ["gateway", "forwarder", "loader", "pipeline", "torture"] {
            #expect(benches.output.contains("  \(command) "), "\(command) missing from sluice-bench --help")
        }

        let directory = try TemporaryDirectory()
        let baseline = try SluiceProcess(
            ["gateway", "--listen", "127.0.0.1:0"],
            environment: ["SLUICE_AUTH_REQUIRED": "false", "SLUICE_WAL_DIRECTORY": directory.path + "/wal"],
            executable: try sluiceBenchBinary()
        )
        let port = try await baseline.listeningPort()
        let post = try await self.run(
            "/usr/bin/curl",
            [
                "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: application/json",
                "--data", #"{"action":"page_view","user_id":"u1"}"#, "http://127.0.0.1:\(port)/v1/events",
            ]
        )
        #expect(post.output == "202")
        #expect(
            baseline.standardOutput.contains("gateway.unsafe_no_wal")
                || baseline.standardError.contains("gateway.unsafe_no_wal")
        )
        #expect(!FileManager.default.fileExists(atPath: directory.path + "/wal"), "the baseline opened no WAL")
        baseline.signal(SIGTERM)
        #expect(try await baseline.waitForExit() == 0)
    }

    /// `scripts/clickhouse-local` in a checkout that has only a release build (or none): it runs
    /// the build there is, and says what to do when there is none, instead of exiting silently.
    @Test func clickhouseLocalFindsAReleaseOnlyBuildAndExplainsAMissingOne() async throws {
        let checkout = try TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: checkout.path + "/scripts", withIntermediateDirectories: true)
        try FileManager.default.copyItem(
            atPath: repositoryRoot().appendingPathComponent("scripts/clickhouse-local").path,
            toPath: checkout.path + "/scripts/clickhouse-local"
        )
        let script = checkout.path + "/scripts/clickhouse-local"

        let none = try await self.run("/bin/bash", [script, checkout.path + "/data"])
        #expect(none.status == 2)
        #expect(none.errors.contains("no sluice binary"))

        try FileManager.default.createDirectory(
            atPath: checkout.path + "/.build/release",
            withIntermediateDirectories: true
        )
        let fake = checkout.path + "/.build/release/sluice"
        try "#!/bin/sh\necho \"release $*\"\n".write(toFile: fake, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: fake)
        let release = try await self.run("/bin/bash", [script, checkout.path + "/data", "18123"])
        #expect(release.status == 0, "\(release.errors)")
        #expect(release.output == "release dev-clickhouse \(checkout.path)/data --http-port 18123\n")
    }

    /// The fuzzing harnesses (scripts/fuzz) replay their seed corpus through the body decoders
    /// and the WAL's frame and segment readers without a failed check: the harness builds, its seeds are
    /// real inputs, and `make test` notices a harness that no longer runs.
    @Test func theFuzzingHarnessesReplayTheirSeeds() async throws {
        let fuzz = repositoryRoot().appendingPathComponent(".build/debug/sluice-fuzz").path
        let seeds = try TemporaryDirectory()
        let seeded = try await self.run(fuzz, ["seed", seeds.path])
        #expect(seeded.status == 0, "\(seeded.errors)")
        for target in ["bodies", "frames", "segments"] {
            let files = try FileManager.default.contentsOfDirectory(atPath: seeds.path + "/" + target)
            #expect(files.count >= 6, "\(target): \(files.count) seeds")
            let replay = try await self.run(
                fuzz,
                [seeds.path + "/" + target],
                environment: ["SLUICE_FUZZ_TARGET": target]
            )
            #expect(replay.status == 0, "\(replay.errors)")
            #expect(replay.output.contains("\(files.count) inputs through \(target): no check failed"))
        }
    }
}
