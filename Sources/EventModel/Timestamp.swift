import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// RFC 3339 timestamps to and from unix milliseconds, without Foundation's formatters (they
/// are slow, and this runs for every event).
public enum Timestamp {
    /// 2100-01-01T00:00:00Z: the end of the times stored (a ClickHouse `DateTime` ends in 2106).
    public static let maxStoredMillis: Int64 = 4_102_444_800_000

    /// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `t`, `z` and a space separator are
    /// accepted too. Fractions beyond milliseconds are truncated.
    public static func parse(_ text: String) -> Int64? {
        var text = text
        return text.withUTF8 { Self.parse($0) }
    }

    /// ``parse(_:)-(String)`` over UTF-8 bytes, for callers that have them (no copy).
    public static func parse(_ bytes: UnsafeBufferPointer<UInt8>) -> Int64? {
        guard bytes.count >= 20 else { return nil }
        func number(_ from: Int, _ count: Int) -> Int? {
            guard from + count <= bytes.count else { return nil }
            var value = 0
            for byte in bytes[from..<from + count] {
                guard (0x30...0x39).contains(byte) else { return nil }
                value = value * 10 + Int(byte - 0x30)
            }
            return value
        }
        guard let year = number(0, 4), bytes[4] == 0x2D, let month = number(5, 2), bytes[7] == 0x2D,
            let day = number(8, 2), bytes[10] == 0x54 || bytes[10] == 0x74 || bytes[10] == 0x20,
            let hour = number(11, 2),
            bytes[13] == 0x3A, let minute = number(14, 2), bytes[16] == 0x3A, let second = number(17, 2),
            (1...12).contains(month), (1...daysIn(month: month, year: year)).contains(day), hour < 24, minute < 60,
            second <= 60
        else { return nil }
        var index = 19
        var millis = 0
        if index < bytes.count && bytes[index] == 0x2E {
            index += 1
            var digits = 0
            while index < bytes.count, (0x30...0x39).contains(bytes[index]) {
                if digits < 3 { millis = millis * 10 + Int(bytes[index] - 0x30) }
                digits += 1
                index += 1
            }
            guard digits > 0 else { return nil }
            for _ in digits..<max(digits, 3) { millis *= 10 }
        }
        guard index < bytes.count else { return nil }
        var offsetMinutes = 0
        switch bytes[index] {
        case 0x5A, 0x7A:
            index += 1
        case 0x2B, 0x2D:
            guard let offsetHour = number(index + 1, 2), bytes.count > index + 3, bytes[index + 3] == 0x3A,
                let offsetMinute = number(index + 4, 2), offsetHour < 24, offsetMinute < 60
            else { return nil }
            offsetMinutes = (offsetHour * 60 + offsetMinute) * (bytes[index] == 0x2D ? -1 : 1)
            index += 6
        default:
            return nil
        }
        guard index == bytes.count else { return nil }
        let days = daysFromCivil(year: year, month: month, day: day)
        let seconds =
            Int64(days) * 86_400 + Int64(hour * 3600 + minute * 60 + min(second, 59))
            - Int64(offsetMinutes * 60)
        return seconds * 1000 + Int64(millis)
    }

    /// `2026-11-22T10:15:30.250Z`.
    public static func format(millis: Int64) -> String {
        let seconds = millis >= 0 ? millis / 1000 : (millis - 999) / 1000
        let fraction = Int(millis - seconds * 1000)
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let secondOfDay = Int(seconds - days * 86_400)
        let (year, month, day) = civilFromDays(Int(days))
        if (0...9999).contains(year) {
            // The common case, written straight into the string's storage: this runs for every
            // event (timestamp, received_at) and every log line.
            return String(unsafeUninitializedCapacity: 24) { buffer in
                func put(_ value: Int, _ width: Int, at start: Int) {
                    var value = value
                    for index in stride(from: start + width - 1, through: start, by: -1) {
                        buffer[index] = 0x30 + UInt8(value % 10)
                        value /= 10
                    }
                }
                put(year, 4, at: 0)
                buffer[4] = UInt8(ascii: "-")
                put(month, 2, at: 5)
                buffer[7] = UInt8(ascii: "-")
                put(day, 2, at: 8)
                buffer[10] = UInt8(ascii: "T")
                put(secondOfDay / 3600, 2, at: 11)
                buffer[13] = UInt8(ascii: ":")
                put(secondOfDay / 60 % 60, 2, at: 14)
                buffer[16] = UInt8(ascii: ":")
                put(secondOfDay % 60, 2, at: 17)
                buffer[19] = UInt8(ascii: ".")
                put(fraction, 3, at: 20)
                buffer[23] = UInt8(ascii: "Z")
                return 24
            }
        }
        var text = ""
        text.reserveCapacity(24)
        func pad(_ value: Int, _ width: Int) {
            let digits = String(value)
            text += String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        pad(year, 4)
        text += "-"
        pad(month, 2)
        text += "-"
        pad(day, 2)
        text += "T"
        pad(secondOfDay / 3600, 2)
        text += ":"
        pad(secondOfDay / 60 % 60, 2)
        text += ":"
        pad(secondOfDay % 60, 2)
        text += "."
        pad(fraction, 3)
        text += "Z"
        return text
    }

    /// Now, in unix milliseconds.
    public static func nowMillis() -> Int64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Int64(spec.tv_sec) * 1000 + Int64(spec.tv_nsec) / 1_000_000
    }

