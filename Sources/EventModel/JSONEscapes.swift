/// The pieces of JSON string decoding that both readers need — ``JSONParser`` (the gateway's
/// bodies) and the Loader's `MessageScanner` (Kafka messages) — written once: the `\uXXXX`
/// digits, the one-character escapes, and UTF-8 encoding of a decoded code point.
package enum JSONEscapes {
    /// The value of four hex digits at `index`, or nil when they are not all there.
    @inlinable
    package static func hex4(_ bytes: UnsafeBufferPointer<UInt8>, at index: Int) -> UInt32? {
        guard index >= 0, index + 4 <= bytes.count else { return nil }
        var value: UInt32 = 0
        for offset in 0..<4 {
            let byte = bytes[index + offset]
            let digit: UInt32
            switch byte {
            case 0x30...0x39: digit = UInt32(byte - 0x30)
            case 0x41...0x46: digit = UInt32(byte - 0x41 + 10)
            case 0x61...0x66: digit = UInt32(byte - 0x61 + 10)
            default: return nil
            }
            value = value << 4 | digit
        }
        return value
    }

    /// The byte a one-character escape (`\n`, `\"`, …) stands for; nil for `u` and for
    /// characters that are not escapes.
    @inlinable
    package static func simple(_ escape: UInt8) -> UInt8? {
        switch escape {
        case UInt8(ascii: "\""): 0x22
        case UInt8(ascii: "\\"): 0x5C
        case UInt8(ascii: "/"): 0x2F
        case UInt8(ascii: "b"): 0x08
        case UInt8(ascii: "f"): 0x0C
        case UInt8(ascii: "n"): 0x0A
        case UInt8(ascii: "r"): 0x0D
        case UInt8(ascii: "t"): 0x09
        default: nil
        }
    }

    /// Appends `code` (a Unicode scalar value) as UTF-8.
    @inlinable
    package static func appendUTF8(_ code: UInt32, to output: inout [UInt8]) {
        switch code {
        case 0..<0x80:
            output.append(UInt8(code))
        case 0x80..<0x800:
            output.append(UInt8(0xC0 | code >> 6))
            output.append(UInt8(0x80 | code & 0x3F))
        case 0x800..<0x10000:
            output.append(UInt8(0xE0 | code >> 12))
            output.append(UInt8(0x80 | code >> 6 & 0x3F))
            output.append(UInt8(0x80 | code & 0x3F))
        default:
            output.append(UInt8(0xF0 | code >> 18 & 0x07))
            output.append(UInt8(0x80 | code >> 12 & 0x3F))
            output.append(UInt8(0x80 | code >> 6 & 0x3F))
            output.append(UInt8(0x80 | code & 0x3F))
        }
    }
}
