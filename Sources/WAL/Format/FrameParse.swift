/// What the bytes at one frame position are.
enum FrameParse: Equatable {
    /// An intact frame: magic, header checksum, a length that fits, and payload checksum.
    case frame(FrameHeader)
    /// 40 zero bytes: preallocated, never-written space.
    case zeros
    /// Not a frame; the reason says why.
    case invalid(String)
    /// The header is intact but the frame is `needed` bytes long, more than were given.
    case truncated(needed: Int)
}

extension FrameHeader {
    /// Parses the frame at the start of `bytes`: header, length and payload checksum.
    ///
    /// Pure (no I/O, no state) and total: any bytes give an answer, never a trap, so it is
    /// the function to fuzz. ``SegmentReader`` reads through it; a data payload that parses
    /// here is split into events by ``EventPayload/decode(_:expectedCount:)``.
    static func parseFrame(_ bytes: UnsafeRawBufferPointer, maxPayload: Int = 512 << 20) -> FrameParse {
        guard bytes.count >= Self.size else { return .invalid("truncated frame header") }
        switch Self.decode(UnsafeRawBufferPointer(rebasing: bytes[0..<Self.size])) {
        case .zeros:
            return .zeros
        case .damaged(let reason):
            return .invalid(reason)
        case .frame(let header):
            guard Int(header.payloadLength) <= maxPayload else {
                return .invalid("frame length \(header.payloadLength) runs past the end of the data")
            }
            let end = Self.size + Int(header.payloadLength)
            guard end <= bytes.count else { return .truncated(needed: end) }
            guard CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[Self.size..<end])) == header.payloadCRC else {
                return .invalid("payload checksum mismatch")
            }
            return .frame(header)
        }
    }
}
