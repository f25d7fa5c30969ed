import Testing

@_spi(Testing) @testable import WAL

@Suite struct FormatTests {
    @Test func crc32cMatchesTheStandardCheckValue() {
        // The catalogue check value of CRC-32C (iSCSI) for "123456789".
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        let data = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let whole = CRC32C.checksum(data)
        let split = CRC32C.checksum(Array(data[300...]), seed: CRC32C.checksum(Array(data[..<300])))
        #expect(whole == split)
    }

    @Test func frameHeaderRoundTrips() throws {
        let header = FrameHeader(
            payloadLength: 123,
            payloadCRC: 0xDEAD_BEEF,
            lsn: LSN(42),
            timestampNanos: 1_700_000_000_000_000_000,
            eventCount: 3,
            type: .data
        )
        var bytes = [UInt8](repeating: 0, count: FrameHeader.size)
        bytes.withUnsafeMutableBytes { header.write(into: $0) }
        #expect(bytes.withUnsafeBytes { FrameHeader.decode($0) } == .frame(header))
        #expect(header.frameLength == 168)
        #expect(header.nextLSN == LSN(45))
    }

    @Test func aCorruptedLengthIsCaughtByTheHeaderChecksum() {
        let header = FrameHeader(
            payloadLength: 10,
            payloadCRC: 1,
            lsn: LSN(1),
            timestampNanos: 2,
            eventCount: 1,
            type: .data
        )
        var bytes = [UInt8](repeating: 0, count: FrameHeader.size)
        bytes.withUnsafeMutableBytes { header.write(into: $0) }
        bytes[5] ^= 0x01  // length byte
        #expect(bytes.withUnsafeBytes { FrameHeader.decode($0) } == .damaged("header checksum mismatch"))
        #expect([UInt8](repeating: 0, count: 40).withUnsafeBytes { FrameHeader.decode($0) } == .zeros)
    }

    @Test func segmentHeaderAndFooterRoundTrip() throws {
        let header = SegmentHeader(firstLSN: LSN(977), createdNanos: 5, writerID: 9)
        let decoded = try header.encoded().withUnsafeBytes { try SegmentHeader.decode($0).get() }
        #expect(decoded == header)
        var damaged = header.encoded()
        damaged[20] ^= 0xFF
        #expect(throws: WALError.self) { try damaged.withUnsafeBytes { try SegmentHeader.decode($0).get() } }

        let footer = SegmentFooter(
            recordCount: 3,
            firstLSN: LSN(1),
            nextLSN: LSN(9),
            minTimestampNanos: 1,
            maxTimestampNanos: 2,
            dataEnd: 4096
        )
        let frame = footer.encodedFrame()
        #expect(frame.count == SegmentFooter.frameLength)
        let payload = Array(frame[FrameHeader.size...])
        #expect(payload.withUnsafeBytes { SegmentFooter.decode(payload: $0) } == footer)
    }

    @Test func eventPayloadRoundTripsAndRejectsBadLengths() {
        let events: [[UInt8]] = [Array("a".utf8), [], Array("{\"x\":1}".utf8)]
        let payload = EventPayload.encode(events)
        #expect(EventPayload.decode(payload, expectedCount: 3) == events)
        #expect(EventPayload.decode(payload, expectedCount: 2) == nil)
        #expect(EventPayload.decode(Array(payload.dropLast()), expectedCount: 3) == nil)
    }

    @Test func segmentNamesSortByLSN() {
        #expect(SegmentName.make(LSN(977)) == "00000000000000000977.wal")
        #expect(SegmentName.parse("00000000000000000977.wal") == LSN(977))
        #expect(SegmentName.parse("977.wal") == nil)
        #expect(SegmentName.parse("wal.lock") == nil)
        #expect(SegmentName.make(LSN(UInt64.max)) == "18446744073709551615.wal")
    }
}

/// The fuzz entry points: a real frame parses back to its events, and no mangling of it traps.
@Suite struct FormatFuzzingTests {
    @Test func aFrameParsesBackAndNoSingleByteChangeOrTruncationTraps() {
        let events = [Array("one".utf8), Array("two".utf8)]
        let payload = EventPayload.encode(events)
        let header = FrameHeader(
            payloadLength: UInt32(payload.count),
            payloadCRC: CRC32C.checksum(payload),
            lsn: LSN(7),
            timestampNanos: 1,
            eventCount: 2,
            type: .data,
            writerTag: 9
        )
        var frame = [UInt8](repeating: 0, count: header.frameLength)
        frame.withUnsafeMutableBytes { header.write(into: $0) }
        frame.replaceSubrange(FrameHeader.size..<FrameHeader.size + payload.count, with: payload)
        #expect(frame.withUnsafeBytes { FormatFuzzing.parseFrame($0) } == events)
        for index in frame.indices {
            var mangled = frame
            mangled[index] ^= 0x5A
            _ = mangled.withUnsafeBytes { FormatFuzzing.parseFrame($0) }
            _ = frame[0..<index].withUnsafeBytes { FormatFuzzing.parseFrame($0) }
        }
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let noise = (0..<Int.random(in: 0..<200, using: &generator)).map { _ in UInt8.random(in: 0...255) }
            _ = noise.withUnsafeBytes { FormatFuzzing.parseFrame($0) }
            _ = noise.withUnsafeBytes { FormatFuzzing.parseSegmentHeader($0) }
        }
    }
}
