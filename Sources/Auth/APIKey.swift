import Crypto

/// Which class of API key: a secret key for servers, or a publishable key for browsers.
public enum APIKeyKind: String, Sendable, Hashable, Codable, CaseIterable {
    /// `slk_…`: full write credential for servers; refused from browsers.
    case secret
    /// `slp_…`: bound to origins, only for the browser endpoints (pixel, beacon, CORS).
    case publishable

    /// The typed prefix, without the trailing `_`.
    public var prefix: String {
        switch self {
        case .secret: return "slk"
        case .publishable: return "slp"
        }
    }

    /// The principal kind a key of this class proves.
    public var principalKind: Principal.Kind {
        switch self {
        case .secret: return .secretKey
        case .publishable: return .publishableKey
        }
    }
}

/// Whether a key belongs to production (`live`) or to testing (`test`).
public enum APIKeyEnvironment: String, Sendable, Hashable, Codable, CaseIterable {
    case live
    case test
}

/// A well-formed API key: `slk_<env>_<id10><secret32><crc6>` (or `slp_…`).
///
/// The `id` is public (lookup and display); the 32 secret characters carry ≈ 190 bits of
/// randomness; the last 6 characters are a base62 APIKeyCRC32 over everything before them, so that a
/// mistyped or made-up key is refused without a store lookup and scanners can tell real keys
/// from noise. `description` is the masked form: printing an `APIKey` never shows the secret.
public struct APIKey: Sendable, Hashable, CustomStringConvertible {
    public let kind: APIKeyKind
    public let environment: APIKeyEnvironment
    /// The 10 public base62 characters after the environment.
    public let id: String
    /// The whole key. Show it once, at creation; never log it.
    public let plaintext: String

    /// Length of the public id.
    public static let idLength = 10
    /// Length of the secret part: 32 base62 characters, log2(62^32) ≈ 190.5 bits.
    public static let secretLength = 32
    /// Length of the checksum: a APIKeyCRC32 in base62 (62^6 > 2^32).
    public static let checksumLength = 6
    /// Every key has this length: `slk_` + `live_` + 10 + 32 + 6.
    public static let length = 4 + 5 + idLength + secretLength + checksumLength

    /// A new random key, drawn from the system's cryptographic generator.
    public static func generate(kind: APIKeyKind, environment: APIKeyEnvironment) -> APIKey {
        var generator = SystemRandomNumberGenerator()
        return Self.generate(kind: kind, environment: environment, using: &generator)
    }

    /// A new key from `generator` (tests pass a seeded one; production must use a CSPRNG).
    public static func generate<G: RandomNumberGenerator>(
        kind: APIKeyKind,
        environment: APIKeyEnvironment,
        using generator: inout G
    ) -> APIKey {
        var body = Array("\(kind.prefix)_\(environment.rawValue)_".utf8)
        for _ in 0..<(Self.idLength + Self.secretLength) {
            body.append(APIKeyBase62.alphabet[Int.random(in: 0..<62, using: &generator)])
        }
        body.append(contentsOf: APIKeyBase62.encode(APIKeyCRC32.checksum(body), width: Self.checksumLength))
        let text = String(decoding: body, as: UTF8.self)
        let prefixLength = kind.prefix.count + environment.rawValue.count + 2
        let id = String(decoding: body[prefixLength..<(prefixLength + Self.idLength)], as: UTF8.self)
        return APIKey(kind: kind, environment: environment, id: id, plaintext: text)
    }

