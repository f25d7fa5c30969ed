import Crypto
import Encryption
import SluiceCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The key files and key rings that `wal.encryption` and `kafka.encryption` share, and the
/// sealing both build on.
@Suite struct KeyringTests {
    @Test func aNewKeyFileIsOwnerOnlyReadableAndNeverOverwritten() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/wal.key"
        try Keyring.writeNewKeyFile(path)
        var info = stat()
        #expect(stat(path, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o600)
        let key = try Keyring.readKeyFile(path, key: "wal.encryption.key_file", origin: "test")
        #expect(key.bitCount == 256)
        let again = #expect(throws: ConfigurationError.self) { try Keyring.writeNewKeyFile(path) }
        #expect(again?.description.contains("exists already") == true)
        #expect(try Keyring.readKeyFile(path, key: "k", origin: "test") == key)
    }

    @Test func aMalformedOrOpenKeyFileIsRefusedWithoutItsContent() throws {
        let directory = try TemporaryDirectory()
        let short = directory.path + "/short.key"
        try writeFile(short, "abcdef0123secret\n", mode: 0o600)
        let malformed = #expect(throws: ConfigurationError.self) {
            try Keyring.readKeyFile(short, key: "wal.encryption.key_file", origin: "sluice.yaml")
        }
        #expect(malformed?.description.contains("is not a key (64 hexadecimal digits") == true)
        #expect(malformed?.description.contains("secret") == false)
        let open = directory.path + "/open.key"
        try writeFile(open, String(repeating: "ab", count: 32), mode: 0o644)
        let exposed = #expect(throws: ConfigurationError.self) {
            try Keyring.readKeyFile(open, key: "wal.encryption.key_file", origin: "sluice.yaml")
        }
        #expect(exposed?.description.contains("chmod 600") == true)
    }

    @Test func theConfigurationNamesWhatIsMissing() throws {
        let directory = try TemporaryDirectory()
        let current = directory.path + "/k2.key"
        let old = directory.path + "/k1.key"
        try Keyring.writeNewKeyFile(current)
        try Keyring.writeNewKeyFile(old)

        var configuration = EncryptionConfiguration()
        #expect(try configuration.keyring(prefix: "wal.encryption") == nil)
        configuration.enabled = true
        let noKey = #expect(throws: ConfigurationError.self) { try configuration.keyring(prefix: "wal.encryption") }
        #expect(noKey?.description.contains("wal.encryption.enabled needs wal.encryption.key_file") == true)
        configuration.keyFile = current
        configuration.keyID = "bad id"
        #expect(throws: ConfigurationError.self) { try configuration.keyring(prefix: "wal.encryption") }
        configuration.keyID = "k2"
        configuration.previousKeys = ["k1": old]
        let ring = try #require(try configuration.keyring(prefix: "wal.encryption"))
        #expect(ring.current?.id == "k2")
        #expect(ring.ids == ["k1", "k2"])
        let missing = #expect(throws: MissingKey.self) { try ring.key("k0") }
        #expect(
            missing?.description
                == "encryption key 'k0' is not configured: add its file to wal.encryption.previous_keys (or make it wal.encryption.key_id)"
        )

        // Switched off, the key still reads what was written under it, and nothing new is.
        configuration.enabled = false
        let reading = try #require(try configuration.keyring(prefix: "wal.encryption"))
        #expect(reading.current == nil)
        #expect(reading.ids == ["k1", "k2"])
    }

    @Test func aSealedRecordOpensOnlyWithItsKeyNonceAndBinding() throws {
        let keyEncryptionKey = SymmetricKey(size: .bits256)
        let (dataKey, wrapped) = try Sealing.newDataKey(wrappedBy: keyEncryptionKey, binding: [1, 2, 3])
        #expect(wrapped.count == Sealing.wrappedKeyBytes)
        #expect(try Sealing.unwrap(wrapped, with: keyEncryptionKey, binding: [1, 2, 3]) == dataKey)
        #expect(throws: (any Error).self) { try Sealing.unwrap(wrapped, with: keyEncryptionKey, binding: [1, 2, 4]) }
        #expect(throws: (any Error).self) {
            try Sealing.unwrap(wrapped, with: SymmetricKey(size: .bits256), binding: [1, 2, 3])
        }

        let plaintext = Array("a click on the banner".utf8)
        let sealed = try Sealing.seal(plaintext, key: dataKey, nonce: Sealing.nonce(counter: 42), binding: [42])
        #expect(sealed.count == plaintext.count + Sealing.tagBytes)
        #expect(try Sealing.open(sealed, key: dataKey, nonce: Sealing.nonce(counter: 42), binding: [42]) == plaintext)
        // Another LSN's nonce or binding (a swapped record), or one flipped bit, fails.
        #expect(throws: (any Error).self) {
            try Sealing.open(sealed, key: dataKey, nonce: Sealing.nonce(counter: 43), binding: [42])
        }
        #expect(throws: (any Error).self) {
            try Sealing.open(sealed, key: dataKey, nonce: Sealing.nonce(counter: 42), binding: [43])
        }
        var flipped = sealed
        flipped[3] ^= 0x01
        #expect(throws: (any Error).self) {
            try Sealing.open(flipped, key: dataKey, nonce: Sealing.nonce(counter: 42), binding: [42])
        }
    }

    private func writeFile(_ path: String, _ text: String, mode: mode_t) throws {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode)
        try #require(descriptor >= 0)
        defer { close(descriptor) }
        _ = text.withCString { write(descriptor, $0, strlen($0)) }
        fchmod(descriptor, mode)
    }
}
