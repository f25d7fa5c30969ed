/// The one credential a request presents, found before any lookup or cryptography.
///
/// RFC 6750 §2: a client MUST NOT use more than one method to send its token. A request with
/// two (two `Authorization` headers, a bearer token and `X-Write-Key`, a key in the header
/// and in the query) is refused as `invalid_request`, so that no proxy or middleware in front
/// of Sluice can disagree with it about which credential counted.
public enum PresentedCredential: Sendable, Equatable {
    /// Nothing: the request is anonymous (allowed only when auth is not required, or when a
    /// client certificate identifies it).
    case none
    /// `Authorization: Bearer <JWT>`: an OAuth 2.0 access token.
    case accessToken(String)
    /// An API key (`slk_…` or `slp_…`), from any of the places keys may travel.
    case apiKey(String, from: KeyPlacement)

    /// Where an API key travelled.
    public enum KeyPlacement: String, Sendable, Equatable {
        /// `Authorization: Bearer slk_…`.
        case bearer
        /// `Authorization: Basic base64(slk_…:)`, as Segment's and RudderStack's SDKs send it.
        case basic
        /// `X-Write-Key: slp_…`.
        case header
        /// `?key=slp_…` or `?writeKey=slp_…`: only publishable keys, only on browser endpoints,
        /// because `sendBeacon` and image pixels cannot set headers.
        case query
    }
}

/// Finds the credential of a request: a pure function of its headers and query.
public enum CredentialExtraction {
    /// The prefixes that make a bearer value an API key rather than a JWT.
    public static let secretKeyPrefix = "slk_"
    public static let publishableKeyPrefix = "slp_"

    /// Query parameters that may carry a publishable key.
    public static let keyQueryParameters = ["key", "writeKey"]

    /// - Parameters:
    ///   - authorization: every `Authorization` header value, in order.
    ///   - writeKey: every `X-Write-Key` header value.
    ///   - query: the query parameters, as (name, value) pairs in order.
    ///   - browserEndpoint: whether the route is one a browser calls without headers (the pixel,
    ///     the beacon), where a key in the query is allowed.
    public static func extract(
        authorization: [String],
        writeKey: [String],
        query: [(String, String)],
        browserEndpoint: Bool
    ) -> Result<PresentedCredential, AuthFailure> {
        if query.contains(where: { $0.0 == "access_token" }) {
            // RFC 6750 §2.3 discourages it, and URLs end up in logs and Referer headers.
            return .failure(
                .invalidRequest(
                    "token_in_query",
                    "access tokens are not accepted in the URL; send Authorization: Bearer <token>"
                )
            )
        }
        let queryKeys = query.filter { Self.keyQueryParameters.contains($0.0) }.map(\.1)
        let count = authorization.count + writeKey.count + queryKeys.count
        guard count <= 1 else {
            return .failure(
                .invalidRequest(
                    "multiple_credentials",
                    "the request carries \(count) credentials; send exactly one (RFC 6750 section 2)"
                )
            )
        }
        if let header = authorization.first { return Self.authorizationHeader(header) }
        if let key = writeKey.first {
            let key = Self.trimmed(key)
            guard Self.looksLikeKey(key) else {
                return .failure(.invalidToken("malformed_key", "X-Write-Key does not hold a Sluice key"))
            }
            return .success(.apiKey(key, from: .header))
        }
        if let key = queryKeys.first {
            guard browserEndpoint else {
                return .failure(
                    .invalidRequest(
                        "key_in_query",
                        "keys in the URL are accepted only by the pixel and beacon endpoints; send Authorization: Bearer <key>"
                    )
                )
            }
            if key.hasPrefix(Self.secretKeyPrefix) {
                return .failure(
                    .forbidden(
                        "secret_key_in_browser",
                        "a secret key was sent in a URL; it must be treated as leaked: revoke it, and use a publishable key (slp_) in browsers"
                    )
                )
            }
            guard key.hasPrefix(Self.publishableKeyPrefix) else {
                return .failure(.invalidToken("malformed_key", "the key in the URL is not a publishable Sluice key"))
            }
            return .success(.apiKey(key, from: .query))
        }
        return .success(.none)
    }

