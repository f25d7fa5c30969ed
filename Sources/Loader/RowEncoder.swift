import ClickHouse
import EventModel

/// The data format of the loader's `INSERT`s.
public enum InsertFormat: String, Sendable, CaseIterable {
    /// ClickHouse's binary row format: each column's value in the table's binary layout,
    /// nothing to parse on the server. Needs the table's column types to be exactly the
    /// route's (the loader checks at start and falls back to ``jsonEachRow`` otherwise).
    case rowBinary = "RowBinary"
    /// One JSON object per line: the server parses and converts each value, so it can refuse
    /// single rows whose text does not fit a column, whatever the table's types.
    case jsonEachRow = "JSONEachRow"

    /// The format named `name`, in any letter case (`rowbinary`, `JSONEachRow`…).
    public init?(name: String) {
        guard let format = Self.allCases.first(where: { $0.rawValue.lowercased() == name.lowercased() }) else {
            return nil
        }
        self = format
    }
}

/// Why a message cannot become a row.
public struct RowError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// Not JSON at all (syntax, UTF-8, escapes, control characters, nesting).
        case notJSON
        /// JSON, but not an object.
        case notAnObject
        /// A required field is absent or null.
        case missingField
        /// A field's JSON kind does not fit its column (an object for a string column…).
        case wrongKind
        /// A field's value does not fit its column (a number too large, a time out of range…).
        case outOfRange
    }

    public var code: Code
    /// The top-level field concerned, if any.
    public var field: String?
    /// What is wrong, for the dead-letter header `dlq_reason` and the logs.
    public var description: String

    public init(_ code: Code, field: String? = nil, _ description: String) {
        self.code = code
        self.field = field
        self.description = description
    }
}

/// Turns messages into rows of one route, in ``InsertFormat/rowBinary`` or
/// ``InsertFormat/jsonEachRow``.
///
/// A message must be one JSON object. Each column takes the first top-level member named
/// like its field; an absent or null member takes the column's default (required columns
/// refuse the message). `string` columns take text, or a number or boolean as written;
/// `timestamp` columns RFC 3339 text or epoch milliseconds (as a number or text); number
/// columns a number or text holding one; `json` columns any value, stored as its JSON text.
///
/// The message is scanned once, validated completely, and its fields copied as bytes: no tree,
/// no allocation per field. Thread-safe; each thread passes its own ``Scratch``.
public struct RowEncoder: Sendable {
    public let route: LoaderRoute
    public let version: ClickHouseVersion
    public let format: InsertFormat
    /// The keys looked up in each message, laid end to end: the columns' fields, then
    /// `received_at` (unless a column reads it already).
    private let keyBytes: [UInt8]
    private let keyRanges: [Range<Int>]
    private let receivedAtKey: Int
    private let columns: [ColumnWriter]

    /// Per-thread working memory: the scanner's member list, the key matches, decoded text.
    public struct Scratch {
        var scanner = MessageScanner()
        var slots: [Int] = []
        var text: [UInt8] = []

        public init() {}
    }

    public init(route: LoaderRoute, version: ClickHouseVersion, format: InsertFormat) {
        self.route = route
        self.version = version
        self.format = format
        var fields: [String] = []
        var keyOfColumn: [Int] = []
        for column in route.columns {
            if let index = fields.firstIndex(of: column.field) {
                keyOfColumn.append(index)
            } else {
                keyOfColumn.append(fields.count)
                fields.append(column.field)
            }
        }
        if let index = fields.firstIndex(of: "received_at") {
            self.receivedAtKey = index
        } else {
            self.receivedAtKey = fields.count
            fields.append("received_at")
        }
        var keyBytes: [UInt8] = []
        var keyRanges: [Range<Int>] = []
        for field in fields {
            keyRanges.append(keyBytes.count..<keyBytes.count + field.utf8.count)
            keyBytes.append(contentsOf: field.utf8)
        }
        self.keyBytes = keyBytes
        self.keyRanges = keyRanges
        let millisecondTimes = version >= LoaderRoute.dateTime64Since
        self.columns = route.columns.enumerated().map { index, column in
            ColumnWriter(
                column,
                key: keyOfColumn[index],
                first: index == 0,
                format: format,
                millisecondTimes: millisecondTimes
            )
        }
    }

