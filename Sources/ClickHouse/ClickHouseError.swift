/// The one error type of the ClickHouse module.
///
/// Callers decide with two questions. ``isRetriable``: can the same request succeed later
/// (server down, overloaded, too many parts, timeout)? Then back off and retry without
/// committing anything. ``isDataError``: did the server refuse the inserted rows themselves
/// (a value it cannot parse or convert, a field the table lacks)? Then splitting the batch
/// isolates the bad rows. An error that is neither (unknown table, syntax, authentication)
/// concerns the statement or the setup and fails for every row alike.
///
/// The password of the configuration never appears in ``message`` or ``description``.
public struct ClickHouseError: Error, Sendable, CustomStringConvertible {
    /// Where the failure happened, as a stable machine-readable value.
    public struct Kind: Hashable, Sendable, CustomStringConvertible {
        private enum Value: String, Hashable, Sendable {
            case server, httpStatus, transport, timedOut, invalidResponse, invalidRequest
        }
        private let value: Value
        private init(_ value: Value) { self.value = value }

        /// ClickHouse answered with an exception (``ClickHouseError/code`` is set).
        public static let server = Kind(.server)
        /// An HTTP error status without a ClickHouse exception, e.g. from a proxy.
        public static let httpStatus = Kind(.httpStatus)
        /// No response: connection refused or reset, TLS handshake failed, name not resolved.
        public static let transport = Kind(.transport)
        /// No complete response within ``ClickHouseConfiguration/timeout``. An insert may or
        /// may not have been applied.
        public static let timedOut = Kind(.timedOut)
        /// The response was larger than allowed or not what ClickHouse sends.
        public static let invalidResponse = Kind(.invalidResponse)
        /// The request could not be made: malformed URL, client shut down, compression failed.
        public static let invalidRequest = Kind(.invalidRequest)

        public var description: String { self.value.rawValue }
    }

    public var kind: Kind
    /// ClickHouse's exception code (`Code: 60` in the body, or the `X-ClickHouse-Exception-Code`
    /// header of newer servers); `nil` when the server did not send one.
    public var code: Int?
    /// The HTTP status of the response; `nil` when there was none (connection refused, timeout).
    public var httpStatus: Int?
    /// What went wrong, for an operator: the server's exception text without its boilerplate.
    public var message: String
    /// Retrying the same request later can succeed. See the type's documentation.
    public var isRetriable: Bool
    /// The error that caused this one (from the HTTP client, TLS, compression), if any.
    public var cause: (any Error & Sendable)?
    public var file: String
    public var line: Int

    /// An error; ``isRetriable`` is derived from the kind, code and status.
    public init(
        _ kind: Kind,
        code: Int? = nil,
        httpStatus: Int? = nil,
        message: String,
        cause: (any Error & Sendable)? = nil,
        file: String = #fileID,
        line: Int = #line
    ) {
        self.kind = kind
        self.code = code
        self.httpStatus = httpStatus
        self.message = message
        self.isRetriable = Self.isRetriable(kind: kind, code: code, httpStatus: httpStatus)
        self.cause = cause
        self.file = file
        self.line = line
    }

    /// ClickHouse's symbolic name of ``code`` (`UNKNOWN_TABLE`), for the codes this module knows.
    public var codeName: String? { self.code.flatMap { Self.codeNames[$0] } }

    /// The server refused the inserted data itself, not the statement: some rows cannot be
    /// parsed or converted to the column types, or carry a field the table does not have.
    public var isDataError: Bool { self.code.map { Self.dataCodes.contains($0) } ?? false }

    public var description: String {
        var text = "ClickHouseError(\(self.kind)"
        if let code = self.code { text += ", code \(code)" + (self.codeName.map { " \($0)" } ?? "") }
        if let status = self.httpStatus { text += ", HTTP \(status)" }
        text += "): \(self.message)"
        text += self.isRetriable ? " [retriable]" : " [permanent]"
        if let cause = self.cause { text += "; cause: \(cause)" }
        return text
    }

    // MARK: - Classification

    static func isRetriable(kind: Kind, code: Int?, httpStatus: Int?) -> Bool {
        switch kind {
        case .transport, .timedOut: return true
        case .invalidRequest, .invalidResponse: return false
        default: break
        }
        if let code {
            if Self.retriableCodes.contains(code) { return true }
            if Self.dataCodes.contains(code) || Self.statementCodes.contains(code) { return false }
        }
        // An exception this module does not know: trust the status. ClickHouse 18.16 answers
        // 500 for most exceptions, data errors included, which is why the sets above are long.
        guard let status = httpStatus else { return true }
        return status >= 500 || status == 408 || status == 429
    }

    /// Conditions that pass: overload, memory, merges behind, replicas or Keeper away, network.
    static let retriableCodes: Set<Int> = [
        23, 24, 95, 96, 159, 160, 173, 201, 202, 203, 209, 210, 225, 236, 241, 242, 243, 244, 252, 279, 285, 286, 289,
        319, 335, 364, 369, 394, 415, 425, 439, 473, 999,
    ]

