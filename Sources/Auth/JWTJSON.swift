/// A JSON value as read from a token's header or payload, or from a JWKS document.
///
/// Sluice reads JOSE JSON with its own small parser rather than Foundation's `JSONDecoder`:
/// the decoder silently keeps the *first* of two members with the same name, whereas RFC 7519 §4
/// and RFC 7515 §4 require duplicates to be rejected (or only the last used). A token such as
/// `{"aud":"evil","aud":"sluice"}` must not mean one thing to Sluice and another to jwt-kit.
public enum JWTJSONValue: Sendable, Equatable {
    case string(String)
    case number(Double)
    case bool(Bool)
    case null
    case array([JWTJSONValue])
    case object([String: JWTJSONValue])

    /// The string, if this is a string.
    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    /// The number, if this is a number.
    public var numberValue: Double? {
        if case .number(let value) = self { return value }
        return nil
    }

    /// The elements, if this is an array.
    public var arrayValue: [JWTJSONValue]? {
        if case .array(let value) = self { return value }
        return nil
    }

    /// The members, if this is an object.
    public var objectValue: [String: JWTJSONValue]? {
        if case .object(let value) = self { return value }
        return nil
    }
}

/// Why a JOSE JSON text was refused.
enum JWTJSONError: Error, Equatable {
    /// Not UTF-8.
    case notUTF8
    /// Not well-formed JSON, or nested too deeply.
    case malformed
    /// Well-formed, but not an object at the top.
    case notAnObject
    /// An object has two members with the same (unescaped) name.
    case duplicateMember
}

/// A strict RFC 8259 parser that refuses duplicate member names in every object.
enum JWTJSON {
    /// Deeper nesting than this is refused: no token or key set needs it, and it bounds the
    /// recursion.
    static let maximumDepth = 32

    /// Parses `bytes` as a JSON object (the only top-level form JOSE allows).
    static func parseObject(_ bytes: some Collection<UInt8>) throws(JWTJSONError) -> [String: JWTJSONValue] {
        let array = Array(bytes)
        guard String(validating: array, as: UTF8.self) != nil else { throw .notUTF8 }
        var parser = Parser(bytes: array)
        parser.skipWhitespace()
        guard parser.peek() == UInt8(ascii: "{") else {
            _ = try parser.parseValue(depth: 0)
            throw .notAnObject
        }
        let value = try parser.parseValue(depth: 0)
        parser.skipWhitespace()
        guard parser.atEnd, case .object(let members) = value else { throw .malformed }
        return members
    }

    private struct Parser {
        let bytes: [UInt8]
        var index = 0

        init(bytes: [UInt8]) { self.bytes = bytes }

        var atEnd: Bool { self.index >= self.bytes.count }

        func peek() -> UInt8? { self.atEnd ? nil : self.bytes[self.index] }

        mutating func skipWhitespace() {
            while let byte = self.peek(), byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D {
                self.index += 1
            }
        }

        mutating func expect(_ literal: String) throws(JWTJSONError) {
            for byte in literal.utf8 {
                guard self.peek() == byte else { throw .malformed }
                self.index += 1
            }
        }

        mutating func parseValue(depth: Int) throws(JWTJSONError) -> JWTJSONValue {
            guard depth <= JWTJSON.maximumDepth else { throw .malformed }
            self.skipWhitespace()
            guard let byte = self.peek() else { throw .malformed }
            switch byte {
            case UInt8(ascii: "{"): return try self.parseObjectBody(depth: depth)
            case UInt8(ascii: "["): return try self.parseArray(depth: depth)
            case UInt8(ascii: "\""): return .string(try self.parseString())
            case UInt8(ascii: "t"):
                try self.expect("true")
                return .bool(true)
            case UInt8(ascii: "f"):
                try self.expect("false")
                return .bool(false)
            case UInt8(ascii: "n"):
                try self.expect("null")
                return .null
            default: return .number(try self.parseNumber())
            }
        }

        mutating func parseObjectBody(depth: Int) throws(JWTJSONError) -> JWTJSONValue {
            self.index += 1
            var members: [String: JWTJSONValue] = [:]
            self.skipWhitespace()
            if self.peek() == UInt8(ascii: "}") {
                self.index += 1
                return .object(members)
            }
            while true {
                self.skipWhitespace()
                guard self.peek() == UInt8(ascii: "\"") else { throw .malformed }
                let name = try self.parseString()
                self.skipWhitespace()
                try self.expect(":")
                let value = try self.parseValue(depth: depth + 1)
                guard members.updateValue(value, forKey: name) == nil else { throw .duplicateMember }
                self.skipWhitespace()
                guard let next = self.peek() else { throw .malformed }
                self.index += 1
                if next == UInt8(ascii: "}") { return .object(members) }
                guard next == UInt8(ascii: ",") else { throw .malformed }
            }
        }

