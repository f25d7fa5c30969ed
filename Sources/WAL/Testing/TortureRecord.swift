/// Deterministic event contents for crash tests: the child writes them, the parent
/// recomputes them from the acknowledged numbers and compares byte for byte.
@_spi(Testing)
public enum TortureRecord {
    /// Event `index` of append `sequence` in round `round`: 16 to ~2 KB of bytes that
    /// depend on all three numbers.
    public static func event(round: UInt64, sequence: UInt64, index: Int) -> [UInt8] {
        var state = (round &* 0x9E37_79B9_7F4A_7C15) ^ (sequence &* 0xBF58_476D_1CE4_E5B9) ^ UInt64(index + 1)
        func nextRandom() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        let prefix = Array("r\(round)-s\(sequence)-e\(index):".utf8)
        let length = 16 + Int(nextRandom() % 2048)
        var bytes = prefix
        bytes.reserveCapacity(prefix.count + length)
        while bytes.count < prefix.count + length {
            let word = nextRandom()
            for shift in stride(from: 0, to: 64, by: 8) where bytes.count < prefix.count + length {
                bytes.append(UInt8(truncatingIfNeeded: word >> UInt64(shift)))
            }
        }
        return bytes
    }

    /// How many events append `sequence` carries (1 to 3), so multi-event records are covered.
    public static func eventCount(sequence: UInt64) -> Int { 1 + Int(sequence % 3) }
}
