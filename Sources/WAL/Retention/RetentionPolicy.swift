/// Which sealed segments may go. Pure: the WAL feeds it the catalogue and deletes what it
/// returns, in order, after the cursors that allow it are durable.
struct RetentionPolicy: Sendable, Equatable {
    /// Keep fully consumed segments this long (for local replay); zero deletes at once.
    var keepConsumedNanos: UInt64

    struct Candidate: Equatable, Sendable {
        var firstLSN: LSN
        var nextLSN: LSN
        var maxTimestampNanos: UInt64
    }

    /// Segments to delete, oldest first.
    ///
    /// - Parameters:
    ///   - sealed: sealed segments in LSN order (never the active one).
    ///   - consumedBefore: the lowest cursor over all consumers; nil when there are no
    ///     cursors, in which case nothing is consumed and nothing is deleted.
    ///   - pressure: at soft pressure or above, consumed segments go regardless of age.
    func deletable(sealed: [Candidate], consumedBefore: LSN?, now: UInt64, pressure: Pressure) -> [Candidate] {
        guard let consumedBefore else { return [] }
        var result: [Candidate] = []
        for segment in sealed {
            guard segment.nextLSN <= consumedBefore else { break }
            let expired =
                self.keepConsumedNanos == 0
                || (now >= segment.maxTimestampNanos && now - segment.maxTimestampNanos >= self.keepConsumedNanos)
            guard expired || pressure >= .soft else { break }
            result.append(segment)
        }
        return result
    }
}
