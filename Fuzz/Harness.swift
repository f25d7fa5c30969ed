import CCRC32C
import EventModel
@_spi(Testing) import WAL

#if canImport(Glibc)
import Glibc
#endif

/// The fuzzing harnesses: each takes one input of arbitrary bytes and runs it through code that
/// reads what clients or disks hand it, checking what must hold for any input. A failed check
/// ends the process (as a crash does), which is what the fuzzer reports; nothing here runs in
/// the product.
enum Harness: String, CaseIterable {
    /// The request body decoders and event validation. The first byte chooses the format and
    /// whether it is a batch; the rest is the body.
    case bodies
    /// The WAL's frame reader on one frame (`FormatFuzzing.parseFrame`: header, length,
    /// checksums, the payload split into events). When the first byte is odd, the harness
    /// first writes correct checksums into the frame, so that mutations reach the structure
    /// behind them instead of stopping at a checksum mismatch.
    case frames
    /// The WAL's segment reader, through `WALInspector` over an in-memory directory holding the
    /// input as its only segment: `verify` and `records(from:)`, as `wal verify` and `wal dump`
    /// run them on a damaged disk.
    case segments

    func run(_ input: UnsafeRawBufferPointer) {
        switch self {
        case .bodies: Self.body(Array(input))
        case .frames: Self.frame(Array(input))
        case .segments: Self.segment(Array(input))
        }
    }

    /// The formats each route takes (the gateway's `Ingest.singleFormats` and `batchFormats`).
    static let formats: [(BodyFormat, batch: Bool)] =
        [BodyFormat.json, .form, .textJSON].map { ($0, false) }
        + [BodyFormat.json, .ndjson, .csv, .textJSON].map { ($0, true) }

    /// The `Content-Encoding`s a body may arrive in: none, gzip, deflate.
    static let encodings: [ContentEncoding?] = [nil, .gzip, .deflate]

    /// The selector byte of a body input: the route's format and the content encoding.
    static func selector(format: BodyFormat, batch: Bool, encoding: ContentEncoding?) -> UInt8? {
        guard let formatIndex = Self.formats.firstIndex(where: { $0.0 == format && $0.batch == batch }),
            let encodingIndex = Self.encodings.firstIndex(of: encoding)
        else { return nil }
        return UInt8(formatIndex + Self.formats.count * encodingIndex)
    }

    static func body(_ input: [UInt8]) {
        guard let selector = input.first else { return }
        let (format, batch) = Self.formats[Int(selector) % Self.formats.count]
        var body = Array(input.dropFirst())
        if let encoding = Self.encodings[Int(selector) / Self.formats.count % Self.encodings.count] {
            let limit = 1 << 20
            do {
                body = try ContentDecoding.decode(body, encoding: encoding, maxBytes: limit)
            } catch {
                check(!error.detail.isEmpty, "a content decoding error without a detail")
                return
            }
            check(body.count <= limit, "decompressed \(body.count) bytes past a limit of \(limit)")
        }
        let items: [DecodedItem]
        do {
            items = try BodyDecoder.decode(body, format: format, batch: batch)
        } catch {
            check(!error.detail.isEmpty, "a body error without a detail")
            return
        }
        check(batch || items.count <= 1, "a single-event body decoded to \(items.count) items")
        let origin = RequestOrigin(
            receivedAtMillis: 1_764_460_800_000,
            clientIP: "192.0.2.1",
            userAgent: "fuzz",
            gatewayID: "fuzz"
        )
        for item in items {
            let result: Result<Event, EventErrors>
            switch item {
            case .json(let value):
                result = Event.validate(value, pointer: "", origin: origin, limits: EventLimits())
            case .fields(let fields):
                result = Event.validate(
                    fields: fields.map { ($0.name, $0.value) },
                    pointer: "",
                    origin: origin,
                    limits: EventLimits()
                )
            case .unreadable(let reason):
                check(!reason.isEmpty, "an unreadable item without a reason")
                continue
            }
            guard case .success(let event) = result else { continue }
            // What goes into the WAL, Kafka and ClickHouse must be one JSON object that says
            // what the client sent.
            let normalized = event.normalizedJSON(origin: origin)
            guard case .object = try? JSONParser.parse(normalized) else {
                fail("an accepted event normalized to something that is not a JSON object")
            }
            let parsed = try? JSONParser.parse(normalized)
            check(parsed?["event_id"] == .string(event.eventID), "event_id changed on the way to the WAL")
            check(parsed?["action"] == .string(event.action), "action changed on the way to the WAL")
            check(parsed?["user_id"] == event.userID.map(JSONValue.string), "user_id changed on the way to the WAL")
            check(
                parsed?["anonymous_id"] == event.anonymousID.map(JSONValue.string),
                "anonymous_id changed on the way to the WAL"
            )
        }
    }

