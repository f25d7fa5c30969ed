import Encryption

#if canImport(Glibc)
import Glibc
#endif

/// A read-only view of one segment file that walks its frames, detects damage and finds the
/// next valid frame after it. Opens the file `O_RDONLY` and takes no lock, so it is safe
/// beside a live writer.
struct SegmentReader {
    enum End: Equatable {
        /// A valid footer: the segment is sealed.
        case footer(SegmentFooter)
        /// Zeroed (preallocated, never written) space follows.
        case zeros
        case endOfFile
        /// The caller's byte limit (the durable end of an active segment).
        case limit
        /// Invalid bytes with no valid frame after them: a write cut short, never acknowledged.
        case tornTail(String)
    }

    enum Item: Equatable {
        case record(WALRecord)
        case damaged(Damage)
        case end(End)
    }

    static let windowSize = 1 << 20

    let path: String
    let name: String
    private let fd: Int32
    private let fileSystem: any WALFileSystem
    private(set) var fileSize: Int64
    /// Read-ahead storage, reused from read to read (a fresh megabyte each time was measured
    /// as page faults and malloc work in the forwarder's profile); `windowCount` bytes of it
    /// hold the file from `windowStart`.
    private var window: [UInt8] = []
    private var windowCount = 0
    private var windowStart: Int64 = 0
    /// The window serves bytes only before this offset: a window filled while the caller's
    /// limit (the durable end of a segment still being written) was lower also holds what lay
    /// past that limit then — zeros the writer may have filled since.
    private var windowTrustedEnd: Int64 = 0
    /// How far the current read may trust the file: the limit of the `next` call under way.
    private var readEnd: Int64 = .max
    private let maxPayload: Int
    /// Where the first frame starts: after the header, which is longer for an encrypted
    /// segment (or where it would start, when the header is damaged).
    private(set) var dataStart = Int64(SegmentHeader.size)
    /// The segment's data key, when its records are encrypted.
    private var cipher: RecordCipher?
    /// Why the encrypted records cannot be read (the key is not configured); thrown by
    /// ``next(at:expected:limit:)``, so that what needs no key (the footer) still reads.
    private var cipherError: WALError?

    /// - Parameter keyring: the `wal.encryption` keys, needed to read an encrypted segment's
    ///   records.
    init(path: String, fileSystem: any WALFileSystem, keyring: Keyring? = nil, maxPayload: Int = 512 << 20) throws {
        self.path = path
        self.name = String(path.split(separator: "/").last ?? Substring(path))
        self.fileSystem = fileSystem
        self.fd = try fileSystem.open(path, flags: O_RDONLY, mode: 0)
        self.maxPayload = maxPayload
        do {
            self.fileSize = try fileSystem.fileSize(self.fd, path: path)
        } catch {
            fileSystem.close(self.fd)
            throw error
        }
        // A damaged header is the scan's to report; frames are then looked for where an
        // unencrypted segment's start.
        if let header = try? self.header() {
            self.dataStart = Int64(header.dataStart)
            do {
                self.cipher = try RecordCipher.forSegment(header, keyring: keyring, name: self.name)
            } catch {
                self.cipherError = error
            }
        }
    }

    func close() { self.fileSystem.close(self.fd) }

    /// `count` bytes at `offset`, or fewer at end of file.
    mutating func bytes(at offset: Int64, count: Int) throws -> ArraySlice<UInt8> {
        let end = offset + Int64(count)
        if offset >= self.windowStart && end <= min(self.windowStart + Int64(self.windowCount), self.windowTrustedEnd) {
            let start = Int(offset - self.windowStart)
            return self.window[start..<start + count]
        }
        // No larger than what is left of the file: a short segment (a damaged one, a test's,
        // a fuzzer's input) needs no megabyte of zeroed memory.
        let size = max(count, min(Self.windowSize, Int(clamping: max(self.fileSize - offset, 0))))
        if self.window.count < size { self.window = [UInt8](repeating: 0, count: size) }
        self.windowCount = 0
        let (fileSystem, fd, path) = (self.fileSystem, self.fd, self.path)
        let read = try self.window.withUnsafeMutableBytes {
            let target = UnsafeMutableRawBufferPointer(rebasing: $0[0..<size])
            return try fileSystem.pread(fd, into: target, at: offset, path: path)
        }
        self.windowCount = read
        self.windowStart = offset
        self.windowTrustedEnd = min(offset + Int64(read), max(self.readEnd, end))
        return self.window[0..<min(count, read)]
    }

