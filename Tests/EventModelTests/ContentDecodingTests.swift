import Testing

@testable import EventModel

/// `ContentDecoding` is all or nothing: the whole stream, or an error.
@Suite struct ContentDecodingTests {
    /// Three NDJSON lines, 102 bytes, compressed by Python's zlib (gzip with mtime 0).
    static let text = Array(String(repeating: "{\"action\":\"click\",\"user_id\":\"u1\"}\n", count: 3).utf8)
    static let deflated: [UInt8] = [
        0xAB, 0x56, 0x4A, 0x4C, 0x2E, 0xC9, 0xCC, 0xCF, 0x53, 0xB2, 0x52, 0x4A, 0xCE, 0xC9, 0x4C, 0xCE, 0x56, 0xD2,
        0x51, 0x2A, 0x2D, 0x4E, 0x2D, 0x8A, 0xCF, 0x4C, 0x01, 0x8A, 0x94, 0x1A, 0x2A, 0xD5, 0x72, 0x55, 0x53, 0x41,
        0x05, 0x00,
    ]
    static let gzip: [UInt8] =
        [0x1F, 0x8B, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03] + deflated
        + [0x06, 0x69, 0xBF, 0x7F, 0x66, 0x00, 0x00, 0x00]
    static let zlib: [UInt8] = [0x78, 0x9C] + deflated + [0xA2, 0x87, 0x20, 0x56]

    static func decode(
        _ bytes: [UInt8],
        _ encoding: ContentEncoding,
        max: Int = 1 << 20
    ) -> Result<
        [UInt8], ContentDecodingError
    > {
        Result { () throws(ContentDecodingError) in try ContentDecoding.decode(bytes, encoding: encoding, maxBytes: max)
        }
    }

    @Test func completeStreamsDecode() throws {
        #expect(try Self.decode(Self.gzip, .gzip).get() == Self.text)
        #expect(try Self.decode(Self.zlib, .deflate).get() == Self.text)
        #expect(try Self.decode(Self.deflated, .deflate).get() == Self.text)
    }

    @Test func everyProperPrefixIsRefused() {
        for (body, encoding) in [(Self.gzip, ContentEncoding.gzip), (Self.zlib, .deflate), (Self.deflated, .deflate)] {
            for length in 0..<body.count {
                guard case .failure(let error) = Self.decode(Array(body.prefix(length)), encoding) else {
                    Issue.record("\(encoding): a prefix of \(length) of \(body.count) bytes decoded")
                    continue
                }
                #expect(error.reason == .malformed)
            }
        }
    }

    @Test func bytesAfterTheEndAreRefusedUnlessTheyAreAnotherGzipMember() throws {
        for (body, encoding) in [(Self.gzip, ContentEncoding.gzip), (Self.zlib, .deflate), (Self.deflated, .deflate)] {
            for tail: [UInt8] in [[0], [0x1F], Array("garbage".utf8), [0x1F, 0x8B]] {
                guard case .failure(let error) = Self.decode(body + tail, encoding) else {
                    Issue.record("\(encoding) with \(tail.count) trailing bytes decoded")
                    continue
                }
                #expect(error.reason == .malformed)
            }
        }
        #expect(try Self.decode(Self.gzip + Self.gzip + Self.gzip, .gzip).get() == Self.text + Self.text + Self.text)
        // zlib streams have no members: a second one is trailing data.
        #expect(throws: ContentDecodingError.self) { try Self.decode(Self.zlib + Self.zlib, .deflate).get() }
    }

    @Test func theLimitHoldsAcrossMembers() {
        let two = Self.decode(Self.gzip + Self.gzip, .gzip, max: Self.text.count * 2)
        #expect((try? two.get()) == Self.text + Self.text)
        guard case .failure(let error) = Self.decode(Self.gzip + Self.gzip, .gzip, max: Self.text.count * 2 - 1) else {
            Issue.record("one byte over the limit decoded")
            return
        }
        #expect(error.reason == .tooLarge)
        #expect(throws: ContentDecodingError.self) { try Self.decode(Self.gzip, .gzip, max: 0).get() }
    }

    @Test func aChecksumOrLengthThatDoesNotMatchIsRefused() {
        for index in [Self.gzip.count - 8, Self.gzip.count - 1] {
            var body = Self.gzip
            body[index] ^= 0x01
            #expect(throws: ContentDecodingError.self) { try Self.decode(body, .gzip).get() }
        }
        var zlib = Self.zlib
        zlib[zlib.count - 1] ^= 0x01
        #expect(throws: ContentDecodingError.self) { try Self.decode(zlib, .deflate).get() }
        // gzip sent as deflate and the other way round.
        #expect(throws: ContentDecodingError.self) { try Self.decode(Self.gzip, .deflate).get() }
        #expect(throws: ContentDecodingError.self) { try Self.decode(Self.zlib, .gzip).get() }
    }
}
