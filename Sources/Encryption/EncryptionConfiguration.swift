import Crypto
import SluiceCore

/// `<prefix>.encryption.*`: whether new data is encrypted, under which key, and which older
/// keys stay configured so that data written under them can still be read. The same four keys
/// serve the WAL (`wal.encryption`) and the Kafka payloads (`kafka.encryption`).
package struct EncryptionConfiguration: Sendable, Equatable {
    /// Encrypt what is written from now on. Off, the ring still reads what earlier runs
    /// encrypted, with the keys configured.
    package var enabled = false
    /// The current key's file (64 hex digits, mode 0600).
    package var keyFile: String?
    /// The current key's id, stored with everything written under it.
    package var keyID: String?
    /// Older keys, id → file, for data written before a rotation.
    package var previousKeys: [String: String] = [:]

    package init() {}

    /// The keys under `prefix` (`wal.encryption`).
    package static func keys(prefix: String) -> [ConfigurationKey<Self>] {
        [
            .boolean("\(prefix).enabled", \.enabled, help: "encrypt new data (AES-256-GCM)"),
            .string("\(prefix).key_file", \.keyFile, help: "the current key: 64 hex digits, mode 0600"),
            .string("\(prefix).key_id", \.keyID, help: "the current key's id, stored with the data"),
            ConfigurationKey(
                path: "\(prefix).previous_keys.*",
                kind: .string,
                help: "older keys still needed to read: id: file"
            ) { root, value, _ in
                root.previousKeys[value.subkey] = value.text
            },
        ]
    }

    /// The keys read from their files, or nil when none is configured. Refuses (naming the key
    /// and the file, never the content) encryption without a key or an id, an id that is not a
    /// plain name, and a key file that is missing, malformed or readable by others.
    package func keyring(prefix: String, origin: String = "configuration") throws(ConfigurationError) -> Keyring? {
        func refuse(_ message: String) -> ConfigurationError {
            ConfigurationError(description: "\(origin): \(message)")
        }
        if self.enabled && (self.keyFile == nil || self.keyID == nil) {
            throw refuse("\(prefix).enabled needs \(prefix).key_file and \(prefix).key_id")
        }
        if (self.keyFile == nil) != (self.keyID == nil) {
            throw refuse("\(prefix).key_file and \(prefix).key_id go together")
        }
        for id in [self.keyID].compactMap({ $0 }) + self.previousKeys.keys.sorted() where !Keyring.isValidID(id) {
            throw refuse("key id '\(id)' under \(prefix) must be 1 to 64 letters, digits, '.', '_' or '-'")
        }
        if let id = self.keyID, self.previousKeys[id] != nil {
            throw refuse("key id '\(id)' is both \(prefix).key_id and one of \(prefix).previous_keys")
        }
        var keys: [String: SymmetricKey] = [:]
        for (id, file) in self.previousKeys.sorted(by: { $0.key < $1.key }) {
            keys[id] = try Keyring.readKeyFile(file, key: "\(prefix).previous_keys.\(id)", origin: origin)
        }
        var current: (id: String, key: SymmetricKey)?
        if let file = self.keyFile, let id = self.keyID {
            current = (id, try Keyring.readKeyFile(file, key: "\(prefix).key_file", origin: origin))
        }
        guard let current else { return keys.isEmpty ? nil : Keyring(current: nil, previous: keys, prefix: prefix) }
        // Switched off, the current key only reads what earlier runs wrote under it.
        if !self.enabled {
            keys[current.id] = current.key
            return Keyring(current: nil, previous: keys, prefix: prefix)
        }
        return Keyring(current: current, previous: keys, prefix: prefix)
    }
}
