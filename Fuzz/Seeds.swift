#if !FUZZING
import CZlib
import EventModel
import Foundation
import Logging
import WAL

/// The seed corpus: inputs a fuzzer mutates from. Bodies in every format, and real segment
/// files written by the WAL itself (sealed ones with their footer, and the active one cut at
/// a record boundary), since random bytes would almost never pass a frame's checksums.
enum Seeds {
    static func write(to directory: String) async throws -> Int {
        var written = 0
        func write(_ inputs: [[UInt8]], to name: String) throws {
            let folder = directory + "/" + name
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            for (index, input) in inputs.enumerated() {
                try Data(input).write(to: URL(fileURLWithPath: "\(folder)/seed-\(index)"))
            }
            written += inputs.count
        }
        var bodies: [[UInt8]] = []
        for (format, batch, text) in Self.bodies {
            let plain = Array(text.utf8)
            for encoding in Harness.encodings {
                guard let selector = Harness.selector(format: format, batch: batch, encoding: encoding) else {
                    continue
                }
                let body: [UInt8]
                switch encoding {
                case nil: body = plain
                case .gzip: body = Self.gzip(plain)
                case .deflate: body = Self.zlib(plain)
                }
                bodies.append([selector] + body)
            }
        }
        try write(bodies, to: "bodies")
        let segments = try await Self.segments()
        try write(segments, to: "segments")
        // Each frame of the first sealed segment, as it is and for checksum fix-up.
        try write(Self.frames(in: segments[0]).prefix(32).flatMap { [[0] + $0, [1] + $0] }, to: "frames")
        return written
    }

    /// The frames of a segment file, from after its 64-byte header to the first zeros.
    static func frames(in segment: [UInt8]) -> [[UInt8]] {
        var frames: [[UInt8]] = []
        var offset = 64
        while offset + 40 <= segment.count {
            let length = Int(Harness.load(segment, at: offset + 4))
            guard length > 0 || segment[offset] != 0 else { break }
            let end = offset + ((40 + length + 7) & ~7)
            guard end <= segment.count else { break }
            frames.append(Array(segment[offset..<end]))
            offset = end
        }
        return frames
    }

    /// `bytes` in zlib's format (HTTP's `deflate`).
    static func zlib(_ bytes: [UInt8]) -> [UInt8] {
        var length = compressBound(uLong(bytes.count))
        var output = [UInt8](repeating: 0, count: Int(length))
        _ = compress2(&output, &length, bytes, uLong(bytes.count), Z_BEST_COMPRESSION)
        return Array(output.prefix(Int(length)))
    }

    /// `bytes` as one gzip member: zlib's deflate stream without its own framing, wrapped in
    /// RFC 1952's header and CRC-32/length trailer.
    static func gzip(_ bytes: [UInt8]) -> [UInt8] {
        let deflated = Self.zlib(bytes).dropFirst(2).dropLast(4)
        let crc = UInt32(crc32(0, bytes, uInt(bytes.count)))
        var member: [UInt8] = [0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 0xFF] + deflated
        for value in [crc, UInt32(truncatingIfNeeded: bytes.count)] {
            member += (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
        }
        return member
    }

    static let bodies: [(BodyFormat, Bool, String)] = [
        (.json, false, #"{"action":"click","user_id":"u1","object":"buy","properties":{"a":[1,2.5e3,null,true]}}"#),
        (.json, true, #"[{"action":"page_view","user_id":"u1","timestamp":"2026-11-30T12:00:00Z"},{"action":"c"}]"#),
        (.ndjson, true, "{\"action\":\"click\",\"user_id\":\"u\"}\n{\"action\":\"view\",\"user_id\":\"\\u00e9\"}\n"),
        (.csv, true, "action,user_id,object,properties.x\nclick,u1,\"a,\"\"b\",1\nview,u2,c,\n"),
        (.form, false, "action=click&user_id=u%20one&object=buy&properties.color=red&timestamp=1764504000000"),
        (.textJSON, false, #"{"action":"click","user_id":"u","event_id":"0190f0a0-0000-7000-8000-000000000001"}"#),
    ]

    /// Segment files as the WAL writes them, with 64 KiB segments so that a few hundred
    /// records seal several.
    static func segments() async throws -> [[UInt8]] {
        let directory = FileManager.default.temporaryDirectory.path + "/sluice-fuzz-seed-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = WALConfiguration(directory: directory)
        configuration.segmentBytes = 64 << 10
        configuration.budget = DiskBudget(maxBytes: 1 << 30, minFreeBytes: 0)
        var logger = Logger(label: "sluice.fuzz")
        logger.logLevel = .critical
        let wal = try await WAL.openAndStart(configuration, logger: logger)
        for index in 0..<1500 {
            let events = (0...(index % 4)).map { Array(#"{"action":"click","user_id":"u\#(index)-\#($0)"}"#.utf8) }
            _ = try await wal.append(events)
        }
        await wal.close()
        var segments: [[UInt8]] = []
        for name in try FileManager.default.contentsOfDirectory(atPath: directory).sorted() where name.hasSuffix(".wal")
        {
            guard let data = FileManager.default.contents(atPath: directory + "/" + name) else { continue }
            let bytes = [UInt8](data)
            segments.append(bytes)
            // The same segment cut short, as a crash mid-write leaves it.
            segments.append(Array(bytes.prefix(bytes.count / 3)))
        }
        return segments
    }
}
#endif