    /// Checks prefix, length, character set and checksum, with no store lookup: the cheap
    /// first step of verification. A failure is 401 `invalid_token` (`malformed_key` or
    /// `bad_checksum`); its detail never repeats the key.
    public static func parse(_ text: some StringProtocol) -> Result<APIKey, AuthFailure> {
        let bytes = Array(text.utf8)
        guard bytes.count == Self.length else {
            return .failure(.invalidToken("malformed_key", "The API key does not have the expected length."))
        }
        let kind: APIKeyKind
        switch String(decoding: bytes[0..<4], as: UTF8.self) {
        case "slk_": kind = .secret
        case "slp_": kind = .publishable
        default: return .failure(.invalidToken("malformed_key", "The API key does not start with slk_ or slp_."))
        }
        let environment: APIKeyEnvironment
        switch String(decoding: bytes[4..<9], as: UTF8.self) {
        case "live_": environment = .live
        case "test_": environment = .test
        default: return .failure(.invalidToken("malformed_key", "The API key's environment is not live or test."))
        }
        let tail = bytes[9...]
        guard tail.allSatisfy(APIKeyBase62.isDigit) else {
            return .failure(.invalidToken("malformed_key", "The API key contains characters outside base62."))
        }
        let checksumStart = bytes.count - Self.checksumLength
        let expected = APIKeyBase62.encode(APIKeyCRC32.checksum(bytes[0..<checksumStart]), width: Self.checksumLength)
        guard expected.elementsEqual(bytes[checksumStart...]) else {
            return .failure(.invalidToken("bad_checksum", "The API key's checksum does not match; it is mistyped."))
        }
        let id = String(decoding: bytes[9..<(9 + Self.idLength)], as: UTF8.self)
        return .success(APIKey(kind: kind, environment: environment, id: id, plaintext: String(text)))
    }

    /// `slk_live_<id10>…<last4>`: safe to print, log and list.
    public var masked: String {
        "\(self.kind.prefix)_\(self.environment.rawValue)_\(self.id)…\(self.plaintext.suffix(4))"
    }

    /// The masked form of any text presented as a key. A string that is not a well-formed key
    /// shows only a known prefix, never its content.
    public static func mask(_ text: some StringProtocol) -> String {
        switch Self.parse(text) {
        case .success(let key): return key.masked
        case .failure:
            if text.hasPrefix("slk_") { return "slk_…" }
            if text.hasPrefix("slp_") { return "slp_…" }
            return "…"
        }
    }

    /// SHA-256 of the whole key, lowercase hex: what a store keeps instead of the key.
    /// A 190-bit random secret needs no slow KDF or salt.
    public var sha256: String { Self.sha256(of: self.plaintext) }

    /// SHA-256 hex of `text` as a key would be hashed for storage.
    /// Runs on every request that presents a key: 64 ASCII bytes written in one pass (the
    /// earlier `String(radix:)` per byte and `joined()` cost more than the hash).
    public static func sha256(of text: some StringProtocol) -> String {
        let digest = SHA256.hash(data: Array(text.utf8))
        let digits: StaticString = "0123456789abcdef"
        return String(unsafeUninitializedCapacity: SHA256.byteCount * 2) { buffer in
            digits.withUTF8Buffer { digits in
                var index = 0
                for byte in digest {
                    buffer[index] = digits[Int(byte >> 4)]
                    buffer[index + 1] = digits[Int(byte & 0x0f)]
                    index += 2
                }
                return index
            }
        }
    }

    public var description: String { self.masked }
}

/// The base62 digits `0-9A-Za-z`.
enum APIKeyBase62 {
    static let alphabet: [UInt8] = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".utf8)

    static func isDigit(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
            || (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
    }

    /// `value` in base62, most significant digit first, left-padded with `0` to `width`.
    static func encode(_ value: UInt32, width: Int) -> [UInt8] {
        var digits = [UInt8](repeating: Self.alphabet[0], count: width)
        var rest = UInt64(value)
        var index = width - 1
        while rest > 0 && index >= 0 {
            digits[index] = Self.alphabet[Int(rest % 62)]
            rest /= 62
            index -= 1
        }
        return digits
    }
}

/// CRC-32 (IEEE 802.3, the one zlib and GitHub's token checksums use).
enum APIKeyCRC32 {
    private static let table: [UInt32] = (0..<256).map { index in
        var crc = UInt32(index)
        for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
        return crc
    }

    static func checksum(_ bytes: some Sequence<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes { crc = (crc >> 8) ^ Self.table[Int((crc ^ UInt32(byte)) & 0xFF)] }
        return crc ^ 0xFFFF_FFFF
    }
}
