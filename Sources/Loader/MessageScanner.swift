import EventModel

/// Finds the top-level members of a message that must be one JSON object, without building
/// a tree: for each member the key's and the value's byte ranges and the value's kind.
///
/// The whole message is validated as strictly as ``JSONParser`` does (RFC 8259, UTF-8, escapes,
/// no control characters in strings, nesting at most ``JSONParser/maxDepth`` levels), because
/// a message that is not JSON must go to the dead-letter topic, not to ClickHouse. Nested
/// objects and arrays are validated and skipped. The member list is reused from message to
/// message: one scanner per thread, no allocation per field once it has grown.
struct MessageScanner {
    /// A JSON value's type.
    enum Kind: UInt8, Sendable {
        case string, number, `true`, `false`, null, object, array

        /// As ``JSONValue/typeName`` says it, for error messages.
        var name: String {
            switch self {
            case .string: "string"
            case .number: "number"
            case .true, .false: "boolean"
            case .null: "null"
            case .object: "object"
            case .array: "array"
            }
        }
    }

    /// One top-level member.
    struct Member: Equatable {
        /// The key's bytes between its quotes, escapes as written.
        var key: Range<Int>
        /// The key has a backslash: decode it before comparing.
        var keyEscaped: Bool
        var kind: Kind
        /// The value's JSON text (a string's with its quotes).
        var value: Range<Int>
        /// A string value has a backslash: decode it before using its text.
        var valueEscaped: Bool

        /// A string value's bytes between its quotes; the whole text for other kinds.
        var content: Range<Int> {
            self.kind == .string ? self.value.lowerBound + 1..<self.value.upperBound - 1 : self.value
        }
    }

    /// Why a message is not one JSON object.
    enum Failure: Error, Equatable {
        /// Not JSON: what is wrong, at which byte.
        case syntax(String, offset: Int)
        /// Valid JSON, but another kind of value.
        case notAnObject(Kind)
    }

    /// The members of the last message scanned, in document order (duplicates kept).
    private(set) var members: [Member] = []

    init() { self.members.reserveCapacity(32) }

    /// Scans `bytes`, which must be exactly one JSON object (whitespace around it allowed).
    mutating func scan(_ bytes: UnsafeBufferPointer<UInt8>) throws(Failure) {
        self.members.removeAll(keepingCapacity: true)
        var reader = Reader(bytes: bytes)
        reader.skipWhitespace()
        guard reader.index < bytes.count else { throw reader.failure("unexpected end of input") }
        guard bytes[reader.index] == UInt8(ascii: "{") else {
            // Tell a valid value of another kind from something that is not JSON at all.
            let kind = try reader.value(depth: 0).kind
            reader.skipWhitespace()
            guard reader.index == bytes.count else { throw reader.failure("unexpected data after the JSON value") }
            throw .notAnObject(kind)
        }
        reader.index += 1
        reader.skipWhitespace()
        if reader.index < bytes.count && bytes[reader.index] == UInt8(ascii: "}") {
            reader.index += 1
        } else {
            while true {
                reader.skipWhitespace()
                guard reader.index < bytes.count, bytes[reader.index] == UInt8(ascii: "\"") else {
                    throw reader.failure("expected a string key")
                }
                let keyStart = reader.index
                let keyEscaped = try reader.string()
                let key = keyStart + 1..<reader.index - 1
                reader.skipWhitespace()
                guard reader.index < bytes.count, bytes[reader.index] == UInt8(ascii: ":") else {
                    throw reader.failure("expected ':' after a key")
                }
                reader.index += 1
                reader.skipWhitespace()
                let valueStart = reader.index
                let (kind, valueEscaped) = try reader.value(depth: 1)
                self.members.append(
                    Member(
                        key: key,
                        keyEscaped: keyEscaped,
                        kind: kind,
                        value: valueStart..<reader.index,
                        valueEscaped: valueEscaped
                    )
                )
                reader.skipWhitespace()
                guard reader.index < bytes.count else { throw reader.failure("unterminated object") }
                if bytes[reader.index] == UInt8(ascii: ",") {
                    reader.index += 1
                    continue
                }
                guard bytes[reader.index] == UInt8(ascii: "}") else { throw reader.failure("expected ',' or '}'") }
                reader.index += 1
                break
            }
        }
        reader.skipWhitespace()
        guard reader.index == bytes.count else { throw reader.failure("unexpected data after the JSON value") }
    }

