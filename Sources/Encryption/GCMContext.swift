import COpenSSLCrypto
import Crypto
import Synchronization

/// AES-256-GCM cipher contexts set up with one key, for one caller at a time each.
///
/// swift-crypto's one-shot `AES.GCM.seal` expands the key and precomputes GHASH for every
/// message, which cost more than the rest of the envelope together (3 µs of ~5 µs per
/// 500-byte event); a context kept per data key only takes a new nonce per message.
package final class GCMContextPool: Sendable {
    private let key: SymmetricKey
    private let encrypting: Bool
    /// Contexts not in use: one caller at a time uses a context.
    private let idle = Mutex<[GCMContext]>([])

    package init(key: SymmetricKey, encrypting: Bool) {
        self.key = key
        self.encrypting = encrypting
    }

    /// Runs `body` with a context of this key to itself; nil when OpenSSL cannot make one.
    package func withContext<R>(_ body: (GCMContext) throws -> R) rethrows -> R? {
        let context = self.idle.withLock { $0.popLast() } ?? GCMContext(key: self.key, encrypting: self.encrypting)
        guard let context else { return nil }
        defer { self.idle.withLock { $0.append(context) } }
        return try body(context)
    }
}

/// One OpenSSL AES-256-GCM cipher context, its key set once. Not thread-safe: ``GCMContextPool``
/// hands it to one caller at a time (hence `@unchecked Sendable`).
package final class GCMContext: @unchecked Sendable {
    private let context: OpaquePointer

    package init?(key: SymmetricKey, encrypting: Bool) {
        guard let context = EVP_CIPHER_CTX_new() else { return nil }
        self.context = context
        let ready = key.withUnsafeBytes { bytes in
            let key = bytes.bindMemory(to: UInt8.self).baseAddress
            return encrypting
                ? EVP_EncryptInit_ex(context, EVP_aes_256_gcm(), nil, key, nil)
                : EVP_DecryptInit_ex(context, EVP_aes_256_gcm(), nil, key, nil)
        }
        guard ready == 1 else { return nil }
    }

    deinit { EVP_CIPHER_CTX_free(self.context) }

    /// Writes the ciphertext of `plaintext` and then the tag to `output` (`plaintext.count` +
    /// 16 bytes). False when OpenSSL fails (nothing usable was written).
    package func seal(
        nonce: UnsafePointer<UInt8>,
        additionalData: [UInt8],
        plaintext: UnsafeRawBufferPointer,
        into output: UnsafeMutablePointer<UInt8>
    ) -> Bool {
        var written: Int32 = 0
        var final: Int32 = 0
        guard EVP_EncryptInit_ex(self.context, nil, nil, nil, nonce) == 1,
            EVP_EncryptUpdate(self.context, nil, &written, additionalData, Int32(additionalData.count)) == 1,
            EVP_EncryptUpdate(
                self.context,
                output,
                &written,
                plaintext.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? UnsafePointer(output),
                Int32(plaintext.count)
            ) == 1,
            EVP_EncryptFinal_ex(self.context, output + Int(written), &final) == 1,
            Int(written + final) == plaintext.count
        else { return false }
        return EVP_CIPHER_CTX_ctrl(self.context, EVP_CTRL_GCM_GET_TAG, 16, output + plaintext.count) == 1
    }

    /// Writes the plaintext of `ciphertext` to `output` and checks `tag`: false when the tag,
    /// the nonce, the additional data or the key differ from the sealing ones.
    package func open(
        nonce: UnsafePointer<UInt8>,
        additionalData: [UInt8],
        ciphertext: UnsafeBufferPointer<UInt8>,
        tag: UnsafePointer<UInt8>,
        into output: UnsafeMutablePointer<UInt8>
    ) -> Bool {
        var written: Int32 = 0
        var final: Int32 = 0
        guard EVP_DecryptInit_ex(self.context, nil, nil, nil, nonce) == 1,
            EVP_DecryptUpdate(self.context, nil, &written, additionalData, Int32(additionalData.count)) == 1,
            EVP_DecryptUpdate(
                self.context,
                output,
                &written,
                ciphertext.baseAddress ?? UnsafePointer(output),
                Int32(ciphertext.count)
            ) == 1,
            EVP_CIPHER_CTX_ctrl(self.context, EVP_CTRL_GCM_SET_TAG, 16, UnsafeMutableRawPointer(mutating: tag)) == 1
        else { return false }
        return EVP_DecryptFinal_ex(self.context, output + Int(written), &final) == 1
            && Int(written + final) == ciphertext.count
    }
}
