import ClickHouse
import EventModel
import Testing

@testable import Loader

@Suite struct RouteTests {
    static let old = ClickHouseVersion(major: 18, minor: 16, patch: 1)
    static let new = ClickHouseVersion(major: 22, minor: 8, patch: 5)

    /// A column of every kind, with and without defaults.
    static let kinds = LoaderRoute(
        topic: "kinds",
        table: "test.kinds",
        columns: [
            LoaderColumn("id", .string, required: true),
            LoaderColumn("at", .timestamp, required: true),
            LoaderColumn("n", .int64),
            LoaderColumn("u", .uint64, defaultValue: "7"),
            LoaderColumn("f", .float64),
            LoaderColumn("doc", .json, defaultValue: "{}"),
            LoaderColumn("note", .string, defaultValue: "none"),
        ],
        dedupColumn: "id",
        timeColumn: "at"
    )

    static func encode(
        _ text: String,
        _ route: LoaderRoute = Self.kinds,
        _ format: InsertFormat = .rowBinary,
        on version: ClickHouseVersion = Self.old
    ) throws(LoaderError) -> [UInt8] {
        try RowEncoder(route: route, version: version, format: format).encode(Array(text.utf8)).row
    }

    static func reason(
        _ text: String,
        _ route: LoaderRoute = Self.kinds,
        _ format: InsertFormat = .rowBinary
    ) -> LoaderError? {
        self.reason(Array(text.utf8), route, format)
    }

    static func reason(
        _ bytes: [UInt8],
        _ route: LoaderRoute = Self.kinds,
        _ format: InsertFormat = .rowBinary
    )
        -> LoaderError?
    {
        do {
            _ = try RowEncoder(route: route, version: Self.old, format: format).encode(bytes)
            return nil
        } catch {
            return error
        }
    }

    /// RowBinary text: LEB128 length, then the bytes.
    static func text(_ value: String) -> [UInt8] {
        var bytes: [UInt8] = []
        var count = value.utf8.count
        while count >= 0x80 {
            bytes.append(UInt8(count & 0x7F) | 0x80)
            count >>= 7
        }
        return bytes + [UInt8(count)] + Array(value.utf8)
    }

    // MARK: - RowBinary

    @Test func everyKindInRowBinaryOnBothServers() throws {
        let event =
            #"{"id":"a\"b","at":"2026-11-22T10:15:30.250Z","n":-5,"u":"42","f":1.5,"doc":{"k":[1,true,null]},"extra":{"x":1}}"#
        let common: (before: [UInt8], after: [UInt8]) = (
            [0x03, 0x61, 0x22, 0x62],  // id: `a"b`, unescaped
            [0xFB, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]  // n: -5
                + [0x2A, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]  // u: "42" as text
                + [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xF8, 0x3F]  // f: 1.5
                + [0x13] + Array(#"{"k":[1,true,null]}"#.utf8)  // doc: the JSON text
                + [0x04] + Array("none".utf8)  // note: the default
        )
        // 18.16: DateTime, UInt32 seconds.
        #expect(try Self.encode(event, on: Self.old) == common.before + [0xC2, 0xC0, 0x02, 0x6B] + common.after)
        // 22.x: DateTime64(3), Int64 milliseconds.
        #expect(
            try Self.encode(event, on: Self.new)
                == common.before + [0xCA, 0xF6, 0xC0, 0x02, 0xA2, 0x01, 0x00, 0x00] + common.after
        )
    }

