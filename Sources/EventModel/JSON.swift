/// A parsed JSON value. Objects keep their keys in document order.
public enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    /// The number's text exactly as written (re-serialised verbatim, no precision loss).
    case number(String)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case (.bool(let a), .bool(let b)): return a == b
        case (.number(let a), .number(let b)): return a == b
        case (.string(let a), .string(let b)): return a == b
        case (.array(let a), .array(let b)): return a == b
        case (.object(let a), .object(let b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members.first { $0.0 == key }?.1
    }

    /// A short name of the value's type, for error messages.
    public var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "boolean"
        case .number: "number"
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }
}

/// A syntax error with where it happened.
public struct JSONSyntaxError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    /// Byte offset into the input.
    public var offset: Int
    public var line: Int
    public var column: Int

    public var description: String { "\(self.message) at line \(self.line), column \(self.column)" }
}

/// A strict RFC 8259 parser over UTF-8 bytes: precise error positions, nesting depth limited,
/// numbers kept as written.
public struct JSONParser {
    public static let maxDepth = 64

    private let bytes: UnsafeBufferPointer<UInt8>
    private var index = 0

    /// Parses exactly one JSON value (surrounding whitespace allowed).
    public static func parse(_ data: [UInt8]) throws(JSONSyntaxError) -> JSONValue {
        try data.withUnsafeBufferPointer { buffer throws(JSONSyntaxError) in try Self.parse(buffer) }
    }

    /// Parses exactly one JSON value (surrounding whitespace allowed).
    public static func parse(_ data: ArraySlice<UInt8>) throws(JSONSyntaxError) -> JSONValue {
        try data.withUnsafeBufferPointer { buffer throws(JSONSyntaxError) in try Self.parse(buffer) }
    }

    /// Parses exactly one JSON value (surrounding whitespace allowed).
    public static func parse(_ buffer: UnsafeBufferPointer<UInt8>) throws(JSONSyntaxError) -> JSONValue {
        let result: Result<JSONValue, JSONSyntaxError> = {
            var parser = JSONParser(bytes: buffer)
            do throws(JSONSyntaxError) {
                parser.skipWhitespace()
                let value = try parser.parseValue(depth: 0)
                parser.skipWhitespace()
                guard parser.index == buffer.count else { throw parser.error("unexpected data after the JSON value") }
                return .success(value)
            } catch {
                return .failure(error)
            }
        }()
        return try result.get()
    }

    private init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    private func error(_ message: String, at offset: Int? = nil) -> JSONSyntaxError {
        let offset = min(offset ?? self.index, self.bytes.count)
        var line = 1
        var column = 1
        for byte in self.bytes[0..<offset] {
            if byte == 0x0A {
                line += 1
                column = 1
            } else if byte & 0xC0 != 0x80 {
                column += 1
            }
        }
        return JSONSyntaxError(message: message, offset: offset, line: line, column: column)
    }

    private mutating func skipWhitespace() {
        while self.index < self.bytes.count {
            switch self.bytes[self.index] {
            case 0x20, 0x09, 0x0A, 0x0D: self.index += 1
            default: return
            }
        }
    }

    private mutating func parseValue(depth: Int) throws(JSONSyntaxError) -> JSONValue {
        guard depth < Self.maxDepth else { throw self.error("nesting deeper than \(Self.maxDepth) levels") }
        guard self.index < self.bytes.count else { throw self.error("unexpected end of input") }
        switch self.bytes[self.index] {
        case UInt8(ascii: "{"): return try self.parseObject(depth: depth)
        case UInt8(ascii: "["): return try self.parseArray(depth: depth)
        case UInt8(ascii: "\""): return .string(try self.parseString())
        case UInt8(ascii: "t"): return try self.literal("true", .bool(true))
        case UInt8(ascii: "f"): return try self.literal("false", .bool(false))
        case UInt8(ascii: "n"): return try self.literal("null", .null)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try self.parseNumber()
        default: throw self.error("unexpected character '\(Self.printable(self.bytes[self.index]))'")
        }
    }

    private static func printable(_ byte: UInt8) -> String {
        byte >= 0x20 && byte < 0x7F ? String(UnicodeScalar(byte)) : "\\u{\(String(byte, radix: 16))}"
    }

    private mutating func literal(_ word: StaticString, _ value: JSONValue) throws(JSONSyntaxError) -> JSONValue {
        let length = word.utf8CodeUnitCount
        guard self.index + length <= self.bytes.count,
            (0..<length).allSatisfy({ self.bytes[self.index + $0] == word.utf8Start[$0] })
        else { throw self.error("invalid literal (expected \(word))") }
        self.index += length
        return value
    }

