/// A ClickHouse server version as `SELECT version()` reports it: `18.16.1` or `23.8.2.7`.
///
/// Versions compare numerically, component by component; a missing build number counts as 0.
/// Use it to switch on features older servers lack (`DateTime64`, `LowCardinality`, insert
/// deduplication tokens, async inserts) while keeping SQL that works on both.
public struct ClickHouseVersion: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// The year-based major version (18, 23, 24, ...).
    public var major: Int
    public var minor: Int
    public var patch: Int
    /// The fourth component newer servers report; 0 when absent.
    public var build: Int

    public init(major: Int, minor: Int, patch: Int = 0, build: Int = 0) {
        self.major = major
        self.minor = minor
        self.patch = patch
        self.build = build
    }

    /// Parses `major.minor[.patch[.build]]`, ignoring surrounding white space and anything after
    /// the first space (`24.3.1.2672 (official build)`); `nil` for anything else.
    public init?(parsing text: String) {
        let trimmed = text.drop(while: \.isWhitespace)
        let token = trimmed.prefix(while: { !$0.isWhitespace })
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard (2...4).contains(parts.count) else { return nil }
        var numbers: [Int] = []
        for part in parts {
            guard !part.isEmpty, part.allSatisfy({ $0.isASCII && $0.isNumber }), let number = Int(part) else {
                return nil
            }
            numbers.append(number)
        }
        numbers += Array(repeating: 0, count: 4 - numbers.count)
        self.init(major: numbers[0], minor: numbers[1], patch: numbers[2], build: numbers[3])
    }

    public static func < (lhs: ClickHouseVersion, rhs: ClickHouseVersion) -> Bool {
        (lhs.major, lhs.minor, lhs.patch, lhs.build) < (rhs.major, rhs.minor, rhs.patch, rhs.build)
    }

    /// `major.minor.patch`, with `.build` when it is not 0.
    public var description: String {
        let base = "\(self.major).\(self.minor).\(self.patch)"
        return self.build == 0 ? base : "\(base).\(self.build)"
    }
}