    @Test func absentAndNullFieldsTakeTheDefaultOrTheZero() throws {
        let expected: [UInt8] =
            [0x01, 0x78]  // id
            + [0xC2, 0xC0, 0x02, 0x6B]  // at, epoch milliseconds as a number
            + [UInt8](repeating: 0, count: 8)  // n: zero
            + [0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]  // u: default "7"
            + [UInt8](repeating: 0, count: 8)  // f: zero
            + [0x02, 0x7B, 0x7D]  // doc: default `{}` as is
            + [0x04] + Array("none".utf8)
        #expect(try Self.encode(#"{"id":"x","at":1795342530250}"#) == expected)
        #expect(
            try Self.encode(#"{"id":"x","at":1795342530250,"n":null,"u":null,"f":null,"doc":null,"note":null}"#)
                == expected
        )
        // A json column without a default, absent: empty text.
        let bare = LoaderRoute(
            topic: "t",
            table: "d.t",
            columns: [LoaderColumn("id", .string), LoaderColumn("j", .json), LoaderColumn("t", .timestamp)],
            dedupColumn: "id",
            timeColumn: "t"
        )
        #expect(try Self.encode("{}", bare) == [0x00, 0x00, 0x00, 0x00, 0x00, 0x00])
        #expect(
            try Self.encode("{}", bare, .jsonEachRow) == Array(#"{"id":"","j":"","t":"1970-01-01 00:00:00"}"#.utf8) + [
                0x0A
            ]
        )
    }

    @Test func requiredFieldsMustBeThereAndNotNull() {
        #expect(Self.reason(#"{"at":1795342530250}"#)?.description == "missing required field 'id'")
        #expect(Self.reason(#"{"id":null,"at":1795342530250}"#)?.code == .missingField)
        #expect(Self.reason(#"{"id":"x"}"#, Self.kinds, .jsonEachRow)?.field == "at")
    }

    @Test func numbersAsTextAndTextFromNumbers() throws {
        let row = try Self.encode(
            #"{"id":12.50,"at":"1795342530250","n":"-12","u":"+3","f":"2.5","note":true}"#
        )
        #expect(
            row
                == Self.text("12.50") + [0xC2, 0xC0, 0x02, 0x6B]
                + [0xF4, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
                + [0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]
                + [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x40]
                + [0x02, 0x7B, 0x7D] + Self.text("true")
        )
        let line = try Self.encode(
            #"{"id":12.50,"at":"1795342530250","n":"-12","u":"+3","f":"2.5","note":false}"#,
            Self.kinds,
            .jsonEachRow
        )
        #expect(
            String(decoding: line, as: UTF8.self)
                == #"{"id":"12.50","at":"2026-11-22 10:15:30","n":-12,"u":+3,"f":2.5,"doc":"{}","note":"false"}"#
                + "\n"
        )
    }

    @Test func valuesThatDoNotFitTheirColumnSayWhy() {
        let base = #""id":"x","at":1795342530250"#
        func reason(_ member: String) -> LoaderError? { Self.reason("{\(base),\(member)}") }
        #expect(reason(#""note":{"a":1}"#)?.description == "field 'note' is a object, expected text")
        #expect(reason(#""note":[1]"#)?.code == .wrongKind)
        #expect(reason(#""n":true"#)?.description == "field 'n' is a boolean, expected a number")
        #expect(reason(#""n":1.5"#)?.description == "field 'n' = 1.5 does not fit int64")
        #expect(reason(#""n":9223372036854775808"#)?.code == .outOfRange)
        #expect(reason(#""n":-9223372036854775809"#)?.code == .outOfRange)
        #expect(reason(#""u":"-1""#)?.description == "field 'u' = -1 does not fit uint64")
        #expect(reason(#""u":18446744073709551616"#)?.code == .outOfRange)
        #expect(reason(#""f":1e999"#)?.description == "field 'f' = 1e999 does not fit float64")
        #expect(reason(#""f":"nan""#)?.code == .outOfRange)
        #expect(
            Self.reason(#"{"id":"x","at":"yesterday"}"#)?.description
                == #"field 'at' is not a time between 1970 and 2100: "yesterday""#
        )
        #expect(Self.reason(#"{"id":"x","at":-1}"#)?.code == .outOfRange)
        #expect(Self.reason(#"{"id":"x","at":4102444800000}"#)?.code == .outOfRange)
        #expect(Self.reason(#"{"id":"x","at":true}"#)?.field == "at")
        #expect(Self.reason(#"{"id":"x","at":1.5e3}"#)?.code == .outOfRange)
        // The extremes that fit.
        #expect(throws: Never.self) {
            try Self.encode("{\(base),\"n\":-9223372036854775808,\"u\":18446744073709551615}")
        }
        // An invalid default fails the rows that need it, with the reason.
        let badDefault = LoaderRoute(
            topic: "t",
            table: "d.t",
            columns: [
                LoaderColumn("id", .string), LoaderColumn("t", .timestamp),
                LoaderColumn("n", .int64, defaultValue: "many"),
            ],
            dedupColumn: "id",
            timeColumn: "t"
        )
        #expect(Self.reason(#"{"t":0}"#, badDefault)?.description == "field 'n' = many does not fit int64")
        #expect(Self.reason(#"{"t":0,"n":2}"#, badDefault) == nil)
    }

    @Test func ourIntegerParsingIsSwiftsWithoutTheString() {
        let samples = [
            "0", "-0", "+0", "7", "-7", "+7", "", "-", "+", "--1", "1-", " 1", "1 ", "01", "1.0", "1e3", "0x10",
            "9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
            "18446744073709551615", "18446744073709551616", "99999999999999999999999", "١",
        ]
        for sample in samples {
            var text = sample
            text.withUTF8 { bytes in
                #expect(RowEncoder.int64(bytes) == Int64(sample), "\(sample)")
                #expect(RowEncoder.uint64(bytes) == UInt64(sample), "\(sample)")
            }
        }
    }

    @Test func longTextHasAMultiByteLength() throws {
        let long = String(repeating: "é", count: 100)  // 200 bytes
        let row = try Self.encode(#"{"id":"\#(long)","at":0}"#)
        #expect(Array(row.prefix(2)) == [0xC8, 0x01])
        #expect(Array(row[2..<202]) == Array(long.utf8))
    }

    @Test func escapesAndUnicodeInValues() throws {
        let event = #"{"id":"tab\there \"q\" back\\slash \/ \u00e9\ud83d\ude00 \u0001","at":0,"note":"héllo 😀"}"#
        let row = try Self.encode(event)
        let id = "tab\there \"q\" back\\slash / é😀 \u{01}"
        #expect(Array(row.prefix(id.utf8.count + 1)) == Self.text(id))
        #expect(Array(row.suffix("héllo 😀".utf8.count + 1)) == Self.text("héllo 😀"))
        // JSONEachRow writes the decoded text escaped again: what the old encoder wrote.
        let line = String(decoding: try Self.encode(event, Self.kinds, .jsonEachRow), as: UTF8.self)
        #expect(line.hasPrefix(#"{"id":"tab\there \"q\" back\\slash / é😀 \u0001","at":"1970-01-01 00:00:00""#))
        #expect(line.hasSuffix(#""note":"héllo 😀"}"# + "\n"))
    }

    @Test func escapedKeysStillMatchAndTheFirstOfTwoWins() throws {
        let row = try Self.encode(#"{"i\u0064":"first","at":0,"id":"second","n\u0000":5,"n":6}"#)
        #expect(Array(row.prefix(6)) == Self.text("first"))
        #expect(Array(row[10..<18]) == [0x06, 0, 0, 0, 0, 0, 0, 0])
        let reordered = try Self.encode(#"{"note":"z","n":6,"at":0,"id":"y"}"#)
        #expect(try reordered == Self.encode(#"{"id":"y","at":0,"n":6,"note":"z"}"#))
    }

    @Test func jsonColumnsKeepTheValuesText() throws {
        func doc(_ value: String, _ format: InsertFormat = .rowBinary) throws -> String {
            let row = try Self.encode(#"{"id":"","at":0,"doc":\#(value),"note":""}"#, Self.kinds, format)
            if format == .jsonEachRow {
                let line = String(decoding: row, as: UTF8.self)
                let start = line.firstRange(of: #""doc":"#)!.upperBound
                let end = line.firstRange(of: #","note""#)!.lowerBound
                return String(line[start..<end])
            }
            // id (1), at (4), n, u, f (24), then doc.
            return String(decoding: row[29..<row.count - 1].dropFirst(row[29] < 0x80 ? 1 : 2), as: UTF8.self)
        }
        #expect(try doc(#"{"a": [1, "x\"y"]}"#) == #"{"a": [1, "x\"y"]}"#)
        #expect(try doc("[]") == "[]")
        #expect(try doc("12.5e1") == "12.5e1")
        #expect(try doc(#""text""#) == #""text""#)
        #expect(try doc(#""{}""#) == "{}")  // the default, as text
        #expect(try doc(#""""#) == "")
        #expect(try doc("true") == "true")
        #expect(try doc(#"{"a": [1, "x\"y"]}"#, .jsonEachRow) == #""{\"a\": [1, \"x\\\"y\"]}""#)
        #expect(try doc(#""text""#, .jsonEachRow) == #""\"text\"""#)
        #expect(try doc(#""{}""#, .jsonEachRow) == #""{}""#)
    }

    // MARK: - JSONEachRow

    @Test func eventsBecomeJSONEachRowLinesWithTimesEachServerParses() throws {
        let event = Array(
            #"{"event_id":"e1","action":"click","user_id":"u\"1","timestamp":"2026-11-22T10:15:30.250Z","received_at":"2026-11-22T10:15:31.000Z","properties":{"a":[1,2]},"gateway_id":"gw","schema_version":1}"#
                .utf8
        )
        let oldRow = try RowEncoder(route: .events, version: Self.old, format: .jsonEachRow).encode(event)
        #expect(
            String(decoding: oldRow.row, as: UTF8.self)
                == #"{"event_id":"e1","action":"click","user_id":"u\"1","anonymous_id":"","timestamp":"2026-11-22 10:15:30","sent_at":"1970-01-01 00:00:00","received_at":"2026-11-22 10:15:31","page":"","object":"","referrer":"","session_id":"","properties":"{\"a\":[1,2]}","client_ip":"","user_agent":"","browser":"","os":"","device":"","is_bot":0,"gateway_id":"gw","source":"","schema_version":1,"wal_lsn":0}"#
                + "\n"
        )
        // The forwarder's `wal_lsn` header becomes the row's LSN, in both formats.
        let withHeader = try RowEncoder(route: .events, version: Self.old, format: .jsonEachRow)
            .encode(
                event,
                headers: [("content_type", Array("application/json".utf8)), ("wal_lsn", Array("4711".utf8))]
            )
        #expect(String(decoding: withHeader.row, as: UTF8.self).hasSuffix(#","wal_lsn":4711}"# + "\n"))
        let binary = try RowEncoder(route: .events, version: Self.old, format: .rowBinary)
            .encode(event, headers: [("wal_lsn", Array("4711".utf8))])
        #expect(Array(binary.row.suffix(8)) == [0x67, 0x12, 0, 0, 0, 0, 0, 0])
        // A header that is not a number is the message's fault, named as such.
        #expect(throws: LoaderError.self) {
            try RowEncoder(route: .events, version: Self.old, format: .rowBinary)
                .encode(event, headers: [("wal_lsn", Array("x1".utf8))])
        }
        #expect(oldRow.receivedAtMillis == 1_795_342_531_000)
        let newRow = try RowEncoder(route: .events, version: Self.new, format: .jsonEachRow).encode(event)
        #expect(String(decoding: newRow.row, as: UTF8.self).contains(#""timestamp":"2026-11-22 10:15:30.250""#))
        #expect(newRow.receivedAtMillis == 1_795_342_531_000)
    }

    @Test func aNormalizedEventInRowBinary() throws {
        let event = Array(
            #"{"event_id":"0190b5d2-0000-7000-8000-000000000001","action":"click","anonymous_id":"a1","timestamp":"2026-11-22T10:15:30.250Z","sent_at":"2026-11-22T10:15:30.250Z","received_at":"2026-11-22T10:15:31.000Z","page":"https://shop.example/p/1","properties":{"n":1},"client_ip":"203.0.113.9","browser":"Chrome","is_bot":true,"schema_version":2}"#
                .utf8
        )
        let row = try RowEncoder(route: .events, version: Self.new, format: .rowBinary).encode(event)
        let expected: [UInt8] =
            Self.text("0190b5d2-0000-7000-8000-000000000001") + Self.text("click") + Self.text("") + Self.text("a1")
            + [0xCA, 0xF6, 0xC0, 0x02, 0xA2, 0x01, 0x00, 0x00]  // timestamp, ms
            + [0xCA, 0xF6, 0xC0, 0x02, 0xA2, 0x01, 0x00, 0x00]  // sent_at, ms
            + [0xB8, 0xF9, 0xC0, 0x02, 0xA2, 0x01, 0x00, 0x00]  // received_at, ms
            + Self.text("https://shop.example/p/1") + Self.text("") + Self.text("") + Self.text("")
            + Self.text(#"{"n":1}"#) + Self.text("203.0.113.9") + Self.text("")
            + Self.text("Chrome") + Self.text("") + Self.text("") + [1]  // browser, os, device, is_bot
            + Self.text("") + Self.text("")
            + [0x02, 0, 0, 0, 0, 0, 0, 0]  // schema_version
            + [0, 0, 0, 0, 0, 0, 0, 0]  // wal_lsn: no header
        #expect(row.row == expected)
        #expect(row.receivedAtMillis == 1_795_342_531_000)
        // received_at is read for the delay metric even when no column takes it.
        let kinds = try RowEncoder(route: Self.kinds, version: Self.old, format: .rowBinary)
            .encode(Array(#"{"id":"x","at":0,"received_at":"2026-11-22T10:15:31Z"}"#.utf8))
        #expect(kinds.receivedAtMillis == 1_795_342_531_000)
        #expect(
            try RowEncoder(route: Self.kinds, version: Self.old, format: .rowBinary)
                .encode(Array(#"{"id":"x","at":0,"received_at":1795342531000}"#.utf8)).receivedAtMillis == nil
        )
    }

    // MARK: - Messages that are not one JSON object

    @Test func messagesThatAreNotJSONObjectsSayWhy() {
        func reason(_ text: String) -> String? { Self.reason(text)?.description }
        #expect(reason("not json") == "not JSON: invalid literal (expected null) at line 1, column 1")
        #expect(reason("<xml/>") == "not JSON: unexpected character '<' at line 1, column 1")
        #expect(reason("") == "not JSON: unexpected end of input at line 1, column 1")
        #expect(reason("  \n ") == "not JSON: unexpected end of input at line 2, column 2")
        #expect(reason("[1]") == "not a JSON object but a array")
        #expect(reason(#""text""#) == "not a JSON object but a string")
        #expect(reason("12") == "not a JSON object but a number")
        #expect(reason(" true ") == "not a JSON object but a boolean")
        #expect(reason("null") == "not a JSON object but a null")
        #expect(reason(#"[1,}"#)?.hasPrefix("not JSON") == true)
        #expect(
            reason(#"{"id":"x","at":0} {}"#) == "not JSON: unexpected data after the JSON value at line 1, column 19"
        )
        #expect(reason(#"{"id":"x","at":0,}"#) == "not JSON: expected a string key at line 1, column 18")
        #expect(reason(#"{"id" "x"}"#) == "not JSON: expected ':' after a key at line 1, column 7")
        #expect(reason(#"{id:1}"#)?.hasPrefix("not JSON: expected a string key") == true)
        #expect(reason(#"{"id":tru}"#)?.hasPrefix("not JSON: invalid literal (expected true)") == true)
        #expect(reason(#"{"id":01}"#) == "not JSON: expected ',' or '}' at line 1, column 8")
        #expect(reason(#"{"id":-}"#)?.hasPrefix("not JSON: invalid number") == true)
        #expect(reason(#"{"id":1.}"#)?.hasPrefix("not JSON: expected digits after '.'") == true)
        #expect(reason(#"{"id":1e}"#)?.hasPrefix("not JSON: expected digits in the exponent") == true)
        #expect(reason(#"{"a":{"b":[1,2}}"#)?.hasPrefix("not JSON: expected ',' or ']'") == true)
        #expect(reason(String(repeating: "[", count: 70))?.hasPrefix("not JSON") == true)
        let deep = #"{"a":"# + String(repeating: "[", count: 63) + String(repeating: "]", count: 63) + "}"
        #expect(Self.reason(deep, Self.kinds)?.code == .missingField)  // 64 levels: valid JSON
        let tooDeep = #"{"a":"# + String(repeating: "[", count: 64) + String(repeating: "]", count: 64) + "}"
        #expect(reason(tooDeep)?.hasPrefix("not JSON: nesting deeper than 64 levels") == true)
    }

    @Test func badStringsAreNotJSON() {
        func reason(_ bytes: [UInt8]) -> String? { Self.reason(bytes)?.description }
        let open = Array(#"{"id":""#.utf8)
        let close = Array(#"","at":0}"#.utf8)
        func string(_ middle: [UInt8]) -> String? { reason(open + middle + close) }
        // Invalid UTF-8: a stray continuation, an overlong form, a surrogate, beyond U+10FFFF,
        // a sequence cut short, a lead byte that cannot start one.
        for bad: [UInt8] in [
            [0x80], [0xC0, 0xAF], [0xE0, 0x80, 0xAF], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80],
            [0xE2, 0x82], [0xFF], [0xC3, 0x41],
        ] {
            #expect(string(Array("ok".utf8) + bad)?.hasPrefix("not JSON: invalid UTF-8 in a string") == true, "\(bad)")
        }
        #expect(string([0xC3, 0xA9, 0xF0, 0x9F, 0x98, 0x80, 0xEF, 0xBF, 0xBF]) == nil)  // é 😀 U+FFFF
        // Control characters must be escaped.
        #expect(string([0x61, 0x0A, 0x62]) == "not JSON: control character in a string at line 1, column 9")
        #expect(string([0x09])?.hasPrefix("not JSON: control character in a string") == true)
        #expect(string([0x00])?.hasPrefix("not JSON: control character in a string") == true)
        #expect(string([0x7F]) == nil)
        // Escapes.
        func escape(_ text: String) -> String? { string(Array(text.utf8)) }
        #expect(escape(#"\x"#) == #"not JSON: invalid escape '\x' at line 1, column 8"#)
        #expect(escape(#"\u12"#)?.hasPrefix("not JSON: invalid hex digit in \\u escape") == true)
        #expect(escape(#"\u12G4"#)?.hasPrefix("not JSON: invalid hex digit in \\u escape") == true)
        #expect(escape(#"\ud800"#)?.hasPrefix("not JSON: unpaired surrogate") == true)
        #expect(escape(#"\ud800\u0041"#)?.hasPrefix("not JSON: invalid low surrogate") == true)
        #expect(escape(#"\udc00"#)?.hasPrefix("not JSON: unpaired surrogate") == true)
        #expect(reason(Array(#"{"id":"ab\u00"#.utf8))?.hasPrefix("not JSON: incomplete \\u escape") == true)
        #expect(reason(Array(#"{"id":"ab\"#.utf8)) == "not JSON: unterminated string at line 1, column 7")
        #expect(reason(Array(#"{"id":"abc"#.utf8)) == "not JSON: unterminated string at line 1, column 7")
        // In keys and nested values as much as in the fields the route reads.
        #expect(reason(Array(#"{"i\qd":"x","at":0}"#.utf8))?.hasPrefix("not JSON: invalid escape") == true)
        #expect(
            reason(Array(#"{"id":"x","at":0,"other":{"k":[""#.utf8) + [0xFF] + Array(#""]}}"#.utf8))?.contains("UTF-8")
                == true
        )
    }

    /// Every prefix of a valid event is refused as not JSON, never a crash.
    @Test func truncatedMessagesAreNotJSON() {
        let event = Array(
            #" {"id":"a\"b\u00e9","at":"2026-11-22T10:15:30.250Z","n":-5e0,"doc":{"k":[1,true,null,{"x":"é"}]},"f":0.5} "#
                .utf8
        )
        #expect(Self.reason(event) != nil)  // n is not an integer …
        var valid = event
        valid.replaceSubrange(valid.firstRange(of: Array("-5e0".utf8))!, with: Array("-50".utf8))
        #expect(Self.reason(valid) == nil)  // … with it fixed, the whole event is valid
        for length in 0..<valid.count - 1 {
            let reason = Self.reason(Array(valid.prefix(length)))
            #expect(reason?.code == .notJSON, "prefix of \(length) bytes")
        }
    }

    /// The scanner agrees with ``JSONParser`` on what is JSON, and on each member's key, kind
    /// and text, for valid messages and thousands of mangled ones.
    @Test func theScannerAgreesWithTheParser() throws {
        let seeds = [
            #"{"event_id":"0190b5d2","action":"click","n":-12.5e-3,"t":true,"f":false,"z":null,"o":{"a":[1,{"b":"\u00e9\n"}]},"e":"","k\"ey":"v\\"}"#,
            #" { "a" : [ ] , "b" : { } , "c" : "x\ud83d\ude00y" , "d":0 } "#,
            "{\"é\":\"日本\",\"x\":[\"\\/\",1e5,-0.0]}",
            #" [1,"a\u0041",{"b":null},true,-0.5E+2] "#,
        ].map { Array($0.utf8) }
        var random = SplitMix64(seed: 20_261_122)
        var outcomes: [String: Int] = [:]
        let alphabet = Array(#"{}[]":,\ u0aé"#.utf8) + [0x00, 0x0A, 0x80, 0xC3, 0xED, 0xFF]
        for seed in seeds {
            for round in 0..<3000 {
                var message = seed
                for _ in 0...(round % 3) {
                    let position = Int(random.next() % UInt64(message.count + 1))
                    switch random.next() % 3 {
                    case 0 where !message.isEmpty && position < message.count: message.remove(at: position)
                    case 1: message.insert(alphabet[Int(random.next() % UInt64(alphabet.count))], at: position)
                    default:
                        if position < message.count {
                            message[position] = alphabet[Int(random.next() % UInt64(alphabet.count))]
                        }
                    }
                }
                outcomes[try Self.compareWithParser(round == 0 ? seed : message), default: 0] += 1
            }
        }
        // Each outcome often enough that the comparison means something.
        #expect(outcomes.values.reduce(0, +) == 12000)
        #expect(outcomes["object", default: 0] > 500, "\(outcomes)")
        #expect(outcomes["other", default: 0] > 20, "\(outcomes)")
        #expect(outcomes["syntax", default: 0] > 3000, "\(outcomes)")
    }

    /// Which of object, other value or syntax error both found (records an issue if they differ).
    static func compareWithParser(_ message: [UInt8]) throws -> String {
        var scanner = MessageScanner()
        let scanned = message.withUnsafeBufferPointer { buffer -> Result<Void, MessageScanner.Failure> in
            do throws(MessageScanner.Failure) {
                try scanner.scan(buffer)
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        let parsed = try? JSONParser.parse(message)
        let text = String(decoding: message, as: UTF8.self)
        switch (parsed, scanned) {
        case (.object(let members)?, .success):
            #expect(members.count == scanner.members.count, "\(text)")
            for (member, found) in zip(members, scanner.members) {
                var key: [UInt8] = []
                message.withUnsafeBufferPointer {
                    MessageScanner.unescape(UnsafeBufferPointer(rebasing: $0[found.key]), into: &key)
                }
                #expect(String(decoding: key, as: UTF8.self) == member.0, "\(text)")
                #expect(found.kind.name == member.1.typeName, "\(text)")
                #expect(try JSONParser.parse(Array(message[found.value])) == member.1, "\(text)")
            }
            return "object"
        case (let other?, .failure(.notAnObject(let kind))):
            #expect(kind.name == other.typeName, "\(text)")
            return "other"
        case (nil, .failure(.syntax)):
            return "syntax"
        default:
            Issue.record("parser: \(String(describing: parsed)), scanner: \(scanned), for \(text)")
            return "disagreement"
        }
    }

    // MARK: - Routes and tables

    @Test func insertsNameTheirColumnsAndFormat() {
        #expect(
            Self.kinds.insertPrefix(.rowBinary)
                == "INSERT INTO test.kinds (`id`, `at`, `n`, `u`, `f`, `doc`, `note`) FORMAT RowBinary"
        )
        #expect(Self.kinds.insertPrefix(.jsonEachRow).hasSuffix(") FORMAT JSONEachRow"))
        #expect(InsertFormat(name: "rowbinary") == .rowBinary)
        #expect(InsertFormat(name: "JSONEachRow") == .jsonEachRow)
        #expect(InsertFormat(name: "CSV") == nil)
    }

    @Test func rowBinaryNeedsTheRoutesExactTypes() {
        func columns(_ pairs: [(String, String)]) -> String {
            pairs.map { #"{"name":"\#($0.0)","type":"\#($0.1)"}"# }.joined(separator: "\n") + "\n"
        }
        let old: [(String, String)] = [
            ("id", "String"), ("at", "DateTime('UTC')"), ("n", "Int64"), ("u", "UInt64"), ("f", "Float64"),
            ("doc", "String"), ("note", "String"), ("extra", "UInt8"),
        ]
        #expect(Self.kinds.rowBinaryMismatch(tableColumns: columns(old), on: Self.old) == nil)
        #expect(
            Self.kinds.rowBinaryMismatch(tableColumns: columns(old), on: Self.new)
                == "column 'at' is DateTime('UTC'), the route writes DateTime64(3, 'UTC')"
        )
        var new = old
        new[1].1 = "DateTime64(3, 'UTC')"
        #expect(Self.kinds.rowBinaryMismatch(tableColumns: columns(new), on: Self.new) == nil)
        var narrow = old
        narrow[2].1 = "UInt32"
        #expect(
            Self.kinds.rowBinaryMismatch(tableColumns: columns(narrow), on: Self.old)
                == "column 'n' is UInt32, the route writes Int64"
        )
        #expect(
            Self.kinds.rowBinaryMismatch(tableColumns: columns(Array(old.dropLast(2))), on: Self.old)
                == "the table has no column 'note'"
        )
        #expect(Self.kinds.rowBinaryMismatch(tableColumns: "", on: Self.old) == "the table has no column 'id'")
        #expect(Self.kinds.rowBinaryMismatch(tableColumns: "garbage\n", on: Self.old)?.hasPrefix("cannot read") == true)
        #expect(
            Self.kinds.tableColumnsQuery
                == "SELECT name, type FROM system.columns WHERE database = 'test' AND table = 'kinds' FORMAT JSONEachRow"
        )
    }

    @Test func tablesAreCreatedWithWhatTheServerHas() {
        let old = LoaderRoute.events.createTable(on: Self.old)
        #expect(old.contains("`timestamp` DateTime('UTC')"))
        #expect(old.contains("ENGINE = ReplacingMergeTree()"))
        #expect(old.contains("ORDER BY (`action`, toDate(`timestamp`), `object`, `event_id`)"))
        #expect(!old.contains("SETTINGS"))
        let new = LoaderRoute.events.createTable(on: Self.new)
        #expect(new.contains("`timestamp` DateTime64(3, 'UTC')"))
        #expect(new.contains("non_replicated_deduplication_window"))
    }

    @Test func badRoutesAreRefusedWithAReason() throws {
        func problem(_ route: LoaderRoute) -> LoaderError? {
            do {
                try route.validate()
                return nil
            } catch {
                return error
            }
        }
        var route = LoaderRoute.events
        try route.validate()
        route.table = "events"
        #expect(problem(route)?.message == "table 'events' must be database.table")
        #expect(problem(route)?.code == .invalidRoute)
        route = .events
        route.timeColumn = "page"
        #expect(problem(route)?.description.contains("time column") == true)
        route = .events
        route.orderBy = ["action"]
        #expect(problem(route)?.description.contains("dedup column") == true)
        route = .events
        route.table = "sluice.x; DROP TABLE y"
        #expect(problem(route) != nil)
        route = .events
        route.columns.append(LoaderColumn("at", .timestamp, header: "at"))
        #expect(problem(route)?.message == "column 'at' reads header 'at': only string, int64 and uint64 columns can")
        route = .events
        route.columns.append(LoaderColumn("key", .string, required: true, header: "k"))
        #expect(problem(route)?.message.contains("cannot be required") == true)
    }

    @Test func badSettingsAreRefusedWithAReason() throws {
        var configuration = LoaderConfiguration(kafkaProperties: [:], clickHouse: .init(url: "http://127.0.0.1:1"))
        try configuration.validate()
        configuration.routes = [.events, .events]
        #expect(throws: LoaderError.self) { try configuration.validate() }
        do {
            try configuration.validate()
        } catch {
            #expect(error.code == .invalidConfiguration)
            #expect(error.description == "two routes read the same topic")
        }
        configuration.routes = [.events]
        configuration.batchBytes = 100
        #expect(throws: LoaderError.self) { try configuration.validate() }
        var broken = LoaderRoute.events
        broken.table = "events"
        configuration = LoaderConfiguration(kafkaProperties: [:], clickHouse: .init(url: "http://127.0.0.1:1"))
        configuration.routes = [broken]
        do {
            try configuration.validate()
            Issue.record("a route that cannot work was accepted")
        } catch {
            #expect(error.code == .invalidRoute)
        }
    }
}

/// A small seeded generator: the same mangled messages on every run.
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { self.state = seed }
    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
