/// The request body formats the gateway accepts.
public enum BodyFormat: String, Sendable, CaseIterable {
    /// `application/json`: one object, or (batch) an array of objects.
    case json = "application/json"
    /// `application/x-ndjson`: one JSON object per line.
    case ndjson = "application/x-ndjson"
    /// `text/csv`: a header row naming the fields, then one event per row.
    case csv = "text/csv"
    /// `application/x-www-form-urlencoded`: one event's fields.
    case form = "application/x-www-form-urlencoded"
    /// `text/plain` holding JSON, as `navigator.sendBeacon` sends strings.
    case textJSON = "text/plain"

    /// The format for a `Content-Type` header value (parameters such as `charset` ignored).
    public init?(contentType: String?) {
        guard let contentType else { return nil }
        // What nearly every client sends, without splitting or lowercasing.
        if contentType == "application/json" {
            self = .json
            return
        }
        let type = contentType.split(separator: ";").first.map { String($0).lowercased() } ?? ""
        switch type.trimmingSpaces() {
        case "application/json": self = .json
        case "application/x-ndjson", "application/jsonl", "application/jsonlines", "application/json-seq":
            self = .ndjson
        case "text/csv": self = .csv
        case "application/x-www-form-urlencoded": self = .form
        case "text/plain": self = .textJSON
        default: return nil
        }
    }
}

/// One event's worth of input, before validation.
public enum DecodedItem: Sendable, Equatable {
    case json(JSONValue)
    case fields([Field])
    /// This item could not be read at all; the others still count.
    case unreadable(String)

    public struct Field: Sendable, Equatable {
        public var name: String
        public var value: String
        public init(_ name: String, _ value: String) {
            self.name = name
            self.value = value
        }
    }
}

/// The body as a whole cannot be read (answered with 400 and `detail`).
public struct BodyError: Error, Sendable, Equatable {
    public var detail: String
    public init(_ detail: String) { self.detail = detail }
}

/// Turns a request body into items, one per event.
public enum BodyDecoder {
    /// - Parameters:
    ///   - batch: whether the route takes several events (`/v1/events/batch`).
    ///   - maxEvents: more items than this is an error the caller maps to 413.
    /// A pure function of its arguments: the gateway's parser, and the entry point for fuzzing.
    /// A UTF-8 byte order mark at the very start of the body is skipped in every format
    /// (RFC 8259 §8.1 lets a parser ignore it; Excel's "CSV UTF-8" writes one); anywhere else
    /// it is data.
    ///
    /// - Throws: ``BodyError`` when the body as a whole is malformed.
    public static func decode(_ body: [UInt8], format: BodyFormat, batch: Bool) throws(BodyError) -> [DecodedItem] {
        // Copies only a body that has a BOM, which is rare.
        let body = body.starts(with: Self.byteOrderMark) ? Array(body.dropFirst(Self.byteOrderMark.count)) : body
        switch format {
        case .json, .textJSON:
            let value: JSONValue
            do {
                value = try JSONParser.parse(body)
            } catch {
                throw BodyError("the body is not valid JSON: \(error)")
            }
            if case .array(let elements) = value {
                guard batch else {
                    throw BodyError("this endpoint takes one event object; send arrays to /v1/events/batch")
                }
                return elements.map { .json($0) }
            }
            return [.json(value)]
        case .ndjson:
            var items: [DecodedItem] = []
            var firstError: String?
            for (number, line) in Self.lines(body) {
                if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
                do {
                    items.append(.json(try JSONParser.parse(line)))
                } catch {
                    let message = "line \(number): \(error.message) at column \(error.column)"
                    firstError = firstError ?? message
                    items.append(.unreadable(message))
                }
            }
            if let firstError, !items.contains(where: { if case .json = $0 { true } else { false } }) {
                throw BodyError("the body is not NDJSON: \(firstError)")
            }
            return items
        case .csv:
            return try Self.csv(body)
        case .form:
            return [.fields(try Self.form(body))]
        }
    }

    /// U+FEFF encoded in UTF-8.
    static let byteOrderMark: [UInt8] = [0xEF, 0xBB, 0xBF]

    /// Lines with their 1-based numbers.
    static func lines(_ body: [UInt8]) -> [(Int, ArraySlice<UInt8>)] {
        var result: [(Int, ArraySlice<UInt8>)] = []
        var start = 0
        var number = 1
        for index in body.indices where body[index] == 0x0A {
            result.append((number, body[start..<index]))
            start = index + 1
            number += 1
        }
        if start < body.count { result.append((number, body[start...])) }
        return result
    }

