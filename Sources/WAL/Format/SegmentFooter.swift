/// The payload of a footer frame: what `wal ls` and start-up need to know about a sealed
/// segment without reading it.
struct SegmentFooter: Equatable, Sendable {
    static let payloadSize = 48
    /// A footer frame's full length; a sealed segment ends with exactly one.
    static let frameLength = FrameHeader.size + payloadSize

    var recordCount: UInt64
    var firstLSN: LSN
    var nextLSN: LSN
    var minTimestampNanos: UInt64
    var maxTimestampNanos: UInt64
    /// Offset where the footer frame starts: the end of the data frames.
    var dataEnd: UInt64

    func encodedFrame() -> [UInt8] {
        var payload = [UInt8](repeating: 0, count: Self.payloadSize)
        payload.store(self.recordCount, at: 0)
        payload.store(self.firstLSN.rawValue, at: 8)
        payload.store(self.nextLSN.rawValue, at: 16)
        payload.store(self.minTimestampNanos, at: 24)
        payload.store(self.maxTimestampNanos, at: 32)
        payload.store(self.dataEnd, at: 40)
        let header = FrameHeader(
            payloadLength: UInt32(Self.payloadSize),
            payloadCRC: CRC32C.checksum(payload),
            lsn: self.nextLSN,
            timestampNanos: self.maxTimestampNanos,
            eventCount: 0,
            type: .footer
        )
        var frame = [UInt8](repeating: 0, count: Self.frameLength)
        frame.withUnsafeMutableBytes { header.write(into: $0) }
        frame.replaceSubrange(FrameHeader.size..<Self.frameLength, with: payload)
        return frame
    }

    static func decode(payload: UnsafeRawBufferPointer) -> SegmentFooter? {
        guard payload.count == Self.payloadSize else { return nil }
        return SegmentFooter(
            recordCount: payload.load(UInt64.self, at: 0),
            firstLSN: LSN(payload.load(UInt64.self, at: 8)),
            nextLSN: LSN(payload.load(UInt64.self, at: 16)),
            minTimestampNanos: payload.load(UInt64.self, at: 24),
            maxTimestampNanos: payload.load(UInt64.self, at: 32),
            dataEnd: payload.load(UInt64.self, at: 40)
        )
    }
}
