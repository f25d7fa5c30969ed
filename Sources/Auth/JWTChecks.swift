import Foundation
import SluiceCore

/// The checks of a bearer JWT, in the order Sluice runs them (security.md §7.3 step 5), each a
/// pure function of the token and the configuration: cheap structure first, cryptography last.
///
/// Every failure is a 401 `invalid_token` with a fixed `reason` label, except a missing scope
/// (403 `insufficient_scope`). Details are coarse and never echo the token.
public enum JWTChecks {
    /// A `kid` longer than this is refused before any lookup.
    public static let maximumKeyIDBytes = 256

    /// Header members that name key material or where to fetch it. Sluice never uses them
    /// (RFC 8725 §3.10; CVE-2018-0114): they are counted and ignored.
    public static let untrustedHeaderMembers = ["jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256"]

    /// The three base64url segments of a compact JWS, still encoded.
    public struct Segments: Sendable, Equatable {
        public var header: Substring
        public var payload: Substring
        public var signature: Substring
    }

    /// What the verifier needs from a header once it passed the issuer-independent checks.
    public struct Header: Sendable, Equatable {
        public var alg: String
        public var kid: String
        public var typ: String?
        /// The untrusted members present (`jku`, `x5u`, …), for the metric.
        public var untrustedMembers: [String]

        public init(alg: String, kid: String, typ: String?, untrustedMembers: [String]) {
            self.alg = alg
            self.kid = kid
            self.typ = typ
            self.untrustedMembers = untrustedMembers
        }
    }

    // MARK: 5.1 structure

    /// Step 5.1: the token is at most `maxBytes` long.
    public static func checkSize(_ token: String, maxBytes: Int) throws(AuthFailure) {
        guard token.utf8.count <= maxBytes else {
            throw .invalidToken("too_large", "the token is longer than \(maxBytes) bytes")
        }
        guard !token.isEmpty else { throw .invalidToken("malformed", "the token is empty") }
    }

    /// Step 5.1: exactly three dot-separated segments (a JWS, not a JWE or a stripped token).
    public static func splitSegments(_ token: String) throws(AuthFailure) -> Segments {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else {
            throw .invalidToken("malformed", "a JWT has three segments separated by dots")
        }
        guard !parts[0].isEmpty, !parts[1].isEmpty else {
            throw .invalidToken("malformed", "the header or payload segment is empty")
        }
        return Segments(header: parts[0], payload: parts[1], signature: parts[2])
    }