    /// Appends the row of `message` to `output` and returns the event's `received_at` (unix
    /// ms) when it has one. On error `output` is left as it was.
    public func encode(
        _ message: UnsafeBufferPointer<UInt8>,
        into output: inout [UInt8],
        scratch: inout Scratch
    ) throws(RowError) -> Int64? {
        do {
            try scratch.scanner.scan(message)
        } catch {
            throw Self.rowError(error, in: message)
        }
        self.match(message, &scratch)
        let start = output.count
        do {
            for column in self.columns {
                let slot = scratch.slots[column.key]
                if slot >= 0, scratch.scanner.members[slot].kind != .null {
                    try column.write(scratch.scanner.members[slot], of: message, to: &output, text: &scratch.text)
                } else {
                    try column.writeFallback(to: &output)
                }
            }
        } catch {
            output.removeSubrange(start...)
            throw error
        }
        if self.format == .jsonEachRow {
            output.append(UInt8(ascii: "}"))
            output.append(UInt8(ascii: "\n"))
        }
        let slot = scratch.slots[self.receivedAtKey]
        guard slot >= 0, scratch.scanner.members[slot].kind == .string else { return nil }
        scratch.text.removeAll(keepingCapacity: true)
        ColumnWriter.appendText(of: scratch.scanner.members[slot], in: message, to: &scratch.text)
        return scratch.text.withUnsafeBufferPointer { Timestamp.parse($0) }
    }

    /// One row (a line with its newline in JSONEachRow), and the event's `received_at` (unix
    /// ms) when present. Allocates; the loader uses ``encode(_:into:scratch:)``.
    public func encode(_ message: [UInt8]) throws(RowError) -> (row: [UInt8], receivedAtMillis: Int64?) {
        var scratch = Scratch()
        var row: [UInt8] = []
        row.reserveCapacity(message.count + 64)
        let received = try message.withUnsafeBufferPointer { buffer throws(RowError) in
            try self.encode(buffer, into: &row, scratch: &scratch)
        }
        return (row, received)
    }

    /// Points each wanted key at the first member that has it (-1: none).
    private func match(_ message: UnsafeBufferPointer<UInt8>, _ scratch: inout Scratch) {
        scratch.slots.removeAll(keepingCapacity: true)
        scratch.slots.append(contentsOf: repeatElement(-1, count: self.keyRanges.count))
        self.keyBytes.withUnsafeBufferPointer { keys in
            // Messages usually list their fields in the columns' order: try the key after the
            // last match first, then all.
            var next = 0
            for (index, member) in scratch.scanner.members.enumerated() {
                var found = -1
                if member.keyEscaped {
                    scratch.text.removeAll(keepingCapacity: true)
                    MessageScanner.unescape(UnsafeBufferPointer(rebasing: message[member.key]), into: &scratch.text)
                    found = scratch.text.withUnsafeBufferPointer { self.lookup($0, keys, after: next) }
                } else {
                    found = self.lookup(UnsafeBufferPointer(rebasing: message[member.key]), keys, after: next)
                }
                guard found >= 0 else { continue }
                if scratch.slots[found] < 0 { scratch.slots[found] = index }
                next = found + 1
            }
        }
    }

    private func lookup(_ key: UnsafeBufferPointer<UInt8>, _ keys: UnsafeBufferPointer<UInt8>, after next: Int) -> Int {
        if next < self.keyRanges.count, Self.equal(key, keys, self.keyRanges[next]) { return next }
        for index in self.keyRanges.indices where Self.equal(key, keys, self.keyRanges[index]) {
            return index
        }
        return -1
    }

    @inline(__always)
    private static func equal(
        _ key: UnsafeBufferPointer<UInt8>,
        _ keys: UnsafeBufferPointer<UInt8>,
        _ range: Range<Int>
    ) -> Bool {
        guard key.count == range.count else { return false }
        var offset = 0
        while offset < key.count {
            if key[offset] != keys[range.lowerBound + offset] { return false }
            offset += 1
        }
        return true
    }

