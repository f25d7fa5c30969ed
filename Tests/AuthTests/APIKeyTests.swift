import Foundation
import Synchronization
import Testing

@testable import Auth

/// A store that answers from a fixed set of records and remembers what was noted as used.
final class MemoryAPIKeyLookup: APIKeyLookup {
    private let records: [String: StoredAPIKey]
    private let used = Mutex<[String: Date]>([:])

    init(_ ring: APIKeyRing) {
        self.records = Dictionary(uniqueKeysWithValues: ring.keys.map { ($0.sha256, $0) })
    }

    func lookup(sha256: String) -> StoredAPIKey? { self.records[sha256] }
    func noteUsed(id: String, at date: Date) { self.used.withLock { $0[id] = date } }
    var usedIDs: Set<String> { self.used.withLock { Set($0.keys) } }
}

@Suite struct APIKeyFormatTests {
    @Test func aGeneratedKeyHasTheTypedPrefixLengthAndCharset() throws {
        for kind in APIKeyKind.allCases {
            for environment in APIKeyEnvironment.allCases {
                let key = APIKey.generate(kind: kind, environment: environment)
                #expect(key.plaintext.hasPrefix("\(kind.prefix)_\(environment.rawValue)_"))
                #expect(key.plaintext.count == 57)
                #expect(key.plaintext.dropFirst(9).allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber) })
                let parsed = try APIKey.parse(key.plaintext).get()
                #expect(parsed == key)
                #expect(parsed.id == String(key.plaintext.dropFirst(9).prefix(10)))
            }
        }
    }

    @Test func theSecretPartCarriesAtLeast190BitsAndKeysDoNotRepeat() {
        #expect(Double(APIKey.secretLength) * log2(62) >= 190)
        var seen = Set<String>()
        var characters = Set<Character>()
        for _ in 0..<2000 {
            let key = APIKey.generate(kind: .secret, environment: .live)
            seen.insert(key.plaintext)
            characters.formUnion(key.plaintext.dropFirst(19).prefix(32))
        }
        #expect(seen.count == 2000)
        #expect(characters.count == 62, "every base62 digit is drawn")
    }

    @Test func theChecksumIsCRC32OfEverythingBeforeItInBase62() throws {
        #expect(APIKeyCRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(String(decoding: APIKeyBase62.encode(0, width: 6), as: UTF8.self) == "000000")
        #expect(String(decoding: APIKeyBase62.encode(61, width: 6), as: UTF8.self) == "00000z")
        #expect(String(decoding: APIKeyBase62.encode(62, width: 6), as: UTF8.self) == "000010")
        let key = APIKey.generate(kind: .publishable, environment: .test)
        let body = key.plaintext.dropLast(6)
        let expected = String(
            decoding: APIKeyBase62.encode(APIKeyCRC32.checksum(Array(body.utf8)), width: 6),
            as: UTF8.self
        )
        #expect(key.plaintext.hasSuffix(expected))
    }

    @Test func everySingleCharacterTypoIsCaught() {
        let key = APIKey.generate(kind: .secret, environment: .live).plaintext
        var caught = 0
        for offset in 9..<key.count {
            var bytes = Array(key.utf8)
            bytes[offset] = bytes[offset] == UInt8(ascii: "a") ? UInt8(ascii: "b") : UInt8(ascii: "a")
            if case .failure(let failure) = APIKey.parse(String(decoding: bytes, as: UTF8.self)) {
                #expect(failure.status == 401 && failure.code == .invalidToken)
                #expect(failure.reason == "bad_checksum")
                caught += 1
            }
        }
        #expect(caught == key.count - 9)
    }

    @Test(arguments: [
        ("", "malformed_key"),
        ("sk_live_0123456789012345678901234567890123456789012345678", "malformed_key"),
        ("slx_live_012345678901234567890123456789012345678901234567", "malformed_key"),
        ("slk_prod_012345678901234567890123456789012345678901234567", "malformed_key"),
        ("slk_live_01234567890123456789012345678901234567890123456!", "malformed_key"),
        ("slk_live_0123456789", "malformed_key"),
        ("slk_live_012345678901234567890123456789012345678901234567", "bad_checksum"),
    ])
    func malformedKeysAreRefusedWithoutTheKeyInTheDetail(text: String, reason: String) {
        guard case .failure(let failure) = APIKey.parse(text) else {
            Issue.record("accepted \(text)")
            return
        }
        #expect(failure.reason == reason)
        #expect(failure.status == 401)
        #expect(!text.isEmpty ? !failure.detail.contains(text.dropFirst(9)) : true)
    }

