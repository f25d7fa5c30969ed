// The on-disk format. docs/wal.md describes it for people writing a second reader; keep the
// two in step. All integers are little-endian; every frame starts on an 8-byte boundary.

extension [UInt8] {
    @inline(__always)
    mutating func store<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        Swift.withUnsafeBytes(of: value.littleEndian) { source in
            for index in 0..<source.count { self[offset + index] = source[index] }
        }
    }
}

extension UnsafeRawBufferPointer {
    @inline(__always)
    func load<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        T(littleEndian: self.loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}

@inline(__always)
func alignedTo8(_ value: Int) -> Int { (value + 7) & ~7 }

/// The 64-byte header at the start of every segment file.
struct SegmentHeader: Equatable, Sendable {
    static let size = 64
    static let magic: [UInt8] = Array("SLUICEWS".utf8)
    static let currentVersion: UInt16 = 1

    var version: UInt16 = SegmentHeader.currentVersion
    var firstLSN: LSN
    var createdNanos: UInt64
    /// Random per writer instance: tells segments of different runs apart in dumps.
    var writerID: UInt64
    /// Reserved for compression (0 = none) and encryption (0 = none, key id).
    var codec: UInt8 = 0
    var cipher: UInt8 = 0
    var keyID: UInt32 = 0

    func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        for (index, byte) in Self.magic.enumerated() { bytes[index] = byte }
        bytes.store(self.version, at: 8)
        bytes.store(UInt16(0), at: 10)  // flags
        bytes.store(UInt16(Self.size), at: 12)
        bytes.store(self.firstLSN.rawValue, at: 16)
        bytes.store(self.createdNanos, at: 24)
        bytes.store(self.writerID, at: 32)
        bytes[48] = self.codec
        bytes[49] = self.cipher
        bytes.store(self.keyID, at: 52)
        bytes.store(CRC32C.checksum(Array(bytes[0..<60])), at: 60)
        return bytes
    }

    /// Parses a header, or explains why the bytes are not one.
    static func decode(_ bytes: UnsafeRawBufferPointer) -> Result<SegmentHeader, WALError> {
        guard bytes.count >= Self.size else {
            return .failure(WALError(.corruptSegment, "segment is shorter than its \(Self.size)-byte header"))
        }
        guard Array(bytes[0..<8]) == Self.magic else {
            return .failure(WALError(.corruptSegment, "not a Sluice WAL segment (bad magic)"))
        }
        let stored = bytes.load(UInt32.self, at: 60)
        guard CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[0..<60])) == stored else {
            return .failure(WALError(.corruptSegment, "segment header checksum mismatch"))
        }
        let version = bytes.load(UInt16.self, at: 8)
        guard version == Self.currentVersion else {
            return .failure(WALError(.corruptSegment, "unsupported segment version \(version)"))
        }
        return .success(
            SegmentHeader(
                version: version,
                firstLSN: LSN(bytes.load(UInt64.self, at: 16)),
                createdNanos: bytes.load(UInt64.self, at: 24),
                writerID: bytes.load(UInt64.self, at: 32),
                codec: bytes[48],
                cipher: bytes[49],
                keyID: bytes.load(UInt32.self, at: 52)
            )
        )
    }
}

/// The kinds of frame a segment holds.
enum FrameType: UInt8, Sendable {
    /// Events appended by clients.
    case data = 1
    /// The seal: the last frame of a finished segment, summarising it.
    case footer = 2
}

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

/// How the events of one data record are laid out in its payload: for each event, a
/// `u32` length followed by that many bytes. The WAL does not interpret event bytes.
public enum EventPayload {
    /// Encodes events into one record payload.
    public static func encode(_ events: [[UInt8]]) -> [UInt8] {
        var size = 0
        for event in events { size += 4 + event.count }
        var payload = [UInt8]()
        payload.reserveCapacity(size)
        for event in events {
            withUnsafeBytes(of: UInt32(event.count).littleEndian) { payload.append(contentsOf: $0) }
            payload.append(contentsOf: event)
        }
        return payload
    }

    /// Splits a payload back into its events; nil when the lengths do not add up.
    public static func decode(_ payload: [UInt8], expectedCount: Int) -> [[UInt8]]? {
        Self.decode(payload[...], expectedCount: expectedCount)
    }

    public static func decode(_ payload: ArraySlice<UInt8>, expectedCount: Int) -> [[UInt8]]? {
        var events: [[UInt8]] = []
        // Each event takes at least its 4-byte length: a count from a damaged (or fuzzed)
        // header cannot make this reserve more than the payload could hold.
        events.reserveCapacity(min(max(expectedCount, 0), payload.count / 4))
        var offset = 0
        let ok = payload.withUnsafeBytes { raw -> Bool in
            while offset < raw.count {
                guard offset + 4 <= raw.count else { return false }
                let length = Int(raw.load(UInt32.self, at: offset))
                offset += 4
                guard length <= raw.count - offset else { return false }
                events.append(Array(raw[offset..<offset + length]))
                offset += length
            }
            return true
        }
        guard ok, events.count == expectedCount else { return nil }
        return events
    }
}

/// One data record as read back from the WAL.
public struct WALRecord: Sendable, Equatable {
    /// LSN of the record's first event; event `i` is at `lsn + i`.
    public var lsn: LSN
    /// When the writer appended it (unix nanoseconds).
    public var timestampNanos: UInt64
    /// The events, in the order they were appended.
    public var events: [[UInt8]]
    /// Bytes the record occupies on disk, frame header and padding included.
    public var frameLength: Int
    /// The tag of the writer run that wrote it (0: written before tags existed).
    var writerTag: UInt16 = 0

    public var eventCount: Int { self.events.count }
    public var nextLSN: LSN { self.lsn + UInt64(self.events.count) }
}

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
