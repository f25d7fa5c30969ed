import Testing

@testable import WAL

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
