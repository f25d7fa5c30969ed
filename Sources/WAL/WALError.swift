#if canImport(Glibc)
import Glibc
#endif

/// The one error type of the WAL module.
///
/// Every error carries a ``Code`` callers can switch on, a message written for the operator,
/// the `errno` of a failed system call when there was one, an optional underlying cause, and
/// the source location that raised it.
public struct WALError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, as a stable machine-readable code.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: String, Hashable, Sendable {
            case io, diskFull, overloaded, closed, locked, recordTooLarge, invalidArgument, missingKey
            case corruptSegment, notFound, fsyncFailed, timedOut
        }
        private let value: Value
        private init(_ value: Value) { self.value = value }

        /// A system call failed (see ``WALError/errno``).
        public static let io = Code(.io)
        /// The disk or the WAL budget is full; the append was not written. Retry later.
        public static let diskFull = Code(.diskFull)
        /// More bytes are queued than the WAL accepts; the append was not written. Retry later.
        public static let overloaded = Code(.overloaded)
        /// The WAL is closed or closing.
        public static let closed = Code(.closed)
        /// Another process holds the WAL directory's lock.
        public static let locked = Code(.locked)
        /// A record is larger than the configured maximum.
        public static let recordTooLarge = Code(.recordTooLarge)
        /// A caller passed a value the WAL cannot use.
        public static let invalidArgument = Code(.invalidArgument)
        /// A segment is encrypted under a key that is not configured (`wal.encryption`).
        public static let missingKey = Code(.missingKey)
        /// A segment's header or structure cannot be read.
        public static let corruptSegment = Code(.corruptSegment)
        /// A file, cursor or LSN does not exist.
        public static let notFound = Code(.notFound)
        /// `fdatasync` failed: the batch is not durable and its segment was abandoned.
        public static let fsyncFailed = Code(.fsyncFailed)
        /// The write was handed to the disk but not confirmed within the acknowledgement
        /// deadline (``WALConfiguration/ackTimeout``): it may or may not be durable. Retry;
        /// downstream deduplicates.
        public static let timedOut = Code(.timedOut)

        public var description: String { self.value.rawValue }
    }

    public var code: Code
    public var message: String
    /// The `errno` of the failed system call, if any.
    public var errno: Int32?
    public var cause: (any Error & Sendable)?
    public var file: String
    public var line: Int

    public init(
        _ code: Code,
        _ message: String,
        errno: Int32? = nil,
        cause: (any Error & Sendable)? = nil,
        file: String = #fileID,
        line: Int = #line
    ) {
        self.code = code
        self.message = message
        self.errno = errno
        self.cause = cause
        self.file = file
        self.line = line
    }

    /// Whether retrying the same operation later can succeed (full disk, overload, I/O hiccup).
    public var isRetriable: Bool {
        switch self.code {
        case .diskFull, .overloaded, .io, .fsyncFailed, .timedOut: return true
        default: return false
        }
    }

    public var description: String {
        var text = "WALError(\(self.code)): \(self.message)"
        if let errno = self.errno { text += " (errno \(errno): \(String(cString: strerror(errno))))" }
        if let cause = self.cause { text += "; cause: \(cause)" }
        return text
    }

    /// Builds an error from the current `errno` after a failed system call, mapping ENOSPC
    /// and EDQUOT to ``Code/diskFull``.
    static func syscall(
        _ name: String,
        path: String,
        errno: Int32,
        file: String = #fileID,
        line: Int = #line
    ) -> WALError {
        let code: Code = (errno == ENOSPC || errno == EDQUOT) ? .diskFull : .io
        return WALError(code, "\(name) failed on \(path)", errno: errno, file: file, line: line)
    }
}