        mutating func parseArray(depth: Int) throws(JWTJSONError) -> JWTJSONValue {
            self.index += 1
            var elements: [JWTJSONValue] = []
            self.skipWhitespace()
            if self.peek() == UInt8(ascii: "]") {
                self.index += 1
                return .array(elements)
            }
            while true {
                elements.append(try self.parseValue(depth: depth + 1))
                self.skipWhitespace()
                guard let next = self.peek() else { throw .malformed }
                self.index += 1
                if next == UInt8(ascii: "]") { return .array(elements) }
                guard next == UInt8(ascii: ",") else { throw .malformed }
            }
        }

        mutating func parseHex4() throws(JWTJSONError) -> UInt16 {
            guard self.index + 4 <= self.bytes.count else { throw .malformed }
            var value: UInt16 = 0
            for _ in 0..<4 {
                let byte = self.bytes[self.index]
                let digit: UInt8
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
                default: throw .malformed
                }
                value = value << 4 | UInt16(digit)
                self.index += 1
            }
            return value
        }

        mutating func parseString() throws(JWTJSONError) -> String {
            self.index += 1
            var scalars = String.UnicodeScalarView()
            var run: [UInt8] = []
            func flush() {
                if !run.isEmpty {
                    scalars.append(contentsOf: String(decoding: run, as: UTF8.self).unicodeScalars)
                    run.removeAll(keepingCapacity: true)
                }
            }
            while true {
                guard let byte = self.peek() else { throw .malformed }
                self.index += 1
                switch byte {
                case UInt8(ascii: "\""):
                    flush()
                    return String(scalars)
                case 0x00..<0x20:
                    throw .malformed
                case UInt8(ascii: "\\"):
                    flush()
                    guard let escaped = self.peek() else { throw .malformed }
                    self.index += 1
                    switch escaped {
                    case UInt8(ascii: "\""): scalars.append("\"")
                    case UInt8(ascii: "\\"): scalars.append("\\")
                    case UInt8(ascii: "/"): scalars.append("/")
                    case UInt8(ascii: "b"): scalars.append("\u{08}")
                    case UInt8(ascii: "f"): scalars.append("\u{0C}")
                    case UInt8(ascii: "n"): scalars.append("\n")
                    case UInt8(ascii: "r"): scalars.append("\r")
                    case UInt8(ascii: "t"): scalars.append("\t")
                    case UInt8(ascii: "u"):
                        let unit = try self.parseHex4()
                        if UTF16.isLeadSurrogate(unit) {
                            try self.expect("\\u")
                            let trail = try self.parseHex4()
                            guard UTF16.isTrailSurrogate(trail) else { throw .malformed }
                            let value = 0x10000 + (UInt32(unit - 0xD800) << 10) + UInt32(trail - 0xDC00)
                            guard let scalar = Unicode.Scalar(value) else { throw .malformed }
                            scalars.append(scalar)
                        } else {
                            guard let scalar = Unicode.Scalar(UInt32(unit)) else { throw .malformed }
                            scalars.append(scalar)
                        }
                    default: throw .malformed
                    }
                default:
                    run.append(byte)
                }
            }
        }

        mutating func parseNumber() throws(JWTJSONError) -> Double {
            let start = self.index
            func digits(_ parser: inout Parser) -> Int {
                var count = 0
                while let byte = parser.peek(), byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") {
                    parser.index += 1
                    count += 1
                }
                return count
            }
            if self.peek() == UInt8(ascii: "-") { self.index += 1 }
            if self.peek() == UInt8(ascii: "0") {
                self.index += 1
            } else {
                guard digits(&self) > 0 else { throw .malformed }
            }
            if self.peek() == UInt8(ascii: ".") {
                self.index += 1
                guard digits(&self) > 0 else { throw .malformed }
            }
            if self.peek() == UInt8(ascii: "e") || self.peek() == UInt8(ascii: "E") {
                self.index += 1
                if self.peek() == UInt8(ascii: "+") || self.peek() == UInt8(ascii: "-") { self.index += 1 }
                guard digits(&self) > 0 else { throw .malformed }
            }
            let text = String(decoding: self.bytes[start..<self.index], as: UTF8.self)
            guard let value = Double(text), value.isFinite else { throw .malformed }
            return value
        }
    }
}