    /// RFC 4180 CSV with a header row, strictly: UTF-8 only, a quote only around a whole field,
    /// CR only in a quoted field or before LF. Rows whose column count differs from the
    /// header's are reported one by one; anything else wrong refuses the body, naming the line.
    static func csv(_ body: [UInt8]) throws(BodyError) -> [DecodedItem] {
        var rows: [(line: Int, cells: [String])] = []
        var cells: [String] = []
        var cell: [UInt8] = []
        var inQuotes = false
        // A quoted field has just closed: only a delimiter or the end of the line may follow.
        var afterQuote = false
        var line = 1
        var rowLine = 1
        var cellLine = 1
        var index = 0
        var cellStarted = false
        func endCell() throws(BodyError) {
            // Most cells are ASCII, which needs no validation and no repair.
            let ascii = cell.allSatisfy { $0 < 0x80 }
            guard let text = ascii ? String(decoding: cell, as: UTF8.self) : String(validating: cell, as: UTF8.self)
            else {
                throw BodyError(
                    "CSV line \(cellLine): field \(cells.count + 1) is not valid UTF-8; send CSV encoded as UTF-8"
                )
            }
            cells.append(text)
            cell.removeAll(keepingCapacity: true)
            cellStarted = false
            afterQuote = false
        }
        func endRow() throws(BodyError) {
            try endCell()
            if !(cells.count == 1 && cells[0].isEmpty) { rows.append((rowLine, cells)) }
            cells = []
        }
        while index < body.count {
            let byte = body[index]
            if inQuotes {
                if byte == 0x22 {
                    if index + 1 < body.count && body[index + 1] == 0x22 {
                        cell.append(0x22)
                        index += 1
                    } else {
                        inQuotes = false
                        afterQuote = true
                    }
                } else {
                    if byte == 0x0A { line += 1 }
                    cell.append(byte)
                }
            } else {
                switch byte {
                case 0x2C:
                    try endCell()
                    cellLine = line
                case 0x0A:
                    try endRow()
                    line += 1
                    rowLine = line
                    cellLine = line
                case 0x0D:
                    // CR belongs to a CRLF line ending (or ends the body); alone it is refused,
                    // not dropped: dropping it would store something other than what was sent.
                    if index + 1 == body.count || body[index + 1] == 0x0A { break }
                    if !body.contains(0x0A) {
                        throw BodyError("CSV uses CR-only line endings; use LF or CRLF")
                    }
                    throw BodyError(
                        "CSV line \(line): a carriage return (CR) in an unquoted field; quote the field, and end lines with LF or CRLF"
                    )
                case _ where afterQuote:
                    throw BodyError(
                        "CSV line \(line): text after the closing quote of a field; inside a quoted field, write a quote as \"\""
                    )
                case 0x22:
                    guard !cellStarted && cell.isEmpty else {
                        throw BodyError("CSV line \(line): a quote inside an unquoted field")
                    }
                    inQuotes = true
                    cellStarted = true
                default:
                    cell.append(byte)
                }
            }
            index += 1
        }
        if inQuotes { throw BodyError("CSV line \(rowLine): unterminated quoted field") }
        if !cell.isEmpty || !cells.isEmpty || cellStarted { try endRow() }
        guard let header = rows.first else { throw BodyError("CSV body has no header row") }
        let names = header.cells.map { $0.trimmingSpaces() }
        guard names.contains("action") || names.contains("user_id") else {
            throw BodyError(
                "CSV header row must name the fields (action, user_id, ...); found \(names.joined(separator: ","))"
            )
        }
        if let unnamed = names.firstIndex(where: \.isEmpty) {
            throw BodyError("CSV header row: column \(unnamed + 1) has no name")
        }
        return rows.dropFirst().map { row in
            guard row.cells.count == names.count else {
                return .unreadable("CSV line \(row.line): \(row.cells.count) fields, the header has \(names.count)")
            }
            return .fields(zip(names, row.cells).map { DecodedItem.Field($0, $1) })
        }
    }

    /// `application/x-www-form-urlencoded` (also query strings).
    public static func form(_ body: some Collection<UInt8>) throws(BodyError) -> [DecodedItem.Field] {
        var fields: [DecodedItem.Field] = []
        for pair in body.split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: true) {
            let parts = pair.split(separator: UInt8(ascii: "="), maxSplits: 1, omittingEmptySubsequences: false)
            let name = try Self.percentDecode(parts[0])
            let value = parts.count > 1 ? try Self.percentDecode(parts[1]) : ""
            fields.append(DecodedItem.Field(name, value))
        }
        return fields
    }

    static func percentDecode(_ bytes: some Collection<UInt8>) throws(BodyError) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var iterator = bytes.makeIterator()
        func hex(_ byte: UInt8?) -> UInt8? {
            switch byte {
            case .some(let b) where (0x30...0x39).contains(b): return b - 0x30
            case .some(let b) where (0x41...0x46).contains(b): return b - 0x41 + 10
            case .some(let b) where (0x61...0x66).contains(b): return b - 0x61 + 10
            default: return nil
            }
        }
        while let byte = iterator.next() {
            switch byte {
            case UInt8(ascii: "+"): out.append(0x20)
            case UInt8(ascii: "%"):
                guard let high = hex(iterator.next()), let low = hex(iterator.next()) else {
                    throw BodyError("malformed percent-encoding in form data")
                }
                out.append(high << 4 | low)
            default: out.append(byte)
            }
        }
        guard let text = String(validating: out, as: UTF8.self) else {
            throw BodyError("form data is not UTF-8")
        }
        return text
    }
}

extension String {
    /// The string cut to at most `maxBytes` bytes of UTF-8, at a character (scalar) boundary.
    public func truncatedUTF8(maxBytes: Int) -> String {
        guard self.utf8.count > maxBytes else { return self }
        var end = self.utf8.index(self.utf8.startIndex, offsetBy: maxBytes)
        // Back off continuation bytes (10xxxxxx) so no scalar is cut in two.
        while end > self.utf8.startIndex && self.utf8[end] & 0xC0 == 0x80 {
            end = self.utf8.index(before: end)
        }
        return String(self.utf8[..<end]) ?? ""
    }

    /// The string without leading and trailing spaces and tabs.
    public func trimmingSpaces() -> String {
        var scalars = Substring(self)
        while scalars.first == " " || scalars.first == "\t" { scalars.removeFirst() }
        while scalars.last == " " || scalars.last == "\t" { scalars.removeLast() }
        return String(scalars)
    }
}
