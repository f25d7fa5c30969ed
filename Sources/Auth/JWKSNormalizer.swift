import JWTKit

/// One signing key of an issuer after normalisation: its `kid`, its (always set) `alg`, and the
/// public key as jwt-kit reads it.
public struct NormalizedKey: Sendable {
    public var kid: String
    public var alg: String
    var jwk: JWK
    /// jwt-kit's verifier for this key and `alg`, resolved once when the set is loaded
    /// (``JWKSNormalizer/makeCollection(_:)``): a token is then checked with one call, without
    /// jwt-kit parsing it again and without two hops onto the collection's actor.
    var algorithm: (any JWTAlgorithm)?
}

/// A key dropped from a JWKS, and why (a fixed label for logs and metrics).
public struct DroppedKey: Sendable, Equatable {
    /// The key's `kid`, when it had a usable one.
    public var kid: String?
    /// `enc_key`, `no_kid`, `duplicate_kid`, `unsupported_kty`, `unsupported_alg`,
    /// `alg_not_allowed`, `rsa_too_small`, `invalid_key`.
    public var reason: String
}

/// Turns a published JWKS into the keys Sluice will verify with, one key at a time, so that one
/// odd key (an encryption key, a new key type) never takes the whole set down (security.md §1.2,
/// §3.1 pitfall 4).
///
/// - keys with `use: enc`, or `key_ops` without `verify`, are dropped;
/// - a `kid` is required (tokens must name their key) and must be unique in the set;
/// - a missing `alg` is filled in from the key type: RS256 for RSA, ES256/384/512 for the NIST
///   curves, EdDSA for Ed25519. jwt-kit would otherwise adopt the `alg` of the first token that
///   names the key, even a forged one (§3.1 pitfall 2);
/// - keys whose `alg` is not in the issuer's allowlist, or RSA keys under 2048 bits, are dropped.
public enum JWKSNormalizer {
    /// The outcome of normalising one document.
    public struct Result: Sendable {
        public var keys: [NormalizedKey]
        public var dropped: [DroppedKey]
    }

    /// The document is not a JWKS at all (not a JSON object with a `keys` array).
    public struct InvalidDocument: Error, Equatable {}

    public static let minimumRSABits = 2048

    /// Normalises the JWKS in `bytes`, keeping only keys for `allowedAlgorithms`.
    public static func normalize(
        _ bytes: some Collection<UInt8>,
        allowedAlgorithms: [String]
    ) throws(InvalidDocument) -> Result {
        let document: [String: JWTJSONValue]
        do {
            document = try JWTJSON.parseObject(bytes)
        } catch {
            throw InvalidDocument()
        }
        guard let entries = document["keys"]?.arrayValue else { throw InvalidDocument() }
        var candidates: [NormalizedKey] = []
        var dropped: [DroppedKey] = []
        for entry in entries {
            switch self.normalizeKey(entry, allowedAlgorithms: allowedAlgorithms) {
            case .key(let key): candidates.append(key)
            case .dropped(let reason): dropped.append(reason)
            }
        }
        // Two keys with one kid: a token could not say which it means, so neither is used.
        var counts: [String: Int] = [:]
        for key in candidates { counts[key.kid, default: 0] += 1 }
        let keys = candidates.filter { counts[$0.kid] == 1 }
        for key in candidates where counts[key.kid, default: 0] > 1 {
            dropped.append(DroppedKey(kid: key.kid, reason: "duplicate_kid"))
        }
        return Result(keys: keys, dropped: dropped)
    }

    enum KeyOutcome {
        case key(NormalizedKey)
        case dropped(DroppedKey)
    }