    private mutating func parseObject(depth: Int) throws(JSONSyntaxError) -> JSONValue {
        self.index += 1
        var members: [(String, JSONValue)] = []
        self.skipWhitespace()
        if self.index < self.bytes.count && self.bytes[self.index] == UInt8(ascii: "}") {
            self.index += 1
            return .object(members)
        }
        while true {
            self.skipWhitespace()
            guard self.index < self.bytes.count, self.bytes[self.index] == UInt8(ascii: "\"") else {
                throw self.error("expected a string key")
            }
            let key = try self.parseString()
            self.skipWhitespace()
            guard self.index < self.bytes.count, self.bytes[self.index] == UInt8(ascii: ":") else {
                throw self.error("expected ':' after the key \"\(key)\"")
            }
            self.index += 1
            self.skipWhitespace()
            members.append((key, try self.parseValue(depth: depth + 1)))
            self.skipWhitespace()
            guard self.index < self.bytes.count else { throw self.error("unterminated object") }
            if self.bytes[self.index] == UInt8(ascii: ",") {
                self.index += 1
                continue
            }
            guard self.bytes[self.index] == UInt8(ascii: "}") else { throw self.error("expected ',' or '}'") }
            self.index += 1
            return .object(members)
        }
    }

    private mutating func parseArray(depth: Int) throws(JSONSyntaxError) -> JSONValue {
        self.index += 1
        var elements: [JSONValue] = []
        self.skipWhitespace()
        if self.index < self.bytes.count && self.bytes[self.index] == UInt8(ascii: "]") {
            self.index += 1
            return .array(elements)
        }
        while true {
            self.skipWhitespace()
            elements.append(try self.parseValue(depth: depth + 1))
            self.skipWhitespace()
            guard self.index < self.bytes.count else { throw self.error("unterminated array") }
            if self.bytes[self.index] == UInt8(ascii: ",") {
                self.index += 1
                continue
            }
            guard self.bytes[self.index] == UInt8(ascii: "]") else { throw self.error("expected ',' or ']'") }
            self.index += 1
            return .array(elements)
        }
    }

    private mutating func parseNumber() throws(JSONSyntaxError) -> JSONValue {
        let start = self.index
        if self.bytes[self.index] == UInt8(ascii: "-") { self.index += 1 }
        func digits(_ parser: inout JSONParser) -> Int {
            let from = parser.index
            while parser.index < parser.bytes.count, (0x30...0x39).contains(parser.bytes[parser.index]) {
                parser.index += 1
            }
            return parser.index - from
        }
        guard self.index < self.bytes.count else { throw self.error("incomplete number") }
        if self.bytes[self.index] == UInt8(ascii: "0") {
            self.index += 1
        } else if digits(&self) == 0 {
            throw self.error("invalid number")
        }
        if self.index < self.bytes.count && self.bytes[self.index] == UInt8(ascii: ".") {
            self.index += 1
            guard digits(&self) > 0 else { throw self.error("expected digits after '.'") }
        }
        if self.index < self.bytes.count && (self.bytes[self.index] | 0x20) == UInt8(ascii: "e") {
            self.index += 1
            if self.index < self.bytes.count
                && (self.bytes[self.index] == UInt8(ascii: "+") || self.bytes[self.index] == UInt8(ascii: "-"))
            {
                self.index += 1
            }
            guard digits(&self) > 0 else { throw self.error("expected digits in the exponent") }
        }
        return .number(String(decoding: self.bytes[start..<self.index], as: UTF8.self))
    }

