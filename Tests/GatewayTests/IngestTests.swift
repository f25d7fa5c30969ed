import CompressNIO
import EventModel
import Foundation
import Gateway
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing
@_spi(Testing) import WAL

@Suite(.timeLimit(.minutes(2))) struct IngestTests {
    static let json = headers([.contentType: "application/json"])

    @Test func aSingleEventIsDurableBeforeThe202() async throws {
        let gateway = try await TestGateway.make()
        let wal = gateway.wal
        try await gateway.test { client in
            let response = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: Self.json,
                body: buffer(#"{"action":"click","user_id":"u1","object":"buy","page":"https://shop/p"}"#)
            )
            #expect(response.status == .accepted)
            let id = try #require(response.json()["event_ids"])
            // The 202 came after the fsync: the WAL already says it is durable.
            #expect(wal.durableNextLSN == LSN(1))
            #expect(response.headers[HTTPField.Name("X-Request-Id")!] != nil)
            #expect(id != .array([]))
        }
        let events = try gateway.storedEvents()
        #expect(events.count == 1)
        #expect(events.first?["object"] == .string("buy"))
        #expect(events.first?["gateway_id"] == .string("gw-test"))
        #expect(events.first?["received_at"] != nil)
    }

    @Test func batchesInEveryFormatAreStored() async throws {
        let gateway = try await TestGateway.make()
        try await gateway.test { client in
            let bodies: [(String, String)] = [
                ("application/json", #"[{"action":"a1","user_id":"u"},{"action":"a2","user_id":"u"}]"#),
                (
                    "application/x-ndjson",
                    "{\"action\":\"a3\",\"user_id\":\"u\"}\n{\"action\":\"a4\",\"user_id\":\"u\"}\n"
                ),
                ("text/csv", "action,user_id,page\na5,u,https://x/\n\"a6\",u,\"https://y/?q=1,2\"\n"),
                ("text/plain;charset=UTF-8", #"[{"action":"a7","user_id":"u"}]"#),
            ]
            for (type, body) in bodies {
                let response = try await client.execute(
                    uri: "/v1/events/batch",
                    method: .post,
                    headers: headers([.contentType: type]),
                    body: buffer(body)
                )
                #expect(response.status == .accepted, "\(type): \(response.text)")
            }
            let form = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: headers([.contentType: "application/x-www-form-urlencoded"]),
                body: buffer("action=a8&user_id=u&campaign=spring")
            )
            #expect(form.status == .accepted)
            let beacon = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: headers([.contentType: "text/plain"]),
                body: buffer(#"{"action":"a9","user_id":"u"}"#)
            )
            #expect(beacon.status == .accepted)
            let pixel = try await client.execute(
                uri: "/v1/pixel?action=a10&user_id=u&page=https%3A%2F%2Fx%2F",
                method: .get
            )
            #expect(pixel.status == .ok)
            #expect(pixel.headers[.contentType] == "image/gif")
            #expect(Array(pixel.body.readableBytesView.prefix(6)) == Array("GIF89a".utf8))
        }
        let events = try gateway.storedEvents()
        #expect(
            events.compactMap { if case .string(let a) = $0["action"] { a } else { nil } } == (1...10).map { "a\($0)" }
        )
        #expect(events[5]["page"] == .string("https://y/?q=1,2"))
        #expect(events[7]["properties"]?["campaign"] == .string("spring"))
        #expect(events[9]["page"] == .string("https://x/"))
    }

    @Test func compressedBodiesAreAcceptedAndBombsRefused() async throws {
        let gateway = try await TestGateway.make { $0.maxBodyBytes = 64 << 10 }
        try await gateway.test { client in
            for (encoding, algorithm) in [("gzip", CompressionAlgorithm.gzip()), ("deflate", .zlib())] {
                var body = buffer(#"[{"action":"zipped","user_id":"u"}]"#)
                let compressed = try body.compress(with: algorithm)
                let response = try await client.execute(
                    uri: "/v1/events/batch",
                    method: .post,
                    headers: headers([.contentType: "application/json", .contentEncoding: encoding]),
                    body: compressed
                )
                #expect(response.status == .accepted, "\(encoding)")
            }
            // 1 MiB of spaces gzips to ~1 KiB: under the limit on the wire, far over it inflated.
            var bomb = buffer("[" + String(repeating: " ", count: 1 << 20) + "]")
            let response = try await client.execute(
                uri: "/v1/events/batch",
                method: .post,
                headers: headers([.contentType: "application/json", .contentEncoding: "gzip"]),
                body: try bomb.compress(with: .gzip())
            )
            #expect(response.status == .contentTooLarge)
            #expect(try response.json()["limit"] == .number("65536"))
            let garbage = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: headers([.contentType: "application/json", .contentEncoding: "gzip"]),
                body: buffer("not gzip at all")
            )
            #expect(garbage.status == .badRequest)
            let brotli = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: headers([.contentType: "application/json", .contentEncoding: "br"]),
                body: buffer("{}")
            )
            #expect(brotli.status == .unsupportedMediaType)
        }
        #expect(try gateway.storedEvents().count == 2)
    }

    @Test func limitsAnswer413WithTheLimit() async throws {
        let gateway = try await TestGateway.make {
            $0.maxBodyBytes = 2048
            $0.maxBatchEvents = 3
        }
        try await gateway.test { client in
            let large = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: Self.json,
                body: buffer(
                    #"{"action":"a","user_id":"u","properties":{"x":""# + String(repeating: "y", count: 4000) + "\"}}"
                )
            )
            #expect(large.status == .contentTooLarge)
            #expect(large.headers[.contentType] == "application/problem+json")
            #expect(try large.json()["limit"] == .number("2048"))
            let many = try await client.execute(
                uri: "/v1/events/batch",
                method: .post,
                headers: Self.json,
                body: buffer(
                    "[" + Array(repeating: #"{"action":"a","user_id":"u"}"#, count: 4).joined(separator: ",") + "]"
                )
            )
            #expect(many.status == .contentTooLarge)
            #expect(try many.json()["detail"] == .string("4 events in one request; the limit is 3"))
        }
        #expect(try gateway.storedEvents().isEmpty)
    }

    @Test func malformedAndUnsupportedBodiesGetProblemDocuments() async throws {
        let gateway = try await TestGateway.make()
        try await gateway.test { client in
            let malformed = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: Self.json,
                body: buffer("{\"action\": \"a\",\n \"user_id\" \"u\"}")
            )
            #expect(malformed.status == .badRequest)
            let problem = try malformed.json()
            #expect(problem["type"] == .string("/problems/malformed-body"))
            #expect(problem["title"] == .string("Malformed request body"))
            #expect(problem["status"] == .number("400"))
            guard case .string(let detail) = problem["detail"] else { throw WALError(.invalidArgument, "no detail") }
            #expect(detail.contains("line 2, column 12"))
            #expect(problem["instance"] == .string("/v1/events"))
            #expect(problem["request_id"] != nil)

            let xml = try await client.execute(
                uri: "/v1/events/batch",
                method: .post,
                headers: headers([.contentType: "application/xml"]),
                body: buffer("<e/>")
            )
            #expect(xml.status == .unsupportedMediaType)
            #expect(
                try xml.json()["accepted_types"]
                    == .array(
                        ["application/json", "application/x-ndjson", "text/csv", "text/plain"].map { .string($0) }
                    )
            )
            let empty = try await client.execute(
                uri: "/v1/events/batch",
                method: .post,
                headers: Self.json,
                body: buffer("[]")
            )
            #expect(empty.status == .badRequest)
        }
    }

    @Test func invalidEventsGet422WithPointersAndMixedBatches207() async throws {
        let gateway = try await TestGateway.make()
        try await gateway.test { client in
            let invalid = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: Self.json,
                body: buffer(#"{"action":"click","timestamp":"yesterday"}"#)
            )
            #expect(invalid.status == .unprocessableContent)
            guard case .array(let errors) = try invalid.json()["errors"] else {
                Issue.record("no errors member")
                return
            }
            let pointers = errors.compactMap { error -> String? in
                if case .string(let pointer) = error["pointer"] { return pointer }
                return nil
            }
            #expect(Set(pointers) == ["/timestamp", "/user_id"])

            let mixed = try await client.execute(
                uri: "/v1/events/batch",
                method: .post,
                headers: Self.json,
                body: buffer(#"[{"action":"ok","user_id":"u1"},{"action":"ok"},{"action":"ok","user_id":"u3"}]"#)
            )
            #expect(mixed.status.code == 207)
            let body = try mixed.json()
            #expect(body["accepted"] == .number("2"))
            #expect(body["rejected"] == .number("1"))
            guard case .array(let results) = body["results"] else { return }
            #expect(results.map { $0["status"] } == [.number("202"), .number("422"), .number("202")])
            #expect(
                results[1]["errors"]
                    == .array([
                        .object([
                            ("pointer", .string("/1/user_id")),
                            ("detail", .string("user_id or anonymous_id is required")),
                        ])
                    ])
            )

            let atomic = try await client.execute(
                uri: "/v1/events/batch?atomic=true",
                method: .post,
                headers: Self.json,
                body: buffer(#"[{"action":"atomic","user_id":"u1"},{"action":"atomic"}]"#)
            )
            #expect(atomic.status == .unprocessableContent)
        }
        let stored = try gateway.storedEvents()
        #expect(stored.map { $0["user_id"] } == [.string("u1"), .string("u3")])
    }

    @Test func unknownRoutesAndMethodsAreProblems() async throws {
        let gateway = try await TestGateway.make()
        try await gateway.test { client in
            let missing = try await client.execute(uri: "/v2/things", method: .get)
            #expect(missing.status == .notFound)
            #expect(missing.headers[.contentType] == "application/problem+json")
            let wrongMethod = try await client.execute(uri: "/v1/events", method: .get)
            #expect(wrongMethod.status == .methodNotAllowed)
            #expect(wrongMethod.headers[.allow] == "POST")
            let health = try await client.execute(uri: "/healthz", method: .get)
            #expect(health.status == .ok)
        }
    }

    @Test func aFullWALAnswers503WithRetryAfterAndReadinessFails() async throws {
        let gateway = try await TestGateway.make(
            configure: { $0.retryAfterSeconds = 3 },
            wal: { wal in
                wal.segmentBytes = 64 << 10
                wal.budget = DiskBudget(maxBytes: 128 << 10, softFraction: 0.5, hardFraction: 0.6, minFreeBytes: 0)
            }
        )
        try await gateway.test { client in
            var statuses: [HTTPResponse.Status] = []
            var last: TestResponse?
            for index in 0..<40 {
                let response = try await client.execute(
                    uri: "/v1/events",
                    method: .post,
                    headers: Self.json,
                    body: buffer(
                        #"{"action":"fill","user_id":"u\#(index)","properties":{"pad":""#
                            + String(repeating: "x", count: 8000)
                            + "\"}}"
                    )
                )
                statuses.append(response.status)
                last = response
                if response.status == .serviceUnavailable { break }
            }
            #expect(statuses.last == .serviceUnavailable)
            #expect(last?.headers[.retryAfter] == "3")
            #expect(try last?.json()["type"] == .string("/problems/unavailable"))
            let ready = try await client.execute(uri: "/readyz", method: .get)
            #expect(ready.status == .serviceUnavailable)
            // The reason names the cause: the WAL's own bytes against wal.max_bytes (not free space).
            let reason: String? =
                if case .string(let text) = try ready.json()["reason"] { text } else { nil }
            #expect(reason?.hasPrefix("the WAL holds") == true)
            #expect(reason?.contains("wal.max_bytes (131072)") == true)
        }
    }

    @Test func aFailedFsyncAnswers503AndNothingIsAcknowledged() async throws {
        let faults = FaultInjectingFileSystem()
        let gateway = try await TestGateway.make(wal: { $0.fileSystem = faults })
        try await gateway.test { client in
            let before = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: Self.json,
                body: buffer(#"{"action":"before","user_id":"u"}"#)
            )
            #expect(before.status == .accepted)
            faults.inject(.fdatasync, errno: EIO, times: 1, pathContains: ".wal")
            let failed = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: Self.json,
                body: buffer(#"{"action":"failed","user_id":"u"}"#)
            )
            #expect(failed.status == .serviceUnavailable)
            #expect(failed.headers[.retryAfter] == "1")
            let after = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: Self.json,
                body: buffer(#"{"action":"after","user_id":"u"}"#)
            )
            #expect(after.status == .accepted)
        }
        let actions = try gateway.storedEvents().map { $0["action"] }
        #expect(actions.contains(.string("before")))
        #expect(actions.contains(.string("after")))
    }

    @Test func corsAllowsConfiguredOriginsAndRefusesOthers() async throws {
        let gateway = try await TestGateway.make { $0.corsAllowedOrigins = ["https://shop.example"] }
        try await gateway.test { client in
            let preflight = try await client.execute(
                uri: "/v1/events",
                method: .options,
                headers: headers([
                    .origin: "https://shop.example", .accessControlRequestMethod: "POST",
                    .accessControlRequestHeaders: "content-type",
                ])
            )
            #expect(preflight.headers[.accessControlAllowOrigin] == "https://shop.example")
            let allowed = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: headers([.contentType: "text/plain", .origin: "https://shop.example"]),
                body: buffer(#"{"action":"cors","user_id":"u"}"#)
            )
            #expect(allowed.status == .accepted)
            #expect(allowed.headers[.accessControlAllowOrigin] == "https://shop.example")
            let refused = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: headers([.contentType: "text/plain", .origin: "https://evil.example"]),
                body: buffer(#"{"action":"cors","user_id":"u"}"#)
            )
            #expect(refused.status == .forbidden)
        }
        #expect(try gateway.storedEvents().count == 1)
    }

    @Test func requestIDsAreEchoedAndMetricsExported() async throws {
        let gateway = try await TestGateway.make()
        try await gateway.test { client in
            let response = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: headers([.contentType: "application/json", HTTPField.Name("X-Request-Id")!: "req-123"]),
                body: buffer(#"{"action":"metrics","user_id":"u"}"#)
            )
            #expect(response.headers[HTTPField.Name("X-Request-Id")!] == "req-123")
            let metrics = try await client.execute(uri: "/metrics", method: .get)
            #expect(metrics.status == .ok)
            #expect(
                metrics.text.contains(#"sluice_http_requests_total{route="/v1/events",method="POST",status="202"}"#)
            )
            #expect(metrics.text.contains("sluice_wal_fsync_duration_seconds_bucket"))
            #expect(metrics.text.contains("sluice_gateway_accepted_events_total"))
        }
    }
}