    func header() throws -> SegmentHeader {
        var bytes = [UInt8](repeating: 0, count: SegmentHeader.maximumSize)
        let count = try bytes.withUnsafeMutableBytes {
            try self.fileSystem.pread(self.fd, into: $0, at: 0, path: self.path)
        }
        return try bytes[0..<count].withUnsafeBytes { try SegmentHeader.decode($0).get() }
    }

    /// The footer at the very end of the file, if the segment is sealed.
    mutating func footer() throws -> SegmentFooter? {
        let length = Int64(SegmentFooter.frameLength)
        guard self.fileSize >= Int64(SegmentHeader.size) + length else { return nil }
        let offset = self.fileSize - length
        self.readEnd = self.fileSize
        let bytes = Array(try self.bytes(at: offset, count: Int(length)))
        guard bytes.count == Int(length) else { return nil }
        return bytes.withUnsafeBytes { raw -> SegmentFooter? in
            guard case .frame(let header) = FrameHeader.decode(UnsafeRawBufferPointer(rebasing: raw[0..<40])),
                header.type == .footer, Int(header.payloadLength) == SegmentFooter.payloadSize
            else { return nil }
            let payload = UnsafeRawBufferPointer(rebasing: raw[40...])
            guard CRC32C.checksum(payload) == header.payloadCRC,
                let footer = SegmentFooter.decode(payload: payload),
                footer.dataEnd == UInt64(offset)
            else { return nil }
            return footer
        }
    }

    /// Reads the frame at `offset`. Returns what is there and where the next read starts.
    ///
    /// - Parameters:
    ///   - expected: the LSN the next record should start at.
    ///   - limit: do not read at or past this offset (the durable end of an active segment).
    mutating func next(at offset: Int64, expected: LSN, limit: Int64? = nil) throws -> (Item, Int64) {
        if let error = self.cipherError { throw error }
        let end = min(limit ?? self.fileSize, self.fileSize)
        self.readEnd = end
        guard offset + Int64(FrameHeader.size) <= end else {
            return (.end(limit != nil && end == limit ? .limit : .endOfFile), offset)
        }
        let problem: String
        switch try self.frame(at: offset, end: end, minimumLSN: expected) {
        case .valid(let header, let payload):
            if header.type == .footer {
                if let footer = payload.withUnsafeBytes({ SegmentFooter.decode(payload: $0) }) {
                    return (.end(.footer(footer)), offset)
                }
                problem = "footer payload is malformed"
            } else if header.lsn > expected {
                // The frame is fine but events are missing before it: report the gap first.
                let damage = Damage(
                    segment: self.name,
                    startOffset: offset,
                    endOffset: offset,
                    firstLostLSN: expected,
                    resumeLSN: header.lsn,
                    reason: "LSN jumps from \(expected) to \(header.lsn)"
                )
                return (.damaged(damage), offset)
            } else {
                switch self.events(of: payload, header: header, at: offset) {
                case .events(let events):
                    let record = WALRecord(
                        lsn: header.lsn,
                        timestampNanos: header.timestampNanos,
                        events: events,
                        frameLength: header.frameLength,
                        writerTag: header.writerTag
                    )
                    return (.record(record), offset + Int64(header.frameLength))
                case .unauthentic(let damage):
                    // The frame is intact (its CRCs hold) but not what was sealed here: skip
                    // exactly it, whose length is trustworthy, and report its LSNs as lost.
                    return (.damaged(damage), offset + Int64(header.frameLength))
                case .malformed:
                    problem = "event lengths do not match the event count"
                }
            }
        case .zeros:
            guard let (resume, header) = try self.findFrame(after: offset, end: end, minimumLSN: expected) else {
                return (.end(.zeros), offset)
            }
            let damage = Damage(
                segment: self.name,
                startOffset: offset,
                endOffset: resume,
                firstLostLSN: expected,
                resumeLSN: header.lsn,
                reason: "zeroed bytes before a valid frame"
            )
            return (.damaged(damage), resume)
        case .behind(let header):
            // A torn write never leaves an intact frame; one whose LSNs the chain already
            // passed was written by a second writer appending at the same offsets.
            let damage = Damage(
                segment: self.name,
                startOffset: offset,
                endOffset: offset + Int64(header.frameLength),
                firstLostLSN: header.lsn,
                resumeLSN: header.nextLSN,
                reason:
                    "overwritten: an intact frame holds LSN \(header.lsn)...\(header.nextLSN.rawValue - 1) again, "
                    + "behind the expected \(expected); two writers appended to this segment at once, "
                    + "so these LSNs hold different events in different frames"
            )
            return (.damaged(damage), offset + Int64(header.frameLength))
        case .invalid(let reason):
            problem = reason
        }
        guard let (resume, header) = try self.findFrame(after: offset, end: end, minimumLSN: expected) else {
            return (.end(.tornTail(problem)), offset)
        }
        let damage = Damage(
            segment: self.name,
            startOffset: offset,
            endOffset: resume,
            firstLostLSN: expected,
            resumeLSN: header.lsn,
            reason: problem
        )
        return (.damaged(damage), resume)
    }

