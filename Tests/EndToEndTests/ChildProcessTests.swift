import Foundation
import TestSupport
import Testing

/// The test kit's launchers, which every process test relies on: what a child gets (its
/// environment, input and directory), what the test gets back (complete lines, every byte of
/// output, the status), and that nothing outlives its time.
@Suite(.timeLimit(.minutes(2))) struct ChildProcessTests {
    @Test func aCommandRunToCompletionHandsBackItsStatusAndBothStreams() async throws {
        let result = try await ChildProcess.run("/bin/sh", ["-c", "echo out; echo err >&2; exit 3"])
        #expect(result.status == 3)
        #expect(result.standardOutput == "out\n")
        #expect(result.standardError == "err\n")
        #expect(!result.timedOut)

        let merged = try await ChildProcess.run(
            "/bin/sh",
            ["-c", "echo one; echo two >&2; echo three"],
            errorsToOutput: true
        )
        #expect(merged.standardOutput == "one\ntwo\nthree\n")
        #expect(merged.standardError.isEmpty)
    }

    @Test func aCommandGetsItsInputDirectoryAndOnlyTheSluiceSettingsItIsGiven() async throws {
        let directory = try TemporaryDirectory()
        let cat = try await ChildProcess.run("cat", [], input: "line 1\nline 2\n")
        #expect(cat.standardOutput == "line 1\nline 2\n")
        let pwd = try await ChildProcess.run("/bin/pwd", [], currentDirectory: directory.path)
        #expect(pwd.standardOutput.trimmingCharacters(in: .newlines) == directory.path)

        setenv("SLUICE_TEST_KIT_INHERITED", "leaks", 1)
        defer { unsetenv("SLUICE_TEST_KIT_INHERITED") }
        let env = try await ChildProcess.run("/usr/bin/env", [], environment: ["SLUICE_GIVEN": "yes"])
        #expect(env.standardOutput.contains("SLUICE_GIVEN=yes\n"))
        #expect(!env.standardOutput.contains("SLUICE_TEST_KIT_INHERITED"))
        #expect(env.standardOutput.contains("PATH="))
    }

    /// A command that leaves a daemon behind (as `pg_ctl start` does) returns when it exits, not
    /// when the daemon closes the output it inherited; one that hangs is killed at its timeout.
    @Test func aCommandReturnsWhenItExitsAndIsKilledAtItsTimeout() async throws {
        let started = ContinuousClock.now
        // The daemon outlives any bound a busy CI machine could miss (a 5 s daemon against a 4 s
        // bound once failed at 4.9 s with every suite starting at once); it is killed below.
        let daemon = try await ChildProcess.run("/bin/sh", ["-c", "sleep 120 & echo $!"])
        #expect(daemon.status == 0)
        #expect(ContinuousClock.now - started < .seconds(60))
        let pid = try #require(pid_t(daemon.standardOutput.trimmingCharacters(in: .newlines)))
        kill(pid, SIGKILL)

        let hung = try await ChildProcess.run("/bin/sleep", ["30"], timeout: .milliseconds(300))
        #expect(hung.timedOut)
        #expect(hung.status == 128 + SIGKILL)
        #expect(ContinuousClock.now - started < .seconds(10))

        let missing = #expect(throws: ChildProcessError.self) {
            try ChildProcess.runBlocking("no-such-command-in-path", [])
        }
        #expect(missing?.description.contains("not installed") == true)
    }

    /// A half-written line is not a line: a port read from it could be cut short.
    @Test func aLineCountsOnceItsNewlineArrived() async throws {
        let child = try ChildProcess(
            executable: "/bin/sh",
            ["-c", #"printf '"gateway.listening","server.port":80'; sleep 0.3; printf '81\nnext\n'; exec sleep 30"#]
        )
        #expect(try await child.listeningPort() == 8081)
        #expect(try await child.firstLine() == #""gateway.listening","server.port":8081"#)
        #expect(try await child.stop(SIGTERM) == SIGTERM)
    }

    @Test func aLineThatNeverComesFailsWhenTheChildExits() async throws {
        let child = try ChildProcess(executable: "/bin/sh", ["-c", "echo starting; echo failed >&2; exit 2"])
        let error = await #expect(throws: ChildProcessError.self) {
            try await child.line(containing: "ready", timeout: .seconds(20))
        }
        #expect(error?.description.contains("a line with 'ready' did not come") == true)
        #expect(try await child.waitForExit() == 2)
        #expect(child.standardOutput == "starting\n")
        #expect(child.standardError == "failed\n")
    }

    @Test func aChildReadsWhatTheTestWritesAndIsKilledWhenDropped() async throws {
        let cat = try ChildProcess(executable: "cat", [], input: .pipe)
        try cat.write("hello\n")
        #expect(try await cat.firstLine() == "hello")
        cat.closeInput()
        #expect(try await cat.waitForExit() == 0)

        var sleeper: ChildProcess? = try ChildProcess(executable: "/bin/sleep", ["30"])
        let pid = try #require(sleeper?.processIdentifier)
        sleeper = nil
        // Killed (and reaped by Foundation): the pid no longer names a live sleep.
        try await waitUntil(timeout: .seconds(10)) {
            let status = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
            return status.isEmpty || status.contains(") Z ")
        }
    }
}