    private mutating func parseString() throws(JSONSyntaxError) -> String {
        let start = self.index
        self.index += 1
        // Fast path: no escapes.
        var cursor = self.index
        var ascii = true
        while cursor < self.bytes.count {
            let byte = self.bytes[cursor]
            if byte == UInt8(ascii: "\"") {
                let content = UnsafeBufferPointer(rebasing: self.bytes[self.index..<cursor])
                // ASCII is valid UTF-8 as it stands: no validation pass (whose generic code
                // was a measured share of every request).
                let text: String
                if ascii {
                    text = String(decoding: content, as: UTF8.self)
                } else {
                    guard let valid = String(validating: content, as: UTF8.self) else {
                        throw self.error("invalid UTF-8 in a string", at: start)
                    }
                    text = valid
                }
                self.index = cursor + 1
                return text
            }
            if byte == UInt8(ascii: "\\") { break }
            if byte < 0x20 { throw self.error("control character in a string", at: cursor) }
            if byte >= 0x80 { ascii = false }
            cursor += 1
        }
        var scalars: [UInt8] = Array(self.bytes[self.index..<min(cursor, self.bytes.count)])
        self.index = cursor
        while self.index < self.bytes.count {
            let byte = self.bytes[self.index]
            if byte == UInt8(ascii: "\"") {
                self.index += 1
                guard let text = String(validating: scalars, as: UTF8.self) else {
                    throw self.error("invalid UTF-8 in a string", at: start)
                }
                return text
            }
            if byte < 0x20 { throw self.error("control character in a string") }
            if byte != UInt8(ascii: "\\") {
                scalars.append(byte)
                self.index += 1
                continue
            }
            self.index += 1
            guard self.index < self.bytes.count else { break }
            let escape = self.bytes[self.index]
            self.index += 1
            if let decoded = JSONEscapes.simple(escape) {
                scalars.append(decoded)
                continue
            }
            switch escape {
            case UInt8(ascii: "u"):
                var code = try self.hex4()
                if (0xD800...0xDBFF).contains(code) {
                    guard self.index + 1 < self.bytes.count, self.bytes[self.index] == UInt8(ascii: "\\"),
                        self.bytes[self.index + 1] == UInt8(ascii: "u")
                    else { throw self.error("unpaired surrogate in \\u escape") }
                    self.index += 2
                    let low = try self.hex4()
                    guard (0xDC00...0xDFFF).contains(low) else { throw self.error("invalid low surrogate") }
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00...0xDFFF).contains(code) {
                    throw self.error("unpaired surrogate in \\u escape")
                }
                guard Unicode.Scalar(code) != nil else { throw self.error("invalid \\u escape") }
                JSONEscapes.appendUTF8(code, to: &scalars)
            default:
                throw self.error("invalid escape '\\\(Self.printable(escape))'", at: self.index - 2)
            }
        }
        throw self.error("unterminated string", at: start)
    }

    private mutating func hex4() throws(JSONSyntaxError) -> UInt32 {
        guard self.index + 4 <= self.bytes.count else { throw self.error("incomplete \\u escape") }
        guard let value = JSONEscapes.hex4(self.bytes, at: self.index) else {
            throw self.error("invalid hex digit in \\u escape")
        }
        self.index += 4
        return value
    }
}

/// Writes JSON compactly into a byte buffer.
public struct JSONWriter {
    public var bytes: [UInt8] = []

    public init(capacity: Int = 512) { self.bytes.reserveCapacity(capacity) }

    public mutating func write(_ value: JSONValue) {
        switch value {
        case .null: self.raw("null")
        case .bool(let flag): self.raw(flag ? "true" : "false")
        case .number(let text): self.raw(text)
        case .string(let text): self.string(text)
        case .array(let elements):
            self.bytes.append(UInt8(ascii: "["))
            for (index, element) in elements.enumerated() {
                if index > 0 { self.bytes.append(UInt8(ascii: ",")) }
                self.write(element)
            }
            self.bytes.append(UInt8(ascii: "]"))
        case .object(let members):
            self.bytes.append(UInt8(ascii: "{"))
            for (index, (key, member)) in members.enumerated() {
                if index > 0 { self.bytes.append(UInt8(ascii: ",")) }
                self.string(key)
                self.bytes.append(UInt8(ascii: ":"))
                self.write(member)
            }
            self.bytes.append(UInt8(ascii: "}"))
        }
    }

    public mutating func raw(_ text: String) { self.bytes.append(contentsOf: text.utf8) }

    public mutating func string(_ text: String) {
        self.bytes.append(UInt8(ascii: "\""))
        var text = text
        let clean = text.withUTF8 { utf8 -> Bool in
            // Fast path: nothing to escape, copy the bytes in one go.
            for byte in utf8 where byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") {
                return false
            }
            self.bytes.append(contentsOf: utf8)
            return true
        }
        if clean {
            self.bytes.append(UInt8(ascii: "\""))
            return
        }
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): self.raw("\\\"")
            case UInt8(ascii: "\\"): self.raw("\\\\")
            case 0x0A: self.raw("\\n")
            case 0x0D: self.raw("\\r")
            case 0x09: self.raw("\\t")
            case 0..<0x20:
                let hex = String(byte, radix: 16)
                self.raw("\\u" + String(repeating: "0", count: 4 - hex.count) + hex)
            default: self.bytes.append(byte)
            }
        }
        self.bytes.append(UInt8(ascii: "\""))
    }

    /// `"key":` followed by a string value, with a leading comma unless `first`.
    public mutating func member(_ key: String, _ value: String, first: Bool = false) {
        if !first { self.bytes.append(UInt8(ascii: ",")) }
        self.string(key)
        self.bytes.append(UInt8(ascii: ":"))
        self.string(value)
    }
}