    @Test func maskShowsPrefixIDAndLastFourOnly() {
        let key = APIKey.generate(kind: .secret, environment: .live)
        let masked = APIKey.mask(key.plaintext)
        #expect(masked == "slk_live_\(key.id)…\(key.plaintext.suffix(4))")
        #expect(!masked.contains(key.plaintext.dropFirst(19).prefix(32)))
        #expect("\(key)" == masked)
        #expect(APIKey.mask("slk_live_notakey") == "slk_…")
        #expect(APIKey.mask("hunter2") == "…")
    }

    @Test func theStoredHashIsSHA256HexOfTheWholeKey() {
        #expect(APIKey.sha256(of: "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        let key = APIKey.generate(kind: .secret, environment: .live)
        #expect(key.sha256 == APIKey.sha256(of: key.plaintext))
    }
}

@Suite struct APIKeyAuthenticatorTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    struct Fixture {
        var ring = APIKeyRing()
        var server: IssuedAPIKey
        var browser: IssuedAPIKey
        var revoked: IssuedAPIKey
        var expired: IssuedAPIKey
        var anywhere: IssuedAPIKey
    }

    func fixture() throws -> Fixture {
        var ring = APIKeyRing()
        let server = try ring.create(NewAPIKey(name: "backend", kind: .secret, maxBatch: 50), now: self.now)
        let browser = try ring.create(
            NewAPIKey(name: "web-shop", kind: .publishable, origins: ["HTTPS://Shop.Example:443/"]),
            now: self.now
        )
        let revoked = try ring.create(NewAPIKey(name: "old", kind: .secret), now: self.now)
        _ = try ring.revoke(name: "old", now: self.now)
        let expired = try ring.create(
            NewAPIKey(name: "short", kind: .secret, expiresIn: .seconds(60)),
            now: self.now.addingTimeInterval(-120)
        )
        let anywhere = try ring.create(NewAPIKey(name: "any", kind: .publishable, origins: ["*"]), now: self.now)
        return Fixture(
            ring: ring,
            server: server,
            browser: browser,
            revoked: revoked,
            expired: expired,
            anywhere: anywhere
        )
    }

    func check(
        _ authenticator: APIKeyAuthenticator,
        _ key: String,
        origin: String? = nil,
        browser: Bool = false
    ) -> Result<AuthenticatedKey, AuthFailure> {
        authenticator.authenticate(key: key, origin: origin, browserEndpoint: browser, now: self.now)
    }

    @Test func aSecretKeyOnAServerEndpointGivesItsPrincipalAndRecord() throws {
        let fixture = try self.fixture()
        let store = MemoryAPIKeyLookup(fixture.ring)
        let authenticator = APIKeyAuthenticator(store: store)
        let result = try self.check(authenticator, fixture.server.key.plaintext).get()
        #expect(result.principal == Principal(kind: .secretKey, name: "backend"))
        #expect(result.principal.description == "key:backend")
        #expect(result.record.maxBatch == 50)
        #expect(store.usedIDs == [fixture.server.record.id])
    }

    @Test func aPublishableKeyFromAnAllowedOriginPasses() throws {
        let fixture = try self.fixture()
        let authenticator = APIKeyAuthenticator(store: MemoryAPIKeyLookup(fixture.ring))
        let result = try self.check(
            authenticator,
            fixture.browser.key.plaintext,
            origin: "https://shop.example",
            browser: true
        ).get()
        #expect(result.principal.description == "pkey:web-shop")
        #expect(result.origin == "https://shop.example")
        #expect(fixture.browser.record.allowedOrigins == ["https://shop.example"])
        let any = try self.check(authenticator, fixture.anywhere.key.plaintext, origin: nil, browser: true).get()
        #expect(any.principal.name == "any")
    }

    /// K1, K2: wrong prefix and bad CRC → 401 without a store lookup.
    @Test func malformedAndMistypedKeysMakeNoLookup() throws {
        let fixture = try self.fixture()
        let authenticator = APIKeyAuthenticator(store: MemoryAPIKeyLookup(fixture.ring))
        var typo = Array(fixture.server.key.plaintext.utf8)
        typo[20] = typo[20] == UInt8(ascii: "x") ? UInt8(ascii: "y") : UInt8(ascii: "x")
        let wrongPrefix = "sk_" + fixture.server.key.plaintext.dropFirst(3)
        for (text, reason) in [(String(decoding: typo, as: UTF8.self), "bad_checksum"), (wrongPrefix, "malformed_key")]
        {
            guard case .failure(let failure) = self.check(authenticator, text) else {
                Issue.record("accepted")
                continue
            }
            #expect(failure.status == 401)
            #expect(failure.reason == reason)
        }
        #expect(authenticator.lookups == 0)
        _ = self.check(authenticator, fixture.server.key.plaintext)
        #expect(authenticator.lookups == 1)
    }

    /// K3, K4 and an unknown key: 401.
    @Test func unknownRevokedAndExpiredKeysAreRefused() throws {
        let fixture = try self.fixture()
        let authenticator = APIKeyAuthenticator(store: MemoryAPIKeyLookup(fixture.ring))
        let unknown = APIKey.generate(kind: .secret, environment: .live).plaintext
        let cases = [
            (unknown, "unknown_key"), (fixture.revoked.key.plaintext, "revoked"),
            (fixture.expired.key.plaintext, "expired"),
        ]
        for (text, reason) in cases {
            guard case .failure(let failure) = self.check(authenticator, text) else {
                Issue.record("accepted \(reason)")
                continue
            }
            #expect(failure.status == 401 && failure.code == .invalidToken)
            #expect(failure.reason == reason)
            #expect(!failure.detail.contains(text))
        }
    }

    /// K5–K7: a key's class against the endpoint and the origin → 403.
    @Test func keysUsedWhereTheyMayNotBeAreForbidden() throws {
        let fixture = try self.fixture()
        let store = MemoryAPIKeyLookup(fixture.ring)
        let authenticator = APIKeyAuthenticator(store: store)
        let secret = fixture.server.key.plaintext
        let publishable = fixture.browser.key.plaintext
        let cases: [(String, String?, Bool, String)] = [
            (secret, "https://shop.example", false, "secret_key_in_browser"),
            (secret, nil, true, "secret_key_in_browser"),
            (publishable, "https://shop.example", false, "publishable_key_on_server_endpoint"),
            (publishable, "https://evil.example", true, "origin_not_allowed"),
            (publishable, "http://shop.example", true, "origin_not_allowed"),
            (publishable, "null", true, "origin_not_allowed"),
            (publishable, nil, true, "origin_required"),
        ]
        for (key, origin, browser, reason) in cases {
            guard case .failure(let failure) = self.check(authenticator, key, origin: origin, browser: browser) else {
                Issue.record("accepted \(reason) from \(origin ?? "no origin")")
                continue
            }
            #expect(failure.status == 403, "\(reason)")
            #expect(failure.code == .forbidden)
            #expect(failure.reason == reason)
        }
        #expect(store.usedIDs.isEmpty, "a refused key is not marked as used")
    }
}