    /// The rows are at fault: parsing and conversion failures while reading the inserted data.
    static let dataCodes: Set<Int> = [
        6, 19, 21, 22, 25, 26, 27, 32, 33, 38, 41, 53, 69, 70, 72, 117, 128, 130, 131, 190, 321, 349, 376, 407, 441,
        467, 469,
    ]

    /// The statement or the setup is at fault and will fail again unchanged: syntax, unknown
    /// names, types, access, settings, a body the server cannot decompress.
    static let statementCodes: Set<Int> = [
        1, 2, 7, 8, 10, 15, 16, 20, 34, 35, 36, 42, 43, 44, 46, 47, 48, 50, 51, 52, 56, 57, 60, 62, 63, 73, 80, 81, 82,
        89, 108, 113, 115, 158, 161, 162, 164, 167, 168, 181, 184, 192, 193, 194, 195, 215, 218, 219, 229, 271, 291,
        307, 344, 354, 386, 395, 396, 452, 471, 472, 497, 516,
    ]

    /// Names from ClickHouse's `src/Common/ErrorCodes.cpp` for the codes classified above.
    static let codeNames: [Int: String] = [
        1: "UNSUPPORTED_METHOD", 2: "UNSUPPORTED_PARAMETER", 6: "CANNOT_PARSE_TEXT",
        7: "INCORRECT_NUMBER_OF_COLUMNS", 8: "THERE_IS_NO_COLUMN", 10: "NOT_FOUND_COLUMN_IN_BLOCK",
        15: "DUPLICATE_COLUMN", 16: "NO_SUCH_COLUMN_IN_TABLE", 19: "SIZE_OF_FIXED_STRING_DOESNT_MATCH",
        20: "NUMBER_OF_COLUMNS_DOESNT_MATCH", 21: "CANNOT_READ_ALL_DATA_FROM_TAB_SEPARATED_INPUT",
        22: "CANNOT_PARSE_ALL_VALUE_FROM_TAB_SEPARATED_INPUT", 23: "CANNOT_READ_FROM_ISTREAM",
        24: "CANNOT_WRITE_TO_OSTREAM", 25: "CANNOT_PARSE_ESCAPE_SEQUENCE", 26: "CANNOT_PARSE_QUOTED_STRING",
        27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED", 32: "ATTEMPT_TO_READ_AFTER_EOF", 33: "CANNOT_READ_ALL_DATA",
        34: "TOO_MANY_ARGUMENTS_FOR_FUNCTION", 35: "TOO_FEW_ARGUMENTS_FOR_FUNCTION", 36: "BAD_ARGUMENTS",
        38: "CANNOT_PARSE_DATE", 41: "CANNOT_PARSE_DATETIME", 42: "NUMBER_OF_ARGUMENTS_DOESNT_MATCH",
        43: "ILLEGAL_TYPE_OF_ARGUMENT", 44: "ILLEGAL_COLUMN", 46: "UNKNOWN_FUNCTION", 47: "UNKNOWN_IDENTIFIER",
        48: "NOT_IMPLEMENTED", 50: "UNKNOWN_TYPE", 51: "EMPTY_LIST_OF_COLUMNS_QUERIED",
        52: "COLUMN_QUERIED_MORE_THAN_ONCE", 53: "TYPE_MISMATCH", 56: "UNKNOWN_STORAGE", 57: "TABLE_ALREADY_EXISTS",
        60: "UNKNOWN_TABLE", 62: "SYNTAX_ERROR", 63: "UNKNOWN_AGGREGATE_FUNCTION", 69: "ARGUMENT_OUT_OF_BOUND",
        70: "CANNOT_CONVERT_TYPE", 72: "CANNOT_PARSE_NUMBER", 73: "UNKNOWN_FORMAT", 80: "INCORRECT_QUERY",
        81: "UNKNOWN_DATABASE", 82: "DATABASE_ALREADY_EXISTS", 89: "UNKNOWN_COMPRESSION_METHOD",
        95: "CANNOT_READ_FROM_SOCKET", 96: "CANNOT_WRITE_TO_SOCKET", 108: "NO_DATA_TO_INSERT",
        113: "THERE_IS_NO_SESSION", 115: "UNKNOWN_SETTING", 117: "INCORRECT_DATA", 128: "TOO_LARGE_ARRAY_SIZE",
        130: "CANNOT_READ_ARRAY_FROM_TEXT", 131: "TOO_LARGE_STRING_SIZE", 158: "TOO_MANY_ROWS",
        159: "TIMEOUT_EXCEEDED", 160: "TOO_SLOW", 161: "TOO_MANY_COLUMNS", 162: "TOO_DEEP_SUBQUERIES",
        164: "READONLY", 167: "TOO_DEEP_AST", 168: "TOO_BIG_AST", 173: "CANNOT_ALLOCATE_MEMORY",
        181: "ILLEGAL_FINAL", 184: "ILLEGAL_AGGREGATION", 190: "SIZES_OF_ARRAYS_DOESNT_MATCH",
        192: "UNKNOWN_USER", 193: "WRONG_PASSWORD", 194: "REQUIRED_PASSWORD", 195: "IP_ADDRESS_NOT_ALLOWED",
        201: "QUOTA_EXPIRED", 202: "TOO_MANY_SIMULTANEOUS_QUERIES", 203: "NO_FREE_CONNECTION",
        209: "SOCKET_TIMEOUT", 210: "NETWORK_ERROR", 215: "NOT_AN_AGGREGATE", 218: "TABLE_IS_DROPPED",
        219: "DATABASE_NOT_EMPTY", 225: "NO_ZOOKEEPER", 229: "QUERY_IS_TOO_LARGE", 236: "ABORTED",
        241: "MEMORY_LIMIT_EXCEEDED", 242: "TABLE_IS_READ_ONLY", 243: "NOT_ENOUGH_SPACE",
        244: "UNEXPECTED_ZOOKEEPER_ERROR", 252: "TOO_MANY_PARTS", 271: "CANNOT_DECOMPRESS",
        279: "ALL_CONNECTION_TRIES_FAILED", 285: "TOO_FEW_LIVE_REPLICAS",
        286: "UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE", 289: "REPLICA_IS_NOT_IN_QUORUM",
        291: "DATABASE_ACCESS_DENIED", 307: "TOO_MANY_BYTES", 319: "UNKNOWN_STATUS_OF_INSERT",
        321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE", 335: "BARRIER_TIMEOUT", 344: "SUPPORT_IS_DISABLED",
        349: "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN", 354: "ZLIB_INFLATE_FAILED",
        364: "RECEIVED_ERROR_TOO_MANY_REQUESTS", 369: "ALL_REPLICAS_ARE_STALE", 376: "CANNOT_PARSE_UUID",
        386: "NO_COMMON_TYPE", 394: "QUERY_WAS_CANCELLED", 395: "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO",
        396: "TOO_MANY_ROWS_OR_BYTES", 407: "DECIMAL_OVERFLOW", 415: "ALL_REPLICAS_LOST", 425: "SYSTEM_ERROR",
        439: "CANNOT_SCHEDULE_TASK", 441: "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
        452: "SETTING_CONSTRAINT_VIOLATION", 467: "CANNOT_PARSE_BOOL", 469: "VIOLATED_CONSTRAINT",
        471: "INVALID_SETTING_VALUE", 472: "READONLY_SETTING", 473: "DEADLOCK_AVOIDED", 497: "ACCESS_DENIED",
        516: "AUTHENTICATION_FAILED", 999: "KEEPER_EXCEPTION",
    ]
}

