import Crypto
import Encryption

/// AES-256-GCM over one segment's record payloads, under that segment's data key
/// (`wal.encryption`, docs/security.md "WAL encryption").
///
/// The nonce is the frame's writer tag and LSN: a segment has its own data key, an LSN is
/// written once per writer run, and a run's tag differs from every tag already in the segment
/// (see ``FrameHeader/writerTag``), so a record rewritten after a crash at the same LSN is
/// sealed under another nonce — never two plaintexts under one nonce. The additional data is
/// the frame header's LSN, time, event count, type and tag: a record moved to another LSN, or
/// a header edited with its CRC recomputed, fails authentication and is reported as damage.
struct RecordCipher: Sendable {
    let keyID: String
    private let key: SymmetricKey

    init(keyID: String, key: SymmetricKey) {
        self.keyID = keyID
        self.key = key
    }

    /// A fresh data key for the segment starting at `firstLSN`, wrapped by the ring's current
    /// key; nil when the ring writes in the clear.
    static func forNewSegment(
        keyring: Keyring?,
        firstLSN: LSN,
        writerID: UInt64
    ) throws -> (
        RecordCipher, SegmentHeader.KeyBlock
    )? {
        guard let current = keyring?.current else { return nil }
        let (key, wrapped) = try Sealing.newDataKey(
            wrappedBy: current.key,
            binding: SegmentHeader.keyBinding(firstLSN: firstLSN, writerID: writerID, keyID: current.id)
        )
        return (RecordCipher(keyID: current.id, key: key), .init(keyID: current.id, wrappedKey: wrapped))
    }

    /// The data key of an existing segment, unwrapped with the ring; nil for a segment in the
    /// clear. Throws ``WALError/Code/missingKey`` naming the id when the ring lacks its key,
    /// and ``WALError/Code/corruptSegment`` when the key block does not unwrap.
    static func forSegment(_ header: SegmentHeader, keyring: Keyring?, name: String) throws(WALError) -> RecordCipher? {
        guard let block = header.keyBlock else { return nil }
        guard let keyring else {
            throw WALError(
                .missingKey,
                "\(name) is encrypted under key '\(block.keyID)' and no wal.encryption keys are configured"
            )
        }
        let keyEncryptionKey: SymmetricKey
        do {
            keyEncryptionKey = try keyring.key(block.keyID)
        } catch {
            throw WALError(.missingKey, "\(name) is encrypted: \(error.description)")
        }
        do {
            let key = try Sealing.unwrap(
                block.wrappedKey,
                with: keyEncryptionKey,
                binding: SegmentHeader.keyBinding(
                    firstLSN: header.firstLSN,
                    writerID: header.writerID,
                    keyID: block.keyID
                )
            )
            return RecordCipher(keyID: block.keyID, key: key)
        } catch {
            throw WALError(
                .corruptSegment,
                "\(name): its data key does not unwrap with key '\(block.keyID)' "
                    + "(a different key under the same id, or a damaged or moved header)"
            )
        }
    }

    static func nonce(_ header: FrameHeader) -> AES.GCM.Nonce {
        Sealing.nonce(counter: header.lsn.rawValue, prefix: UInt32(header.writerTag))
    }

    static func binding(_ header: FrameHeader) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: FrameHeader.size)
        bytes.withUnsafeMutableBytes { header.write(into: $0) }
        return Array(bytes[16..<40])
    }

    /// `payload` sealed for the frame `header` describes (its length and CRC are not bound:
    /// they describe the sealed bytes).
    func seal(_ payload: [UInt8], header: FrameHeader) throws -> [UInt8] {
        try Sealing.seal(payload, key: self.key, nonce: Self.nonce(header), binding: Self.binding(header))
    }

    /// The payload of a sealed frame, or nil when it fails authentication.
    func open(_ sealed: ArraySlice<UInt8>, header: FrameHeader) -> [UInt8]? {
        try? Sealing.open(sealed, key: self.key, nonce: Self.nonce(header), binding: Self.binding(header))
    }
}