    static func rowError(_ failure: MessageScanner.Failure, in message: UnsafeBufferPointer<UInt8>) -> RowError {
        switch failure {
        case .notAnObject(let kind):
            return RowError(.notAnObject, "not a JSON object but a \(kind.name)")
        case .syntax(let reason, let offset):
            var line = 1
            var column = 1
            for byte in message[0..<min(offset, message.count)] {
                if byte == 0x0A {
                    line += 1
                    column = 1
                } else if byte & 0xC0 != 0x80 {
                    column += 1
                }
            }
            return RowError(.notJSON, "not JSON: \(reason) at line \(line), column \(column)")
        }
    }
}

/// Writes one column's value in the encoder's format.
struct ColumnWriter: Sendable {
    let kind: LoaderColumn.Kind
    let field: String
    let required: Bool
    /// The key (in ``RowEncoder``'s list) the column reads.
    let key: Int
    let format: InsertFormat
    let millisecondTimes: Bool
    /// The default's text, for the `json` rule that a string equal to it is stored as is.
    let defaultText: [UInt8]?
    /// JSONEachRow: `{"name":` for the first column, `,"name":` for the others.
    let name: [UInt8]
    /// What an absent or null field becomes, encoded once; or why that cannot be.
    private var fallback: Result<[UInt8], RowError> = .success([])

    init(_ column: LoaderColumn, key: Int, first: Bool, format: InsertFormat, millisecondTimes: Bool) {
        self.kind = column.kind
        self.field = column.field
        self.required = column.required
        self.key = key
        self.format = format
        self.millisecondTimes = millisecondTimes
        self.defaultText = column.defaultValue.map { Array($0.utf8) }
        var name: [UInt8] = []
        if format == .jsonEachRow {
            name.append(first ? UInt8(ascii: "{") : UInt8(ascii: ","))
            var writer = JSONWriter(capacity: 0)
            writer.string(column.name)
            name += writer.bytes
            name.append(UInt8(ascii: ":"))
        }
        self.name = name
        // The default as the JSON value a message would carry (text), or the type's zero.
        var literal = JSONWriter(capacity: 0)
        switch (column.defaultValue, column.kind) {
        case (let text?, _): literal.string(text)
        case (nil, .string), (nil, .json): literal.string("")
        case (nil, _): literal.raw("0")
        }
        let message =
            [UInt8(ascii: "{"), UInt8(ascii: "\""), UInt8(ascii: "\""), UInt8(ascii: ":")] + literal.bytes
            + [UInt8(ascii: "}")]
        var scanner = MessageScanner()
        var output: [UInt8] = []
        var text: [UInt8] = []
        let writer = self
        self.fallback = message.withUnsafeBufferPointer { buffer -> Result<[UInt8], RowError> in
            do throws(RowError) {
                do throws(MessageScanner.Failure) {
                    try scanner.scan(buffer)
                } catch {
                    throw RowEncoder.rowError(error, in: buffer)
                }
                try writer.write(scanner.members[0], of: buffer, to: &output, text: &text)
                return .success(output)
            } catch {
                return .failure(error)
            }
        }
    }

    func writeFallback(to output: inout [UInt8]) throws(RowError) {
        if self.required { throw RowError(.missingField, field: self.field, "missing required field '\(self.field)'") }
        switch self.fallback {
        case .success(let bytes): output.append(contentsOf: bytes)
        case .failure(let error): throw error
        }
    }

