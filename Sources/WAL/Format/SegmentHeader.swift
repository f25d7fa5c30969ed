/// The header at the start of every segment file: 64 bytes, and for an encrypted segment a
/// 128-byte key block after them.
///
/// ```
/// 0  magic "SLUICEWS"   8 version u16   10 flags u16   12 header size u16
/// 16 first LSN u64      24 created (unix ns) u64       32 writer id u64
/// 48 codec u8   49 cipher u8   52 (unused key number) u32   60 header CRC32C
/// version 2 (cipher 1, AES-256-GCM), the key block:
/// 64 key id length u8   65 key id (64 bytes, zero-padded)   129 wrapped data key (60 bytes)
/// ```
/// The CRC covers bytes 0..<60 and the key block. The data key is wrapped by the key named by
/// the id, with the segment's first LSN, writer id and key id as additional data, so a key
/// block copied onto another segment does not unwrap.
struct SegmentHeader: Equatable, Sendable {
    static let size = 64
    /// The largest header a segment may have: where frames of an encrypted segment start.
    static let maximumSize = 192
    static let magic: [UInt8] = Array("SLUICEWS".utf8)
    static let currentVersion: UInt16 = 1
    static let encryptedVersion: UInt16 = 2

    /// The key that encrypts one segment's records, as stored in its header.
    struct KeyBlock: Equatable, Sendable {
        var keyID: String
        var wrappedKey: [UInt8]
    }

    var version: UInt16 = SegmentHeader.currentVersion
    var firstLSN: LSN
    var createdNanos: UInt64
    /// Random per writer instance: tells segments of different runs apart in dumps.
    var writerID: UInt64
    /// Reserved for compression (0 = none).
    var codec: UInt8 = 0
    /// 0: records in the clear; 1: AES-256-GCM under the data key in ``keyBlock``.
    var cipher: UInt8 = 0
    var keyID: UInt32 = 0
    var keyBlock: KeyBlock?

    init(firstLSN: LSN, createdNanos: UInt64, writerID: UInt64, keyBlock: KeyBlock? = nil) {
        self.firstLSN = firstLSN
        self.createdNanos = createdNanos
        self.writerID = writerID
        if let keyBlock {
            self.version = Self.encryptedVersion
            self.cipher = 1
            self.keyBlock = keyBlock
        }
    }

    /// Where the first frame starts.
    var dataStart: Int { self.keyBlock == nil ? Self.size : Self.maximumSize }

    /// What the wrapped data key is bound to.
    static func keyBinding(firstLSN: LSN, writerID: UInt64, keyID: String) -> [UInt8] {
        var bytes = Array("sluice-wal-segment-key".utf8)
        withUnsafeBytes(of: firstLSN.rawValue.littleEndian) { bytes.append(contentsOf: $0) }
        withUnsafeBytes(of: writerID.littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: keyID.utf8)
        return bytes
    }

    func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: self.dataStart)
        for (index, byte) in Self.magic.enumerated() { bytes[index] = byte }
        bytes.store(self.version, at: 8)
        bytes.store(UInt16(0), at: 10)  // flags
        bytes.store(UInt16(self.dataStart), at: 12)
        bytes.store(self.firstLSN.rawValue, at: 16)
        bytes.store(self.createdNanos, at: 24)
        bytes.store(self.writerID, at: 32)
        bytes[48] = self.codec
        bytes[49] = self.cipher
        bytes.store(self.keyID, at: 52)
        if let keyBlock = self.keyBlock {
            let id = Array(keyBlock.keyID.utf8.prefix(64))
            bytes[64] = UInt8(id.count)
            for (index, byte) in id.enumerated() { bytes[65 + index] = byte }
            for (index, byte) in keyBlock.wrappedKey.prefix(60).enumerated() { bytes[129 + index] = byte }
        }
        bytes.store(Self.checksum(bytes), at: 60)
        return bytes
    }

    private static func checksum(_ bytes: some RandomAccessCollection<UInt8>) -> UInt32 {
        let array = Array(bytes)
        let head = CRC32C.checksum(Array(array[0..<60]))
        guard array.count > Self.size else { return head }
        return array[Self.size...].withUnsafeBytes { CRC32C.checksum($0, seed: head) }
    }

    /// Parses a header, or explains why the bytes are not one. `bytes` may hold more than the
    /// header (a read of ``maximumSize`` bytes); an encrypted header needs all 192.
    static func decode(_ bytes: UnsafeRawBufferPointer) -> Result<SegmentHeader, WALError> {
        guard bytes.count >= Self.size else {
            return .failure(WALError(.corruptSegment, "segment is shorter than its \(Self.size)-byte header"))
        }
        guard Array(bytes[0..<8]) == Self.magic else {
            return .failure(WALError(.corruptSegment, "not a Sluice WAL segment (bad magic)"))
        }
        let version = bytes.load(UInt16.self, at: 8)
        guard version == Self.currentVersion || version == Self.encryptedVersion else {
            return .failure(WALError(.corruptSegment, "unsupported segment version \(version)"))
        }
        let size = version == Self.encryptedVersion ? Self.maximumSize : Self.size
        guard bytes.count >= size, Int(bytes.load(UInt16.self, at: 12)) == size else {
            return .failure(WALError(.corruptSegment, "segment header of version \(version) is not \(size) bytes"))
        }
        let stored = bytes.load(UInt32.self, at: 60)
        guard Self.checksum(UnsafeRawBufferPointer(rebasing: bytes[0..<size])) == stored else {
            return .failure(WALError(.corruptSegment, "segment header checksum mismatch"))
        }
        var keyBlock: KeyBlock?
        if version == Self.encryptedVersion {
            let length = Int(bytes[64])
            guard bytes[49] == 1, length > 0, length <= 64,
                let id = String(validating: Array(bytes[65..<65 + length]), as: UTF8.self)
            else {
                return .failure(WALError(.corruptSegment, "encrypted segment header has no valid cipher or key id"))
            }
            keyBlock = KeyBlock(keyID: id, wrappedKey: Array(bytes[129..<189]))
        }
        var header = SegmentHeader(
            firstLSN: LSN(bytes.load(UInt64.self, at: 16)),
            createdNanos: bytes.load(UInt64.self, at: 24),
            writerID: bytes.load(UInt64.self, at: 32),
            keyBlock: keyBlock
        )
        header.codec = bytes[48]
        header.cipher = bytes[49]
        header.keyID = bytes.load(UInt32.self, at: 52)
        return .success(header)
    }
}