    /// `Bearer <token>` or `Basic <base64(key:)>`; the scheme is case-insensitive (RFC 9110 §11.1).
    static func authorizationHeader(_ header: String) -> Result<PresentedCredential, AuthFailure> {
        // Bytes, not Characters: this runs on every request, before the failed-authentication
        // limiter can refuse a flood, on values up to the header limit (a JWT is ~1 KB), and
        // walking those as grapheme clusters cost more than the rest of the refusal.
        let utf8 = header.utf8
        func isBlank(_ byte: UInt8) -> Bool { byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
        guard let start = utf8.firstIndex(where: { !isBlank($0) }),
            let space = utf8[start...].firstIndex(where: isBlank)
        else {
            return .failure(
                .invalidRequest(
                    "malformed_authorization",
                    "Authorization must be 'Bearer <token>' or 'Basic <credentials>'"
                )
            )
        }
        let scheme = String(Substring(utf8[start..<space])).lowercased()
        let rest = utf8[space...]
        let credentialStart = rest.firstIndex(where: { !isBlank($0) }) ?? rest.endIndex
        let credentialEnd = rest.lastIndex(where: { !isBlank($0) }).map { utf8.index(after: $0) } ?? credentialStart
        let credentialBytes = utf8[credentialStart..<credentialEnd]
        guard !credentialBytes.isEmpty, !credentialBytes.contains(where: isBlank) else {
            return .failure(
                .invalidRequest("malformed_authorization", "Authorization must hold one credential after its scheme")
            )
        }
        let credential = String(Substring(credentialBytes))
        switch scheme {
        case "bearer":
            if Self.looksLikeKey(credential) { return .success(.apiKey(credential, from: .bearer)) }
            return .success(.accessToken(credential))
        case "basic":
            // The key is the user name and the password is empty: "slk_…:" in base64.
            guard let decoded = Base64Text.decode(credential), let text = String(validating: decoded, as: UTF8.self)
            else {
                return .failure(.invalidRequest("malformed_authorization", "Basic credentials are not valid base64"))
            }
            var key = Substring(text)
            if key.hasSuffix(":") { key = key.dropLast() }
            guard Self.looksLikeKey(String(key)), !key.contains(":") else {
                return .failure(
                    .invalidToken(
                        "malformed_key",
                        "Basic credentials must be a Sluice key as the user name and no password"
                    )
                )
            }
            return .success(.apiKey(String(key), from: .basic))
        default:
            return .failure(
                .invalidRequest(
                    "unsupported_scheme",
                    "the Authorization scheme is not supported; use Bearer (an access token or an API key) or Basic"
                )
            )
        }
    }

    static func looksLikeKey(_ text: String) -> Bool {
        text.hasPrefix(Self.secretKeyPrefix) || text.hasPrefix(Self.publishableKeyPrefix)
    }

    static func trimmed(_ text: String) -> String {
        var view = Substring(text)
        while let first = view.first, first == " " || first == "\t" { view.removeFirst() }
        while let last = view.last, last == " " || last == "\t" { view.removeLast() }
        return String(view)
    }
}

/// Standard base64 (RFC 4648 §4) with padding, as HTTP Basic uses; nil on anything else.
enum Base64Text {
    static func decode(_ text: String) -> [UInt8]? {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty, bytes.count % 4 == 0 else { return nil }
        var output: [UInt8] = []
        output.reserveCapacity(bytes.count / 4 * 3)
        var index = 0
        while index < bytes.count {
            var quad: UInt32 = 0
            var padding = 0
            for offset in 0..<4 {
                let byte = bytes[index + offset]
                let value: UInt32
                switch byte {
                case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = UInt32(byte - UInt8(ascii: "A"))
                case UInt8(ascii: "a")...UInt8(ascii: "z"): value = UInt32(byte - UInt8(ascii: "a")) + 26
                case UInt8(ascii: "0")...UInt8(ascii: "9"): value = UInt32(byte - UInt8(ascii: "0")) + 52
                case UInt8(ascii: "+"): value = 62
                case UInt8(ascii: "/"): value = 63
                case UInt8(ascii: "="):
                    // Padding only at the end of the last quad, at most two.
                    guard index + 4 == bytes.count, offset >= 2 else { return nil }
                    padding += 1
                    value = 0
                default: return nil
                }
                if padding > 0 && byte != UInt8(ascii: "=") { return nil }
                quad = quad << 6 | value
            }
            output.append(UInt8(truncatingIfNeeded: quad >> 16))
            if padding < 2 { output.append(UInt8(truncatingIfNeeded: quad >> 8)) }
            if padding < 1 { output.append(UInt8(truncatingIfNeeded: quad)) }
            index += 4
        }
        return output
    }
}
