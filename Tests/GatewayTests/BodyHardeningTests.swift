import CompressNIO
import EventModel
import Foundation
import Gateway
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing
import WAL

/// "A 2xx means the event is stored, exactly as sent": bodies that are incomplete, ambiguous
/// or not UTF-8 are refused whole, and nothing of them reaches the WAL.
@Suite(.timeLimit(.minutes(2))) struct BodyHardeningTests {
    static func compress(_ bytes: [UInt8], _ algorithm: CompressionAlgorithm) throws -> [UInt8] {
        var buffer = ByteBuffer(bytes: bytes)
        return Array(try buffer.compress(with: algorithm).readableBytesView)
    }

    static func post(
        _ client: some TestClientProtocol,
        _ uri: String = "/v1/events/batch",
        type: String,
        encoding: String? = nil,
        userAgent: String? = nil,
        _ body: [UInt8]
    ) async throws -> TestResponse {
        var fields: HTTPFields = [.contentType: type]
        if let encoding { fields[.contentEncoding] = encoding }
        if let userAgent { fields[.userAgent] = userAgent }
        return try await client.execute(uri: uri, method: .post, headers: fields, body: ByteBuffer(bytes: body))
    }

    static func string(_ value: JSONValue?) -> String? {
        if case .string(let text) = value { return text }
        return nil
    }

    /// A gzip member holding nothing: header, an empty final block, CRC-32 and length of zero.
    static let emptyGzipMember: [UInt8] = [
        0x1F, 0x8B, 0x08, 0, 0, 0, 0, 0, 0, 0x03, 0x03, 0x00, 0, 0, 0, 0, 0, 0, 0, 0,
    ]

    static let rows = Array(
        ("action,user_id,object\n" + (0..<1000).map { "click,u,o\($0)\n" }.joined()).utf8
    )

    @Test func compressedBodiesThatDoNotEndAreRefusedWhole() async throws {
        let gateway = try await TestGateway.make()
        let encodings: [(String, CompressionAlgorithm)] = [
            ("gzip", .gzip()), ("x-gzip", .gzip()), ("deflate", .zlib()), ("deflate", .deflate()),
        ]
        try await gateway.test { client in
            for (encoding, algorithm) in encodings {
                let full = try Self.compress(Self.rows, algorithm)
                var broken: [(String, [UInt8])] = [
                    ("5 bytes", Array(full.prefix(5))), ("30 %", Array(full.prefix(full.count * 3 / 10))),
                    ("50 %", Array(full.prefix(full.count / 2))), ("99 %", Array(full.prefix(full.count * 99 / 100))),
                    ("all but 1 byte", Array(full.dropLast())), ("trailing garbage", full + Array("garbage".utf8)),
                    ("a trailing zero", full + [0]),
                ]
                if encoding.hasSuffix("gzip") {
                    broken.append(("the trailer cut", Array(full.dropLast(8))))
                    var badCRC = full
                    badCRC[badCRC.count - 6] ^= 0xFF
                    broken.append(("a bad CRC32", badCRC))
                }
                for (name, body) in broken {
                    let response = try await Self.post(client, type: "text/csv", encoding: encoding, body)
                    #expect(response.status == .badRequest, "\(encoding) \(algorithm) with \(name): \(response.text)")
                    #expect(
                        Self.string(try response.json()["detail"])?.contains("\(encoding) data") == true,
                        "\(response.text)"
                    )
                }
                let whole = try await Self.post(client, type: "text/csv", encoding: encoding, full)
                #expect(whole.status == .accepted, "\(encoding) \(algorithm): \(whole.text)")
            }
        }
        let stored = try gateway.storedEvents()
        // Only the four complete bodies: 1,000 rows each, the last row whole.
        #expect(stored.count == 4000)
        #expect(stored.last?["object"] == .string("o999"))
    }

    @Test func everyMemberOfAMultiMemberGzipBodyIsRead() async throws {
        let gateway = try await TestGateway.make { $0.maxBodyBytes = 64 << 10 }
        @Sendable func lines(_ prefix: String) -> [UInt8] {
            Array((0..<500).map { "{\"action\":\"click\",\"user_id\":\"\(prefix)-\($0)\"}\n" }.joined().utf8)
        }
        try await gateway.test { client in
            let body = try Self.compress(lines("m1"), .gzip()) + Self.compress(lines("m2"), .gzip())
            let both = try await Self.post(client, type: "application/x-ndjson", encoding: "gzip", body)
            #expect(both.status == .accepted, "\(both.text)")
            #expect(try both.json()["accepted"] == .number("1000"))
            // An empty member between two others is still a member.
            let withEmpty =
                try Self.compress(Array(#"[{"action":"empty","user_id":"e1"}"#.utf8), .gzip())
                + Self.emptyGzipMember + Self.compress(Array(#",{"action":"empty","user_id":"e2"}]"#.utf8), .gzip())
            let spliced = try await Self.post(client, type: "application/json", encoding: "gzip", withEmpty)
            #expect(spliced.status == .accepted, "\(spliced.text)")
            // 40 KiB each: one member fits the 64 KiB limit, two together do not.
            let padded = Array((String(repeating: " ", count: 40 << 10) + #"{"action":"pad","user_id":"p"}"#).utf8)
            let member = try Self.compress(padded + [0x0A], .gzip())
            let tooMuch = try await Self.post(client, type: "application/x-ndjson", encoding: "gzip", member + member)
            #expect(tooMuch.status == .contentTooLarge, "\(tooMuch.text)")
            #expect(try tooMuch.json()["limit"] == .number("65536"))
            // A second member that is cut off spoils the whole body.
            let cut = try Self.compress(lines("c1"), .gzip()) + Self.compress(lines("c2"), .gzip()).dropLast(3)
            let truncated = try await Self.post(client, type: "application/x-ndjson", encoding: "gzip", cut)
            #expect(truncated.status == .badRequest, "\(truncated.text)")
        }
        let users = try gateway.storedEvents().compactMap { Self.string($0["user_id"]) }
        #expect(users == (0..<500).map { "m1-\($0)" } + (0..<500).map { "m2-\($0)" } + ["e1", "e2"])
    }

    @Test func bodiesMayStartWithAByteOrderMarkInEveryFormat() async throws {
        let gateway = try await TestGateway.make()
        let bom: [UInt8] = [0xEF, 0xBB, 0xBF]
        try await gateway.test { client in
            let batches: [(String, String)] = [
                ("application/json", #"[{"action":"b1","user_id":"u"}]"#),
                ("text/plain", #"[{"action":"b2","user_id":"u"}]"#),
                ("application/x-ndjson", "{\"action\":\"b3\",\"user_id\":\"u\"}\n"),
                ("text/csv", "action,user_id\r\nb4,u\r\n"),
            ]
            for (type, body) in batches {
                let response = try await Self.post(client, type: type, bom + Array(body.utf8))
                #expect(response.status == .accepted, "\(type): \(response.text)")
            }
            let singles: [(String, String)] = [
                ("application/json", #"{"action":"b5","user_id":"u"}"#),
                ("text/plain", #"{"action":"b6","user_id":"u"}"#),
                ("application/x-www-form-urlencoded", "action=b7&user_id=u"),
            ]
            for (type, body) in singles {
                let response = try await Self.post(client, "/v1/events", type: type, bom + Array(body.utf8))
                #expect(response.status == .accepted, "\(type): \(response.text)")
            }
            // Excel's "CSV UTF-8", gzipped: the BOM is looked for after decompression.
            let zipped = try Self.compress(bom + Array("action,user_id\nb8,u\n".utf8), .gzip())
            let response = try await Self.post(client, type: "text/csv", encoding: "gzip", zipped)
            #expect(response.status == .accepted, "\(response.text)")
        }
        let stored = try gateway.storedEvents()
        #expect(stored.compactMap { Self.string($0["action"]) } == (1...8).map { "b\($0)" })
        #expect(stored.allSatisfy { $0["properties"] == nil })
    }

    @Test func csvThatIsNotUTF8OrIsAmbiguousIsRefusedWithItsLine() async throws {
        let gateway = try await TestGateway.make()
        let cases: [([UInt8], String)] = [
            (Array("action,user_id\nclick,caf".utf8) + [0xE9] + [0x0A], "line 2"),
            (Array("action,user_id\nclick,u\nclick,\"abc\"def\n".utf8), "line 3"),
            (Array("action,user_id\nclick,a\rb\n".utf8), "line 2"),
            (Array("action,user_id\rclick,u\r".utf8), "CR-only"),
            (Array("action,user_id,\nclick,u,x\n".utf8), "no name"),
        ]
        try await gateway.test { client in
            for (body, expected) in cases {
                let response = try await Self.post(client, type: "text/csv", body)
                #expect(response.status == .badRequest, "\(response.text)")
                #expect(Self.string(try response.json()["detail"])?.contains(expected) == true, "\(response.text)")
            }
            let unnamed = try await client.execute(uri: "/v1/pixel?action=click&user_id=u&=", method: .get)
            #expect(unnamed.status == .unprocessableContent, "\(unnamed.text)")
        }
        #expect(try gateway.storedEvents().isEmpty)
    }

    @Test func aPropertyNamedTwiceIsRefusedInEveryFormat() async throws {
        let gateway = try await TestGateway.make()
        try await gateway.test { client in
            let json = try await Self.post(
                client,
                "/v1/events",
                type: "application/json",
                Array(#"{"action":"a","user_id":"u","properties":{"deep":{"list":[{"k":1,"k":2}]}}}"#.utf8)
            )
            #expect(json.status == .unprocessableContent)
            #expect(
                try json.json()["errors"]
                    == .array([
                        .object([
                            ("pointer", .string("/properties/deep/list/0/k")),
                            ("detail", .string("appears more than once")),
                        ])
                    ])
            )
            for body in [
                "action=a&user_id=u&x=1&properties.x=2", "action=a&user_id=u&properties=%7B%22a%22%3A1%7D&a=2",
            ] {
                let form = try await Self.post(
                    client,
                    "/v1/events",
                    type: "application/x-www-form-urlencoded",
                    Array(body.utf8)
                )
                #expect(form.status == .unprocessableContent, "\(body): \(form.text)")
            }
            let csv = try await Self.post(
                client,
                type: "text/csv",
                Array("action,user_id,x,properties.x\na,u,1,2\n".utf8)
            )
            #expect(csv.status == .unprocessableContent, "\(csv.text)")
            let pixel = try await client.execute(uri: "/v1/pixel?action=a&user_id=u&x=1&properties.x=2", method: .get)
            #expect(pixel.status == .unprocessableContent, "\(pixel.text)")
        }
        #expect(try gateway.storedEvents().isEmpty)
    }

    @Test func anEventIDRepeatedInOneRequestIsRefusedForTheLaterItems() async throws {
        let gateway = try await TestGateway.make()
        let id = "0190f5d2-7a3c-7cc2-9b4e-3f6a1d2c4b5a"
        try await gateway.test { client in
            let body = """
                [{"action":"c","user_id":"first","event_id":"\(id)"},
                 {"action":"c","user_id":"second","event_id":"\(id.uppercased())"},
                 {"action":"c","user_id":"third"},
                 {"action":"c","user_id":"fourth","event_id":"\(id)"}]
                """
            let response = try await Self.post(client, type: "application/json", Array(body.utf8))
            #expect(response.status.code == 207, "\(response.text)")
            let results = try response.json()["results"]
            guard case .array(let items) = results else {
                Issue.record("no results: \(response.text)")
                return
            }
            #expect(items.map { $0["status"] } == [.number("202"), .number("422"), .number("202"), .number("422")])
            #expect(items[1]["errors"]?.pointerList == ["/1/event_id"])
            #expect(items[3]["errors"]?.pointerList == ["/3/event_id"])
            let atomic = try await Self.post(
                client,
                "/v1/events/batch?atomic=true",
                type: "application/json",
                Array(body.utf8)
            )
            #expect(atomic.status == .unprocessableContent)
            for nilID in ["00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"] {
                let reserved = try await Self.post(
                    client,
                    "/v1/events",
                    type: "application/json",
                    Array(#"{"action":"c","user_id":"nil","event_id":"\#(nilID)"}"#.utf8)
                )
                #expect(reserved.status == .unprocessableContent)
                #expect(try reserved.json()["errors"]?.pointerList == ["/event_id"])
            }
        }
        let stored = try gateway.storedEvents()
        #expect(stored.compactMap { Self.string($0["user_id"]) } == ["first", "third"])
        #expect(stored.first?["event_id"] == .string(id))
    }

    @Test func theUserAgentIsBoundedInEveryStoredEvent() async throws {
        let gateway = try await TestGateway.make()
        let events = Array(String(repeating: "{\"action\":\"c\",\"user_id\":\"u\"}\n", count: 1000).utf8)
        try await gateway.test { client in
            // 1,000 events of 29 bytes with a 100 KB User-Agent: once a 100 MB record and a 413
            // about the WAL's record size for a 29 KB body.
            let huge = String(repeating: "U", count: 100_000)
            let response = try await Self.post(client, type: "application/x-ndjson", userAgent: huge, events)
            #expect(response.status == .accepted, "\(response.text)")
            let accented = String(repeating: "a", count: 511) + "é and more"
            let single = try await Self.post(
                client,
                "/v1/events",
                type: "application/json",
                userAgent: accented,
                Array(#"{"action":"c","user_id":"accent"}"#.utf8)
            )
            #expect(single.status == .accepted)
        }
        let stored = try gateway.storedEvents()
        #expect(stored.count == 1001)
        #expect(stored.allSatisfy { (Self.string($0["user_agent"])?.utf8.count ?? 0) <= 512 })
        #expect(Self.string(stored.first?["user_agent"]) == String(repeating: "U", count: 512))
        #expect(Self.string(stored.last?["user_agent"]) == String(repeating: "a", count: 511))
    }

    @Test func anObjectWithManyKeysIsAnsweredAtOnce() async throws {
        let gateway = try await TestGateway.make()
        let keys = (0..<20_000).map { "\"k\($0)\":0" }.joined(separator: ",")
        try await gateway.test { client in
            let started = ContinuousClock.now
            let response = try await Self.post(
                client,
                "/v1/events",
                type: "application/json",
                Array((#"{"action":"click","user_id":"k","# + keys + "}").utf8)
            )
            let elapsed = ContinuousClock.now - started
            #expect(response.status == .unprocessableContent)
            guard case .array(let errors) = try response.json()["errors"] else {
                Issue.record("no errors: \(response.text)")
                return
            }
            #expect(errors.count == 1)
            #expect(errors.first?["limit"] == .number("64"))
            // The quadratic scan took about 45 s of CPU for 20k keys in a debug build.
            #expect(elapsed < .seconds(10))
        }
        #expect(try gateway.storedEvents().isEmpty)
    }
}

@Suite(.timeLimit(.minutes(1))) struct ForwardedForValidationTests {
    @Test func onlyAnAddressIsStoredAsTheClientIP() async throws {
        let cases: [(String, String)] = [
            ("not-an-ip", "127.0.0.1"),
            ("6.6.6.6:1234", "6.6.6.6"),
            ("[2001:DB8::1]:443", "2001:db8::1"),
            ("2001:db8:0:0::2", "2001:db8::2"),
            ("198.51.100.7, not-an-ip", "127.0.0.1"),
            ("not-an-ip, 198.51.100.8", "198.51.100.8"),
            ("01.2.3.4", "127.0.0.1"),
            ("1.2.3.4.5", "127.0.0.1"),
            (String(repeating: "9", count: 5000), "127.0.0.1"),
            (#""admin": "true"#, "127.0.0.1"),
            ("fe80::1%eth0", "127.0.0.1"),
        ]
        let gateway = try await TestGateway.make { $0.trustedProxies = ["127.0.0.1"] }
        let app = Application(router: gateway.router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { client in
            for (header, _) in cases {
                let response = try await client.execute(
                    uri: "/v1/events",
                    method: .post,
                    headers: headers([.contentType: "application/json", .xForwardedFor: header]),
                    body: buffer(#"{"action":"xff","user_id":"u"}"#)
                )
                #expect(response.status == .accepted, "\(header): \(response.text)")
            }
        }
        await gateway.wal.close()
        let stored = try gateway.storedEvents().map { $0["client_ip"] }
        #expect(stored == cases.map { .string($0.1) })
    }
}

extension JSONValue {
    /// The `pointer` of each member of an `errors` array.
    var pointerList: [String] {
        guard case .array(let errors) = self else { return [] }
        return errors.compactMap { if case .string(let pointer) = $0["pointer"] { pointer } else { nil } }
    }
}
