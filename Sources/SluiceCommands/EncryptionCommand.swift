import ArgumentParser
import Encryption
import SluiceCore

/// `sluice encryption …`: the keys of `wal.encryption` (and of any other store that uses the
/// same key files).
struct EncryptionCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encryption",
        abstract: "Make keys for encryption at rest (wal.encryption).",
        subcommands: [NewKey.self]
    )

    struct NewKey: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "new-key",
            abstract: "Write a new random 256-bit key to FILE (mode 0600; an existing file is never replaced).",
            discussion: """
                The file holds 64 hexadecimal digits. Name the key with an id of your choice in the
                configuration (wal.encryption.key_id); the id is stored with everything written under the key.
                Keep a copy where you keep other secrets: data written under a lost key cannot be read.
                """
        )

        @Argument(help: "The file to create.")
        var file: String

        func run() async throws {
            do {
                try Keyring.writeNewKeyFile(self.file)
            } catch {
                printError("sluice: \(error.description)")
                throw ExitCode(2)
            }
            print("wrote a new key to \(self.file) (mode 0600)")
        }
    }
}
