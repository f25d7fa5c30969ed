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
    private let layout: Layout
    /// Each column's recipe, in the route's order (plain values: nothing to retain per row).
    private let plans: [ColumnPlan]
    /// The bytes the plans and keys point into: keys, JSONEachRow names, encoded defaults.
    private let constants: [UInt8]
    /// The keys looked up in each message: the columns' fields, then `received_at` (unless a
    /// column reads it already).
    private let keys: [Range<Int>]
    private let receivedAtKey: Int
    /// The key of the route's user field, for erasure (``isErased(_:scratch:erasures:)``).
    let userKey: Int?
    /// Why a column's default cannot be encoded, if so; read only when a message lacks the field.
    private let fallbackErrors: [LoaderError?]

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
        let layout = Layout(format: format, millisecondTimes: version >= LoaderRoute.dateTime64Since)
        self.layout = layout
        var constants: [UInt8] = []
        func constant(_ bytes: some Sequence<UInt8>) -> Range<Int> {
            let start = constants.count
            constants.append(contentsOf: bytes)
            return start..<constants.count
        }
        var fields: [String] = []
        var keys: [Range<Int>] = []
        func key(_ field: String) -> Int {
            if let index = fields.firstIndex(of: field) { return index }
            fields.append(field)
            keys.append(constant(field.utf8))
            return keys.count - 1
        }
        var plans: [ColumnPlan] = []
        var fallbackErrors: [LoaderError?] = []
        for (index, column) in route.columns.enumerated() {
            var name: [UInt8] = []
            if format == .jsonEachRow {
                var writer = JSONWriter(capacity: 0)
                writer.string(column.name)
                name = [index == 0 ? UInt8(ascii: "{") : UInt8(ascii: ",")] + writer.bytes + [UInt8(ascii: ":")]
            }
            let defaultText = column.defaultValue.map { Array($0.utf8) }
            let (fallback, fallbackError) = Self.encodeDefault(column, layout: layout, defaultText: defaultText)
            plans.append(
                ColumnPlan(
                    kind: column.kind,
                    key: column.header == nil ? key(column.field) : -1,
                    header: column.header,
                    required: column.required,
                    name: constant(name),
                    fallback: constant(fallback),
                    defaultText: defaultText.map { constant($0) }
                )
            )
            fallbackErrors.append(fallbackError)
        }
        self.receivedAtKey = key("received_at")
        self.userKey = route.columns.first { $0.name == route.userColumn }.map { key($0.field) }
        self.plans = plans
        self.constants = constants
        self.keys = keys
        self.fallbackErrors = fallbackErrors
    }

    /// What an absent or null field becomes: the default as the JSON text a message would
    /// carry, or the type's zero, encoded like any value; or why it cannot be.
    private static func encodeDefault(
        _ column: LoaderColumn,
        layout: Layout,
        defaultText: [UInt8]?
    ) -> ([UInt8], LoaderError?) {
        var literal = JSONWriter(capacity: 0)
        switch (column.defaultValue, column.kind) {
        case (let text?, _): literal.string(text)
        case (nil, .string), (nil, .json): literal.string("")
        case (nil, _): literal.raw("0")
        }
        let message = Array(#"{"":"#.utf8) + literal.bytes + [UInt8(ascii: "}")]
        var scanner = MessageScanner()
        var output: [UInt8] = []
        var text: [UInt8] = []
        let problem = message.withUnsafeBufferPointer { buffer -> ValueProblem? in
            guard (try? scanner.scan(buffer)) != nil, let member = scanner.members.first else {
                return .fit("an unreadable default")
            }
            let defaultText = defaultText ?? []
            return defaultText.withUnsafeBufferPointer { defaultText -> ValueProblem? in
                do throws(ValueProblem) {
                    try Self.writeValue(
                        member,
                        of: buffer,
                        as: column.kind,
                        defaultText: defaultText,
                        layout: layout,
                        to: &output,
                        text: &text
                    )
                    return nil
                } catch {
                    return error
                }
            }
        }
        return (output, problem.map { $0.rowError(field: column.field, kind: column.kind) })
    }

    /// Appends the row of `message` to `output` and returns the event's `received_at` (unix
    /// ms) when it has one. `headers`: the Kafka message's, for columns that read one. On
    /// error `output` is left as it was.
    public func encode(
        _ message: UnsafeBufferPointer<UInt8>,
        headers: [(name: String, value: [UInt8])] = [],
        into output: inout [UInt8],
        scratch: inout Scratch
    ) throws(LoaderError) -> Int64? {
        do {
            try scratch.scanner.scan(message)
        } catch {
            throw Self.rowError(error, in: message)
        }
        let members = scratch.scanner.members
        self.constants.withUnsafeBufferPointer { constants in
            self.match(members, in: message, keys: constants, &scratch)
        }
        let start = output.count
        let failure = self.constants.withUnsafeBufferPointer { constants -> LoaderError? in
            for (index, plan) in self.plans.enumerated() {
                if !plan.name.isEmpty { output.append(contentsOf: UnsafeBufferPointer(rebasing: constants[plan.name])) }
                if let header = plan.header {
                    guard let value = headers.first(where: { $0.name == header })?.value else {
                        if let error = self.fallbackErrors[index] { return error }
                        output.append(contentsOf: UnsafeBufferPointer(rebasing: constants[plan.fallback]))
                        continue
                    }
                    do throws(ValueProblem) {
                        try value.withUnsafeBufferPointer { value throws(ValueProblem) in
                            try Self.writeHeader(value, as: plan.kind, layout: self.layout, to: &output)
                        }
                    } catch {
                        return error.rowError(field: "header " + header, kind: plan.kind)
                    }
                    continue
                }
                let slot = scratch.slots[plan.key]
                guard slot >= 0, members[slot].kind != .null else {
                    if plan.required {
                        let field = self.route.columns[index].field
                        return LoaderError(.missingField, field: field, message: "missing required field '\(field)'")
                    }
                    if let error = self.fallbackErrors[index] { return error }
                    output.append(contentsOf: UnsafeBufferPointer(rebasing: constants[plan.fallback]))
                    continue
                }
                do throws(ValueProblem) {
                    try Self.writeValue(
                        members[slot],
                        of: message,
                        as: plan.kind,
                        defaultText: plan.defaultText.map { UnsafeBufferPointer(rebasing: constants[$0]) },
                        layout: self.layout,
                        to: &output,
                        text: &scratch.text
                    )
                } catch {
                    return error.rowError(field: self.route.columns[index].field, kind: plan.kind)
                }
            }
            return nil
        }
        if let failure {
            output.removeSubrange(start...)
            throw failure
        }
        if self.format == .jsonEachRow {
            output.append(UInt8(ascii: "}"))
            output.append(UInt8(ascii: "\n"))
        }
        let slot = scratch.slots[self.receivedAtKey]
        guard slot >= 0, members[slot].kind == .string else { return nil }
        scratch.text.removeAll(keepingCapacity: true)
        Self.appendText(of: members[slot], in: message, to: &scratch.text)
        return scratch.text.withUnsafeBufferPointer { Timestamp.parse($0) }
    }

    /// One row (a line with its newline in JSONEachRow), and the event's `received_at` (unix
    /// ms) when present. Allocates; the loader uses ``encode(_:into:scratch:)``.
    public func encode(
        _ message: [UInt8],
        headers: [(name: String, value: [UInt8])] = []
    ) throws(LoaderError) -> (row: [UInt8], receivedAtMillis: Int64?) {
        var scratch = Scratch()
        var row: [UInt8] = []
        row.reserveCapacity(message.count + 64)
        let received = try message.withUnsafeBufferPointer { buffer throws(LoaderError) in
            try self.encode(buffer, headers: headers, into: &row, scratch: &scratch)
        }
        return (row, received)
    }

    /// Points each wanted key at the first member that has it (-1: none).
    private func match(
        _ members: [MessageScanner.Member],
        in message: UnsafeBufferPointer<UInt8>,
        keys constants: UnsafeBufferPointer<UInt8>,
        _ scratch: inout Scratch
    ) {
        if scratch.slots.count != self.keys.count {
            scratch.slots = Array(repeating: -1, count: self.keys.count)
        } else {
            for index in scratch.slots.indices { scratch.slots[index] = -1 }
        }
        // Messages usually list their fields in the columns' order: try the key after the last
        // match first, then all.
        var next = 0
        for (index, member) in members.enumerated() {
            var found = -1
            if member.keyEscaped {
                scratch.text.removeAll(keepingCapacity: true)
                MessageScanner.unescape(UnsafeBufferPointer(rebasing: message[member.key]), into: &scratch.text)
                found = scratch.text.withUnsafeBufferPointer { self.lookup($0, constants, after: next) }
            } else {
                found = self.lookup(UnsafeBufferPointer(rebasing: message[member.key]), constants, after: next)
            }
            guard found >= 0 else { continue }
            if scratch.slots[found] < 0 { scratch.slots[found] = index }
            next = found + 1
        }
    }

    private func lookup(
        _ key: UnsafeBufferPointer<UInt8>,
        _ constants: UnsafeBufferPointer<UInt8>,
        after next: Int
    ) -> Int {
        if next < self.keys.count, Self.equal(key, constants, self.keys[next]) { return next }
        for index in self.keys.indices where Self.equal(key, constants, self.keys[index]) {
            return index
        }
        return -1
    }

    @inline(__always)
    private static func equal(
        _ key: UnsafeBufferPointer<UInt8>,
        _ constants: UnsafeBufferPointer<UInt8>,
        _ range: Range<Int>
    ) -> Bool {
        guard key.count == range.count else { return false }
        var offset = 0
        while offset < key.count {
            if key[offset] != constants[range.lowerBound + offset] { return false }
            offset += 1
        }
        return true
    }

    static func rowError(_ failure: MessageScanner.Failure, in message: UnsafeBufferPointer<UInt8>) -> LoaderError {
        switch failure {
        case .notAnObject(let kind):
            return LoaderError(.notAnObject, message: "not a JSON object but a \(kind.name)")
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
            return LoaderError(.notJSON, message: "not JSON: \(reason) at line \(line), column \(column)")
        }
    }

    // MARK: - Values

    /// How values are laid out on the wire.
    struct Layout: Sendable {
        var format: InsertFormat
        /// `DateTime64(3)` (Int64 milliseconds) rather than `DateTime` (UInt32 seconds).
        var millisecondTimes: Bool
    }

    /// One column's recipe; ranges point into the encoder's constants.
    struct ColumnPlan: Sendable {
        var kind: LoaderColumn.Kind
        /// The key (in the encoder's list) the column reads; -1 for a column read from a header.
        var key: Int
        /// The Kafka header the column reads instead of a field.
        var header: String?
        var required: Bool
        /// JSONEachRow: `{"name":` for the first column, `,"name":` for the others.
        var name: Range<Int>
        /// What an absent or null field becomes, encoded.
        var fallback: Range<Int>
        /// The default's text, for the `json` rule that a string equal to it is stored as is.
        var defaultText: Range<Int>?
    }

    /// What is wrong with a value for its column; the caller knows which field it was.
    enum ValueProblem: Error {
        case kind(MessageScanner.Kind, expected: String)
        case time(String)
        case fit(String)

        func rowError(field: String, kind: LoaderColumn.Kind) -> LoaderError {
            switch self {
            case .kind(let found, let expected):
                return LoaderError(
                    .wrongKind,
                    field: field,
                    message: "field '\(field)' is a \(found.name), expected \(expected)"
                )
            case .time(let value):
                return LoaderError(
                    .outOfRange,
                    field: field,
                    message: "field '\(field)' is not a time between 1970 and 2100: \(value)"
                )
            case .fit(let text):
                return LoaderError(
                    .outOfRange,
                    field: field,
                    message: "field '\(field)' = \(text) does not fit \(kind.rawValue)"
                )
            }
        }
    }

    /// Writes `member`'s value as a column of `kind`.
    static func writeValue(
        _ member: MessageScanner.Member,
        of message: UnsafeBufferPointer<UInt8>,
        as kind: LoaderColumn.Kind,
        defaultText: UnsafeBufferPointer<UInt8>?,
        layout: Layout,
        to output: inout [UInt8],
        text: inout [UInt8]
    ) throws(ValueProblem) {
        switch kind {
        case .string:
            switch member.kind {
            case .string where !member.valueEscaped:
                if layout.format == .jsonEachRow {
                    Self.append(member.value, of: message, to: &output)
                } else {
                    Self.appendLength(member.content.count, to: &output)
                    Self.append(member.content, of: message, to: &output)
                }
            case .string:
                text.removeAll(keepingCapacity: true)
                Self.appendText(of: member, in: message, to: &text)
                text.withUnsafeBufferPointer { Self.writeText($0, layout: layout, to: &output) }
            case .number, .true, .false:
                if layout.format == .jsonEachRow {
                    output.append(UInt8(ascii: "\""))
                    Self.append(member.value, of: message, to: &output)
                    output.append(UInt8(ascii: "\""))
                } else {
                    Self.appendLength(member.value.count, to: &output)
                    Self.append(member.value, of: message, to: &output)
                }
            case .null, .object, .array:
                throw .kind(member.kind, expected: "text")
            }
        case .json:
            // A string that is the default (`{}`) or empty is that text, not a JSON string.
            if member.kind == .string {
                text.removeAll(keepingCapacity: true)
                Self.appendText(of: member, in: message, to: &text)
                let asIs = text.withUnsafeBufferPointer { text in
                    guard text.isEmpty || defaultText.map({ text.elementsEqual($0) }) == true else { return false }
                    Self.writeText(text, layout: layout, to: &output)
                    return true
                }
                if asIs { return }
            }
            Self.writeText(UnsafeBufferPointer(rebasing: message[member.value]), layout: layout, to: &output)
        case .timestamp:
            text.removeAll(keepingCapacity: true)
            Self.appendText(of: member, in: message, to: &text)
            let millis: Int64? =
                switch member.kind {
                case .string: text.withUnsafeBufferPointer { Timestamp.parse($0) ?? Self.int64($0) }
                case .number: text.withUnsafeBufferPointer { Self.int64($0) }
                default: nil
                }
            guard let millis, millis >= 0, millis < Timestamp.maxStoredMillis else {
                throw .time(Self.excerpt(member.value, of: message))
            }
            switch layout.format {
            case .rowBinary where layout.millisecondTimes: Self.appendLittleEndian(millis, to: &output)
            case .rowBinary: Self.appendLittleEndian(UInt32(millis / 1000), to: &output)
            case .jsonEachRow:
                output.append(UInt8(ascii: "\""))
                Timestamp.appendClickHouseText(millis: millis, fraction: layout.millisecondTimes, to: &output)
                output.append(UInt8(ascii: "\""))
            }
        case .bool:
            text.removeAll(keepingCapacity: true)
            Self.appendText(of: member, in: message, to: &text)
            let value: UInt8? =
                switch member.kind {
                case .true: 1
                case .false: 0
                case .number, .string:
                    switch String(decoding: text, as: UTF8.self) {
                    case "1", "true": 1
                    case "0", "false": 0
                    default: nil
                    }
                default: nil
                }
            guard let value else { throw .kind(member.kind, expected: "true, false, 0 or 1") }
            if layout.format == .rowBinary {
                output.append(value)
            } else {
                output.append(value == 1 ? UInt8(ascii: "1") : UInt8(ascii: "0"))
            }
        case .int64, .uint64, .float64:
            guard member.kind == .number || member.kind == .string else {
                throw .kind(member.kind, expected: "a number")
            }
            text.removeAll(keepingCapacity: true)
            Self.appendText(of: member, in: message, to: &text)
            let fits = text.withUnsafeBufferPointer { digits -> Bool in
                switch kind {
                case .int64:
                    guard let value = Self.int64(digits) else { return false }
                    if layout.format == .rowBinary { Self.appendLittleEndian(value, to: &output) }
                case .uint64:
                    guard let value = Self.uint64(digits) else { return false }
                    if layout.format == .rowBinary { Self.appendLittleEndian(value, to: &output) }
                default:
                    guard let value = Double(String(decoding: digits, as: UTF8.self)), value.isFinite else {
                        return false
                    }
                    if layout.format == .rowBinary { Self.appendLittleEndian(value.bitPattern, to: &output) }
                }
                if layout.format == .jsonEachRow { output.append(contentsOf: digits) }
                return true
            }
            guard fits else { throw .fit(String(decoding: text, as: UTF8.self)) }
        }
    }

    /// A header's value as a column of `kind` (`string`, `int64` or `uint64`: the header is
    /// the number's decimal text).
    static func writeHeader(
        _ value: UnsafeBufferPointer<UInt8>,
        as kind: LoaderColumn.Kind,
        layout: Layout,
        to output: inout [UInt8]
    ) throws(ValueProblem) {
        switch kind {
        case .int64:
            guard let number = Self.int64(value) else { throw .fit(String(decoding: value, as: UTF8.self)) }
            if layout.format == .rowBinary { Self.appendLittleEndian(number, to: &output) }
        case .uint64:
            guard let number = Self.uint64(value) else { throw .fit(String(decoding: value, as: UTF8.self)) }
            if layout.format == .rowBinary { Self.appendLittleEndian(number, to: &output) }
        default:
            Self.writeText(value, layout: layout, to: &output)
            return
        }
        if layout.format == .jsonEachRow { output.append(contentsOf: value) }
    }

    /// Text in the format: a length and the bytes, or a JSON string.
    private static func writeText(_ bytes: UnsafeBufferPointer<UInt8>, layout: Layout, to output: inout [UInt8]) {
        guard layout.format == .jsonEachRow else {
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
                output.append(UInt8(ascii: "u"))
                output.append(UInt8(ascii: "0"))
                output.append(UInt8(ascii: "0"))
                output.append(hex.utf8Start[Int(byte >> 4)])
                output.append(hex.utf8Start[Int(byte & 0x0F)])
            }
        }
        output.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[clean...]))
        output.append(UInt8(ascii: "\""))
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
    static func int64(_ text: UnsafeBufferPointer<UInt8>) -> Int64? { Self.integer(text) }

    /// `UInt64(text)` without making a `String`: an optional sign, then decimal digits (a
    /// minus only before zero).
    static func uint64(_ text: UnsafeBufferPointer<UInt8>) -> UInt64? { Self.integer(text) }

    /// An optional sign, then decimal digits, accumulated towards the sign so that the type's
    /// whole range parses and anything outside it (a negative unsigned number too) is nil.
    static func integer<T: FixedWidthInteger>(_ text: UnsafeBufferPointer<UInt8>) -> T? {
        var index = 0
        var negative = false
        if let first = text.first, first == UInt8(ascii: "-") || first == UInt8(ascii: "+") {
            negative = first == UInt8(ascii: "-")
            index = 1
        }
        guard index < text.count else { return nil }
        var value: T = 0
        while index < text.count {
            let digit = text[index] &- 0x30
            guard digit < 10 else { return nil }
            let (times, overflow) = value.multipliedReportingOverflow(by: 10)
            let (next, carry) =
                negative
                ? times.subtractingReportingOverflow(T(digit)) : times.addingReportingOverflow(T(digit))
            guard !overflow, !carry else { return nil }
            value = next
            index += 1
        }
        return value
    }

    /// The start of a value's JSON text, for error messages.
    static func excerpt(_ range: Range<Int>, of message: UnsafeBufferPointer<UInt8>) -> String {
        let limit = 64
        let text = String(decoding: message[range.prefix(limit)], as: UTF8.self)
        return range.count > limit ? text + "…" : text
    }
}
