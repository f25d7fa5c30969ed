import Crypto
import Foundation

/// AES-256-GCM as Sluice uses it: a fresh data key per unit (a WAL segment, a Kafka message
/// batch) wrapped by a key-encryption key from the ``Keyring``, and records sealed under the
/// data key with additional data that binds them to where they belong, so a record moved,
/// swapped or flipped fails authentication instead of being read as another.
package enum Sealing {
    /// Bytes of a wrapped data key: a 12-byte nonce, the 32-byte key sealed, a 16-byte tag.
    package static let wrappedKeyBytes = 12 + 32 + 16
    /// Bytes a sealed record adds to its plaintext: the 16-byte tag (the nonce is derived, not
    /// stored, where the caller has a unique counter; see ``seal(_:key:nonce:binding:)``).
    package static let tagBytes = 16

    /// A new random data key, and that key wrapped by `keyEncryptionKey` with `binding` as
    /// additional data (a segment's first LSN and key id, so a header cannot be grafted onto
    /// another segment).
    package static func newDataKey(
        wrappedBy keyEncryptionKey: SymmetricKey,
        binding: [UInt8]
    ) throws -> (
        key: SymmetricKey, wrapped: [UInt8]
    ) {
        let dataKey = SymmetricKey(size: .bits256)
        let sealed = try dataKey.withUnsafeBytes { bytes in
            try AES.GCM.seal(bytes, using: keyEncryptionKey, nonce: AES.GCM.Nonce(), authenticating: binding)
        }
        return (dataKey, Array(sealed.nonce) + Array(sealed.ciphertext) + Array(sealed.tag))
    }

    /// The data key inside `wrapped`, or an error when the key-encryption key or the binding is
    /// not the one it was wrapped with.
    package static func unwrap(
        _ wrapped: some Collection<UInt8>,
        with keyEncryptionKey: SymmetricKey,
        binding: [UInt8]
    )
        throws -> SymmetricKey
    {
        let bytes = Array(wrapped)
        guard bytes.count == Self.wrappedKeyBytes else { throw CryptoKitError.incorrectParameterSize }
        let box = try AES.GCM.SealedBox(
            nonce: AES.GCM.Nonce(data: bytes[0..<12]),
            ciphertext: bytes[12..<44],
            tag: bytes[44..<60]
        )
        return SymmetricKey(data: try AES.GCM.open(box, using: keyEncryptionKey, authenticating: binding))
    }

    /// A 12-byte nonce from a counter unique under one data key (a WAL record's LSN; each
    /// segment has its own key) and a prefix that tells apart the runs that may count the same
    /// numbers again (a WAL writer run's tag).
    package static func nonce(counter: UInt64, prefix: UInt32 = 0) -> AES.GCM.Nonce {
        // A 12-byte array always makes a nonce.
        (try? AES.GCM.Nonce(data: Self.nonceBytes(counter: counter, prefix: prefix))) ?? AES.GCM.Nonce()
    }

    /// The 12 bytes of ``nonce(counter:prefix:)``: the prefix (4 bytes) and the counter (8),
    /// big-endian, for ciphers that take the nonce as bytes.
    package static func nonceBytes(counter: UInt64, prefix: UInt32 = 0) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 12)
        for index in 0..<4 { bytes[index] = UInt8(truncatingIfNeeded: prefix >> (24 - 8 * index)) }
        for index in 0..<8 { bytes[4 + index] = UInt8(truncatingIfNeeded: counter >> (56 - 8 * index)) }
        return bytes
    }

    /// `plaintext` sealed under `key`: ciphertext followed by the tag (the nonce is not
    /// stored: the caller derives it again from its counter).
    package static func seal(
        _ plaintext: [UInt8],
        key: SymmetricKey,
        nonce: AES.GCM.Nonce,
        binding: [UInt8]
    )
        throws -> [UInt8]
    {
        let box = try AES.GCM.seal(plaintext, using: key, nonce: nonce, authenticating: binding)
        return Array(box.ciphertext) + Array(box.tag)
    }

    /// The plaintext of `sealed` (ciphertext and tag), or an error when it, the key, the nonce
    /// or the binding differ from what was sealed.
    package static func open(
        _ sealed: some Collection<UInt8>,
        key: SymmetricKey,
        nonce: AES.GCM.Nonce,
        binding: [UInt8]
    )
        throws -> [UInt8]
    {
        let bytes = Array(sealed)
        guard bytes.count >= Self.tagBytes else { throw CryptoKitError.incorrectParameterSize }
        let box = try AES.GCM.SealedBox(
            nonce: nonce,
            ciphertext: bytes[..<(bytes.count - Self.tagBytes)],
            tag: bytes[(bytes.count - Self.tagBytes)...]
        )
        return Array(try AES.GCM.open(box, using: key, authenticating: binding))
    }
}
