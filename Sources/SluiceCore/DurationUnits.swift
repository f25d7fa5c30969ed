/// `Duration` in the units the rest of the world wants: librdkafka and ClickHouse take
/// milliseconds, metrics and the WAL's group commit nanoseconds, log lines seconds.
extension Duration {
    /// Whole nanoseconds (rounded toward zero); saturates instead of trapping on overflow.
    package var nanoseconds: Int64 {
        let (seconds, attoseconds) = self.components
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        guard !overflow else { return seconds < 0 ? .min : .max }
        let (total, overflowed) = whole.addingReportingOverflow(attoseconds / 1_000_000_000)
        return overflowed ? (seconds < 0 ? .min : .max) : total
    }

    /// Whole milliseconds (rounded toward zero); saturates instead of trapping on overflow.
    package var milliseconds: Int64 {
        let (seconds, attoseconds) = self.components
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1000)
        guard !overflow else { return seconds < 0 ? .min : .max }
        let (total, overflowed) = whole.addingReportingOverflow(attoseconds / 1_000_000_000_000_000)
        return overflowed ? (seconds < 0 ? .min : .max) : total
    }

    /// Seconds as a floating-point number, for rates and log lines.
    package var seconds: Double {
        let (seconds, attoseconds) = self.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
