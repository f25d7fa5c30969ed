/// How the events of one data record are laid out in its payload: for each event, a
/// `u32` length followed by that many bytes. The WAL does not interpret event bytes.
public enum EventPayload {
    /// Encodes events into one record payload.
    public static func encode(_ events: [[UInt8]]) -> [UInt8] {
        var size = 0
        for event in events { size += 4 + event.count }
        var payload = [UInt8]()
        payload.reserveCapacity(size)
        for event in events {
            withUnsafeBytes(of: UInt32(event.count).littleEndian) { payload.append(contentsOf: $0) }
            payload.append(contentsOf: event)
        }
        return payload
    }

    /// Splits a payload back into its events; nil when the lengths do not add up.
    public static func decode(_ payload: [UInt8], expectedCount: Int) -> [[UInt8]]? {
        Self.decode(payload[...], expectedCount: expectedCount)
    }

    public static func decode(_ payload: ArraySlice<UInt8>, expectedCount: Int) -> [[UInt8]]? {
        var events: [[UInt8]] = []
        // Each event takes at least its 4-byte length: a count from a damaged (or fuzzed)
        // header cannot make this reserve more than the payload could hold.
        events.reserveCapacity(min(max(expectedCount, 0), payload.count / 4))
        var offset = 0
        let ok = payload.withUnsafeBytes { raw -> Bool in
            while offset < raw.count {
                guard offset + 4 <= raw.count else { return false }
                let length = Int(raw.load(UInt32.self, at: offset))
                offset += 4
                guard length <= raw.count - offset else { return false }
                events.append(Array(raw[offset..<offset + length]))
                offset += length
            }
            return true
        }
        guard ok, events.count == expectedCount else { return nil }
        return events
    }
}
