import Auth
import Foundation
import TestSupport
import Testing

/// The fleet store against a real PostgreSQL 15 started by the test: two store instances stand
/// for two gateways.
@Suite(.serialized, .enabled(if: LocalPostgres.isInstalled, "needs Debian's postgresql-15 (scripts/setup)"))
struct KeyStorePostgresTests {
    func authenticates(_ store: PostgresKeyStore, _ key: APIKey) -> Bool {
        let authenticator = APIKeyAuthenticator(store: store)
        return (try? authenticator.authenticate(key: key.plaintext, origin: nil, browserEndpoint: false).get()) != nil
    }

    @Test func aKeyRevokedThroughOneGatewayIsRefusedByAnotherWithinFiveSeconds() async throws {
        let server = try await LocalPostgres.start()
        // A generous answer limit: the suite starts beside hundreds of others on two cores.
        let first = try PostgresKeyStore(url: server.url, answerTimeout: .seconds(30))
        let second = try PostgresKeyStore(url: server.url, answerTimeout: .seconds(30))
        let firstLoop = Task { try await first.run() }
        let secondLoop = Task { try await second.run() }
        defer {
            firstLoop.cancel()
            secondLoop.cancel()
        }

        let issued = try await first.create(NewAPIKey(name: "backend", kind: .secret), now: Date())
        // A poll of `first` that read the table before the insert can still land after it;
        // the next poll (1 s) has the key. Both stores serve it within the 5 s promise.
        try await waitUntil(timeout: .seconds(5), pollEvery: .milliseconds(20)) {
            self.authenticates(first, issued.key) && self.authenticates(second, issued.key)
        }
        let duplicate = await #expect(throws: KeyStoreError.self) {
            try await second.create(NewAPIKey(name: "backend", kind: .secret), now: Date())
        }
        #expect(duplicate?.code == .nameExists)

        let revoked = try await first.revoke(name: "backend", now: Date())
        #expect(revoked.map(\.id) == [issued.record.id])
        let start = ContinuousClock.now
        try await waitUntil(timeout: .seconds(5), pollEvery: .milliseconds(20)) {
            !self.authenticates(second, issued.key)
        }
        #expect(ContinuousClock.now - start < .seconds(5))
        #expect(try await second.list().first?.revokedAt != nil, "revoked keys stay listed")
        let stored = try await server.psql("SELECT count(*) FROM sluice_api_keys WHERE record::text LIKE '%slk_live_%'")
        #expect(stored.trimmingCharacters(in: .whitespacesAndNewlines) == "0", "no plaintext key in the table")
    }

    @Test func whilePostgresIsDownTheLastGoodCopyServesAndItCatchesUpAfter() async throws {
        let server = try await LocalPostgres.start()
        let logs = CapturedLogs()
        let admin = try PostgresKeyStore(url: server.url, answerTimeout: .seconds(30))
        let gateway = try PostgresKeyStore(
            url: server.url,
            logger: logs.logger,
            pollInterval: .milliseconds(200),
            answerTimeout: .seconds(15)
        )
        let good = try await admin.create(NewAPIKey(name: "good", kind: .secret), now: Date())
        #expect(await gateway.reload())
        let loop = Task { try await gateway.run() }
        defer { loop.cancel() }
        #expect(self.authenticates(gateway, good.key))

        try await server.stop()
        // A poll that hangs is cut off after 15 s; a loaded CI machine may need a few polls more.
        try await waitUntil(timeout: .seconds(30)) { gateway.isReachable == false }
        try await Task.sleep(for: .seconds(1))  // several failed polls: still one log line
        #expect(self.authenticates(gateway, good.key), "the last good copy keeps serving")
        #expect(logs.count("API key store unreachable; serving the last good copy") == 1)
        #expect((gateway.ageSeconds ?? 0) >= 1)
        let unreachable = await #expect(throws: KeyStoreError.self) { try await admin.list() }
        #expect(unreachable?.code == .database)

        try await server.restart()
        let later = try await admin.create(NewAPIKey(name: "later", kind: .secret), now: Date())
        _ = try await admin.revoke(name: "good", now: Date())
        try await waitUntil(timeout: .seconds(30), pollEvery: .milliseconds(20)) {
            self.authenticates(gateway, later.key) && !self.authenticates(gateway, good.key)
        }
        #expect(logs.count("API key store reachable") == 2, "the first load and the recovery")
        #expect((gateway.ageSeconds ?? 99) < 1)
    }

    @Test func lastUseIsWrittenToTheTableByTheFlush() async throws {
        let server = try await LocalPostgres.start()
        let store = try PostgresKeyStore(url: server.url, answerTimeout: .seconds(30))
        let issued = try await store.create(NewAPIKey(name: "web", kind: .secret), now: Date())
        let used = Date(timeIntervalSince1970: 1_900_000_000)
        store.noteUsed(id: issued.record.id, at: used)
        store.noteUsed(id: issued.record.id, at: used.addingTimeInterval(-10))
        try await store.flushLastUsed()
        #expect(try await store.list().first?.lastUsedAt == used)
        store.noteUsed(id: issued.record.id, at: used.addingTimeInterval(-60))
        try await store.flushLastUsed()
        #expect(try await store.list().first?.lastUsedAt == used, "last use only moves forward")
    }

    @Test func theURLsPasswordIsNeverShown() throws {
        let store = try PostgresKeyStore(url: "postgres://sluice:hunter2@db.example:5433/keys?sslmode=disable")
        #expect(store.redactedURL == "postgres://sluice:***@db.example:5433/keys?sslmode=disable")
        #expect(throws: KeyStoreError.self) { try PostgresKeyStore(url: "mysql://sluice:hunter2@db/keys") }
        let error = #expect(throws: KeyStoreError.self) {
            try PostgresKeyStore(url: "postgres://sluice:hunter2@db/keys?sslmode=bogus")
        }
        #expect(error.map { !$0.message.contains("hunter2") } == true)
    }
}