    static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    // Howard Hinnant's days_from_civil / civil_from_days.
    static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    /// Appends `YYYY-MM-DD hh:mm:ss` (and `.mmm` with `fraction`) in UTC: the date-time text
    /// every ClickHouse version parses. Written digit by digit into a fixed buffer, appended
    /// once; no intermediate strings.
    public static func appendClickHouseText(millis: Int64, fraction: Bool, to bytes: inout [UInt8]) {
        let seconds = millis >= 0 ? millis / 1000 : (millis - 999) / 1000
        let milliseconds = Int(millis - seconds * 1000)
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let secondOfDay = Int(seconds - days * 86_400)
        let (year, month, day) = civilFromDays(Int(days))
        let template: StaticString = "0000-00-00 00:00:00.000"
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: template.utf8CodeUnitCount) { buffer in
            for index in buffer.indices { buffer[index] = template.utf8Start[index] }
            func digits(_ value: Int, _ width: Int, at offset: Int) {
                var rest = value
                for position in (offset..<offset + width).reversed() {
                    buffer[position] = UInt8(ascii: "0") + UInt8(rest % 10)
                    rest /= 10
                }
            }
            digits(year, 4, at: 0)
            digits(month, 2, at: 5)
            digits(day, 2, at: 8)
            digits(secondOfDay / 3600, 2, at: 11)
            digits(secondOfDay / 60 % 60, 2, at: 14)
            digits(secondOfDay % 60, 2, at: 17)
            digits(milliseconds, 3, at: 20)
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: buffer.prefix(fraction ? 23 : 19)))
        }
    }

    static func civilFromDays(_ days: Int) -> (Int, Int, Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}

/// UUIDs as text: validation, normalization and UUIDv7 generation.
public enum UUIDText {
    /// The nil UUID (RFC 9562 §5.9): reserved, refused as an `event_id`.
    public static let nilUUID = "00000000-0000-0000-0000-000000000000"
    /// The max UUID (RFC 9562 §5.10): reserved, refused as an `event_id`.
    public static let maxUUID = "ffffffff-ffff-ffff-ffff-ffffffffffff"

    /// The UUID in lower case, or nil when `text` is not `8-4-4-4-12` hex digits.
    public static func normalize(_ text: String) -> String? {
        let bytes = Array(text.utf8)
        guard bytes.count == 36 else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(36)
        for (index, byte) in bytes.enumerated() {
            if index == 8 || index == 13 || index == 18 || index == 23 {
                guard byte == 0x2D else { return nil }
                out.append(byte)
                continue
            }
            switch byte {
            case 0x30...0x39, 0x61...0x66: out.append(byte)
            case 0x41...0x46: out.append(byte + 0x20)
            default: return nil
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// A UUIDv7 (RFC 9562): 48 bits of unix milliseconds, then random bits, so ids sort by
    /// time and index well in ClickHouse.
    public static func v7(millis: Int64) -> String {
        var bytes = [UInt8](repeating: 0, count: 16)
        let time = UInt64(max(0, millis))
        for index in 0..<6 { bytes[index] = UInt8(truncatingIfNeeded: time >> UInt64(8 * (5 - index))) }
        let (random, random2) = FastRandom.next128()
        for index in 6..<16 {
            let source = index < 14 ? random : random2
            bytes[index] = UInt8(truncatingIfNeeded: source >> UInt64(8 * (index % 8)))
        }
        return Self.format(bytes, version: 7)
    }

    /// 16 bytes as a lower-case UUID of `version` (RFC 9562): the version nibble and the
    /// variant bits set, the rest as given.
    public static func format(_ bytes: some Collection<UInt8>, version: UInt8) -> String {
        var bytes = Array(bytes.prefix(16))
        bytes += [UInt8](repeating: 0, count: 16 - bytes.count)
        bytes[6] = version << 4 | (bytes[6] & 0x0F)
        bytes[8] = 0x80 | (bytes[8] & 0x3F)
        let hex: [UInt8] = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(36)
        for (index, byte) in bytes.enumerated() {
            if index == 4 || index == 6 || index == 8 || index == 10 { out.append(0x2D) }
            out.append(hex[Int(byte >> 4)])
            out.append(hex[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// 128 random bits per call without a system call each time: 4 KB from glibc's
/// `arc4random_buf` at a time, handed out 16 bytes per call. Debian 12's glibc (2.36) makes
/// `arc4random_buf` a `getrandom` system call every time, which was a measured share of the
/// gateway's CPU at two ids per request (docs/performance.md, "Speed"). The bits are for
/// unique ids, not secrets; the pool is never shared with a forked child (Sluice spawns
/// children with `posix_spawn`, which execs at once).
enum FastRandom {
    private struct Pool {
        var words = [UInt64](repeating: 0, count: 512)
        var next = 512
    }

    private static let pool = Mutex(Pool())

    static func next128() -> (UInt64, UInt64) {
        Self.pool.withLock { pool in
            if pool.next + 2 > pool.words.count {
                pool.words.withUnsafeMutableBytes { arc4random_buf($0.baseAddress!, $0.count) }
                pool.next = 0
            }
            defer { pool.next += 2 }
            return (pool.words[pool.next], pool.words[pool.next + 1])
        }
    }
}
