import Testing

@testable import EventModel

@Suite struct JSONTests {
    @Test func parsesTheValueKindsAndKeepsNumbersAsWritten() throws {
        let value = try JSONParser.parse(
            Array(#"{"a":[1,-2.50,3e2,true,false,null],"b":"x\"y\u00e9\ud83d\ude00"}"#.utf8)
        )
        #expect(
            value["a"] == .array([.number("1"), .number("-2.50"), .number("3e2"), .bool(true), .bool(false), .null])
        )
        #expect(value["b"] == .string("x\"yé😀"))
        var writer = JSONWriter()
        writer.write(value)
        #expect(String(decoding: writer.bytes, as: UTF8.self) == #"{"a":[1,-2.50,3e2,true,false,null],"b":"x\"yé😀"}"#)
    }

    @Test(arguments: [
        (#"{"a":1,}"#, "expected a string key", 1, 8),
        ("{\"a\"\n:tru}", "invalid literal (expected true)", 2, 2),
        (#"[1 2]"#, "expected ',' or ']'", 1, 4),
        (#"{"a":01}"#, "expected ',' or '}'", 1, 7),
        (#""\x""#, "invalid escape '\\x'", 1, 2),
        ("", "unexpected end of input", 1, 1),
        (#"{"a":1} x"#, "unexpected data after the JSON value", 1, 9),
        (#""\ud800""#, "unpaired surrogate in \\u escape", 1, 8),
    ])
    func reportsSyntaxErrorsWithTheirPosition(input: String, message: String, line: Int, column: Int) {
        #expect(throws: JSONSyntaxError.self) { try JSONParser.parse(Array(input.utf8)) }
        do {
            _ = try JSONParser.parse(Array(input.utf8))
        } catch {
            #expect(error.message == message)
            #expect(error.line == line)
            #expect(error.column == column)
        }
    }

    @Test func limitsNestingDepth() {
        let deep = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        #expect(throws: JSONSyntaxError.self) { try JSONParser.parse(Array(deep.utf8)) }
        let fine = String(repeating: "[", count: 60) + String(repeating: "]", count: 60)
        #expect(throws: Never.self) { try JSONParser.parse(Array(fine.utf8)) }
    }

    @Test func escapesControlCharactersWhenWriting() {
        var writer = JSONWriter()
        writer.string("a\u{1}\n\"\\")
        #expect(String(decoding: writer.bytes, as: UTF8.self) == #""a\u0001\n\"\\""#)
    }
}

@Suite struct TimestampAndUUIDTests {
    @Test func parsesRFC3339WithFractionsAndOffsets() {
        #expect(Timestamp.parse("1970-01-01T00:00:00Z") == 0)
        #expect(Timestamp.parse("2026-11-22T10:15:30.250Z") == 1_795_342_530_250)
        #expect(Timestamp.parse("2026-11-22T12:15:30.25+02:00") == 1_795_342_530_250)
        #expect(Timestamp.parse("2026-11-22t10:15:30.250123z") == 1_795_342_530_250)
        #expect(Timestamp.parse("2024-02-29T00:00:00Z") != nil)
        #expect(Timestamp.parse("2023-02-29T00:00:00Z") == nil)
        #expect(Timestamp.parse("2026-11-22T10:15:30") == nil)  // no zone
        #expect(Timestamp.parse("2026-13-01T00:00:00Z") == nil)
        #expect(Timestamp.parse("yesterday") == nil)
    }

    @Test func writesClickHouseDateTimeText() {
        func text(_ millis: Int64, fraction: Bool) -> String {
            var bytes = Array("x".utf8)
            Timestamp.appendClickHouseText(millis: millis, fraction: fraction, to: &bytes)
            return String(decoding: bytes, as: UTF8.self)
        }
        #expect(text(0, fraction: false) == "x1970-01-01 00:00:00")
        #expect(text(1_795_342_530_250, fraction: true) == "x2026-11-22 10:15:30.250")
        #expect(text(951_782_400_007, fraction: true) == "x2000-02-29 00:00:00.007")
        #expect(text(4_102_444_799_999, fraction: false) == "x2099-12-31 23:59:59")
    }

    @Test func formatsMillisecondsAsUTC() {
        #expect(Timestamp.format(millis: 0) == "1970-01-01T00:00:00.000Z")
        #expect(Timestamp.format(millis: 1_795_342_530_250) == "2026-11-22T10:15:30.250Z")
        #expect(Timestamp.format(millis: 951_782_400_000) == "2000-02-29T00:00:00.000Z")
        for millis: Int64 in [1, 86_399_999, 1_700_000_000_123, 4_102_444_800_000] {
            #expect(Timestamp.parse(Timestamp.format(millis: millis)) == millis)
        }
        // Before 1970 and past year 9999 (the general path beside the fixed-width one).
        #expect(Timestamp.format(millis: -1) == "1969-12-31T23:59:59.999Z")
        #expect(Timestamp.format(millis: 253_402_300_800_000) == "10000-01-01T00:00:00.000Z")
    }

    @Test func stringsAreCheckedForUTF8WhetherTheyAreASCIIOrNot() throws {
        #expect(try JSONParser.parse(Array(#"{"a":"plain","b":"ünïcode"}"#.utf8))["b"] == .string("ünïcode"))
        // A lone continuation byte, an overlong form: refused, with or without ASCII before them.
        for bad: [UInt8] in [[0x61, 0x80], [0xC0, 0xAF], [0x80]] {
            let document = Array(#"{"a":""#.utf8) + bad + Array(#""}"#.utf8)
            #expect(throws: JSONSyntaxError.self) { try JSONParser.parse(document) }
        }
    }

    @Test func generatedIDsAreDistinctAcrossThePoolsRefills() {
        // 512 words make 256 ids per refill: several refills, no repeat.
        let ids = (0..<2_000).map { _ in UUIDText.v7(millis: 1_795_342_530_000) }
        #expect(Set(ids).count == ids.count)
    }

    @Test func normalizesUUIDsAndGeneratesVersion7() {
        #expect(UUIDText.normalize("0190F5D2-7A3C-7CC2-9B4E-3F6A1D2C4B5A") == "0190f5d2-7a3c-7cc2-9b4e-3f6a1d2c4b5a")
        #expect(UUIDText.normalize("0190f5d27a3c7cc29b4e3f6a1d2c4b5a") == nil)
        #expect(UUIDText.normalize("0190f5d2-7a3c-7cc2-9b4e-3f6a1d2c4b5g") == nil)
        let id = UUIDText.v7(millis: 1_795_342_530_250)
        #expect(UUIDText.normalize(id) == id)
        // 48 bits of milliseconds first (0x01a202c0f6ca), so ids sort by time.
        #expect(id.hasPrefix("01a202c0-f6ca-7"))
        let characters = Array(id)
        #expect(characters[14] == "7")
        #expect("89ab".contains(characters[19]))
        #expect(UUIDText.v7(millis: 1_795_342_530_250) != id)
        #expect(UUIDText.v7(millis: 1_795_342_530_251) > UUIDText.v7(millis: 1_795_342_530_250))
    }
}

@Suite struct EventValidationTests {
    static let origin = RequestOrigin(
        receivedAtMillis: 1_795_342_530_250,
        clientIP: "203.0.113.9",
        userAgent: "test",
        gatewayID: "gw-1"
    )

    static func validate(_ json: String, limits: EventLimits = EventLimits()) -> Result<Event, EventErrors> {
        Event.validate(try! JSONParser.parse(Array(json.utf8)), pointer: "/0", origin: origin, limits: limits)
    }

    @Test func acceptsAFullClickstreamEventAndNormalizesIt() throws {
        let event = try Self.validate(
            #"{"action":"click","user_id":42,"timestamp":"2026-11-22T10:15:00Z","event_id":"0190F5D2-7A3C-7CC2-9B4E-3F6A1D2C4B5A","page":"https://shop.example/p/1","object":"buy-button","referrer":"https://search.example/","session_id":"s-1","properties":{"price":9.5,"tags":["a"]}}"#
        ).get()
        #expect(event.userID == "42")
        #expect(event.eventID == "0190f5d2-7a3c-7cc2-9b4e-3f6a1d2c4b5a")
        #expect(event.timestampMillis == 1_795_342_500_000)
        let json = try JSONParser.parse(event.normalizedJSON(origin: Self.origin))
        #expect(json["action"] == .string("click"))
        #expect(json["timestamp"] == .string("2026-11-22T10:15:00.000Z"))
        #expect(json["received_at"] == .string("2026-11-22T10:15:30.250Z"))
        #expect(json["client_ip"] == .string("203.0.113.9"))
        #expect(json["gateway_id"] == .string("gw-1"))
        #expect(json["properties"]?["price"] == .number("9.5"))
        #expect(json["schema_version"] == .number("1"))
    }

    @Test func fillsInTheEventIDAndTimestampWhenAbsent() throws {
        let event = try Self.validate(#"{"action":"page_view","user_id":"u"}"#).get()
        #expect(event.timestampMillis == Self.origin.receivedAtMillis)
        #expect(UUIDText.normalize(event.eventID) == event.eventID)
        #expect(Array(event.eventID)[14] == "7")
    }

    @Test func reportsEveryBadFieldWithAPointer() throws {
        let result = Self.validate(
            #"{"action":"Click!","user_id":"","timestamp":"2030-01-01T00:00:00Z","event_id":"nope","page":7,"colour":"red","properties":[1]}"#
        )
        guard case .failure(let failure) = result else {
            Issue.record("expected errors")
            return
        }
        let pointers = Set(failure.errors.map(\.pointer))
        #expect(
            pointers == [
                "/0/action", "/0/user_id", "/0/timestamp", "/0/event_id", "/0/page", "/0/colour", "/0/properties",
            ]
        )
        #expect(failure.errors.first { $0.pointer == "/0/colour" }?.detail.contains("properties") == true)
    }

    @Test func requiresActionAndUserIDAndRejectsNonObjects() {
        guard case .failure(let missing) = Self.validate("{}") else { return }
        #expect(missing.errors.map(\.pointer) == ["/0/action", "/0/user_id"])
        #expect(missing.errors.last?.detail == "user_id or anonymous_id is required")
        guard case .failure(let notObject) = Self.validate("[1]") else { return }
        #expect(notObject.errors.first?.detail.contains("object") == true)
    }

    @Test func enforcesTimestampBoundsAndPropertiesSize() {
        var limits = EventLimits()
        limits.maxPropertiesBytes = 20
        guard
            case .failure(let big) = Self.validate(
                #"{"action":"a","user_id":"u","properties":{"k":"0123456789abcdef"}}"#,
                limits: limits
            )
        else { return }
        #expect(big.errors.map(\.pointer) == ["/0/properties"])
        guard case .failure(let old) = Self.validate(#"{"action":"a","user_id":"u","timestamp":0}"#) else { return }
        #expect(old.errors.first?.detail.contains("past") == true)
        let fine = Self.validate(#"{"action":"a","user_id":"u","timestamp":1795342530000}"#)
        #expect((try? fine.get().timestampMillis) == 1_795_342_530_000)
    }

    @Test func anAnonymousVisitorNeedsNoUserIDButOneOfTheTwo() throws {
        let anonymous = try Self.validate(#"{"action":"view","anonymous_id":"v-1","object":"banner"}"#).get()
        #expect(anonymous.userID == nil)
        #expect(anonymous.anonymousID == "v-1")
        let json = try JSONParser.parse(anonymous.normalizedJSON(origin: Self.origin))
        #expect(json["anonymous_id"] == .string("v-1"))
        #expect(json["user_id"] == nil, "no user_id is written, not an empty one")
        let both = try Self.validate(#"{"action":"view","anonymous_id":"v-1","user_id":"u-1"}"#).get()
        #expect(both.userID == "u-1" && both.anonymousID == "v-1")

        guard case .failure(let neither) = Self.validate(#"{"action":"view"}"#) else {
            Issue.record("an event with neither id was accepted")
            return
        }
        #expect(neither.errors == [FieldError(pointer: "/0/user_id", detail: "user_id or anonymous_id is required")])
        guard case .failure(let empty) = Self.validate(#"{"action":"view","anonymous_id":""}"#) else { return }
        #expect(empty.errors.map(\.pointer) == ["/0/anonymous_id"], "one error: the bad id, not also a missing one")

        // Flat formats: an empty user_id column is an absent id.
        let row = try Event.validate(
            fields: [("action", "click"), ("user_id", ""), ("anonymous_id", "v-2")],
            pointer: "/0",
            origin: Self.origin,
            limits: EventLimits()
        ).get()
        #expect(row.userID == nil && row.anonymousID == "v-2")
    }

    /// The client's clock ran 1 h ahead: its `sent_at` says so, and the event's time is moved
    /// back by the same hour (Segment's rule), while `sent_at` is kept as sent.
    @Test func sentAtCorrectsTheClientsClockSkew() throws {
        let received = Self.origin.receivedAtMillis
        let hour: Int64 = 3_600_000
        let event = try Self.validate(
            #"{"action":"click","anonymous_id":"v","timestamp":\#(received + hour - 5_000),"sent_at":\#(received + hour)}"#
        ).get()
        #expect(event.timestampMillis == received - 5_000)
        #expect(event.sentAtMillis == received + hour)
        let json = try JSONParser.parse(event.normalizedJSON(origin: Self.origin))
        #expect(json["sent_at"] == .string(Timestamp.format(millis: received + hour)))

        // Without sent_at the timestamp is as sent; sent_at alone changes nothing.
        #expect(
            try Self.validate(#"{"action":"a","user_id":"u","timestamp":\#(received - 5_000)}"#).get().timestampMillis
                == received - 5_000
        )
        #expect(
            try Self.validate(#"{"action":"a","user_id":"u","sent_at":"2001-01-01T00:00:00Z"}"#).get().timestampMillis
                == received
        )

        // A timestamp inside the bounds as sent but two days ahead once corrected is refused,
        // and the error says why; a sent_at outside what ClickHouse stores is refused.
        guard
            case .failure(let ahead) = Self.validate(
                #"{"action":"a","user_id":"u","timestamp":\#(received),"sent_at":\#(received - 2 * 24 * hour)}"#
            )
        else {
            Issue.record("a timestamp two days ahead after correction was accepted")
            return
        }
        #expect(ahead.errors.map(\.pointer) == ["/0/timestamp"])
        #expect(ahead.errors.first?.detail.contains("clock skew") == true)
        guard case .failure(let far) = Self.validate(#"{"action":"a","user_id":"u","sent_at":"2200-01-01T00:00:00Z"}"#)
        else { return }
        #expect(far.errors == [FieldError(pointer: "/0/sent_at", detail: "must be between 1970 and 2100")])
        guard case .failure(let bad) = Self.validate(#"{"action":"a","user_id":"u","sent_at":"yesterday"}"#) else {
            return
        }
        #expect(bad.errors.map(\.pointer) == ["/0/sent_at"])
    }

    @Test func theUserAgentClassificationIsWrittenWhenTheGatewayMadeOne() throws {
        var origin = Self.origin
        origin.browser = "Chrome"
        origin.os = "Android"
        origin.device = "mobile"
        origin.isBot = false
        let event = try Self.validate(#"{"action":"a","user_id":"u"}"#).get()
        let json = try JSONParser.parse(event.normalizedJSON(origin: origin))
        #expect(json["browser"] == .string("Chrome") && json["os"] == .string("Android"))
        #expect(json["device"] == .string("mobile") && json["is_bot"] == .bool(false))
        let plain = try JSONParser.parse(event.normalizedJSON(origin: Self.origin))
        #expect(plain["browser"] == nil && plain["is_bot"] == nil)
    }

    @Test func flatInputPutsUnknownKeysIntoProperties() throws {
        let event = try Event.validate(
            fields: [
                ("action", "page_view"), ("user_id", "u"), ("campaign", "spring"), ("properties.ab", "b"),
                ("timestamp", "1795342530000"),
            ],
            pointer: "",
            origin: Self.origin,
            limits: EventLimits()
        ).get()
        #expect(event.properties == .object([("campaign", .string("spring")), ("ab", .string("b"))]))
        #expect(event.timestampMillis == 1_795_342_530_000)
    }
}

@Suite struct BodyDecoderTests {
    @Test func contentTypesMapToFormats() {
        #expect(BodyFormat(contentType: "application/json; charset=utf-8") == .json)
        #expect(BodyFormat(contentType: "Application/X-NDJSON") == .ndjson)
        #expect(BodyFormat(contentType: "text/plain;charset=UTF-8") == .textJSON)
        #expect(BodyFormat(contentType: "application/xml") == nil)
        #expect(BodyFormat(contentType: nil) == nil)
    }

    @Test func ndjsonKeepsGoodLinesAndReportsBadOnes() throws {
        let items = try BodyDecoder.decode(
            Array("{\"a\":1}\n\n{oops}\n{\"b\":2}\r\n".utf8),
            format: .ndjson,
            batch: true
        )
        #expect(items.count == 3)
        #expect(items[0] == .json(.object([("a", .number("1"))])))
        guard case .unreadable(let reason) = items[1] else {
            Issue.record("line 3 must be unreadable")
            return
        }
        #expect(reason.hasPrefix("line 3:"))
        #expect(throws: BodyError.self) { try BodyDecoder.decode(Array("nope\n".utf8), format: .ndjson, batch: true) }
    }

    @Test func arraysOnlyGoToTheBatchRoute() throws {
        #expect(try BodyDecoder.decode(Array("[{},{}]".utf8), format: .json, batch: true).count == 2)
        #expect(throws: BodyError.self) { try BodyDecoder.decode(Array("[{}]".utf8), format: .json, batch: false) }
        #expect(throws: BodyError.self) { try BodyDecoder.decode(Array("{".utf8), format: .json, batch: false) }
    }

    @Test func csvHandlesQuotesAndReportsRaggedRows() throws {
        let csv = "action,user_id,page\r\nclick,u1,\"https://x/?a=1,b=\"\"2\"\"\"\npage_view,u2\n\"multi\nline\",u3,p\n"
        let items = try BodyDecoder.decode(Array(csv.utf8), format: .csv, batch: true)
        #expect(items.count == 3)
        #expect(
            items[0]
                == .fields([.init("action", "click"), .init("user_id", "u1"), .init("page", "https://x/?a=1,b=\"2\"")])
        )
        guard case .unreadable(let reason) = items[1] else { return }
        #expect(reason.contains("line 3"))
        #expect(items[2] == .fields([.init("action", "multi\nline"), .init("user_id", "u3"), .init("page", "p")]))
        #expect(throws: BodyError.self) { try BodyDecoder.decode(Array("a\"b\n".utf8), format: .csv, batch: true) }
        #expect(throws: BodyError.self) { try BodyDecoder.decode(Array("x,y\n1,2\n".utf8), format: .csv, batch: true) }
    }

    @Test func formDataIsPercentDecoded() throws {
        let fields = try BodyDecoder.form(
            Array("action=page_view&user_id=a+b&page=https%3A%2F%2Fx%2F%C3%A9&empty".utf8)
        )
        #expect(
            fields == [
                .init("action", "page_view"), .init("user_id", "a b"), .init("page", "https://x/é"), .init("empty", ""),
            ]
        )
        #expect(throws: BodyError.self) { try BodyDecoder.form(Array("a=%zz".utf8)) }
    }
}
