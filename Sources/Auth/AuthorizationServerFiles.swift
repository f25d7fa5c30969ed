import Foundation

#if canImport(Glibc)
// `stat` is seen through CoreFoundation as well once other files of the module import it.
import CoreFoundation
import Glibc
#endif

/// Why the built-in authorization server, its signing key or its clients file cannot be used.
///
/// The message names the file and what to do about it; it never contains a key, a secret or a
/// digest.
public struct AuthorizationServerError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// A setting is unusable (the issuer is not an http(s) URL without a path, the TTL is not positive).
        case invalidConfiguration = "invalid_configuration"
        /// The signing key file is readable by group or other.
        case insecureKeyFile = "insecure_key_file"
        /// The signing key file is not a PEM Ed25519 or P-256 private key.
        case unreadableKey = "unreadable_key"
        /// The clients file is not the JSON this server writes.
        case unreadableClients = "unreadable_clients"
        /// A client name is not allowed, already taken, or unknown.
        case invalidClient = "invalid_client"
        /// A system call failed.
        case io = "io"
    }

    public var code: Code
    public var message: String
    /// The file concerned, if any.
    public var path: String?
    /// `errno` of the failed system call, if any.
    public var errno: Int32?

    public init(_ code: Code, _ message: String, path: String? = nil, errno: Int32? = nil) {
        self.code = code
        self.message = message
        self.path = path
        self.errno = errno
    }

    public var description: String {
        guard let errno else { return self.message }
        return self.message + ": " + String(cString: strerror(errno))
    }
}

/// Small files the authorization server owns (its signing key, its clients): written whole or
/// not at all, private to the owner.
enum AuthorizationServerFile {
    /// Writes `bytes` to `path` so that a crash leaves the old file or the new one, never a mix:
    /// a temporary file beside it (mode 0600) is fsync'd, renamed over `path`, and the directory
    /// fsync'd so that the rename itself survives a power cut.
    ///
    /// With `exclusive`, `path` must not exist yet: the temporary file is linked instead of
    /// renamed, so that of two processes creating the file at once exactly one wins, and the
    /// loser learns it (`EEXIST`) instead of silently replacing the winner's file.
    static func write(_ bytes: [UInt8], to path: String, exclusive: Bool = false) throws {
        let temporary = path + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw self.failure("cannot create", temporary, errno) }
        var linked = false
        defer { if !linked || exclusive { unlink(temporary) } }
        do {
            defer { close(fd) }
            // The umask can only narrow the mode; fchmod pins it in case the file system ignores it.
            guard fchmod(fd, 0o600) == 0 else { throw self.failure("cannot chmod", temporary, errno) }
            var offset = 0
            while offset < bytes.count {
                let written = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
                if written < 0 {
                    if errno == EINTR { continue }
                    throw self.failure("cannot write", temporary, errno)
                }
                offset += written
            }
            guard fsync(fd) == 0 else { throw self.failure("cannot fsync", temporary, errno) }
        }
        if exclusive {
            guard link(temporary, path) == 0 else { throw self.failure("cannot create", path, errno) }
        } else {
            guard rename(temporary, path) == 0 else { throw self.failure("cannot replace", path, errno) }
        }
        linked = true
        try self.syncDirectory(of: path)
    }

    static func syncDirectory(of path: String) throws {
        let directory = (path as NSString).deletingLastPathComponent
        let fd = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw self.failure("cannot open the directory of", path, errno) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw self.failure("cannot fsync the directory of", path, errno) }
    }

    /// The file's identity and version: a change to any of these means it was replaced or edited.
    struct Stamp: Equatable, Sendable {
        var device: UInt64
        var inode: UInt64
        var size: Int64
        var modifiedNanos: Int64
    }

    /// The stamp and permission bits of `path`; nil if it does not exist.
    static func inspect(_ path: String) throws -> (stamp: Stamp, mode: UInt32)? {
        var info = stat()
        guard stat(path, &info) == 0 else {
            if errno == ENOENT { return nil }
            throw self.failure("cannot stat", path, errno)
        }
        let stamp = Stamp(
            device: UInt64(info.st_dev),
            inode: UInt64(info.st_ino),
            size: Int64(info.st_size),
            modifiedNanos: Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
        )
        return (stamp, UInt32(info.st_mode) & 0o7777)
    }

    /// The whole file, refusing anything larger than `maxBytes`.
    static func read(_ path: String, maxBytes: Int) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw self.failure("cannot open", path, errno) }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw self.failure("cannot read", path, errno)
            }
            if count == 0 { return bytes }
            bytes += chunk[0..<count]
            guard bytes.count <= maxBytes else {
                throw AuthorizationServerError(.io, "\(path) is larger than \(maxBytes) bytes", path: path)
            }
        }
    }

    /// Runs `body` holding an exclusive `flock` on `path + ".lock"`, so that two `sluice oauth`
    /// commands editing one clients file do not lose each other's change.
    static func withLock<T>(beside path: String, _ body: () throws -> T) throws -> T {
        let lockPath = path + ".lock"
        let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw self.failure("cannot open the lock file", lockPath, errno) }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else { throw self.failure("cannot lock", lockPath, errno) }
        }
        return try body()
    }

    static func failure(_ what: String, _ path: String, _ code: Int32) -> AuthorizationServerError {
        AuthorizationServerError(.io, "\(what) \(path)", path: path, errno: code)
    }
}

/// Byte helpers of the authorization server, in a namespace of their own so that they cannot
/// collide with other parts of the Auth module.
enum AuthorizationServerBytes {
    /// base64url without padding (RFC 7515 §2).
    static func base64URL<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    /// `count` bytes from the system's cryptographically secure generator (getrandom on Linux).
    static func random(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    /// Lower-case hexadecimal.
    static func hex<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var result: [UInt8] = []
        for byte in bytes {
            result.append(digits[Int(byte >> 4)])
            result.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: result, as: UTF8.self)
    }

    /// Compares two byte strings in time that depends only on their lengths.
    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for index in a.indices { difference |= a[index] ^ b[index] }
        return difference == 0
    }
}