// MARK: - The server's exception text

extension ClickHouseError {
    /// The code and the message in an exception body. ClickHouse 18.16 writes
    /// `Code: 60, e.displayText() = DB::Exception: Table t.x doesn't exist., e.what() = DB::Exception`;
    /// newer servers write `Code: 60. DB::Exception: Table t.x does not exist. (UNKNOWN_TABLE) (version 23.8.2.7)`.
    /// Text without `Code:` (a proxy's error page) comes back whole, without a code.
    static func parseException(_ body: String, limit: Int = 4096) -> (code: Int?, message: String) {
        var text = Substring(body.split(whereSeparator: \.isNewline).joined(separator: " "))
        text = text.trimmingWhitespace()
        guard let codeRange = text.firstRange(of: "Code: ") else {
            return (nil, String(text.prefix(limit)))
        }
        let digits = text[codeRange.upperBound...].prefix(while: \.isASCIIDigit)
        guard let code = Int(digits) else { return (nil, String(text.prefix(limit))) }
        var message = text[digits.endIndex...]
        message = message.drop(while: { $0 == "," || $0 == "." || $0 == " " })
        if message.hasPrefix("e.displayText() = ") { message = message.dropFirst("e.displayText() = ".count) }
        if message.hasPrefix("DB::Exception: ") { message = message.dropFirst("DB::Exception: ".count) }
        if let what = message.lastRange(of: "e.what() = ") {
            message = message[..<what.lowerBound].trimmingWhitespace()
            if message.hasSuffix(",") { message = message.dropLast() }
        }
        if let version = message.lastRange(of: " (version ") { message = message[..<version.lowerBound] }
        if let name = Self.codeNames[code], message.hasSuffix(" (\(name))") {
            message = message.dropLast(name.count + 3)
        }
        return (code, String(message.trimmingWhitespace().prefix(limit)))
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { self >= "0" && self <= "9" }
}

extension Substring {
    fileprivate func trimmingWhitespace() -> Substring {
        guard let first = self.firstIndex(where: { !$0.isWhitespace }),
            let last = self.lastIndex(where: { !$0.isWhitespace })
        else { return self[self.endIndex...] }
        return self[first...last]
    }

    fileprivate func lastRange(of needle: String) -> Range<Index>? {
        var found: Range<Index>?
        var rest = self[...]
        while let range = rest.firstRange(of: needle) {
            found = range
            rest = rest[range.upperBound...]
        }
        return found
    }
}
