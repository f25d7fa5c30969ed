import Testing

@testable import EventModel

/// The body and event rules of the "Hardening" issue: a 2xx means the event is stored exactly
/// as sent, so everything ambiguous is refused with a message that names the cause.
@Suite struct BodyEncodingRuleTests {
    static let bom: [UInt8] = [0xEF, 0xBB, 0xBF]

    static func decode(_ bytes: [UInt8], _ format: BodyFormat, batch: Bool = true) throws(BodyError) -> [DecodedItem] {
        try BodyDecoder.decode(bytes, format: format, batch: batch)
    }

    static func detail(_ bytes: [UInt8], _ format: BodyFormat) -> String? {
        do {
            _ = try Self.decode(bytes, format)
            return nil
        } catch {
            return error.detail
        }
    }

    @Test func aLeadingByteOrderMarkIsSkippedInEveryFormat() throws {
        let event = DecodedItem.json(.object([("action", .string("a")), ("user_id", .string("u"))]))
        let json = Self.bom + Array(#"{"action":"a","user_id":"u"}"#.utf8)
        #expect(try Self.decode(json, .json, batch: false) == [event])
        #expect(try Self.decode(json, .textJSON, batch: false) == [event])
        #expect(try Self.decode(Self.bom + Array("[{\"action\":\"a\",\"user_id\":\"u\"}]".utf8), .json) == [event])
        #expect(try Self.decode(json + [0x0A] + json.dropFirst(3), .ndjson) == [event, event])
        let fields = DecodedItem.fields([.init("action", "a"), .init("user_id", "u")])
        #expect(try Self.decode(Self.bom + Array("action,user_id\r\na,u\r\n".utf8), .csv) == [fields])
        #expect(try Self.decode(Self.bom + Array("action=a&user_id=u".utf8), .form, batch: false) == [fields])
    }

    @Test func aByteOrderMarkElsewhereIsData() throws {
        let line = Array(#"{"action":"a","user_id":"u"}"#.utf8)
        let items = try Self.decode(line + [0x0A] + Self.bom + line, .ndjson)
        #expect(items.count == 2)
        guard case .unreadable(let reason) = items[1] else {
            Issue.record("line 2 starts with a BOM and must stay unreadable: \(items)")
            return
        }
        #expect(reason.hasPrefix("line 2:"))
        // Inside a CSV cell it is kept as the character U+FEFF.
        let csv = try Self.decode(Array("action,user_id\na,".utf8) + Self.bom + Array("u\n".utf8), .csv)
        #expect(csv == [.fields([.init("action", "a"), .init("user_id", "\u{FEFF}u")])])
    }

    @Test func csvThatIsNotUTF8IsRefusedNamingTheLine() {
        let latin1 = Array("action,user_id\nclick,ok\nclick,caf".utf8) + [0xE9] + Array("\n".utf8)
        #expect(Self.detail(latin1, .csv)?.contains("line 3") == true)
        #expect(Self.detail(latin1, .csv)?.contains("UTF-8") == true)
        // In a quoted cell spanning lines, and in the header.
        let quoted = Array("action,user_id,page\nclick,u,\"a\nb".utf8) + [0xFF] + Array("\"\n".utf8)
        #expect(Self.detail(quoted, .csv)?.contains("UTF-8") == true)
        let header = Array("action,user_".utf8) + [0xC3] + Array("\nclick,u\n".utf8)
        #expect(Self.detail(header, .csv)?.contains("line 1") == true)
    }

    @Test(arguments: [
        ("action,user_id\nclick,\"abc\"def\n", "line 2"),
        ("action,user_id\nclick,\"abc\" \n", "line 2"),
        ("action,user_id\nclick,a\rb\n", "line 2"),
        ("action,user_id\r\nclick,u\r\nclick,a\rb\r\n", "line 3"),
        ("action,user_id\rclick,u\r", "CR-only line endings"),
        ("action,,user_id\nclick,x,u\n", "column 2 has no name"),
        ("action,user_id, \nclick,u,x\n", "column 3 has no name"),
    ])
    func lenientCSVCornerCasesAreRefused(csv: String, expected: String) {
        let detail = Self.detail(Array(csv.utf8), .csv)
        #expect(detail?.contains(expected) == true, "\(detail ?? "accepted")")
    }

    @Test func csvLineEndingsThatStillWork() throws {
        let fields = DecodedItem.fields([.init("action", "a"), .init("user_id", "u\rv")])
        // CR inside a quoted field is data; CRLF ends a row; a closing quote may end the body.
        #expect(try Self.decode(Array("action,user_id\r\na,\"u\rv\"\r\n".utf8), .csv) == [fields])
        #expect(try Self.decode(Array("action,user_id\na,\"u\rv\"".utf8), .csv) == [fields])
        #expect(try Self.decode(Array("action,user_id\r\na,u\r".utf8), .csv).count == 1)
    }
}
