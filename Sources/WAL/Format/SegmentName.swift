#if canImport(Glibc)
import Glibc
#endif

/// Segment file names: the first LSN, zero-padded to 20 digits, so `ls` sorts them by LSN
/// and tells an operator which file holds a given LSN.
enum SegmentName {
    static let suffix = ".wal"

    static func make(_ lsn: LSN) -> String {
        let digits = String(lsn.rawValue)
        return String(repeating: "0", count: max(0, 20 - digits.count)) + digits + Self.suffix
    }

    static func parse(_ name: String) -> LSN? {
        guard name.hasSuffix(Self.suffix), name.utf8.count == 20 + Self.suffix.utf8.count,
            let value = UInt64(name.dropLast(Self.suffix.count))
        else { return nil }
        return LSN(value)
    }
}
