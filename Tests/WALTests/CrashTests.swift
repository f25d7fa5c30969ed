import Encryption
import Foundation
import Synchronization
import Testing

@_spi(Testing) @testable import WAL

/// One acknowledgement printed by `sluice-bench torture`.
struct Ack: Hashable {
    var lsn: LSN
    var round: UInt64
    var sequence: UInt64
    var count: Int

    /// Parses complete `ack LSN ROUND SEQ COUNT` lines; a line cut by the kill is ignored.
    static func parse(_ output: String) -> [Ack] {
        output.split(separator: "\n", omittingEmptySubsequences: true).compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count == 5, fields[0] == "ack", let lsn = UInt64(fields[1]), let round = UInt64(fields[2]),
                let sequence = UInt64(fields[3]), let count = Int(fields[4])
            else { return nil }
            return Ack(lsn: LSN(lsn), round: round, sequence: sequence, count: count)
        }
    }
}

/// A `sluice-bench torture` child: it prints `ready`, then an `ack …` line per durable append.
struct TortureChild {
    let child: ChildProcess

    /// - Parameter keyFile: encrypt the WAL under this key (`wal.encryption`, id "torture").
    init(directory: String, round: UInt64, keyFile: String? = nil) throws {
        self.child = try ChildProcess(
            [
                "torture", directory, "--round", "\(round)", "--concurrency", "16", "--segment-bytes", "262144",
            ] + (keyFile.map { ["--key-file", $0] } ?? []),
            executable: try sluiceBenchBinary()
        )
    }

    /// Waits for the `ready` line: the WAL is open and appends are under way.
    func ready() async throws { _ = try await self.child.line(timeout: .seconds(30), where: { $0 == "ready" }) }

    /// SIGKILLs the child and returns every acknowledgement it printed (its output read to
    /// the end).
    func kill() async throws -> [Ack] {
        _ = try await self.child.stop(SIGKILL)
        return Ack.parse(self.child.standardOutput)
    }
}

@Suite(.serialized, .timeLimit(.minutes(20))) struct CrashTests {
    /// `make test` runs 50 kills; `make bench` sets SLUICE_CRASH_ROUNDS for a longer soak.
    static var rounds: Int { Int(ProcessInfo.processInfo.environment["SLUICE_CRASH_ROUNDS"] ?? "") ?? 50 }

    /// Also with `wal.encryption` on: a record sealed by a killed writer, its torn tail and the
    /// next run's appends at the same LSNs (under another writer tag, so another nonce) must
    /// all come back as acknowledged.
    @Test(arguments: [false, true]) func everyAcknowledgedRecordSurvivesSIGKILLByteForByte(encrypted: Bool) async throws
    {
        let directory = try TemporaryDirectory()
        let wal = directory.path + "/wal"
        var configuration = testConfiguration(wal)
        var keyFile: String?
        if encrypted {
            keyFile = directory.path + "/torture.key"
            try Keyring.writeNewKeyFile(directory.path + "/torture.key")
            configuration.encryption.enabled = true
            configuration.encryption.keyFile = keyFile
            configuration.encryption.keyID = "torture"
        }
        let keyring = try configuration.encryption.keyring(prefix: "wal.encryption")
        var everything: [Ack] = []
        var truncations = 0
        for round in 0..<UInt64(Self.rounds) {
            let child = try TortureChild(directory: wal, round: round, keyFile: keyFile)
            try await child.ready()
            try await Task.sleep(for: .milliseconds(Int.random(in: 5...150)))
            let acks = try await child.kill()

            // Recovery must hand back every acknowledged record of this round, intact.
            let recovered = try await WAL.openAndStart(configuration, logger: quietLogger)
            #expect(recovered.recovery.damage.isEmpty, "round \(round): \(recovered.recovery.damage)")
            if recovered.recovery.truncatedTailBytes > 0 { truncations += 1 }
            await recovered.close()
            try Self.check(acks, in: wal, keyring: keyring, round: round)
            everything += acks
        }
        // And at the end, every acknowledgement of every round.
        let events = try allEvents(in: wal, keyring: keyring)
        var missing = 0
        for ack in everything {
            for index in 0..<ack.count
            where events[ack.lsn + UInt64(index)]
                != TortureRecord.event(round: ack.round, sequence: ack.sequence, index: index)
            {
                missing += 1
            }
        }
        #expect(missing == 0)
        #expect(Set(everything.map(\.lsn)).count == everything.count, "an LSN was acknowledged twice")
        #expect(try WALInspector(directory: wal, keyring: keyring).verify().isClean)
        if encrypted {
            // Sealed for real: no event of any round is on disk in the clear.
            let name = try #require(
                try FileManager.default.contentsOfDirectory(atPath: wal).first { $0.hasSuffix(".wal") }
            )
            let bytes = try Data(contentsOf: URL(fileURLWithPath: wal + "/" + name))
            let sample = Data(TortureRecord.event(round: 0, sequence: 0, index: 0).prefix(16))
            #expect(bytes.range(of: sample) == nil)
        }
        print(
            "crash test (encrypted: \(encrypted)): \(Self.rounds) SIGKILLs, \(everything.count) acknowledged appends checked, \(truncations) torn tails truncated"
        )
    }

    static func check(_ acks: [Ack], in directory: String, keyring: Keyring?, round: UInt64) throws {
        guard let first = acks.map(\.lsn).min() else { return }
        var events: [LSN: [UInt8]] = [:]
        try WALInspector(directory: directory, keyring: keyring).records(from: first) { item in
            if case .record(let record, _, _) = item {
                for (index, event) in record.events.enumerated() { events[record.lsn + UInt64(index)] = event }
            }
            return true
        }
        for ack in acks {
            for index in 0..<ack.count {
                let expected = TortureRecord.event(round: ack.round, sequence: ack.sequence, index: index)
                #expect(
                    events[ack.lsn + UInt64(index)] == expected,
                    "round \(round): acknowledged LSN \(ack.lsn + UInt64(index)) lost or changed"
                )
            }
        }
    }
}

