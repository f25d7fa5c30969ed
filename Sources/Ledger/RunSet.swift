/// A set of integers kept as sorted, disjoint, non-adjacent half-open runs `[lower, upper)`:
/// the ledger's LSNs and offsets come in long contiguous stretches, so a day of them is a
/// handful of runs, and a gap (the thing the ledger looks for) is one more.
public struct RunSet<Bound: FixedWidthInteger & Sendable>: Sendable, Equatable {
    public private(set) var runs: [Range<Bound>] = []

    public init() {}

    public init(_ runs: [Range<Bound>]) {
        for run in runs { self.insert(run) }
    }

    public var isEmpty: Bool { self.runs.isEmpty }

    /// How many integers the set holds.
    public var count: Int { self.runs.reduce(0) { $0 + Int($1.upperBound - $1.lowerBound) } }

    /// The index of the first run whose upper bound is above `value`.
    private func firstIndex(endingAbove value: Bound) -> Int {
        var low = 0
        var high = self.runs.count
        while low < high {
            let middle = (low + high) / 2
            if self.runs[middle].upperBound <= value { low = middle + 1 } else { high = middle }
        }
        return low
    }

    public func contains(_ value: Bound) -> Bool {
        let index = self.firstIndex(endingAbove: value)
        return index < self.runs.count && self.runs[index].lowerBound <= value
    }

    public mutating func insert(_ value: Bound) {
        guard value < Bound.max else { return }
        self.insert(value..<(value + 1))
    }

    public mutating func insert(_ run: Range<Bound>) {
        guard !run.isEmpty else { return }
        // Fast path: the stretches grow at the end.
        if let last = self.runs.last, last.upperBound <= run.lowerBound {
            if last.upperBound == run.lowerBound {
                self.runs[self.runs.count - 1] = last.lowerBound..<run.upperBound
            } else {
                self.runs.append(run)
            }
            return
        }
        // Runs that touch or overlap `run` merge with it.
        var start = self.firstIndex(endingAbove: run.lowerBound)
        if start > 0, self.runs[start - 1].upperBound == run.lowerBound { start -= 1 }
        var end = start
        var lower = run.lowerBound
        var upper = run.upperBound
        while end < self.runs.count, self.runs[end].lowerBound <= upper {
            lower = min(lower, self.runs[end].lowerBound)
            upper = max(upper, self.runs[end].upperBound)
            end += 1
        }
        self.runs.replaceSubrange(start..<end, with: [lower..<upper])
    }

    /// How many integers this set and `other` both hold.
    public func overlapCount(with other: RunSet) -> Int {
        var total = 0
        var index = 0
        for run in self.runs {
            while index < other.runs.count, other.runs[index].upperBound <= run.lowerBound { index += 1 }
            var probe = index
            while probe < other.runs.count, other.runs[probe].lowerBound < run.upperBound {
                let shared =
                    max(
                        run.lowerBound,
                        other.runs[probe].lowerBound
                    )..<min(run.upperBound, other.runs[probe].upperBound)
                total += Int(shared.upperBound - shared.lowerBound)
                probe += 1
            }
        }
        return total
    }

    /// The runs of `values` (sorted or not) as the smallest list of half-open ranges.
    public static func runs(of values: some Sequence<Bound>) -> [Range<Bound>] {
        var set = RunSet()
        for value in values.sorted() { set.insert(value) }
        return set.runs
    }
}
