import Auth
import CompressNIO
import EventModel
import Foundation
import Gateway
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing

/// Segment's HTTP tracking API on the gateway: the mapping onto Sluice events, the write key
/// as HTTP Basic user, the answers the SDKs expect, and errors that name the Segment field.
@Suite(.timeLimit(.minutes(2))) struct SegmentAPITests {
    static let secretKey = "slk_segment_test_key"
    static let browserKey = "slp_segment_test_key"

    /// `secretKey` is `key:backend` (a server), `browserKey` is `key:web` (publishable); anything
    /// else is refused as an unknown key.
    static var authentication: GatewayAuthentication {
        var authentication = GatewayAuthentication()
        authentication.required = true
        authentication.verifyAPIKey = { key, _, _ in
            switch key {
            case Self.secretKey: .success(AccessGrant(principal: Principal(kind: .secretKey, name: "backend")))
            case Self.browserKey: .success(AccessGrant(principal: Principal(kind: .publishableKey, name: "web")))
            default: .failure(.invalidToken("unknown_key", "the API key is not known"))
            }
        }
        return authentication
    }

    /// The headers analytics-python sends: JSON, gzip, the write key as the Basic user.
    static func sdkHeaders(key: String = Self.secretKey, gzip: Bool = true) -> HTTPFields {
        var fields = headers([
            .contentType: "application/json",
            .authorization: "Basic " + Data((key + ":").utf8).base64EncodedString(),
            .userAgent: "analytics-python/2.4.0",
        ])
        if gzip { fields[.contentEncoding] = "gzip" }
        return fields
    }

    static func body(_ text: String, gzip: Bool = true) throws -> ByteBuffer {
        var plain = buffer(text)
        return gzip ? try plain.compress(with: .gzip()) : plain
    }

    static let iPhone =
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1"

    /// A batch as analytics-python sends it, timestamps relative to now.
    static func sdkBatch(sentAt: Date = Date()) -> String {
        let now = ISO8601DateFormatter.string(from: sentAt, timeZone: .gmt, formatOptions: [.withInternetDateTime])
        return """
            {"batch":[
             {"type":"track","event":"Order Completed","userId":"u-1","messageId":"0b7e5c3e-6a47-4d7c-9d1e-5a6c7b8d9e0f",
              "timestamp":"\(now)","properties":{"total":42.5},"integrations":{},
              "context":{"library":{"name":"analytics-python","version":"2.4.0"},"ip":"203.0.113.7",
                         "userAgent":"\(Self.iPhone)","page":{"url":"https://shop.example/cart"}}},
             {"type":"page","name":"Pricing","anonymousId":"anon-1","messageId":"page-1","timestamp":"\(now)",
              "properties":{"url":"https://shop.example/pricing","referrer":"https://search.example/"}},
             {"type":"identify","userId":"u-1","anonymousId":"anon-1","traits":{"plan":"pro"},
              "messageId":"A1B2C3D4-0000-4000-8000-000000000001","timestamp":"\(now)"}
            ],"sentAt":"\(now)","writeKey":"\(Self.secretKey)"}
            """
    }

    @Test func aBatchFromTheSDKIsDurableBeforeTheSuccessAnswerAndMappedFieldByField() async throws {
        let gateway = try await TestGateway.make(authentication: Self.authentication)
        try await gateway.test { client in
            let response = try await client.execute(
                uri: "/v1/batch",
                method: .post,
                headers: Self.sdkHeaders(),
                body: try Self.body(Self.sdkBatch())
            )
            #expect(response.status == .ok, "\(response.text)")
            #expect(try response.json() == .object([("success", .bool(true))]))
        }
        let events = try gateway.storedEvents()
        try #require(events.count == 3)
        let (track, page, identify) = (events[0], events[1], events[2])
        #expect(track["event_id"] == .string("0b7e5c3e-6a47-4d7c-9d1e-5a6c7b8d9e0f"))
        #expect(track["action"] == .string("order_completed"))
        #expect(track["user_id"] == .string("u-1"))
        #expect(track["page"] == .string("https://shop.example/cart"))
        #expect(track["source"] == .string("key:backend"))
        // The visitor's address and browser from the context, not the SDK's.
        #expect(track["client_ip"] == .string("203.0.113.7"))
        #expect(track["user_agent"] == .string(Self.iPhone))
        #expect(track["browser"] == .string("Safari") && track["os"] == .string("iOS"))
        #expect(track["device"] == .string("mobile") && track["is_bot"] == .bool(false))
        #expect(track["properties"]?["total"] == .number("42.5"))
        #expect(track["properties"]?["$segment"]?["event"] == .string("Order Completed"))
        #expect(track["properties"]?["$segment"]?["context"]?["library"]?["name"] == .string("analytics-python"))
        #expect(track["properties"]?["$segment"]?["context"]?["ip"] == nil)
        #expect(track["sent_at"] != nil)

        #expect(page["action"] == .string("page_view"))
        #expect(page["anonymous_id"] == .string("anon-1"))
        #expect(page["user_id"] == nil || page["user_id"] == .null)
        #expect(page["page"] == .string("https://shop.example/pricing"))
        #expect(page["referrer"] == .string("https://search.example/"))
        #expect(page["event_id"] == .string(SegmentMapping.derivedEventID(messageID: "page-1", source: "key:backend")))
        #expect(page["properties"]?["$segment"]?["messageId"] == .string("page-1"))
        #expect(page["properties"]?["$segment"]?["name"] == .string("Pricing"))
        // Without context.userAgent the request's (the SDK's) is stored, as for any request.
        #expect(page["user_agent"] == .string("analytics-python/2.4.0"))
        #expect(page["browser"] == nil && page["device"] == nil && page["is_bot"] == nil)

        #expect(identify["action"] == .string("identify"))
        #expect(identify["event_id"] == .string("a1b2c3d4-0000-4000-8000-000000000001"))
        #expect(identify["properties"]?["plan"] == .string("pro"))
        // The write key in the body is never stored.
        for event in events {
            var writer = JSONWriter()
            writer.write(event)
            #expect(!String(decoding: writer.bytes, as: UTF8.self).contains(Self.secretKey))
        }
    }

    @Test func aWrongOrMissingWriteKeyIs401AndNothingIsStored() async throws {
        let gateway = try await TestGateway.make(authentication: Self.authentication)
        try await gateway.test { client in
            let wrong = try await client.execute(
                uri: "/v1/batch",
                method: .post,
                headers: Self.sdkHeaders(key: "slk_not_a_known_key"),
                body: try Self.body(Self.sdkBatch())
            )
            #expect(wrong.status == .unauthorized)
            #expect(!wrong.text.contains("slk_not_a_known_key"))
            var anonymous = Self.sdkHeaders()
            anonymous[.authorization] = nil
            let missing = try await client.execute(
                uri: "/v1/track",
                method: .post,
                headers: anonymous,
                body: try Self.body(#"{"event":"x","userId":"u"}"#)
            )
            #expect(missing.status == .unauthorized)
        }
        #expect(try gateway.storedEvents().isEmpty)
    }

    @Test func theSinglePathsTakeTheirTypeFromThePath() async throws {
        let gateway = try await TestGateway.make(authentication: Self.authentication)
        try await gateway.test { client in
            let bodies: [(String, String)] = [
                ("/v1/track", #"{"event":"Signed Up","userId":"u"}"#),
                ("/v1/page", #"{"anonymousId":"a","context":{"page":{"url":"https://x.example/"}}}"#),
                ("/v1/identify", #"{"userId":"u","traits":{"name":"Ada"}}"#),
                ("/v1/screen", #"{"userId":"u","name":"Home"}"#),
                ("/v1/group", #"{"userId":"u","groupId":"g1","traits":{"size":3}}"#),
                ("/v1/alias", #"{"userId":"u","previousId":"a"}"#),
            ]
            for (path, body) in bodies {
                let response = try await client.execute(
                    uri: path,
                    method: .post,
                    headers: Self.sdkHeaders(gzip: false),
                    body: buffer(body)
                )
                #expect(response.status == .ok, "\(path): \(response.text)")
            }
        }
        let events = try gateway.storedEvents()
        #expect(
            events.map { $0["action"] }
                == ["signed_up", "page_view", "identify", "screen_view", "group", "alias"].map { .string($0) }
        )
        #expect(events[1]["page"] == .string("https://x.example/"))
        #expect(events[2]["properties"]?["name"] == .string("Ada"))
        #expect(events[4]["properties"]?["$segment"]?["groupId"] == .string("g1"))
        #expect(events[5]["properties"]?["$segment"]?["previousId"] == .string("a"))
    }

    @Test func aRetriedMessageKeepsItsEventIDAndARepeatInOneBatchIsRefused() async throws {
        let gateway = try await TestGateway.make(authentication: Self.authentication)
        let message = #"{"type":"track","event":"Paid","userId":"u","messageId":"order-42"}"#
        try await gateway.test { client in
            for _ in 0..<2 {
                let response = try await client.execute(
                    uri: "/v1/batch",
                    method: .post,
                    headers: Self.sdkHeaders(),
                    body: try Self.body(#"{"batch":[\#(message)]}"#)
                )
                #expect(response.status == .ok)
            }
            let repeated = try await client.execute(
                uri: "/v1/batch",
                method: .post,
                headers: Self.sdkHeaders(),
                body: try Self.body(#"{"batch":[\#(message),\#(message)]}"#)
            )
            #expect(repeated.status == .ok)
            let answer = try repeated.json()
            #expect(answer["accepted"] == .number("1"))
            guard case .array(let errors)? = answer["errors"] else {
                Issue.record("no errors in \(repeated.text)")
                return
            }
            #expect(errors.first?["pointer"] == .string("/batch/1/messageId"))
        }
        let ids = try gateway.storedEvents().map { $0["event_id"] }
        let derived = SegmentMapping.derivedEventID(messageID: "order-42", source: "key:backend")
        #expect(ids == [JSONValue.string(derived), .string(derived), .string(derived)])
        // Another source's "order-42" is another event.
        #expect(
            SegmentMapping.derivedEventID(messageID: "order-42", source: "key:backend")
                != SegmentMapping.derivedEventID(messageID: "order-42", source: "key:other")
        )
    }

    @Test func invalidMessagesAreListedBySegmentFieldAndTheValidOnesStored() async throws {
        let gateway = try await TestGateway.make(authentication: Self.authentication)
        try await gateway.test { client in
            let response = try await client.execute(
                uri: "/v1/batch",
                method: .post,
                headers: Self.sdkHeaders(),
                body: try Self.body(
                    """
                    {"batch":[
                     {"type":"track","event":"Ok","userId":"u"},
                     {"type":"track","event":"No Identity"},
                     {"type":"track","userId":"u"},
                     {"type":"track","event":"Bad Time","userId":"u","timestamp":"yesterday"},
                     {"type":"fly","userId":"u"},
                     {"type":"track","event":"Bad IP","userId":"u","context":{"ip":"not an address"}},
                     "not an object"
                    ]}
                    """
                )
            )
            #expect(response.status == .ok, "\(response.text)")
            let answer = try response.json()
            #expect(answer["success"] == .bool(true))
            #expect(answer["accepted"] == .number("1"))
            #expect(answer["rejected"] == .number("6"))
            guard case .array(let errors)? = answer["errors"] else {
                Issue.record("no errors in \(response.text)")
                return
            }
            let pointers = errors.compactMap { error -> String? in
                if case .string(let pointer)? = error["pointer"] { return pointer }
                return nil
            }
            #expect(
                pointers == [
                    "/batch/1/userId", "/batch/2/event", "/batch/3/timestamp", "/batch/4/type",
                    "/batch/5/context/ip", "/batch/6",
                ]
            )
            #expect(response.text.contains("userId or anonymousId is required"))

            let none = try await client.execute(
                uri: "/v1/track",
                method: .post,
                headers: Self.sdkHeaders(),
                body: try Self.body(#"{"event":"x"}"#)
            )
            #expect(none.status == .unprocessableContent)
            #expect(none.text.contains("\"/userId\""))
            let notJSON = try await client.execute(
                uri: "/v1/batch",
                method: .post,
                headers: Self.sdkHeaders(),
                body: try Self.body("{batch")
            )
            #expect(notJSON.status == .badRequest)
            let noBatch = try await client.execute(
                uri: "/v1/batch",
                method: .post,
                headers: Self.sdkHeaders(),
                body: try Self.body(#"{"messages":[]}"#)
            )
            #expect(noBatch.status == .badRequest)
            #expect(noBatch.text.contains("\\\"batch\\\""))
            var form = Self.sdkHeaders(gzip: false)
            form[.contentType] = "application/x-www-form-urlencoded"
            let wrongType = try await client.execute(
                uri: "/v1/track",
                method: .post,
                headers: form,
                body: buffer("event=x&userId=u")
            )
            #expect(wrongType.status == .unsupportedMediaType)
        }
        #expect(try gateway.storedEvents().map { $0["action"] } == [.string("ok")])
    }

    @Test func theGatewaysBodyAndBatchLimitsHold() async throws {
        let gateway = try await TestGateway.make(authentication: Self.authentication) {
            $0.maxBodyBytes = 4096
            $0.maxBatchEvents = 2
        }
        try await gateway.test { client in
            let message = #"{"type":"track","event":"x","userId":"u"}"#
            let three = try await client.execute(
                uri: "/v1/batch",
                method: .post,
                headers: Self.sdkHeaders(),
                body: try Self.body(#"{"batch":[\#(message),\#(message),\#(message)]}"#)
            )
            #expect(three.status == .contentTooLarge)
            // Small on the wire, over the limit inflated.
            let padding = String(repeating: " ", count: 8192)
            let inflated = try await client.execute(
                uri: "/v1/track",
                method: .post,
                headers: Self.sdkHeaders(),
                body: try Self.body(#"{"event":"x","userId":"u"\#(padding)}"#)
            )
            #expect(inflated.status == .contentTooLarge)
        }
        #expect(try gateway.storedEvents().isEmpty)
    }

    /// The SDKs retry 429 (after Retry-After) and drop other 4xx: a key over its event budget
    /// must get a 429 and have nothing stored.
    @Test func aKeyOverItsEventBudgetGets429AndNothingIsStored() async throws {
        var authentication = Self.authentication
        authentication.rateLimits = PrincipalRateLimits(
            defaults: [.secretKey: RateLimit(count: 2, windowSeconds: 3600)],
            cost: .events
        )
        let gateway = try await TestGateway.make(authentication: authentication)
        try await gateway.test { client in
            let message = #"{"type":"track","event":"x","userId":"u"}"#
            let response = try await client.execute(
                uri: "/v1/batch",
                method: .post,
                headers: Self.sdkHeaders(),
                body: try Self.body(#"{"batch":[\#(message),\#(message),\#(message)]}"#)
            )
            #expect(response.status == .tooManyRequests)
            #expect(response.headers[.retryAfter] != nil)
        }
        #expect(try gateway.storedEvents().isEmpty)
    }

    @Test func aPublishableKeyCannotClaimAnotherClientAddress() async throws {
        let gateway = try await TestGateway.make(authentication: Self.authentication)
        try await gateway.test { client in
            let response = try await client.execute(
                uri: "/v1/track",
                method: .post,
                headers: Self.sdkHeaders(key: Self.browserKey, gzip: false),
                body: buffer(#"{"event":"x","anonymousId":"a","context":{"ip":"198.51.100.9"}}"#)
            )
            #expect(response.status == .ok, "\(response.text)")
        }
        let event = try #require(try gateway.storedEvents().first)
        #expect(event["client_ip"] != .string("198.51.100.9"))
    }

    @Test func theBatchContextAndSentAtApplyToMessagesWithoutTheirOwn() async throws {
        let gateway = try await TestGateway.make(authentication: Self.authentication)
        try await gateway.test { client in
            let response = try await client.execute(
                uri: "/v1/batch",
                method: .post,
                headers: Self.sdkHeaders(),
                body: try Self.body(
                    """
                    {"batch":[
                      {"type":"track","event":"a","userId":"u"},
                      {"type":"track","event":"b","userId":"u","context":{"page":{"url":"https://own.example/"}},
                       "sentAt":"2026-01-01T00:00:00Z"}
                     ],
                     "context":{"page":{"url":"https://batch.example/"},"locale":"de-DE"},"sentAt":\(Timestamp.nowMillis())}
                    """
                )
            )
            #expect(response.status == .ok, "\(response.text)")
            let late = try await client.execute(
                uri: "/v1/batch",
                method: .post,
                headers: Self.sdkHeaders(),
                body: try Self.body(#"{"batch":[{"type":"track","event":"c","userId":"u"}],"sentAt":"soon"}"#)
            )
            #expect(late.status == .unprocessableContent)
            // The batch's sentAt is at the root of the body, not in the message.
            #expect(late.text.contains(#""pointer":"/sentAt""#), "\(late.text)")
        }
        let events = try gateway.storedEvents()
        try #require(events.count == 2)
        #expect(events[0]["page"] == .string("https://batch.example/"))
        #expect(events[0]["properties"]?["$segment"]?["context"]?["locale"] == .string("de-DE"))
        #expect(events[1]["page"] == .string("https://own.example/"))
        #expect(events[1]["sent_at"] == .string("2026-01-01T00:00:00.000Z"))
    }

    @Test(arguments: [
        ("Order Completed", "order_completed"), ("signed_up", "signed_up"), ("Signed Up!", "signed_up"),
        ("  Added to Cart  ", "added_to_cart"), ("404 Seen", "e_404_seen"), ("Checkout Step 2.b", "checkout_step_2.b"),
        ("Über-Ansicht", "ber-ansicht"),
    ])
    func eventNamesBecomeActions(_ name: String, _ action: String) {
        #expect(SegmentMapping.action(fromEventName: name) == action)
    }

    @Test func eventNamesWithoutALetterOrDigitAreRefused() {
        #expect(SegmentMapping.action(fromEventName: "!!!") == nil)
        #expect(SegmentMapping.action(fromEventName: "") == nil)
        let long = String(repeating: "Abc ", count: 40)
        let action = SegmentMapping.action(fromEventName: long)
        #expect(action.map { $0.utf8.count <= 64 && !$0.hasSuffix("_") } == true)
    }
}
