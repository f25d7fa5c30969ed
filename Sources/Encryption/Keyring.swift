import Crypto
import SluiceCore

#if canImport(Glibc)
import Glibc
#endif

/// The key-encryption keys one encrypted store (the WAL, the Kafka payloads) is configured
/// with: the current one, which new data is written under, and the previous ones, which old
/// data stays readable with until it has aged out.
///
/// A key is 32 random bytes kept as 64 hexadecimal digits in a file only its owner may read
/// (`sluice encryption new-key FILE`, or `openssl rand -hex 32`), named by an id of the
/// operator's choosing. The id travels with the data (in a segment header, a Kafka header), so
/// a reader finds the right key, and a key that is missing is named in the error.
package struct Keyring: Sendable {
    /// The key new data is written under; nil when encryption is off and the ring only reads.
    package let current: (id: String, key: SymmetricKey)?
    private let keys: [String: SymmetricKey]
    /// Where the keys were configured (`wal.encryption`), for errors that say what to add.
    package let prefix: String

    package init(current: (id: String, key: SymmetricKey)?, previous: [String: SymmetricKey], prefix: String) {
        self.current = current
        var keys = previous
        if let current { keys[current.id] = current.key }
        self.keys = keys
        self.prefix = prefix
    }

    /// Every configured key id, sorted.
    package var ids: [String] { self.keys.keys.sorted() }

    /// The key named `id`, or an error that names it and says where it belongs.
    package func key(_ id: String) throws(MissingKey) -> SymmetricKey {
        guard let key = self.keys[id] else { throw MissingKey(id: id, prefix: self.prefix) }
        return key
    }

    /// 1 to 64 characters of letters, digits, `.`, `_` and `-`: it goes into file headers and
    /// Kafka headers, and into error messages.
    package static func isValidID(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= Self.maximumIDBytes
            && id.utf8.allSatisfy { byte in
                (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                    || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
            }
    }

    package static let maximumIDBytes = 64

    /// Reads a key file: 64 hexadecimal digits (a trailing line break allowed), in a regular
    /// file only its owner may read. Errors name the key and the file, never the content.
    package static func readKeyFile(
        _ path: String,
        key: String,
        origin: String
    ) throws(ConfigurationError)
        -> SymmetricKey
    {
        let text = try SecretFile.read(path, key: key, origin: origin)
        guard let bytes = Hex.decode(text), bytes.count == 32 else {
            throw ConfigurationError(
                description:
                    "\(origin): \(key) = '\(path)': is not a key (64 hexadecimal digits, 32 random bytes; "
                    + "make one with `sluice encryption new-key FILE`)"
            )
        }
        return SymmetricKey(data: bytes)
    }

    /// Writes a new random key to `path` (mode 0600), refusing to replace an existing file:
    /// overwriting a key would make everything written under it unreadable.
    package static func writeNewKeyFile(_ path: String) throws(ConfigurationError) {
        let key = SymmetricKey(size: .bits256)
        let hex = key.withUnsafeBytes { Hex.encode($0) } + "\n"
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            let reason =
                errno == EEXIST ? "exists already (a key is never overwritten)" : String(cString: strerror(errno))
            throw ConfigurationError(description: "\(path): \(reason)")
        }
        defer { close(descriptor) }
        let written = hex.utf8CString.withUnsafeBufferPointer { write(descriptor, $0.baseAddress, hex.utf8.count) }
        guard written == hex.utf8.count, fsync(descriptor) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(path)
            throw ConfigurationError(description: "\(path): cannot be written (\(reason))")
        }
    }

}

/// Data written under a key the reader was not given.
package struct MissingKey: Error, Equatable, CustomStringConvertible {
    package let id: String
    package let prefix: String
    package var description: String {
        "encryption key '\(self.id)' is not configured: add its file to \(self.prefix).previous_keys (or make it \(self.prefix).key_id)"
    }
}
