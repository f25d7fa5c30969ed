#if !FUZZING
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
        let bodies = directory + "/bodies"
        try FileManager.default.createDirectory(atPath: bodies, withIntermediateDirectories: true)
        for (index, body) in Self.bodies.enumerated() {
            let (format, batch, text) = body
            guard let selector = Harness.formats.firstIndex(where: { $0.0 == format && $0.batch == batch }) else {
                continue
            }
            let input = [UInt8(selector)] + Array(text.utf8)
            try Data(input).write(to: URL(fileURLWithPath: "\(bodies)/seed-\(index)"))
            written += 1
        }
        let segments = directory + "/segments"
        try FileManager.default.createDirectory(atPath: segments, withIntermediateDirectories: true)
        for (index, segment) in try await Self.segments().enumerated() {
            try Data(segment).write(to: URL(fileURLWithPath: "\(segments)/seed-\(index)"))
            written += 1
        }
        return written
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
        let wal = try await WAL.open(configuration, logger: logger)
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
