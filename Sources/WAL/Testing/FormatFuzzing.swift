/// The on-disk format's parsers as pure, total functions over bytes: the entry points for a
/// fuzz target. None does I/O or keeps state, and no input may make one trap.
@_spi(Testing)
public enum FormatFuzzing {
    /// Parses `bytes` as one frame from its first byte (header, length, payload checksum)
    /// and, for an intact data frame, its payload into events. Returns the events, an empty
    /// array for an intact footer, or nil when the bytes are not one whole intact frame.
    public static func parseFrame(_ bytes: UnsafeRawBufferPointer) -> [[UInt8]]? {
        guard case .frame(let header) = FrameHeader.parseFrame(bytes) else { return nil }
        let payload = UnsafeRawBufferPointer(
            rebasing: bytes[FrameHeader.size..<FrameHeader.size + Int(header.payloadLength)]
        )
        switch header.type {
        case .footer:
            return SegmentFooter.decode(payload: payload) == nil ? nil : []
        case .data:
            return EventPayload.decode(Array(payload), expectedCount: Int(header.eventCount))
        }
    }

    /// Parses `bytes` as a 64-byte segment header; returns its first LSN, or nil.
    public static func parseSegmentHeader(_ bytes: UnsafeRawBufferPointer) -> UInt64? {
        try? SegmentHeader.decode(bytes).get().firstLSN.rawValue
    }
}