    func write(
        _ member: MessageScanner.Member,
        of message: UnsafeBufferPointer<UInt8>,
        to output: inout [UInt8],
        text: inout [UInt8]
    ) throws(RowError) {
        output.append(contentsOf: self.name)
        switch self.kind {
        case .string:
            switch member.kind {
            case .string where !member.valueEscaped:
                if self.format == .jsonEachRow {
                    Self.append(member.value, of: message, to: &output)
                } else {
                    Self.appendLength(member.content.count, to: &output)
                    Self.append(member.content, of: message, to: &output)
                }
            case .string:
                text.removeAll(keepingCapacity: true)
                Self.appendText(of: member, in: message, to: &text)
                self.writeText(text, to: &output)
            case .number, .true, .false:
                if self.format == .jsonEachRow {
                    output.append(UInt8(ascii: "\""))
                    Self.append(member.value, of: message, to: &output)
                    output.append(UInt8(ascii: "\""))
                } else {
                    Self.appendLength(member.value.count, to: &output)
                    Self.append(member.value, of: message, to: &output)
                }
            case .null, .object, .array:
                throw RowError(
                    .wrongKind,
                    field: self.field,
                    "field '\(self.field)' is a \(member.kind.name), expected text"
                )
            }
        case .json:
            // A string that is the default (`{}`) or empty is that text, not a JSON string.
            if member.kind == .string {
                text.removeAll(keepingCapacity: true)
                Self.appendText(of: member, in: message, to: &text)
                if text.isEmpty || text == self.defaultText {
                    self.writeText(text, to: &output)
                    return
                }
            }
            self.writeText(UnsafeBufferPointer(rebasing: message[member.value]), to: &output)
        case .timestamp:
            var millis: Int64?
            text.removeAll(keepingCapacity: true)
            Self.appendText(of: member, in: message, to: &text)
            switch member.kind {
            case .string: millis = text.withUnsafeBufferPointer { Timestamp.parse($0) ?? Self.int64($0) }
            case .number: millis = text.withUnsafeBufferPointer { Self.int64($0) }
            default: millis = nil
            }
            guard let millis, millis >= 0, millis < 4_102_444_800_000 else {
                throw RowError(
                    .outOfRange,
                    field: self.field,
                    "field '\(self.field)' is not a time between 1970 and 2100: \(Self.excerpt(member.value, of: message))"
                )
            }
            switch self.format {
            case .rowBinary where self.millisecondTimes: Self.appendLittleEndian(millis, to: &output)
            case .rowBinary: Self.appendLittleEndian(UInt32(millis / 1000), to: &output)
            case .jsonEachRow:
                output.append(UInt8(ascii: "\""))
                Timestamp.appendClickHouseText(millis: millis, fraction: self.millisecondTimes, to: &output)
                output.append(UInt8(ascii: "\""))
            }
        case .int64, .uint64, .float64:
            guard member.kind == .number || member.kind == .string else {
                throw RowError(
                    .wrongKind,
                    field: self.field,
                    "field '\(self.field)' is a \(member.kind.name), expected a number"
                )
            }
            text.removeAll(keepingCapacity: true)
            Self.appendText(of: member, in: message, to: &text)
            let fits = text.withUnsafeBufferPointer { digits -> Bool in
                switch self.kind {
                case .int64:
                    guard let value = Self.int64(digits) else { return false }
                    if self.format == .rowBinary { Self.appendLittleEndian(value, to: &output) }
                case .uint64:
                    guard let value = Self.uint64(digits) else { return false }
                    if self.format == .rowBinary { Self.appendLittleEndian(value, to: &output) }
                default:
                    guard let value = Double(String(decoding: digits, as: UTF8.self)), value.isFinite else {
                        return false
                    }
                    if self.format == .rowBinary { Self.appendLittleEndian(value.bitPattern, to: &output) }
                }
                if self.format == .jsonEachRow { output.append(contentsOf: digits) }
                return true
            }
            guard fits else {
                throw RowError(
                    .outOfRange,
                    field: self.field,
                    "field '\(self.field)' = \(String(decoding: text, as: UTF8.self)) does not fit \(self.kind.rawValue)"
                )
            }
        }
    }