    /// Appends the text of a validated JSON string's content (the bytes between its quotes)
    /// with its escapes decoded.
    static func unescape(_ content: UnsafeBufferPointer<UInt8>, into output: inout [UInt8]) {
        var index = 0
        let count = content.count
        while index < count {
            let byte = content[index]
            guard byte == UInt8(ascii: "\\"), index + 1 < count else {
                output.append(byte)
                index += 1
                continue
            }
            let escape = content[index + 1]
            index += 2
            switch escape {
            case UInt8(ascii: "u"):
                guard var code = JSONEscapes.hex4(content, at: index) else { return }
                index += 4
                if (0xD800...0xDBFF).contains(code), index + 6 <= count,
                    let low = JSONEscapes.hex4(content, at: index + 2)
                {
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    index += 6
                }
                JSONEscapes.appendUTF8(code, to: &output)
            default: output.append(JSONEscapes.simple(escape) ?? escape)
            }
        }
    }

    /// A cursor over the message that validates as it goes.
    private struct Reader {
        let bytes: UnsafeBufferPointer<UInt8>
        var index = 0

        init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

        func failure(_ message: String, at offset: Int? = nil) -> Failure {
            .syntax(message, offset: min(offset ?? self.index, self.bytes.count))
        }

        mutating func skipWhitespace() {
            while self.index < self.bytes.count {
                switch self.bytes[self.index] {
                case 0x20, 0x09, 0x0A, 0x0D: self.index += 1
                default: return
                }
            }
        }

        /// Validates one value; the index ends after it. A string's kind comes with whether
        /// it has escapes.
        mutating func value(depth: Int) throws(Failure) -> (kind: Kind, escaped: Bool) {
            guard depth < JSONParser.maxDepth else {
                throw self.failure("nesting deeper than \(JSONParser.maxDepth) levels")
            }
            guard self.index < self.bytes.count else { throw self.failure("unexpected end of input") }
            switch self.bytes[self.index] {
            case UInt8(ascii: "\""): return (.string, try self.string())
            case UInt8(ascii: "{"):
                try self.object(depth: depth)
                return (.object, false)
            case UInt8(ascii: "["):
                try self.array(depth: depth)
                return (.array, false)
            case UInt8(ascii: "t"):
                try self.literal("true")
                return (.true, false)
            case UInt8(ascii: "f"):
                try self.literal("false")
                return (.false, false)
            case UInt8(ascii: "n"):
                try self.literal("null")
                return (.null, false)
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                try self.number()
                return (.number, false)
            default:
                throw self.failure("unexpected character '\(Self.printable(self.bytes[self.index]))'")
            }
        }

        static func printable(_ byte: UInt8) -> String {
            byte >= 0x20 && byte < 0x7F ? String(UnicodeScalar(byte)) : "\\u{\(String(byte, radix: 16))}"
        }

        mutating func literal(_ word: StaticString) throws(Failure) {
            let length = word.utf8CodeUnitCount
            guard self.index + length <= self.bytes.count else {
                throw self.failure("invalid literal (expected \(word))")
            }
            for offset in 0..<length where self.bytes[self.index + offset] != word.utf8Start[offset] {
                throw self.failure("invalid literal (expected \(word))")
            }
            self.index += length
        }

