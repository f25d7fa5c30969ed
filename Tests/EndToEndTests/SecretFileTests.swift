import ClickHouse
import Foundation
import TestSupport
import Testing

@testable import SluiceCommands

/// `clickhouse.password_file`: a password from a file the operator alone can read, never from
/// the command line, never in an error.
@Suite struct SecretFileTests {
    static let secret = "s3cr3t-NEVER-PRINTED"

    func passwordFile(mode: Int, content: String = Self.secret + "\n") throws -> (TemporaryDirectory, String) {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/clickhouse.password"
        try Data(content.utf8).write(to: URL(fileURLWithPath: path))
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
        return (directory, path)
    }

    @Test func thePasswordIsReadFromAFileOnlyItsOwnerCanRead() throws {
        let (directory, path) = try self.passwordFile(mode: 0o600)
        _ = directory
        let settings = try SettingsLoader.load(file: nil, environment: ["SLUICE_CLICKHOUSE_PASSWORD_FILE": path])
        #expect(settings.clickHouse.password == Self.secret, "the trailing line break is not part of it")
        #expect(settings.clickHouse.passwordFile == path)
        // `sluice config check` shows neither the password nor, as a secret key, the path.
        #expect(!settings.applied.contains { $0.value.contains(Self.secret) })
    }

    @Test func aFileOthersCanReadIsRefusedWithoutShowingItsContent() throws {
        let (directory, path) = try self.passwordFile(mode: 0o644)
        _ = directory
        #expect {
            _ = try SettingsLoader.load(file: nil, environment: ["SLUICE_CLICKHOUSE_PASSWORD_FILE": path])
        } throws: { error in
            let text = "\(error)"
            return text.contains("clickhouse.password_file") && text.contains("mode 644")
                && text.contains("chmod 600") && !text.contains(Self.secret)
        }
    }

    @Test func aMissingOrEmptyFileIsNamed() throws {
        #expect {
            _ = try SettingsLoader.load(
                file: nil,
                environment: ["SLUICE_CLICKHOUSE_PASSWORD_FILE": "/nonexistent/clickhouse.password"]
            )
        } throws: { "\($0)".contains("/nonexistent/clickhouse.password") && "\($0)".contains("cannot be read") }
        let (directory, path) = try self.passwordFile(mode: 0o600, content: "\n")
        _ = directory
        #expect {
            _ = try SettingsLoader.load(file: nil, environment: ["SLUICE_CLICKHOUSE_PASSWORD_FILE": path])
        } throws: { "\($0)".contains("is empty") }
    }

    @Test func aPasswordAndAPasswordFileTogetherAreRefusedWithoutTheValue() throws {
        let (directory, path) = try self.passwordFile(mode: 0o600)
        _ = directory
        #expect {
            _ = try SettingsLoader.load(
                file: nil,
                environment: [
                    "SLUICE_CLICKHOUSE_PASSWORD": "inline-NEVER-PRINTED", "SLUICE_CLICKHOUSE_PASSWORD_FILE": path,
                ]
            )
        } throws: { error in
            let text = "\(error)"
            return text.contains("not both") && !text.contains("inline-NEVER-PRINTED") && !text.contains(Self.secret)
        }
    }
}
