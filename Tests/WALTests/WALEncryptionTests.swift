import Encryption
import Foundation
import Testing

@_spi(Testing) @testable import WAL

/// `wal.encryption`: records sealed with AES-256-GCM under a data key per segment, wrapped by
/// a named key; rotation; a missing key; records altered or moved on disk.
@Suite(.timeLimit(.minutes(2))) struct WALEncryptionTests {
    /// A WAL directory and a place for its key files.
    struct Setup {
        let directory: TemporaryDirectory
        var wal: String { self.directory.path + "/wal" }

        init() throws {
            self.directory = try TemporaryDirectory()
        }

        /// Makes the key file of `id` (once) and returns its path.
        func key(_ id: String) throws -> String {
            let path = self.directory.path + "/\(id).key"
            if !FileManager.default.fileExists(atPath: path) { try Keyring.writeNewKeyFile(path) }
            return path
        }

        /// The WAL's configuration encrypting under `current` (nil: in the clear) and reading
        /// with `previous` too.
        func configuration(current: String?, previous: [String] = []) throws -> WALConfiguration {
            var configuration = testConfiguration(self.wal)
            if let current {
                configuration.encryption.enabled = true
                configuration.encryption.keyFile = try self.key(current)
                configuration.encryption.keyID = current
            }
            for id in previous { configuration.encryption.previousKeys[id] = try self.key(id) }
            return configuration
        }

        func keyring(current: String?, previous: [String] = []) throws -> Keyring? {
            try self.configuration(current: current, previous: previous).encryption.keyring(prefix: "wal.encryption")
        }

        /// Every byte of every segment file.
        func segmentBytes() throws -> [UInt8] {
            try FileManager.default.contentsOfDirectory(atPath: self.wal).filter { $0.hasSuffix(".wal") }.sorted()
                .flatMap { Array(try Data(contentsOf: URL(fileURLWithPath: self.wal + "/" + $0))) }
        }

        func segments() throws -> [String] {
            try FileManager.default.contentsOfDirectory(atPath: self.wal).filter { $0.hasSuffix(".wal") }.sorted()
        }
    }

    static func marked(_ index: Int) -> [UInt8] {
        Array("{\"user_id\":\"alice-\(index)\",\"marker\":\"PLAINTEXT-MARKER\"}".utf8)
    }

    static func contains(_ haystack: [UInt8], _ needle: String) -> Bool {
        let needle = Array(needle.utf8)
        guard haystack.count >= needle.count else { return false }
        return (0...(haystack.count - needle.count)).contains { start in
            haystack[start] == needle[0] && Array(haystack[start..<start + needle.count]) == needle
        }
    }

    @Test func recordsAreSealedOnDiskAndReadBackByTheTailTheInspectorAndRecovery() async throws {
        let setup = try Setup()
        let wal = try await WAL.openAndStart(try setup.configuration(current: "k1"), logger: quietLogger)
        for index in 0..<20 { _ = try await wal.append([Self.marked(index)]) }
        let read = try await wal.tail(from: .zero).next()
        #expect(read.flatMap(\.events) == (0..<20).map(Self.marked))
        await wal.close()

        let bytes = try setup.segmentBytes()
        #expect(!Self.contains(bytes, "PLAINTEXT-MARKER"))
        #expect(!Self.contains(bytes, "alice"))
        let name = try #require(try setup.segments().first)
        let reader = try SegmentReader(path: setup.wal + "/" + name, fileSystem: SystemFileSystem())
        defer { reader.close() }
        let header = try reader.header()
        #expect(header.version == SegmentHeader.encryptedVersion)
        #expect(header.keyBlock?.keyID == "k1")

        // Recovery scans the unsealed tail and finds every record intact; the inspector reads
        // them given the key.
        let reopened = try await WAL.openAndStart(try setup.configuration(current: "k1"), logger: quietLogger)
        #expect(reopened.recovery.damage.isEmpty)
        await reopened.close()
        let events = try allEvents(in: setup.wal, keyring: try setup.keyring(current: "k1"))
        #expect((0..<20).map { events[LSN(UInt64($0))] } == (0..<20).map(Self.marked))
        #expect(try WALInspector(directory: setup.wal, keyring: try setup.keyring(current: "k1")).verify().isClean)
    }

    @Test func aRotationWritesNewSegmentsUnderTheNewKeyAndTheOldStayReadableWhileConfigured() async throws {
        let setup = try Setup()
        let first = try await WAL.openAndStart(try setup.configuration(current: "k1"), logger: quietLogger)
        for index in 0..<5 { _ = try await first.append([Self.marked(index)]) }
        await first.close()

        // k2 is current, k1 still configured: the k1 segment is sealed before the next append.
        let second = try await WAL.openAndStart(
            try setup.configuration(current: "k2", previous: ["k1"]),
            logger: quietLogger
        )
        for index in 5..<10 { _ = try await second.append([Self.marked(index)]) }
        let tail = second.tail(from: .zero)
        var read: [[UInt8]] = []
        while read.count < 10 { read += try await tail.next().flatMap(\.events) }
        #expect(read == (0..<10).map(Self.marked))
        await second.close()
        let keyIDs = try setup.segments().map { name in
            let reader = try SegmentReader(path: setup.wal + "/" + name, fileSystem: SystemFileSystem())
            defer { reader.close() }
            return try reader.header().keyBlock?.keyID
        }
        #expect(keyIDs == ["k1", "k2"])

        // Without k1, what k2 protects still opens, and reading k1's segment names the key.
        let third = try await WAL.openAndStart(try setup.configuration(current: "k2"), logger: quietLogger)
        let missing = await #expect(throws: WALError.self) { _ = try await third.tail(from: .zero).next() }
        #expect(missing?.code == .missingKey)
        #expect(missing?.message.contains("key 'k1'") == true)
        await third.close()
        let inspector = try WALInspector(directory: setup.wal, keyring: try setup.keyring(current: "k2"))
        let verifying = #expect(throws: WALError.self) { _ = try inspector.verify() }
        #expect(verifying?.message.contains("'k1' is not configured") == true)
    }

    @Test func anActiveSegmentUnderAKeyThatIsNotConfiguredStopsTheOpenNamingIt() async throws {
        let setup = try Setup()
        let wal = try await WAL.openAndStart(try setup.configuration(current: "k1"), logger: quietLogger)
        _ = try await wal.append([Self.marked(0)])
        await wal.close()
        // The tail segment must be scanned at recovery; without its key nothing can be trusted
        // or appended after it.
        let opening = await #expect(throws: WALError.self) {
            _ = try await WAL.open(try setup.configuration(current: "k2"), logger: quietLogger)
        }
        #expect(opening?.code == .missingKey)
        #expect(opening?.message.contains("'k1'") == true)
        let plain = await #expect(throws: WALError.self) {
            _ = try await WAL.open(try setup.configuration(current: nil), logger: quietLogger)
        }
        #expect(plain?.message.contains("no wal.encryption keys are configured") == true)
    }

    @Test func switchingEncryptionOffKeepsOldSegmentsReadableWithTheKeyAndWritesNewOnesInTheClear() async throws {
        let setup = try Setup()
        let first = try await WAL.openAndStart(try setup.configuration(current: "k1"), logger: quietLogger)
        _ = try await first.append([Self.marked(0)])
        await first.close()
        var off = try setup.configuration(current: "k1")
        off.encryption.enabled = false
        let second = try await WAL.openAndStart(off, logger: quietLogger)
        _ = try await second.append([Self.marked(1)])
        await second.close()
        let segments = try setup.segments()
        #expect(segments.count == 2)
        let clear = try Data(contentsOf: URL(fileURLWithPath: setup.wal + "/" + segments[1]))
        #expect(Self.contains(Array(clear), "PLAINTEXT-MARKER"))
        let events = try allEvents(in: setup.wal, keyring: try off.encryption.keyring(prefix: "wal.encryption"))
        #expect(events[LSN(0)] == Self.marked(0))
        #expect(events[LSN(1)] == Self.marked(1))
    }

    /// Rewrites the frame at `offset` of `path` with `payload`, recomputing both checksums as
    /// an attacker (or a bug) that moves bytes would: only the authentication can tell.
    static func rewrite(_ path: String, frameAt offset: Int, payload: [UInt8]) throws {
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        guard case .frame(var header) = bytes[offset..<offset + FrameHeader.size].withUnsafeBytes(FrameHeader.decode)
        else {
            Issue.record("no frame at \(offset)")
            return
        }
        #expect(Int(header.payloadLength) == payload.count)
        header.payloadCRC = CRC32C.checksum(payload)
        bytes.withUnsafeMutableBytes { raw in
            header.write(into: UnsafeMutableRawBufferPointer(rebasing: raw[offset..<offset + FrameHeader.size]))
        }
        bytes.replaceSubrange(offset + FrameHeader.size..<offset + FrameHeader.size + payload.count, with: payload)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    static func payload(_ path: String, frameAt offset: Int, length: Int) throws -> [UInt8] {
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        return Array(bytes[offset + FrameHeader.size..<offset + FrameHeader.size + length])
    }

    @Test func aFlippedOrSwappedRecordFailsAuthenticationAndIsQuarantinedByItsLSN() async throws {
        let setup = try Setup()
        let configuration = try setup.configuration(current: "k1")
        let wal = try await WAL.openAndStart(configuration, logger: quietLogger)
        // Five records of equal length, one per append: frames of equal size.
        for index in 0..<5 { _ = try await wal.append([Self.marked(index)]) }
        await wal.close()
        let path = setup.wal + "/" + (try #require(try setup.segments().first))
        let sealedLength = EventPayload.encode([Self.marked(0)]).count + Sealing.tagBytes
        let frame = alignedTo8(FrameHeader.size + sealedLength)
        let start = SegmentHeader.maximumSize
        // LSN 1: one bit flipped. LSNs 3 and 4: their sealed payloads swapped.
        var flipped = try Self.payload(path, frameAt: start + frame, length: sealedLength)
        flipped[7] ^= 0x20
        try Self.rewrite(path, frameAt: start + frame, payload: flipped)
        let third = try Self.payload(path, frameAt: start + 3 * frame, length: sealedLength)
        let fourth = try Self.payload(path, frameAt: start + 4 * frame, length: sealedLength)
        try Self.rewrite(path, frameAt: start + 3 * frame, payload: fourth)
        try Self.rewrite(path, frameAt: start + 4 * frame, payload: third)

        let report = try WALInspector(directory: setup.wal, keyring: try setup.keyring(current: "k1")).verify()
        #expect(report.problems.map(\.firstLSN) == [LSN(1), LSN(3), LSN(4)])
        #expect(report.problems.allSatisfy { $0.detail.contains("fails authentication") })

        // The forwarder's tail skips exactly those LSNs and quarantines them; the others read.
        let reopened = try await WAL.openAndStart(configuration, logger: quietLogger)
        let tail = reopened.tail(from: .zero)
        var read: [LSN: [UInt8]] = [:]
        while read.count < 2 {
            for record in try await tail.next() { read[record.lsn] = record.events[0] }
        }
        await reopened.close()
        #expect(read == [LSN(0): Self.marked(0), LSN(2): Self.marked(2)])
        // Each damaged stretch is kept (its bytes and a note naming its LSNs), never discarded.
        let notes = try FileManager.default.contentsOfDirectory(atPath: setup.wal + "/quarantine")
            .filter { $0.hasSuffix(".json") }.sorted()
            .map { try String(contentsOfFile: setup.wal + "/quarantine/" + $0, encoding: .utf8) }
        #expect(notes.count == 3)
        for lsn in [1, 3, 4] {
            #expect(notes.contains { $0.contains("\"first_lost_lsn\":\(lsn),") && $0.contains("fails authentication") })
        }
    }
}