        mutating func object(depth: Int) throws(Failure) {
            self.index += 1
            self.skipWhitespace()
            if self.index < self.bytes.count && self.bytes[self.index] == UInt8(ascii: "}") {
                self.index += 1
                return
            }
            while true {
                self.skipWhitespace()
                guard self.index < self.bytes.count, self.bytes[self.index] == UInt8(ascii: "\"") else {
                    throw self.failure("expected a string key")
                }
                _ = try self.string()
                self.skipWhitespace()
                guard self.index < self.bytes.count, self.bytes[self.index] == UInt8(ascii: ":") else {
                    throw self.failure("expected ':' after a key")
                }
                self.index += 1
                self.skipWhitespace()
                _ = try self.value(depth: depth + 1)
                self.skipWhitespace()
                guard self.index < self.bytes.count else { throw self.failure("unterminated object") }
                if self.bytes[self.index] == UInt8(ascii: ",") {
                    self.index += 1
                    continue
                }
                guard self.bytes[self.index] == UInt8(ascii: "}") else { throw self.failure("expected ',' or '}'") }
                self.index += 1
                return
            }
        }

        mutating func array(depth: Int) throws(Failure) {
            self.index += 1
            self.skipWhitespace()
            if self.index < self.bytes.count && self.bytes[self.index] == UInt8(ascii: "]") {
                self.index += 1
                return
            }
            while true {
                self.skipWhitespace()
                _ = try self.value(depth: depth + 1)
                self.skipWhitespace()
                guard self.index < self.bytes.count else { throw self.failure("unterminated array") }
                if self.bytes[self.index] == UInt8(ascii: ",") {
                    self.index += 1
                    continue
                }
                guard self.bytes[self.index] == UInt8(ascii: "]") else { throw self.failure("expected ',' or ']'") }
                self.index += 1
                return
            }
        }

        mutating func number() throws(Failure) {
            if self.bytes[self.index] == UInt8(ascii: "-") { self.index += 1 }
            guard self.index < self.bytes.count else { throw self.failure("incomplete number") }
            if self.bytes[self.index] == UInt8(ascii: "0") {
                self.index += 1
            } else if self.digits() == 0 {
                throw self.failure("invalid number")
            }
            if self.index < self.bytes.count && self.bytes[self.index] == UInt8(ascii: ".") {
                self.index += 1
                guard self.digits() > 0 else { throw self.failure("expected digits after '.'") }
            }
            if self.index < self.bytes.count && self.bytes[self.index] | 0x20 == UInt8(ascii: "e") {
                self.index += 1
                if self.index < self.bytes.count
                    && (self.bytes[self.index] == UInt8(ascii: "+") || self.bytes[self.index] == UInt8(ascii: "-"))
                {
                    self.index += 1
                }
                guard self.digits() > 0 else { throw self.failure("expected digits in the exponent") }
            }
        }

        mutating func digits() -> Int {
            let start = self.index
            while self.index < self.bytes.count, self.bytes[self.index] &- 0x30 < 10 { self.index += 1 }
            return self.index - start
        }

        /// Validates a string starting at its opening quote; the index ends after its closing
        /// quote. True when it has escapes.
        mutating func string() throws(Failure) -> Bool {
            let start = self.index
            let count = self.bytes.count
            var index = start + 1
            var escaped = false
            while index < count {
                // Eight bytes at a time up to the first that is not plain ASCII: the common case
                // of ids, URLs and names.
                if index + 8 <= count, let base = self.bytes.baseAddress {
                    let word = UnsafeRawPointer(base + index).loadUnaligned(as: UInt64.self)
                    let special = Self.specialBytes(UInt64(littleEndian: word))
                    guard special != 0 else {
                        index += 8
                        continue
                    }
                    index += special.trailingZeroBitCount >> 3
                }
                let byte = self.bytes[index]
                if byte == UInt8(ascii: "\"") {
                    self.index = index + 1
                    return escaped
                }
                if byte == UInt8(ascii: "\\") {
                    escaped = true
                    index = try self.escape(at: index, stringStart: start)
                } else if byte < 0x20 {
                    throw self.failure("control character in a string", at: index)
                } else if byte < 0x80 {
                    index += 1
                } else {
                    index = try self.utf8Sequence(at: index)
                }
            }
            throw self.failure("unterminated string", at: start)
        }