    /// Text in the format: a length and the bytes, or a JSON string.
    private func writeText(_ bytes: UnsafeBufferPointer<UInt8>, to output: inout [UInt8]) {
        guard self.format == .jsonEachRow else {
            Self.appendLength(bytes.count, to: &output)
            output.append(contentsOf: bytes)
            return
        }
        output.append(UInt8(ascii: "\""))
        var clean = bytes.startIndex
        for index in bytes.indices {
            let byte = bytes[index]
            guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") else { continue }
            output.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[clean..<index]))
            clean = index + 1
            output.append(UInt8(ascii: "\\"))
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"): output.append(byte)
            case 0x0A: output.append(UInt8(ascii: "n"))
            case 0x0D: output.append(UInt8(ascii: "r"))
            case 0x09: output.append(UInt8(ascii: "t"))
            default:
                let hex: StaticString = "0123456789abcdef"
                output.append(contentsOf: [UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0")])
                output.append(hex.utf8Start[Int(byte >> 4)])
                output.append(hex.utf8Start[Int(byte & 0x0F)])
            }
        }
        output.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[clean...]))
        output.append(UInt8(ascii: "\""))
    }

    private func writeText(_ bytes: [UInt8], to output: inout [UInt8]) {
        bytes.withUnsafeBufferPointer { self.writeText($0, to: &output) }
    }

    /// A string member's text with its escapes decoded; any other member's JSON text.
    static func appendText(
        of member: MessageScanner.Member,
        in message: UnsafeBufferPointer<UInt8>,
        to text: inout [UInt8]
    ) {
        let content = UnsafeBufferPointer(rebasing: message[member.content])
        if member.valueEscaped {
            MessageScanner.unescape(content, into: &text)
        } else {
            text.append(contentsOf: content)
        }
    }

    @inline(__always)
    static func append(_ range: Range<Int>, of message: UnsafeBufferPointer<UInt8>, to output: inout [UInt8]) {
        output.append(contentsOf: UnsafeBufferPointer(rebasing: message[range]))
    }

    /// A RowBinary string's length: unsigned LEB128.
    @inline(__always)
    static func appendLength(_ count: Int, to output: inout [UInt8]) {
        var value = UInt(count)
        while value >= 0x80 {
            output.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        output.append(UInt8(value))
    }

    @inline(__always)
    static func appendLittleEndian<T: FixedWidthInteger>(_ value: T, to output: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { output.append(contentsOf: $0) }
    }

    /// `Int64(text)` without making a `String`: an optional sign, then decimal digits.
    static func int64(_ text: UnsafeBufferPointer<UInt8>) -> Int64? {
        var index = 0
        var negative = false
        if let first = text.first, first == UInt8(ascii: "-") || first == UInt8(ascii: "+") {
            negative = first == UInt8(ascii: "-")
            index = 1
        }
        guard index < text.count else { return nil }
        var value: Int64 = 0
        while index < text.count {
            let digit = text[index] &- 0x30
            guard digit < 10 else { return nil }
            let (times, overflow) = value.multipliedReportingOverflow(by: 10)
            let (next, carry) =
                negative
                ? times.subtractingReportingOverflow(Int64(digit)) : times.addingReportingOverflow(Int64(digit))
            guard !overflow, !carry else { return nil }
            value = next
            index += 1
        }
        return value
    }

    /// `UInt64(text)` without making a `String`: an optional sign, then decimal digits (a
    /// minus only before zero).
    static func uint64(_ text: UnsafeBufferPointer<UInt8>) -> UInt64? {
        var index = 0
        var negative = false
        if let first = text.first, first == UInt8(ascii: "-") || first == UInt8(ascii: "+") {
            negative = first == UInt8(ascii: "-")
            index = 1
        }
        guard index < text.count else { return nil }
        var value: UInt64 = 0
        while index < text.count {
            let digit = text[index] &- 0x30
            guard digit < 10 else { return nil }
            let (times, overflow) = value.multipliedReportingOverflow(by: 10)
            let (next, carry) = times.addingReportingOverflow(UInt64(digit))
            guard !overflow, !carry else { return nil }
            value = next
            index += 1
        }
        return negative && value != 0 ? nil : value
    }

    /// The start of a value's JSON text, for error messages.
    static func excerpt(_ range: Range<Int>, of message: UnsafeBufferPointer<UInt8>) -> String {
        let limit = 64
        let text = String(decoding: message[range.prefix(limit)], as: UTF8.self)
        return range.count > limit ? text + "…" : text
    }
}