    static func frame(_ input: [UInt8]) {
        guard let selector = input.first else { return }
        var frame = Array(input.dropFirst())
        if selector & 1 == 1 { Self.sealChecksums(&frame) }
        guard let events = frame.withUnsafeBytes({ FormatFuzzing.parseFrame($0) }) else { return }
        // An intact data frame's payload is exactly its events, each behind its length.
        let payloadLength = Int(Self.load(frame, at: 4))
        check(40 + payloadLength <= frame.count, "a frame parsed past the end of its bytes")
        if frame[36] == 1 {
            check(
                EventPayload.encode(events) == Array(frame[40..<40 + payloadLength]),
                "the events of a frame do not make up its payload"
            )
        } else {
            check(events.isEmpty, "a footer frame produced events")
        }
    }

    /// Writes the payload checksum (over the length the header states, where the bytes hold
    /// it) and then the header checksum, as the WAL's writer does.
    static func sealChecksums(_ frame: inout [UInt8]) {
        guard frame.count >= 40 else { return }
        let payloadLength = Int(Self.load(frame, at: 4))
        if payloadLength <= frame.count - 40 {
            let crc = frame.withUnsafeBytes { sluice_crc32c_extend(0, $0.baseAddress! + 40, payloadLength) }
            Self.store(crc, in: &frame, at: 12)
        }
        let header = frame.withUnsafeBytes { bytes in
            sluice_crc32c_extend(sluice_crc32c_extend(0, bytes.baseAddress!, 8), bytes.baseAddress! + 12, 28)
        }
        Self.store(header, in: &frame, at: 8)
    }

    static func load(_ bytes: [UInt8], at offset: Int) -> UInt32 {
        (0..<4).reduce(0) { $0 | UInt32(bytes[offset + $1]) << (8 * $1) }
    }

    static func store(_ value: UInt32, in bytes: inout [UInt8], at offset: Int) {
        for index in 0..<4 { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
    }

    static func segment(_ input: [UInt8]) {
        let directory = "/fuzz"
        let fileSystem = OneSegmentFileSystem(directory: directory, name: "00000000000000000000.wal", bytes: input)
        guard let inspector = try? WALInspector(directory: directory, fileSystem: fileSystem) else { return }
        let report = try? inspector.verify()
        var previous: LSN?
        var records: UInt64 = 0
        try? inspector.records(from: LSN(0)) { item in
            if case .record(let record, _, let offset) = item {
                check(offset >= 0 && Int(offset) + record.frameLength <= input.count, "a record outside the file")
                if let previous { check(record.lsn >= previous, "LSNs went backwards in one segment") }
                previous = record.nextLSN
                records += 1
            }
            return records < 100_000
        }
        if let report, report.isClean, report.segments == 1 {
            check(report.records == records, "verify counted \(report.records) records, dump read \(records)")
        }
    }

    static func check(_ condition: Bool, _ message: @autoclosure () -> String) {
        if !condition { fail(message()) }
    }

    static func fail(_ message: String) -> Never {
        writeError("sluice-fuzz: \(message)")
        abort()
    }
}

/// Writes a line to standard error (file descriptor 2: `stderr` is a C global Swift 6 will not
/// share between threads).
func writeError(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}
