import Testing

@testable import EventModel

/// Key-count limits (linear work on objects with many keys) and the user agent bound.
@Suite struct EventLimitTests {
    static let origin = EventKeyRuleTests.origin

    static func errors(_ json: String) -> [FieldError] { EventKeyRuleTests.errors(json) }

    @Test func anEventObjectWithTooManyMembersIsOneErrorNamingTheLimit() {
        let keys = (0..<65_536).map { "\"k\($0)\":0" }.joined(separator: ",")
        let clock = ContinuousClock()
        var errors: [FieldError] = []
        let elapsed = clock.measure { errors = Self.errors(#"{"action":"a","user_id":"u","# + keys + "}") }
        #expect(errors.count == 1)
        #expect(errors.first?.pointer == "/0")
        #expect(errors.first?.limit == EventLimits().maxEventMembers)
        #expect(errors.first?.detail.contains("65538 members") == true)
        // Quadratic work over 64k keys took minutes; the linear check is milliseconds.
        #expect(elapsed < .seconds(5))
    }

    @Test func propertiesWithTooManyMembersAreRefusedBeforeAnyOtherWork() {
        let limit = EventLimits().maxPropertiesMembers
        func properties(_ count: Int) -> String {
            #"{"action":"a","user_id":"u","properties":{"# + (0..<count).map { "\"p\($0)\":0" }.joined(separator: ",")
                + "}}"
        }
        #expect(Self.errors(properties(limit)).isEmpty)
        let over = Self.errors(properties(limit + 1))
        #expect(over.map(\.pointer) == ["/0/properties"])
        #expect(over.first?.limit == limit)
        #expect(over.first?.detail == "has \(limit + 1) members; the limit is \(limit)")
        // 100k keys nested one level down: refused by the size limit, in linear time.
        let clock = ContinuousClock()
        let nested =
            #"{"action":"a","user_id":"u","properties":{"o":{"#
            + (0..<100_000).map { "\"n\($0)\":0" }
            .joined(separator: ",") + "}}}"
        var errors: [FieldError] = []
        let elapsed = clock.measure { errors = Self.errors(nested) }
        #expect(errors.map(\.pointer) == ["/0/properties"])
        #expect(elapsed < .seconds(5))
    }

    @Test func userAgentsAreCutAtACharacterBoundary() {
        #expect("abc".truncatedUTF8(maxBytes: 512) == "abc")
        #expect(String(repeating: "U", count: 7700).truncatedUTF8(maxBytes: 512).utf8.count == 512)
        // 'é' is two bytes: 511 'a' + 'é' would be 513, so the 'é' goes.
        let text = String(repeating: "a", count: 511) + "é"
        #expect(text.truncatedUTF8(maxBytes: 512) == String(repeating: "a", count: 511))
        #expect("😀😀".truncatedUTF8(maxBytes: 7) == "😀")
    }
}
