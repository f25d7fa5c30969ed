import AsyncHTTPClient
import Foundation
import Kafka
import LocalClickHouse
import NIOCore
import NIOHTTP1
import TestSupport
import Testing

/// The stats API and the analytics page through the real pipeline: `sluice gateway` with
/// `analytics.enabled`, the loader (which creates the rollups), ClickHouse 18.16, keys made with
/// `sluice keys create`. Only a secret key with `stats:read` reads; it cannot write; an ingest
/// key and a publishable key cannot read.
@Suite(.serialized, .timeLimit(.minutes(4))) struct StatsAPITests {
    struct Answer {
        var status: Int
        var headers: [String: String]
        var body: String
        var json: [String: Any] {
            (try? JSONSerialization.jsonObject(with: Data(self.body.utf8)) as? [String: Any]) ?? [:]
        }
    }

    @Test func theStatsAPIAnswersTheRollupsToAReadKeyOnly() async throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        try cluster.createTopic("events", partitions: 2)
        let clickHouse = try await ClickHouseServer.start()
        defer { clickHouse.stop() }
        let state = try TemporaryDirectory()
        let door = try await FrontDoor.make(in: state.path)
        func key(_ arguments: [String]) async throws -> String {
            let made = try SluiceProcess(["keys", "create"] + arguments + ["--file", door.keysFile])
            #expect(try await made.waitForExit() == 0, "\(made.standardError)")
            return try #require(
                made.standardOutput.split(whereSeparator: \.isWhitespace).map(String.init).first {
                    ($0.hasPrefix("slk_") || $0.hasPrefix("slp_")) && $0.count == 57
                }
            )
        }
        let reader = try await key(["reader", "--kind", "secret", "--scope", "stats:read"])
        let browser = try await key(["web", "--kind", "publishable", "--origin", "https://shop.example"])
        let refused = try SluiceProcess([
            "keys", "create", "leaky", "--kind", "publishable", "--origin", "https://shop.example", "--scope",
            "stats:read", "--file", door.keysFile,
        ])
        #expect(try await refused.waitForExit() == 1)
        #expect(refused.standardError.contains("a publishable key cannot have stats:read"), "\(refused.standardError)")

        // OAuth clients of the built-in server: one may read stats, one may only write.
        func oauthClient(_ name: String, scope: String) async throws -> (id: String, secret: String) {
            let added = try SluiceProcess([
                "oauth", "clients", "add", name, "--scope", scope, "--clients-file", state.path + "/oauth/clients.json",
            ])
            #expect(try await added.waitForExit() == 0, "\(added.standardError)")
            let secret = try #require(
                added.standardOutput.split(separator: "\n").first { $0.hasPrefix("client_secret:") }?
                    .split(separator: " ").last.map(String.init)
            )
            return (name, secret)
        }
        try FileManager.default.createDirectory(atPath: state.path + "/oauth", withIntermediateDirectories: true)
        let dashboard = try await oauthClient("dashboard", scope: "stats:read")
        let backend = try await oauthClient("backend", scope: "events:write")
        // The issuer URL names the port, so the port is chosen first.
        let port = try freeLoopbackPorts(1)[0]
        let environment = door.environment.merging([
            "SLUICE_KAFKA_PROPERTIES_LOG__LEVEL": "2", "SLUICE_LOGGING_LEVEL": "warning",
            "SLUICE_ANALYTICS_ENABLED": "true", "SLUICE_LOADER_BATCH_AGE": "100ms",
            "SLUICE_AUTH_OAUTH_BUILTIN_SERVER_ENABLED": "true",
            "SLUICE_AUTH_OAUTH_BUILTIN_SERVER_CLIENTS_FILE": state.path + "/oauth/clients.json",
            "SLUICE_AUTH_OAUTH_BUILTIN_SERVER_SIGNING_KEY_FILE": state.path + "/oauth/signing.key",
            "SLUICE_AUTH_OAUTH_BUILTIN_SERVER_ISSUER": "https://127.0.0.1:\(port)",
            "SLUICE_AUTH_OAUTH_BUILTIN_SERVER_CA_FILE": door.caFile,
        ]) { $1 }
        let loader = try SluiceProcess(
            ["loader", "--kafka-bootstrap", cluster.bootstrapServers, "--clickhouse-url", clickHouse.httpURL],
            environment: environment
        )
        let gateway = try SluiceProcess(
            [
                "gateway", "--listen", "127.0.0.1:\(port)", "--wal-dir", state.path + "/wal", "--kafka-bootstrap",
                cluster.bootstrapServers,
            ],
            environment: environment.merging(["SLUICE_CLICKHOUSE_URL": clickHouse.httpURL]) { $1 }
        )
        #expect(try await gateway.listeningPort() == port)
        let base = "https://127.0.0.1:\(port)"
        let client = door.client()
        defer { Task { try? await client.shutdown() } }

        // 10 views and 3 clicks of hero, 2 page views, from two visitors; one bot view.
        let now = Int64(Date().timeIntervalSince1970) * 1000
        var events: [String] = []
        for n in 0..<10 { events.append(Self.event("view", object: "hero", visitor: "a\(n % 2)", at: now)) }
        for n in 0..<3 { events.append(Self.event("click", object: "hero", visitor: "a\(n % 2)", at: now)) }
        for n in 0..<2 { events.append(Self.event("page_view", object: "", visitor: "a\(n)", at: now)) }
        let writer = EventPoster(url: base, authorization: "Bearer \(door.key)", client: client)
        let posted = try await writer.postBatch(events)
        #expect(posted.status == .accepted, "\(posted.body.prefix(600))")
        // A read key does not write.
        let readerWrites = try await EventPoster(url: base, authorization: "Bearer \(reader)", client: client)
            .post(Self.event("view", object: "hero", visitor: "a0", at: now))
        #expect(readerWrites.status.code == 403, "\(readerWrites.body)")
        #expect(readerWrites.body.contains("insufficient_scope") || readerWrites.body.contains("may not send events"))

        let analyst = Analyst(url: clickHouse.httpURL)
        defer { Task { await analyst.shutdown() } }
        try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(250)) {
            await analyst.eventIDs().count == events.count
        }

        func get(_ path: String, _ credential: String? = reader) async throws -> Answer {
            var request = HTTPClientRequest(url: base + path)
            if let credential { request.headers.add(name: "Authorization", value: "Bearer \(credential)") }
            let response = try await client.execute(request, timeout: .seconds(30))
            let body = String(buffer: try await response.body.collect(upTo: 1 << 20))
            var headers: [String: String] = [:]
            for header in response.headers { headers[header.name.lowercased()] = header.value }
            return Answer(status: Int(response.status.code), headers: headers, body: body)
        }

        let objects = try await get("/v1/stats/objects")
        #expect(objects.status == 200, "\(objects.body)")
        #expect(objects.headers["cache-control"] == "no-store")
        let rows = try #require(objects.json["objects"] as? [[String: Any]], "\(objects.body)")
        #expect(rows.count == 1)
        #expect(rows.first?["object"] as? String == "hero")
        #expect((rows.first?["views"] as? NSNumber)?.intValue == 10)
        #expect((rows.first?["clicks"] as? NSNumber)?.intValue == 3)
        #expect((rows.first?["ctr"] as? NSNumber)?.doubleValue == 0.3)
        #expect((rows.first?["visitors"] as? NSNumber)?.intValue == 2)

        let pages = try await get("/v1/stats/pages")
        let pageRows = try #require(pages.json["pages"] as? [[String: Any]], "\(pages.body)")
        #expect(pageRows.first?["page"] as? String == "https://shop.example/")
        #expect((pageRows.first?["page_views"] as? NSNumber)?.intValue == 2)
        #expect((pageRows.first?["events"] as? NSNumber)?.intValue == 15)

        let series = try await get("/v1/stats/timeseries?action=view")
        let points = try #require(series.json["points"] as? [[String: Any]], "\(series.body)")
        #expect(points.reduce(0) { $0 + (($1["events"] as? NSNumber)?.intValue ?? 0) } == 10)

        // Who may not read.
        #expect(try await get("/v1/stats/objects", nil).status == 401)
        let ingest = try await get("/v1/stats/objects", door.key)
        #expect(ingest.status == 403 && ingest.body.contains("stats:read"), "\(ingest.body)")
        #expect(try await get("/v1/stats/objects", browser).status == 403)
        #expect(try await get("/v1/stats/objects", "slk_live_" + String(repeating: "A", count: 48)).status == 401)
        // Access tokens: one with stats:read reads; one with only events:write does not.
        func token(_ oauth: (id: String, secret: String)) async throws -> String {
            var grant = HTTPClientRequest(url: base + "/oauth/token")
            grant.method = .POST
            grant.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
            let basic = Data("\(oauth.id):\(oauth.secret)".utf8).base64EncodedString()
            grant.headers.add(name: "Authorization", value: "Basic \(basic)")
            grant.body = .bytes(ByteBuffer(string: "grant_type=client_credentials"))
            let answer = try await client.execute(grant, timeout: .seconds(30))
            let body = try await answer.body.collect(upTo: 1 << 16)
            let json = try JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any]
            return try #require(json?["access_token"] as? String, "\(String(buffer: body))")
        }
        let readToken = try await token(dashboard)
        let byToken = try await get("/v1/stats/objects", readToken)
        #expect(byToken.status == 200, "\(byToken.body)")
        #expect((byToken.json["objects"] as? [[String: Any]])?.first?["object"] as? String == "hero")
        let writeToken = try await get("/v1/stats/objects", try await token(backend))
        #expect(writeToken.status == 403 && writeToken.body.contains("insufficient_scope"), "\(writeToken.body)")
        // Mistakes are a 400 that says what is expected.
        let unknown = try await get("/v1/stats/objects?window=1h")
        #expect(unknown.status == 400 && unknown.body.contains("unknown parameter 'window'"), "\(unknown.body)")
        let backwards = try await get("/v1/stats/objects?from=2026-12-01T00:00:00Z&to=2026-11-01T00:00:00Z")
        #expect(backwards.status == 400 && backwards.body.contains("'from' must be before 'to'"))
        #expect(try await get("/v1/stats/objects?min_views=-1").status == 400)

        // The page: self-contained, no inline script, no data without a key.
        let page = try await get("/analytics", nil)
        #expect(page.status == 200)
        #expect(page.headers["content-type"]?.hasPrefix("text/html") == true)
        #expect(page.headers["content-security-policy"]?.contains("script-src 'self'") == true)
        #expect(!page.body.contains("http://") && !page.body.contains("https://"), "no external resources")
        #expect(page.body.contains("<script src=\"/analytics.js\"></script>"))
        let script = try await get("/analytics.js", nil)
        #expect(script.status == 200 && script.body.contains("/v1/stats/objects"))
        #expect(!script.body.contains("innerHTML"), "names from events are written as text only")

        gateway.signal(SIGTERM)
        loader.signal(SIGTERM)
        #expect(try await gateway.waitForExit() == 0)
        #expect(try await loader.waitForExit() == 0)
        withExtendedLifetime(cluster) {}
    }

    /// An event with a fresh UUID as its id.
    static func event(_ action: String, object: String, visitor: String, at millis: Int64) -> String {
        let id = UUID().uuidString.lowercased()
        return
            #"{"event_id":"\#(id)","action":"\#(action)","anonymous_id":"\#(visitor)","page":"https://shop.example/","object":"\#(object)","timestamp":\#(millis)}"#
    }
}
