import Encryption
import Foundation
import SluiceTestKit

/// Key files in a temporary directory (mode 0600, as `sluice encryption new-key` makes them),
/// for the tests of the Kafka payload envelope on both of its sides.
public struct KeyFiles: Sendable {
    public let directory: TemporaryDirectory

    public init() throws { self.directory = try TemporaryDirectory() }

    /// The file of key `id`, made on first use.
    public func path(_ id: String) throws -> String {
        let path = self.directory.path + "/\(id).key"
        if !FileManager.default.fileExists(atPath: path) { try Keyring.writeNewKeyFile(path) }
        return path
    }

    /// `kafka.encryption` on under `current` (or off, reading only, when nil), with `previous`
    /// still readable.
    package func configuration(current: String?, previous: [String] = []) throws -> EncryptionConfiguration {
        var configuration = EncryptionConfiguration()
        if let current {
            configuration.enabled = true
            configuration.keyFile = try self.path(current)
            configuration.keyID = current
        }
        for id in previous { configuration.previousKeys[id] = try self.path(id) }
        return configuration
    }

    package func keyring(current: String?, previous: [String] = []) throws -> Keyring? {
        try self.configuration(current: current, previous: previous).keyring(prefix: "kafka.encryption")
    }
}
