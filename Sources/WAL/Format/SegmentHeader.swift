/// The 64-byte header at the start of every segment file.
struct SegmentHeader: Equatable, Sendable {
    static let size = 64
    static let magic: [UInt8] = Array("SLUICEWS".utf8)
    static let currentVersion: UInt16 = 1

    var version: UInt16 = SegmentHeader.currentVersion
    var firstLSN: LSN
    var createdNanos: UInt64
    /// Random per writer instance: tells segments of different runs apart in dumps.
    var writerID: UInt64
    /// Reserved for compression (0 = none) and encryption (0 = none, key id).
    var codec: UInt8 = 0
    var cipher: UInt8 = 0
    var keyID: UInt32 = 0

    func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        for (index, byte) in Self.magic.enumerated() { bytes[index] = byte }
        bytes.store(self.version, at: 8)
        bytes.store(UInt16(0), at: 10)  // flags
        bytes.store(UInt16(Self.size), at: 12)
        bytes.store(self.firstLSN.rawValue, at: 16)
        bytes.store(self.createdNanos, at: 24)
        bytes.store(self.writerID, at: 32)
        bytes[48] = self.codec
        bytes[49] = self.cipher
        bytes.store(self.keyID, at: 52)
        bytes.store(CRC32C.checksum(Array(bytes[0..<60])), at: 60)
        return bytes
    }

    /// Parses a header, or explains why the bytes are not one.
    static func decode(_ bytes: UnsafeRawBufferPointer) -> Result<SegmentHeader, WALError> {
        guard bytes.count >= Self.size else {
            return .failure(WALError(.corruptSegment, "segment is shorter than its \(Self.size)-byte header"))
        }
        guard Array(bytes[0..<8]) == Self.magic else {
            return .failure(WALError(.corruptSegment, "not a Sluice WAL segment (bad magic)"))
        }
        let stored = bytes.load(UInt32.self, at: 60)
        guard CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[0..<60])) == stored else {
            return .failure(WALError(.corruptSegment, "segment header checksum mismatch"))
        }
        let version = bytes.load(UInt16.self, at: 8)
        guard version == Self.currentVersion else {
            return .failure(WALError(.corruptSegment, "unsupported segment version \(version)"))
        }
        return .success(
            SegmentHeader(
                version: version,
                firstLSN: LSN(bytes.load(UInt64.self, at: 16)),
                createdNanos: bytes.load(UInt64.self, at: 24),
                writerID: bytes.load(UInt64.self, at: 32),
                codec: bytes[48],
                cipher: bytes[49],
                keyID: bytes.load(UInt32.self, at: 52)
            )
        )
    }
}