    /// Step 5.1: decodes one segment, accepting only canonical unpadded base64url (RFC 7515 §2):
    /// the alphabet `[A-Za-z0-9_-]`, no `=`, no whitespace, and zero unused trailing bits, so that
    /// one token has exactly one spelling.
    public static func decodeBase64URL(_ segment: Substring) throws(AuthFailure) -> [UInt8] {
        let failure = AuthFailure.invalidToken("malformed", "a segment is not canonical base64url")
        var output: [UInt8] = []
        output.reserveCapacity(segment.utf8.count * 3 / 4)
        var accumulator: UInt32 = 0
        var bits = 0
        var count = 0
        for byte in segment.utf8 {
            let value: UInt32
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = UInt32(byte - UInt8(ascii: "A"))
            case UInt8(ascii: "a")...UInt8(ascii: "z"): value = UInt32(byte - UInt8(ascii: "a")) + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = UInt32(byte - UInt8(ascii: "0")) + 52
            case UInt8(ascii: "-"): value = 62
            case UInt8(ascii: "_"): value = 63
            default: throw failure
            }
            accumulator = (accumulator << 6) | value
            bits += 6
            count += 1
            if bits >= 8 {
                bits -= 8
                output.append(UInt8(truncatingIfNeeded: accumulator >> UInt32(bits)))
                accumulator &= (1 << UInt32(bits)) - 1
            }
        }
        // A final group of one character cannot encode a byte; leftover bits must be zero.
        guard count % 4 != 1, accumulator == 0 else { throw failure }
        return output
    }

    /// Step 5.1–5.2: decodes a header or payload segment into a JSON object with no duplicate
    /// member names and valid UTF-8.
    public static func decodeJSONObject(
        _ segment: Substring,
        part: String
    ) throws(AuthFailure) -> [String: JWTJSONValue] {
        let bytes = try self.decodeBase64URL(segment)
        do {
            return try JWTJSON.parseObject(bytes)
        } catch .duplicateMember {
            throw .invalidToken("duplicate_member", "the \(part) repeats a member name")
        } catch .notUTF8 {
            throw .invalidToken("malformed", "the \(part) is not UTF-8")
        } catch {
            throw .invalidToken("malformed", "the \(part) is not a JSON object")
        }
    }

    // MARK: 5.2–5.3 header

    /// Steps 5.2–5.3, the parts that need no issuer: `alg` and `kid` are strings, `kid` is at
    /// most 256 bytes, there is no `crit`, and untrusted key-locating members are noted.
    public static func checkHeader(_ header: [String: JWTJSONValue]) throws(AuthFailure) -> Header {
        guard let alg = header["alg"]?.stringValue, !alg.isEmpty else {
            throw .invalidToken("bad_header", "the header has no alg")
        }
        if header["crit"] != nil {
            throw .invalidToken("crit", "critical header extensions are not supported")
        }
        let typ: String?
        switch header["typ"] {
        case nil: typ = nil
        case .string(let value): typ = value
        default: throw .invalidToken("bad_header", "typ is not a string")
        }
        guard let kid = header["kid"]?.stringValue, !kid.isEmpty else {
            throw .invalidToken("bad_header", "the header needs a kid string")
        }
        guard kid.utf8.count <= self.maximumKeyIDBytes else {
            throw .invalidToken("bad_header", "the kid is too long")
        }
        let untrusted = self.untrustedHeaderMembers.filter { header[$0] != nil }
        return Header(alg: alg, kid: kid, typ: typ, untrustedMembers: untrusted)
    }

    /// Step 5.2 with the issuer known: `typ` is in the allowlist (media types compare
    /// case-insensitively, RFC 7515 §4.1.9) and `alg` is in the issuer's exact allowlist.
    public static func checkHeader(_ header: Header, for issuer: IssuerConfiguration) throws(AuthFailure) {
        guard let typ = header.typ,
            issuer.acceptedTypes.contains(where: { $0.lowercased() == typ.lowercased() })
        else {
            throw .invalidToken("typ_not_allowed", "the token type is not an access token type accepted here")
        }
        guard issuer.algorithms.contains(header.alg) else {
            throw .invalidToken("alg_not_allowed", "the signing algorithm is not allowed")
        }
    }

    // MARK: 5.4 issuer

    /// Step 5.4: the issuer whose `iss` equals the payload's `iss` exactly.
    public static func selectIssuer(
        _ payload: [String: JWTJSONValue],
        from issuers: [IssuerConfiguration]
    ) throws(AuthFailure) -> IssuerConfiguration {
        guard let iss = payload["iss"]?.stringValue else {
            throw .invalidToken("unknown_issuer", "the token has no issuer")
        }
        guard let issuer = issuers.first(where: { $0.issuer == iss }) else {
            throw .invalidToken("unknown_issuer", "the token's issuer is not trusted here")
        }
        return issuer
    }

    // MARK: 5.6 key

    /// Step 5.6: the header's `alg` equals the algorithm of the key it names. With keys whose
    /// `alg` is always set by normalisation this also rules out jwt-kit caching a wrong
    /// algorithm for an `alg`-less key (security.md §3.1 pitfall 2).
    public static func checkKeyAlgorithm(headerAlg: String, keyAlg: String) throws(AuthFailure) {
        guard headerAlg == keyAlg else {
            throw .invalidToken("alg_mismatch", "the signing algorithm does not match the key")
        }
    }

    // MARK: 5.8 claims

    /// Step 5.8: the time, audience, scope and principal claims. `now` and `leeway` are in
    /// seconds; the answer is the verified token.
    public static func checkClaims(
        _ payload: [String: JWTJSONValue],
        issuer: IssuerConfiguration,
        now: Date,
        leeway: Duration
    ) throws(AuthFailure) -> VerifiedToken {
        let nowSeconds = now.timeIntervalSince1970
        let leewaySeconds = leeway.seconds
        guard let exp = payload["exp"]?.numberValue else {
            throw .invalidToken("malformed", "the token has no numeric exp")
        }
        guard nowSeconds < exp + leewaySeconds else { throw .invalidToken("expired", "the token has expired") }
        if let nbf = payload["nbf"] {
            guard let value = nbf.numberValue else { throw .invalidToken("malformed", "nbf is not a number") }
            guard value <= nowSeconds + leewaySeconds else {
                throw .invalidToken("not_yet_valid", "the token is not valid yet")
            }
        }
        guard let iat = payload["iat"]?.numberValue else {
            throw .invalidToken("malformed", "the token has no numeric iat")
        }
        guard iat <= nowSeconds + leewaySeconds else {
            throw .invalidToken("not_yet_valid", "the token was issued in the future")
        }
        guard exp - iat <= issuer.maxTokenAge.seconds else {
            throw .invalidToken("too_old", "the token's lifetime is longer than allowed")
        }
        let audiences: [String]
        switch payload["aud"] {
        case .string(let value): audiences = [value]
        case .array(let values): audiences = values.compactMap(\.stringValue)
        default: audiences = []
        }
        guard audiences.contains(where: { issuer.audiences.contains($0) }) else {
            throw .invalidToken("wrong_audience", "the token is not meant for this service")
        }
        let scopes = self.scopes(in: payload)
        guard scopes.contains(issuer.requiredScope) else {
            throw AuthFailure(
                .insufficientScope,
                reason: "insufficient_scope",
                detail: "the token lacks the required scope",
                scope: issuer.requiredScope
            )
        }
        guard let name = self.principalName(in: payload, claim: issuer.principalClaim) else {
            throw .invalidToken("no_principal", "the token names no client")
        }
        return VerifiedToken(
            principal: Principal(kind: .oauthClient, name: name),
            issuer: issuer.issuer,
            scopes: scopes,
            expiresAt: Date(timeIntervalSince1970: exp)
        )
    }

    /// The scopes of `scope` (space-delimited, RFC 8693 §4.2) or `scp` (an array, or a
    /// space-delimited string as Entra ID sends it).
    public static func scopes(in payload: [String: JWTJSONValue]) -> [String] {
        func split(_ value: JWTJSONValue?) -> [String]? {
            switch value {
            case .string(let text): return text.split(separator: " ").map(String.init)
            case .array(let values): return values.compactMap(\.stringValue)
            default: return nil
            }
        }
        return split(payload["scope"]) ?? split(payload["scp"]) ?? []
    }

    /// The configured principal claim, else `azp`, else `sub`: the first non-empty string.
    public static func principalName(in payload: [String: JWTJSONValue], claim: String) -> String? {
        for name in [claim, "azp", "sub"] {
            if let value = payload[name]?.stringValue, !value.isEmpty { return value }
        }
        return nil
    }
}

/// An access token that passed every check: who sent it and what it allows.
public struct VerifiedToken: Sendable, Equatable {
    /// `client:<client id>`.
    public var principal: Principal
    /// The issuer that signed it (exactly as configured).
    public var issuer: String
    /// The token's scopes.
    public var scopes: [String]
    /// Its `exp`.
    public var expiresAt: Date

    public init(principal: Principal, issuer: String, scopes: [String], expiresAt: Date) {
        self.principal = principal
        self.issuer = issuer
        self.scopes = scopes
        self.expiresAt = expiresAt
    }
}
