import Foundation
import TestSupport
import Testing

@testable import Auth

@Suite struct KeyStoreFileTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    /// Reads the key file as JSON objects, to edit it the way an operator would.
    func editFile(_ path: String, _ change: (inout [[String: Any]]) -> Void) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        var document = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        var keys = try #require(document["keys"] as? [[String: Any]])
        change(&keys)
        document["keys"] = keys
        // Written in place (same inode), as an editor without a rename would.
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.truncate(atOffset: 0)
        try handle.write(contentsOf: try JSONSerialization.data(withJSONObject: document, options: [.prettyPrinted]))
        try handle.close()
    }

    @Test func theFileHoldsHashesOnlyAndIsPrivate() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/keys/keys.json"
        let store = try FileKeyStore(path: path)
        #expect(try await store.list().isEmpty)
        let issued = try await store.create(NewAPIKey(name: "backend", kind: .secret), now: self.now)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.contains(issued.key.sha256))
        #expect(!text.contains(issued.key.plaintext))
        #expect(!text.contains(issued.key.plaintext.dropFirst(19).prefix(32)))
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: directory.path + "/keys")
        #expect(Set(leftovers) == ["keys.json", "keys.json.lock"], "no temporary file is left behind")

        let reopened = try FileKeyStore(path: path)
        #expect(reopened.lookup(sha256: issued.key.sha256)?.name == "backend")
        #expect(reopened.lookup(sha256: APIKey.generate(kind: .secret, environment: .live).sha256) == nil)
        #expect(try await reopened.list().map(\.name) == ["backend"])
    }

    @Test func adminChangesThroughOneInstanceReachAnotherOnReload() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/keys.json"
        let admin = try FileKeyStore(path: path)
        let gateway = try FileKeyStore(path: path)
        let authenticator = APIKeyAuthenticator(store: gateway)
        let issued = try await admin.create(NewAPIKey(name: "backend", kind: .secret), now: self.now)
        #expect(gateway.lookup(sha256: issued.key.sha256) == nil)
        #expect(gateway.reload())
        #expect(
            (try? authenticator.authenticate(key: issued.key.plaintext, origin: nil, browserEndpoint: false).get())
                != nil
        )

        let rolled = try await admin.roll(name: "backend", grace: .seconds(3600), now: Date())
        _ = try await admin.revoke(name: "backend", now: Date())
        #expect(gateway.reloadIfChanged())
        for key in [issued.key, rolled.key] {
            let result = authenticator.authenticate(key: key.plaintext, origin: nil, browserEndpoint: false)
            #expect(throws: AuthFailure.invalidToken("revoked", "The API key has been revoked.")) { try result.get() }
        }
        let listed = try await admin.list()
        #expect(listed.count == 2 && listed.allSatisfy { $0.revokedAt != nil }, "revoked keys stay listed")
    }

    /// K10: a key revoked by editing the file is refused within 1 s, without a restart.
    @Test func k10AKeyRevokedByEditingTheFileIsRefusedWithinASecond() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/keys.json"
        let issued = try await FileKeyStore(path: path).create(NewAPIKey(name: "web", kind: .secret), now: self.now)
        let gateway = try FileKeyStore(path: path)
        let authenticator = APIKeyAuthenticator(store: gateway)
        let watcher = Task { try await gateway.run() }
        defer { watcher.cancel() }
        #expect(
            (try? authenticator.authenticate(key: issued.key.plaintext, origin: nil, browserEndpoint: false).get())
                != nil
        )

        let revokedAt = ISO8601DateFormatter().string(from: Date().addingTimeInterval(-1))
        try self.editFile(path) { keys in keys[0]["revoked_at"] = revokedAt }
        let edited = ContinuousClock.now
        // One poll (1 s) plus scheduling: about a second on a quiet machine. The bound is the
        // wait's: a CI machine starting every suite at once once took 10.6 s.
        try await waitUntil(timeout: .seconds(30), pollEvery: .milliseconds(20)) {
            gateway.lookup(sha256: issued.key.sha256)?.revokedAt != nil
        }
        let elapsed = ContinuousClock.now - edited
        #expect(elapsed < .seconds(30), "refused after \(elapsed)")
        let result = authenticator.authenticate(key: issued.key.plaintext, origin: nil, browserEndpoint: false)
        #expect(throws: AuthFailure.self) { try result.get() }
    }

    @Test func aBrokenFileIsRefusedOnceAndTheLastGoodCopyStays() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/keys.json"
        let logs = CapturedLogs()
        let issued = try await FileKeyStore(path: path).create(NewAPIKey(name: "web", kind: .secret), now: self.now)
        let gateway = try FileKeyStore(path: path, logger: logs.logger)

        try "{ \"version\": 1, \"keys\": [ {".write(toFile: path, atomically: false, encoding: .utf8)
        #expect(!gateway.reload())
        #expect(!gateway.reloadIfChanged())
        #expect(!gateway.reloadIfChanged())
        #expect(logs.count("API key file refused; keeping the last good copy") == 1)
        #expect(gateway.lookup(sha256: issued.key.sha256)?.name == "web")
        #expect(throws: KeyStoreError.self) { try FileKeyStore(path: path) }

        // A duplicate current name breaks an invariant, not the syntax: refused too.
        var ring = APIKeyRing()
        let a = try ring.create(NewAPIKey(name: "a", kind: .secret), now: self.now)
        _ = try ring.create(NewAPIKey(name: "b", kind: .secret), now: self.now)
        ring.keys[1].name = "a"
        try KeyStoreCodec.encodeFile(ring).write(to: URL(fileURLWithPath: path))
        #expect(!gateway.reloadIfChanged())
        #expect(gateway.lookup(sha256: a.key.sha256) == nil)
        #expect(logs.count("API key file refused; keeping the last good copy") == 2)
        let refusal = logs.entries.last { $0.message.hasPrefix("API key file refused") }
        #expect(refusal?.metadata["error.message"].map { "\($0)" }?.contains("two current keys are named a") == true)

        try FileManager.default.removeItem(atPath: path)
        _ = try await FileKeyStore(path: path).create(NewAPIKey(name: "c", kind: .secret), now: self.now)
        #expect(gateway.reloadIfChanged())
        #expect(gateway.snapshot.map(\.name) == ["c"])
        let text = logs.entries.map { "\($0.message) \($0.metadata)" }.joined(separator: "\n")
        #expect(!text.contains(issued.key.plaintext) && !text.contains(a.key.plaintext))
    }

    @Test func theConfiguredStoreIsExactlyOneOfFileAndPostgres() async throws {
        let directory = try TemporaryDirectory()
        let store = try openAPIKeyStore(file: directory.path + "/keys.json", postgresURL: nil)
        let issued = try await store.create(NewAPIKey(name: "web", kind: .secret), now: self.now)
        #expect(await store.reload())
        #expect(store.lookup(sha256: issued.key.sha256)?.name == "web")
        #expect(try openAPIKeyStore(file: nil, postgresURL: "postgres://sluice@db/keys") is PostgresKeyStore)
        let neither = #expect(throws: KeyStoreError.self) { try openAPIKeyStore(file: nil, postgresURL: nil) }
        #expect(neither?.message.contains("no key store") == true)
        let both = #expect(throws: KeyStoreError.self) {
            try openAPIKeyStore(file: directory.path + "/keys.json", postgresURL: "postgres://sluice@db/keys")
        }
        #expect(both?.message.contains("only one") == true)
    }

    /// K11: last use is recorded in memory and written at most once per flush, not per request.
    @Test func k11LastUsedIsFlushedInOneWriteNotPerRequest() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/keys.json"
        let issued = try await FileKeyStore(path: path).create(NewAPIKey(name: "web", kind: .secret), now: self.now)
        let gateway = try FileKeyStore(path: path, lastUsedFlushInterval: .seconds(60))
        let authenticator = APIKeyAuthenticator(store: gateway)
        let used = self.now.addingTimeInterval(30)
        for offset in 0..<10_000 {
            let at = used.addingTimeInterval(Double(offset) / 1000)
            _ = try authenticator.authenticate(key: issued.key.plaintext, origin: nil, browserEndpoint: false, now: at)
                .get()
        }
        #expect(gateway.fileWrites == 0, "nothing is written on the request path")
        #expect(try gateway.flushLastUsed())
        #expect(try !gateway.flushLastUsed(), "nothing new to write")
        #expect(gateway.fileWrites == 1)
        let stored = try await FileKeyStore(path: path).list()
        #expect(stored.first?.lastUsedAt.map { abs($0.timeIntervalSince(used.addingTimeInterval(9.999))) < 1 } == true)

        // The watcher flushes on its interval, and once more when it stops.
        let watched = try FileKeyStore(path: path, pollInterval: .milliseconds(20), lastUsedFlushInterval: .seconds(60))
        let watcher = Task { try await watched.run() }
        for _ in 0..<200 {
            watched.noteUsed(id: issued.record.id, at: self.now.addingTimeInterval(120))
            try await Task.sleep(for: .milliseconds(1))
        }
        #expect(watched.fileWrites == 0)
        watcher.cancel()
        try await watcher.value
        #expect(watched.fileWrites == 1)
        #expect(try await watched.list().first?.lastUsedAt == self.now.addingTimeInterval(120))
    }
}