    /// Normalises one JWK object.
    static func normalizeKey(_ entry: JWTJSONValue, allowedAlgorithms: [String]) -> KeyOutcome {
        guard let key = entry.objectValue else { return .dropped(DroppedKey(kid: nil, reason: "invalid_key")) }
        let kid = key["kid"]?.stringValue
        func drop(_ reason: String) -> KeyOutcome {
            .dropped(DroppedKey(kid: kid, reason: reason))
        }
        if let use = key["use"], use.stringValue != "sig" { return drop("enc_key") }
        if let operations = key["key_ops"] {
            guard let list = operations.arrayValue, list.contains(.string("verify")) else { return drop("enc_key") }
        }
        guard let kid, !kid.isEmpty, kid.utf8.count <= JWTChecks.maximumKeyIDBytes else { return drop("no_kid") }
        let declared: String?
        switch key["alg"] {
        case nil: declared = nil
        case .string(let value): declared = value
        default: return drop("unsupported_alg")
        }
        let identifier = JWKIdentifier(string: kid)
        let alg: String
        let jwk: JWK
        switch key["kty"]?.stringValue {
        case "RSA":
            guard let n = key["n"]?.stringValue, let e = key["e"]?.stringValue else { return drop("invalid_key") }
            alg = declared ?? "RS256"
            guard ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"].contains(alg),
                let algorithm = JWK.Algorithm(rawValue: alg)
            else { return drop("unsupported_alg") }
            guard let bits = self.modulusBits(n) else { return drop("invalid_key") }
            guard bits >= self.minimumRSABits else { return drop("rsa_too_small") }
            jwk = .rsa(algorithm, identifier: identifier, modulus: n, exponent: e)
        case "EC":
            guard let x = key["x"]?.stringValue, let y = key["y"]?.stringValue else { return drop("invalid_key") }
            let curves: [String: (ECDSACurve, String)] = [
                "P-256": (.p256, "ES256"), "P-384": (.p384, "ES384"), "P-521": (.p521, "ES512"),
            ]
            guard let name = key["crv"]?.stringValue, case let (curve, curveAlg)? = curves[name] else {
                return drop("unsupported_kty")
            }
            alg = declared ?? curveAlg
            guard alg == curveAlg, let algorithm = JWK.Algorithm(rawValue: alg) else {
                return drop("unsupported_alg")
            }
            jwk = .ecdsa(algorithm, identifier: identifier, x: x, y: y, curve: curve)
        case "OKP":
            guard key["crv"]?.stringValue == "Ed25519" else { return drop("unsupported_kty") }
            guard let x = key["x"]?.stringValue else { return drop("invalid_key") }
            alg = declared ?? "EdDSA"
            guard alg == "EdDSA" else { return drop("unsupported_alg") }
            jwk = .octetKeyPair(.eddsa, identifier: identifier, x: x, y: nil, curve: .ed25519)
        default:
            return drop("unsupported_kty")
        }
        guard allowedAlgorithms.contains(alg) else { return drop("alg_not_allowed") }
        return .key(NormalizedKey(kid: kid, alg: alg, jwk: jwk))
    }

    /// The bit length of a base64url RSA modulus, or nil if it does not decode.
    static func modulusBits(_ modulus: String) -> Int? {
        guard let bytes = try? JWTChecks.decodeBase64URL(Substring(modulus)) else { return nil }
        guard let first = bytes.firstIndex(where: { $0 != 0 }) else { return 0 }
        return (bytes.count - first) * 8 - bytes[first].leadingZeroBitCount
    }

    /// A fresh jwt-kit collection holding exactly `keys`, with no default key: a kid that is not
    /// in it can never fall back to another key (security.md §3.1 pitfall 1). Keys jwt-kit
    /// refuses are returned as dropped.
    static func makeCollection(_ keys: [NormalizedKey]) async -> (JWTKeyCollection, [NormalizedKey], [DroppedKey]) {
        let collection = JWTKeyCollection()
        var loaded: [NormalizedKey] = []
        var dropped: [DroppedKey] = []
        for var key in keys {
            do {
                try await collection.add(jwk: key.jwk, isDefault: false)
                key.algorithm = try await collection.getKey(for: JWKIdentifier(string: key.kid), alg: key.alg)
                loaded.append(key)
            } catch {
                dropped.append(DroppedKey(kid: key.kid, reason: "invalid_key"))
            }
        }
        await collection.clearDefault()
        return (collection, loaded, dropped)
    }
}
