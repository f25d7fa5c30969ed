import Testing

@testable import EventModel

/// Keys, ids and timestamps: what an event may hold so that every reader sees the same thing.
@Suite struct EventKeyRuleTests {
    static let origin = RequestOrigin(
        receivedAtMillis: 1_795_342_530_250,
        clientIP: nil,
        userAgent: nil,
        gatewayID: "gw-1"
    )

    static func errors(_ json: String) -> [FieldError] {
        let value = try! JSONParser.parse(Array(json.utf8))
        if case .failure(let failure) = Event.validate(value, pointer: "/0", origin: origin, limits: EventLimits()) {
            return failure.errors
        }
        return []
    }

    static func errors(fields: [(String, String)]) -> [FieldError] {
        if case .failure(let failure) = Event.validate(
            fields: fields,
            pointer: "",
            origin: origin,
            limits: EventLimits()
        ) {
            return failure.errors
        }
        return []
    }

    @Test func duplicateKeysInsidePropertiesAreRefusedAtEveryLevel() {
        #expect(
            Self.errors(#"{"action":"a","user_id":"u","properties":{"a":1,"a":2}}"#)
                == [FieldError(pointer: "/0/properties/a", detail: "appears more than once")]
        )
        #expect(
            Self.errors(#"{"action":"a","user_id":"u","properties":{"o":{"x":{"k":1,"j":2,"k":3}}}}"#).map(\.pointer)
                == ["/0/properties/o/x/k"]
        )
        #expect(
            Self.errors(#"{"action":"a","user_id":"u","properties":{"list":[{"a":1},{"b":1,"b":2}]}}"#).map(\.pointer)
                == ["/0/properties/list/1/b"]
        )
        // A big object takes the hashed path; the pointer escapes '/' and '~'.
        let many = (0..<40).map { "\"k\($0)\":0" }.joined(separator: ",")
        #expect(
            Self.errors(#"{"action":"a","user_id":"u","properties":{"# + many + #","a/b~":1,"a/b~":2}}"#)
                .map(\.pointer) == ["/0/properties/a~1b~0"]
        )
        // Keys are compared as written: precomposed and decomposed é are two keys.
        #expect(Self.errors(#"{"action":"a","user_id":"u","properties":{"\u00e9":1,"e\u0301":2}}"#).isEmpty)
    }

    @Test func flatFormatsRefuseAFieldThatNamesAPropertyTwice() {
        let plain = Self.errors(fields: [("action", "a"), ("user_id", "u"), ("x", "1"), ("properties.x", "2")])
        #expect(plain.map(\.pointer) == ["/properties/x"])
        let json = Self.errors(fields: [
            ("action", "a"), ("user_id", "u"), ("properties", #"{"a":1}"#), ("properties.a", "2"),
        ])
        #expect(json.map(\.pointer) == ["/properties/a"])
        let empty = Self.errors(fields: [("action", "a"), ("user_id", "u"), ("", "1")])
        #expect(empty.count == 1)
        #expect(empty.first?.detail.contains("no name") == true)
        let emptyProperty = Self.errors(fields: [("action", "a"), ("user_id", "u"), ("properties.", "1")])
        #expect(emptyProperty.first?.detail.contains("no name") == true)
    }

    @Test func theNilAndMaxUUIDsAreReserved() {
        for id in ["00000000-0000-0000-0000-000000000000", "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"] {
            let errors = Self.errors(#"{"action":"a","user_id":"u","event_id":"\#(id)"}"#)
            #expect(errors.map(\.pointer) == ["/0/event_id"])
            #expect(errors.first?.detail.contains("reserved") == true)
        }
    }

    @Test func epochMillisecondsInAStringAreATimestamp() throws {
        let value = try JSONParser.parse(Array(#"{"action":"a","user_id":"u","timestamp":"1795342530000"}"#.utf8))
        let event = try Event.validate(value, pointer: "", origin: Self.origin, limits: EventLimits()).get()
        #expect(event.timestampMillis == 1_795_342_530_000)
    }
}
