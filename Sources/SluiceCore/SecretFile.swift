#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A secret read from a file (`clickhouse.password_file`): the way to hand Sluice a password
/// without putting it on a command line (visible in `ps`) or in the configuration file.
package enum SecretFile {
    /// The file's content without its trailing line break. Refuses — with the path and the
    /// reason, never the content — a file that is missing, not a regular file, empty, larger
    /// than 64 KiB, or readable or writable by group or others (a secret anyone on the host
    /// can read is not one; `chmod 600` it).
    package static func read(_ path: String, key: String, origin: String) throws(ConfigurationError) -> String {
        func refuse(_ reason: String) -> ConfigurationError {
            ConfigurationError(description: "\(origin): \(key) = '\(path)': \(reason)")
        }
        let info = try Self.ownerOnly(path, key: key, origin: origin)
        guard info.st_size <= 64 << 10 else { throw refuse("is larger than 64 KiB: not a password") }
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw refuse("cannot be read (\(String(cString: strerror(errno))))") }
        defer { close(descriptor) }
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size) + 1)
        let count = bytes.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
        guard count >= 0 else { throw refuse("cannot be read (\(String(cString: strerror(errno))))") }
        var secret = bytes.prefix(count)
        while let last = secret.last, last == UInt8(ascii: "\n") || last == UInt8(ascii: "\r") {
            secret.removeLast()
        }
        guard !secret.isEmpty else { throw refuse("is empty") }
        guard let text = String(validating: secret, as: UTF8.self) else { throw refuse("is not UTF-8 text") }
        return text
    }

    /// The file's status, once it is known to be a regular file that only its owner may open
    /// (a private key, a password); otherwise an error with the path and the reason.
    @discardableResult
    package static func ownerOnly(_ path: String, key: String, origin: String) throws(ConfigurationError) -> stat {
        func refuse(_ reason: String) -> ConfigurationError {
            ConfigurationError(description: "\(origin): \(key) = '\(path)': \(reason)")
        }
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw refuse("cannot be read (\(String(cString: strerror(errno))))")
        }
        guard info.st_mode & S_IFMT == S_IFREG else { throw refuse("is not a regular file") }
        let mode = info.st_mode & 0o777
        guard mode & 0o077 == 0 else {
            throw refuse(
                "is open to group or others (mode \(String(mode, radix: 8))): chmod 600 it, as its owner"
            )
        }
        return info
    }
}
