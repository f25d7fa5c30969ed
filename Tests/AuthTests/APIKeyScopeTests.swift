import Foundation
import Testing

@testable import Auth

/// Key scopes: what a key made with `--scope` may do, what one made without may do (every key
/// from before scopes), and the combinations `create` refuses.
@Suite struct APIKeyScopeTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    @Test func aKeyWithoutScopesWritesAndDoesNotRead() throws {
        var ring = APIKeyRing()
        let issued = try ring.create(NewAPIKey(name: "ingest", kind: .secret), now: self.now)
        #expect(issued.record.scopes == nil)
        #expect(issued.record.allows(APIKeyScope.eventsWrite))
        #expect(!issued.record.allows(APIKeyScope.statsRead))
    }

    @Test func aReadKeyReadsAndDoesNotWrite() throws {
        var ring = APIKeyRing()
        let reader = try ring.create(
            NewAPIKey(name: "dashboard", kind: .secret, scopes: [APIKeyScope.statsRead]),
            now: self.now
        )
        #expect(reader.record.allows(APIKeyScope.statsRead))
        #expect(!reader.record.allows(APIKeyScope.eventsWrite))
        let both = try ring.create(
            NewAPIKey(name: "both", kind: .secret, scopes: ["stats:read", "events:write", "stats:read"]),
            now: self.now
        )
        #expect(both.record.scopes == ["events:write", "stats:read"])
        // Rolled keys keep their scopes.
        let rolled = try ring.roll(name: "dashboard", grace: .seconds(60), now: self.now)
        #expect(rolled.record.scopes == [APIKeyScope.statsRead])
    }

    @Test func badScopesAndReadingPublishableKeysAreRefused() throws {
        var ring = APIKeyRing()
        let unknown = #expect(throws: KeyStoreError.self) {
            try ring.create(NewAPIKey(name: "a", kind: .secret, scopes: ["stats:write"]), now: self.now)
        }
        #expect(unknown?.message == "unknown scope 'stats:write'; a key may have events:write, stats:read")
        let none = #expect(throws: KeyStoreError.self) {
            try ring.create(NewAPIKey(name: "b", kind: .secret, scopes: []), now: self.now)
        }
        #expect(none?.message == "a key needs at least one scope")
        let browser = #expect(throws: KeyStoreError.self) {
            try ring.create(
                NewAPIKey(
                    name: "web",
                    kind: .publishable,
                    origins: ["https://shop.example"],
                    scopes: [APIKeyScope.statsRead]
                ),
                now: self.now
            )
        }
        #expect(browser?.message.hasPrefix("a publishable key cannot have stats:read") == true)
        #expect(ring.keys.isEmpty)
    }

    /// Records written before scopes existed have no `scopes` member; they read as nil (the
    /// defaults), and a record with scopes keeps them through the store's JSON.
    @Test func scopesSurviveTheStoresJSONAndOldRecordsReadAsDefaults() throws {
        var ring = APIKeyRing()
        let reader = try ring.create(
            NewAPIKey(name: "dashboard", kind: .secret, scopes: [APIKeyScope.statsRead]),
            now: self.now
        )
        let encoder = JSONEncoder()
        let decoded = try JSONDecoder().decode(StoredAPIKey.self, from: encoder.encode(reader.record))
        #expect(decoded.scopes == [APIKeyScope.statsRead])
        var old = try #require(
            try JSONSerialization.jsonObject(with: encoder.encode(reader.record)) as? [String: Any]
        )
        old["scopes"] = nil
        let legacy = try JSONDecoder().decode(
            StoredAPIKey.self,
            from: JSONSerialization.data(withJSONObject: old)
        )
        #expect(legacy.scopes == nil && legacy.allows(APIKeyScope.eventsWrite) && !legacy.allows(APIKeyScope.statsRead))
    }
}
