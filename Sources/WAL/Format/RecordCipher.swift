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
    /// OpenSSL contexts with the data key set up once: swift-crypto's one-shot seal expands
    /// the key and precomputes GHASH for every record.
    private let sealer: GCMContextPool
    private let opener: GCMContextPool

    init(keyID: String, key: SymmetricKey) {
        self.keyID = keyID
        self.sealer = GCMContextPool(key: key, encrypting: true)
        self.opener = GCMContextPool(key: key, encrypting: false)
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

    /// The writer tag (4 bytes) and the LSN (8 bytes), big-endian.
    static func nonce(_ header: FrameHeader) -> [UInt8] {
        Sealing.nonceBytes(counter: header.lsn.rawValue, prefix: UInt32(header.writerTag))
    }

    static func binding(_ header: FrameHeader) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: FrameHeader.size)
        bytes.withUnsafeMutableBytes { header.write(into: $0) }
        return Array(bytes[16..<40])
    }

    /// Writes `payload` sealed for the frame `header` describes to `output`: `payload.count`
    /// + 16 bytes (its length and CRC are not bound: they describe the sealed bytes). False
    /// when OpenSSL fails.
    func seal(_ payload: UnsafeRawBufferPointer, header: FrameHeader, into output: UnsafeMutablePointer<UInt8>) -> Bool
    {
        let nonce = Self.nonce(header)
        let binding = Self.binding(header)
        return self.sealer.withContext { context in
            nonce.withUnsafeBufferPointer { nonce in
                context.seal(nonce: nonce.baseAddress!, additionalData: binding, plaintext: payload, into: output)
            }
        } ?? false
    }

    /// The payload of a sealed frame, or nil when it fails authentication.
    func open(_ sealed: ArraySlice<UInt8>, header: FrameHeader) -> [UInt8]? {
        guard sealed.count >= Sealing.tagBytes else { return nil }
        let nonce = Self.nonce(header)
        let binding = Self.binding(header)
        let count = sealed.count - Sealing.tagBytes
        var plain = [UInt8](repeating: 0, count: max(count, 1))
        let opened = sealed.withUnsafeBufferPointer { bytes in
            plain.withUnsafeMutableBufferPointer { output in
                nonce.withUnsafeBufferPointer { nonce in
                    self.opener.withContext { context in
                        context.open(
                            nonce: nonce.baseAddress!,
                            additionalData: binding,
                            ciphertext: UnsafeBufferPointer(rebasing: bytes[0..<count]),
                            tag: bytes.baseAddress! + count,
                            into: output.baseAddress!
                        )
                    }
                }
            }
        }
        guard opened == true else { return nil }
        plain.removeLast(plain.count - count)
        return plain
    }
}