@Suite struct APIKeyRingTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    @Test func createStoresOnlyTheHashAndRefusesATakenName() throws {
        var ring = APIKeyRing()
        let issued = try ring.create(
            NewAPIKey(name: "web", kind: .secret, rate: RateLimit("50/s", burst: 80)),
            now: self.now
        )
        #expect(issued.record.sha256 == issued.key.sha256)
        #expect(issued.record.rateLimit == RateLimit(count: 50, windowSeconds: 1, burst: 80))
        let encoded = String(decoding: try KeyStoreCodec.encodeFile(ring), as: UTF8.self)
        #expect(!encoded.contains(issued.key.plaintext))
        #expect(!encoded.contains(issued.key.plaintext.dropFirst(19).prefix(32)))
        #expect(throws: KeyStoreError.self) { try ring.create(NewAPIKey(name: "web", kind: .secret), now: self.now) }
        _ = try ring.revoke(name: "web", now: self.now)
        let again = #expect(throws: KeyStoreError.self) {
            try ring.create(NewAPIKey(name: "web", kind: .secret), now: self.now)
        }
        #expect(again?.code == .nameExists)
        #expect(ring.keys.count == 1 && ring.keys[0].state(at: self.now) == "revoked")
    }

    @Test func badInputIsRefusedWithASentence() {
        var ring = APIKeyRing()
        let cases: [NewAPIKey] = [
            NewAPIKey(name: "a b", kind: .secret),
            NewAPIKey(name: "", kind: .secret),
            NewAPIKey(name: "web", kind: .publishable),
            NewAPIKey(name: "web", kind: .publishable, origins: ["shop.example"]),
            NewAPIKey(name: "web", kind: .publishable, origins: ["https://shop.example/path"]),
            NewAPIKey(name: "web", kind: .publishable, origins: ["ftp://shop.example"]),
            NewAPIKey(name: "web", kind: .secret, origins: ["https://shop.example"]),
            NewAPIKey(name: "web", kind: .secret, expiresIn: .zero),
        ]
        for request in cases {
            let error = #expect(throws: KeyStoreError.self) { try ring.create(request, now: self.now) }
            #expect(error?.code == .invalidArgument)
        }
        #expect(ring.keys.isEmpty)
    }

    @Test func rollKeepsTheOldKeyForTheGraceThenOnlyTheNewOne() throws {
        var ring = APIKeyRing()
        let old = try ring.create(NewAPIKey(name: "web", kind: .secret, expiresIn: .seconds(90 * 86400)), now: self.now)
        let later = self.now.addingTimeInterval(3600)
        let new = try ring.roll(name: "web", grace: .seconds(86400), now: later)
        #expect(new.record.name == "web")
        #expect(new.key.plaintext != old.key.plaintext)
        #expect(new.record.expiresAt == later.addingTimeInterval(90 * 86400))
        try ring.validate()

        let store = MemoryAPIKeyLookup(ring)
        let authenticator = APIKeyAuthenticator(store: store)
        let inGrace = later.addingTimeInterval(86399)
        let afterGrace = later.addingTimeInterval(86400)
        for (key, at, ok) in [
            (old.key, inGrace, true), (new.key, inGrace, true), (old.key, afterGrace, false),
            (new.key, afterGrace, true),
        ] {
            let result = authenticator.authenticate(key: key.plaintext, origin: nil, browserEndpoint: false, now: at)
            #expect((try? result.get().principal.description) == (ok ? "key:web" : nil))
        }
        let rollAgain = try ring.roll(name: "web", grace: .zero, now: inGrace)
        #expect(ring.keys.first { $0.id == new.record.id }?.expiresAt == inGrace)
        #expect(ring.keys.filter { $0.replacedBy == nil }.map(\.id) == [rollAgain.record.id])
        #expect(try ring.revoke(name: "web", now: inGrace).count == 3)
        #expect(try ring.revoke(name: "web", now: inGrace).isEmpty)
        #expect(throws: KeyStoreError.self) { try ring.roll(name: "web", grace: .zero, now: inGrace) }
        let unknown = #expect(throws: KeyStoreError.self) { try ring.revoke(name: "nobody", now: inGrace) }
        #expect(unknown?.code == .unknownName)
    }

    @Test func durationsAreWholeNumbersWithAUnit() {
        #expect(APIKeyDuration.parse("90d") == .seconds(90 * 86400))
        #expect(APIKeyDuration.parse("24h") == .seconds(86400))
        #expect(APIKeyDuration.parse("0s") == .zero)
        #expect(APIKeyDuration.parse("2w") == .seconds(14 * 86400))
        for bad in ["", "d", "90", "9x", "-1d", "1.5h", "99999999999999999999d"] {
            #expect(APIKeyDuration.parse(bad) == nil, "\(bad)")
        }
    }
}
