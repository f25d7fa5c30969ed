import EventModel
import WAL

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
    /// The WAL's segment reader, through `WALInspector` over an in-memory directory holding the
    /// input as its only segment: `verify` and `records(from:)`, as `wal verify` and `wal dump`
    /// run them on a damaged disk.
    case segments

    func run(_ input: UnsafeRawBufferPointer) {
        switch self {
        case .bodies: Self.body(Array(input))
        case .segments: Self.segment(Array(input))
        }
    }

    /// The formats each route takes (the gateway's `Ingest.singleFormats` and `batchFormats`).
    static let formats: [(BodyFormat, batch: Bool)] =
        [BodyFormat.json, .form, .textJSON].map { ($0, false) }
        + [BodyFormat.json, .ndjson, .csv, .textJSON].map { ($0, true) }

    static func body(_ input: [UInt8]) {
        guard let selector = input.first else { return }
        let (format, batch) = Self.formats[Int(selector) % Self.formats.count]
        let body = Array(input.dropFirst())
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
            check(parsed?["user_id"] == .string(event.userID), "user_id changed on the way to the WAL")
        }
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