    private enum Events {
        case events([[UInt8]])
        case unauthentic(Damage)
        case malformed
    }

    /// A data frame's events, decrypted first when the segment is encrypted.
    private func events(of payload: ArraySlice<UInt8>, header: FrameHeader, at offset: Int64) -> Events {
        guard let cipher = self.cipher else {
            return EventPayload.decode(payload, expectedCount: Int(header.eventCount)).map(Events.events) ?? .malformed
        }
        guard let plain = cipher.open(payload, header: header) else {
            return .unauthentic(
                Damage(
                    segment: self.name,
                    startOffset: offset,
                    endOffset: offset + Int64(header.frameLength),
                    firstLostLSN: header.lsn,
                    resumeLSN: header.nextLSN,
                    reason:
                        "record fails authentication under key '\(cipher.keyID)': altered, moved from another "
                        + "position, or written under another key"
                )
            )
        }
        return EventPayload.decode(plain, expectedCount: Int(header.eventCount)).map(Events.events) ?? .malformed
    }

    private enum Frame {
        case valid(FrameHeader, ArraySlice<UInt8>)
        /// Intact (both checksums hold) but holding data LSNs below the expected one.
        case behind(FrameHeader)
        case zeros
        case invalid(String)
    }

    private mutating func frame(at offset: Int64, end: Int64, minimumLSN: LSN) throws -> Frame {
        let headerBytes = try self.bytes(at: offset, count: FrameHeader.size)
        guard headerBytes.count == FrameHeader.size else { return .invalid("truncated frame header") }
        let decoded = headerBytes.withUnsafeBytes { FrameHeader.decode($0) }
        switch decoded {
        case .zeros:
            return .zeros
        case .damaged(let reason):
            return .invalid(reason)
        case .frame(let header):
            guard Int(header.payloadLength) <= self.maxPayload,
                offset + Int64(header.frameLength) <= end
            else { return .invalid("frame length \(header.payloadLength) runs past the end of the data") }
            let frameBytes = try self.bytes(at: offset, count: FrameHeader.size + Int(header.payloadLength))
            switch frameBytes.withUnsafeBytes({ FrameHeader.parseFrame($0, maxPayload: self.maxPayload) }) {
            case .frame:
                break
            case .invalid(let reason):
                return .invalid(reason)
            case .zeros, .truncated:
                return .invalid("payload checksum mismatch")
            }
            let payload = frameBytes.dropFirst(FrameHeader.size)
            guard header.lsn >= minimumLSN else {
                if header.type == .data && header.eventCount > 0 { return .behind(header) }
                return .invalid("LSN \(header.lsn) is below the expected \(minimumLSN)")
            }
            return .valid(header, payload)
        }
    }

    /// The first fully valid frame after `offset` with an LSN of at least `minimumLSN`.
    private mutating func findFrame(after offset: Int64, end: Int64, minimumLSN: LSN) throws -> (Int64, FrameHeader)? {
        var candidate = offset + 8
        while candidate + Int64(FrameHeader.size) <= end {
            let chunk = try self.bytes(at: candidate, count: min(Self.windowSize, Int(end - candidate)))
            var hit: Int64? = nil
            chunk.withUnsafeBytes { raw in
                var index = 0
                while index + 4 <= raw.count {
                    if raw.load(UInt32.self, at: index) == FrameHeader.magic {
                        hit = candidate + Int64(index)
                        return
                    }
                    index += 8
                }
            }
            guard let position = hit else {
                candidate += Int64(chunk.count)
                if chunk.isEmpty { return nil }
                continue
            }
            if case .valid(let header, _) = try self.frame(at: position, end: end, minimumLSN: minimumLSN) {
                return (position, header)
            }
            candidate = position + 8
        }
        return nil
    }
}