/// Disk-full on a real, small file system: a tmpfs mounted for the test (needs root, which
/// the project's machines and CI have).
@Suite(.serialized, .timeLimit(.minutes(2))) struct FullFileSystemTests {
    static let canMount: Bool = geteuid() == 0 && FileManager.default.isExecutableFile(atPath: "/bin/mount")

    final class Mount {
        let path: String
        private let directory: TemporaryDirectory

        init(megabytes: Int) throws {
            self.directory = try TemporaryDirectory()
            self.path = self.directory.path
            let result = try ChildProcess.runBlocking(
                "/bin/mount",
                ["-t", "tmpfs", "-o", "size=\(megabytes)m", "tmpfs", self.path],
                timeout: .seconds(30)
            )
            guard result.status == 0 else {
                throw WALError(.io, "mount tmpfs on \(self.path) failed (\(result.status)): \(result.standardError)")
            }
        }

        // Blocking in a deinit: umount -l returns at once.
        deinit { _ = try? ChildProcess.runBlocking("/bin/umount", ["-l", self.path], timeout: .seconds(30)) }
    }

    @Test(.enabled(if: canMount)) func enospcFailsAppendsLosesNothingAndWritingResumesWhenSpaceReturns() async throws {
        let mount = try Mount(megabytes: 4)
        var configuration = testConfiguration(mount.path + "/wal")
        configuration.segmentBytes = 512 << 10
        // No watermark of our own: let the file system itself run out.
        configuration.budget = DiskBudget(maxBytes: 1 << 40, minFreeBytes: 0)
        let wal = try await WAL.openAndStart(configuration, logger: quietLogger)
        _ = try await wal.openCursor("forwarder")
        var acknowledged: [LSN: [UInt8]] = [:]
        var diskFull = 0
        for index in 0..<2000 where diskFull < 5 {
            let payload = Array("event-\(index)-".utf8) + [UInt8](repeating: UInt8(index % 251), count: 8000)
            do {
                acknowledged[try await wal.append([payload]).firstLSN] = payload
            } catch let error as WALError {
                #expect(error.code == .diskFull, "\(error)")
                diskFull += 1
            }
        }
        #expect(diskFull == 5)
        #expect(acknowledged.count > 100)

        // The forwarder catches up: sealed segments go, space returns, appends succeed again.
        try await wal.commitCursor("forwarder", to: wal.durableNextLSN)
        // Every sealed segment goes (the failed roll left no active one behind).
        try await waitUntil { wal.segments.count <= 1 }
        var resumed = 0
        for index in 0..<50 {
            let payload = Array("resumed-\(index)".utf8)
            acknowledged[try await wal.append([payload]).firstLSN] = payload
            resumed += 1
        }
        #expect(resumed == 50)
        await wal.close()
        let events = try allEvents(in: mount.path + "/wal")
        for (lsn, payload) in acknowledged where lsn >= wal.oldestLSN {
            #expect(events[lsn] == payload)
        }
        #expect(try WALInspector(directory: mount.path + "/wal").verify().isClean)
    }

    @Test(.enabled(if: canMount)) func theFreeSpaceReserveRefusesBeforeTheFileSystemIsFull() async throws {
        let mount = try Mount(megabytes: 4)
        var configuration = testConfiguration(mount.path + "/wal")
        configuration.segmentBytes = 256 << 10
        configuration.budget = DiskBudget(maxBytes: 1 << 40, minFreeBytes: 1 << 20)
        let wal = try await WAL.openAndStart(configuration, logger: quietLogger)
        var refusal: WALError?
        for index in 0..<2000 {
            do {
                _ = try await wal.append([Array("e\(index)".utf8) + [UInt8](repeating: 1, count: 8000)])
            } catch let error as WALError {
                refusal = error
                break
            }
        }
        #expect(refusal?.code == .diskFull)
        #expect(wal.pressure == .hard)
        // The reserve was honoured: the volume still has at least most of it free.
        let available = try SystemFileSystem().volumeSpace(mount.path).available
        #expect(available >= (1 << 20) - configuration.segmentBytes)
        await wal.close()
    }
}
