/// The fixed 40-byte header in front of every frame's payload.
///
/// ```
/// 0  magic u32 "WALR"   4 payload length u32   8 header CRC32C   12 payload CRC32C
/// 16 LSN u64            24 append time (unix ns) u64
/// 32 event count u32    36 type u8   37 flags u8   38 writer tag u16
/// ```
/// The header CRC covers bytes 0..<8 and 12..<40, so a damaged length is caught before it
/// is trusted; the magic lets a reader find the next frame after damage.
struct FrameHeader: Equatable, Sendable {
    static let size = 40
    static let magic: UInt32 = 0x524C_4157  // "WALR" in little-endian byte order

    var payloadLength: UInt32
    var payloadCRC: UInt32
    var lsn: LSN
    var timestampNanos: UInt64
    var eventCount: UInt32
    var type: FrameType
    var flags: UInt8 = 0
    /// Random per writer run (never 0, and never one already in the segment it appends to);
    /// 0 in frames written before tags existed. Two writers appending to one segment at once
    /// leave tags that come back after another: evidence of overwritten frames.
    var writerTag: UInt16 = 0

    /// Bytes the whole frame occupies, padding included.
    var frameLength: Int { alignedTo8(Self.size + Int(self.payloadLength)) }

    /// The LSN after this frame's events.
    var nextLSN: LSN { self.lsn + UInt64(self.eventCount) }

    func write(into buffer: UnsafeMutableRawBufferPointer) {
        buffer.storeBytes(of: Self.magic.littleEndian, toByteOffset: 0, as: UInt32.self)
        buffer.storeBytes(of: self.payloadLength.littleEndian, toByteOffset: 4, as: UInt32.self)
        buffer.storeBytes(of: self.payloadCRC.littleEndian, toByteOffset: 12, as: UInt32.self)
        buffer.storeBytes(of: self.lsn.rawValue.littleEndian, toByteOffset: 16, as: UInt64.self)
        buffer.storeBytes(of: self.timestampNanos.littleEndian, toByteOffset: 24, as: UInt64.self)
        buffer.storeBytes(of: self.eventCount.littleEndian, toByteOffset: 32, as: UInt32.self)
        buffer[36] = self.type.rawValue
        buffer[37] = self.flags
        buffer.storeBytes(of: self.writerTag.littleEndian, toByteOffset: 38, as: UInt16.self)
        let crc = Self.headerCRC(UnsafeRawBufferPointer(buffer))
        buffer.storeBytes(of: crc.littleEndian, toByteOffset: 8, as: UInt32.self)
    }

    static func headerCRC(_ header: UnsafeRawBufferPointer) -> UInt32 {
        let first = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: header[0..<8]))
        return CRC32C.checksum(UnsafeRawBufferPointer(rebasing: header[12..<40]), seed: first)
    }

    enum Decoded: Equatable {
        case frame(FrameHeader)
        /// 40 zero bytes: the preallocated, never-written part of a segment.
        case zeros
        case damaged(String)
    }

    static func decode(_ bytes: UnsafeRawBufferPointer) -> Decoded {
        precondition(bytes.count >= Self.size)
        let magic = bytes.load(UInt32.self, at: 0)
        if magic == 0 && bytes.load(UInt64.self, at: 0) == 0
            && (0..<Self.size).allSatisfy({ bytes[$0] == 0 })
        {
            return .zeros
        }
        guard magic == Self.magic else { return .damaged("bad frame magic") }
        guard headerCRC(bytes) == bytes.load(UInt32.self, at: 8) else { return .damaged("header checksum mismatch") }
        guard let type = FrameType(rawValue: bytes[36]) else { return .damaged("unknown frame type \(bytes[36])") }
        return .frame(
            FrameHeader(
                payloadLength: bytes.load(UInt32.self, at: 4),
                payloadCRC: bytes.load(UInt32.self, at: 12),
                lsn: LSN(bytes.load(UInt64.self, at: 16)),
                timestampNanos: bytes.load(UInt64.self, at: 24),
                eventCount: bytes.load(UInt32.self, at: 32),
                type: type,
                flags: bytes[37],
                writerTag: bytes.load(UInt16.self, at: 38)
            )
        )
    }
}