        /// The high bit set in each of the eight bytes (little-endian) that is a quote, a
        /// backslash, a control character or not ASCII. Exact up to the first such byte: a
        /// borrow only carries upward from a byte that is one of them.
        @inline(__always)
        static func specialBytes(_ word: UInt64) -> UInt64 {
            let ones: UInt64 = 0x0101_0101_0101_0101
            let highs: UInt64 = 0x8080_8080_8080_8080
            let quotes = word ^ (ones &* 0x22)
            let backslashes = word ^ (ones &* 0x5C)
            let zeroQuote = (quotes &- ones) & ~quotes
            let zeroBackslash = (backslashes &- ones) & ~backslashes
            let control = (word &- ones &* 0x20) & ~word
            return (zeroQuote | zeroBackslash | control | word) & highs
        }

        /// Validates the escape at `index` (a backslash); returns the index after it.
        func escape(at index: Int, stringStart: Int) throws(Failure) -> Int {
            guard index + 1 < self.bytes.count else { throw self.failure("unterminated string", at: stringStart) }
            switch self.bytes[index + 1] {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                return index + 2
            case UInt8(ascii: "u"):
                guard index + 6 <= self.bytes.count else { throw self.failure("incomplete \\u escape", at: index) }
                guard let code = JSONEscapes.hex4(self.bytes, at: index + 2) else {
                    throw self.failure("invalid hex digit in \\u escape", at: index)
                }
                if (0xDC00...0xDFFF).contains(code) {
                    throw self.failure("unpaired surrogate in \\u escape", at: index)
                }
                guard (0xD800...0xDBFF).contains(code) else { return index + 6 }
                guard index + 7 < self.bytes.count, self.bytes[index + 6] == UInt8(ascii: "\\"),
                    self.bytes[index + 7] == UInt8(ascii: "u")
                else { throw self.failure("unpaired surrogate in \\u escape", at: index) }
                guard index + 12 <= self.bytes.count else { throw self.failure("incomplete \\u escape", at: index + 6) }
                guard let low = JSONEscapes.hex4(self.bytes, at: index + 8) else {
                    throw self.failure("invalid hex digit in \\u escape", at: index + 6)
                }
                guard (0xDC00...0xDFFF).contains(low) else {
                    throw self.failure("invalid low surrogate", at: index + 6)
                }
                return index + 12
            default:
                throw self.failure("invalid escape '\\\(Self.printable(self.bytes[index + 1]))'", at: index)
            }
        }

        /// Validates the UTF-8 sequence led by the byte at `index` (not ASCII): no overlong
        /// forms, no surrogates, nothing above U+10FFFF. Returns the index after it.
        func utf8Sequence(at index: Int) throws(Failure) -> Int {
            let lead = self.bytes[index]
            let trailing: Int
            var low: UInt8 = 0x80
            var high: UInt8 = 0xBF
            switch lead {
            case 0xC2...0xDF: trailing = 1
            case 0xE0:
                trailing = 2
                low = 0xA0
            case 0xE1...0xEC, 0xEE...0xEF: trailing = 2
            case 0xED:
                trailing = 2
                high = 0x9F
            case 0xF0:
                trailing = 3
                low = 0x90
            case 0xF1...0xF3: trailing = 3
            case 0xF4:
                trailing = 3
                high = 0x8F
            default: throw self.failure("invalid UTF-8 in a string", at: index)
            }
            guard index + trailing < self.bytes.count, (low...high).contains(self.bytes[index + 1]) else {
                throw self.failure("invalid UTF-8 in a string", at: index)
            }
            for offset in 2..<trailing + 1 where self.bytes[index + offset] & 0xC0 != 0x80 {
                throw self.failure("invalid UTF-8 in a string", at: index)
            }
            return index + trailing + 1
        }
    }
}
